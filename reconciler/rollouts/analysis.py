"""The analysis of a rollout step: the router's metrics in, a verdict out. PURE.

Three stages, each a plain function of values:

1. `parse_exposition(text, endpoint)`: the router's Prometheus text exposition (its
   metrics port, or each router pod's) -> a `Snapshot` of the counters that matter: requests
   by deployment, kind and code; latency histogram buckets by deployment and kind; and, when
   the router compares shadow answers, comparisons by live/shadow pair and result. Scrapes
   of several routers of one endpoint add up (`a + b`).
2. `later.since(earlier)` -> the increase between two snapshots, as Flagger's interval and
   PromQL's increase() work: a series that went down was reset (its router restarted) and
   counts from zero. `step_figures(delta, ...)` -> requests, errors and p99 of the canary
   (its mirrored copies in a mirror step, its live requests in a traffic step) and of the
   stable deployment (live), and the shadow agreement of the pair.
3. `judge(thresholds, figures, step_for_s=...)` -> PASS, FAIL (which threshold, what
   figures) or WAIT (too few requests, or the step's time not over). Too little traffic
   never promotes.

Errors are answers 5xx, 424 (the deployment answered non-2xx) and 408 (it did not answer
within request_timeout_ms: a slow model fails its callers as surely as a broken one). 429
(the mirror deployment was full and the copy dropped) is load shedding, not a failure of
the model, and is left out.

p99 is worked out from the histogram's buckets as PromQL's histogram_quantile does: linear
within the bucket that holds the 99th percentile, so it is as coarse as the router's buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from reconciler.rollouts.policy import Thresholds, format_duration

LIVE: Final = "live"
MIRROR: Final = "mirror"
REQUESTS: Final = "router_requests_total"
BUCKETS: Final = "router_request_duration_seconds_bucket"
SHADOW: Final = "router_shadow_comparisons_total"
SHADOW_DELTA_SUM: Final = "router_shadow_latency_delta_seconds_sum"
SHADOW_DELTA_COUNT: Final = "router_shadow_latency_delta_seconds_count"
AGREE: Final = "agree"
DISAGREE: Final = "disagree"  # the prefix of disagree_status and disagree_body
# Results of router_shadow_comparisons_total (reconciler.router.compare.Result) that count
# against agreement besides disagree_*: the shadow gave no answer to compare (an error, a
# timeout), so it did not give the live answer either. not_compared (the live request
# failed, or the bodies are too large) counts for neither side.
NO_SHADOW_ANSWER: Final = frozenset({"shadow_error", "shadow_timeout"})
QUANTILE: Final = 0.99
# The label parse_exposition gives the samples of a named router; no exposition has it (a
# label beginning with __ is Prometheus's own).
SOURCE_LABEL: Final = "__router__"
_KEPT: Final = frozenset({REQUESTS, BUCKETS, SHADOW, SHADOW_DELTA_SUM, SHADOW_DELTA_COUNT})

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]  # sample name, its labels sorted (endpoint left out)


def is_error(code: str) -> bool:
    """An answer that counts against the deployment (see the module's docstring)."""
    return code.startswith("5") or code in ("424", "408")


def shadow_agrees(result: str) -> bool | None:
    """Whether a `result` of router_shadow_comparisons_total counts for the agreement
    (True), against it (False: disagree_*, or no shadow answer), or for neither (None)."""
    if result == AGREE:
        return True
    if result.startswith(DISAGREE) or result in NO_SHADOW_ANSWER:
        return False
    return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counter values of one endpoint at one scrape (or their increase: `since`)."""

    samples: tuple[tuple[SeriesKey, float], ...] = ()
    # Whether the router exports shadow comparisons at all: absent is "not measured",
    # where present with no sample is "nothing compared yet".
    compares_shadows: bool = False

    def __add__(self, other: Snapshot) -> Snapshot:
        table = dict(self.samples)
        for key, value in other.samples:
            table[key] = table.get(key, 0.0) + value
        return Snapshot(_sorted(table), self.compares_shadows or other.compares_shadows)

    def since(self, earlier: Snapshot) -> Snapshot:
        """The increase from `earlier` to this snapshot; a reset series counts from zero.

        A histogram resets as a whole (all its buckets together), so resets are judged per
        series without its `le` label: one bucket gone down means the router restarted.
        """
        before = dict(earlier.samples)
        reset = {
            _group(key)
            for key, value in self.samples
            if value < before.get(key, 0.0)  # a counter never goes down unless reset
        }
        table = {
            key: value if _group(key) in reset else value - before.get(key, 0.0)
            for key, value in self.samples
        }
        return Snapshot(_sorted(table), self.compares_shadows)

    def values(self, name: str) -> Iterable[tuple[dict[str, str], float]]:
        for (sample, labels), value in self.samples:
            if sample == name:
                yield dict(labels), value


def _sorted(table: Mapping[SeriesKey, float]) -> tuple[tuple[SeriesKey, float], ...]:
    return tuple(sorted(table.items()))


def _group(key: SeriesKey) -> SeriesKey:
    name, labels = key
    return name, tuple(pair for pair in labels if pair[0] != "le")


def parse_exposition(text: str, endpoint: str, *, source: str | None = None) -> Snapshot:
    """The samples of one endpoint the analysis reads, from a Prometheus text exposition.

    source names the router the text comes from when several are scraped (the pods of a
    Kubernetes router): its samples keep it as a label of their own (SOURCE_LABEL), so that
    `since` finds the reset of that router alone, and a router missing from a later scrape
    takes nothing away. Without it, texts of several routers add up into one series each.

    Raises ValueError when the text is not an exposition (prometheus_client's parser), or
    when a counter the analysis reads is no count (NaN, infinite, below zero): such a figure
    is unreadable, never a verdict.
    """
    # Imported here: `reconcile diff` shows a rollout's schedule without reading metrics.
    from prometheus_client.parser import text_string_to_metric_families

    table: dict[SeriesKey, float] = {}
    compares = False
    for family in text_string_to_metric_families(text):
        if family.name.startswith("router_shadow_"):
            compares = True
        for sample in family.samples:
            if sample.name not in _KEPT or sample.labels.get("endpoint") != endpoint:
                continue
            value = float(sample.value)
            # The shadow latency delta's sum is the one value that may be negative.
            if not math.isfinite(value) or (value < 0 and sample.name != SHADOW_DELTA_SUM):
                shown = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                raise ValueError(f"{sample.name}{{{shown}}} is {value}: that is not a count")
            named = [(k, v) for k, v in sample.labels.items() if k != "endpoint"]
            if source is not None:
                named.append((SOURCE_LABEL, source))
            key = (sample.name, tuple(sorted(named)))
            table[key] = table.get(key, 0.0) + value
    return Snapshot(_sorted(table), compares)


def parse_expositions(texts: Mapping[str, str], endpoint: str) -> Snapshot:
    """parse_exposition of several routers' texts (by router name), each its own source:
    one router's restart resets its own series only."""
    return sum(
        (parse_exposition(text, endpoint, source=name) for name, text in sorted(texts.items())),
        Snapshot((), False),
    )


# --------------------------------------------------------------------------------------
# Figures


@dataclass(frozen=True, slots=True)
class DeploymentFigures:
    deployment: str
    kind: str  # live or mirror: which of its requests these are
    requests: int
    errors: int
    p99_s: float | None  # None: no request measured

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def describe(self) -> str:
        p99 = "n/a" if self.p99_s is None else _ms(self.p99_s)
        rate = "" if self.error_rate is None else f" ({_percent(self.error_rate)})"
        return (
            f"{self.deployment} ({self.kind}): {self.requests} requests, "
            f"{self.errors} errors{rate}, p99 {p99}"
        )


@dataclass(frozen=True, slots=True)
class ShadowFigures:
    """Comparisons of the canary's mirrored answers with the live answers of the stable."""

    agree: int
    disagree: int
    latency_delta_s: float | None = None  # mean of shadow minus live latency, when exported

    @property
    def compared(self) -> int:
        return self.agree + self.disagree

    @property
    def agreement(self) -> float | None:
        return self.agree / self.compared if self.compared else None

    def describe(self) -> str:
        share = "" if self.agreement is None else f" ({_percent(self.agreement)} agree)"
        delta = (
            ""
            if self.latency_delta_s is None
            else f", shadow latency {'+' if self.latency_delta_s >= 0 else '-'}"
            f"{_ms(abs(self.latency_delta_s))} on average"
        )
        return f"shadow: {self.agree} agree, {self.disagree} disagree{share}{delta}"


@dataclass(frozen=True, slots=True)
class StepFigures:
    canary: DeploymentFigures
    stable: DeploymentFigures
    shadow: ShadowFigures | None  # None: the router does not compare answers
    elapsed_s: float  # time since the step began

    def lines(self) -> tuple[str, ...]:
        shown = [self.canary.describe(), self.stable.describe()]
        if self.shadow is not None:
            shown.append(self.shadow.describe())
        return tuple(shown)


def step_figures(
    delta: Snapshot, *, stable: str, canary: str, canary_kind: str, elapsed_s: float
) -> StepFigures:
    """Figures of a step from the increase of the counters since it began.

    canary_kind is MIRROR in a mirror step (the canary serves copies only) and LIVE in a
    traffic step; the stable deployment is always judged on its live requests.
    """
    shadow: ShadowFigures | None = None
    if delta.compares_shadows:
        pair = {"live": stable, "shadow": canary}
        agree = disagree = 0.0
        for labels, value in delta.values(SHADOW):
            if not _matches(labels, pair):
                continue
            side = shadow_agrees(labels.get("result", ""))
            if side is True:
                agree += value
            elif side is False:
                disagree += value
        # The router's delta histogram has buckets below zero, so prometheus_client leaves
        # its _sum out (one worker): no mean then, rather than a made-up 0.
        sums = [v for labels, v in delta.values(SHADOW_DELTA_SUM) if _matches(labels, pair)]
        count = sum(v for labels, v in delta.values(SHADOW_DELTA_COUNT) if _matches(labels, pair))
        mean = sum(sums) / count if sums and count else None
        shadow = ShadowFigures(round(agree), round(disagree), mean)
    return StepFigures(
        canary=_deployment_figures(delta, canary, canary_kind),
        stable=_deployment_figures(delta, stable, LIVE),
        shadow=shadow,
        elapsed_s=elapsed_s,
    )


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def _deployment_figures(delta: Snapshot, deployment: str, kind: str) -> DeploymentFigures:
    wanted = {"deployment": deployment, "kind": kind}
    requests = errors = 0.0
    for labels, value in delta.values(REQUESTS):
        if _matches(labels, wanted):
            requests += value
            errors += value if is_error(labels.get("code", "")) else 0.0
    cumulative: dict[float, float] = {}
    for labels, value in delta.values(BUCKETS):
        if _matches(labels, wanted):
            bound = float(labels["le"])
            cumulative[bound] = cumulative.get(bound, 0.0) + value
    return DeploymentFigures(
        deployment,
        kind,
        round(requests),
        round(errors),
        histogram_quantile(QUANTILE, sorted(cumulative.items())),
    )


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram ((upper bound, count) sorted by bound, the
    last one +Inf), interpolated linearly within its bucket as PromQL does; None when empty.

    A quantile in the +Inf bucket is the highest finite bound: the histogram knows no more.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


# --------------------------------------------------------------------------------------
# Verdict


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


class CheckState(StrEnum):
    OK = "ok"
    FAILED = "failed"
    TOO_FEW = "too few requests"  # the step waits for more
    NOT_MEASURED = "not measured"  # does not hold the step (no stable traffic, no compare)


@dataclass(frozen=True, slots=True)
class Check:
    threshold: str  # the field of thresholds: error_rate, p99_ms, ...
    state: CheckState
    text: str  # the figure against its limit, as a person reads it


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str
    checks: tuple[Check, ...]
    figures: StepFigures

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.state is CheckState.FAILED)

    def lines(self) -> tuple[str, ...]:
        """The verdict and its figures, for a commit message or a log line."""
        checks = [f"{c.threshold}: {c.text} ({c.state.value})" for c in self.checks]
        return (*self.figures.lines(), *checks)

    def as_json(self) -> dict[str, Any]:
        """What status records of the step (plain values, stable keys)."""
        f = self.figures
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "elapsed_s": round(f.elapsed_s, 3),
            "canary": _deployment_json(f.canary),
            "stable": _deployment_json(f.stable),
            "shadow": None
            if f.shadow is None
            else {"agree": f.shadow.agree, "disagree": f.shadow.disagree},
            "checks": [
                {"threshold": c.threshold, "state": c.state.value, "text": c.text}
                for c in self.checks
            ],
        }


