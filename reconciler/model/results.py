"""What executing a plan step came to, and what a target says of a change it started."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"  # done: the change is made (and, for a health gate, it opened)
    FAILED = "failed"
    SKIPPED = "skipped"  # a step it depends on did not succeed, or the reconciler stopped
    # Added with resumable passes: the change is started (or its health gate is not met
    # yet) and completes on the target; the next pass continues from what it shows.
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True, slots=True)
class Waiting:
    """What a target's apply returns when it started a change the platform completes later
    (instances starting, a rolling update with batches to go). `what` says what it waits
    for, for people: "my-endpoint/blue healthy (1/3 ready)"."""

    what: str


@dataclass(frozen=True, slots=True)
class StepResult:
    index: int  # position of the step in the plan
    outcome: Outcome
    message: str = ""  # why it failed or was skipped; what it waits for when in progress
    error_code: str | None = None  # e.g. ImageBuildFailure, DeploymentNotHealthy, Timeout
    log_tail: str = ""
    seconds: float = 0.0
