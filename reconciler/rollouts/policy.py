"""Rollout policies: the `rollouts:` mapping of reconciler.yaml as frozen values. PURE.

```yaml
rollouts:
  default:
    # Bare numbers are live-traffic steps; {mirror: N} mirrors N% of the requests to the new
    # deployment (its answers are compared, never returned). `for` is the least time a step
    # is analysed before the next one (default: interval).
    steps: [{mirror: 20, for: 10m}, {traffic: 10, for: 5m}, 25, 50, 100]
    interval: 1m              # how often a step is judged; durations: 500ms, 30s, 10m, 1h, 1h30m
    thresholds:
      error_rate: 0.01        # 5xx, 424 and 408 answers of the new deployment / its requests
      p99_ms: 500             # p99 latency of the new deployment
      p99_ratio: 1.5          # ... relative to the stable deployment's p99
      min_requests: 50        # fewer requests in a step: wait, never promote
      shadow_agreement: 0.99  # agreeing shadow answers / compared ones (mirror steps)
    comparison:               # how the router compares a shadow answer with the live one:
      rtol: 0.001             # numbers agree when |shadow - live| <= atol + rtol * |live|
      atol: 0.000001          # (default 1e-6 and 1e-9); max_body_bytes: larger bodies are
                              # not compared (default 1 MiB)
    mode: commit              # or pull-request: push a branch per step for a person to merge
    # Where the figures come from: the router itself (the default; the target reads its
    # metrics port or pods), or a Prometheus server that scrapes the routers, queried with
    # PromQL (Flagger's metric provider `prometheus` and its `address`).
    metrics:
      prometheus:
        address: http://prometheus.monitoring:9090
        timeout: 5s                      # each query's
        bearer_token_env: PROM_TOKEN     # or bearer_token_file: /path (read at each query)
        labels: {namespace: ml}          # matchers added to every series (several clusters)
  endpoints:
    my-endpoint: {thresholds: {p99_ms: 800}}   # merged over default, key by key
    batch-endpoint: {enabled: false}           # no rollouts here
```

An endpoint's entry is merged over `default` key by key (thresholds and comparison too), so
an override names only what differs. Rules the schema cannot say are checked here, each with
its line: one of mirror/traffic per step, mirror steps before traffic steps (a mirrored
deployment has no live traffic), traffic shares rising, the last step giving the new
deployment 100%, tolerances that are finite numbers, at most one bearer token source of a
Prometheus server, no `labels` the router sets itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from reconciler.model.diagnostics import Diagnostic
from reconciler.policies import MAX_TRAFFIC_SHIFT, MIRROR_BEFORE_TRAFFIC, Policies

ROLLOUTS: Final = "rollouts"
CONFIG_FILE: Final = "reconciler.yaml"
MAX_MIRROR_PERCENT: Final = 50  # what mirror_traffic allows (SPEC-REFERENCE)
DEFAULT_INTERVAL_S: Final = 60.0
DEFAULT_ERROR_RATE: Final = 0.01
DEFAULT_MIN_REQUESTS: Final = 20
DEFAULT_PROMETHEUS_TIMEOUT_S: Final = 5.0
ROUTER_SOURCE: Final = "router"  # `metrics: router`: the target reads its router's metrics
# Labels of the router's series (reconciler.router.metrics) and Prometheus's own: an extra
# matcher on one of them would select other series than the analysis means.
ROUTER_LABELS: Final = frozenset(
    {"endpoint", "deployment", "kind", "code", "le", "live", "shadow", "result", "__name__"}
)

RolloutPath = tuple[str | int, ...]
LineAt = Callable[[RolloutPath], int | None]

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION: Final = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


class StepKind(StrEnum):
    MIRROR = "mirror"
    TRAFFIC = "traffic"


class Mode(StrEnum):
    COMMIT = "commit"
    PULL_REQUEST = "pull-request"


@dataclass(frozen=True, slots=True)
class Step:
    """One step: the new deployment gets `percent` of mirrored or of live traffic."""

    kind: StepKind
    percent: int
    for_s: float  # least time the step is analysed before the next one

    def describe(self) -> str:
        return f"{self.kind.value} {self.percent}% for {format_duration(self.for_s)}"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Limits a step's figures must keep; None: not checked."""

    error_rate: float | None = DEFAULT_ERROR_RATE
    p99_ms: float | None = None
    p99_ratio: float | None = None
    min_requests: int = DEFAULT_MIN_REQUESTS
    shadow_agreement: float | None = None


