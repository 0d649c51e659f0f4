"""What executing a plan step came to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # a step it depends on did not succeed, or the reconciler stopped


@dataclass(frozen=True, slots=True)
class StepResult:
    index: int  # position of the step in the plan
    outcome: Outcome
    message: str = ""
    error_code: str | None = None  # e.g. ImageBuildFailure, DeploymentNotHealthy, Timeout
    log_tail: str = ""
    seconds: float = 0.0
