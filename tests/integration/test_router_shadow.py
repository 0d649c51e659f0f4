"""Shadow comparison over real sockets: a router process, a live and a shadow backend on
loopback; the shadow's answers agree within the tolerance, differ in numbers, in status, or
come too late, and /metrics counts each per (live, shadow) pair, with latency deltas."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    PRIMARY_KEY,
    Backend,
    Backends,
    RouterProcess,
    backends_fixture,
    bearer,
    deployment,
    load,
    metric_value,
    router_config,
    start_router_fixture,
)
from waiting import wait_for

AUTH = bearer(PRIMARY_KEY)
LIVE_SCORES = {"scores": [0.5, 0.25, 1e-12], "label": "cat", "n": 3}
# Unique digits, looked for in the router's log: no body is logged.
CLOSE_SCORES = {"n": 3, "label": "cat", "scores": [0.50000017, 0.25, 2e-12]}
FAR_SCORES = {"n": 3, "label": "cat", "scores": [0.5017, 0.25, 1e-12]}


def _comparisons(router: RouterProcess) -> Counter[str]:
    text = router.metrics()
    return Counter(
        {
            result: int(
                metric_value(
                    text,
                    "router_shadow_comparisons_total",
                    endpoint="ep-test",
                    live="blue",
                    shadow="green",
                    result=result,
                )
            )
            for result in (
                "agree",
                "disagree_status",
                "disagree_body",
                "shadow_error",
                "shadow_timeout",
                "not_compared",
            )
        }
    )


def _mirrored(router: RouterProcess) -> int:
    text = router.metrics()
    return int(metric_value(text, "router_requests_total", deployment="green", kind="mirror"))


def _phase(router: RouterProcess, shadow: Backend, count: int) -> Counter[str]:
    """`count` requests; every caller gets blue's answer; then the comparisons they made."""
    before = _comparisons(router)
    results = load(f"{router.url}/score", count, concurrency=4, headers=AUTH)
    assert Counter((r.status, r.deployment) for r in results) == {(200, "blue"): count}
    assert all(r.json() == LIVE_SCORES for r in results)
    # Every copy that reached the shadow has ended (counted as a mirror request) and was
    # compared once both answers were in.
    wait_for(lambda: sum(_comparisons(router).values()) == _mirrored(router) == shadow.hits > 0)
    after = _comparisons(router)
    after.subtract(before)
    return +after


def test_shadow_answers_are_compared_with_live_ones_and_counted_by_result(
    backends: Backends, start_router: Any
) -> None:
    blue = backends.start("blue")
    green = backends.start("green", delay=0.2)
    blue.answer = lambda _body: LIVE_SCORES
    green.answer = lambda _body: CLOSE_SCORES
    router = start_router(
        router_config(
            [deployment("blue", [blue]), deployment("green", [green], request_timeout_ms=400)],
            traffic={"blue": 100},
            mirror={"green": 50},
            shadow_comparison={"rtol": 1e-6, "atol": 1e-11},
        )
    )
    # Within rtol (0.5 vs 0.50000017), within atol (1e-12 vs 2e-12), key order changed.
    agreed = _phase(router, green, 120)
    assert set(agreed) == {"agree"} and agreed["agree"] == green.hits
    # The shadow is 200 ms slower: every delta lands between 0.1 and 0.5 s.
    text = router.metrics()
    delta = "router_shadow_latency_delta_seconds"
    pair = {"endpoint": "ep-test", "live": "blue", "shadow": "green"}
    assert metric_value(text, f"{delta}_count", **pair) == agreed["agree"]
    assert metric_value(text, f"{delta}_bucket", le="0.1", **pair) == 0
    assert metric_value(text, f"{delta}_bucket", le="0.5", **pair) == agreed["agree"]
    # With buckets below 0, prometheus_client leaves the _sum out (OpenMetrics).
    assert f"{delta}_sum" not in text

    # The live deployment is the slower one: the comparison runs after the caller's answer
    # is written, and the deltas are negative.
    blue.delay, green.delay = 0.15, 0.0
    faster = _phase(router, green, 40)
    assert set(faster) == {"agree"}
    text = router.metrics()
    assert metric_value(text, f"{delta}_count", **pair) == green.hits
    assert metric_value(text, f"{delta}_bucket", le="-0.05", **pair) == faster["agree"]
    blue.delay = 0.0

    # 0.5017 against 0.5: beyond rtol.
    green.answer = lambda _body: FAR_SCORES
    differed = _phase(router, green, 120)
    assert set(differed) == {"disagree_body"} and differed["disagree_body"] > 0

    # The shadow fails (500) where live answers 200.
    green.status = 500
    failed = _phase(router, green, 60)
    assert set(failed) == {"disagree_status"} and failed["disagree_status"] > 0

    # The shadow's answers come after its request_timeout_ms (400 ms): no latency delta.
    green.status, green.delay = 200, 1.0
    deltas_before = metric_value(router.metrics(), f"{delta}_count", **pair)
    slow = _phase(router, green, 40)
    assert set(slow) == {"shadow_timeout"} and slow["shadow_timeout"] > 0
    assert metric_value(router.metrics(), f"{delta}_count", **pair) == deltas_before

    # No body reaches the router's log.
    log = "\n".join(router.lines)
    assert "0.50000017" not in log and "0.5017" not in log and '"scores"' not in log


