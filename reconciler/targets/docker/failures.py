"""Explaining an instance that failed, from its container's log: the exception its scoring
script raised, the command that shows the whole log, and the log of the attempt before the
container's last restart (`reconcile logs --previous`).

Docker keeps one log per container across restarts (the json-file and local drivers append
each run's output): the attempt before the last restart is the part of that log written
before the container's current start (State.StartedAt), told apart exactly by the
timestamps the engine keeps for each line. An instance replaced by a new container (a
repair) takes its log with it: only the current container's runs can be shown.
"""

from __future__ import annotations

from typing import Any

import docker.errors

from reconciler.tracebacks import last_exception

# Log lines read to find a traceback: an init() failure is near the end of a short log.
_SCAN_LINES = 400


def raised_in_log(container: Any) -> str | None:
    """`the scoring script raised FileNotFoundError: ... (score.py line 7, in init: ...)`
    from the newest traceback through the user's code in the container's log, else the
    newest traceback's (a server's own); None when the log holds none (or is unreadable)."""
    try:
        text = bytes(container.logs(tail=_SCAN_LINES)).decode(errors="replace")
    except docker.errors.APIError:
        return None
    found = last_exception(text)
    if found is None:
        return None
    who = "the scoring script" if found.in_user_code else "the server"
    return f"{who} raised {found.describe()}"


def logs_command(endpoint: str, deployment: str, index: int) -> str:
    return f"reconcile logs {endpoint} {deployment} --instance {index}"


def failure_note(container: Any, *, endpoint: str, deployment: str, index: int) -> str:
    """What to add to a failed instance's reason: `; the scoring script raised ...` when
    its log holds a traceback, and the command that shows its whole log."""
    raised = raised_in_log(container)
    note = f"; {raised}" if raised else ""
    return f"{note}; whole log: `{logs_command(endpoint, deployment, index)}`"


def previous_run_log(container: Any, *, lines: int) -> str | None:
    """The last `lines` lines the container wrote before its current (or last) start: the
    attempts before it restarted, or was started again by hand; None when it wrote
    nothing before (it never restarted)."""
    container.reload()
    started = str((container.attrs.get("State") or {}).get("StartedAt") or "")
    if not started:
        return None
    raw = bytes(container.logs(timestamps=True)).decode(errors="replace")
    before: list[str] = []
    for line in raw.splitlines():
        stamp, _, text = line.partition(" ")
        if _instant(stamp) < _instant(started):
            before.append(text)
    if not before:
        return None
    return "\n".join(before[-lines:]) + "\n"


def _instant(stamp: str) -> str:
    """An RFC 3339 UTC time comparable as text (nanoseconds padded: the engine trims them)."""
    whole, dot, rest = stamp.rstrip("Z").partition(".")
    return f"{whole}.{rest.ljust(9, '0')}" if dot else f"{whole}.000000000"
