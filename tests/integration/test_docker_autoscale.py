"""Autoscaling on the real Docker Engine: a deployment with target_utilization scales up
under a load generator and back down once the load stops, within its bounds, with the
decision and its reason in status. The scale-down window is shortened to a few seconds
here (it is about a minute by default) so that the test stays short."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest

from reconciler.targets.docker.autoscaler import DockerAutoscaler

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

SLOW_SCORE_PY = """\
import time


def init():
    pass


def run(raw_data):
    time.sleep(0.25)  # every request keeps its instance busy for a while
    return {"version": "slow"}
"""


def test_scales_up_under_load_and_down_after_it_stops(docker_world: DockerWorld) -> None:
    world = docker_world
    world.basics()
    world.repo.write("src/score.py", SLOW_SCORE_PY)
    world.repo.endpoint("auto-ep", traffic={"blue": 100})
    world.repo.deployment(
        "auto-ep",
        "blue",
        code="../../src",
        instance_count=1,
        scale_settings={
            "type": "target_utilization",
            "min_instances": 1,
            "max_instances": 3,
            "target_utilization_percentage": 50,
            "polling_interval": 1,
        },
        request_settings={"max_concurrent_requests_per_instance": 1, "max_queue_wait_ms": 2000},
    )
    world.repo.commit("autoscaled blue")
    world.apply()
    assert len(world.containers("auto-ep", "blue")) == 1

    lock = threading.Lock()
    scaler = DockerAutoscaler(world.target, lock, down_after_s=6.0)
    stop = threading.Event()

    def autoscale() -> None:
        while not stop.is_set():
            scaler.tick()
            stop.wait(0.5)

    thread = threading.Thread(target=autoscale, daemon=True)
    thread.start()
    try:
        # Three callers at once keep one instance 300% busy against a 50% target.
        loads = [world.load("auto-ep") for _ in range(3)]
        for load in loads:
            load.__enter__()
        try:
            world.wait_for(
                lambda: len(world.containers("auto-ep", "blue")) == 3,
                what="scale up to max_instances under load",
                timeout=120,
            )
            time.sleep(2)  # the new instances serve
        finally:
            for load in loads:
                load.__exit__(None, None, None)
        assert all(not load.failures for load in loads), [load.failures[:3] for load in loads]
        assert len(world.containers("auto-ep", "blue")) <= 3  # never above max_instances
        try:
            world.wait_for(
                lambda: len(world.containers("auto-ep", "blue")) == 1,
                what="scale down to min_instances once the load stopped",
                timeout=120,
            )
        except AssertionError as failed:
            # What the autoscaler decided and last hit, as of now: the why of a failure.
            reasons = [d.reason for _, d in scaler.decisions]
            samples = next(iter(scaler.samples.values()), [])
            raise AssertionError(
                f"{failed}; decisions {reasons}; {scaler.last_error}; "
                f"last samples {list(samples)[-3:]}"
            ) from None
    finally:
        stop.set()
        thread.join(timeout=30)
    reasons = [d.reason for _, d in scaler.decisions]
    assert any("above target" in r for r in reasons), reasons
    assert any("below target" in r for r in reasons), reasons
    # The pass after the autoscaler leaves the count to it (within bounds) and reports why.
    result = world.apply()
    assert result.plan.steps == ()
    status = result.status["auto-ep"]["deployments"]["blue"]
    assert "below target" in status["autoscale"]
