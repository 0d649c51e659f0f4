"""Rollouts judged from a real Prometheus server, end to end through the daemon.

Real git (a bare origin the daemon fetches from and pushes its step commits to, a person's
clone), a real router process (`python -m reconciler.router`) in front of two real backends
on loopback, callers sending requests through it all along, and /usr/bin/prometheus
scraping the router's metrics port every 0.5 s. The target is the in-memory one, which also
writes each traffic and mirror change to the router's configuration file (the router
reloads it), so the canary gets the requests of the step git says, and reads the router's
metrics port as the Docker target does (used only by a policy whose figures come from the
router: status says `metrics: prometheus ...` otherwise).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_fixtures import (  # noqa: F401  (fixture: start_prometheus)
    PrometheusServer,
    free_port,
    start_prometheus_fixture,
)
from repo_builder import RepoBuilder
from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    PRIMARY_KEY,
    Backend,
    Backends,
    RouterProcess,
    backends_fixture,
    deployment,
    router_config,
    start_router_fixture,
    write_config,
)
from waiting import wait_for

from reconciler.daemon import Daemon, RemoteSource, WatchOptions
from reconciler.gitsource import DEFAULT_STATUS_BRANCH
from reconciler.model.plan import Step
from reconciler.rollouts.analysis import parse_exposition
from reconciler.rollouts.machine import read_mark
from reconciler.targets.base import ProgressCallback, Waiting
from reconciler.targets.memory import MemoryTarget

ENDPOINT = "my-endpoint"
ENDPOINT_FILE = f"endpoints/{ENDPOINT}/endpoint.yml"
ENDPOINT_TEXT = """\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
name: my-endpoint
auth_mode: key
traffic:
  blue: 100
"""


@dataclass
class RouterTarget(MemoryTarget):
    """The memory target; traffic and mirror changes also go to a real router's config."""

    config_path: Path = Path()
    backends: dict[str, Backend] = field(default_factory=dict)
    metrics_url: str = ""

    def router_metrics(self, endpoint: str) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as answer:
            return str(answer.read().decode())

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> Waiting | None:
        waiting = super().apply(step, progress=progress)
        live = self.endpoints.get(ENDPOINT)
        if live is not None:
            write_config(
                self.config_path, self.router_doc(live.spec.traffic, live.spec.mirror_traffic)
            )
        return waiting

    def router_doc(self, traffic: Any, mirror: Any) -> dict[str, Any]:
        return router_config(
            [deployment(name, [b]) for name, b in sorted(self.backends.items())],
            traffic=dict(traffic),
            mirror=dict(mirror),
            endpoint=ENDPOINT,
        )


