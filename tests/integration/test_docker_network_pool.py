"""The Docker target's networks on the real engine take small subnets of its network_pool
(targets/docker/subnets.py): a subnet taken by anyone is passed over, two targets on one
host get distinct ones, and a network made before (another pool) is kept as it is.

Endpoints without deployments: networks, router and state are all these tests need.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from typing import TYPE_CHECKING, Any

import docker
import docker.types
import pytest

from reconciler.targets.docker.subnets import create_network
from reconciler.targets.docker.target import DockerTarget

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld, WorldFactory

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def own_pool() -> ipaddress.IPv4Network:
    """A /20 of 10.214.0.0-10.253.255.255 of this test's own: clear of the default pool
    (10.213.0.0/16) other tests on the machine take theirs from."""
    return ipaddress.IPv4Network(
        f"10.{214 + secrets.randbelow(40)}.{16 * secrets.randbelow(16)}.0/20"
    )


def subnets(world: DockerWorld) -> dict[str, ipaddress.IPv4Network]:
    """The target's networks by role (edge) or endpoint, with their subnet."""
    found = {}
    for network in world.client.networks.list(
        filters={"label": f"reconciler.target={world.options.name}"}
    ):
        labels = network.attrs.get("Labels") or {}
        if labels.get("reconciler.managed-by") != "ml-endpoint-reconciler":
            continue
        key = labels.get("reconciler.endpoint") or labels["reconciler.role"]
        (config,) = network.attrs["IPAM"]["Config"]
        found[key] = ipaddress.IPv4Network(config["Subnet"])
    return found


def foreign_network(world: DockerWorld, subnet: ipaddress.IPv4Network) -> Any:
    """Someone else's network on `subnet`; carries the world's target label (only) so that
    the world's cleanup removes it, never the target (which lists its managed-by label)."""
    return world.client.networks.create(
        f"{world.options.name}-foreign",
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))]),
        labels={"reconciler.target": world.options.name},
    )


def test_networks_take_free_subnets_of_the_pool_and_two_targets_never_share_one(
    docker_worlds: WorldFactory,
) -> None:
    pool = own_pool()
    first, second, *_ = pool.subnets(new_prefix=24)
    one = docker_worlds("one", network_pool=str(pool))
    two = docker_worlds("two", network_pool=str(pool))
    foreign_network(one, first)
    for world, endpoints in ((one, ("net-a", "net-b")), (two, ("net-c",))):
        for name in endpoints:
            world.repo.endpoint(name)
        world.repo.commit("endpoints")
        world.apply()
    mine, theirs = subnets(one), subnets(two)
    assert set(mine) == {"net-a", "net-b", "edge"} and set(theirs) == {"net-c", "edge"}
    taken = list(mine.values()) + list(theirs.values())
    # Each a /24 of the pool, none on the foreign network's, no two alike.
    assert all(s.prefixlen == 24 and s.subnet_of(pool) for s in taken)
    assert first not in taken and len(set(taken)) == len(taken) == 5
    # The first endpoint's network is the first subnet nobody held.
    assert second in (mine["net-a"], mine["net-b"])
    for world in (one, two):
        assert not world.plan().steps
        for endpoint in world.target.observe().endpoints:
            assert endpoint.repair is None, endpoint.repair


def test_networks_made_before_are_kept_when_the_pool_changes(
    docker_worlds: WorldFactory,
) -> None:
    """Endpoints made from another pool (Docker's default ones, before this option) keep
    serving on their networks: nothing is planned for them, nothing is made again."""
    world = docker_worlds(network_pool=str(own_pool()))
    world.repo.endpoint("kept-net")
    world.repo.commit("kept-net")
    world.apply()
    before = {
        n.id for n in world.client.networks.list(filters={"label": "reconciler.endpoint=kept-net"})
    }
    moved = DockerTarget(
        dataclasses.replace(world.options, network_pool=str(own_pool())),
        repo_root=world.repo.root,
        repository=world.target.repository,
    )
    world.target = moved
    assert not world.plan().steps
    (live,) = moved.observe().endpoints
    assert live.repair is None, live.repair
    after = {
        n.id for n in world.client.networks.list(filters={"label": "reconciler.endpoint=kept-net"})
    }
    assert after == before and len(after) == 1


def test_a_subnet_taken_between_the_listing_and_the_creation_is_chosen_again(
    docker_world: DockerWorld,
) -> None:
    """Another process takes the subnet chosen just after this one listed the networks:
    the engine refuses the creation (overlap), and the next free subnet is taken. The race
    is made real by taking the subnet, through the engine, right after the listing."""
    world = docker_world
    pool = own_pool()
    first, second, *_ = pool.subnets(new_prefix=24)
    client = docker.from_env(timeout=60)
    listing = client.api.networks
    raced: list[Any] = []

    def listing_then_someone_else_creates(*args: Any, **kwargs: Any) -> Any:
        found = listing(*args, **kwargs)
        if not raced:
            raced.append(foreign_network(world, first))
        return found

    client.api.networks = listing_then_someone_else_creates  # type: ignore[method-assign]
    try:
        made = create_network(
            client,
            f"{world.options.name}-raced",
            pool=pool,
            prefix=24,
            labels={"reconciler.target": world.options.name},
        )
        made.reload()
        (config,) = made.attrs["IPAM"]["Config"]
        assert raced and ipaddress.IPv4Network(config["Subnet"]) == second
    finally:
        client.close()
