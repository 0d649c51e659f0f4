"""The daemon's dashboard (`reconcile watch --ui-port`) over real sockets: the daemon runs
against the in-memory target, given a router that is a real loopback HTTP server this test
controls (its /metrics is the exposition of the router's own metric classes, its /score
records what it was sent). Live pass state, the charts' data and SVG, log lines, the test
form (the key reaches the router and nowhere else), CSRF and origin refusals, the token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from repo_builder import RepoBuilder
from status_fixtures import apply_head
from ui_daemon_fixtures import (  # noqa: F401  (fixture: serve)
    KEY,
    Served,
    blue_green,
    serve_fixture,
    wait_for,
)
from ui_fixtures import CLI, TOKEN, XSS, get, serving

from reconciler.targets.memory import MemoryTarget
from reconciler.ui.server import CSP
from reconciler.ui.testform import MAX_FORM_BYTES


def api(base: str, path: str) -> Any:
    status, _, body = get(base + path)
    assert status == 200, body
    return json.loads(body)


def converged(s: Served) -> None:
    wait_for(
        lambda: (api(s.base, "/api/live").get("last_pass") or {}).get("outcome") == "ok",
        what="a converged pass",
    )


def test_the_pass_running_now_shows_its_step_and_progress_then_the_plan_and_results(
    repo: RepoBuilder, serve: Callable[..., Served]
) -> None:
    commit = blue_green(repo)
    hold = threading.Event()
    s = serve(hold=hold)
    assert s.target.held.wait(20)
    live = api(s.base, "/api/live")
    running = live["running"]
    assert running["revision"] == commit
    now = [step for step in running["steps"] if step["outcome"] == "running"]
    assert [(x["action"], x["endpoint"]) for x in now] == [("create_deployment", "my-endpoint")]
    assert now[0]["progress"][-1].startswith(f"building image of {now[0]['deployment']}")
    assert running["steps"][0] == {**running["steps"][0], "outcome": "succeeded"}
    _, _, page = get(s.base + "/")
    assert "A pass is running" in page and "layer 2/3" in page
    hold.set()
    converged(s)
    live = api(s.base, "/api/live")
    assert live["daemon"]["phase"] in ("idle", "reconciling")
    assert live["running"] is None
    assert live["last_pass"]["revision"] == commit
    [plan] = live["plans"]
    actions = [(x["action"], x["deployment"], x["outcome"]) for x in plan["steps"]]
    assert ("create_endpoint", None, "succeeded") in actions
    assert ("create_deployment", "blue", "succeeded") in actions
    assert all(x["outcome"] == "succeeded" for x in plan["steps"])
    # The endpoint page lists the plan with each step's result; the overview the last pass.
    _, _, detail = get(s.base + "/endpoints/my-endpoint")
    assert "Last plans" in detail and 'class="outcome-succeeded"' in detail
    _, _, overview = get(s.base + "/")
    assert "Last pass ok" in overview and commit[:12] in overview
    # The in-memory status is what the pages show, the same as the status branch's.
    endpoints = api(s.base, "/api/endpoints")["endpoints"]
    assert [e["traffic"] for e in endpoints] == [[{"deployment": "blue", "percent": 100}]]


def test_a_commit_is_on_the_pages_after_its_pass_and_the_event_stream_says_so(
    repo: RepoBuilder, serve: Callable[..., Served]
) -> None:
    blue_green(repo)
    repo.endpoint("other-endpoint", traffic={"main": 100})
    repo.deployment("other-endpoint", "main")
    repo.commit("two endpoints")
    s = serve(prune=True)
    converged(s)
    names = [e["name"] for e in api(s.base, "/api/endpoints")["endpoints"]]
    assert names == ["my-endpoint", "other-endpoint"]
    events = urllib.request.urlopen(s.base + "/api/events", timeout=30)
    first = _next_event(events)
    repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 50})
    repo.remove("endpoints/other-endpoint/endpoint.yml")
    repo.remove("endpoints/other-endpoint/main.yml")
    second = repo.commit("50/50, other-endpoint pruned")
    # The stream tells of the change (no page reload needed to learn of it).
    assert _next_event(events) != first
    events.close()

    def moved() -> Any:
        endpoints = api(s.base, "/api/endpoints")["endpoints"]
        return [e for e in endpoints if e["applied_commit"] == second] == endpoints and endpoints

    [mine] = wait_for(moved, what="the second commit on the pages")
    assert mine["traffic"] == [
        {"deployment": "blue", "percent": 50},
        {"deployment": "green", "percent": 50},
    ]


def _next_event(stream: Any) -> str:
    """The fingerprint of the next `status` event of a server-sent event stream."""
    while True:
        line = stream.readline().decode()
        if line.startswith("data: "):
            return str(json.loads(line[6:])["fingerprint"])


def test_charts_come_from_two_readings_of_the_router_and_are_drawn_as_svg(
    repo: RepoBuilder, serve: Callable[..., Served]
) -> None:
    blue_green(repo)
    s = serve()
    # One request before any reading: the charts have a deployment to draw from the start.
    s.router.metrics.observe("blue", "live", 200, 0.02)
    converged(s)
    wait_for(
        lambda: api(s.base, "/api/endpoints/my-endpoint/metrics")["deployments"].get("blue"),
        what="two readings",
    )
    s.router.traffic()

    def burst() -> Any:
        points = api(s.base, "/api/endpoints/my-endpoint/metrics")["deployments"].get("blue", [])
        return [p for p in points if p["rps"] > 0]

    [point] = wait_for(burst, what="a point with the burst")
    assert point["errors"].keys() == {"500"}
    assert point["error_ratio"] == pytest.approx(10 / 110)
    # 110 requests of 20 ms, all in the bucket (10 ms, 25 ms]: Prometheus' interpolation.
    assert point["p50_ms"] == pytest.approx(17.5)
    assert point["p99_ms"] == pytest.approx(24.85)
    data = api(s.base, "/api/endpoints/my-endpoint/metrics")
    green = [p for p in data["deployments"]["green"] if p["mirror_rps"] > 0]
    assert green and green[0]["mirror_share"] == pytest.approx(30 / 110)
    assert green[0]["rps"] == 0
    assert data["problem"] is None
    status, headers, page = get(s.base + "/endpoints/my-endpoint")
    assert status == 200 and headers["Content-Security-Policy"] == CSP
    section = page[page.index('<section class="charts" data-deployment="blue"') :]
    assert "<svg" in section.split("</section>")[0]
    assert section.count('<circle class="dot') >= 1
    assert "Requests/s" in page and "Latency (ms)" in page and "Mirror share (%)" in page
    assert "style=" not in page and "<script>" not in page.replace(
        '<script src="/static/live.js" defer></script>', ""
    )


def test_the_charts_say_why_when_the_router_does_not_answer(
    repo: RepoBuilder, serve: Callable[..., Served]
) -> None:
    blue_green(repo)
    s = serve()
    converged(s)
    s.router.server.shutdown()
    s.router.server.server_close()
    problem = wait_for(
        lambda: api(s.base, "/api/endpoints/my-endpoint/metrics")["problem"],
        what="the problem reported",
    )
    assert "could not be read" in problem
    _, _, page = get(s.base + "/endpoints/my-endpoint")
    assert "could not be read" in page


def test_recent_log_lines_of_each_instance_are_escaped(
    repo: RepoBuilder, serve: Callable[..., Served]
) -> None:
    blue_green(repo)
    s = serve()
    converged(s)
    logs = api(s.base, "/api/endpoints/my-endpoint/logs")
    assert set(logs["deployments"]) == {"blue", "green"}
    assert XSS in logs["deployments"]["blue"]["text"]
    _, _, page = get(s.base + "/endpoints/my-endpoint")
    assert "==&gt; my-endpoint-blue-0 &lt;==" in page
    assert "scored a request &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert XSS not in page


def _form(base: str, opener: urllib.request.OpenerDirector) -> str:
    with opener.open(base + "/endpoints/my-endpoint", timeout=20) as response:
        page = response.read().decode()
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, page
    return found.group(1)


def _post(
    opener: urllib.request.OpenerDirector,
    url: str,
    fields: dict[str, str],
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    data = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _browser() -> urllib.request.OpenerDirector:
    from http.cookiejar import CookieJar

    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))


def test_the_test_form_sends_the_typed_key_to_the_router_once_and_never_logs_it(
    repo: RepoBuilder, serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    blue_green(repo)
    s = serve()
    converged(s)
    browser = _browser()
    csrf = _form(s.base, browser)
    caplog.set_level("DEBUG")
    # An earlier test (an in-process router, the CLI) may have configured structlog with a
    # level filter or cached loggers, which capture_logs cannot see through.
    structlog.reset_defaults()
    with structlog.testing.capture_logs() as logged:
        status, page = _post(
            browser,
            s.base + "/endpoints/my-endpoint/test",
            {"csrf": csrf, "key": KEY, "deployment": "green", "body": '{"data": [[1, 2]]}'},
        )
    assert status == 200, page
    [sent] = s.router.received
    assert sent == {
        "path": "/score",
        "authorization": f"Bearer {KEY}",
        "pinned": "green",
        "body": '{"data": [[1, 2]]}',
    }
    assert 'HTTP <b class="status">200</b>' in page
    assert '<b class="answered-by">green</b>' in page
    assert "&lt;script&gt;" in page and "<script>alert" not in page
    # The key went to the router and nowhere else: not the page, logs, live state.
    assert KEY not in page
    [event] = [e for e in logged if e["event"] == "ui_test_sent"]
    assert event["endpoint"] == "my-endpoint" and event["status"] == 200
    assert KEY not in repr(logged)
    assert KEY not in caplog.text
    assert KEY not in json.dumps(api(s.base, "/api/live"))
    # Without a pin, the router's split decides.
    status, page = _post(
        browser,
        s.base + "/endpoints/my-endpoint/test",
        {"csrf": csrf, "key": KEY, "deployment": "", "body": "[1]"},
    )
    assert status == 200 and s.router.received[-1]["pinned"] is None


def test_the_test_form_refuses_requests_without_the_session_token_or_from_elsewhere(
    repo: RepoBuilder, serve: Callable[..., Served]
) -> None:
    blue_green(repo)
    s = serve()
    converged(s)
    browser = _browser()
    csrf = _form(s.base, browser)
    url = s.base + "/endpoints/my-endpoint/test"
    good = {"csrf": csrf, "key": KEY, "deployment": "", "body": "{}"}
    # No token; a wrong one; the right one from another browser (another session).
    assert _post(browser, url, {**good, "csrf": ""})[0] == 403
    assert _post(browser, url, {**good, "csrf": "0" * 64})[0] == 403
    assert _post(_browser(), url, good)[0] == 403
    # A page of another site posting with the person's cookies.
    assert _post(browser, url, good, {"Origin": "http://evil.example"})[0] == 403
    # Bounded body; not JSON; a deployment the endpoint does not have.
    too_big = {**good, "body": "[" + "1," * MAX_FORM_BYTES + "1]"}
    assert _post(browser, url, too_big)[0] == 413
    status, page = _post(browser, url, {**good, "body": "{not json"})
    assert status == 400 and "not JSON" in page
    status, page = _post(browser, url, {**good, "deployment": "<b>nope</b>"})
    assert status == 400 and "&lt;b&gt;nope" in page
    assert s.router.received == []
    assert _post(browser, url, good)[0] == 200
    assert len(s.router.received) == 1


def test_with_a_token_every_page_and_the_form_need_it(
    repo: RepoBuilder, serve: Callable[..., Served]
) -> None:
    blue_green(repo)
    s = serve(token=TOKEN)
    assert get(s.base + "/api/live")[0] == 401
    status, _, _ = get(s.base + "/api/live", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    plain = _browser()
    assert _post(plain, s.base + "/endpoints/my-endpoint/test", {"key": KEY})[0] == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    wait_for(lambda: '"outcome": "ok"' in get(s.base + "/api/live", bearer)[2], what="a pass")
    browser = _browser()
    browser.open(s.base + f"/?token={TOKEN}", timeout=20).read()
    csrf = _form(s.base, browser)
    status, _ = _post(
        browser,
        s.base + "/endpoints/my-endpoint/test",
        {"csrf": csrf, "key": KEY, "deployment": "", "body": "{}"},
    )
    assert status == 200


def test_the_read_only_dashboard_has_no_test_form_nor_live_routes(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    blue_green(repo)
    apply_head(repo, MemoryTarget())
    with serving(repo.root) as base:
        _, _, page = get(base + "/endpoints/my-endpoint")
        assert 'name="csrf"' not in page and "<form" not in page
        assert get(base + "/api/live")[0] == 404
        request = urllib.request.Request(
            base + "/endpoints/my-endpoint/test", data=b"key=x", method="POST"
        )
        try:
            urllib.request.urlopen(request, timeout=20)
            raise AssertionError("a POST was accepted")
        except urllib.error.HTTPError as err:
            assert err.code in (404, 405)  # no such route here


def test_watch_refuses_a_dashboard_beyond_this_machine_without_a_token(
    repo: RepoBuilder,
) -> None:
    blue_green(repo)
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_UI_TOKEN"}
    done = subprocess.run(
        [*CLI, "watch", "--repo", str(repo.root), "--ui-port", "0", "--ui-host", "0.0.0.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert "--ui-host 0.0.0.0 serves beyond this machine" in done.stderr


def test_watch_serves_its_dashboard_with_the_token_of_its_token_file(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    """`watch --ui-host ... --ui-token-file F`: the CLI hands the file's token to the
    dashboard (every other token test builds the daemon in process)."""
    import uuid

    repo.basics()
    repo.write_yaml("reconciler.yaml", {"targets": {f"ui-tok-{uuid.uuid4().hex[:8]}": {}}})
    repo.commit("no endpoint")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_UI_TOKEN"}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    log = tmp_path / "watch.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [
                *CLI,
                "--log-format",
                "json",
                "watch",
                "--repo",
                str(repo.root),
                *("--ui-port", "0", "--ui-host", "127.0.0.1"),
                *("--ui-token-file", str(token_file)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:

        def url() -> str | None:
            for line in log.read_text().splitlines():
                found = re.search(r'"url": "(http://[^"]+)"', line)
                if found and '"ui_serving"' in line:
                    return found.group(1).rstrip("/")
            return None

        base = wait_for(url, timeout=60, what="the dashboard's address in the log")
        refused = get(base + "/api/live")[0]
        status, _, body = get(base + "/api/live", {"Authorization": f"Bearer {TOKEN}"})
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert refused == 401
    assert status == 200 and "phase" in json.loads(body)["daemon"]
    assert TOKEN not in log.read_text()
