"""Pairs desired and live resources by key and says what differs, field by field. PURE.

The result is a tuple of EndpointDiff values: for each endpoint, the endpoint's own field
changes, its traffic and mirror weights before and after, and a DeploymentDiff per
deployment on either side. Planning decides the order; this module only says what differs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from reconciler.model.keys import ResourceKey
from reconciler.model.plan import FieldChange
from reconciler.model.secrets import connections as referenced_connections
from reconciler.model.specs import (
    DeploymentSpec,
    EndpointSpec,
    JsonValue,
    ScaleSettings,
    Weights,
    spec_dict,
    template_dict,
    to_json,
)
from reconciler.model.state import DesiredState, LiveDeployment, LiveEndpoint, LiveState

# Endpoint fields the data plane owns: they become set_traffic / set_mirror_traffic steps.
TRAFFIC_FIELDS = ("traffic", "mirror_traffic")
# Endpoint fields a target can always observe; the others only when it knows the full spec.
OBSERVED_ENDPOINT_FIELDS = ("auth_mode",)
# Not a difference: where a spec was declared.
_NOT_COMPARED = ("name",)
# Changes of a connection's values show as `connections.NAME` (no spec field has the name).
CONNECTIONS = "connections"


@dataclass(frozen=True, slots=True)
class DeploymentDiff:
    """How one deployment differs between the desired and the live state."""

    key: ResourceKey
    desired: DeploymentSpec | None
    live: LiveDeployment | None
    scale_changes: tuple[FieldChange, ...] = ()
    update_changes: tuple[FieldChange, ...] = ()
    replace: bool = False  # instance_type changed: instances are replaced, not patched
    count_before: int = 0
    count_after: int = 0

    @property
    def name(self) -> str:
        assert self.key.deployment is not None
        return self.key.deployment

    @property
    def is_create(self) -> bool:
        return self.live is None and self.desired is not None

    @property
    def is_delete(self) -> bool:
        return self.desired is None and self.live is not None

    @property
    def scales_down(self) -> bool:
        return bool(self.scale_changes) and self.count_after < self.count_before

    @property
    def changed(self) -> bool:
        return self.is_create or self.is_delete or bool(self.scale_changes or self.update_changes)


@dataclass(frozen=True, slots=True)
class EndpointDiff:
    """How one endpoint differs between the desired and the live state."""

    name: str
    desired: EndpointSpec | None
    live: LiveEndpoint | None
    endpoint_changes: tuple[FieldChange, ...] = ()
    traffic_before: Weights = ()
    traffic_after: Weights = ()
    mirror_before: Weights = ()
    mirror_after: Weights = ()
    deployments: tuple[DeploymentDiff, ...] = ()
    # Declared nowhere and pruning is off: reported, left alone.
    kept_unpruned: bool = False

    @property
    def is_create(self) -> bool:
        return self.live is None and self.desired is not None

    @property
    def is_delete(self) -> bool:
        return self.desired is None and self.live is not None and not self.kept_unpruned


def field_changes(
    before: Mapping[str, JsonValue] | None, after: Mapping[str, JsonValue] | None
) -> tuple[FieldChange, ...]:
    """Field-level changes between two canonical dicts, as dotted paths, sorted.

    A change inside a list is reported as the whole list: "pip_packages" from [...] to
    [...] reads better in a review than an index. Mappings are compared key by key down to
    the values that differ; a key present on one side only is a change (even to or from
    None), and so are equal values of different types (1 and 1.0).

    The same answers as deepdiff's tree view with the list indices cut off, which this
    replaced: importing deepdiff (and numpy with it) cost every `reconcile diff` a fifth of
    a second (issue 15). tests/unit/test_diffing.py holds the two to the same answers.
    """
    before, after = before or {}, after or {}
    found: dict[str, FieldChange] = {}

    def walk(old: object, new: object, path: list[str | int]) -> None:
        if _same(old, new):
            return
        if isinstance(old, dict) and isinstance(new, dict) and not _mostly_new(old, new):
            for key in old.keys() | new.keys():
                walk(old.get(key, _MISSING), new.get(key, _MISSING), [*path, key])
            return
        # Inside a list (or under a key that is a number) the change is the whole value
        # where the path meets it, read from both sides.
        cut = next((i for i, part in enumerate(path) if isinstance(part, int)), None)
        if cut is None and isinstance(old, list) and isinstance(new, list):
            cut = len(path)
        if cut is not None:
            path = path[:cut]
            dotted = ".".join(str(p) for p in path)
            found[dotted] = FieldChange(dotted, _at(before, path), _at(after, path))
            return
        dotted = ".".join(str(p) for p in path)
        found[dotted] = FieldChange(dotted, _present(old), _present(new))

    # Top-level fields equal by value are no change (a field absent and one of None alike);
    # below them, types count.
    differing = [k for k in before.keys() | after.keys() if before.get(k) != after.get(k)]
    if _mostly_new(
        {k: before[k] for k in differing if k in before},
        {k: after[k] for k in differing if k in after},
    ):
        # Hardly a field in common: each reported whole.
        for key in differing:
            found[key] = FieldChange(key, before.get(key), after.get(key))
    else:
        for key in differing:
            walk(before.get(key, _MISSING), after.get(key, _MISSING), [key])
    return tuple(found[k] for k in sorted(found))


class _Missing:
    """A key absent from one side of a comparison."""


_MISSING: Final = _Missing()


# Below this share of keys in common, two mappings are one change, not one per key.
_KEYS_IN_COMMON: Final = 0.33


def _mostly_new(old: Mapping[object, object], new: Mapping[object, object]) -> bool:
    union = len(old.keys() | new.keys())
    return union > 1 and len(old.keys() & new.keys()) / union < _KEYS_IN_COMMON


def _same(a: object, b: object) -> bool:
    """Equal, and of the same types all the way down (1 and 1.0 differ, as in deepdiff)."""
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        assert isinstance(b, list)
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    return True


def _present(value: object) -> JsonValue:
    return None if value is _MISSING else value


def _at(data: Mapping[str, JsonValue] | None, path: Iterable[str | int]) -> JsonValue:
    node: JsonValue = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _endpoint_fields(spec: EndpointSpec, *, only: tuple[str, ...] | None) -> dict[str, JsonValue]:
    data = spec_dict(spec)
    for name in (*TRAFFIC_FIELDS, *_NOT_COMPARED):
        data.pop(name, None)
    if only is not None:
        data = {k: v for k, v in data.items() if k in only}
    return data


def _same_settings(a: EndpointSpec, b: EndpointSpec) -> bool:
    """Equal but for traffic (which has steps of its own) and where they were declared."""
    return a is b or a == replace(b, traffic=a.traffic, mirror_traffic=a.mirror_traffic)


def target_count(desired: DeploymentSpec, live_count: int | None) -> int:
    """The instance count a deployment should run.

    With autoscaling, the autoscaler owns the count between min and max: we only pull it
    back inside the bounds, never fight it.
    """
    scale = desired.scale_settings
    if not scale.autoscaled:
        return desired.instance_count
    current = desired.instance_count if live_count is None else live_count
    low = scale.min_instances if scale.min_instances is not None else 1
    high = scale.max_instances if scale.max_instances is not None else max(low, current)
    return min(max(current, low), high)


def _scale_dict(count: int, settings: ScaleSettings) -> dict[str, JsonValue]:
    return {"instance_count": count, "scale_settings": to_json(settings)}


def diff_deployment(desired: DeploymentSpec | None, live: LiveDeployment | None) -> DeploymentDiff:
    if desired is None and live is None:
        raise ValueError("a deployment diff needs at least one side")
    key = desired.key if desired is not None else live.key  # type: ignore[union-attr]
    if live is None:
        assert desired is not None
        count = target_count(desired, None)
        return DeploymentDiff(key, desired, None, count_after=count)
    if desired is None:
        return DeploymentDiff(key, None, live, count_before=live.instance_count)

    count_after = target_count(desired, live.instance_count)
    scale_changes: tuple[FieldChange, ...] = ()
    if live.instance_count != count_after or live.scale_settings != desired.scale_settings:
        # Equal ones (the common case) need no canonical dicts: they could not differ.
        scale_changes = field_changes(
            _scale_dict(live.instance_count, live.scale_settings),
            _scale_dict(count_after, desired.scale_settings),
        )
    update_changes: tuple[FieldChange, ...] = ()
    if live.spec is desired:
        # The very spec object (a file unchanged between the revisions of `reconcile diff`,
        # cached by its blob): nothing of it differs, and no digest need be worked out for
        # either side (issue 15).
        pass
    elif desired.digest != live.spec_digest:
        if live.spec is not None:
            update_changes = field_changes(template_dict(live.spec), template_dict(desired))
        if not update_changes:
            # Only the digest is known (or the canonical forms agree but the digest
            # scheme differs): say that the running spec is not the declared one.
            update_changes = (FieldChange("digest", live.spec_digest, desired.digest),)
    connection_changes = _connection_changes(desired, live)
    if connection_changes:
        update_changes = tuple(
            sorted(update_changes + connection_changes, key=lambda change: change.path)
        )
    live_type = live.spec.instance_type if live.spec is not None else live.instance_type
    replace = bool(update_changes) and live_type is not None and live_type != desired.instance_type
    return DeploymentDiff(
        key,
        desired,
        live,
        scale_changes=scale_changes,
        update_changes=update_changes,
        replace=replace,
        count_before=live.instance_count,
        count_after=count_after,
    )


def _connection_changes(desired: DeploymentSpec, live: LiveDeployment) -> tuple[FieldChange, ...]:
    """Connections whose values changed since the instances started: part of what a
    deployment runs, as a secret-hash annotation is part of a Kubernetes pod template.

    Only connections the declared spec still references count (one it dropped goes with
    the spec change); the values are keyed digests the target gave, never values.
    """
    if not live.connections:
        return ()  # the usual case: no need to read the spec's references
    referenced = set(referenced_connections(desired))
    return tuple(
        FieldChange(f"{CONNECTIONS}.{c.name}", c.started, c.current)
        for c in live.connections
        if c.changed and c.name in referenced
    )


def diff_endpoint(
    name: str,
    desired: EndpointSpec | None,
    live: LiveEndpoint | None,
    *,
    desired_deployments: tuple[DeploymentSpec, ...],
    live_deployments: tuple[LiveDeployment, ...],
    prune: bool,
) -> EndpointDiff:
    if desired is None and not prune:
        return EndpointDiff(name, None, live, kept_unpruned=True)
    wanted = {d.name: d for d in desired_deployments} if desired is not None else {}
    running = {d.name: d for d in live_deployments}
    deployments = tuple(
        diff_deployment(wanted.get(n), running.get(n)) for n in sorted(wanted.keys() | running)
    )
    endpoint_changes: tuple[FieldChange, ...] = ()
    if desired is not None and live is not None and _same_settings(desired, live.spec):
        pass  # the common case, decided without building dicts
    elif desired is not None and live is not None:
        only = None if live.spec_known else OBSERVED_ENDPOINT_FIELDS
        endpoint_changes = field_changes(
            _endpoint_fields(live.spec, only=only), _endpoint_fields(desired, only=only)
        )
    elif desired is not None:
        declared = _endpoint_fields(desired, only=None)
        endpoint_changes = field_changes(
            {}, {k: v for k, v in declared.items() if v not in (None, {}, [])}
        )
    return EndpointDiff(
        name,
        desired,
        live,
        endpoint_changes=endpoint_changes,
        traffic_before=live.spec.traffic if live else (),
        traffic_after=desired.traffic if desired else (),
        mirror_before=live.spec.mirror_traffic if live else (),
        mirror_after=desired.mirror_traffic if desired else (),
        deployments=deployments,
    )


def diff(desired: DesiredState, live: LiveState, *, prune: bool) -> tuple[EndpointDiff, ...]:
    """Every endpoint on either side, sorted by name.

    Endpoints the target could not read are left out: never planned, never pruned.
    """
    # Indexes once: a scan per endpoint would make a 1,000-endpoint diff quadratic.
    wanted = {e.name: e for e in desired.endpoints}
    running = {e.name: e for e in live.endpoints}
    wanted_deps: dict[str, list[DeploymentSpec]] = defaultdict(list)
    for spec in desired.deployments:
        wanted_deps[spec.endpoint_name].append(spec)
    running_deps: dict[str, list[LiveDeployment]] = defaultdict(list)
    for dep in live.deployments:
        running_deps[dep.endpoint].append(dep)
    names = wanted.keys() | running.keys() | wanted_deps.keys() | running_deps.keys()
    return tuple(
        diff_endpoint(
            name,
            wanted.get(name),
            running.get(name),
            desired_deployments=tuple(wanted_deps.get(name, ())),
            live_deployments=tuple(running_deps.get(name, ())),
            prune=prune,
        )
        for name in sorted(names - set(live.unreadable))
    )


def assume_applied(desired: DesiredState, *, target: str = "") -> LiveState:
    """The live state a target would show once `desired` is fully applied.

    `reconcile diff` plans from BASE to HEAD with this as BASE's live state. Each
    deployment's digest is left to its spec (LiveDeployment.spec_digest): a file unchanged
    between the revisions gives both sides the very same spec object, never digested, and
    digesting the 3,000 specs of a 1,000-endpoint BASE cost 40 ms (issue 15).
    """
    deployments = tuple(
        LiveDeployment(
            key=d.key,
            digest="",
            instance_count=target_count(d, None),
            scale_settings=d.scale_settings,
            spec=d,
            ready_instances=target_count(d, None),
            instance_type=d.instance_type,
        )
        for d in desired.deployments
    )
    endpoints = tuple(LiveEndpoint(spec=e) for e in desired.endpoints)
    return LiveState(endpoints=endpoints, deployments=deployments, target=target)
