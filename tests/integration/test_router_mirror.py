"""Router over real sockets: mirror share, and a shadow that is slow, failing or down
changing nothing for the caller."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter

import pytest
from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    PRIMARY_KEY,
    Backends,
    Result,
    backends_fixture,
    bearer,
    dead_address,
    deployment,
    load,
    metric_value,
    router_config,
    start_router_fixture,
)
from waiting import wait_for

AUTH = bearer(PRIMARY_KEY)


def test_mirror_copies_its_share_and_counts_it(backends: Backends, start_router) -> None:
    blue, shadow = backends.start("blue"), backends.start("shadow")
    router = start_router(
        router_config(
            [deployment("blue", [blue]), deployment("shadow", [shadow])],
            traffic={"blue": 100},
            mirror={"shadow": 20},
        )
    )
    n = 1000
    results = load(f"{router.url}/score", n, concurrency=16, headers=AUTH)
    assert {(r.status, r.deployment) for r in results} == {(200, "blue")}
    wait_for(
        lambda: (
            metric_value(router.metrics(), "router_requests_total", kind="mirror")
            >= shadow.hits
            > 0
        )
    )
    sigma = math.sqrt(n * 0.2 * 0.8)
    assert abs(shadow.hits - n * 0.2) <= 5 * sigma, shadow.hits
    text = router.metrics()
    mirrored = metric_value(text, "router_requests_total", deployment="shadow", kind="mirror")
    assert mirrored == shadow.hits
    assert metric_value(text, "router_requests_total", deployment="shadow", kind="live") == 0
    # Pinned requests are never mirrored.
    before = shadow.hits
    pinned = load(
        f"{router.url}/score",
        100,
        concurrency=8,
        headers={**AUTH, "azureml-model-deployment": "blue"},
    )
    assert all(r.status == 200 for r in pinned)
    time.sleep(0.3)
    assert shadow.hits == before


def _latencies(results: list[Result]) -> tuple[float, float]:
    seconds = sorted(r.seconds for r in results)
    return statistics.median(seconds), seconds[int(len(seconds) * 0.99) - 1]


@pytest.mark.parametrize("shadow_kind", ["slow", "failing", "down"])
def test_a_bad_shadow_changes_nothing_for_callers(
    backends: Backends, start_router, shadow_kind: str
) -> None:
    blue = backends.start("blue", delay=0.002)
    if shadow_kind == "slow":
        shadow_address = backends.start("shadow", delay=5.0).address
    elif shadow_kind == "failing":
        shadow_address = backends.start("shadow", status=500).address
    else:
        shadow_address = dead_address()
    deployments = [
        deployment("blue", [blue]),
        deployment("shadow", [shadow_address], request_timeout_ms=10000),
    ]
    baseline_router = start_router(router_config(deployments, traffic={"blue": 100}))
    baseline = load(f"{baseline_router.url}/score", 300, concurrency=8, headers=AUTH)
    baseline_router.stop()
    router = start_router(router_config(deployments, traffic={"blue": 100}, mirror={"shadow": 50}))
    mirrored = load(f"{router.url}/score", 300, concurrency=8, headers=AUTH)
    # Same answers: all from blue, all 200, bodies from blue.
    assert Counter((r.status, r.deployment) for r in mirrored) == {(200, "blue"): 300}
    assert all(r.json()["deployment"] == "blue" for r in mirrored)
    # Same latency, give or take scheduling noise; no caller waited for a 5 s shadow.
    base_p50, base_p99 = _latencies(baseline)
    p50, p99 = _latencies(mirrored)
    assert max(r.seconds for r in mirrored) < 1.0
    assert p50 < base_p50 * 2 + 0.005, (p50, base_p50)
    # Loose: a p99 of a few hundred requests on a shared machine moves by tenths of a second.
    assert p99 < base_p99 * 3 + 0.25, (p99, base_p99)
    text = router.metrics()
    expected_code = {"slow": "429", "failing": "424", "down": "502"}[shadow_kind]
    # slow: the shadow holds its 2 x 50 slots for 5 s, so further copies are dropped (429).
    wait_for(
        lambda: (
            metric_value(
                router.metrics(), "router_requests_total", kind="mirror", code=expected_code
            )
            > 0
        )
    )
    assert metric_value(text, "router_requests_total", kind="live", code="200") == 300
