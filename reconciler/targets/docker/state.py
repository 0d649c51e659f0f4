"""Where the Docker target keeps what Docker cannot show by itself: a volume per endpoint.

Containers carry what they run in their labels; an endpoint has more: its keys, its router
configuration (key hashes, traffic, routes), the endpoint spec applied last, records of
deployments (what runs when one is scaled to zero) and the autoscaler's last decisions.
All of it lives in one Docker volume per endpoint, labelled with the target, the endpoint
and the router's ports, and named `rcl-TARGET-ENDPOINT-state`:

    router.json                 the router's config (key hashes, never keys)
    state/credentials.json      keys, token secret, admin secret, ports
    state/endpoint.json         the endpoint spec applied last
    state/deployments.json      per deployment: scale settings, the version applied last
    state/autoscale.json        per deployment: the autoscaler's last decision
    state/notes.json            what status must tell people (keys issued anew, and why)

The volume is mounted at /etc/reconciler-router in the router (which reads router.json and
saves there what the admin call changes) and in a holder container that never runs
(`...-state`): the handle through which the target reads and writes the files with Docker's
archive API whatever state the router is in. Docker refuses to remove a volume that a
container uses, so the state goes only with the endpoint, and a target reads only volumes
carrying its own label: two targets on one engine never see each other's keys.

Files are written 0600, owned by root, as the old host folder's were; Docker's API is the
only way in, and whoever can use it is root on the host anyway.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import docker.errors

# The router takes the same files for the digest it answers (`/-/state-digest`).
from reconciler.router.statefiles import MAX_FILE_BYTES, ROUTER_CONFIG, is_state_file
from reconciler.targets.docker.access import files_of_archive

__all__ = ["MAX_FILE_BYTES", "ROUTER_CONFIG", "StateUnreadable", "read_files", "write_files"]

MOUNT = "/etc/reconciler-router"
CREDENTIALS = "state/credentials.json"
ENDPOINT = "state/endpoint.json"
DEPLOYMENTS = "state/deployments.json"
AUTOSCALE = "state/autoscale.json"
NOTES = "state/notes.json"


class StateUnreadable(Exception):
    """The state files could not be read from the engine (the message says why)."""


class _Chunks(io.RawIOBase):
    """A file-like reader over the chunks of an HTTP answer (the archive as it arrives)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def read_files(container: Any, wanted: Callable[[str], bool] = is_state_file) -> dict[str, bytes]:
    """The files `wanted` names (by default an endpoint's: router.json and those under
    state/), by path relative to the volume's root, read as the archive streams
    (access.files_of_archive)."""
    try:
        stream, _ = container.get_archive(f"{MOUNT}/")
    except docker.errors.NotFound as exc:
        raise StateUnreadable(f"{container.name}: {exc.explanation or exc}") from None
    try:
        files = files_of_archive(io.BufferedReader(_Chunks(iter(stream))), wanted)
    except tarfile.TarError as exc:
        raise StateUnreadable(f"{container.name}: unreadable archive ({exc})") from None
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # frees the engine's connection even when reading stopped half-way
    return files


def write_files(container: Any, files: Mapping[str, bytes]) -> None:
    """Write (create or replace) files of the state volume, each 0600."""
    buffer = io.BytesIO()
    now = time.time()
    folders = sorted({path.rpartition("/")[0] for path in files if "/" in path})
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, int(now)
            archive.addfile(info)
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(content), 0o600, int(now)
            archive.addfile(info, io.BytesIO(content))
    if not container.put_archive(MOUNT, buffer.getvalue()):
        raise StateUnreadable(f"{container.name}: the engine refused to write the state")
