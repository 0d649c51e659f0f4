"""The router's `GET /-/state-digest` over a real socket: the digest of the endpoint's state
files beside its config (router/statefiles.py), for the admin secret only, following
every change in the folder whoever makes it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    ADMIN_SECRET,
    Backends,
    backends_fixture,
    bearer,
    deployment,
    http_get,
    router_config,
    start_router_fixture,
)

from reconciler.router.statefiles import MAX_FILE_BYTES, read_state_folder, state_digest
from reconciler.targets.docker.routercheck import RouterCheck, check_router


def digest_of(url: str, secret: str = ADMIN_SECRET) -> tuple[int, str | None]:
    status, _, body = http_get(f"{url}/-/state-digest", headers=bearer(secret))
    return status, json.loads(body).get("digest") if status == 200 else None


def test_the_state_digest_is_that_of_the_files_and_follows_any_change(
    backends: Backends, start_router
) -> None:
    router = start_router(router_config([deployment("blue", [backends.start("blue")])]))
    folder = router.config_path.parent
    state = folder / "state"
    state.mkdir()
    (state / "credentials.json").write_bytes(b'{"primary_key": "k"}')
    (state / "deployments.json").write_bytes(b"{}")
    files = read_state_folder(folder)
    assert set(files) == {"router.json", "state/credentials.json", "state/deployments.json"}
    status, first = digest_of(router.url)
    assert (status, first) == (200, state_digest(files))
    # As the Docker target's pass asks it: /-/ready and the digest in one pipelined write.
    port = router.port
    assert check_router(port, ADMIN_SECRET) == RouterCheck(None, first)
    assert check_router(port, None) == RouterCheck(None, None)
    # One byte changed, a file removed, a file added: each is another digest.
    seen = {first}
    (state / "deployments.json").write_bytes(b"{ }")
    seen.add(digest_of(router.url)[1])
    (state / "credentials.json").unlink()
    seen.add(digest_of(router.url)[1])
    (state / "nested").mkdir()
    (state / "nested" / "notes.json").write_bytes(b"{}")
    seen.add(digest_of(router.url)[1])
    assert len(seen) == 4 and None not in seen
    assert digest_of(router.url)[1] == state_digest(read_state_folder(folder))


def test_only_the_admin_secret_gets_the_state_digest(backends: Backends, start_router) -> None:
    router = start_router(router_config([deployment("blue", [backends.start("blue")])]))
    assert digest_of(router.url, "not-the-admin-secret") == (401, None)
    assert http_get(f"{router.url}/-/state-digest")[0] == 401
    assert digest_of(router.url)[0] == 200
    # The pass's check: the router answers, and says no digest to another secret.
    port = router.port
    assert check_router(port, "not-the-admin-secret") == RouterCheck(None, None)
    router.stop(signal.SIGKILL)
    problem = check_router(port, ADMIN_SECRET).port_problem
    assert problem is not None and problem.startswith(
        f"its router does not answer on 127.0.0.1:{port} ("
    ), problem


def test_what_the_archive_read_passes_over_the_digest_passes_over_too(tmp_path: Path) -> None:
    """Files outside router.json and state/, links and oversized files are not the
    endpoint's state (targets/docker/state.py reads the archive by the same rule)."""
    (tmp_path / "router.json").write_bytes(b"{}")
    (tmp_path / ".router-config-tmp").write_bytes(b"half written")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "endpoint.json").write_bytes(b"{}")
    (tmp_path / "state" / "dump.bin").write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    os.symlink("/etc/hostname", tmp_path / "state" / "link.json")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.json").write_bytes(b"{}")
    os.symlink(tmp_path / "elsewhere", tmp_path / "state" / "linked-folder")
    assert read_state_folder(tmp_path) == {"router.json": b"{}", "state/endpoint.json": b"{}"}
    assert state_digest({"a": b"1", "b": b"2"}) == state_digest({"b": b"2", "a": b"1"})
    assert state_digest({"a": b"12"}) != state_digest({"a1": b"2"})


def _answering(*answers: bytes) -> tuple[int, Callable[[], None]]:
    """A port where whatever connects is sent `answers` as one write once its requests are
    in, then the connection is closed: a router answering garbage or half an answer. Returns
    the port and a function that stops it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"".join(answers))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop() -> None:
        thread.join(5)
        server.close()

    return server.getsockname()[1], stop


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize(
    "digest_answer",
    [
        b"",  # answers the first request, then closes
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"digest"',  # half an answer
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        _ok(b"[1, 2]"),
        _ok(b"\xff\xfe"),
        _ok(b'{"digest": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"),  # past json's depth
    ],
    ids=["closed", "half", "chunk", "list", "bytes", "deep"],
)
def test_a_router_answering_ready_then_garbage_answers_but_vouches_for_no_state(
    digest_answer: bytes,
) -> None:
    port, stop = _answering(_ok(b"ok"), digest_answer)
    try:
        assert check_router(port, ADMIN_SECRET) == RouterCheck(None, None)
    finally:
        stop()
