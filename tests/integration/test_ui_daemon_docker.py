"""The daemon's dashboard against the real Docker Engine and the real router: `reconcile
watch --ui-port` as its own process; the charts are computed from the router's own
/metrics (read through the Docker target's HasRouterMetrics), the test form reaches the
router with the key typed, the instances' log lines are on the page, and the key is in no
line the daemon logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import docker_state
import pytest
import yaml
from repo_builder import RepoBuilder
from waiting import wait_for
from webdriver import chromium, chromium_binary, driver_binary

docker = pytest.importorskip("docker")

pytestmark = [pytest.mark.docker, pytest.mark.slow]

EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "example-repo"


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


def _target(name: str, state: Path) -> dict[str, Any]:
    """A Docker target of the test's own: its state folder, router ports of its own."""
    low = 20000 + uuid.UUID(int=int(name[1:], 16)).int % 90 * 10
    return {
        "type": "docker",
        "state_dir": str(state / "docker"),
        "drain_s": 0.5,
        "router_port_range": [low, low + 9],
    }


@contextmanager
def _watching(
    repo: RepoBuilder, name: str, tmp_path: Path
) -> Iterator[tuple[RepoBuilder, str, Path, subprocess.Popen[bytes]]]:
    """`reconcile watch --ui-port 0` on the repository, its JSON log in daemon.log; the
    target's containers removed afterwards."""
    state = tmp_path / "state"
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


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[RepoBuilder, str, Path, subprocess.Popen[bytes]]]:
    """Blue at 100% on a target of its own, and `reconcile watch --ui-port 0` serving it."""
    name = f"t{uuid.uuid4().hex[:8]}"
    repo = RepoBuilder(tmp_path / "repo")
    (tmp_path / "state").mkdir()
    repo.write_yaml(
        "reconciler.yaml",
        {"targets": {name: _target(name, tmp_path / "state")}, "default_target": name},
    )
    repo.basics()
    repo.environment(packages=())  # the docker_world tests' environment: its image is shared
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue", instance_count=1)
    repo.commit("blue")
    with _watching(repo, name, tmp_path) as served:
        yield served


@pytest.fixture
def example_daemon(
    tmp_path: Path,
) -> Iterator[tuple[RepoBuilder, str, Path, subprocess.Popen[bytes]]]:
    """example-repo (blue/green at 90/10) copied into a git repository of its own, its
    target renamed to one of the test's own, served by `reconcile watch --ui-port 0`."""
    name = f"t{uuid.uuid4().hex[:8]}"
    root = tmp_path / "repo"
    shutil.copytree(EXAMPLE_REPO, root)
    repo = RepoBuilder(root)
    (tmp_path / "state").mkdir()
    config = yaml.safe_load((root / "reconciler.yaml").read_text())
    config["targets"] = {name: {**config["targets"]["local"], **_target(name, tmp_path / "state")}}
    config["default_target"] = name
    repo.write_yaml("reconciler.yaml", config)
    repo.commit("example-repo")
    with _watching(repo, name, tmp_path) as served:
        yield served


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


def _served(log: Path) -> str:
    """The dashboard's base URL, once the daemon's first pass has ended well."""
    base = str(
        wait_for(
            lambda: next((e["url"] for e in _events(log) if e.get("event") == "ui_serving"), None),
            60,
            "the dashboard",
        )
    ).rstrip("/")
    wait_for(
        lambda: (_get(base + "/api/live").get("last_pass") or {}).get("outcome") == "ok",
        600,
        "the endpoint served",
    )
    return base


def test_charts_from_the_real_router_and_the_test_form_through_it(
    daemon: tuple[RepoBuilder, str, Path, subprocess.Popen[bytes]],
) -> None:
    repo, name, log, _ = daemon
    base = _served(log)
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


