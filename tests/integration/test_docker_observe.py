"""What a pass of the Docker target asks the engine: its cost must not grow by a listing per
endpoint (issue 15: an idle pass over 50 endpoints within a second).

The engine is the real one; the client only counts the calls it passes on to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_a_pass_lists_containers_once_and_reads_each_state_once(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    for name in ("obs-a", "obs-b"):
        world.repo.endpoint(name)
    world.repo.commit("two endpoints, no deployment")
    world.apply()

    from docker_target_fixtures import counting_target  # loaded as a plugin by now

    target, api = counting_target(world)
    live = target.observe()

    assert sorted(e.name for e in live.endpoints) == ["obs-a", "obs-b"]
    assert all(e.repair is None for e in live.endpoints), [e.repair for e in live.endpoints]
    # One listing for the whole pass, not one more per endpoint to find its state's holder,
    # and each endpoint's state read once.
    assert api.calls["containers"] == 1, api.calls
    assert api.calls["get_archive"] == 2, api.calls
    # What it sees is what a target reading each state on its own sees.
    assert live == world.new_target().observe()


def test_one_endpoint_is_observed_from_its_own_containers_as_a_pass_sees_it(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    for name in ("one-a", "one-b"):
        world.repo.endpoint(name)
    world.repo.commit("two endpoints, no deployment")
    world.apply()

    from docker_target_fixtures import counting_target  # loaded as a plugin by now

    target, api = counting_target(world)
    one = target.observe_endpoint("one-a")

    # Only its own state is read (what `invoke` waits for), and it is what a pass sees.
    assert api.calls["get_archive"] == 1, api.calls
    everything = world.new_target().observe()
    assert one.endpoints == (everything.endpoint("one-a"),)
    assert one.deployments == everything.deployments_of("one-a") == ()
    assert one.endpoints[0].scoring_uri is not None
    assert target.observe_endpoint("one-c").endpoints == ()