def test_bodies_over_the_comparison_limit_are_not_compared(
    backends: Backends, start_router: Any
) -> None:
    blue = backends.start("blue")
    green = backends.start("green")
    blue.answer = lambda _body: LIVE_SCORES
    green.answer = lambda _body: FAR_SCORES
    router = start_router(
        router_config(
            [deployment("blue", [blue]), deployment("green", [green])],
            traffic={"blue": 100},
            mirror={"green": 50},
            shadow_comparison={"max_body_bytes": 32},  # both answers are longer
        )
    )
    counted = _phase(router, green, 60)
    assert set(counted) == {"not_compared"} and counted["not_compared"] == green.hits
    # Statuses are still compared without the bodies.
    green.status = 503
    counted = _phase(router, green, 60)
    assert set(counted) == {"disagree_status"}


def test_large_bodies_are_compared_in_a_process_of_their_own(
    backends: Backends, start_router: Any
) -> None:
    """Answers of ~200 KB (over the 64 KB judged on the event loop) are compared in a
    process of their own;
    a backlog of them counts as not_compared rather than piling bodies up."""
    blue = backends.start("blue")
    green = backends.start("green")
    scores = [i / 7 for i in range(10_000)]
    blue.answer = lambda _body: {"scores": scores}
    green.answer = lambda _body: {"scores": [s * (1 + 1e-8) for s in scores]}
    router = start_router(
        router_config(
            [deployment("blue", [blue]), deployment("green", [green])],
            traffic={"blue": 100},
            mirror={"green": 50},
        )
    )

    def phase(count: int) -> Counter[str]:
        before = _comparisons(router)
        results = load(f"{router.url}/score", count, concurrency=2, headers=AUTH)
        assert {r.status for r in results} == {200}
        wait_for(lambda: sum(_comparisons(router).values()) == _mirrored(router) == green.hits)
        after = _comparisons(router)
        after.subtract(before)
        return +after

    close = phase(40)
    assert set(close) <= {"agree", "not_compared"} and close["agree"] > 0
    green.answer = lambda _body: {"scores": [s + 1e-3 for s in scores]}
    far = phase(40)
    assert set(far) <= {"disagree_body", "not_compared"} and far["disagree_body"] > 0

    # The comparing process (and multiprocessing's resource tracker) are the router's
    # children and end with it, even on SIGKILL.
    children = _children(router.process.pid)
    assert children
    router.stop(signal.SIGKILL)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=5)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
