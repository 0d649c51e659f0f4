"""The Target protocol every platform implements, and what applying a step returns.

A target observes what runs (rebuilding the live state from the platform itself: labels,
annotations, status files; never a local database) and applies one plan step at a time.
It never decides what to do: the plan says it. Applying never waits for a rollout: a step
that starts instances returns `Waiting` (what it waits for) and the next pass continues
from what observe shows. Every change a target makes is a step: what it finds out of line
(a router that does not answer, instances ready but not routed, crashed ones) it reports
in observe (LiveEndpoint.repair, LiveDeployment.repair), and the plan repairs it.

A target applies a step by `dispatch(self, step, progress)`, which calls its handler of the
step's payload type (StepHandlers). What a target can do beyond this is in capabilities.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, assert_never, runtime_checkable

from reconciler.model.errors import ErrorCode, ErrorKind
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
from reconciler.model.results import Outcome, StepResult, Waiting
from reconciler.model.state import LiveState

# In a module of their own (light to import); re-exported here, where they always were.
from reconciler.targets.errors import TargetError, TargetUnavailable

ProgressCallback = Callable[[str], None]


class OutputLine(str):
    """A line of a tool's output (pip, an image build) that a step passes to its progress
    callback: logged as any progress, but a terminal shows it only with `reconcile -v` or,
    its tail, when the step fails; the other messages say which phase a step is in."""

    __slots__ = ()


__all__ = [
    "ErrorCode",
    "ErrorKind",
    "Outcome",
    "OutputLine",
    "ProgressCallback",
    "StepHandlers",
    "StepResult",
    "Target",
    "TargetError",
    "TargetUnavailable",
    "Waiting",
]


@runtime_checkable
class Target(Protocol):
    """A platform that runs endpoints."""

    name: str

    def observe(self) -> LiveState:
        """What runs now, read from the platform. Raises TargetUnavailable."""
        ...

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> Waiting | None:
        """Carry out one step as far as it goes without waiting. Raises TargetError.

        None: done. Waiting: the change is started and completes on the platform
        (instances starting, batches of a rolling update to go); the step is in progress,
        and the next pass, planned from what observe then shows, continues it. A step
        never waits for readiness: observe says how far a rollout got (ready_instances,
        provisioning_state, and Failed with the last log lines when it cannot succeed).
        """
        ...


class StepHandlers(Protocol):
    """A target's handlers: one per action, each given the step and its typed payload.

    `dispatch` calls them; a target passes itself to it, so mypy checks that the target
    handles every action with the payload that action carries.
    """

    def _create_endpoint(self, step: Step, do: CreateEndpoint, say: ProgressCallback) -> None: ...

    def _update_endpoint(self, step: Step, do: UpdateEndpoint, say: ProgressCallback) -> None: ...

    def _repair_endpoint(self, step: Step, do: RepairEndpoint, say: ProgressCallback) -> None: ...

    def _delete_endpoint(self, step: Step, do: DeleteEndpoint, say: ProgressCallback) -> None: ...

    def _create_deployment(
        self, step: Step, do: CreateDeployment, say: ProgressCallback
    ) -> Waiting | None: ...

    def _scale_deployment(
        self, step: Step, do: ScaleDeployment, say: ProgressCallback
    ) -> Waiting | None: ...

    def _update_deployment(
        self, step: Step, do: UpdateDeployment, say: ProgressCallback
    ) -> Waiting | None: ...

    def _repair_deployment(
        self, step: Step, do: RepairDeployment, say: ProgressCallback
    ) -> Waiting | None: ...

    # Waiting: its route is dropped but not yet served by every router instance; its
    # instances go once it is (a later pass plans the deletion again).
    def _delete_deployment(
        self, step: Step, do: DeleteDeployment, say: ProgressCallback
    ) -> Waiting | None: ...

    # Waiting: the new split is written but not yet served by every router instance.
    def _set_traffic(self, step: Step, do: SetTraffic, say: ProgressCallback) -> Waiting | None: ...

    def _set_mirror_traffic(
        self, step: Step, do: SetMirrorTraffic, say: ProgressCallback
    ) -> Waiting | None: ...


def dispatch(target: StepHandlers, step: Step, progress: ProgressCallback | None) -> Waiting | None:
    """Run a step through the target's handler of its payload's type.

    The match covers every payload type (assert_never): an action added to the plan is a
    mypy error here until it is dispatched, and then in every target that lacks its handler.
    """

    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    match step.payload:
        case CreateEndpoint() as do:
            target._create_endpoint(step, do, say)
        case UpdateEndpoint() as do:
            target._update_endpoint(step, do, say)
        case RepairEndpoint() as do:
            target._repair_endpoint(step, do, say)
        case DeleteEndpoint() as do:
            target._delete_endpoint(step, do, say)
        case CreateDeployment() as do:
            return target._create_deployment(step, do, say)
        case ScaleDeployment() as do:
            return target._scale_deployment(step, do, say)
        case UpdateDeployment() as do:
            return target._update_deployment(step, do, say)
        case RepairDeployment() as do:
            return target._repair_deployment(step, do, say)
        case DeleteDeployment() as do:
            return target._delete_deployment(step, do, say)
        case SetTraffic() as do:
            return target._set_traffic(step, do, say)
        case SetMirrorTraffic() as do:
            return target._set_mirror_traffic(step, do, say)
        case _:
            assert_never(step.payload)
    return None
