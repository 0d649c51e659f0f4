"""Rollouts end to end on the real Docker Engine: the daemon (in a thread, on the test's own
git checkout) reads the real router's metrics port while steady load goes through the
router. A good new version is promoted from mirror to 100% by commits, with no failed
request; a bad one (it answers differently, fails one request in five, or is much slower)
is rolled back by a commit during the mirror step, while the stable deployment answers
every request. A version whose answers differ only within the policy's `comparison`
tolerance agrees and is promoted; a router too old for that tolerance is replaced before it
is given it. Steps of seconds; the figures of each run are printed (`pytest -s`). People
and faults meeting a rollout (the daemon as a process): test_docker_rollout_faults."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import docker.errors
import docker_state
import pytest
import structlog
import yaml
from docker_rollout_fixtures import EP, marks, new_version, policy, rollout_block, status_of
from structlog.typing import EventDict, WrappedLogger

from reconciler.daemon import Daemon, LocalSource, WatchOptions
from reconciler.images.router import ROUTER_LEVEL

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld, Load

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

STEPS: Final = [{"mirror": 20, "for": "2s"}, {"traffic": 50, "for": "2s"}, 100]

# Bad versions of the stable model (it answers {"version": "1", "echo": <the request>}).
# Those that fail or are slow answer as it does, so that only their own fault shows.
FAILS_ONE_IN_FIVE: Final = """\
import itertools
import json

calls = itertools.count(1)


def init():
    pass


def run(raw_data):
    if next(calls) % 5 == 0:
        raise RuntimeError("one request in five fails")
    return {"version": "1", "echo": json.loads(raw_data)}
"""

# 200 ms a request: the stable model answers through the router in a few ms (tens on a
# busy machine), so this is over 5x its p99 even then.
SLOW: Final = """\
import json
import time


def init():
    pass


def run(raw_data):
    time.sleep(0.2)
    return {"version": "1", "echo": json.loads(raw_data)}
"""


# Answers as the stable model does, its numbers 0.4% off (a float where the stable model
# answers the integer it was sent): within a relative tolerance of 1%, far outside the
# router's default (1e-6).
CLOSE: Final = """\
import json


def init():
    pass


def run(raw_data):
    sent = json.loads(raw_data)
    return {"version": "1", "echo": {k: v * 1.004 for k, v in sent.items()}}
"""


def _stamped(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Each captured log event gets the monotonic time it was logged at (the figures)."""
    event["at"] = time.monotonic()
    return event


