"""Orders changes into a plan that drops no request. PURE.

The rules of DESIGN.md, per endpoint:
 1. create_endpoint before any step of its deployments;
 2. create_deployment before traffic or mirror traffic is given to it, and the traffic step
    waits until it is healthy;
 3. for one deployment, scale_deployment before update_deployment;
 4. capacity first: scale-ups before the traffic step, scale-downs after it;
 5. traffic and mirror traffic leave a deployment before delete_deployment;
 6. delete_endpoint only after its deployments are gone, and only when pruning is on;
 7. an invalid desired state yields no steps at all.
What the target reports out of line although its settings match comes first:
repair_endpoint (LiveEndpoint.repair), then each deployment's repair_deployment
(LiveDeployment.repair: instances ready but not routed, crashed or missing), so the steps
after them build on what runs as it should.
Every ordering decision is one phase number in one sort key (`_Phase`); no order is hidden
in a loop. Steps of one endpoint form a chain (each depends on the one before it), so a
failed step stops the rest of its endpoint and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import IntEnum

from reconciler.diffing import CONNECTIONS, DeploymentDiff, EndpointDiff, diff
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.instance_types import DEFAULT_INSTANCE_TYPES, InstanceType, quota_cores
from reconciler.model.plan import (
    CreateDeployment,
    CreateEndpoint,
    DeleteDeployment,
    DeleteEndpoint,
    EndpointSummary,
    FieldChange,
    Plan,
    RepairDeployment,
    RepairEndpoint,
    ScaleDeployment,
    SetMirrorTraffic,
    SetTraffic,
    Step,
    UpdateDeployment,
    UpdateEndpoint,
)
from reconciler.model.specs import DeploymentSpec, JsonValue, Weights, weight_of
from reconciler.model.state import DesiredState, LiveState


class _Phase(IntEnum):
    ENDPOINT = 0  # create_endpoint, update_endpoint, repair_endpoint
    REPAIR = 1  # repair_deployment: what runs brought in line before anything builds on it
    CREATE = 2  # create_deployment
    SCALE_UP = 3  # scale_deployment that adds (or keeps) capacity
    UPDATE = 4  # update_deployment of a deployment not being scaled down
    DATA_PLANE_1 = 5  # first of the traffic / mirror steps
    DATA_PLANE_2 = 6
    DATA_PLANE_3 = 7
    SCALE_DOWN = 8  # scale_deployment that removes capacity: after traffic fell
    UPDATE_AFTER_SCALE_DOWN = 9  # rule 3 for a deployment scaled down
    DELETE = 10  # delete_deployment: traffic and mirror already left
    DELETE_ENDPOINT = 11


@dataclass(frozen=True, slots=True)
class _Ordered:
    """A step with the endpoint, phase and deployment it is ordered by."""

    endpoint: str
    phase: _Phase
    deployment: str
    step: Step

    @property
    def sort_key(self) -> tuple[str, int, str]:
        return (self.endpoint, int(self.phase), self.deployment)


def make_plan(
    desired: DesiredState,
    live: LiveState,
    *,
    prune: bool,
    instance_types: Mapping[str, InstanceType] = DEFAULT_INSTANCE_TYPES,
    extra_warnings: tuple[Diagnostic, ...] = (),
) -> Plan:
    """Diff then order: the plan that takes `live` to `desired`."""
    diffs = diff(desired, live, prune=prune)
    return plan_from_diffs(
        diffs,
        instance_types=instance_types,
        warnings=desired.warnings + live.warnings + extra_warnings + _unpruned_warnings(diffs),
    )


def invalid_plan(errors: tuple[Diagnostic, ...], warnings: tuple[Diagnostic, ...] = ()) -> Plan:
    """Rule 7: errors and no steps; the target is left untouched."""
    return Plan(steps=(), errors=tuple(sorted(errors)), warnings=warnings)


def plan_from_diffs(
    diffs: tuple[EndpointDiff, ...],
    *,
    instance_types: Mapping[str, InstanceType] = DEFAULT_INSTANCE_TYPES,
    warnings: tuple[Diagnostic, ...] = (),
) -> Plan:
    ordered: list[_Ordered] = []
    for endpoint_diff in diffs:
        ordered.extend(_endpoint_steps(endpoint_diff, instance_types))
    ordered.sort(key=lambda o: o.sort_key)

    # Chain the steps of each endpoint: a failure stops its own endpoint only.
    steps: list[Step] = []
    last_of: dict[str, int] = {}
    for item in ordered:
        previous = last_of.get(item.endpoint)
        depends = (previous,) if previous is not None else ()
        last_of[item.endpoint] = len(steps)
        steps.append(replace(item.step, depends_on=depends))
    summaries = tuple(_summarise(d) for d in diffs if not d.kept_unpruned)
    return Plan(steps=tuple(steps), errors=(), warnings=tuple(warnings), endpoints=summaries)


def _summarise(d: EndpointDiff) -> EndpointSummary:
    return EndpointSummary(
        endpoint=d.name,
        traffic_before=d.traffic_before,
        traffic_after=() if d.is_delete else d.traffic_after,
        mirror_before=d.mirror_before,
        mirror_after=() if d.is_delete else d.mirror_after,
        deployments=tuple(dep.name for dep in d.deployments),
        created=d.is_create,
        deleted=d.is_delete,
    )


def _unpruned_warnings(diffs: tuple[EndpointDiff, ...]) -> tuple[Diagnostic, ...]:
    return tuple(
        Diagnostic(
            file="",
            line=None,
            field=d.name,
            message=(
                f"endpoint {d.name!r} runs on the target but no file declares it; "
                "it is left as it is (pass --prune to delete it)"
            ),
        )
        for d in diffs
        if d.kept_unpruned
    )


def _endpoint_steps(d: EndpointDiff, instance_types: Mapping[str, InstanceType]) -> list[_Ordered]:
    if d.kept_unpruned:
        return []
    out: list[_Ordered] = []

    def add(phase: _Phase, step: Step) -> None:
        out.append(_Ordered(d.name, phase, step.deployment or "", step))

    if d.is_create:
        assert d.desired is not None
        # Traffic is given by its own step once the deployments are healthy.
        add(
            _Phase.ENDPOINT,
            Step(
                CreateEndpoint(replace(d.desired, traffic=(), mirror_traffic=())),
                d.name,
                changes=d.endpoint_changes,
                reason="new endpoint; its deployments are created next, traffic last",
            ),
        )
    if d.desired is not None and d.live is not None and d.live.repair is not None:
        # Before anything else of the endpoint: every later step needs a working router.
        add(
            _Phase.ENDPOINT,
            Step(RepairEndpoint(d.desired), d.name, reason=f"repair: {d.live.repair}"),
        )
    if not d.is_create and d.desired is not None and d.endpoint_changes:
        add(
            _Phase.ENDPOINT,
            Step(
                UpdateEndpoint(d.desired),
                d.name,
                changes=d.endpoint_changes,
                reason=_endpoint_update_reason(d.endpoint_changes),
            ),
        )

    for dep in d.deployments:
        for phase, step in _deployment_steps(d, dep, instance_types):
            add(phase, step)

    for phase, step in zip(
        (_Phase.DATA_PLANE_1, _Phase.DATA_PLANE_2, _Phase.DATA_PLANE_3),
        _data_plane_steps(d),
        strict=False,
    ):
        add(phase, step)

    if d.is_delete:
        add(
            _Phase.DELETE_ENDPOINT,
            Step(
                DeleteEndpoint(),
                d.name,
                reason="pruned: no file declares this endpoint; its deployments are gone",
                prune=True,
            ),
        )
    return out


def _endpoint_update_reason(changes: tuple[FieldChange, ...]) -> str:
    names = ", ".join(c.path for c in changes)
    if any(c.path == "auth_mode" for c in changes):
        return f"endpoint settings change ({names}); callers need new credentials"
    if any(c.path.startswith("shadow_comparison") for c in changes):
        # Not in the endpoint's file: say where it comes from.
        return (
            f"endpoint settings change ({names}); shadow_comparison is the `comparison` of "
            "its rollout policy in reconciler.yaml"
        )
    return f"endpoint settings change ({names})"


def _deployment_steps(
    d: EndpointDiff, dep: DeploymentDiff, instance_types: Mapping[str, InstanceType]
) -> list[tuple[_Phase, Step]]:
    steps: list[tuple[_Phase, Step]] = []
    live = dep.live
    if d.desired is not None and live is not None and dep.desired is not None and live.repair:
        # What runs first matches what it should run (ready instances routed, crashed or
        # missing ones replaced): the scaling, update and traffic steps build on it.
        steps.append(
            (
                _Phase.REPAIR,
                Step(
                    RepairDeployment(dep.name, live.spec, live.instance_count, live.scale_settings),
                    d.name,
                    dep.name,
                    reason=f"repair: {live.repair}",
                ),
            )
        )
    if dep.is_create:
        spec = dep.desired
        assert spec is not None
        gets = weight_of(d.traffic_after, dep.name) or weight_of(d.mirror_after, dep.name)
        reason = "new deployment"
        reason += "; healthy before it receives traffic" if gets else "; no traffic yet"
        steps.append(
            (
                _Phase.CREATE,
                Step(
                    CreateDeployment(spec, dep.count_after, spec.scale_settings),
                    d.name,
                    dep.name,
                    changes=_summary(spec, dep.count_after),
                    reason=reason + _quota(spec.instance_type, dep.count_after, instance_types),
                ),
            )
        )
        return steps
    if dep.is_delete:
        steps.append(
            (
                _Phase.DELETE,
                Step(
                    DeleteDeployment(dep.name),
                    d.name,
                    dep.name,
                    changes=(FieldChange("instance_count", dep.count_before, None),),
                    reason=(
                        "no file declares it; its traffic and mirror traffic have left"
                        if d.desired is not None
                        else "pruned with its endpoint; its traffic has left"
                    ),
                    prune=d.desired is None,
                ),
            )
        )
        return steps

    spec = dep.desired
    assert spec is not None
    if dep.scale_changes:
        down = dep.scales_down
        direction = "down" if down else "up"
        when = (
            "after its traffic share falls"
            if down
            else "before code or traffic changes, so capacity comes first"
        )
        steps.append(
            (
                _Phase.SCALE_DOWN if down else _Phase.SCALE_UP,
                Step(
                    ScaleDeployment(spec, dep.count_after, spec.scale_settings),
                    d.name,
                    dep.name,
                    changes=dep.scale_changes,
                    reason=(
                        f"scale {direction} {dep.count_before} -> {dep.count_after} {when}"
                        + _quota(spec.instance_type, dep.count_after, instance_types)
                    ),
                ),
            )
        )
    if dep.update_changes:
        if dep.replace:
            reason = (
                "instance_type cannot change in place: instances are replaced, "
                "a new one healthy before an old one goes"
            )
        else:
            reason = "rolling update, 20% of instances at a time, each new one healthy first"
        reason = _connections_reason(dep.update_changes) + reason
        steps.append(
            (
                _Phase.UPDATE_AFTER_SCALE_DOWN if dep.scales_down else _Phase.UPDATE,
                Step(
                    UpdateDeployment(spec, dep.count_after, spec.scale_settings),
                    d.name,
                    dep.name,
                    changes=dep.update_changes,
                    reason=reason,
                    replace=dep.replace,
                ),
            )
        )
    return steps


def _connections_reason(changes: tuple[FieldChange, ...]) -> str:
    """`connection openai changed: ` when the update is (also) for changed secrets."""
    changed: list[str] = []
    unrecorded: list[str] = []
    for change in changes:
        head, _, name = change.path.partition(".")
        if head == CONNECTIONS and name:
            (unrecorded if change.before is None else changed).append(name)
    said = ""
    if changed:
        word = "connection" if len(changed) == 1 else "connections"
        said += f"{word} {', '.join(changed)} changed: "
    if unrecorded:
        word = "connection" if len(unrecorded) == 1 else "connections"
        said += (
            f"what its instances got of {word} {', '.join(unrecorded)} is not recorded "
            "(started by an earlier version): "
        )
    return said


def _summary(spec: DeploymentSpec, count: int) -> tuple[FieldChange, ...]:
    """What a reviewer wants to see of a new deployment, as changes from nothing."""
    env = spec.environment
    values: dict[str, JsonValue] = {
        "instance_count": count,
        "instance_type": spec.instance_type,
        "model": f"{spec.model.name}:{spec.model.version}" if spec.model else None,
        "environment": f"{env.name}:{env.version}" if env.name else env.image,
        "code": spec.code.path if spec.code else None,
    }
    if spec.scale_settings.autoscaled:
        values["scale_settings.type"] = spec.scale_settings.type
    return tuple(FieldChange(k, None, v) for k, v in values.items() if v is not None)


def _quota(instance_type: str | None, count: int, table: Mapping[str, InstanceType]) -> str:
    kind = table.get(instance_type or "")
    if kind is None:
        return ""
    cores = quota_cores(count, kind.cores)
    return f" (quota: ceil(1.2 x {count}) x {kind.cores} cores = {cores} cores)"


def _mirror_fits(mirror: Weights, traffic: Weights) -> bool:
    """A mirror target may not also have live traffic (an Azure ML rule)."""
    return all(weight_of(traffic, name) == 0 for name, _ in mirror)


def _rising(before: Weights, after: Weights) -> tuple[str, ...]:
    return tuple(name for name, pct in after if pct > weight_of(before, name))


def _data_plane_steps(d: EndpointDiff) -> list[Step]:
    """set_traffic and set_mirror_traffic, in an order whose every stage is a valid state."""
    tb, ta, mb, ma = d.traffic_before, d.traffic_after, d.mirror_before, d.mirror_after
    if d.is_delete:
        ta, ma = (), ()

    # Deployments whose instances are starting (scaled up from zero, or a step of an
    # earlier pass still in progress): weights that keep sending them requests wait for
    # them as for a rising one, since no router can serve a deployment with none ready.
    live = {dd.name: dd.live for dd in d.deployments if dd.live is not None}
    starting = {
        name
        for name, deployment in live.items()
        if deployment.instance_count > 0 and deployment.ready_instances == 0
    }

    def gate(before: Weights, after: Weights) -> tuple[str, ...]:
        rising = _rising(before, after)
        kept = tuple(n for n, pct in after if pct > 0 and n in starting and n not in rising)
        return rising + kept

    def traffic(before: Weights, after: Weights) -> Step:
        gated = gate(before, after)
        reason = "traffic moves"
        if gated:
            reason += f" once {', '.join(gated)} {'is' if len(gated) == 1 else 'are'} healthy"
        if d.is_delete:
            reason = "traffic leaves the endpoint's deployments before they are deleted"
        return Step(
            SetTraffic(after),
            d.name,
            changes=_weight_changes("traffic", before, after),
            reason=reason,
            wait_healthy=gated,
        )

    def mirror(before: Weights, after: Weights) -> Step:
        gated = gate(before, after)
        if not after:
            reason = "mirroring stops"
        else:
            reason = "a copy of live requests goes to the shadow deployment; answers are dropped"
            if gated:
                reason += f"; once {', '.join(gated)} is healthy"
        return Step(
            SetMirrorTraffic(after),
            d.name,
            changes=_weight_changes("mirror_traffic", before, after),
            reason=reason,
            wait_healthy=gated,
        )

    if tb == ta and mb == ma:
        return []
    if mb == ma:
        return [traffic(tb, ta)]
    if tb == ta:
        return [mirror(mb, ma)]
    if _mirror_fits(ma, tb):
        return [mirror(mb, ma), traffic(tb, ta)]
    if _mirror_fits(mb, ta):
        return [traffic(tb, ta), mirror(mb, ma)]
    # Mirror and traffic swap places: stop mirroring, move traffic, mirror again.
    return [mirror(mb, ()), traffic(tb, ta), mirror((), ma)]


def _weight_changes(field: str, before: Weights, after: Weights) -> tuple[FieldChange, ...]:
    names = sorted({n for n, _ in before} | {n for n, _ in after})
    return tuple(
        FieldChange(f"{field}.{n}", weight_of(before, n), weight_of(after, n))
        for n in names
        if weight_of(before, n) != weight_of(after, n)
    )
