"""One writer per target, with real processes: a `reconcile watch` holds the target's lock
for its life; a one-shot `reconcile` (apply) or `reconcile regenerate-key` of the same
target waits, says who holds it, and exits 1 naming the holder when --lock-timeout passes
(never a traceback, never a Docker error); once the daemon stops, it goes ahead. A second
daemon waits and names the first on /healthz.

The daemon holding the lock talks to a Docker socket that does not exist (its passes fail
and back off, its lock is held all along), so these tests need no Docker Engine, except
the one that applies once the lock is free.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from repo_builder import RepoBuilder
from waiting import wait_for

pytestmark = [pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """A `reconcile` command in a process of its own; its stderr kept in a file."""

    def __init__(self, args: list[str], *, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", *args],
            env=env,
            # Not the project's folder: `python -m` would import the package found there
            # first, whatever PYTHONPATH says.
            cwd=log.parent,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        out, _ = self.process.communicate(timeout=timeout)
        return self.process.returncode, out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


class World:
    def __init__(self, tmp: Path) -> None:
        self.name = f"lock{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.state = tmp / "state"
        self.state.mkdir()
        self.repo = RepoBuilder(tmp / "repo")
        self.repo.write_yaml(
            "reconciler.yaml",
            {
                "targets": {self.name: {"type": "docker", "state_dir": str(self.state / "docker")}},
                "default_target": self.name,
            },
        )
        self.repo.commit("no endpoints yet")
        self.processes: list[Process] = []

    def env(self, *, docker_host: str | None) -> dict[str, str]:
        env = {**os.environ, "XDG_STATE_HOME": str(self.state)}
        if docker_host is None:
            env.pop("DOCKER_HOST", None)
        else:
            env["DOCKER_HOST"] = docker_host
        return env

    def nowhere(self) -> str:
        """A Docker socket that does not exist: every pass fails, the lock stays held."""
        return f"unix://{self.tmp}/no-engine.sock"

    def run(self, *args: str, docker_host: str | None = None, name: str = "cmd") -> Process:
        log = self.tmp / f"{name}-{len(self.processes)}.log"
        proc = Process(list(args), env=self.env(docker_host=docker_host), log=log)
        self.processes.append(proc)
        return proc

    def watch(self, *extra: str) -> Process:
        daemon = self.run(
            "--log-format",
            "json",
            "watch",
            "--repo",
            str(self.repo.root),
            "--interval",
            "2",
            *extra,
            docker_host=self.nowhere(),
            name="watch",
        )
        return daemon


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    for proc in w.processes:
        proc.stop()


def holding(daemon: Process) -> None:
    wait_for(
        lambda: (
            "lock_acquired" in [e.get("event") for e in daemon.events()]
            or daemon.process.poll() is not None
        ),
        60,
        "the daemon to take the lock",
    )
    assert daemon.process.poll() is None, daemon.stderr


def test_one_shot_apply_gives_up_naming_the_daemon_that_holds_the_target(world: World) -> None:
    daemon = world.watch()
    holding(daemon)
    started = time.monotonic()
    one_shot = world.run("--repo", str(world.repo.root), "--lock-timeout", "1")
    code, _ = one_shot.finish()
    waited = time.monotonic() - started
    err = one_shot.stderr
    assert code == 1, err
    assert f"target {world.name} is being changed by `reconcile watch`" in err
    assert f"pid {daemon.process.pid}" in err
    assert "waiting up to 1 s" in err  # it said so while it waited
    assert "gave up after 1 s (--lock-timeout 1)" in err
    assert "Traceback" not in err and "No such container" not in err
    assert waited >= 1.0
    assert daemon.process.poll() is None  # the daemon was not disturbed


def test_lock_timeout_zero_fails_at_once(world: World) -> None:
    daemon = world.watch()
    holding(daemon)
    one_shot = world.run("--repo", str(world.repo.root), "--lock-timeout", "0")
    code, _ = one_shot.finish()
    err = one_shot.stderr
    assert code == 1, err
    assert "waiting" not in err
    assert f"`reconcile watch` (pid {daemon.process.pid}, since " in err
    assert err.strip().startswith("error: ")
    assert "Traceback" not in err


def test_regenerate_key_takes_the_lock_too(world: World) -> None:
    daemon = world.watch()
    holding(daemon)
    regen = world.run(
        "regenerate-key",
        "my-endpoint",
        "--key",
        "primary",
        "--repo",
        str(world.repo.root),
        "--lock-timeout",
        "0",
    )
    code, out = regen.finish()
    assert code == 1, regen.stderr
    assert f"being changed by `reconcile watch` (pid {daemon.process.pid}" in regen.stderr
    assert "regenerated" not in out


def test_dry_run_takes_no_lock(world: World) -> None:
    daemon = world.watch()
    holding(daemon)
    # It plans against the target (unreachable here), never waiting for the daemon.
    dry = world.run(
        "--repo",
        str(world.repo.root),
        "--dry-run",
        "--lock-timeout",
        "0",
        docker_host=world.nowhere(),
    )
    code, _ = dry.finish()
    assert "being changed by" not in dry.stderr
    assert "Docker Engine not reachable" in dry.stderr
    assert code == 1


def test_a_second_daemon_waits_and_names_the_first_on_healthz(world: World) -> None:
    first = world.watch()
    holding(first)
    port = free_port()
    second = world.watch("--metrics-port", str(port))

    def health() -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return {}

    wait_for(lambda: health().get("phase") == "waiting_for_lock", 60, "the second to wait")
    body = health()
    assert f"`reconcile watch` (pid {first.process.pid}" in str(body.get("lock_holder"))
    # The phase is set as the line is written: the line may reach the pipe just after.
    wait_for(
        lambda: any(e.get("event") == "waiting_for_lock" for e in second.events()),
        10,
        "the waiting line",
    )
    waiting = [e for e in second.events() if e.get("event") == "waiting_for_lock"]
    assert f"pid {first.process.pid}" in str(waiting[0].get("holder"))
    # The first stops: the second takes over.
    first.stop()
    wait_for(lambda: health().get("phase") not in (None, "waiting_for_lock"), 60, "takeover")
    assert health().get("lock_holder") is None


def _engine_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.mark.docker
def test_one_shot_apply_waits_for_the_daemon_then_applies(world: World) -> None:
    if not _engine_answers():
        pytest.skip("no Docker Engine answers on this machine")
    daemon = world.watch()
    holding(daemon)
    # The one-shot talks to the real engine; it applies the (empty) desired state once the
    # daemon is gone. Its default timeout is ten minutes.
    one_shot = world.run("--repo", str(world.repo.root))
    wait_for(lambda: "waiting up to 600 s" in one_shot.stderr, 60, "the one-shot to wait")
    assert one_shot.process.poll() is None  # still waiting: the daemon holds the target
    assert f"`reconcile watch` (pid {daemon.process.pid}" in one_shot.stderr
    daemon.stop()
    code, _ = one_shot.finish()
    assert code == 0, one_shot.stderr
    assert "gave up" not in one_shot.stderr