def _deployment_json(figures: DeploymentFigures) -> dict[str, Any]:
    return {
        "deployment": figures.deployment,
        "kind": figures.kind,
        "requests": figures.requests,
        "errors": figures.errors,
        "p99_ms": None if figures.p99_s is None else round(figures.p99_s * 1000, 3),
    }


def judge(thresholds: Thresholds, figures: StepFigures, *, step_for_s: float) -> Verdict:
    """PASS, FAIL or WAIT for a step whose counters increased by `figures` since it began.

    A threshold fails only on at least min_requests of the canary (of compared answers, for
    shadow_agreement): fewer is noise, and the step waits. Any failed threshold fails the
    step at once, before its time is over; a pass needs every measurable threshold met and
    the step's `for` over.
    """
    checks = _checks(thresholds, figures)
    failed = [c for c in checks if c.state is CheckState.FAILED]
    if failed:
        reason = "; ".join(f"{c.threshold} {c.text}" for c in failed)
        return Verdict(Outcome.FAIL, reason, checks, figures)
    waiting = [c for c in checks if c.state is CheckState.TOO_FEW]
    if waiting:
        reason = "; ".join(f"{c.threshold}: {c.text}" for c in waiting)
        return Verdict(Outcome.WAIT, f"too few requests ({reason})", checks, figures)
    if figures.elapsed_s < step_for_s:
        left = format_duration(math.ceil(step_for_s - figures.elapsed_s))
        reason = f"step runs {format_duration(step_for_s)}, {left} left"
        return Verdict(Outcome.WAIT, reason, checks, figures)
    return Verdict(Outcome.PASS, "every threshold met", checks, figures)


