"""Review policies: rules a change of the repository must keep to before it merges. PURE.

They live under `policies:` in the repository's `reconciler.yaml`; every rule is optional:

```yaml
policies:
  # The largest change of any deployment's live traffic share in one diff, in points.
  max_traffic_shift: 20            # or {default: 20, endpoints: {my-endpoint: 50}}
  # A deployment that gets live traffic for the first time must be mirrored at BASE,
  # for at least min_hours (by the commit times of the base branch's history).
  mirror_before_traffic: {min_hours: 24}   # or `true`: mirrored at BASE is enough
  # Deployments with live traffic keep at least this many instances (autoscaled:
  # min_instances).
  min_instances_with_traffic: 2    # or {default: 2, endpoints: {my-endpoint: 3}}
  # Changes of these endpoints need an approval marker ("*": every endpoint).
  require_approval: [my-endpoint]
```

What each rule compares, and when it does not apply:
- max_traffic_shift: |after - before| of each deployment's live share of one endpoint. An
  endpoint that had no live traffic at BASE (new, or all at 0) is exempt: no caller is
  served by it yet, so its first split shifts nobody.
- mirror_before_traffic: a deployment with 0 live traffic at BASE and some at HEAD, or one
  whose version (model, code, environment) changes while its share rises, on an
  endpoint that had live traffic at BASE (there is nothing to mirror on an endpoint that
  serves nobody). With min_hours, the mirroring must have been on continuously for that
  long: `MirrorHistory` (worked out from git by reconciler.review) says since when, and
  `now` is the time of the check, since traffic moves only once the change merges.
- min_instances_with_traffic: every deployment of HEAD with live traffic.
- require_approval: an endpoint whose spec, traffic or deployments differ between BASE and
  HEAD needs its name in a commit trailer `Reconcile-Approved: NAME` of a commit in
  BASE..HEAD, or `--approve NAME` on the command line. It is a marker for the review, not an
  access control: pair it with code owners of the endpoint's folder.

`check_policies(None, head, ...)` (what `reconcile validate` runs) checks only the rules
that need no base: min_instances_with_traffic. Violations are Diagnostics naming
reconciler.yaml, the rule's line and `policies.<rule>`; their message names the rule, the
endpoint and the numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from reconciler.model.diagnostics import Diagnostic

# The model's specs only where a check runs: reconciler.yaml's parser (every command) imports
# this module, and `status` or `invoke` never check policies (issue 15: start-up).
if TYPE_CHECKING:
    from reconciler.model.specs import DeploymentSpec
    from reconciler.model.state import DesiredState

# The file policies are read from; repoconfig reads the same file.
POLICY_FILE: Final = "reconciler.yaml"
MAX_TRAFFIC_SHIFT: Final = "max_traffic_shift"
MIRROR_BEFORE_TRAFFIC: Final = "mirror_before_traffic"
MIN_INSTANCES_WITH_TRAFFIC: Final = "min_instances_with_traffic"
REQUIRE_APPROVAL: Final = "require_approval"
RULES: Final = (
    MAX_TRAFFIC_SHIFT,
    MIRROR_BEFORE_TRAFFIC,
    MIN_INSTANCES_WITH_TRAFFIC,
    REQUIRE_APPROVAL,
)
APPROVAL_TRAILER: Final = "Reconcile-Approved"
EVERY_ENDPOINT: Final = "*"
_TRAILER: Final = re.compile(rf"(?im)^\s*{APPROVAL_TRAILER}\s*:\s*(.+?)\s*$")

LineAt = Callable[[tuple[str, ...]], int | None]


@dataclass(frozen=True, slots=True)
class Limit:
    """A number with per-endpoint overrides; default None: only the listed endpoints."""

    default: int | None
    endpoints: tuple[tuple[str, int], ...] = ()
    line: int | None = None

    def for_endpoint(self, endpoint: str) -> int | None:
        for name, value in self.endpoints:
            if name == endpoint:
                return value
        return self.default


@dataclass(frozen=True, slots=True)
class MirrorRule:
    """mirror_before_traffic: hours of mirrored traffic before live traffic."""

    min_hours: float = 0.0
    line: int | None = None


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """require_approval: the endpoints whose changes need an approval."""

    endpoints: tuple[str, ...]
    line: int | None = None

    def covers(self, endpoint: str) -> bool:
        return EVERY_ENDPOINT in self.endpoints or endpoint in self.endpoints


@dataclass(frozen=True, slots=True)
class Policies:
    """The policies of reconciler.yaml; None: the rule is off."""

    max_traffic_shift: Limit | None = None
    mirror_before_traffic: MirrorRule | None = None
    min_instances_with_traffic: Limit | None = None
    require_approval: ApprovalRule | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, rule) is None for rule in RULES)


@dataclass(frozen=True, slots=True)
class MirrorSince:
    """Since when a deployment has been mirrored without a break, on the base branch.

    since is the commit time (seconds since the epoch) of the oldest commit of the base
    branch's first-parent history, back from BASE, in which it is mirrored. complete is
    False when that history ended (a shallow clone, the walk's limit) while it was still
    mirrored: the mirroring may be older than `since`.
    """

    endpoint: str
    deployment: str
    since: float
    complete: bool = True


@dataclass(frozen=True, slots=True)
class MirrorHistory:
    """Since when each deployment has been mirrored, at the time of the check."""

    now: float  # the time of the check: traffic moves when the change merges, not before
    entries: tuple[MirrorSince, ...] = ()

    def since(self, endpoint: str, deployment: str) -> MirrorSince | None:
        for entry in self.entries:
            if (entry.endpoint, entry.deployment) == (endpoint, deployment):
                return entry
        return None


def is_violation(diagnostic: Diagnostic) -> bool:
    """A policy violation (as opposed to an error of the files themselves)."""
    return diagnostic.field.startswith("policies.") and diagnostic.message.startswith("policy ")


# --------------------------------------------------------------------------------------
# Parsing the `policies:` mapping


def parse_policies(raw: Mapping[str, Any], *, line_at: LineAt) -> tuple[Policies, list[Diagnostic]]:
    """Policies from the `policies:` mapping; errors name reconciler.yaml, line and field.

    line_at gives the line of a path of keys below `policies` (("max_traffic_shift",
    "endpoints")), or None.
    """
    errors: list[Diagnostic] = []

    def error(path: tuple[str, ...], message: str) -> None:
        field = ".".join(("policies", *path))
        errors.append(Diagnostic(POLICY_FILE, line_at(path), field, message))

    for key in raw:
        if key not in RULES:
            error((str(key),), f"unknown policy {key!r} (known: {', '.join(RULES)})")
    shift = _limit(raw, MAX_TRAFFIC_SHIFT, low=1, high=100, error=error, line_at=line_at)
    instances = _limit(
        raw, MIN_INSTANCES_WITH_TRAFFIC, low=1, high=None, error=error, line_at=line_at
    )
    return (
        Policies(
            max_traffic_shift=shift,
            mirror_before_traffic=_mirror_rule(raw, error=error, line_at=line_at),
            min_instances_with_traffic=instances,
            require_approval=_approval_rule(raw, error=error, line_at=line_at),
        ),
        errors,
    )


def _is_int(value: Any) -> bool:
    # YAML's `true` is an int to Python; a rule's number never is a boolean.
    return isinstance(value, int) and not isinstance(value, bool)


def _limit(
    raw: Mapping[str, Any],
    rule: str,
    *,
    low: int,
    high: int | None,
    error: Callable[[tuple[str, ...], str], None],
    line_at: LineAt,
) -> Limit | None:
    if rule not in raw or raw[rule] is None:
        return None
    value = raw[rule]
    bounds = f"from {low} to {high}" if high is not None else f"at least {low}"

    def number(path: tuple[str, ...], item: Any) -> int | None:
        if not _is_int(item) or item < low or (high is not None and item > high):
            error(path, f"must be a whole number {bounds}, got {item!r}")
            return None
        return int(item)

    shape = f"a number, or {{default: N, endpoints: {{NAME: N}}}}; got {value!r}"
    if _is_int(value) or not isinstance(value, dict):
        if not _is_int(value):
            error((rule,), f"must be {shape}")
            return None
        found = number((rule,), value)
        return None if found is None else Limit(found, line=line_at((rule,)))
    for key in value:
        if key not in ("default", "endpoints"):
            error((rule, str(key)), f"unknown key {key!r} (known: default, endpoints)")
    default = None
    if value.get("default") is not None:
        default = number((rule, "default"), value["default"])
    overrides: list[tuple[str, int]] = []
    per_endpoint = value.get("endpoints") or {}
    if not isinstance(per_endpoint, dict):
        error((rule, "endpoints"), "must be a mapping of endpoint name to a number")
        per_endpoint = {}
    for name, item in per_endpoint.items():
        found = number((rule, "endpoints", str(name)), item)
        if found is not None:
            overrides.append((str(name), found))
    return Limit(default, tuple(sorted(overrides)), line=line_at((rule,)))


def _mirror_rule(
    raw: Mapping[str, Any],
    *,
    error: Callable[[tuple[str, ...], str], None],
    line_at: LineAt,
) -> MirrorRule | None:
    value = raw.get(MIRROR_BEFORE_TRAFFIC)
    line = line_at((MIRROR_BEFORE_TRAFFIC,))
    if value is None or value is False:
        return None
    if value is True:
        return MirrorRule(line=line)
    if not isinstance(value, dict):
        error((MIRROR_BEFORE_TRAFFIC,), f"must be true, false or {{min_hours: N}}, got {value!r}")
        return None
    for key in value:
        if key != "min_hours":
            error((MIRROR_BEFORE_TRAFFIC, str(key)), f"unknown key {key!r} (known: min_hours)")
    hours = value.get("min_hours", 0)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or hours < 0:
        error((MIRROR_BEFORE_TRAFFIC, "min_hours"), f"must be a number >= 0, got {hours!r}")
        return None
    return MirrorRule(float(hours), line=line)


def _approval_rule(
    raw: Mapping[str, Any],
    *,
    error: Callable[[tuple[str, ...], str], None],
    line_at: LineAt,
) -> ApprovalRule | None:
    value = raw.get(REQUIRE_APPROVAL)
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        error((REQUIRE_APPROVAL,), f"must be a list of endpoint names (or '*'), got {value!r}")
        return None
    return ApprovalRule(tuple(sorted(set(names))), line=line_at((REQUIRE_APPROVAL,)))


# --------------------------------------------------------------------------------------
# Approvals


def approvals_from_messages(messages: Iterable[str]) -> frozenset[str]:
    """Endpoint names of `Reconcile-Approved: NAME[, NAME]` lines in commit messages.

    Any line counts, not only the last paragraph: a squash merge gathers the messages of a
    pull request's commits, trailers included, into one body.
    """
    found: set[str] = set()
    for message in messages:
        for match in _TRAILER.finditer(message):
            found.update(n for n in re.split(r"[,\s]+", match.group(1)) if n)
    return frozenset(found)


# --------------------------------------------------------------------------------------
# Checking


def traffic_newcomers(base: DesiredState, head: DesiredState) -> tuple[tuple[str, str], ...]:
    """(endpoint, deployment) pairs whose live traffic at HEAD goes to a version that never
    had any, on endpoints that served live traffic at BASE: a deployment with none at BASE,
    or one whose version (model, code, environment) changes in this change while its share
    rises. What mirror_before_traffic judges."""
    from reconciler.model.specs import weight_of

    found: list[tuple[str, str]] = []
    for endpoint in head.endpoints:
        before = base.endpoint(endpoint.name)
        if before is None or not before.traffic:
            continue
        for name, percent in endpoint.traffic:
            was = weight_of(before.traffic, name)
            rises_changed = percent > was and changed_version(base, head, endpoint.name, name)
            if percent > 0 and (was == 0 or rises_changed):
                found.append((endpoint.name, name))
    return tuple(sorted(found))


def changed_version(
    base: DesiredState, head: DesiredState, endpoint: str, deployment: str
) -> tuple[str, ...]:
    """What of a deployment declared at both BASE and HEAD changes its version (model,
    code, environment); () when it is new or keeps its version."""
    from reconciler.model.specs import version_changes

    before = {d.name: d for d in base.deployments_of(endpoint)}.get(deployment)
    after = {d.name: d for d in head.deployments_of(endpoint)}.get(deployment)
    if before is None or after is None:
        return ()
    return version_changes(before, after)


def mirror_history_needed(
    base: DesiredState, head: DesiredState, *, policies: Policies
) -> tuple[tuple[str, str], ...]:
    """Newcomers to live traffic that were mirrored at BASE, when the mirror rule asks for
    min_hours: only for these is the base branch's history worth reading."""
    from reconciler.model.specs import weight_of

    rule = policies.mirror_before_traffic
    if rule is None or rule.min_hours <= 0:
        return ()
    found: list[tuple[str, str]] = []
    for endpoint, deployment in traffic_newcomers(base, head):
        before = base.endpoint(endpoint)
        if changed_version(base, head, endpoint, deployment):
            continue  # what was mirrored is the old version: no history makes up for it
        if before is not None and weight_of(before.mirror_traffic, deployment) > 0:
            found.append((endpoint, deployment))
    return tuple(found)


def check_policies(
    base: DesiredState | None,
    head: DesiredState,
    *,
    policies: Policies,
    approvals: frozenset[str] = frozenset(),
    history: MirrorHistory | None = None,
) -> tuple[Diagnostic, ...]:
    """Every violation of the policies by the change from BASE to HEAD, sorted.

    base None: only the rules that need no base (what `reconcile validate` can check).
    history None: mirror_before_traffic checks that the deployment was mirrored at BASE,
    not for how long.
    """
    found: list[Diagnostic] = []
    if policies.min_instances_with_traffic is not None:
        found.extend(_min_instances(head, policies.min_instances_with_traffic))
    if base is not None:
        if policies.max_traffic_shift is not None:
            found.extend(_traffic_shift(base, head, policies.max_traffic_shift))
        if policies.mirror_before_traffic is not None:
            found.extend(_mirror_first(base, head, policies.mirror_before_traffic, history))
        if policies.require_approval is not None:
            found.extend(_approval(base, head, policies.require_approval, approvals))
    return tuple(sorted(found, key=lambda d: (d.field, d.message)))


def _violation(rule: str, line: int | None, message: str) -> Diagnostic:
    return Diagnostic(POLICY_FILE, line, f"policies.{rule}", f"policy {rule}: {message}")


def _traffic_shift(base: DesiredState, head: DesiredState, rule: Limit) -> list[Diagnostic]:
    from reconciler.model.specs import weight_of

    found: list[Diagnostic] = []
    for endpoint in head.endpoints:
        allowed = rule.for_endpoint(endpoint.name)
        before = base.endpoint(endpoint.name)
        if allowed is None or before is None or not before.traffic:
            continue
        names = sorted({n for n, _ in before.traffic} | {n for n, _ in endpoint.traffic})
        moves = [
            (abs(weight_of(endpoint.traffic, n) - weight_of(before.traffic, n)), n) for n in names
        ]
        largest = max((points for points, _ in moves), default=0)
        if largest <= allowed:
            continue
        shown = ", ".join(
            f"{n} {weight_of(before.traffic, n)} -> {weight_of(endpoint.traffic, n)}"
            for points, n in sorted(moves, key=lambda m: (-m[0], m[1]))
            if points > allowed
        )
        found.append(
            _violation(
                MAX_TRAFFIC_SHIFT,
                rule.line,
                f"{endpoint.name} moves {largest} points of traffic ({shown}) where "
                f"{allowed} {'is' if allowed == 1 else 'are'} allowed; move it in steps of at "
                f"most {allowed} points, one pull request each",
            )
        )
    return found


def _mirror_first(
    base: DesiredState, head: DesiredState, rule: MirrorRule, history: MirrorHistory | None
) -> list[Diagnostic]:
    from reconciler.model.specs import weight_of

    found: list[Diagnostic] = []
    for endpoint_name, deployment in traffic_newcomers(base, head):
        endpoint = head.endpoint(endpoint_name)
        assert endpoint is not None
        percent = weight_of(endpoint.traffic, deployment)
        who = f"{endpoint_name}/{deployment} gets {percent}% of live traffic"
        before = base.endpoint(endpoint_name)
        mirrored = before is not None and weight_of(before.mirror_traffic, deployment) > 0
        hours = f" for at least {_hours(rule.min_hours)} hours" if rule.min_hours else ""
        how = (
            f"mirror it first (mirror_traffic: {{{deployment}: N}}){hours}, then give it traffic "
            "in a later pull request"
        )
        changed = changed_version(base, head, endpoint_name, deployment)
        if changed:
            was = weight_of(before.traffic, deployment) if before is not None else 0
            found.append(
                _violation(
                    MIRROR_BEFORE_TRAFFIC,
                    rule.line,
                    f"{endpoint_name}/{deployment} goes from {was}% to {percent}% of live "
                    f"traffic with a new {', '.join(changed)} that was never mirrored; keep "
                    f"its share, mirror the new version first{hours}, then raise it in a "
                    "later pull request (or roll it out as another deployment)",
                )
            )
            continue
        if not mirrored:
            state = "is new" if not _declared(base, endpoint_name, deployment) else "had none"
            found.append(
                _violation(
                    MIRROR_BEFORE_TRAFFIC,
                    rule.line,
                    f"{who} but {state} and was not mirrored at the base; {how}",
                )
            )
            continue
        if not rule.min_hours or history is None:
            continue
        entry = history.since(endpoint_name, deployment)
        if entry is None:
            continue
        elapsed = max(0.0, history.now - entry.since) / 3600
        if elapsed >= rule.min_hours:
            continue
        when = datetime.fromtimestamp(entry.since, UTC).strftime("%Y-%m-%d %H:%M UTC")
        partial = (
            "" if entry.complete else " (the history ends there: fetch more of the base branch)"
        )
        found.append(
            _violation(
                MIRROR_BEFORE_TRAFFIC,
                rule.line,
                f"{who} after {_hours(elapsed)} hours of mirroring (since {when}{partial}) "
                f"where {_hours(rule.min_hours)} are required",
            )
        )
    return found


def _hours(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _declared(state: DesiredState, endpoint: str, deployment: str) -> bool:
    return any(d.name == deployment for d in state.deployments_of(endpoint))


def _min_instances(head: DesiredState, rule: Limit) -> list[Diagnostic]:
    from reconciler.model.specs import weight_of

    found: list[Diagnostic] = []
    for endpoint in head.endpoints:
        required = rule.for_endpoint(endpoint.name)
        if required is None:
            continue
        for spec in head.deployments_of(endpoint.name):
            percent = weight_of(endpoint.traffic, spec.name)
            count, what = _guaranteed_instances(spec)
            if percent > 0 and count < required:
                found.append(
                    _violation(
                        MIN_INSTANCES_WITH_TRAFFIC,
                        rule.line,
                        f"{endpoint.name}/{spec.name} gets {percent}% of live traffic with "
                        f"{what} {count} where at least {required} are required",
                    )
                )
    return found


def _guaranteed_instances(spec: DeploymentSpec) -> tuple[int, str]:
    """The instances a deployment keeps at the least, and the field that says so."""
    if spec.scale_settings.autoscaled:
        return spec.scale_settings.min_instances or 1, "min_instances"
    return spec.instance_count, "instance_count"


def _approval(
    base: DesiredState, head: DesiredState, rule: ApprovalRule, approvals: frozenset[str]
) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    names = sorted({e.name for e in base.endpoints} | {e.name for e in head.endpoints})
    for name in names:
        if not rule.covers(name) or name in approvals:
            continue
        changed = _changed_parts(base, head, name)
        if not changed:
            continue
        found.append(
            _violation(
                REQUIRE_APPROVAL,
                rule.line,
                f"{name} changes ({', '.join(changed)}) and needs an explicit approval: "
                f"a commit trailer '{APPROVAL_TRAILER}: {name}' in this change, "
                f"or --approve {name}",
            )
        )
    return found


def _changed_parts(base: DesiredState, head: DesiredState, endpoint: str) -> list[str]:
    """What differs of one endpoint between BASE and HEAD, in words a reviewer scans."""
    before, after = base.endpoint(endpoint), head.endpoint(endpoint)
    if before is None or after is None:
        return ["created"] if before is None else ["deleted"]
    parts: list[str] = []
    if before.traffic != after.traffic:
        parts.append("traffic")
    if before.mirror_traffic != after.mirror_traffic:
        parts.append("mirror_traffic")
    if replace(before, traffic=(), mirror_traffic=()) != replace(
        after, traffic=(), mirror_traffic=()
    ):
        parts.append("endpoint settings")
    old = {d.name: d for d in base.deployments_of(endpoint)}
    new = {d.name: d for d in head.deployments_of(endpoint)}
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            parts.append(f"{name} added")
        elif name not in new:
            parts.append(f"{name} removed")
        elif old[name] != new[name]:
            parts.append(f"{name} changed")
    return parts
