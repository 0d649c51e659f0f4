"""Health of live resources: an ordered enum and worst-of. PURE.

The executor gates traffic steps on it; status reports it. Ordered from best to worst so
that the health of a group is simply the max of its members (gitops-engine's habit).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from reconciler.model.specs import weight_of
from reconciler.model.state import LiveDeployment, LiveEndpoint, LiveState, ProvisioningState


class Health(IntEnum):
    HEALTHY = 0
    PROGRESSING = 1  # instances starting, a rollout or a scaling under way
    UNKNOWN = 2  # the target cannot tell (yet)
    MISSING = 3  # declared, not on the target
    DEGRADED = 4  # failed: init() raised, image build failed, instances crash

    def __str__(self) -> str:
        return self.name.capitalize()


def worst(healths: Iterable[Health]) -> Health:
    return max(healths, default=Health.HEALTHY)


def deployment_health(live: LiveDeployment | None) -> Health:
    if live is None:
        return Health.MISSING
    state = live.provisioning_state
    if state in (ProvisioningState.FAILED, ProvisioningState.CANCELED):
        return Health.DEGRADED
    if state == ProvisioningState.DELETING:
        return Health.PROGRESSING
    if live.ready_instances >= live.instance_count and state == ProvisioningState.SUCCEEDED:
        return Health.HEALTHY
    return Health.PROGRESSING


def endpoint_health(endpoint: LiveEndpoint | None, state: LiveState) -> Health:
    """Worst health of the deployments that serve (live or mirrored traffic)."""
    if endpoint is None:
        return Health.MISSING
    if endpoint.provisioning_state == ProvisioningState.FAILED or endpoint.repair is not None:
        return Health.DEGRADED
    serving = [
        d
        for d in state.deployments_of(endpoint.name)
        if weight_of(endpoint.spec.traffic, d.name)
        or weight_of(endpoint.spec.mirror_traffic, d.name)
    ]
    return worst(deployment_health(d) for d in serving)
