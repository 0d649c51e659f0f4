"""Issue 16 on the real Docker Engine: a traffic change is done when the router serves it
(200 requests sent the moment `apply` returns already follow the new split), and the first
apply on a terminal shows the plan first, then a line per step, and no build output."""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from screen import visible_lines
from terminal import run_on_a_terminal
from test_docker_first_hour import use_target_in_cli

from reconciler.model.plan import Action

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

REQUESTS = 200
# 50/50 over 200 requests: 100 each, standard deviation about 7; 4.5 of them either side.
# A router still on 100/0 gives 0, the 67/33 the issue measured about 67.
LOW, HIGH = 68, 132


def served_digest(world: DockerWorld, endpoint: str) -> str:
    port = world.target.endpoint_credentials(endpoint).port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/config-digest", timeout=5) as answer:
        return str(json.loads(answer.read())["digest"])


def test_requests_sent_as_a_50_50_apply_returns_follow_50_50_from_the_first(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.basics()
    world.code("src", "1")
    world.repo.endpoint("split-ep", traffic={"blue": 100, "green": 0})
    world.repo.deployment("split-ep", "blue", code="../../src")
    world.repo.deployment("split-ep", "green", code="../../src")
    world.repo.commit("blue and green, blue serves")
    world.apply()
    assert {world.score("split-ep").deployment for _ in range(20)} == {"blue"}

    world.repo.endpoint("split-ep", traffic={"blue": 50, "green": 50})
    world.repo.commit("50/50")
    result = world.apply()
    answers = [world.score("split-ep") for _ in range(REQUESTS)]
    assert {a.status for a in answers} == {200}
    first = world.runs[-1][0]
    assert [first.plan.steps[r.index].action for r in first.results] == [Action.SET_TRAFFIC]
    assert not result.in_progress
    green = Counter(a.deployment for a in answers)["green"]
    assert LOW <= green <= HIGH, f"{green} of {REQUESTS} requests went to green"
    # From the first request on: the first quarter is no 100/0 leftover either.
    early = Counter(a.deployment for a in answers[:50])["green"]
    assert 10 <= early <= 40, f"{early} of the first 50 requests went to green"
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
    # three steps, how to call the endpoint (and a warning log line, on a line of its own).
    assert not [line for line in lines if re.match(r"\{|Step \d|⠋|⠙|⠹|⠸|⠼|⠴|⠦|⠧|⠇|⠏", line)]
    assert not [line for line in lines if "[info" in line or re.search(r".\d{4}-\d\d-\d\dT", line)]
    assert len(lines) <= 30, f"{len(lines)} lines:\n{shown}"
