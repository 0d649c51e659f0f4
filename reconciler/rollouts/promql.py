"""A step's figures from a Prometheus server that scrapes the routers: PromQL in, answers
out. PURE: the queries are strings, the answers are the `data` of Prometheus's HTTP API
(`/api/v1/query`, instant queries); reconciler.promapi sends them.

The figures are analysis.StepFigures, the same the router's own exposition gives, so
analysis.judge judges both alike. Every query reads the increase of the router's counters
over the step's window (the time since the step began, `[Nms]`), as analysis.Snapshot.since
does, not over Flagger's analysis interval: `min_requests` and the error rate count the
whole step either way. The increase of a series `M` is

    ((M - M offset W) >= 0)  or  (M unless M offset W)  or  increase(M[W])

- a series present at the step's start and not reset: the exact difference (no
  extrapolation, and no need of two samples inside a short window);
- a series born within the window (the canary's first 500 answers): counted from zero, its
  whole value. increase() alone would lose the first value a new series shows, and with it
  the first errors of a failing canary;
- a series reset within the window (a router restarted): increase(), which counts resets.

Figures: requests and errors by deployment and code (`sum by (deployment, kind, code)`),
p99 with histogram_quantile over the summed increase of the latency buckets (linear within
a bucket, as analysis.histogram_quantile), shadow comparisons by result for the pair, and
the mean of the shadow's latency delta (its `_sum` over `_count`; no `_sum` with a
single-worker router, then none, as from the exposition). Extra label matchers
(`labels:` of the policy) narrow every series.

No data is not zero: when Prometheus holds no `router_instances` series of the endpoint
(sampled by every router from its start), it does not scrape that router, and the step
cannot be judged (`PromQLAnswerError`): the rollout waits with that reason, never promotes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from reconciler.rollouts.analysis import (
    BUCKETS,
    LIVE,
    QUANTILE,
    REQUESTS,
    SHADOW,
    SHADOW_DELTA_COUNT,
    SHADOW_DELTA_SUM,
    DeploymentFigures,
    ShadowFigures,
    StepFigures,
    is_error,
    shadow_agrees,
)

INSTANCES: Final = "router_instances"

# Names of the queries of one judgement (the keys of `answers`).
SCRAPED: Final = "scraped"
REQUESTS_Q: Final = "requests"
P99_CANARY: Final = "p99_canary"
P99_STABLE: Final = "p99_stable"
SHADOW_SERIES: Final = "shadow_series"
SHADOW_Q: Final = "shadow"
SHADOW_DELTA: Final = "shadow_delta"


class PromQLAnswerError(ValueError):
    """Prometheus's answer cannot be judged: malformed, or no data of the endpoint."""


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    expr: str


def quote(value: str) -> str:
    """A PromQL string literal (double quotes; backslash and quote escaped)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def selector(metric: str, matchers: Mapping[str, str], labels: Sequence[tuple[str, str]]) -> str:
    """`metric{k="v",...}`: the analysis's matchers, then the policy's extra labels."""
    pairs = [*matchers.items(), *labels]
    return metric + "{" + ",".join(f"{k}={quote(v)}" for k, v in pairs) + "}"


def window(seconds: float) -> str:
    """A PromQL duration of the step's window, in whole milliseconds (at least 1 ms)."""
    return f"{max(1, round(seconds * 1000))}ms"


def increase(series: str, window_s: float) -> str:
    """The increase of every series of `series` over the window (see the module's docstring)."""
    w = window(window_s)
    return (
        f"((({series} - {series} offset {w}) >= 0)"
        f" or ({series} unless {series} offset {w})"
        f" or increase({series}[{w}]))"
    )


def step_queries(
    *,
    endpoint: str,
    stable: str,
    canary: str,
    canary_kind: str,
    window_s: float,
    labels: Sequence[tuple[str, str]] = (),
) -> tuple[Query, ...]:
    """The instant queries of one judgement of a step whose window is `window_s` long."""
    ep = {"endpoint": endpoint}

    def bucket_p99(deployment: str, kind: str) -> str:
        buckets = selector(BUCKETS, {**ep, "deployment": deployment, "kind": kind}, labels)
        return f"histogram_quantile({QUANTILE}, sum by (le) ({increase(buckets, window_s)}))"

    # Two exact matchers joined by `or`: no regular expression to escape a name into.
    requests = " or ".join(
        increase(selector(REQUESTS, {**ep, "deployment": name}, labels), window_s)
        for name in sorted({stable, canary})
    )
    pair = {**ep, "live": stable, "shadow": canary}
    shadow = selector(SHADOW, pair, labels)
    delta_sum = selector(SHADOW_DELTA_SUM, pair, labels)
    delta_count = selector(SHADOW_DELTA_COUNT, pair, labels)
    return (
        Query(SCRAPED, f"count({selector(INSTANCES, ep, labels)})"),
        Query(REQUESTS_Q, f"sum by (deployment, kind, code) ({requests})"),
        Query(P99_CANARY, bucket_p99(canary, canary_kind)),
        Query(P99_STABLE, bucket_p99(stable, LIVE)),
        Query(SHADOW_SERIES, f"count({shadow})"),
        Query(SHADOW_Q, f"sum by (result) ({increase(shadow, window_s)})"),
        Query(
            SHADOW_DELTA,
            f"sum({increase(delta_sum, window_s)}) / sum({increase(delta_count, window_s)})",
        ),
    )