@dataclass
class Watched:
    """The daemon watching the test's repository, under load, its log events captured."""

    world: DockerWorld
    load: Load
    logged: list[EventDict]

    def rollout(self) -> dict[str, Any]:
        return rollout_block(self.world.repo.git)

    def state(self) -> object:
        return self.rollout().get("state")

    def marks(self) -> list[tuple[int, bool]]:
        """(step, rollback) of each rollout commit on main, oldest first."""
        return marks(self.world.repo.git)

    def events(self, name: str, **fields: object) -> list[EventDict]:
        return [
            e
            for e in list(self.logged)
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    def new_version(self, score_py: str | None = None) -> None:
        """Deployment green at 0 traffic with a new model (version 2, or `score_py`)."""
        new_version(self.world, score_py)
        self.world.repo.commit("green: a new model")

    def commit_log(self) -> str:
        return self.world.repo.git("log", "--format=%s%n%b", "main")


@contextlib.contextmanager
def watched(
    world: DockerWorld, thresholds: dict[str, object], **extra: object
) -> Iterator[Watched]:
    """Blue (version 1) serving, a rollout policy of three short steps with `thresholds`
    (and `extra` keys) committed and applied, then the daemon watching it under load until
    the block ends."""
    world.serve(EP, version="1")
    world.repo.write_yaml("reconciler.yaml", policy(STEPS, thresholds, **extra))
    world.repo.commit("a rollout policy")
    world.apply()
    daemon = Daemon(
        LocalSource(world.repo.root, worktree=False, build_dir=world.repo.root.parent / "build"),
        world.target,
        WatchOptions(interval_s=60.0, progress_interval_s=0.5),
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    head = world.repo.git("rev-parse", "HEAD")
    # An earlier test may have configured structlog with cached loggers, which
    # capture_logs cannot see through.
    structlog.reset_defaults()
    with structlog.testing.capture_logs(processors=[_stamped]) as logged, world.load(EP) as load:
        watch = Watched(world, load, logged)
        thread.start()
        try:
            world.wait_for(
                lambda: status_of(world.repo.git).get("commit") == head, what="the daemon's pass"
            )
            yield watch
        finally:
            daemon.stop()
            thread.join(timeout=60)


def test_a_good_version_is_promoted_from_mirror_to_100_under_load_with_no_failed_request(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    with watched(world, {"error_rate": 0.01, "min_requests": 5}) as watch:
        began = time.monotonic()
        watch.new_version()
        world.wait_for(
            lambda: watch.state() in ("Succeeded", "Failed"), what="the rollout's end", timeout=300
        )
        world.wait_for(
            lambda: world.score(EP).version == "2", what="version 2 answering", timeout=30
        )
    load = watch.load
    assert watch.state() == "Succeeded", watch.rollout()
    assert load.failures == []
    assert len(load.answers) > 100
    assert watch.marks() == [(1, False), (2, False), (3, False)]
    promoted = world.repo.git("log", "--grep", "step 2/3", "--format=%B", "main")
    assert "Step 1/3 (mirror 20% for 2s) passed" in promoted
    assert "green (mirror):" in promoted and "0 errors" in promoted
    doc = yaml.safe_load((world.repo.root / f"endpoints/{EP}/endpoint.yml").read_text())
    assert doc["traffic"] == {"blue": 0, "green": 100}
    assert world.repo.git("status", "--porcelain") == ""
    commits = [e["at"] for e in watch.events("rollout_committed", endpoint=EP)]
    [ended] = [e["at"] for e in watch.events("rollout_ended", endpoint=EP)]
    steps = [f"{b - a:.1f} s" for a, b in zip(commits, [*commits[1:], ended], strict=True)]
    print(
        f"\npromotion: new version committed -> step 1 commit {commits[0] - began:.1f} s; "
        f"time per step {', '.join(steps)}; rollout {ended - began:.1f} s; "
        f"requests served {len(load.answers)}, failed {len(load.failures)}"
    )
    print(watch.commit_log())


@pytest.mark.parametrize(
    ("score_py", "failed_check"),
    [
        pytest.param(None, "shadow_agreement", id="answers-differently"),
        pytest.param(FAILS_ONE_IN_FIVE, "error_rate", id="fails-one-request-in-five"),
        pytest.param(SLOW, "p99_ratio", id="over-five-times-slower"),
    ],
)
def test_a_bad_version_is_rolled_back_by_a_commit_during_the_mirror_step_and_stable_serves(
    docker_world: DockerWorld, score_py: str | None, failed_check: str
) -> None:
    world = docker_world
    # Loose agreement: a version failing one request in five still agrees on 80% of the
    # compared answers (its errors count against agreement), so only error_rate fails it.
    thresholds = {"error_rate": 0.05, "p99_ratio": 3, "shadow_agreement": 0.7, "min_requests": 5}
    with watched(world, thresholds) as watch:
        watch.new_version(score_py)
        world.wait_for(lambda: (1, True) in watch.marks(), what="the rollback commit", timeout=120)
        observer = world.new_target()  # the daemon's own target is the daemon thread's

        def stable_only() -> bool:
            live = observer.observe().endpoint(EP)
            assert live is not None
            traffic, mirror = dict(live.spec.traffic), dict(live.spec.mirror_traffic)
            return traffic.get("blue") == 100 and not any(mirror.values())

        world.wait_for(stable_only, what="traffic back on blue, mirror off", timeout=60)
        back_on_stable = time.monotonic()
        world.wait_for(lambda: watch.state() == "Failed", what="the rollout's end")
        served = len(watch.load.answers)
        world.wait_for(
            lambda: len(watch.load.answers) > served + 20, what="blue serving after the rollback"
        )
    load = watch.load
    rollout = watch.rollout()
    assert rollout.get("state") == "Failed", rollout
    failed = {c["threshold"] for c in rollout["analysis"]["checks"] if c["state"] == "failed"}
    assert failed_check in failed, rollout["analysis"]
    # Rolled back at the mirror step, before any live traffic reached green.
    assert watch.marks() == [(1, False), (1, True)]
    assert "Reconcile-Rollout: rollout-ep rollback at step 1/3" in watch.commit_log()
    doc = yaml.safe_load((world.repo.root / f"endpoints/{EP}/endpoint.yml").read_text())
    assert {k: v for k, v in doc["traffic"].items() if v} == {"blue": 100}
    assert not any((doc.get("mirror_traffic") or {}).values())
    assert load.failures == []
    assert {a.deployment for a in load.answers} == {"blue"}
    [failing, *_] = watch.events("rollout_judged", endpoint=EP, outcome="fail")
    [rollback] = watch.events("rollout_committed", endpoint=EP, action="rollback")
    print(
        f"\nrollback ({failed_check}): failing judgement -> rollback commit "
        f"{rollback['at'] - failing['at']:.2f} s, -> traffic back on stable "
        f"{back_on_stable - failing['at']:.2f} s; requests served {len(load.answers)}, "
        f"failed {len(load.failures)}"
    )
    print(watch.commit_log())


def test_answers_differing_within_the_policys_comparison_tolerance_agree_and_are_promoted(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    thresholds = {"error_rate": 0.01, "shadow_agreement": 0.9, "min_requests": 5}
    with watched(world, thresholds, comparison={"rtol": 0.01}) as watch:
        config = docker_state.router_config(world.client, world.options.name, EP)
        assert config["shadow_comparison"] == {
            "rtol": 0.01,
            "atol": 1e-9,
            "max_body_bytes": 1024 * 1024,
        }
        watch.new_version(CLOSE)
        world.wait_for(
            lambda: watch.state() in ("Succeeded", "Failed"), what="the rollout's end", timeout=300
        )
    assert watch.state() == "Succeeded", watch.rollout()
    assert watch.marks() == [(1, False), (2, False), (3, False)]
    promoted = world.repo.git("log", "--grep", "step 2/3", "--format=%B", "main")
    [shadow] = [line for line in promoted.splitlines() if line.strip().startswith("shadow:")]
    assert " 0 disagree (100.00% agree)" in shadow, promoted
    assert "shadow_agreement: 100.00% >= 90.00%" in promoted
    assert watch.load.failures == []
    print(f"\nwithin tolerance: {shadow.strip()}; requests served {len(watch.load.answers)}")


def test_a_router_too_old_for_the_policys_tolerances_is_replaced_before_it_gets_them(
    docker_world: DockerWorld,
) -> None:
    """Upgrading: a router image of level 2 (from before the tolerances) would refuse a
    config with them. The endpoint's update replaces it first (keys and port kept), then
    the new router serves with the tolerances; nothing is left to do."""
    world = docker_world
    current = world.target._router_image_tag(lambda message: None)
    old_image, _ = world.client.images.build(
        fileobj=io.BytesIO(f"FROM {current}\nLABEL reconciler.router-level=2\n".encode()),
        labels={"reconciler.target": world.options.name},
        rm=True,
    )
    try:
        world.target._router_image = str(old_image.id)  # what an earlier version started
        world.serve(EP, version="1")
        keys = (world.key(EP), world.key(EP, "secondary"))
        port = world.scoring_uri(EP)
        world.repo.write_yaml("reconciler.yaml", policy(STEPS, {}, comparison={"atol": 0.5}))
        world.repo.commit("compare within 0.5")
        world.target = world.new_target()  # the upgraded reconciler
        (step,) = world.plan().steps
        assert (step.action, [c.path for c in step.changes]) == (
            "update_endpoint",
            ["shadow_comparison"],
        )
        world.apply()
        (router,) = world.client.containers.list(
            filters={"label": [f"reconciler.target={world.options.name}", "reconciler.role=router"]}
        )
        assert router.labels["reconciler.router-level"] == str(ROUTER_LEVEL)
        assert router.image.id != old_image.id
        config = docker_state.router_config(world.client, world.options.name, EP)
        assert config["shadow_comparison"]["atol"] == 0.5
        assert (world.key(EP), world.key(EP, "secondary")) == keys
        assert world.scoring_uri(EP) == port
        assert world.score(EP).version == "1"
        assert world.plan().steps == ()
    finally:
        world.cleanup()
        with contextlib.suppress(docker.errors.APIError):
            world.client.images.remove(old_image.id, force=True)
