"""Issue 16 on the real Docker Engine: a traffic change is done when the router serves it
(1,000 requests sent the moment `apply` returns already follow the new split), and the first
apply on a terminal shows the plan first, then a line per step, and no build output."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from screen import visible_lines
from terminal import run_on_a_terminal
from test_docker_first_hour import use_target_in_cli

from reconciler.model.plan import Action

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

REQUESTS = 1000
CLIENTS = 4  # each on a keep-alive connection of its own: 1,000 requests in a few seconds
# 50/50 over 1,000 requests: 500 each, standard deviation about 16; 4.5 of them either side
# (a false alarm about once in 150,000 runs). A router still on 100/0 gives 0, the 67/33
# the issue measured about 670.
LOW, HIGH = 429, 571
# Every 100 answers, in the order they came: 50, deviation 5; 4.5 of them either side. A
# router still on the old split (100/0) for the first 50 answers brings the first window to
# about 25, below the bound; a shorter lag is the digest check's to catch.
WINDOW, WINDOW_LOW, WINDOW_HIGH = 100, 27, 73


def answered_by(url: str, key: str, count: int) -> list[str]:
    """The deployment that answered each of `count` requests from CLIENTS clients, in the
    order the answers came (a status other than 200 fails the test)."""
    port = urlsplit(url).port
    answers: list[str] = []
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def client(requests: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(requests):
                connection.request("POST", "/score", body=b'{"x": 1}', headers=headers)
                response = connection.getresponse()
                response.read()
                assert response.status == 200, response.status
                with lock:
                    answers.append(str(response.getheader("azureml-model-deployment")))
        finally:
            connection.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        for done in [pool.submit(client, count // CLIENTS) for _ in range(CLIENTS)]:
            done.result()
    return answers


def served_digest(world: DockerWorld, endpoint: str) -> str:
    port = world.target.endpoint_credentials(endpoint).port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/config-digest", timeout=5) as answer:
        return str(json.loads(answer.read())["digest"])


def test_1000_requests_sent_as_a_50_50_apply_returns_follow_50_50_from_the_first(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.basics()
    world.code("src", "1")
    world.repo.endpoint("split-ep", traffic={"blue": 100, "green": 0})
    # Each instance takes the requests of two clients at once (no queueing at the router).
    limits = {"max_concurrent_requests_per_instance": 2, "max_queue_wait_ms": 5000}
    world.repo.deployment("split-ep", "blue", code="../../src", request_settings=limits)
    world.repo.deployment("split-ep", "green", code="../../src", request_settings=limits)
    world.repo.commit("blue and green, blue serves")
    world.apply()
    assert {world.score("split-ep").deployment for _ in range(20)} == {"blue"}

    world.repo.endpoint("split-ep", traffic={"blue": 50, "green": 50})
    world.repo.commit("50/50")
    result = world.apply()
    started = time.monotonic()
    answers = answered_by(world.scoring_uri("split-ep"), world.key("split-ep"), REQUESTS)
    seconds = time.monotonic() - started
    first = world.runs[-1][0]
    assert [first.plan.steps[r.index].action for r in first.results] == [Action.SET_TRAFFIC]
    assert not result.in_progress
    assert len(answers) == REQUESTS and set(answers) == {"blue", "green"}
    green = answers.count("green")
    assert LOW <= green <= HIGH, f"{green} of {REQUESTS} requests went to green"
    # From the first answer on: no window of them follows another split.
    windows = [answers[i : i + WINDOW].count("green") for i in range(0, REQUESTS, WINDOW)]
    assert all(WINDOW_LOW <= n <= WINDOW_HIGH for n in windows), (windows, f"{seconds:.1f} s")
    # What the step waited for: the router names the digest of the config it was given.
    config = world.target._read_router_config("split-ep")
    assert config is not None and served_digest(world, "split-ep") == config.digest()


def test_the_first_apply_on_a_terminal_is_the_plan_then_a_line_per_step(
    docker_world: DockerWorld, tmp_path: Path
) -> None:
    world = docker_world
    world.basics()
    world.code("src", "terminal-1")
    world.repo.endpoint("term-ep", traffic={"blue": 100})
    world.repo.deployment("term-ep", "blue", code="../../src")
    repo = use_target_in_cli(world)
    run = run_on_a_terminal(repo, env={"XDG_STATE_HOME": str(tmp_path / "xdg")}, timeout_s=600)
    lines = visible_lines(run.raw)
    shown = "\n".join(lines)
    assert run.exit_code == 0, shown
    summary = next(i for i, line in enumerate(lines) if line.startswith("Plan: "))
    done = [i for i, line in enumerate(lines) if line.startswith("✓ ")]
    assert done and summary < done[0], shown
    assert [lines[i].split("  ")[0] for i in done] == [
        "✓ create_endpoint term-ep",
        "✓ create_deployment term-ep/blue",
        "✓ set_traffic term-ep",
    ], shown
    assert all(re.search(r"  \d+(\.\d)? s$|  \d+m \d\ds$", lines[i]) for i in done), shown
    # No build output, no JSON and no info log line, no live line left behind: the plan,
    # three steps, how to call the endpoint.
    assert not [line for line in lines if re.match(r"\{|Step \d|⠋|⠙|⠹|⠸|⠼|⠴|⠦|⠧|⠇|⠏", line)]
    assert not [line for line in lines if "[info" in line or re.search(r"\d{4}-\d\d-\d\dT", line)]
    assert len(lines) <= 30, f"{len(lines)} lines:\n{shown}"
