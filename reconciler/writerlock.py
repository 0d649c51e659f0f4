"""One writer per target: the lock every command that changes a target holds.

`reconcile watch` holds it for as long as it runs; a one-shot `reconcile` (apply) and
`reconcile regenerate-key` hold it while they change the target. Two writers at once
would undo each other's steps (one removes the container the other is routing to: a raw
"No such container" for both), so a second one waits, saying who holds the lock, and a
one-shot command gives up after its timeout with the same words.

The lock is flock(2) on a file named by the target: the kernel releases it when its
holder dies in any way (SIGKILL included), so a lock is never left stale. The holder
writes who it is (pid, command, host, since when) into the file, for the others to name
it; the file's content is informative only, never what decides who holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

POLL_S = 0.2


def lock_path(key: str, *, state_home: Path | None = None) -> Path:
    """The lock file of the target keyed `key` (its name).

    Docker objects of a target are told apart by its name (reconciler.target=NAME), so two
    writers of one name on one host are writers of the same objects: the name is the key.
    """
    base = state_home or Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key) or "_"
    return base / "ml-endpoint-reconciler" / "locks" / f"{safe}.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its holder wrote it into the lock file."""

    pid: int
    command: str
    host: str
    since: float  # seconds since the epoch

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"`{self.command}` (pid {self.pid}{where}, since {when})"


def describe(holder: Holder | None) -> str:
    """Words for the holder of a lock, also when it is not known (an older version, or a
    holder that has not written its name yet)."""
    return holder.describe() if holder is not None else "another process"


class LockTimeout(Exception):
    """The lock was still held by another writer when the wait ended."""

    def __init__(self, path: Path, holder: Holder | None, waited_s: float) -> None:
        super().__init__(f"{path} is held by {describe(holder)}")
        self.path = path
        self.holder = holder
        self.waited_s = waited_s


class WriterLock:
    """The writer lock of one target, for one process."""

    def __init__(self, path: Path, *, command: str) -> None:
        self.path = path
        self.command = command
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this process holds it now."""
        if self._handle is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "a+": never truncates on open, so the holder's name survives a reader's open.
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        me = Holder(os.getpid(), self.command, socket.gethostname(), time.time())
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(me.__dict__) + "\n")
        handle.flush()
        self._handle = handle
        return True

    def holder(self) -> Holder | None:
        """Who holds the lock, as written in the file; None when unknown."""
        try:
            data = json.loads(self.path.read_text())
            return Holder(
                pid=int(data["pid"]),
                command=str(data["command"]),
                host=str(data["host"]),
                since=float(data["since"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def acquire(
        self,
        *,
        timeout_s: float | None,
        on_wait: Callable[[Holder | None], None] = lambda _holder: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Wait for the lock: True once held; False when should_stop() said so first.

        `on_wait` is called once, with the holder, when the lock is taken by another.
        Raises LockTimeout when `timeout_s` (None: no limit) passed with the lock still
        taken; 0 tries once.
        """
        started = time.monotonic()
        said = False
        while not should_stop():
            if self.try_acquire():
                return True
            if not said:
                on_wait(self.holder())
                said = True
            waited = time.monotonic() - started
            if timeout_s is not None and waited >= timeout_s:
                raise LockTimeout(self.path, self.holder(), waited)
            pause = POLL_S if timeout_s is None else min(POLL_S, timeout_s - waited)
            time.sleep(max(pause, 0.0))
        return False

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with contextlib.suppress(OSError):
            # Emptied first: a name left in a free lock's file would name a past holder.
            handle.seek(0)
            handle.truncate()
            handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def writing(
    path: Path,
    *,
    command: str,
    timeout_s: float | None,
    on_wait: Callable[[Holder | None], None] = lambda _holder: None,
) -> Iterator[WriterLock]:
    """Hold the writer lock `path` for the body; LockTimeout when it stays taken."""
    lock = WriterLock(path, command=command)
    lock.acquire(timeout_s=timeout_s, on_wait=on_wait)
    try:
        yield lock
    finally:
        lock.release()
