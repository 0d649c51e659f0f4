"""Subnets of the Docker target's networks, taken from a pool of its own.

Docker gives a network made without a subnet one of its default address pools: about 30
on a stock engine (172.17-31.0.0/16 and 192.168.0.0/16 cut in /20s), shared by everything
on the host. One internal network per endpoint would run the engine out after ~30
endpoints ("could not find an available, non-overlapping IPv4 address pool"), each network
holding 65,534 or 4,094 addresses for a handful of containers. So the target carves small
subnets (`network_prefix`, /24 by default: 253 containers) out of its own `network_pool`
(10.213.0.0/16 by default: 256 networks, clear of Docker's default pools).

A free subnet is the first of the pool that overlaps no network of the engine, whoever made
it (one listing). Two processes may choose the same one at once (two targets on one host,
a daemon beside a `reconcile`): Docker refuses the second ("Pool overlaps with other one on
this address space"), which then chooses again. Within one process a lock makes them take
turns. Networks made before (from Docker's default pools) are left as they are: they work.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import docker
import docker.errors
import docker.types

from reconciler.logs import get_logger
from reconciler.model.errors import ErrorCode
from reconciler.targets.errors import TargetError

log = get_logger("reconciler.docker.subnets")

DEFAULT_POOL = "10.213.0.0/16"
DEFAULT_PREFIX = 24
MIN_PREFIX, MAX_PREFIX = 16, 29  # a /29 holds 5 containers (Docker takes the gateway's)
# Choices a creation makes before giving up: each retry follows a refusal for an overlap,
# i.e. another process took the subnet between the listing and the creation.
ATTEMPTS = 8
_lock = threading.Lock()


def parse_pool(text: str, prefix: int) -> ipaddress.IPv4Network:
    """The pool as a network; ValueError saying why it cannot hold subnets of `prefix`."""
    pool = ipaddress.ip_network(str(text), strict=True)
    if not isinstance(pool, ipaddress.IPv4Network):
        raise ValueError(f"need an IPv4 network such as {DEFAULT_POOL}, got {text}")
    if not MIN_PREFIX <= prefix <= MAX_PREFIX:
        raise ValueError(f"subnets of /{prefix}: need /{MIN_PREFIX} to /{MAX_PREFIX}")
    if pool.prefixlen > prefix:
        raise ValueError(f"{pool} is smaller than one /{prefix} subnet (network_prefix)")
    return pool


def subnets_in_use(networks: Iterable[Mapping[str, Any]]) -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets of networks as the engine lists them (IPAM.Config[].Subnet)."""
    found = []
    for network in networks:
        for config in (network.get("IPAM") or {}).get("Config") or []:
            try:
                subnet = ipaddress.ip_network(str((config or {}).get("Subnet", "")), strict=False)
            except ValueError:
                continue
            if isinstance(subnet, ipaddress.IPv4Network):
                found.append(subnet)
    return found


def free_subnet(
    pool: ipaddress.IPv4Network, prefix: int, taken: Iterable[ipaddress.IPv4Network]
) -> ipaddress.IPv4Network | None:
    """The first /prefix subnet of the pool that overlaps none of `taken`."""
    busy = [t for t in taken if t.overlaps(pool)]
    for subnet in pool.subnets(new_prefix=prefix):
        if not any(subnet.overlaps(t) for t in busy):
            return subnet
    return None


def create_network(
    client: docker.DockerClient,
    name: str,
    *,
    pool: ipaddress.IPv4Network,
    prefix: int,
    **kwargs: Any,
) -> Any:
    """A bridge network named `name` on a free subnet of the pool (kwargs: those of
    networks.create). TargetError when the pool is full."""
    refused: list[ipaddress.IPv4Network] = []
    with _lock:
        for _ in range(ATTEMPTS):
            taken = subnets_in_use(client.api.networks()) + refused
            subnet = free_subnet(pool, prefix, taken)
            if subnet is None:
                raise TargetError(
                    f"the Docker target's network_pool {pool} has no free /{prefix} subnet "
                    f"left for network {name}: give the target a larger network_pool (or "
                    "smaller subnets: a longer network_prefix) in reconciler.yaml",
                    code=ErrorCode.NO_FREE_SUBNET,
                )
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
            try:
                return client.networks.create(name, driver="bridge", ipam=ipam, **kwargs)
            except docker.errors.APIError as exc:
                if "overlap" not in str(exc.explanation or exc).lower():
                    raise
                log.info("subnet_taken_meanwhile", subnet=str(subnet), network=name)
                refused.append(subnet)
    raise TargetError(
        f"network {name}: every subnet of {pool} chosen was taken meanwhile "
        f"({', '.join(map(str, refused))}); the next pass tries again",
        code=ErrorCode.DOCKER_ERROR,
    )
