"""`reconcile watch` losing the Docker Engine: its passes fail as "target unreachable",
back off, show it on /healthz, and the first pass after the engine is back succeeds.

The daemon reaches the engine through a Unix socket proxy this test controls (DOCKER_HOST
points at it): absent when the daemon starts, then started, then stopped with its
connections cut (the engine "lost" under a daemon that had a working client), then started
again. Real sockets and the real engine behind them; nothing in the daemon is patched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker_state
import pytest
from repo_builder import RepoBuilder
from waiting import wait_for

docker = pytest.importorskip("docker")

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ENGINE_SOCKET = "/var/run/docker.sock"


def _engine() -> Any:
    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception:
        return None


CLIENT = _engine()
if CLIENT is None or not Path(ENGINE_SOCKET).exists():
    pytest.skip(f"no Docker Engine answers on {ENGINE_SOCKET}", allow_module_level=True)


class SocketProxy:
    """A Unix socket at `path` forwarding every connection to the engine's socket.

    stop() removes the socket and cuts every connection open through it, as an engine that
    went away would: the client's pooled connections break, new ones find no socket.
    """

    def __init__(self, path: Path, upstream: str = ENGINE_SOCKET) -> None:
        self.path = path
        self.upstream = upstream
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # One direction ended: the other has nothing more to say either.
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            with contextlib.suppress(OSError):
                source.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[RepoBuilder, str, SocketProxy, Path]]:
    name = f"loss{uuid.uuid4().hex[:8]}"
    # A short folder: a Unix socket's path is limited to about a hundred bytes.
    sockets = Path(f"/tmp/rec-{name}")
    sockets.mkdir()
    proxy = SocketProxy(sockets / "docker.sock")
    state = tmp_path / "state"
    repo = RepoBuilder(tmp_path / "repo")
    low = 22000 + int(name[4:], 16) % 90 * 10
    repo.write_yaml(
        "reconciler.yaml",
        {
            "targets": {
                name: {
                    "type": "docker",
                    "state_dir": str(state / "docker"),
                    "router_port_range": [low, low + 9],
                }
            },
            "default_target": name,
        },
    )
    yield repo, name, proxy, state
    proxy.stop()
    with contextlib.suppress(OSError):
        sockets.rmdir()
    docker_state.remove_target(CLIENT, name)


def test_the_daemon_backs_off_while_the_engine_is_away_and_recovers(
    world: tuple[RepoBuilder, str, SocketProxy, Path], tmp_path: Path
) -> None:
    repo, name, proxy, state = world
    repo.endpoint("first-ep")
    repo.commit("one endpoint")
    port = free_port()
    log = tmp_path / "watch.log"
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "--log-format",
            "json",
            "watch",
            "--repo",
            str(repo.root),
            "--interval",
            "2",
            "--metrics-port",
            str(port),
        ],
        env={**os.environ, "XDG_STATE_HOME": str(state), "DOCKER_HOST": f"unix://{proxy.path}"},
        cwd=tmp_path,  # not the project's folder: PYTHONPATH decides the package
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )

    def events(kind: str) -> list[dict[str, Any]]:
        out = []
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == kind:
                    out.append(event)
        return out

    def health() -> dict[str, Any]:
        assert daemon.poll() is None, f"the daemon died:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return {}

    def routers(endpoint: str) -> list[Any]:
        labels = [f"reconciler.target={name}", "reconciler.role=router"]
        return [
            c
            for c in CLIENT.containers.list(filters={"label": labels}, ignore_removed=True)
            if c.labels.get("reconciler.endpoint") == endpoint
        ]

    def unreachable_passes() -> list[dict[str, Any]]:
        assert daemon.poll() is None, f"the daemon died:\n{log.read_text()[-3000:]}"
        return [e for e in events("pass_failed") if e.get("kind") == "target_unreachable"]

    try:
        # 1. No engine at all when the daemon starts: passes fail, and are retried with
        # growing pauses (1 s, then 2 s: capped by the 2 s interval), each jittered to a
        # random 50-100% of itself.
        wait_for(lambda: len(unreachable_passes()) >= 3, 60, "three failed passes")
        assert health()["target_reachable"] is False
        assert "Docker Engine" in str(health()["last_error"])
        delays = [float(e["in_s"]) for e in events("retry_scheduled")]
        first, second = delays[:2]
        assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0, delays
        assert routers("first-ep") == []

        # 2. The engine appears: the next pass creates the endpoint.
        proxy.start()
        wait_for(lambda: len(routers("first-ep")) == 1, 600, "first-ep's router")
        wait_for(lambda: health().get("target_reachable") is True, 120, "reachable again")
        wait_for(lambda: health().get("seconds_since_last_success") is not None, 120, "a success")
        failed_before = len(unreachable_passes())

        # 3. Lost under a daemon with a working client: connections cut, socket gone.
        proxy.stop()
        repo.endpoint("second-ep")
        repo.commit("a second endpoint")
        wait_for(lambda: len(unreachable_passes()) > failed_before, 120, "a pass to find no engine")
        assert health()["target_reachable"] is False
        assert routers("second-ep") == []

        # 4. Back again: the pending change is applied by the next pass.
        proxy.start()
        wait_for(lambda: len(routers("second-ep")) == 1, 600, "second-ep's router")
        wait_for(lambda: health().get("target_reachable") is True, 120, "reachable again")
        assert health()["phase"] in ("idle", "reconciling")
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=30)