def _checks(thresholds: Thresholds, figures: StepFigures) -> tuple[Check, ...]:
    canary, stable, least = figures.canary, figures.stable, thresholds.min_requests
    # Never fewer than one: a canary that served nothing has shown nothing, whatever the
    # thresholds say.
    enough = canary.requests >= max(1, least)
    few = f"{canary.requests} of {least} requests"
    checks = [
        Check(
            "min_requests",
            CheckState.OK if enough else CheckState.TOO_FEW,
            f"{canary.requests} >= {least}" if enough else few,
        )
    ]
    if thresholds.error_rate is not None:
        limit = thresholds.error_rate
        if not enough or canary.error_rate is None:
            checks.append(Check("error_rate", CheckState.TOO_FEW, few))
        else:
            rate = canary.error_rate
            ok = rate <= limit
            sign = "<=" if ok else ">"
            text = (
                f"{_percent(rate)} {sign} {_percent(limit)} "
                f"({canary.errors} errors of {canary.requests} requests)"
            )
            checks.append(Check("error_rate", _state(ok), text))
    if thresholds.p99_ms is not None:
        limit_s = thresholds.p99_ms / 1000
        if not enough or canary.p99_s is None:
            checks.append(Check("p99_ms", CheckState.TOO_FEW, few))
        else:
            ok = canary.p99_s <= limit_s
            text = f"{_ms(canary.p99_s)} {'<=' if ok else '>'} {_ms(limit_s)}"
            checks.append(Check("p99_ms", _state(ok), text))
    if thresholds.p99_ratio is not None:
        limit = thresholds.p99_ratio
        if not enough or canary.p99_s is None:
            checks.append(Check("p99_ratio", CheckState.TOO_FEW, few))
        elif stable.requests < least or not stable.p99_s:
            text = f"{stable.deployment} served {stable.requests} live requests"
            checks.append(Check("p99_ratio", CheckState.NOT_MEASURED, text))
        else:
            ratio = canary.p99_s / stable.p99_s
            ok = ratio <= limit
            text = (
                f"{ratio:.2f} {'<=' if ok else '>'} {limit:g} "
                f"({_ms(canary.p99_s)} against {_ms(stable.p99_s)})"
            )
            checks.append(Check("p99_ratio", _state(ok), text))
    if thresholds.shadow_agreement is not None and canary.kind == MIRROR:
        limit = thresholds.shadow_agreement
        shadow = figures.shadow
        if shadow is None:
            text = "the router does not compare shadow answers"
            checks.append(Check("shadow_agreement", CheckState.NOT_MEASURED, text))
        elif shadow.compared < least or shadow.agreement is None:
            text = f"{shadow.compared} of {least} compared answers"
            checks.append(Check("shadow_agreement", CheckState.TOO_FEW, text))
        else:
            ok = shadow.agreement >= limit
            text = (
                f"{_percent(shadow.agreement)} {'>=' if ok else '<'} {_percent(limit)} "
                f"({shadow.disagree} of {shadow.compared} answers differ)"
            )
            checks.append(Check("shadow_agreement", _state(ok), text))
    return tuple(checks)


def _state(ok: bool) -> CheckState:
    return CheckState.OK if ok else CheckState.FAILED


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.2f}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
