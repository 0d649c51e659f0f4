"""The daemon's dashboard against the real Docker Engine and the real router: `reconcile
watch --ui-port` as its own process; the charts are computed from the router's own
/metrics (read through the Docker target's HasRouterMetrics), the test form reaches the
router with the key typed, the instances' log lines are on the page, and the key is in no
line the daemon logs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import docker_state
import pytest
import yaml
from repo_builder import RepoBuilder

docker = pytest.importorskip("docker")

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _engine() -> Any:
    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception:
        return None


CLIENT = _engine()
if CLIENT is None:
    pytest.skip("no Docker Engine answers on this machine", allow_module_level=True)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[RepoBuilder, str, Path, subprocess.Popen[bytes]]]:
    """Blue at 100% on a target of its own, and `reconcile watch --ui-port 0` serving it."""
    name = f"t{uuid.uuid4().hex[:8]}"
    repo = RepoBuilder(tmp_path / "repo")
    state = tmp_path / "state"
    state.mkdir()
    low = 20000 + uuid.UUID(int=int(name[1:], 16)).int % 90 * 10
    repo.write_yaml(
        "reconciler.yaml",
        {
            "targets": {
                name: {
                    "type": "docker",
                    "state_dir": str(state / "docker"),
                    "drain_s": 0.5,
                    "router_port_range": [low, low + 9],
                }
            },
            "default_target": name,
        },
    )
    repo.basics()
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue", instance_count=1)
    repo.commit("blue")
    log = tmp_path / "daemon.log"
    process = subprocess.Popen(
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
            "5",
            "--ui-port",
            "0",
        ],
        env={**os.environ, "XDG_STATE_HOME": str(state)},
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        yield repo, name, log, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
        docker_state.remove_target(CLIENT, name)


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def test_charts_from_the_real_router_and_the_test_form_through_it(
    daemon: tuple[RepoBuilder, str, Path, subprocess.Popen[bytes]],
) -> None:
    repo, name, log, _ = daemon
    base = wait_for(
        lambda: next((e["url"] for e in _events(log) if e.get("event") == "ui_serving"), None),
        60,
        "the dashboard",
    ).rstrip("/")
    wait_for(
        lambda: (_get(base + "/api/live").get("last_pass") or {}).get("outcome") == "ok",
        600,
        "blue served",
    )
    creds = docker_state.credentials(CLIENT, name, "my-endpoint")
    key = str(creds["primary_key"])

    # Requests straight to the router; the charts see them in its /metrics.
    def send(count: int) -> None:
        for _ in range(count):
            request = urllib.request.Request(
                f"http://127.0.0.1:{creds['port']}/score",
                data=b'{"x": 1}',
                method="POST",
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 200

    send(20)

    def charted() -> list[dict[str, Any]]:
        # A point is the increase between two readings 5 s apart: requests keep coming
        # while we wait, whenever the sampler's readings fall.
        send(2)
        data = _get(base + "/api/endpoints/my-endpoint/metrics")
        return [p for p in data["deployments"].get("blue", []) if p["rps"] > 0]

    points = wait_for(charted, 60, "the requests in the charts")
    assert points[-1]["p50_ms"] is not None and points[-1]["error_ratio"] == 0
    assert sum(p["rps"] for p in points) > 0

    # The page: a chart with points, the instance's log lines, the test form.
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    with browser.open(base + "/endpoints/my-endpoint", timeout=30) as answer:
        page = answer.read().decode()
    assert '<section class="charts" data-deployment="blue">' in page
    assert "<circle" in page
    assert '<section class="logs" data-deployment="blue">' in page and "==&gt; " in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf is not None
    form = urllib.parse.urlencode(
        {"csrf": csrf.group(1), "key": key, "deployment": "blue", "body": '{"data": [1]}'}
    ).encode()
    with browser.open(
        urllib.request.Request(base + "/endpoints/my-endpoint/test", data=form), timeout=60
    ) as answer:
        result = answer.read().decode()
    assert 'HTTP <b class="status">200</b>' in result
    assert '<b class="answered-by">blue</b>' in result
    assert "&quot;echo&quot;" in result or '"echo"' in result.replace("&quot;", '"')
    # A wrong key: the router's 401, shown as it came.
    form = urllib.parse.urlencode(
        {"csrf": csrf.group(1), "key": "not-the-key", "deployment": "", "body": "{}"}
    ).encode()
    with browser.open(
        urllib.request.Request(base + "/endpoints/my-endpoint/test", data=form), timeout=60
    ) as answer:
        assert 'HTTP <b class="status">401</b>' in answer.read().decode()
    assert [e for e in _events(log) if e.get("event") == "ui_test_sent"]
    assert key not in log.read_text()
    status = yaml.safe_load(repo.git("show", "reconcile-status:status/my-endpoint.yaml"))
    assert key not in json.dumps(status)
