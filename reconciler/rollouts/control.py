"""Pause, resume and abort of a rollout, as trailers of commits. PURE.

A person (or a pull request) controls a rollout with a commit, so git stays the state and
the log says who did what:

    Reconcile-Rollout-Control: my-endpoint pause     (the daemon commits no step meanwhile)
    Reconcile-Rollout-Control: my-endpoint resume    (the step's analysis window restarts)
    Reconcile-Rollout-Control: my-endpoint abort     (on the person's rollback commit)

pause and resume are empty commits; abort is the rollback edit itself (traffic back to the
stable deployment, mirror off) with the rollback trailer of rollouts.machine too, so the
daemon sees the rollout ended the same way as after its own rollback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from reconciler.rollouts.machine import read_marks

CONTROL_TRAILER: Final = "Reconcile-Rollout-Control"
_CONTROL: Final = re.compile(
    rf"(?im)^{CONTROL_TRAILER}:[ \t]*(?P<endpoint>\S+)[ \t]+(?P<verb>pause|resume|abort)[ \t]*$"
)


class Verb(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"


@dataclass(frozen=True, slots=True)
class Control:
    endpoint: str
    verb: Verb


def read_controls(message: str) -> tuple[Control, ...]:
    """The control trailers of a commit message, in their order."""
    return tuple(
        Control(m["endpoint"], Verb(m["verb"].lower())) for m in _CONTROL.finditer(message)
    )


def control_trailer(endpoint: str, verb: Verb) -> str:
    return f"{CONTROL_TRAILER}: {endpoint} {verb.value}"


def paused_by(endpoint: str, messages: Iterable[tuple[str, str]]) -> str | None:
    """The commit that pauses the endpoint's rollout, None when it runs: the newest pause
    or resume among (commit, message), newest first, decides.

    A rollback of the endpoint (the daemon's, or an abort) ended the rollout it was in: a
    pause older than it was of that rollout, never of a later one (the messages reach past
    the running rollout's start when that commit is gone, after a force-push).
    """
    for commit, message in messages:
        for control in reversed(read_controls(message)):
            if control.endpoint != endpoint:
                continue
            if control.verb is Verb.PAUSE:
                return commit
            if control.verb is Verb.RESUME:
                return None
        if any(m.endpoint == endpoint and m.rollback for m in read_marks(message)):
            return None
    return None
