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
from collections.abc import Mapping
from typing import Any

import docker.errors

MOUNT = "/etc/reconciler-router"
ROUTER_CONFIG = "router.json"
CREDENTIALS = "state/credentials.json"
ENDPOINT = "state/endpoint.json"
DEPLOYMENTS = "state/deployments.json"
AUTOSCALE = "state/autoscale.json"
NOTES = "state/notes.json"
# A state volume larger than this is not ours to read whole (hostile or broken).
MAX_STATE_BYTES = 16 * 1024 * 1024


class StateUnreadable(Exception):
    """The state files could not be read from the engine (the message says why)."""


def read_files(container: Any) -> dict[str, bytes]:
    """Every regular file of the state volume, by path relative to the volume's root."""
    try:
        stream, _ = container.get_archive(f"{MOUNT}/")
        data = bytearray()
        for chunk in stream:
            data += chunk
            if len(data) > MAX_STATE_BYTES:
                raise StateUnreadable(f"state of {container.name} exceeds {MAX_STATE_BYTES} bytes")
    except docker.errors.NotFound as exc:
        raise StateUnreadable(f"{container.name}: {exc.explanation or exc}") from None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data))) as archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue
                # The archive's root folder is the mount's own name.
                _, _, relative = member.name.partition("/")
                handle = archive.extractfile(member)
                if relative and handle is not None:
                    files[relative] = handle.read()
    except tarfile.TarError as exc:
        raise StateUnreadable(f"{container.name}: unreadable archive ({exc})") from None
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
