"""A rollout end to end on the real Docker Engine: the daemon (in a thread, on the test's
own git checkout) reads the real router's metrics port while steady load goes through the
router, and promotes a good new version from mirror to 100% by commits, with no failed
request. Steps of seconds."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest
import yaml

from reconciler.daemon import Daemon, LocalSource, WatchOptions
from reconciler.gitsource import DEFAULT_STATUS_BRANCH
from reconciler.rollouts.machine import read_mark

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

EP = "rollout-ep"


def test_a_good_version_is_promoted_from_mirror_to_100_under_load_with_no_failed_request(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve(EP, version="1")
    world.repo.write(
        "reconciler.yaml",
        yaml.safe_dump(
            {
                "rollouts": {
                    "default": {
                        "steps": [{"mirror": 20, "for": "2s"}, {"traffic": 50, "for": "2s"}, 100],
                        "interval": "1s",
                        "thresholds": {"error_rate": 0.01, "min_requests": 5},
                    }
                }
            }
        ),
    )
    world.repo.commit("a rollout policy")
    world.apply()
    daemon = Daemon(
        LocalSource(world.repo.root, worktree=False, build_dir=world.repo.root.parent / "build"),
        world.target,
        WatchOptions(interval_s=60.0, progress_interval_s=0.5),
    )
    thread = threading.Thread(target=daemon.run, daemon=True)

    def status() -> dict[str, object]:
        try:
            text = world.repo.git("show", f"{DEFAULT_STATUS_BRANCH}:status/{EP}.yaml")
        except Exception:
            return {}
        doc = yaml.safe_load(text)
        return doc if isinstance(doc, dict) else {}

    def state() -> object:
        block = status().get("rollout")
        return block.get("state") if isinstance(block, dict) else None

    policy = world.repo.git("rev-parse", "HEAD")
    with world.load(EP) as load:
        thread.start()
        try:
            world.wait_for(lambda: status().get("commit") == policy, what="the daemon's pass")
            world.code("src2", "2")
            world.repo.deployment(EP, "green", code="../../src2")
            world.repo.commit("green: version 2")
            world.wait_for(
                lambda: state() in ("Succeeded", "Failed"), what="the rollout's end", timeout=300
            )
            world.wait_for(
                lambda: world.score(EP).version == "2", what="version 2 answering", timeout=30
            )
        finally:
            daemon.stop()
            thread.join(timeout=60)
    assert state() == "Succeeded", status().get("rollout")
    assert load.failures == []
    assert len(load.answers) > 100
    log = world.repo.git("log", "--format=%H%x1f%B%x1e", "main")
    marks = [read_mark(entry) for entry in log.split("\x1e") if "Reconcile-Rollout:" in entry]
    assert [(m.step, m.rollback) for m in reversed(marks) if m] == [
        (1, False),
        (2, False),
        (3, False),
    ]
    promoted = world.repo.git("log", "--grep", "step 2/3", "--format=%B", "main")
    assert "Step 1/3 (mirror 20% for 2s) passed" in promoted
    assert "green (mirror):" in promoted and "0 errors" in promoted
    doc = yaml.safe_load((world.repo.root / f"endpoints/{EP}/endpoint.yml").read_text())
    assert doc["traffic"] == {"blue": 0, "green": 100}
    assert world.repo.git("status", "--porcelain") == ""
