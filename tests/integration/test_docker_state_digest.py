"""An idle pass of the Docker target reads no endpoint's state through Docker's archive API
when the endpoint's router vouches for the files it knows (`/-/state-digest`), and still
sees at once any change made by anyone: a file spoiled by hand, a config changed through
the router's admin call, another reconciler's writes.

Archive reads are counted as the engine records them: an `archive-path` event of the
container read, kept by Docker for every GET of /containers/ID/archive.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import docker_state
import pytest

from reconciler.targets.docker.state import CREDENTIALS, DEPLOYMENTS, write_files

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def archive_reads(world: DockerWorld, action: Callable[[], Any]) -> int:
    """How many archive reads of the world's containers the engine saw during `action`."""
    since = time.time()
    action()
    time.sleep(0.2)  # an event is written after its answer
    events = world.client.events(
        since=since - 0.01,
        until=time.time(),
        decode=True,
        filters={
            "type": "container",
            "event": "archive-path",
            "label": f"reconciler.target={world.options.name}",
        },
    )
    return len(list(events))


def two_endpoints(world: DockerWorld) -> None:
    for name in ("sd-one", "sd-two"):
        world.repo.endpoint(name)
    world.repo.commit("two endpoints")
    world.apply()


def test_an_idle_pass_reads_no_state_archive_and_a_new_reconciler_reads_each_once(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    two_endpoints(world)
    world.target.observe()
    assert archive_reads(world, lambda: [world.target.observe() for _ in range(3)]) == 0
    # A reconciler started afresh knows nothing yet: one read per endpoint, then none.
    fresh = world.new_target()
    assert archive_reads(world, fresh.observe) == 2
    assert archive_reads(world, fresh.observe) == 0
    assert all(e.repair is None for e in fresh.observe().endpoints)


def test_state_spoiled_by_hand_is_seen_by_the_next_pass_of_a_running_reconciler(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    two_endpoints(world)
    world.target.observe()
    holder = docker_state.holder(world.client, world.options.name, "sd-one")
    whole = docker_state.state_files(world.client, world.options.name, "sd-one")[CREDENTIALS]
    write_files(holder, {CREDENTIALS: whole[: len(whole) // 2]})
    live = {e.name: e for e in world.target.observe().endpoints}
    assert live["sd-one"].repair is not None
    assert "its keys are unreadable" in live["sd-one"].repair
    assert live["sd-two"].repair is None
    world.apply()  # the repair: new keys
    assert all(e.repair is None for e in world.target.observe().endpoints)
    assert archive_reads(world, world.target.observe) == 0
    # A record of deployments written by someone else (another reconciler): seen as is.
    write_files(holder, {DEPLOYMENTS: b'{"ghost": {"count": 1}}'})
    assert archive_reads(world, world.target.observe) == 1
    assert json.loads(world.target._state("sd-one")[DEPLOYMENTS]) == {"ghost": {"count": 1}}


def test_a_config_changed_through_the_routers_admin_call_is_seen_by_the_next_pass(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    two_endpoints(world)
    (before,) = [e for e in world.target.observe().endpoints if e.name == "sd-two"]
    assert before.spec.auth_mode == "key"
    creds = world.target.endpoint_credentials("sd-two")
    config = docker_state.router_config(world.client, world.options.name, "sd-two")
    config.update(auth_mode="aml_token", token_secret=creds.token_secret)
    request = urllib.request.Request(
        f"http://127.0.0.1:{creds.port}/-/config",
        data=json.dumps(config).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {creds.admin_secret}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    except urllib.error.HTTPError as exc:
        raise AssertionError(exc.read()) from None
    (after,) = [e for e in world.target.observe().endpoints if e.name == "sd-two"]
    assert after.spec.auth_mode == "aml_token"
    # Drift: the next apply puts back what the repository says.
    world.apply()
    (back,) = [e for e in world.target.observe().endpoints if e.name == "sd-two"]
    assert back.spec.auth_mode == "key"
