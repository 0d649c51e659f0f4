"""An in-memory target: the platform is a pair of dicts.

For tests of the engine and executor where the platform is not what is being tested (as
httpx's MockTransport is for clients), and for property tests that apply random plans. It
follows the same contract as real targets: it applies only what a step says, refuses what
a real platform would refuse (traffic to a deployment that does not exist or has no ready
instance, deleting a deployment that still has traffic), and never waits: with `warmup`,
instances started by a step become ready only after that many observations (time passing
on a platform), and the step says it is in progress meanwhile. Instances of a broken
deployment or version (an init() that raises) fail when their warmup is over; the
instances that served before keep serving, as in a rolling update.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reconciler.model.keys import ResourceKey
from reconciler.model.plan import (
    CreateDeployment,
    CreateEndpoint,
    DeleteDeployment,
    DeleteEndpoint,
    RepairDeployment,
    RepairEndpoint,
    ScaleDeployment,
    SetMirrorTraffic,
    SetTraffic,
    Step,
    UpdateDeployment,
    UpdateEndpoint,
)
from reconciler.model.results import Waiting
from reconciler.model.specs import weight_of
from reconciler.model.state import LiveDeployment, LiveEndpoint, LiveState, ProvisioningState
from reconciler.targets.base import ProgressCallback, StepHandlers, Target, TargetError, dispatch


@dataclass
class MemoryTarget:
    name: str = "memory"
    endpoints: dict[str, LiveEndpoint] = field(default_factory=dict)
    deployments: dict[ResourceKey, LiveDeployment] = field(default_factory=dict)
    # Deployments whose instances never become ready (an init() that raises).
    broken: set[ResourceKey] = field(default_factory=set)
    # Versions (spec digests) whose instances never become ready, on any deployment.
    broken_digests: set[str] = field(default_factory=set)
    # Observations before instances a step started are ready (0: at once).
    warmup: int = 0
    applied: list[Step] = field(default_factory=list)
    # Deployments whose started instances are not ready yet: observations left.
    starting: dict[ResourceKey, int] = field(default_factory=dict)

    @classmethod
    def from_state(cls, state: LiveState, *, name: str = "memory") -> MemoryTarget:
        return cls(
            name=name,
            endpoints={e.name: e for e in state.endpoints},
            deployments={d.key: d for d in state.deployments},
        )

    def observe(self) -> LiveState:
        """What runs now; each observation lets the time of one warmup pass."""
        for key in sorted(self.starting):
            self.starting[key] -= 1
            if self.starting[key] <= 0:
                del self.starting[key]
                self._started(key)
        return self.snapshot()

    def snapshot(self) -> LiveState:
        """What runs now, without letting time pass (for checks of tests)."""
        return LiveState(
            endpoints=tuple(self.endpoints[n] for n in sorted(self.endpoints)),
            deployments=tuple(self.deployments[k] for k in sorted(self.deployments)),
            target=self.name,
        )

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> Waiting | None:
        key = _key(step)
        dispatch(self, step, None)
        self.applied.append(step)
        if progress is not None:
            progress(f"{step.action} {step.target_name} applied")
        if key.deployment is not None and key in self.starting:
            live = self.deployments[key]
            return Waiting(f"{key} healthy ({live.ready_instances}/{live.instance_count} ready)")
        return None

    # --- handlers: one per action -------------------------------------------------------

    def _create_endpoint(self, step: Step, do: CreateEndpoint, say: ProgressCallback) -> None:
        if step.endpoint in self.endpoints:
            raise TargetError(f"endpoint {step.endpoint} exists already")
        self.endpoints[step.endpoint] = LiveEndpoint(spec=do.spec)

    def _update_endpoint(self, step: Step, do: UpdateEndpoint, say: ProgressCallback) -> None:
        current = self._endpoint(step.endpoint)
        # Traffic belongs to its own steps: keep what serves now.
        spec = replace(
            do.spec,
            traffic=current.spec.traffic,
            mirror_traffic=current.spec.mirror_traffic,
        )
        self.endpoints[step.endpoint] = replace(current, spec=spec)

    def _repair_endpoint(self, step: Step, do: RepairEndpoint, say: ProgressCallback) -> None:
        self._update_endpoint(step, UpdateEndpoint(do.spec), say)
        current = self._endpoint(step.endpoint)
        self.endpoints[step.endpoint] = replace(
            current, repair=None, provisioning_state=ProvisioningState.SUCCEEDED
        )

    def _delete_endpoint(self, step: Step, do: DeleteEndpoint, say: ProgressCallback) -> None:
        self._endpoint(step.endpoint)
        if any(k.endpoint == step.endpoint for k in self.deployments):
            raise TargetError(f"endpoint {step.endpoint} still has deployments")
        del self.endpoints[step.endpoint]

    def _create_deployment(self, step: Step, do: CreateDeployment, say: ProgressCallback) -> None:
        key = _key(step)
        self._endpoint(step.endpoint)
        spec = do.spec
        if key in self.deployments:
            raise TargetError(f"deployment {key} exists already")
        self.deployments[key] = LiveDeployment(
            key=key,
            digest=spec.digest,
            instance_count=do.instance_count,
            scale_settings=spec.scale_settings,
            spec=spec,
            ready_instances=0,
            provisioning_state=ProvisioningState.CREATING,
            instance_type=spec.instance_type,
        )
        self._start(key)

    def _scale_deployment(self, step: Step, do: ScaleDeployment, say: ProgressCallback) -> None:
        key = _key(step)
        current = self._deployment(key)
        growing = do.instance_count > current.instance_count
        self.deployments[key] = replace(
            current,
            instance_count=do.instance_count,
            scale_settings=do.scale_settings,
            # Fewer instances: those that stay serve on; more: the new ones start.
            ready_instances=min(current.ready_instances, do.instance_count),
            provisioning_state=(
                ProvisioningState.SCALING if growing else current.provisioning_state
            ),
        )
        if growing:
            self._start(key)

    def _update_deployment(self, step: Step, do: UpdateDeployment, say: ProgressCallback) -> None:
        key = _key(step)
        current = self._deployment(key)
        spec = do.spec
        # A rolling update: what served keeps serving until the new instances are ready.
        self.deployments[key] = replace(
            current,
            digest=spec.digest,
            spec=spec,
            instance_count=do.instance_count,
            scale_settings=spec.scale_settings,
            instance_type=spec.instance_type,
            ready_instances=min(current.ready_instances, do.instance_count),
            provisioning_state=ProvisioningState.UPDATING,
            last_error=None,
        )
        self._start(key)

    def _repair_deployment(self, step: Step, do: RepairDeployment, say: ProgressCallback) -> None:
        key = _key(step)
        current = self._deployment(key)
        self.deployments[key] = replace(current, repair=None)

    def _delete_deployment(self, step: Step, do: DeleteDeployment, say: ProgressCallback) -> None:
        key = ResourceKey(step.endpoint, do.name)
        self._deployment(key)
        endpoint = self._endpoint(step.endpoint)
        if weight_of(endpoint.spec.traffic, do.name) or weight_of(
            endpoint.spec.mirror_traffic, do.name
        ):
            raise TargetError(f"deployment {key} still has traffic")
        del self.deployments[key]
        self.starting.pop(key, None)

    def _set_traffic(self, step: Step, do: SetTraffic, say: ProgressCallback) -> None:
        endpoint = self._endpoint(step.endpoint)
        self._require_ready(step.endpoint, [n for n, w in do.weights if w])
        if any(weight_of(do.weights, n) for n, _ in endpoint.spec.mirror_traffic):
            raise TargetError("a mirrored deployment cannot have live traffic")
        self.endpoints[step.endpoint] = replace(
            endpoint, spec=replace(endpoint.spec, traffic=do.weights)
        )

    def _set_mirror_traffic(self, step: Step, do: SetMirrorTraffic, say: ProgressCallback) -> None:
        endpoint = self._endpoint(step.endpoint)
        self._require_ready(step.endpoint, [n for n, w in do.weights if w])
        if any(weight_of(endpoint.spec.traffic, n) for n, _ in do.weights):
            raise TargetError("a mirrored deployment cannot have live traffic")
        self.endpoints[step.endpoint] = replace(
            endpoint, spec=replace(endpoint.spec, mirror_traffic=do.weights)
        )

    # --- helpers --------------------------------------------------------------------------

    def _start(self, key: ResourceKey) -> None:
        """Instances of the deployment's current version start: ready after the warmup."""
        if self.warmup > 0:
            self.starting[key] = self.warmup
        else:
            self.starting.pop(key, None)
            self._started(key)

    def _started(self, key: ResourceKey) -> None:
        live = self.deployments.get(key)
        if live is None:
            return
        if key in self.broken or live.digest in self.broken_digests:
            # The new instances failed; those that served before still do.
            self.deployments[key] = replace(
                live, provisioning_state=ProvisioningState.FAILED, last_error="init() failed"
            )
            return
        self.deployments[key] = replace(
            live,
            ready_instances=live.instance_count,
            provisioning_state=ProvisioningState.SUCCEEDED,
            last_error=None,
        )

    def _endpoint(self, name: str) -> LiveEndpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            raise TargetError(f"endpoint {name} does not exist") from None

    def _deployment(self, key: ResourceKey) -> LiveDeployment:
        try:
            return self.deployments[key]
        except KeyError:
            raise TargetError(f"deployment {key} does not exist") from None

    def _require_ready(self, endpoint: str, names: list[str]) -> None:
        """Traffic only to a deployment with an instance to serve it, as a router needs."""
        for name in names:
            live = self.deployments.get(ResourceKey(endpoint, name))
            if live is None:
                raise TargetError(f"deployment {endpoint}/{name} does not exist")
            if live.instance_count > 0 and live.ready_instances == 0:
                raise TargetError(f"deployment {endpoint}/{name} has no ready instance")


def _key(step: Step) -> ResourceKey:
    return ResourceKey(step.endpoint, step.deployment)


# What this target claims to be, checked by mypy here: a runtime isinstance check
# (how callers ask for a capability) sees only the names of members.
_IS_TARGET: type[Target] = MemoryTarget
_HANDLES_STEPS: type[StepHandlers] = MemoryTarget
