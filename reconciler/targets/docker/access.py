"""What `reconcile invoke` needs of one endpoint, read from the Docker Engine's API with the
standard library alone: its scoring URI, auth mode, deployments and keys.

Importing the Docker SDK (requests, urllib3 and the rest) and the target module costs a new
process about half a second, more than the request it sends (issue 15: invoke within 0.3 s
of the endpoint's own answer). Three calls over the engine's unix socket (http.client) read
the same as DockerTarget.observe_endpoint and endpoint_credentials do:

    GET /volumes?filters=...            the endpoint's state volume: its port, its owner
    GET /containers/json?all=1&...      its holder or router (the volume's handle), instances
    GET /containers/ID/archive?path=... the state files: keys, router config, records

Only the common case is answered here: anything unusual (another engine than a local unix
socket, no volume, another repository's endpoint, an earlier version's layout, a file
missing or unreadable) returns None, and the caller opens the whole target, which reads,
repairs or explains it. The keys are returned to the caller, never printed or logged.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import IO, Any

from reconciler.endpoints.credentials import credentials_from_json
from reconciler.router.statefiles import MAX_FILE_BYTES, ROUTER_CONFIG, is_state_file
from reconciler.targets.capabilities import EndpointAccess
from reconciler.targets.ownership import CASE_INSENSITIVE_HOSTS, same_repository

L = "reconciler."  # label prefix, as target.py's
MANAGED, MANAGER = f"{L}managed-by", "ml-endpoint-reconciler"
# Where the state volume is mounted in the holder and the router (state.py's MOUNT).
MOUNT = "/etc/reconciler-router"
CREDENTIALS = "state/credentials.json"
DEPLOYMENTS = "state/deployments.json"
DEFAULT_SOCKET = "/var/run/docker.sock"
# For the three calls in all (tens of ms on a busy host): an engine that answers slower, or
# never ends its answer, is left to the target (whose SDK client says why).
TIMEOUT_S = 10.0
AUTH_MODES = ("key", "aml_token")
# Re-exported: the comparison lives with every target type's (targets.ownership).
__all__ = ["CASE_INSENSITIVE_HOSTS", "same_repository"]


class EngineUnreachable(Exception):
    """The engine's socket did not answer as expected (the caller falls back)."""


def engine_socket(environ: Mapping[str, str] | None = None) -> str | None:
    """The engine's unix socket as the Docker SDK's from_env finds it (DOCKER_HOST, else
    the default); None when DOCKER_HOST names another kind of address (tcp, ssh, TLS),
    which only the SDK speaks."""
    env = os.environ if environ is None else environ
    host = env.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :] or DEFAULT_SOCKET
    return None


class _DeadlineSocket(socket.socket):
    """A socket whose reads all end by one deadline: a socket timeout alone bounds each
    read, and an answer that comes a byte at a time would never end."""

    deadline = 0.0

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the engine did not answer within {TIMEOUT_S:g} s")
        self.settimeout(left)
        return super().recv_into(buffer, nbytes, flags)


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the engine's unix socket, every answer read by one deadline."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT_S)
        self._path = path
        self._deadline = time.monotonic() + TIMEOUT_S

    def connect(self) -> None:
        sock = _DeadlineSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.deadline = self._deadline
        sock.settimeout(max(0.001, self._deadline - time.monotonic()))
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Engine:
    """One connection to the engine, for a few GETs in turn."""

    def __init__(self, path: str) -> None:
        self._connection = _UnixConnection(path)

    def close(self) -> None:
        self._connection.close()

    def get(self, path: str, read: Callable[[IO[bytes]], Any]) -> Any:
        """`read` of the answer's body to GET `path`; EngineUnreachable unless 200."""
        try:
            self._connection.request("GET", path)
            answer = self._connection.getresponse()
            try:
                if answer.status != 200:
                    raise EngineUnreachable(f"GET {path.partition('?')[0]}: {answer.status}")
                return read(answer)
            finally:
                answer.read()  # the rest, so the connection serves the next GET
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise EngineUnreachable(str(exc)) from None

    def get_json(self, path: str) -> Any:
        return self.get(path, lambda answer: json.loads(answer.read()))


def _filters(**labels: str) -> str:
    """The engine's `filters` query for what the target made, with `labels`."""
    wanted = [f"{MANAGED}={MANAGER}", *(f"{L}{k}={v}" for k, v in labels.items())]
    return urllib.parse.quote(json.dumps({"label": wanted}))


