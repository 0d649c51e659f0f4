"""The Target protocol every platform implements, and what applying a step returns.

A target observes what runs (rebuilding the live state from the platform itself: labels,
annotations, status files; never a local database) and applies one plan step at a time.
It never decides what to do: the plan says it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from reconciler.model.diagnostics import Diagnostic
from reconciler.model.plan import Step
from reconciler.model.results import Outcome, StepResult
from reconciler.model.state import DesiredState, LiveState

ProgressCallback = Callable[[str], None]

__all__ = [
    "ChecksDesired",
    "Outcome",
    "ProgressCallback",
    "StepResult",
    "Target",
    "TargetError",
    "TargetUnavailable",
]


class TargetError(Exception):
    """The target could not be reached or could not do what a step asked.

    code names the kind of failure for status (ImageBuildFailure, Timeout, ...);
    log_tail carries the end of a build or container log for the person reading status.
    """

    def __init__(self, message: str, *, code: str = "TargetError", log_tail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.log_tail = log_tail


class TargetUnavailable(TargetError):
    """The platform itself cannot be reached (Docker Engine stopped, API server down)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="TargetUnavailable")


@runtime_checkable
class Target(Protocol):
    """A platform that runs endpoints."""

    name: str

    def observe(self) -> LiveState:
        """What runs now, read from the platform. Raises TargetUnavailable."""
        ...

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> None:
        """Carry out one step; return once the platform accepted it. Raises TargetError.

        A step that starts instances (create, scale, update) returns only when they are
        ready or raises when they cannot become so: the executor relies on this for its
        health gates.
        """
        ...


@runtime_checkable
class Settling(Protocol):
    """A target with derived data-plane state to bring in line before a pass (routers)."""

    def settle(self) -> None: ...


@runtime_checkable
class ChecksDesired(Protocol):
    """A target that can say, before any step, what in the desired state it cannot do
    (references to connections it lacks): warnings for dry-run and apply's plan."""

    def desired_warnings(self, desired: DesiredState) -> tuple[Diagnostic, ...]: ...


def dispatch(target: object, step: Step, progress: ProgressCallback | None) -> None:
    """Run a step through the target's handler named after its action.

    Targets name their handlers `_<action>(step, say)` (`_create_endpoint`,
    `_set_traffic`, ...), so adding an action to the plan shows at once, as an
    AttributeError, in every target that does not handle it yet.
    """

    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    handler: Callable[[Step, ProgressCallback], None] = getattr(target, f"_{step.action.value}")
    handler(step, say)