@dataclass(frozen=True, slots=True)
class PrometheusSource:
    """A Prometheus server that scrapes the routers: a step's figures come from PromQL.

    Only where the bearer token is read is kept (an environment variable's name or a file's
    path), never the token: a policy is shown in logs and reviews.
    """

    # http(s)://host:port[/prefix], as Flagger's provider `address`; never a user or password
    # (refused: the address is shown in status and logs).
    address: str
    timeout_s: float = DEFAULT_PROMETHEUS_TIMEOUT_S
    bearer_token_env: str | None = None
    bearer_token_file: str | None = None
    labels: tuple[tuple[str, str], ...] = ()  # extra matchers on every series, sorted


@dataclass(frozen=True, slots=True)
class Comparison:
    """The router's shadow comparison as the policy sets it; None: the router's default.
    The engine carries it into the endpoint's spec (model.specs.ShadowTolerance)."""

    rtol: float | None = None
    atol: float | None = None
    max_body_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """One rollout policy: its steps, interval, thresholds, mode and metrics."""

    steps: tuple[Step, ...]
    interval_s: float = DEFAULT_INTERVAL_S
    thresholds: Thresholds = Thresholds()
    mode: Mode = Mode.COMMIT
    metrics: PrometheusSource | None = None  # None: the target reads its router's metrics
    comparison: Comparison = Comparison()
    line: int | None = None  # where the policy is written (its endpoint's entry or default)

    @property
    def total(self) -> int:
        return len(self.steps)

    def step(self, number: int) -> Step:
        """Step `number`, 1-based as commit trailers count them."""
        return self.steps[number - 1]


@dataclass(frozen=True, slots=True)
class RolloutPolicies:
    """Each endpoint's effective policy; endpoints not listed take `default` (may be None)."""

    default: RolloutPolicy | None = None
    endpoints: tuple[tuple[str, RolloutPolicy | None], ...] = ()

    def for_endpoint(self, endpoint: str) -> RolloutPolicy | None:
        for name, policy in self.endpoints:
            if name == endpoint:
                return policy
        return self.default

    @property
    def empty(self) -> bool:
        return self.default is None and all(p is None for _, p in self.endpoints)


def parse_duration(value: Any) -> float | None:
    """Seconds of `30s`, `10m`, `1h30m`, `500ms`, or of a bare number; None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if 0 < value < math.inf else None
    if not isinstance(value, str) or not _DURATION.match(value):
        return None
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))
    return seconds if 0 < seconds < math.inf else None


def duration_problem(value: Any) -> str | None:
    """Why a duration the schema lets through is none: a zero written with a unit (`0s`,
    `0ms`, `0h0m`) or a number that is not finite (`.nan`, `.inf`). parse_duration reads
    both as no duration, and without this message the whole policy would be dropped in
    silence. None: a duration, or a value the schema already refuses (and says why)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return None if math.isfinite(value) else f"must be a finite number of seconds, got {value}"
    if isinstance(value, str) and _DURATION.match(value) and parse_duration(value) is None:
        zero = all(float(n) == 0 for n, _ in _DURATION_PART.findall(value))
        return f"must be more than 0, got {value}" if zero else f"is too long, got {value}"
    return None


