"""A Deployment's status (and its pods') as provisioning state and ready instances. PURE.

The deployment controller writes observedGeneration, replicas, updatedReplicas,
availableReplicas and the Progressing condition; kubectl's `rollout status` reads the same
fields. A rollout is complete when the controller has seen the newest spec, every replica
runs the newest template and every one is available. It has failed when the controller
gave up (ProgressDeadlineExceeded), or sooner, when a pod of the newest template cannot
start (crash loop, image not pullable): waiting out the deadline would only delay the
report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.model.state import ProvisioningState

# Waiting reasons that do not resolve by waiting.
STUCK_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True, slots=True)
class Rollout:
    state: ProvisioningState
    replicas: int  # what the Deployment asks for now (the autoscaler may have moved it)
    ready: int  # replicas of the newest template that are available
    complete: bool
    error: str | None = None
    failing_pod: str | None = None


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or []}


def stuck_pod(pods: Iterable[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(pod name, reason: message) of the first pod that cannot start, if any."""
    for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
        status = pod.get("status") or {}
        statuses = list(status.get("initContainerStatuses") or []) + list(
            status.get("containerStatuses") or []
        )
        for container in statuses:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in STUCK_REASONS:
                message = waiting.get("message") or ""
                return str(pod["metadata"]["name"]), f"{reason}: {message}".rstrip(": ")
    return None


def rollout(deployment: Mapping[str, Any], pods: Iterable[Mapping[str, Any]] = ()) -> Rollout:
    """The rollout of a Deployment; `pods` are the pods of its newest template."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    generation = int(meta.get("generation", 0))
    observed = int(status.get("observedGeneration", 0))
    updated = int(status.get("updatedReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    total = int(status.get("replicas", 0))
    ready = min(updated, available)
    if meta.get("deletionTimestamp"):
        return Rollout(ProvisioningState.DELETING, replicas, ready, complete=False)
    progressing = _conditions(status).get("Progressing") or {}
    if progressing.get("status") == "False" and progressing.get("reason") == (
        "ProgressDeadlineExceeded"
    ):
        message = str(progressing.get("message") or "the rollout made no progress")
        return Rollout(ProvisioningState.FAILED, replicas, ready, complete=False, error=message)
    stuck = stuck_pod(pods)
    if stuck is not None:
        pod, reason = stuck
        return Rollout(
            ProvisioningState.FAILED,
            replicas,
            ready,
            complete=False,
            error=f"pod {pod}: {reason}",
            failing_pod=pod,
        )
    seen = observed >= generation
    complete = seen and updated == replicas and total == replicas and available == replicas
    if complete:
        return Rollout(ProvisioningState.SUCCEEDED, replicas, ready, complete=True)
    if generation <= 1 and available == 0:
        state = ProvisioningState.CREATING
    elif not seen or updated < min(replicas, total) or total > updated:
        # New template pods still coming, or old ones still going.
        state = ProvisioningState.UPDATING
    else:
        state = ProvisioningState.SCALING
    return Rollout(state, replicas, ready, complete=False)
