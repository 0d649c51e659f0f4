"""A Deployment's status as provisioning state and ready instances (kubectl's rollout
status rules), and pods that cannot start reported before the progress deadline."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.model.state import ProvisioningState
from reconciler.targets.kubernetes.rollout import rollout, stuck_pod


def deployment(want: int = 3, generation: int = 2, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "d", "generation": generation},
        "spec": {"replicas": want},
        "status": status,
    }


def done(want: int = 3, generation: int = 2) -> dict[str, Any]:
    return deployment(
        want,
        generation,
        observedGeneration=generation,
        replicas=want,
        updatedReplicas=want,
        availableReplicas=want,
        readyReplicas=want,
    )


def test_a_complete_rollout_succeeded() -> None:
    status = rollout(done())
    assert status.complete and status.state == ProvisioningState.SUCCEEDED
    assert (status.replicas, status.ready) == (3, 3)


@pytest.mark.parametrize(
    ("obj", "state", "ready"),
    [
        # The controller has not seen the newest spec yet.
        (
            deployment(observedGeneration=1, replicas=3, updatedReplicas=3, availableReplicas=3),
            ProvisioningState.UPDATING,
            3,
        ),
        # New pods surging, old ones still serving.
        (
            deployment(observedGeneration=2, replicas=4, updatedReplicas=1, availableReplicas=3),
            ProvisioningState.UPDATING,
            1,
        ),
        # Every pod runs the newest template; one more is still starting.
        (
            deployment(observedGeneration=2, replicas=3, updatedReplicas=3, availableReplicas=2),
            ProvisioningState.SCALING,
            2,
        ),
        # A new Deployment, nothing available yet.
        (deployment(generation=1, observedGeneration=1), ProvisioningState.CREATING, 0),
    ],
)
def test_rollouts_under_way(obj: dict[str, Any], state: ProvisioningState, ready: int) -> None:
    status = rollout(obj)
    assert not status.complete
    assert (status.state, status.ready) == (state, ready)


def test_progress_deadline_exceeded_is_failed_with_the_controller_message() -> None:
    obj = done()
    obj["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet has timed out progressing.",
        }
    ]
    status = rollout(obj)
    assert status.state == ProvisioningState.FAILED
    assert status.error == "ReplicaSet has timed out progressing."


def _pod(name: str, reason: str | None, *, init: bool = False) -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": "details"}} if reason else {"running": {}}
    field = "initContainerStatuses" if init else "containerStatuses"
    return {"metadata": {"name": name}, "status": {field: [{"name": "c", "state": state}]}}


def test_a_pod_that_cannot_start_fails_the_rollout_at_once() -> None:
    pods = [_pod("b", None), _pod("a", "ImagePullBackOff", init=True)]
    assert stuck_pod(pods) == ("a", "ImagePullBackOff: details")
    status = rollout(deployment(generation=1, observedGeneration=1), pods)
    assert status.state == ProvisioningState.FAILED and status.failing_pod == "a"
    # Waiting for a pull or a container start is normal.
    assert stuck_pod([_pod("c", "ContainerCreating")]) is None


def test_a_deployment_being_deleted() -> None:
    obj = done()
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert rollout(obj).state == ProvisioningState.DELETING
