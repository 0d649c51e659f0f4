"""The first hour of a new user on the real Docker Engine, through the command line:
`reconcile status --live` tells a container stopped by hand apart from what the status
files recorded, and images no deployment uses are cleared after a retention (`reconcile gc`).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from typing import TYPE_CHECKING

import docker.errors
import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.images.baseimage import BASE_IMAGE

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld, WorldFactory

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
    # What happened to it: it exited (Docker marks a stopped container's health unhealthy,
    # which said "its readiness probe failed").
    assert f"{instance.name}: exited" in live.output, live.output
    assert "readiness probe failed" not in live.output, live.output
    as_yaml = yaml.safe_load(
        runner.invoke(main, ["status", "--live", *repo, "--output", "yaml"]).output
    )
    assert as_yaml["deployments"]["blue"]["health"] == "Degraded"


def _image_of(world: DockerWorld, endpoint: str) -> str:
    (instance,) = world.containers(endpoint, "blue")
    tags = instance.image.tags
    assert len(tags) == 1 and tags[0].startswith("reconciler-app:"), tags
    return str(tags[0])


def _exists(world: DockerWorld, name: str) -> bool:
    try:
        world.client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def test_images_out_of_retention_are_removed_and_gc_spares_other_targets(
    docker_worlds: WorldFactory,
) -> None:
    world = docker_worlds(image_retention=2)
    # Content no earlier run built: thin images are tagged by content and reused.
    token = secrets.token_hex(4)
    foreign_tag = f"reconciler-app:other-target-{token}"
    maker = world.client.containers.create(
        BASE_IMAGE,
        labels={
            "reconciler.managed-by": "ml-endpoint-reconciler",
            "reconciler.target": f"{world.options.name}-other",
            "reconciler.kind": "deployment",
        },
    )
    try:
        maker.commit(repository="reconciler-app", tag=foreign_tag.split(":")[1])
    finally:
        maker.remove(force=True)
    built: list[str] = []
    try:
        world.basics()
        world.repo.endpoint("gc-ep", traffic={"blue": 100})
        world.repo.deployment("gc-ep", "blue", code="../../src")
        for version in range(1, 5):
            world.code("src", f"{token}-{version}")
            world.repo.commit(f"version {version}")
            world.apply()
            built.append(_image_of(world, "gc-ep"))
        assert len(set(built)) == 4
        # After each build the target keeps the 2 newest (the one in use among them).
        assert [_exists(world, tag) for tag in built] == [False, False, True, True]

        repo = use_target_in_cli(world, image_retention=2)
        runner = CliRunner()
        planned = runner.invoke(main, ["gc", "--dry-run", "--keep", "0", *repo])
        assert planned.exit_code == 0, planned.output
        assert f"would remove {built[2]} (gc-ep/blue," in planned.output
        assert f"kept {built[3]} (gc-ep/blue): in use by a container" in planned.output
        assert foreign_tag not in planned.output and BASE_IMAGE not in planned.output
        assert planned.output.splitlines()[-1].startswith("would remove 1 image(s), ")
        assert _exists(world, built[2])  # a dry run removes nothing

        done = runner.invoke(main, ["gc", "--keep", "0", *repo, "--output", "json"])
        assert done.exit_code == 0, done.output
        report = json.loads(done.output)
        assert [r["image"] for r in report["removed"]] == [built[2]]
        assert not _exists(world, built[2])
        assert _exists(world, built[3]) and _exists(world, foreign_tag)
        assert _exists(world, BASE_IMAGE)
        assert world.score("gc-ep").status == 200
    finally:
        world.cleanup()
        for tag in [*built, foreign_tag]:
            with contextlib.suppress(docker.errors.DockerException):
                world.client.images.remove(tag)


MISSING_MODEL_SCORE_PY = """\
import os


def init():
    global model
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.pkl")
    model = open(path, "rb").read()


def run(raw_data):
    return {}
"""


def test_a_failing_init_is_explained_in_apply_output_status_and_previous_logs(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.basics()
    world.repo.write("src/score.py", MISSING_MODEL_SCORE_PY)
    world.repo.endpoint("fail-ep", traffic={"blue": 100})
    world.repo.deployment("fail-ep", "blue", code="../../src")
    repo = use_target_in_cli(world, ready_timeout_s=60)
    runner = CliRunner()
    applied = runner.invoke(main, [*repo, "--timeout", "120"])
    assert applied.exit_code == 1, applied.output
    said = applied.stderr
    assert "the scoring script raised FileNotFoundError: " in said, said
    assert "model.pkl" in said
    assert '(score.py line 7, in init: model = open(path, "rb").read())' in said, said
    assert "`reconcile logs fail-ep blue --instance 0`" in said
    # Said once at the end: by the failed step's line (with the log's tail) when a step of
    # the last pass failed, else as "fail-ep/blue is Failed: ...", never both.
    ending = re.findall(
        r"^(?:step \d+ \(\w+ fail-ep/blue\) failed|fail-ep/blue is Failed): ", said, re.M
    )
    assert len(ending) == 1, said
    shown = runner.invoke(main, ["status", *repo])
    blue = next(line for line in shown.output.splitlines() if line.startswith("  blue:"))
    assert "FileNotFoundError" in blue, shown.output

    # Docker keeps one log per container across restarts: --previous shows what it wrote
    # before its current start. The target stopped the crashing instance (maybe before the
    # engine restarted it, or just as it did): it is started again here, as by hand.
    (instance,) = world.containers("fail-ep", "blue")
    marker = "Loaded logging config"

    def attempts() -> int:
        return bytes(instance.logs()).decode(errors="replace").count(marker)

    instance.stop(timeout=1)
    before = attempts()
    instance.start()
    world.wait_for(lambda: attempts() > before, what="another attempt in the log")
    logs = ["logs", "fail-ep", "blue", "--instance", "0", *repo]
    previous = runner.invoke(main, [*logs, "--previous"])
    assert previous.exit_code == 0, previous.output
    assert previous.output.startswith(f"==> {instance.name} (before its last restart) <==")
    assert "FileNotFoundError" in previous.output
    whole = runner.invoke(main, [*logs, "--lines", "5000"]).output
    # Every attempt but the current one (read after, so it can only have more).
    assert 1 <= previous.output.count(marker) < whole.count(marker), previous.output
