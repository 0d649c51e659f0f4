"""`reconcile watch` as its own process on the real Docker Engine: drift is healed, and a
daemon killed with SIGKILL in the middle of a blue to green rollout, then started again,
converges, leaves no orphan containers and never sends traffic to an instance that is not
ready (requests keep succeeding throughout)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker_state
import pytest
import yaml
from daemon_process import WatchProcess
from repo_builder import RepoBuilder
from waiting import wait_for

docker = pytest.importorskip("docker")

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _engine() -> object | None:
    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception:
        return None


CLIENT = _engine()
if CLIENT is None:
    pytest.skip("no Docker Engine answers on this machine", allow_module_level=True)


class Watch(WatchProcess):
    """`reconcile watch --repo REPO` in a process of its own."""

    def __init__(self, repo: Path, state: Path, *, interval: float) -> None:
        super().__init__(state, "--repo", str(repo), "--interval", str(interval))


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[RepoBuilder, Path, str, list[Watch]]]:
    name = f"t{uuid.uuid4().hex[:8]}"
    repo = RepoBuilder(tmp_path / "repo")
    state = tmp_path / "state"
    state.mkdir()
    repo.write_yaml(
        "reconciler.yaml",
        {
            "targets": {
                name: {
                    "type": "docker",
                    "state_dir": str(state / "docker"),
                    "drain_s": 0.5,
                }
            },
            "default_target": name,
        },
    )
    low = 20000 + uuid.UUID(int=int(name[1:], 16)).int % 90 * 10
    config = yaml.safe_load((repo.root / "reconciler.yaml").read_text())
    config["targets"][name]["router_port_range"] = [low, low + 9]
    repo.write_yaml("reconciler.yaml", config)
    watches: list[Watch] = []
    yield repo, state, name, watches
    for w in watches:
        w.stop()
    assert CLIENT is not None
    docker_state.remove_target(CLIENT, name)


def containers(name: str, **labels: str) -> list[object]:
    assert CLIENT is not None
    filters = [f"reconciler.target={name}"] + [f"reconciler.{k}={v}" for k, v in labels.items()]
    return list(CLIENT.containers.list(all=True, filters={"label": filters}, ignore_removed=True))  # type: ignore[attr-defined]


def status(repo: RepoBuilder) -> dict[str, object]:
    try:
        return yaml.safe_load(repo.git("show", "reconcile-status:status/my-endpoint.yaml")) or {}
    except subprocess.CalledProcessError:
        return {}


def credentials(state: Path, name: str) -> dict[str, Any]:
    assert CLIENT is not None
    return docker_state.credentials(CLIENT, name, "my-endpoint")


def router_config(name: str) -> dict[str, Any]:
    assert CLIENT is not None
    return docker_state.router_config(CLIENT, name, "my-endpoint")


class Load:
    """Requests sent one after another to the scoring URI; every answer recorded."""

    def __init__(self, port: int, key: str) -> None:
        self.url = f"http://127.0.0.1:{port}/score"
        self.key = key
        self.codes: list[int] = []
        self.by: list[str] = []
        self.versions: set[str] = set()  # of the answers that say one
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            request = urllib.request.Request(
                self.url,
                data=b'{"x": 1}',
                method="POST",
                headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    self.codes.append(answer.status)
                    self.by.append(answer.headers.get("azureml-model-deployment", ""))
                    body = answer.read()
                with contextlib.suppress(ValueError, AttributeError):
                    self.versions.add(str(json.loads(body)["version"]))
            except urllib.error.HTTPError as err:
                self.codes.append(err.code)
            except OSError:
                self.codes.append(-1)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=60)


def base_repo(repo: RepoBuilder, *, blue: int = 100, green: int | None = None) -> str:
    repo.basics()
    # The environment of the docker_world tests (docker_target_fixtures: no packages beyond
    # the inference server), same file, same content digest: one environment image per
    # machine serves them all (a cold run builds it once, not once more with numpy).
    repo.environment(packages=())
    traffic = {"blue": blue} if green is None else {"blue": blue, "green": green}
    repo.endpoint("my-endpoint", traffic=traffic)
    repo.deployment("my-endpoint", "blue", instance_count=2)
    return repo.commit("blue")


def serve_blue(repo: RepoBuilder, state: Path, watches: list[Watch]) -> None:
    """Blue at 100%, served by a `reconcile watch` started for it: its first pass done."""
    first = base_repo(repo)
    watches.append(Watch(repo.root, state, interval=2))
    wait_for(lambda: served(repo, first, {"blue": 100}), 600, "the first passes")


def served(repo: RepoBuilder, commit: str, traffic: dict[str, int]) -> bool:
    """Status says the commit is applied: its traffic set, Succeeded and Healthy (passes
    before it may say Updating, with steps in progress)."""
    doc = status(repo)
    return (
        doc.get("commit") == commit
        and doc.get("traffic") == traffic
        and doc.get("provisioning_state") == "Succeeded"
        and doc.get("health") == "Healthy"
    )


def test_drift_is_healed_by_the_periodic_pass(
    setup: tuple[RepoBuilder, Path, str, list[Watch]],
) -> None:
    repo, state, name, watches = setup
    serve_blue(repo, state, watches)
    victims = containers(name, role="instance", deployment="blue")
    assert len(victims) == 2
    victims[0].remove(force=True)  # type: ignore[attr-defined]
    # Weights changed by hand, through the router's own admin call.
    creds = credentials(state, name)
    config = router_config(name)
    config["traffic"] = {}
    request = urllib.request.Request(
        f"http://127.0.0.1:{creds['port']}/-/config",
        data=json.dumps(config).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {creds['admin_secret']}"},
    )
    urllib.request.urlopen(request, timeout=10).read()
    wait_for(
        lambda: (
            len([c for c in containers(name, role="instance", deployment="blue")]) == 2
            and router_config(name).get("traffic") == {"blue": 100}
        ),
        180,
        "the drift to be healed",
    )
    # The pass logs its corrections once it returns: wait for that line too.
    wait_for(
        lambda: "drift_corrected" in [e.get("event") for e in watches[0].events()],
        60,
        "the correction to be logged",
    )


def test_sigkill_mid_rollout_then_restart_converges_without_failed_requests(
    setup: tuple[RepoBuilder, Path, str, list[Watch]],
) -> None:
    repo, state, name, watches = setup
    serve_blue(repo, state, watches)
    creds = credentials(state, name)
    load = Load(int(creds["port"]), str(creds["primary_key"]))  # type: ignore[arg-type]
    try:
        # Blue to green in one commit: green created with 3 instances, traffic moves, blue goes.
        repo.code(version="2")
        repo.deployment("my-endpoint", "green", instance_count=3)
        repo.endpoint("my-endpoint", traffic={"green": 100})
        repo.remove("endpoints/my-endpoint/blue.yml")
        switch = repo.commit("switch to green")
        wait_for(
            lambda: len(containers(name, role="instance", deployment="green")) >= 1,
            300,
            "green's first instance",
        )
        watches[0].kill()  # in the middle of creating green
        time.sleep(1)
        watches.append(Watch(repo.root, state, interval=2))
        wait_for(lambda: served(repo, switch, {"green": 100}), 600, "convergence after restart")
        time.sleep(2)  # a few requests on the final state
    finally:
        load.stop()
    assert containers(name, role="instance", deployment="blue") == []  # no orphans
    greens = containers(name, role="instance", deployment="green")
    assert len(greens) == 3
    assert len(containers(name, role="router")) == 1
    failures = [c for c in load.codes if c != 200]
    assert load.codes and not failures, (
        f"{len(failures)} failed of {len(load.codes)}: {set(failures)}"
    )
    assert load.by[-1] == "green"


NEVER_READY_PY = """\
import time


