"""health: ordered values and worst-of."""

from __future__ import annotations

from reconciler.health import Health, deployment_health, worst
from reconciler.model.keys import ResourceKey
from reconciler.model.state import LiveDeployment, ProvisioningState


def _dep(
    ready: int, count: int, state: ProvisioningState = ProvisioningState.SUCCEEDED
) -> LiveDeployment:
    return LiveDeployment(
        ResourceKey("ep", "d"), "sha256:x", count, ready_instances=ready, provisioning_state=state
    )


def test_worst_of_is_the_maximum() -> None:
    assert worst([Health.HEALTHY, Health.DEGRADED, Health.PROGRESSING]) == Health.DEGRADED
    assert worst([]) == Health.HEALTHY


def test_deployment_health_from_ready_instances_and_state() -> None:
    assert deployment_health(_dep(2, 2)) == Health.HEALTHY
    assert deployment_health(_dep(1, 2)) == Health.PROGRESSING
    assert deployment_health(_dep(2, 2, ProvisioningState.UPDATING)) == Health.PROGRESSING
    assert deployment_health(_dep(0, 2, ProvisioningState.FAILED)) == Health.DEGRADED
    assert deployment_health(None) == Health.MISSING
