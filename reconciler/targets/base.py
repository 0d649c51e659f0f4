"""The Target protocol every platform implements, and what applying a step returns.

A target observes what runs (rebuilding the live state from the platform itself: labels,
annotations, status files; never a local database) and applies one plan step at a time.
It never decides what to do: the plan says it. Applying never waits for a rollout: a step
that starts instances returns `Waiting` (what it waits for) and the next pass continues
from what observe shows. Every change a target makes is a step: what it finds out of line
(a router that does not answer, instances ready but not routed, crashed ones) it reports
in observe (LiveEndpoint.repair, LiveDeployment.repair), and the plan repairs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from reconciler.model.diagnostics import Diagnostic
from reconciler.model.errors import ErrorCode, ErrorKind
from reconciler.model.plan import Step
from reconciler.model.results import Outcome, StepResult, Waiting
from reconciler.model.state import DesiredState, LiveState

ProgressCallback = Callable[[str], None]

__all__ = [
    "ChecksDesired",
    "ErrorCode",
    "ErrorKind",
    "Outcome",
    "ProgressCallback",
    "StepResult",
    "Target",
    "TargetError",
    "TargetUnavailable",
    "Waiting",
]


class TargetError(Exception):
    """The target could not be reached or could not do what a step asked.

    code names the failure for status (ImageBuildFailure, Timeout, ...; model.errors);
    kind says whether the next pass may succeed as it is (transient), a commit is needed
    (permanent) or the platform is down (unavailable). log_tail carries the end of a build
    or container log for the person reading status.
    """

    def __init__(
        self, message: str, *, code: ErrorCode = ErrorCode.TARGET_ERROR, log_tail: str = ""
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)  # a plain string of a known value is accepted too
        self.log_tail = log_tail

    @property
    def kind(self) -> ErrorKind:
        return self.code.kind


class TargetUnavailable(TargetError):
    """The platform itself cannot be reached (Docker Engine stopped, API server down)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=ErrorCode.TARGET_UNAVAILABLE)


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


@runtime_checkable
class ChecksDesired(Protocol):
    """A target that can say, before any step, what in the desired state it cannot do
    (references to connections it lacks): warnings for dry-run and apply's plan."""

    def desired_warnings(self, desired: DesiredState) -> tuple[Diagnostic, ...]: ...


def dispatch(target: object, step: Step, progress: ProgressCallback | None) -> Waiting | None:
    """Run a step through the target's handler named after its action.

    Targets name their handlers `_<action>(step, say)` (`_create_endpoint`,
    `_set_traffic`, ...), so adding an action to the plan shows at once, as an
    AttributeError, in every target that does not handle it yet.
    """

    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    handler: Callable[[Step, ProgressCallback], Waiting | None] = getattr(
        target, f"_{step.action.value}"
    )
    return handler(step, say)