def vector(data: Any, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of an instant vector answer (`data` of /api/v1/query): labels, value."""
    if not isinstance(data, Mapping) or data.get("resultType") != "vector":
        kind = data.get("resultType") if isinstance(data, Mapping) else type(data).__name__
        raise PromQLAnswerError(f"query {name}: Prometheus answered {kind!r}, not a vector")
    result = data.get("result")
    if not isinstance(result, list):
        raise PromQLAnswerError(f"query {name}: the answer has no result list")
    samples = []
    for item in result:
        metric = item.get("metric") if isinstance(item, Mapping) else None
        value = item.get("value") if isinstance(item, Mapping) else None
        if (
            not isinstance(metric, Mapping)
            or not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[1], str)
        ):
            raise PromQLAnswerError(f"query {name}: a sample is not {{metric, value: [t, v]}}")
        try:
            number = float(value[1])  # Prometheus sends "NaN", "+Inf" as strings too
        except ValueError:
            raise PromQLAnswerError(f"query {name}: the value {value[1]!r} is no number") from None
        samples.append(({str(k): str(v) for k, v in metric.items()}, number))
    return samples


def _single(data: Any, name: str) -> float | None:
    """The value of a query that answers one sample at most; None: none, or NaN."""
    samples = vector(data, name)
    if len(samples) > 1:
        raise PromQLAnswerError(f"query {name}: {len(samples)} samples where one was asked")
    if not samples or math.isnan(samples[0][1]):
        return None
    return samples[0][1]


def _count(value: float, name: str) -> None:
    """Refuses an infinite count: no number of requests, and round() of it would raise
    OverflowError past the rollouter, which waits on PromQLAnswerError (unreadable metrics)
    and never judges a step on it."""
    if math.isinf(value):
        raise PromQLAnswerError(f"query {name}: a count of {value}, which is not a count")


def check_scraped(data: Any, *, endpoint: str) -> None:
    """Raises PromQLAnswerError unless the SCRAPED query found the endpoint's router."""
    if not _single(data, SCRAPED):
        raise PromQLAnswerError(
            f"Prometheus holds no {INSTANCES} series of endpoint {endpoint}: it does not "
            "scrape this endpoint's router (or the policy's labels match none)"
        )


def step_figures(
    answers: Mapping[str, Any],
    *,
    endpoint: str,
    stable: str,
    canary: str,
    canary_kind: str,
    elapsed_s: float,
) -> StepFigures:
    """The figures of a step from the answers of step_queries, by query name.

    Raises PromQLAnswerError when an answer is missing or malformed, or when Prometheus
    holds no series of the endpoint's router at all (it does not scrape it).
    """
    missing = [q for q in (SCRAPED, REQUESTS_Q, P99_CANARY, P99_STABLE) if q not in answers]
    if missing:
        raise PromQLAnswerError(f"no answer to the queries {', '.join(missing)}")
    check_scraped(answers[SCRAPED], endpoint=endpoint)
    counts: dict[tuple[str, str], list[float]] = {}
    for labels, value in vector(answers[REQUESTS_Q], REQUESTS_Q):
        if math.isnan(value):
            continue
        _count(value, REQUESTS_Q)
        totals = counts.setdefault((labels.get("deployment", ""), labels.get("kind", "")), [0, 0])
        totals[0] += value
        totals[1] += value if is_error(labels.get("code", "")) else 0.0

    def deployment(name: str, kind: str, p99_query: str) -> DeploymentFigures:
        requests, errors = counts.get((name, kind), [0.0, 0.0])
        p99 = _single(answers[p99_query], p99_query)
        return DeploymentFigures(
            name,
            kind,
            round(requests),
            round(errors),
            p99 if requests and p99 is not None and not math.isinf(p99) else None,
        )

    shadow: ShadowFigures | None = None
    # A router compares every mirrored copy, so a pair with no series has compared nothing
    # ever (no mirror yet): "not measured", as a router that exports no comparisons.
    if SHADOW_SERIES in answers and _single(answers[SHADOW_SERIES], SHADOW_SERIES):
        agree = disagree = 0.0
        for labels, value in vector(answers.get(SHADOW_Q), SHADOW_Q):
            if math.isnan(value):
                continue
            _count(value, SHADOW_Q)
            side = shadow_agrees(labels.get("result", ""))
            if side is True:
                agree += value
            elif side is False:
                disagree += value
        mean = _single(answers[SHADOW_DELTA], SHADOW_DELTA) if SHADOW_DELTA in answers else None
        if mean is not None and math.isinf(mean):
            mean = None
        shadow = ShadowFigures(round(agree), round(disagree), mean)
    return StepFigures(
        canary=deployment(canary, canary_kind, P99_CANARY),
        stable=deployment(stable, LIVE, P99_STABLE),
        shadow=shadow,
        elapsed_s=elapsed_s,
    )