@pytest.mark.skipif(
    chromium_binary() is None or driver_binary() is None,
    reason="needs Debian's chromium and chromium-driver",
)
def test_example_repo_in_a_browser_bars_states_charts_phone_width_and_a_live_traffic_commit(
    example_daemon: tuple[RepoBuilder, str, Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """What a person sees of example-repo served by the daemon on Docker, in headless
    Chromium at 1280 and 390 pixels wide; screenshots in the test's folder."""
    repo, name, log, _ = example_daemon
    base = _served(log)
    creds = docker_state.credentials(CLIENT, name, "my-endpoint")
    body = (EXAMPLE_REPO / "sample-request.json").read_bytes()

    def charted() -> list[dict[str, Any]]:
        """A few more requests through the router, then blue's points that saw traffic:
        the sampler reads every 5 s, so traffic over two reads draws a line, not a dot."""
        for _ in range(5):
            request = urllib.request.Request(
                f"http://127.0.0.1:{creds['port']}/score",
                data=body,
                method="POST",
                headers={
                    "Authorization": f"Bearer {creds['primary_key']}",
                    "Content-Type": "application/json",
                },
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 200
        data = _get(base + "/api/endpoints/my-endpoint/metrics")
        points = [p for p in data["deployments"].get("blue", []) if p["rps"] > 0]
        return points if len(points) >= 2 else []

    wait_for(charted, 60, "two readings of the requests in the charts")
    card = "article[data-endpoint='my-endpoint']"
    widths_js = (
        f'return Array.from(document.querySelectorAll("{card} > .traffic .bar .seg"))'
        ".map(s => Math.round(100 * s.offsetWidth / s.parentNode.clientWidth))"
    )
    # Read in the page (live updates replace elements: none is held across them).
    legend_js = (
        f'return Array.from(document.querySelectorAll("{card} > .traffic .legend li"))'
        ".map(li => li.textContent)"
    )
    no_scroll_js = "return document.documentElement.scrollWidth <= window.innerWidth"
    with chromium(javascript=True) as browser:
        browser.open(base + "/")
        assert browser.texts(f"{card} h2 .state") == ["Succeeded"]
        assert browser.texts(f"{card} h2 .health") == ["Healthy"]
        assert browser.texts(f"{card} > .traffic .legend li") == ["blue 90%", "green 10%"]
        assert browser.run(widths_js) == [90, 10]
        browser.screenshot(tmp_path / "overview-1280.png")
        browser.resize(390, 844)
        assert browser.run(no_scroll_js) is True
        browser.screenshot(tmp_path / "overview-390.png")

        browser.resize(1280, 900)
        browser.open(base + "/endpoints/my-endpoint")
        assert browser.texts(".deployment h3") == ["blue", "green"]
        # Each deployment's first row is its state.
        assert browser.texts(".deployment .kv tr:first-child td") == ["Succeeded (Healthy)"] * 2
        assert browser.texts(f"{card} > .traffic .legend li") == ["blue 90%", "green 10%"]
        points = wait_for(
            lambda: browser.run(
                "return document.querySelectorAll(\"section.charts[data-deployment='blue'] "
                'svg circle").length'
            ),
            60,
            "blue's chart drawn with points",
        )
        assert points >= 2
        browser.run("document.querySelector('section.charts').scrollIntoView()")
        browser.screenshot(tmp_path / "endpoint-1280.png")
        browser.resize(390, 844)
        assert browser.run(no_scroll_js) is True
        browser.screenshot(tmp_path / "endpoint-390.png")
        browser.resize(1280, 900)

        # A traffic commit: the page follows it without a reload (a mark a reload erases).
        browser.run("window.scrollTo(0, 0); window.notReloaded = true")
        endpoint_file = repo.root / "endpoints" / "my-endpoint" / "endpoint.yml"
        text = endpoint_file.read_text()
        assert "  blue: 90\n  green: 10\n" in text
        endpoint_file.write_text(
            text.replace("  blue: 90\n  green: 10\n", "  blue: 50\n  green: 50\n")
        )
        repo.commit("blue/green 50/50")
        wait_for(
            lambda: browser.run(legend_js) == ["blue 50%", "green 50%"],
            180,
            "the 50/50 commit on the page",
        )
        assert browser.run("return window.notReloaded === true") is True
        assert browser.run(widths_js) == [50, 50]
        browser.screenshot(tmp_path / "endpoint-live-1280.png")
    assert (tmp_path / "overview-1280.png").stat().st_size > 5000
