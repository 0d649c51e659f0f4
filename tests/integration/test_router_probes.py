"""The router's own readiness and liveness checks (custom containers), over real sockets.

Instances of one deployment listen on one port of different loopback addresses (127.0.0.2,
127.0.0.3), as containers on a Docker network listen on one port of different hosts: the
probe's port is the deployment's, the host each instance's.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    ADMIN_SECRET,
    PRIMARY_KEY,
    Backend,
    Backends,
    backends_fixture,
    bearer,
    deployment,
    http_get,
    load,
    request,
    router_config,
    start_router_fixture,
)
from waiting import wait_for

AUTH = bearer(PRIMARY_KEY)
READY, LIVE = "/health/ready", "/health/live"


def _port_free_on(hosts: tuple[str, ...]) -> int:
    """A port that every one of `hosts` (loopback addresses) can bind."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on every loopback address")


def _two_instances(backends: Backends) -> tuple[Backend, Backend, int]:
    hosts = ("127.0.0.2", "127.0.0.3")
    port = _port_free_on(hosts)
    probes = {READY: 200, LIVE: 200}
    a = backends.start("blue", host=hosts[0], port=port, probes=probes)
    b = backends.start("blue", host=hosts[1], port=port, probes=probes)
    return a, b, port


def _health(url: str) -> dict[str, dict[str, Any]]:
    """address -> probe record, from the admin call."""
    status, _, body = http_get(f"{url}/-/instances", bearer(ADMIN_SECRET))
    assert status == 200, body
    doc = json.loads(body)
    return {i["address"]: i for i in doc["deployments"]["blue"]["instances"]}


def test_an_instance_whose_readiness_route_fails_gets_no_traffic_until_it_recovers(
    backends: Backends, start_router
) -> None:
    a, b, port = _two_instances(backends)
    probe = {"port": port, "period": 1, "timeout": 1}
    router = start_router(
        router_config(
            [
                deployment(
                    "blue",
                    [a, b],
                    readiness_probe={
                        **probe,
                        "path": READY,
                        "failure_threshold": 2,
                        "success_threshold": 2,
                    },
                    liveness_probe={**probe, "path": LIVE, "failure_threshold": 3},
                )
            ],
            traffic={"blue": 100},
        )
    )
    url = f"{router.url}/score"
    assert {r.status for r in load(url, 40, concurrency=4, headers=AUTH)} == {200}
    assert a.hits and b.hits

    b.probe_status[READY] = 503  # b's readiness route fails; its liveness route is fine
    wait_for(lambda: _health(router.url)[b.address]["ready"] is False, 15, "b taken out")
    before = b.hits
    results = load(url, 40, concurrency=4, headers=AUTH)
    assert {r.status for r in results} == {200}
    assert b.hits == before, "an unready instance got requests"
    record = _health(router.url)[b.address]
    assert record["readiness_failures"] >= 2
    assert record["liveness_failures"] == 0
    # Each route was asked on its own path, at the deployment's probe port on b's host.
    assert b.probe_hits[READY] >= 2 and b.probe_hits[LIVE] >= 1

    a.probe_status[READY] = 503  # none ready: 503, said as such
    wait_for(lambda: _health(router.url)[a.address]["ready"] is False, 15, "a taken out")
    answer = request(url, headers=AUTH)
    assert answer.status == 503
    assert json.loads(answer.body) == {"message": "no instance of the deployment is ready"}

    b.probe_status[READY] = 200  # two good checks in a row bring b back
    wait_for(lambda: _health(router.url)[b.address]["ready"] is True, 15, "b back")
    before = b.hits
    assert {r.status for r in load(url, 20, concurrency=2, headers=AUTH)} == {200}
    assert b.hits == before + 20


def test_liveness_failures_are_counted_for_the_reconciler_and_take_no_traffic_away(
    backends: Backends, start_router
) -> None:
    a, b, port = _two_instances(backends)
    probe = {"port": port, "period": 1, "timeout": 1, "failure_threshold": 2}
    router = start_router(
        router_config(
            [
                deployment(
                    "blue",
                    [a, b],
                    readiness_probe={**probe, "path": READY},
                    liveness_probe={**probe, "path": LIVE},
                )
            ],
            traffic={"blue": 100},
        )
    )
    # The count is the admin's: no secret, no answer.
    status, _, _ = http_get(f"{router.url}/-/instances")
    assert status == 401

    a.probe_status[LIVE] = 500
    wait_for(lambda: int(_health(router.url)[a.address]["liveness_failures"]) >= 3, 15, "a failing")
    health = _health(router.url)
    assert health[a.address]["ready"] is True  # liveness decides restarts, not traffic
    assert health[b.address]["liveness_failures"] == 0
    before = a.hits
    assert {r.status for r in load(f"{router.url}/score", 20, concurrency=2, headers=AUTH)} == {200}
    assert a.hits > before
    # One good answer ends the run of failures.
    a.probe_status[LIVE] = 200
    wait_for(lambda: _health(router.url)[a.address]["liveness_failures"] == 0, 15, "a counted live")
