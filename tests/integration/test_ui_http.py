"""The dashboard over real sockets, against a real git repository with a status branch
written by real passes (the in-memory target): pages, JSON API, server-sent events,
escaping of repository values, security headers and the token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from repo_builder import RepoBuilder
from status_fixtures import apply_head
from ui_fixtures import (  # noqa: F401  (fixture: served_repo)
    CLI,
    TOKEN,
    XSS,
    Served,
    get,
    record_rollout,
    served_repo_fixture,
    serving,
)

from reconciler.gitsource import DEFAULT_STATUS_BRANCH
from reconciler.ui.server import CSP, TOKEN_COOKIE


def test_overview_shows_every_endpoint_with_traffic_bars_and_state(served_repo: Served) -> None:
    with serving(served_repo.repo.root) as base:
        status, headers, body = get(base + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert 'data-endpoint="my-endpoint"' in body
    assert 'data-endpoint="other-endpoint"' in body
    # Bars are width classes (no inline style: the CSP forbids it), legends say the numbers.
    assert 'class="seg w50 c0" title="blue 50%"' in body
    assert 'class="seg w50 c1" title="green 50%"' in body
    assert "style=" not in body
    assert "<b>50%</b>" in body
    assert "3/3 ready" in body  # blue 1 + green 2
    assert '<span class="state">Succeeded</span>' in body
    assert served_repo.second[:12] in body  # applied revision, and it is the branch head
    assert "the branch head" in body


def test_api_endpoints_shape(served_repo: Served) -> None:
    with serving(served_repo.repo.root) as base:
        status, headers, body = get(base + "/api/endpoints")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    data = json.loads(body)
    assert data["status_branch"] == DEFAULT_STATUS_BRANCH
    assert data["branch_head"] == served_repo.second
    assert [e["name"] for e in data["endpoints"]] == ["my-endpoint", "other-endpoint"]
    mine = data["endpoints"][0]
    assert mine["state"] == "Succeeded"
    assert mine["traffic"] == [
        {"deployment": "blue", "percent": 50},
        {"deployment": "green", "percent": 50},
    ]
    assert mine["mirror_traffic"] == []
    assert mine["instances"] == {"ready": 3, "desired": 3}
    assert mine["applied_commit"] == served_repo.second
    assert mine["up_to_date"] is True
    assert mine["last_pass"]["outcome"] == "converged"
    assert isinstance(mine["last_pass"]["changed_at"], int)
    assert mine["errors"] == []
    assert {d["name"] for d in mine["deployments"]} == {"blue", "green"}


def test_api_endpoint_detail_joins_the_desired_state_at_the_applied_commit(
    served_repo: Served,
) -> None:
    with serving(served_repo.repo.root) as base:
        status, _, body = get(base + "/api/endpoints/my-endpoint")
        missing, _, missing_body = get(base + "/api/endpoints/nope")
    assert status == 200
    detail = json.loads(body)
    assert detail["description"] == XSS  # JSON carries the value as it is; pages escape it
    assert detail["tags"] == {"team": XSS}
    green = next(d for d in detail["deployments"] if d["name"] == "green")
    assert green["spec"]["model"] == "sklearn-regression:2"
    assert green["spec"]["environment"] == "sklearn-env:1"
    assert green["spec"]["instance_type"] == "Standard_DS3_v2"
    assert green["spec"]["instance_count"] == 2
    assert green["spec"]["request_settings"]["request_timeout_ms"] == 5000
    assert green["spec"]["readiness_probe"]["failure_threshold"] == 30
    assert missing == 404
    assert "nope" in json.loads(missing_body)["error"]


def test_the_rollout_in_progress_is_on_the_endpoint_page_and_in_its_api(
    served_repo: Served,
) -> None:
    """A status file with a `rollout:` block (the daemon's rollouter writes one): step N/M,
    canary after stable, the verdict's figures and reason, escaped on the page."""
    record_rollout(served_repo.repo, f"waiting {XSS}")
    with serving(served_repo.repo.root) as base:
        status, _, body = get(base + "/api/endpoints/my-endpoint")
        _, _, page = get(base + "/endpoints/my-endpoint")
        _, _, other = get(base + "/endpoints/other-endpoint")
        _, _, other_body = get(base + "/api/endpoints/other-endpoint")
    assert status == 200
    rollout = json.loads(body)["rollout"]
    assert (rollout["state"], rollout["step"], rollout["steps"]) == ("Progressing", 2, 4)
    assert (rollout["canary"], rollout["stable"]) == ("green", "blue")
    assert rollout["reason"] == f"waiting {XSS}"
    assert rollout["analysis"]["deployments"] == [
        {
            "role": "canary",
            "deployment": "green",
            "kind": "live",
            "requests": 37,
            "errors": 1,
            "p99_ms": 18.25,
        },
        {
            "role": "stable",
            "deployment": "blue",
            "kind": "live",
            "requests": 40,
            "errors": 0,
            "p99_ms": None,
        },
    ]
    assert json.loads(other_body)["rollout"] is None
    section = page[page.index('<section class="rollout"') :]
    section = section[: section.index("</section>")]
    assert 'data-state="Progressing"' in section
    assert "step 2/4 (traffic 50%)" in section
    assert "<b>green</b> after <b>blue</b>" in section
    assert "canary green (live)</th><td>37 requests, 1 errors, p99 18.25 ms" in section
    assert "stable blue (live)</th><td>40 requests, 0 errors, p99 n/a" in section
    assert "wait: too few requests (after 42 s)" in section
    assert "<code>error_rate</code> 2.7% &lt;= 5% (ok)" in section
    assert "&lt;script&gt;alert(&quot;x&quot;)" in section and "<script>alert" not in page
    assert '<section class="rollout"' not in other


def test_history_says_which_commit_moved_what_traffic_and_who_made_it(
    served_repo: Served,
) -> None:
    with serving(served_repo.repo.root) as base:
        status, _, body = get(base + "/api/endpoints/my-endpoint/history")
    assert status == 200
    entries = json.loads(body)["entries"]
    assert len(entries) == 2
    newest, oldest = entries
    assert newest["applied_commit"] == served_repo.second
    assert newest["author"] == "Test"
    assert newest["subject"] == f"move traffic {XSS}"
    assert {"field": "traffic.blue", "from": 90, "to": 50} in newest["changes"]
    assert {"field": "traffic.green", "from": 10, "to": 50} in newest["changes"]
    assert oldest["applied_commit"] == served_repo.first
    assert oldest["traffic"] == [
        {"deployment": "blue", "percent": 90},
        {"deployment": "green", "percent": 10},
    ]


def test_repository_values_come_out_escaped_on_the_pages(served_repo: Served) -> None:
    with serving(served_repo.repo.root) as base:
        _, _, page = get(base + "/endpoints/my-endpoint")
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    assert f'<p class="description">{escaped}</p>' in page  # the description
    assert f"team={escaped}" in page  # a tag
    assert f"move traffic {escaped}" in page  # the commit message, in the timeline
    # The only script is the shipped file.
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/live.js" defer>']


def test_every_response_carries_the_security_headers(served_repo: Served) -> None:
    with serving(served_repo.repo.root) as base:
        for path in ("/", "/endpoints/my-endpoint", "/api/endpoints", "/static/live.js", "/x"):
            _, headers, _ = get(base + path)
            assert headers["Content-Security-Policy"] == CSP, path
            assert headers["X-Content-Type-Options"] == "nosniff", path
            assert headers["X-Frame-Options"] == "DENY", path
    assert "default-src 'self'" in CSP
    assert "'unsafe-inline'" not in CSP


def test_static_assets_are_served_from_the_package(served_repo: Served) -> None:
    with serving(served_repo.repo.root) as base:
        status, headers, script = get(base + "/static/live.js")
        _, css_headers, css = get(base + "/static/style.css")
        other, _, _ = get(base + "/static/..%2Fserver.py")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert "EventSource" in script
    assert css_headers["Content-Type"].startswith("text/css")
    assert ".w100 { width: 100%; }" in css
    assert other == 404


def test_the_token_is_required_when_one_is_set(served_repo: Served) -> None:
    with serving(served_repo.repo.root, token=TOKEN) as base:
        refused, _, refused_body = get(base + "/api/endpoints")
        wrong, _, _ = get(base + "/api/endpoints", {"Authorization": "Bearer nope"})
        bearer, _, body = get(base + "/api/endpoints", {"Authorization": f"Bearer {TOKEN}"})
        # ?token= sets an HttpOnly cookie and sends the browser on without the token.
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(f"{base}/?token={TOKEN}", timeout=20) as response:
            assert response.status == 200
            assert response.url == base + "/"
            page = response.read().decode()
        with opener.open(f"{base}/api/endpoints", timeout=20) as response:
            assert response.status == 200
        bad_query, _, _ = get(f"{base}/?token=nope")
    assert refused == 401
    assert TOKEN not in refused_body
    assert wrong == 401
    assert bad_query == 401
    assert bearer == 200
    assert TOKEN not in body
    assert TOKEN not in page
    assert 'data-endpoint="my-endpoint"' in page
    assert TOKEN_COOKIE == "reconciler_ui_token"


def test_no_secret_reaches_a_page_or_the_api(served_repo: Served) -> None:
    """Status files hold no key; of the desired state, environment variables (which may
    hold a secret, or a reference to one) are left out of the pages and the API."""
    repo = served_repo.repo
    repo.deployment(
        "other-endpoint",
        "main",
        environment_variables={
            "API_KEY": "hunter2-not-shown",
            "DB_PASSWORD": "${{azureml://connections/db/credentials/password}}",
        },
    )
    repo.commit("environment variables")
    apply_head(repo, served_repo.target)
    with serving(repo.root) as base:
        bodies = [
            get(base + path)[2]
            for path in (
                "/",
                "/endpoints/other-endpoint",
                "/api/endpoints",
                "/api/endpoints/other-endpoint",
                "/api/endpoints/other-endpoint/history",
            )
        ]
    assert json.loads(bodies[3])["deployments"][0]["spec"]["model"] == "sklearn-regression:1"
    for body in bodies:
        assert "hunter2" not in body
        assert "API_KEY" not in body
        assert "connections/db" not in body
        assert "primary_key" not in body


def test_server_sent_events_announce_a_new_status_commit(served_repo: Served) -> None:
    repo = served_repo.repo
    with (
        serving(repo.root, poll_s=0.1) as base,
        urllib.request.urlopen(base + "/api/events", timeout=20) as stream,
    ):
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        seen = [_next_event(stream)["fingerprint"]]
        repo.endpoint("my-endpoint", traffic={"blue": 20, "green": 80}, description=XSS)
        repo.commit("most to green")  # HEAD moves: an event (applied is now behind)
        apply_head(repo, served_repo.target)  # the status commit: an event
        shown: list[dict[str, object]] = []
        while shown != [
            {"deployment": "blue", "percent": 20},
            {"deployment": "green", "percent": 80},
        ]:
            seen.append(_next_event(stream)["fingerprint"])
            assert len(seen) <= 3, "no event for the status commit"
            _, _, body = get(base + "/api/endpoints")
            shown = json.loads(body)["endpoints"][0]["traffic"]
    assert len(set(seen)) == len(seen)  # each event announces a change


def test_a_page_read_at_the_moment_of_a_change_leaves_the_event_to_every_listener(
    served_repo: Served,
) -> None:
    """A page drawn between a change and the poller's next look used to record the new
    fingerprint as seen, so no listener ever heard of the change (a browser kept showing
    the old traffic: the flaky browser test of CI)."""
    repo = served_repo.repo
    with (
        serving(repo.root, poll_s=1.5) as base,
        urllib.request.urlopen(base + "/api/events", timeout=20) as stream,
    ):
        first = _next_event(stream)["fingerprint"]
        repo.endpoint("my-endpoint", traffic={"blue": 30, "green": 70})
        repo.commit("most to green")
        apply_head(repo, served_repo.target)
        # Another browser draws the page at once, before the poller looks again.
        status, _, page = get(base + "/")
        assert status == 200
        drawn = re.search(r'data-fingerprint="([0-9a-f]+)"', page)
        assert drawn is not None and drawn.group(1) != first
        # The listener still hears of the change, with the fingerprint the page was drawn at.
        assert _next_event(stream, within_s=10)["fingerprint"] == drawn.group(1)


def _next_event(stream: object, within_s: float = 60.0) -> dict[str, str]:
    # Keep-alive comments come every 15 s while nothing changes: the deadline is checked
    # at each, so a missing event fails the test instead of hanging it.
    deadline = time.monotonic() + within_s
    lines: list[str] = []
    while True:
        assert time.monotonic() < deadline, "no event in time"
        raw = stream.readline()  # type: ignore[attr-defined]
        line = raw.decode().rstrip("\n")
        if line == "" and lines:
            break
        if line and not line.startswith(":"):
            lines.append(line)
    assert lines[0] == "event: status"
    return dict(json.loads(lines[1].removeprefix("data: ")))


def test_cli_refuses_ui_host_without_a_token(served_repo: Served) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_UI_TOKEN"}
    done = subprocess.run(
        [*CLI, "ui", "--repo", str(served_repo.repo.root), "--ui-host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert "token" in done.stderr


@pytest.mark.parametrize("given_by", ["file", "environment"])
def test_cli_serves_with_a_token_on_the_given_host(
    served_repo: Served, tmp_path: Path, given_by: str
) -> None:
    """The token of --ui-host comes from --token-file or RECONCILER_UI_TOKEN (issue 14:
    "a token (file or environment variable) is required")."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_UI_TOKEN"}
    given = ["--token-file", str(token_file)]
    if given_by == "environment":
        env["RECONCILER_UI_TOKEN"] = TOKEN
        given = []
    process = subprocess.Popen(
        [
            *CLI,
            "ui",
            "--repo",
            str(served_repo.repo.root),
            "--ui-host",
            "127.0.0.1",
            "--port",
            "0",
            *given,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = re.search(r"at (http://\S+)", line)
        assert url, line
        base = url.group(1).rstrip("/")
        refused, _, _ = get(base + "/api/endpoints")
        status, _, body = get(base + "/api/endpoints", {"Authorization": f"Bearer {TOKEN}"})
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert refused == 401
    assert status == 200
    assert [e["name"] for e in json.loads(body)["endpoints"]] == ["my-endpoint", "other-endpoint"]


def test_a_repository_without_status_shows_an_empty_overview(repo: RepoBuilder) -> None:
    repo.basics()
    repo.commit("nothing applied yet")
    with serving(repo.root) as base:
        status, _, page = get(base + "/")
        _, _, api = get(base + "/api/endpoints")
        missing, _, _ = get(base + "/endpoints/my-endpoint")
    assert status == 200
    assert "No status on branch reconcile-status yet" in page
    assert json.loads(api)["endpoints"] == []
    assert json.loads(api)["status_commit"] is None
    assert missing == 404