def files_of_archive(
    stream: IO[bytes], wanted: Callable[[str], bool] = is_state_file
) -> dict[str, bytes]:
    """The files `wanted` names in the tar stream of the mount's folder, by path relative
    to it (the archive's root folder is the mount's own name). Read as it streams: anything
    else, or a file larger than MAX_FILE_BYTES (a stray dump, a hostile file), is passed
    over, never held. Raises tarfile.TarError."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            _, _, relative = member.name.partition("/")
            if not (wanted(relative) and member.isfile()) or member.size > MAX_FILE_BYTES:
                continue
            handle = archive.extractfile(member)
            if handle is not None:
                files[relative] = handle.read()
    return files


def endpoint_access(
    target: str, endpoint: str, *, repository: str | None, socket_path: str | None = None
) -> EndpointAccess | None:
    """The endpoint's scoring URI, auth mode, deployments and keys, as the Docker target
    observes them, read with three calls to the engine; None when anything is not as the
    common case has it (the caller opens the whole target then)."""
    path = socket_path or engine_socket()
    if path is None:
        return None
    engine = _Engine(path)
    try:
        return _access(engine, target, endpoint, repository=repository)
    except (EngineUnreachable, tarfile.TarError, KeyError, TypeError, ValueError, RecursionError):
        # RecursionError: a state file nested deeper than json can parse (spoiled by hand).
        return None
    finally:
        engine.close()


def _access(
    engine: _Engine, target: str, endpoint: str, *, repository: str | None
) -> EndpointAccess | None:
    scope = {"target": target, "endpoint": endpoint}
    volumes = engine.get_json(f"/volumes?filters={_filters(role='state', **scope)}")
    found = volumes.get("Volumes") or []
    if len(found) != 1:
        return None
    volume = found[0]
    labels = volume.get("Labels") or {}
    owner = labels.get(f"{L}repository") or None
    if repository is not None and owner is not None and not same_repository(owner, repository):
        return None  # another repository's: the target says it does not exist here
    port = int(labels[f"{L}port"])
    containers = engine.get_json(f"/containers/json?all=1&filters={_filters(**scope)}")
    if repository is not None and owner is None:
        # A volume of an earlier version (no label): its containers made since say whose.
        makers = {
            str(made) for c in containers if (made := (c.get("Labels") or {}).get(f"{L}repository"))
        }
        if makers and not any(same_repository(made, repository) for made in makers):
            return None  # the target tells (another repository's, or this checkout's)
    by_role: dict[str, list[Mapping[str, Any]]] = {}
    for container in containers:
        by_role.setdefault((container.get("Labels") or {}).get(f"{L}role", ""), []).append(
            container
        )
    # A running router first: the engine archives a running container's mount without
    # mounting a stopped one's layers (the holder's); both mount the same volume.
    routers = by_role.get("router", [])
    running = [c for c in routers if c.get("State") == "running"]
    handles = [*running, *by_role.get("state", []), *routers]
    mounts = [
        m
        for c in by_role.get("router", [])
        for m in c.get("Mounts") or []
        if m.get("Destination") == MOUNT
    ]
    if not handles or any(m.get("Type") != "volume" for m in mounts):
        return None  # no handle, or a router of an earlier version's layout
    handle = handles[0]
    if not any(
        m.get("Destination") == MOUNT and m.get("Name") == volume.get("Name")
        for m in handle.get("Mounts") or []
    ):
        return None
    files = engine.get(
        f"/containers/{handle['Id']}/archive?path={urllib.parse.quote(MOUNT + '/')}",
        files_of_archive,
    )
    config = json.loads(files[ROUTER_CONFIG])
    records = json.loads(files.get(DEPLOYMENTS, b"{}"))
    if not isinstance(config, dict) or not isinstance(records, dict):
        return None  # spoiled into another JSON shape: the target names it and repairs it
    auth_mode = config.get("auth_mode", "key")
    if auth_mode not in AUTH_MODES:
        return None
    credentials = credentials_from_json(files[CREDENTIALS])
    deployments = {
        str((c.get("Labels") or {})[f"{L}deployment"]) for c in by_role.get("instance", [])
    }
    # A deployment scaled to zero has no container: its record stands in (observe's rule).
    deployments |= {
        name
        for name, record in records.items()
        if isinstance(record, dict) and record.get("spec") is not None
    }
    return EndpointAccess(
        scoring_uri=f"http://127.0.0.1:{port}/score",
        auth_mode=auth_mode,
        deployments=tuple(sorted(deployments)),
        credentials=credentials,
    )
