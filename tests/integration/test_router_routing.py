"""Router over real sockets: weighted split, pin header, pass-through, swagger, health, metrics."""

from __future__ import annotations

import math
import re
from collections import Counter

from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    PRIMARY_KEY,
    Backends,
    backends_fixture,
    bearer,
    deployment,
    http_get,
    load,
    metric_value,
    request,
    router_config,
    start_router_fixture,
)

AUTH = bearer(PRIMARY_KEY)


def _within_sigmas(observed: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_split_follows_weights_within_statistical_bounds(backends: Backends, start_router) -> None:
    blue = [backends.start("blue"), backends.start("blue")]
    green = backends.start("green")
    router = start_router(
        router_config(
            [deployment("blue", blue), deployment("green", [green])],
            traffic={"blue": 90, "green": 10},
        )
    )
    n = 1200
    results = load(f"{router.url}/score", n, concurrency=16, headers=AUTH)
    assert Counter(r.status for r in results) == {200: n}
    answered = Counter(r.deployment for r in results)
    assert set(answered) == {"blue", "green"}
    assert _within_sigmas(answered["green"], n, 0.10), answered
    # The header tells the truth: the backend that answered is the one named.
    assert all(r.json()["deployment"] == r.deployment for r in results)
    assert blue[0].hits + blue[1].hits == answered["blue"]
    assert green.hits == answered["green"]
    # Inside a deployment the least busy instance serves: both blue instances work.
    assert min(b.hits for b in blue) > answered["blue"] * 0.25


def test_pin_header_reaches_a_deployment_without_traffic(backends: Backends, start_router) -> None:
    blue, green = backends.start("blue"), backends.start("green")
    router = start_router(
        router_config(
            [deployment("blue", [blue]), deployment("green", [green])], traffic={"blue": 100}
        )
    )
    url = f"{router.url}/score"
    pinned = load(url, 50, concurrency=5, headers={**AUTH, "azureml-model-deployment": "green"})
    assert {(r.status, r.deployment) for r in pinned} == {(200, "green")}
    assert green.hits == 50 and blue.hits == 0
    unknown = request(url, headers={**AUTH, "azureml-model-deployment": "purple"})
    # The 404 names the deployment asked for, so a typo is seen at once.
    assert (unknown.status, unknown.json()) == (404, {"message": "no deployment named 'purple'"})
    trailing_slash = request(f"{router.url}/score/", headers=AUTH)
    assert (trailing_slash.status, trailing_slash.deployment) == (200, "blue")


def test_no_traffic_is_404_unless_pinned(backends: Backends, start_router) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={}))
    url = f"{router.url}/score"
    assert request(url, headers=AUTH).status == 404
    pinned = request(url, headers={**AUTH, "azureml-model-deployment": "blue"})
    assert (pinned.status, pinned.deployment) == (200, "blue")


def test_answer_passes_through_with_request_id(backends: Backends, start_router) -> None:
    blue = backends.start("blue", status=201)
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    url = f"{router.url}/score?verbose=1"
    given = request(url, headers={**AUTH, "x-request-id": "req-123"}, body=b'{"x": "abc"}')
    assert given.status == 201
    assert given.headers["content-type"].startswith("application/json")
    assert given.headers["x-request-id"] == "req-123"
    assert given.headers["x-backend"] == "blue"  # the backend's own headers pass
    assert given.json() == {"deployment": "blue", "instance": blue.address, "size": 12}
    generated = request(url, headers=AUTH)
    assert re.fullmatch(r"[0-9a-f-]{36}", generated.headers["x-request-id"])
    # The model sees the request id, never the caller's credentials.
    seen = {k.lower(): v for k, v in blue.seen_headers[0].items()}
    assert seen["x-request-id"] == "req-123"
    assert "authorization" not in seen
    assert request(f"{router.url}/nothing-here", headers=AUTH).status == 404
    assert request(f"{router.url}/score", method="GET", headers=AUTH, body=None).status == 405


def test_swagger_comes_from_a_deployment_with_traffic(backends: Backends, start_router) -> None:
    blue, green = backends.start("blue"), backends.start("green")
    router = start_router(
        router_config(
            [deployment("blue", [blue]), deployment("green", [green])], traffic={"green": 100}
        )
    )
    status, headers, body = http_get(f"{router.url}/swagger.json", AUTH)
    assert status == 200 and b'"deployment": "green"' in body
    assert headers["azureml-model-deployment"] == "green"
    assert http_get(f"{router.url}/swagger.json")[0] == 401


def test_health_readiness_and_metrics(backends: Backends, start_router) -> None:
    blue = backends.start("blue", delay=0.3)
    router = start_router(
        router_config(
            [deployment("blue", [blue], max_concurrent_requests_per_instance=2)],
            traffic={"blue": 100},
        )
    )
    assert http_get(f"{router.url}/-/healthy")[0] == 200
    assert http_get(f"{router.url}/-/ready")[0] == 200
    results = load(f"{router.url}/score", 8, concurrency=4, headers=AUTH)
    assert all(r.status == 200 for r in results)
    text = router.metrics()
    labels = {"endpoint": "ep-test", "deployment": "blue"}
    assert metric_value(text, "router_requests_total", **labels, kind="live", code="200") == 8
    count = metric_value(text, "router_request_duration_seconds_count", **labels, kind="live")
    assert count == 8
    assert metric_value(text, "router_instances", **labels) == 1
    assert "router_deployment_utilization" in text
    assert request(f"{router.url}/score").status == 401
    assert metric_value(router.metrics(), "router_requests_total", code="401") == 1


def test_utilization_reports_in_flight_over_capacity(backends: Backends, start_router) -> None:
    import threading
    import time

    blue = backends.start("blue", delay=1.5)
    router = start_router(
        router_config(
            [deployment("blue", [blue], max_concurrent_requests_per_instance=2)],
            traffic={"blue": 100},
        )
    )
    worker = threading.Thread(
        target=load, args=(f"{router.url}/score", 3), kwargs={"concurrency": 3, "headers": AUTH}
    )
    worker.start()
    try:
        deadline = time.monotonic() + 1.2
        utilization = 0.0
        while time.monotonic() < deadline and utilization < 1.5:
            labels = {"endpoint": "ep-test", "deployment": "blue"}
            utilization = metric_value(router.metrics(), "router_deployment_utilization", **labels)
            time.sleep(0.05)
        assert utilization == 1.5  # 3 in flight / (1 instance x 2 concurrent)
    finally:
        worker.join()
