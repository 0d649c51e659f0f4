"""targets.docker.access: where `reconcile invoke` finds the engine, and how it reads the
state files from the archive the engine streams (the reads themselves are checked on the
real engine in tests/integration/test_docker_target.py)."""

from __future__ import annotations

import contextlib
import io
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest

from reconciler.router.statefiles import MAX_FILE_BYTES
from reconciler.targets.docker import access
from reconciler.targets.docker.access import (
    DEFAULT_SOCKET,
    endpoint_access,
    engine_socket,
    files_of_archive,
    same_repository,
)


def test_the_engine_socket_is_the_sdks_and_other_addresses_are_left_to_the_sdk() -> None:
    assert engine_socket({}) == DEFAULT_SOCKET
    assert engine_socket({"DOCKER_HOST": ""}) == DEFAULT_SOCKET
    assert engine_socket({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}) == (
        "/run/user/1000/docker.sock"
    )
    # Only the SDK speaks TCP with TLS and SSH: the caller opens the whole target then.
    assert engine_socket({"DOCKER_HOST": "tcp://10.0.0.5:2376"}) is None
    assert engine_socket({"DOCKER_HOST": "ssh://me@host"}) is None


def _archive(files: dict[str, bytes]) -> io.BytesIO:
    """A tar stream as the engine sends a folder: its own name first in every path."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        folder = tarfile.TarInfo("reconciler-router")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for path, content in files.items():
            info = tarfile.TarInfo(f"reconciler-router/{path}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    buffer.seek(0)
    return buffer


def test_the_archive_gives_the_state_files_and_passes_over_strays_and_huge_files() -> None:
    stream = _archive(
        {
            "router.json": b'{"auth_mode": "key"}',
            "state/credentials.json": b"{}",
            "dump.bin": b"x" * 10,
            "state/big.json": b" " * (MAX_FILE_BYTES + 1),
        }
    )
    assert files_of_archive(stream) == {
        "router.json": b'{"auth_mode": "key"}',
        "state/credentials.json": b"{}",
    }


def test_an_engine_that_answers_a_byte_at_a_time_is_given_up_within_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that answers, but slower than ever ends (a wedged engine streaming an
    archive, or anything else at DOCKER_HOST): invoke falls back once TIMEOUT_S is spent
    in all, not after TIMEOUT_S of silence (which a byte every 0.2 s never reaches)."""
    monkeypatch.setattr(access, "TIMEOUT_S", 1.0)
    path = str(tmp_path / "engine.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    stop = threading.Event()

    def drip() -> None:
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n{")
            while not stop.wait(0.2):
                conn.sendall(b" ")

    threading.Thread(target=drip, daemon=True).start()
    found: list[object] = []
    reader = threading.Thread(
        target=lambda: found.append(endpoint_access("t", "ep", repository=None, socket_path=path)),
        daemon=True,
    )
    started = time.monotonic()
    reader.start()
    reader.join(5)
    stop.set()
    server.close()
    assert not reader.is_alive() and found == [None]
    assert time.monotonic() - started < 3


def test_links_in_the_archive_are_never_followed_nor_anything_written(tmp_path: Path) -> None:
    """A state volume holding links (by hand: to the host's files through the mount, or to
    another file of the volume) gives no file: the archive is read in memory, never
    extracted, and only regular files count."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind, target in (
            ("reconciler-router/router.json", tarfile.SYMTYPE, "/etc/passwd"),
            ("reconciler-router/state/credentials.json", tarfile.LNKTYPE, "etc/shadow"),
            ("reconciler-router/state/../../escape", tarfile.SYMTYPE, str(tmp_path / "x")),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            archive.addfile(info)
    buffer.seek(0)
    assert files_of_archive(buffer) == {}
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "recorded",
    [
        "github.com/org/models.git?private_token=abc",  # recorded by 0.4 from such a remote
        "github.com/org/models#frag",
        "github.com/org/models.git",
    ],
)
def test_an_identity_an_earlier_version_recorded_from_another_spelling_stays_this_one(
    recorded: str,
) -> None:
    assert same_repository(recorded, "github.com/org/models")
    assert same_repository("github.com/org/models", recorded)
    assert not same_repository(recorded, "github.com/org/other")


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("github.com/Org/Models", "github.com/org/models", True),
        ("gitlab.com/team/models//deploy", "gitlab.com/Team/Models//deploy", True),
        ("github.com/org/models//Deploy", "github.com/org/models//deploy", False),
        ("git.example.com/Org/Models", "git.example.com/org/models", False),
        ("path:/srv/Models", "path:/srv/models", False),
        ("path:/srv/models.git", "path:/srv/models", False),
        ("path:/srv/models", "/srv/models", True),  # a clone of that checkout
        ("path:/srv/models//deploy", "/srv/models//deploy", True),
        ("path:/srv/models//deploy", "/srv/models", False),
        ("github.com/org/models", "github.com/org/models2", False),
    ],
)
def test_repository_identities_match_without_case_only_on_hosts_that_ignore_it(
    one: str, other: str, same: bool
) -> None:
    assert same_repository(one, other) is same
    assert same_repository(other, one) is same