def init():
    time.sleep(3600)  # never ready: the readiness budget is minutes away


def run(raw_data):
    return {}
"""


def test_a_fix_committed_during_a_rollout_that_never_gets_healthy_is_served_at_once(
    setup: tuple[RepoBuilder, Path, str, list[Watch]],
) -> None:
    """The daemon's pass does not wait for green, which will not be ready for minutes (its
    readiness budget): the commit that fixes green a few seconds later is planned at once,
    from what runs, and served well within one interval; the broken version never gets
    traffic and blue serves throughout."""
    from reconciler.engine import load as load_desired
    from reconciler.filetree import DirectoryTree

    repo, state, name, watches = setup
    interval = 60.0
    first = base_repo(repo)
    watches.append(Watch(repo.root, state, interval=interval))
    wait_for(lambda: served(repo, first, {"blue": 100}), 600, "blue serving")
    creds = credentials(state, name)
    traffic = Load(int(creds["port"]), str(creds["primary_key"]))  # type: ignore[arg-type]

    def green_digest() -> str:
        desired, _ = load_desired(DirectoryTree(repo.root))
        assert desired is not None
        return next(d.digest for d in desired.deployments if d.name == "green")

    try:
        repo.write("src-green/score.py", NEVER_READY_PY)
        repo.deployment("my-endpoint", "green", code="../../src-green")
        repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 50})
        broken = green_digest()
        repo.commit("green, never ready")
        wait_for(
            lambda: (
                any(
                    "green healthy" in str(s.get("progress"))
                    for s in status(repo).get("in_progress_steps") or []  # type: ignore[union-attr]
                )
                and len(containers(name, role="instance", deployment="green")) == 1
            ),
            300,
            "green started, its traffic step waiting for it in status",
        )
        [stuck] = containers(name, role="instance", deployment="green")
        repo.write("src-green/score.py", SCORE_FIXED_PY)
        fixed_digest = green_digest()
        committed = time.monotonic()
        fix = repo.commit("green fixed")
        wait_for(lambda: "fixed" in traffic.versions, interval, "the fix answering")
        took = time.monotonic() - committed
        wait_for(lambda: served(repo, fix, {"blue": 50, "green": 50}), 120, "status of the fix")
    finally:
        traffic.stop()
    print(f"fix served {took:.1f} s after its commit (interval {interval:.0f} s)")
    assert took < interval
    failures = [c for c in traffic.codes if c != 200]
    assert traffic.codes and not failures, f"{len(failures)} failed of {len(traffic.codes)}"
    assert "never" not in traffic.versions
    # The never-ready instance went with the rollout of the fix.
    assert stuck.id not in {c.id for c in containers(name, role="instance")}  # type: ignore[attr-defined]
    # No status the daemon wrote shows traffic on the broken version.
    for commit in repo.git("rev-list", "reconcile-status").split():
        doc = yaml.safe_load(repo.git("show", f"{commit}:status/my-endpoint.yaml")) or {}
        green = (doc.get("deployments") or {}).get("green") or {}
        if green.get("spec_digest") == broken:
            assert not (doc.get("traffic") or {}).get("green"), doc
    assert fixed_digest != broken


SCORE_FIXED_PY = """\
import json


def init():
    pass


def run(raw_data):
    return {"version": "fixed", "echo": json.loads(raw_data)}
"""