def format_duration(seconds: float) -> str:
    """`10m`, `1h30m`, `45s`, `1.5s`, `250ms`: the form people write."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds != int(seconds):
        return f"{seconds:g}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts)


# --------------------------------------------------------------------------------------
# Parsing


_THRESHOLD_KEYS: Final = ("error_rate", "p99_ms", "p99_ratio", "min_requests", "shadow_agreement")
_COMPARISON_KEYS: Final = ("rtol", "atol", "max_body_bytes")
_POLICY_KEYS: Final = (
    "steps",
    "interval",
    "thresholds",
    "mode",
    "enabled",
    "metrics",
    "comparison",
)
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_NAME: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def parse_rollouts(
    raw: Mapping[str, Any], *, line_at: LineAt
) -> tuple[RolloutPolicies, list[Diagnostic]]:
    """Policies from the `rollouts:` mapping; errors name reconciler.yaml, line and field.

    The schema (schemas/reconciler.schema.json) has already named unknown keys and wrong
    types; this skips what it rejected and checks what it cannot say. line_at gives the line
    of a path of keys below `rollouts`.
    """
    errors: list[Diagnostic] = []

    def error(path: RolloutPath, message: str) -> None:
        errors.append(Diagnostic(CONFIG_FILE, line_at(path), _field((ROLLOUTS, *path)), message))

    raw_default = raw.get("default")
    default_raw = raw_default if isinstance(raw_default, dict) else None
    default = None
    if default_raw is not None:
        default = _policy(default_raw, ("default",), error=error, line_at=line_at)
    overrides: list[tuple[str, RolloutPolicy | None]] = []
    per_endpoint = raw.get("endpoints")
    for name, entry in (per_endpoint if isinstance(per_endpoint, dict) else {}).items():
        if not isinstance(entry, dict):
            continue  # the schema said why
        merged = _merged(default_raw or {}, entry)
        where: RolloutPath = ("endpoints", str(name))
        if merged.get("enabled", True) is False:
            overrides.append((str(name), None))
            continue
        if "steps" not in merged:
            error(where, "names no steps, and rollouts.default gives none")
            continue
        policy = _policy(merged, where, error=error, line_at=line_at, own=entry)
        overrides.append((str(name), policy))
    return RolloutPolicies(default, tuple(sorted(overrides, key=lambda o: o[0]))), errors


def _merged(default: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**default, **entry}
    for key in ("thresholds", "comparison"):
        base, own = default.get(key), entry.get(key)
        if isinstance(base, dict) and isinstance(own, dict):
            merged[key] = {**base, **own}
    return merged


def _policy(
    raw: Mapping[str, Any],
    where: RolloutPath,
    *,
    error: Callable[[RolloutPath, str], None],
    line_at: LineAt,
    own: Mapping[str, Any] | None = None,
) -> RolloutPolicy | None:
    """One policy; an error in a key inherited from default is reported once, at default."""
    if raw.get("enabled", True) is False:
        return None

    def report(key: str) -> Callable[[RolloutPath, str], None]:
        inherited = own is not None and key not in own
        return (lambda _p, _m: None) if inherited else error

    if "steps" not in raw:
        error(where, "missing required field 'steps'")
        return None
    failed = False
    raw_interval = raw.get("interval", DEFAULT_INTERVAL_S)
    interval = parse_duration(raw_interval)
    if interval is None:
        failed = True  # the schema said why, or:
        problem = duration_problem(raw_interval)
        if problem is not None:
            report("interval")((*where, "interval"), problem)
        interval = DEFAULT_INTERVAL_S
    steps = _steps(raw["steps"], (*where, "steps"), interval_s=interval, error=report("steps"))
    thresholds = _thresholds(
        raw.get("thresholds"), (*where, "thresholds"), error=report("thresholds")
    )
    comparison = _comparison(
        raw.get("comparison"), (*where, "comparison"), error=report("comparison")
    )
    mode_text = raw.get("mode", Mode.COMMIT.value)
    mode = Mode(mode_text) if mode_text in {m.value for m in Mode} else None
    metrics_ok, metrics = _metrics(raw.get("metrics"), (*where, "metrics"), error=report("metrics"))
    if (
        steps is None
        or thresholds is None
        or comparison is None
        or mode is None
        or failed
        or not metrics_ok
    ):
        return None
    return RolloutPolicy(
        steps, interval, thresholds, mode, metrics, comparison=comparison, line=line_at(where)
    )


def _steps(
    raw: Any,
    where: RolloutPath,
    *,
    interval_s: float,
    error: Callable[[RolloutPath, str], None],
) -> tuple[Step, ...] | None:
    if not isinstance(raw, list) or not raw:
        return None  # the schema said why
    steps: list[Step] = []
    ok = True
    for index, item in enumerate(raw):
        at: RolloutPath = (*where, index)
        step = _step(item, at, interval_s=interval_s, error=error)
        if step is None:
            ok = False
            continue
        if steps and steps[-1].kind is StepKind.TRAFFIC and step.kind is StepKind.MIRROR:
            error(
                at,
                "a mirror step must come before every traffic step: a deployment with live "
                "traffic cannot be mirrored to",
            )
            ok = False
        elif (
            steps
            and step.kind is StepKind.TRAFFIC
            and steps[-1].kind is StepKind.TRAFFIC
            and step.percent <= steps[-1].percent
        ):
            error(
                at,
                f"traffic must rise from step to step: {step.percent}% after {steps[-1].percent}%",
            )
            ok = False
        steps.append(step)
    if not ok:
        return None
    last = steps[-1]
    if last.kind is not StepKind.TRAFFIC or last.percent != 100:
        error(
            (*where, len(steps) - 1),
            f"the last step must give the new deployment all live traffic (100), got "
            f"{last.kind.value} {last.percent}",
        )
        return None
    return tuple(steps)


def _step(
    item: Any,
    at: RolloutPath,
    *,
    interval_s: float,
    error: Callable[[RolloutPath, str], None],
) -> Step | None:
    if isinstance(item, bool):
        return None  # the schema said why
    if isinstance(item, int):
        return Step(StepKind.TRAFFIC, item, interval_s) if 1 <= item <= 100 else None
    if not isinstance(item, dict):
        return None
    if any(key not in ("mirror", "traffic", "for") for key in item):
        return None  # the schema named the unknown key
    kinds = [k for k in (StepKind.MIRROR, StepKind.TRAFFIC) if k.value in item]
    if len(kinds) != 1:
        error(at, "a step names one of mirror or traffic, e.g. {mirror: 20, for: 10m} or 25")
        return None
    kind = kinds[0]
    percent = item[kind.value]
    high = MAX_MIRROR_PERCENT if kind is StepKind.MIRROR else 100
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= high:
        return None  # the schema said why
    for_s = parse_duration(item.get("for", interval_s))
    if for_s is None:
        problem = duration_problem(item.get("for"))
        if problem is not None:
            error((*at, "for"), problem)
        return None
    if for_s < interval_s:
        error(
            (*at, "for"),
            f"is shorter than the interval ({format_duration(for_s)} < "
            f"{format_duration(interval_s)}): the step would never be judged in time",
        )
        return None
    return Step(kind, percent, for_s)


def _metrics(
    raw: Any, where: RolloutPath, *, error: Callable[[RolloutPath, str], None]
) -> tuple[bool, PrometheusSource | None]:
    """(valid, source) of `metrics:`; absent or `router` is (True, None)."""
    if raw is None or raw == ROUTER_SOURCE:
        return True, None
    if not isinstance(raw, dict) or set(raw) != {"prometheus"}:
        return False, None  # the schema said why
    prom = raw["prometheus"]
    at: RolloutPath = (*where, "prometheus")
    if not isinstance(prom, dict):
        return False, None
    address = prom.get("address")
    if not isinstance(address, str):
        return False, None
    scheme, _, rest = address.partition("://")
    ok = True
    if scheme not in ("http", "https") or not rest.partition("/")[0]:
        error((*at, "address"), "is not an http:// or https:// address of a Prometheus server")
        ok = False
    elif "@" in rest.partition("/")[0]:
        error(
            (*at, "address"),
            "holds a user or password: the address is shown in status and logs; give a "
            "bearer token with bearer_token_env or bearer_token_file instead",
        )
        ok = False
    timeout = parse_duration(prom.get("timeout", DEFAULT_PROMETHEUS_TIMEOUT_S))
    env, file = prom.get("bearer_token_env"), prom.get("bearer_token_file")
    if env is not None and file is not None:
        error(at, "names bearer_token_env and bearer_token_file: the token comes from one")
        ok = False
    if env is not None and not (isinstance(env, str) and _ENV_NAME.match(env)):
        ok = False  # the schema said why
    if file is not None and not (isinstance(file, str) and file):
        ok = False
    raw_labels = prom.get("labels", {})
    labels: list[tuple[str, str]] = []
    for name, value in (raw_labels if isinstance(raw_labels, dict) else {}).items():
        if not isinstance(value, str) or not _LABEL_NAME.match(str(name)):
            ok = False  # the schema said why
        elif name in ROUTER_LABELS:
            error(
                (*at, "labels", str(name)),
                f"is a label the router sets itself ({name}): the analysis matches it",
            )
            ok = False
        else:
            labels.append((str(name), value))
    if timeout is None or not isinstance(raw_labels, dict) or not ok:
        return False, None
    return True, PrometheusSource(
        address.rstrip("/"),
        timeout,
        env if isinstance(env, str) else None,
        file if isinstance(file, str) else None,
        tuple(sorted(labels)),
    )


def _thresholds(
    raw: Any, where: RolloutPath, *, error: Callable[[RolloutPath, str], None]
) -> Thresholds | None:
    """None when refused: by the schema (which said why), or here for a number that is not
    finite (the schema lets `.nan` through: `rate <= nan` is false, so every judged step
    would fail and roll back; `.inf` would check nothing)."""
    if raw is None:
        return Thresholds()
    if not isinstance(raw, dict):
        return None
    values: dict[str, Any] = {}
    ok = True
    for key in _THRESHOLD_KEYS:
        if key not in raw:
            continue
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            if value is None and key != "min_requests":
                values[key] = None  # `p99_ms: null` turns a default check off
                continue
            return None  # the schema said why
        if key == "min_requests" and not isinstance(value, int):
            return None  # the schema said why (an integer; int(.inf) would raise)
        if not math.isfinite(value):
            error((*where, key), f"must be a finite number, got {value}")
            ok = False
            continue
        values[key] = int(value) if key == "min_requests" else float(value)
    return Thresholds(**values) if ok else None


def _comparison(
    raw: Any, where: RolloutPath, *, error: Callable[[RolloutPath, str], None]
) -> Comparison | None:
    """None when it is refused: by the schema (which said why), or here for what the
    schema cannot say (a tolerance of .nan or .inf)."""
    if raw is None:
        return Comparison()
    if not isinstance(raw, dict) or any(key not in _COMPARISON_KEYS for key in raw):
        return None
    values: dict[str, Any] = {}
    for key in _COMPARISON_KEYS:
        value = raw.get(key)
        if value is None:
            continue  # `rtol: null`: the router's default
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value):
            error((*where, key), f"must be a finite number, got {value}")
            return None
        if value < 0:
            return None
        if key == "max_body_bytes":
            if not isinstance(value, int) or value < 1:
                return None
            values[key] = value
        else:
            values[key] = float(value)
    return Comparison(**values)


def conflicts_with_policies(
    rollouts: RolloutPolicies, policies: Policies, *, line_at: LineAt
) -> list[Diagnostic]:
    """Where a rollout's steps would break a review policy: the steps are commits to the
    watched branch, so the policies must hold for them by construction.

    max_traffic_shift: no step moves more points of live traffic than the endpoint's limit
    (the first traffic step moves its own share). mirror_before_traffic: the steps start
    with mirroring, for at least min_hours in all. A rollback is exempt: it takes traffic
    away from a deployment that failed, and waiting would serve callers from it.
    """
    found: list[Diagnostic] = []
    shift = policies.max_traffic_shift
    mirror = policies.mirror_before_traffic
    checked: list[tuple[RolloutPath, RolloutPolicy, int | None, str]] = []
    named = {name for name, _ in rollouts.endpoints}
    if rollouts.default is not None:
        limit = shift.default if shift is not None else None
        checked.append((("default",), rollouts.default, limit, ""))
        # An endpoint with its own shift limit but the default rollout policy.
        for name, own_limit in shift.endpoints if shift is not None else ():
            if name not in named:
                checked.append((("default",), rollouts.default, own_limit, f" for {name}"))
    for name, policy in rollouts.endpoints:
        if policy is not None:
            limit = shift.for_endpoint(name) if shift is not None else None
            checked.append((("endpoints", name), policy, limit, ""))
    for where, policy, limit, whom in checked:
        field = _field((ROLLOUTS, *where, "steps"))
        line = line_at((*where, "steps"))
        if limit is not None:
            before = 0
            for number, step in enumerate(policy.steps, start=1):
                if step.kind is not StepKind.TRAFFIC:
                    continue
                if step.percent - before > limit:
                    found.append(
                        Diagnostic(
                            CONFIG_FILE,
                            line,
                            field,
                            f"step {number} moves {step.percent - before} points of live "
                            f"traffic ({before} -> {step.percent}) where policies."
                            f"{MAX_TRAFFIC_SHIFT} allows {limit}{whom}: add steps between",
                        )
                    )
                before = step.percent
        if mirror is not None:
            mirrored_s = sum(s.for_s for s in policy.steps if s.kind is StepKind.MIRROR)
            if policy.steps[0].kind is not StepKind.MIRROR:
                found.append(
                    Diagnostic(
                        CONFIG_FILE,
                        line,
                        field,
                        f"policies.{MIRROR_BEFORE_TRAFFIC} asks for mirroring before live "
                        "traffic: start with a mirror step, e.g. {mirror: 20, for: 10m}",
                    )
                )
            elif mirrored_s < mirror.min_hours * 3600:
                found.append(
                    Diagnostic(
                        CONFIG_FILE,
                        line,
                        field,
                        f"the mirror steps last {format_duration(mirrored_s)} where policies."
                        f"{MIRROR_BEFORE_TRAFFIC} asks for "
                        f"{format_duration(mirror.min_hours * 3600)}: lengthen their `for`",
                    )
                )
    return found


def _field(path: RolloutPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
