"""Which config every worker of a router serves, so `/-/config-digest` speaks for all.

With several workers (`--workers N`) a connection reaches one of them, and a config change
reaches the others through the config file a moment later. A caller that waits for the
router to serve a new config (the targets' set_traffic) must not take one worker's answer
for the router's. So each worker writes the digest it serves into a folder the supervisor
gives them all (one file per worker process), and `/-/config-digest` names a digest only
when every worker serves it; while they differ it answers `"digest": null` with the
digest of each worker, and the caller asks again.

With one worker (the default) none of this runs: its own digest is the router's.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

# The folder of the workers' digest files, set by the supervisor for its workers.
WORKERS_DIR_ENV = "RECONCILER_ROUTER_WORKERS_DIR"


def workers_dir() -> Path | None:
    value = os.environ.get(WORKERS_DIR_ENV)
    return Path(value) if value else None


def report_served(digest: str, *, folder: Path | None = None, pid: int | None = None) -> None:
    """Say that this worker process now serves the config of `digest` (atomic replace: a
    reader sees the old digest or the new one, never half a file)."""
    folder = folder or workers_dir()
    if folder is None:
        return
    pid = os.getpid() if pid is None else pid
    temporary = folder / f".{pid}.tmp"
    with contextlib.suppress(OSError):  # a report lost is a wait, never a wrong answer
        temporary.write_text(digest)
        os.replace(temporary, folder / str(pid))


def forget_worker(pid: int, *, folder: Path | None = None) -> None:
    """A dead worker serves nothing: its report goes (the supervisor calls this)."""
    folder = folder or workers_dir()
    if folder is not None:
        (folder / str(pid)).unlink(missing_ok=True)


def served_by_all(workers: int, *, folder: Path | None = None) -> tuple[str | None, list[str]]:
    """(the digest every one of `workers` workers serves, or None; each worker's digest)."""
    folder = folder or workers_dir()
    if folder is None:
        return None, []
    digests: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.isdigit():
            with contextlib.suppress(OSError):
                digests.append(path.read_text().strip())
    common = digests[0] if digests and len(set(digests)) == 1 else None
    # A worker still starting has not reported: until it has, no digest is everyone's.
    return (common if len(digests) >= workers else None), digests


def digest_document(workers: int, *, folder: Path | None = None) -> bytes:
    """The body of `/-/config-digest` for a router of several workers."""
    common, digests = served_by_all(workers, folder=folder)
    return json.dumps({"digest": common, "workers": digests}).encode()
