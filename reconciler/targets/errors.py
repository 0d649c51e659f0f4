"""The errors of targets (re-exported by targets.base, where the Target protocol lives).

A module of their own so that what only raises or catches them (reconciler.yaml's options
of a target type, the desired state's instance types) does not import the plan's steps
and results that targets.base needs for the protocol (issue 15: start-up).
"""

from __future__ import annotations

from reconciler.model.errors import ErrorCode, ErrorKind


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
