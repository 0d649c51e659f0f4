"""The first hour of a new user on the real Docker Engine, through the command line:
`reconcile status --live` tells a container stopped by hand apart from what the status
files recorded, and images no deployment uses are cleared after a retention (`reconcile gc`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def use_target_in_cli(world: DockerWorld, **options: object) -> list[str]:
    """reconciler.yaml naming the world's target, committed; the CLI's --repo arguments."""
    settings = {
        "type": "docker",
        "state_dir": str(world.options.state_dir),
        "router_port_range": list(world.options.router_port_range),
        "drain_s": world.options.drain_s,
        **options,
    }
    world.repo.write(
        "reconciler.yaml",
        yaml.safe_dump(
            {"targets": {world.options.name: settings}, "default_target": world.options.name}
        ),
    )
    world.repo.commit("target settings")
    return ["--repo", str(world.repo.root)]


def test_status_live_shows_a_container_stopped_by_hand_as_not_healthy(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.basics()
    world.code("src", "1")
    world.repo.endpoint("live-ep", traffic={"blue": 100})
    world.repo.deployment("live-ep", "blue", code="../../src")
    repo = use_target_in_cli(world)
    runner = CliRunner()
    applied = runner.invoke(main, repo)
    assert applied.exit_code == 0, applied.output
    recorded = runner.invoke(main, ["status", *repo])
    assert "live-ep: Succeeded (Healthy)" in recorded.output, recorded.output
    live = runner.invoke(main, ["status", "--live", *repo])
    assert live.exit_code == 0, live.output
    assert live.output.startswith(f"live: target {world.options.name} observed ")
    assert "live-ep: Succeeded (Healthy)" in live.output, live.output
    assert "blue: Succeeded (Healthy) 1/1 ready; model sklearn-regression:1" in live.output

    (instance,) = world.containers("live-ep", "blue")
    instance.stop(timeout=1)

    # The status files say what the last pass saw; --live asks the target now.
    recorded = runner.invoke(main, ["status", *repo])
    assert "live-ep: Succeeded (Healthy)" in recorded.output
    live = runner.invoke(main, ["status", "--live", *repo])
    assert live.exit_code == 0, live.output
    endpoint_line = next(line for line in live.output.splitlines() if line.startswith("live-ep:"))
    assert "(Healthy)" not in endpoint_line and "(Degraded)" in endpoint_line, live.output
    blue = next(line for line in live.output.splitlines() if line.startswith("  blue:"))
    assert "Healthy" not in blue and "0/1 ready" in blue, live.output
    as_yaml = yaml.safe_load(
        runner.invoke(main, ["status", "--live", *repo, "--output", "yaml"]).output
    )
    assert as_yaml["deployments"]["blue"]["health"] == "Degraded"
