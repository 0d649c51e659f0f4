"""The Docker target's network pool (targets/docker/subnets.py): which subnet is free, and
the options of reconciler.yaml that set the pool (checked with their line)."""

from __future__ import annotations

import ipaddress

import pytest

from reconciler.filetree import MemoryTree
from reconciler.model.diagnostics import DesiredStateInvalid
from reconciler.repoconfig import load_repo_config
from reconciler.targets.base import TargetError
from reconciler.targets.docker.options import DockerOptions
from reconciler.targets.docker.subnets import free_subnet, parse_pool, subnets_in_use

net = ipaddress.IPv4Network


def test_the_first_subnet_of_the_pool_that_overlaps_no_network_is_chosen() -> None:
    pool = net("10.213.0.0/16")
    assert free_subnet(pool, 24, []) == net("10.213.0.0/24")
    # Taken exactly, covered by a larger network, or partly by a smaller one: passed over.
    taken = [net("10.213.0.0/24"), net("10.213.0.0/23"), net("10.213.2.128/25")]
    assert free_subnet(pool, 24, taken) == net("10.213.3.0/24")
    # Networks outside the pool (Docker's own) change nothing.
    assert free_subnet(pool, 24, [net("172.17.0.0/16")]) == net("10.213.0.0/24")


def test_a_full_pool_has_no_free_subnet() -> None:
    pool = net("10.213.0.0/23")
    assert free_subnet(pool, 24, [net("10.213.0.0/24"), net("10.213.1.0/24")]) is None
    assert free_subnet(pool, 24, [net("10.0.0.0/8")]) is None


def test_subnets_in_use_are_read_from_the_engines_network_listing() -> None:
    listing = [
        {"Name": "bridge", "IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "x"}]}},
        {
            "Name": "dual",
            "IPAM": {"Config": [{"Subnet": "10.213.4.0/24"}, {"Subnet": "fd00::/64"}]},
        },
        {"Name": "host", "IPAM": {"Config": []}},
        {"Name": "none", "IPAM": None},
        {"Name": "odd", "IPAM": {"Config": [{"Subnet": "not a subnet"}, None]}},
    ]
    assert subnets_in_use(listing) == [net("172.17.0.0/16"), net("10.213.4.0/24")]


def test_the_pool_and_subnet_size_are_options_of_the_docker_target() -> None:
    default = DockerOptions.from_config("local", {})
    assert (default.network_pool, default.network_prefix) == ("10.213.0.0/16", 24)
    # Clear of Docker's default address pools (172.17-31.0.0/16, 192.168.0.0/16).
    pool = net(default.network_pool)
    assert not pool.overlaps(net("172.16.0.0/12")) and not pool.overlaps(net("192.168.0.0/16"))
    chosen = DockerOptions.from_config(
        "local", {"network_pool": "192.0.2.0/24", "network_prefix": 26}
    )
    assert (chosen.network_pool, chosen.network_prefix) == ("192.0.2.0/24", 26)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"network_pool": "10.213.0.1/16"}, "targets.local.network_pool: 10.213.0.1/16 has host"),
        ({"network_pool": "fd00::/64"}, "targets.local.network_pool: need an IPv4 network"),
        ({"network_pool": "10.213.0.0/25"}, "smaller than one /24 subnet"),
        ({"network_prefix": 30}, "targets.local.network_prefix: need 16 to 29, got 30"),
        ({"network_prefix": "wide"}, "targets.local.network_prefix"),
    ],
)
def test_a_pool_that_cannot_hold_a_subnet_is_refused_naming_the_option(
    options: dict[str, object], words: str
) -> None:
    with pytest.raises(TargetError, match=r"reconciler\.yaml") as raised:
        DockerOptions.from_config("local", options)
    assert words in str(raised.value)
    with pytest.raises(ValueError):
        parse_pool("10.213.0.0/16", 12)


def test_reconciler_yaml_says_which_line_holds_a_bad_pool() -> None:
    text = (
        "targets:\n"
        "  local:\n"
        "    type: docker\n"
        "    network_pool: 10.213.0.0\n"  # 4: no prefix
        "  other:\n"
        "    network_pool: 10.213.0.7/16\n"  # 6: host bits
        "  small:\n"
        "    network_pool: 10.213.0.0/28\n"  # 8: smaller than a /27
        "    network_prefix: 27\n"
        "  wide:\n"
        "    network_prefix: 8\n"  # 11
    )
    with pytest.raises(DesiredStateInvalid) as raised:
        load_repo_config(MemoryTree({"reconciler.yaml": text.encode()}))
    found = {(e.line, e.field): e.message for e in raised.value.errors}
    assert set(found) == {
        (4, "targets.local.network_pool"),
        (6, "targets.other.network_pool"),
        (8, "targets.small.network_pool"),
        (11, "targets.wide.network_prefix"),
    }
    assert (
        "must be an IPv4 network such as 10.213.0.0/16" in found[(4, "targets.local.network_pool")]
    )
    assert "host bits set" in found[(6, "targets.other.network_pool")]
    assert "smaller than one /27 subnet" in found[(8, "targets.small.network_pool")]
    good = "targets:\n  local:\n    network_pool: 10.99.0.0/20\n    network_prefix: 26\n"
    config = load_repo_config(MemoryTree({"reconciler.yaml": good.encode()}))
    assert dict(config.targets[0].options) == {"network_pool": "10.99.0.0/20", "network_prefix": 26}