class Callers:
    """Requests through the router, about 40 a second, until stopped; answers counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            request = urllib.request.Request(
                self.url,
                data=b'{"data": [1]}',
                headers={
                    "Authorization": f"Bearer {PRIMARY_KEY}",
                    "Content-Type": "application/json",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    code = answer.status
            except urllib.error.HTTPError as error:
                code = error.code
            except OSError:
                code = 0
            self.codes[code] = self.codes.get(code, 0) + 1
            self._stop.wait(0.025)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Setup:
    remote: Path
    clone: RepoBuilder
    daemon: Daemon
    target: RouterTarget
    green: Backend
    prometheus: PrometheusServer
    policy: dict[str, Any]

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", "--git-dir", str(self.remote), *args],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def block(self) -> dict[str, Any]:
        try:
            text = self.git("show", f"{DEFAULT_STATUS_BRANCH}:status/{ENDPOINT}.yaml")
        except subprocess.CalledProcessError:
            return {}
        doc = yaml.safe_load(text)
        block = doc.get("rollout") if isinstance(doc, dict) else None
        return block if isinstance(block, dict) else {}

    def marks(self) -> list[tuple[int, bool]]:
        out = self.git("log", "--reverse", "-z", "--format=%B", "main")
        return [
            (m.step, m.rollback)
            for m in (read_mark(message) for message in out.split("\0"))
            if m is not None
        ]

    def push_policy(self, **changes: Any) -> None:
        self.clone.git("pull", "-q", "--rebase", "origin", "main")
        self.policy.update(changes)
        self.clone.write("reconciler.yaml", yaml.safe_dump({"rollouts": {"default": self.policy}}))
        self.clone.commit("rollout policy")
        self.clone.git("push", "-q", "origin", "main")
        self.daemon.trigger("push", fetch=True)

    def push_green(self) -> None:
        self.clone.git("pull", "-q", "--rebase", "origin", "main")
        self.clone.deployment(ENDPOINT, "green", model="azureml:sklearn-regression:2")
        self.clone.commit("green: model v2")
        self.clone.git("push", "-q", "origin", "main")
        self.daemon.trigger("push", fetch=True)


@pytest.fixture
def setup(
    repo: RepoBuilder,
    tmp_path: Path,
    backends: Backends,
    start_router: Callable[..., RouterProcess],
    start_prometheus: Callable[..., PrometheusServer],
) -> Iterator[Callable[..., Setup]]:
    made: list[tuple[Daemon, threading.Thread, Callers]] = []

    def make(
        prometheus: dict[str, Any], *, green_status: int = 200, step_for: str = "1500ms"
    ) -> Setup:
        metrics_port = free_port()
        server = start_prometheus([f"127.0.0.1:{metrics_port}"])  # see prometheus_fixtures
        blue, green = backends.start("blue"), backends.start("green", status=green_status)
        target = RouterTarget(backends={"blue": blue, "green": green})
        router = start_router(target.router_doc({"blue": 100}, {}), metrics_port=metrics_port)
        target.config_path = router.config_path
        target.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        policy = {
            "steps": [{"traffic": 50, "for": step_for}, 100],
            "interval": "1s",
            "thresholds": {"error_rate": 0.05, "min_requests": 5},
            "metrics": {"prometheus": {"address": server.address, "timeout": "3s", **prometheus}},
        }
        repo.basics()
        repo.model(version=2, weights="2")
        repo.write(ENDPOINT_FILE, ENDPOINT_TEXT)
        repo.deployment(ENDPOINT, "blue")
        repo.write("reconciler.yaml", yaml.safe_dump({"rollouts": {"default": policy}}))
        repo.commit("blue serves all traffic")
        remote = tmp_path / "remote.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(remote)], check=True)
        clone = RepoBuilder.__new__(RepoBuilder)
        clone.root = tmp_path / "person"
        subprocess.run(["git", "clone", "-q", str(remote), str(clone.root)], check=True)
        clone.git("config", "user.email", "person@example.com")
        clone.git("config", "user.name", "Person")
        clone.git("config", "commit.gpgsign", "false")
        callers = Callers(f"{router.url}/score")
        source = RemoteSource(str(remote), branch="main", cache_dir=tmp_path / "cache")
        daemon = Daemon(source, target, WatchOptions(interval_s=60.0, progress_interval_s=0.1))
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        made.append((daemon, thread, callers))
        s = Setup(remote, clone, daemon, target, green, server, policy)
        wait_for(lambda: s.git("branch", "--list", DEFAULT_STATUS_BRANCH) != "", what="status")
        return s

    yield make
    for daemon, thread, callers in made:
        callers.stop()
        daemon.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


def test_a_healthy_canary_judged_from_prometheus_is_promoted_to_100(
    setup: Callable[..., Setup],
) -> None:
    s = setup({})
    s.push_green()
    wait_for(lambda: s.block().get("state") == "Succeeded", what="the rollout to succeed")
    assert s.marks() == [(1, False), (2, False)]
    block = s.block()
    assert block["metrics"] == f"prometheus {s.prometheus.address}"
    analysis = block["analysis"]
    assert analysis["outcome"] == "pass"
    assert analysis["canary"]["deployment"] == "green" and analysis["canary"]["kind"] == "live"
    assert analysis["canary"]["requests"] >= 5 and analysis["canary"]["errors"] == 0
    assert analysis["canary"]["p99_ms"] is not None
    # The figures are Prometheus's: green's requests reached it through the router.
    served = s.prometheus.value(
        f'sum(router_requests_total{{endpoint="{ENDPOINT}",deployment="green",code="200"}})'
    )
    assert served is not None and served >= analysis["canary"]["requests"]
    assert s.target.snapshot().traffic_of(ENDPOINT) == (("green", 100),)


def test_a_failing_canary_judged_from_prometheus_is_rolled_back(
    setup: Callable[..., Setup],
) -> None:
    s = setup({}, green_status=500)
    s.push_green()
    wait_for(lambda: s.block().get("state") == "Failed", what="the rollback")
    assert s.marks() == [(1, False), (1, True)]
    analysis = s.block()["analysis"]
    assert analysis["outcome"] == "fail"
    assert analysis["canary"]["errors"] == analysis["canary"]["requests"] >= 5
    assert "error_rate 100.00% > 5.00%" in analysis["reason"]
    wait_for(
        lambda: s.target.snapshot().traffic_of(ENDPOINT) == (("blue", 100),),
        what="traffic back on blue",
    )


def test_a_prometheus_refusing_the_token_holds_the_step_and_says_why(
    setup: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROM_TOKEN_UNSET_FOR_TEST", raising=False)
    s = setup({"bearer_token_env": "PROM_TOKEN_UNSET_FOR_TEST"}, green_status=500)
    s.push_green()
    wait_for(
        lambda: "cannot read the metrics from Prometheus" in str(s.block().get("reason")),
        what="the step to wait on Prometheus",
    )
    time.sleep(2)  # more than the step's `for` and an interval: still no verdict
    block = s.block()
    assert block["state"] == "Progressing" and block["step"] == 1  # named without a window
    assert "PROM_TOKEN_UNSET_FOR_TEST (bearer_token_env) is not set" in block["reason"]
    assert "analysis" not in block
    assert s.marks() == [(1, False)]  # neither promoted nor rolled back
    assert json.dumps(block).count("Bearer") == 0


def test_a_step_whose_policy_leaves_prometheus_for_the_router_begins_a_new_window(
    setup: Callable[..., Setup],
) -> None:
    """A router snapshot must be the start of the router's figures: without one (a window
    begun on Prometheus), the step would count every request since the router started."""
    s = setup({}, step_for="1m")
    s.push_green()
    wait_for(
        lambda: s.block().get("analysis", {}).get("outcome") == "wait" and "metrics" in s.block(),
        what="a first judgement from Prometheus",
    )
    before = s.prometheus.value(
        f'sum(router_requests_total{{endpoint="{ENDPOINT}",deployment="blue",kind="live"}})'
    )
    assert before is not None and before > 0  # the callers' requests so far
    judged = s.block()["analysis"]
    pushed = time.monotonic()
    s.push_policy(metrics="router", interval="500ms")
    wait_for(
        lambda: "metrics" not in s.block() and s.block().get("analysis", judged) != judged,
        what="a judgement from the router",
    )
    since_push = time.monotonic() - pushed
    blue_now = sum(
        value
        for labels, value in parse_exposition(s.target.router_metrics(ENDPOINT), ENDPOINT).values(
            "router_requests_total"
        )
        if labels.get("deployment") == "blue" and labels.get("kind") == "live"
    )
    analysis = s.block()["analysis"]
    # The window began after the policy changed, and counts only the requests since then:
    # not the router's whole history (an empty start), nor the Prometheus window's time.
    assert analysis["elapsed_s"] <= since_push
    assert 0 < analysis["stable"]["requests"] <= blue_now - before
