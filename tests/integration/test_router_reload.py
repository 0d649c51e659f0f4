"""Router over real sockets: configuration changes under steady load fail no request;
several workers; shutdown drains."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter

from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    ADMIN_SECRET,
    PRIMARY_KEY,
    Backends,
    Result,
    backends_fixture,
    bearer,
    deployment,
    http_get,
    load,
    metric_value,
    request,
    router_config,
    start_router_fixture,
    write_config,
)

AUTH = bearer(PRIMARY_KEY)


def test_file_changes_under_load_fail_no_request(backends: Backends, start_router) -> None:
    blue = [backends.start("blue", delay=0.003), backends.start("blue", delay=0.003)]
    green = [backends.start("green", delay=0.003), backends.start("green", delay=0.003)]

    def config(traffic: dict[str, int], blue_instances: list, green_instances: list) -> dict:  # type: ignore[type-arg]
        return router_config(
            [deployment("blue", blue_instances), deployment("green", green_instances)],
            traffic=traffic,
        )

    router = start_router(config({"blue": 100}, blue[:1], green[:1]))
    steps = [
        config({"blue": 50, "green": 50}, blue, green[:1]),  # scale out blue, split
        config({"green": 100}, blue, green),  # all traffic moves
        config({"green": 100}, blue[1:], green[1:]),  # instances removed while busy
        config({"blue": 100}, blue, green[1:]),  # and back
    ]
    # Steady load in a thread for as long as the changes take, and a while after.
    stop = threading.Event()
    results: list[Result] = []
    loader = threading.Thread(
        target=lambda: results.extend(
            load(f"{router.url}/score", 10**6, concurrency=16, headers=AUTH, stop=stop.is_set)
        )
    )
    loader.start()
    try:
        time.sleep(0.3)
        for count, doc in enumerate(steps, 1):
            write_config(router.config_path, doc)
            router.wait_for_event("config.applied", count=count)
            last_applied = time.monotonic()
            time.sleep(0.2)  # some load on each config
        time.sleep(0.5)
    finally:
        stop.set()
        loader.join(30)
    assert len(results) > 1000
    assert Counter(r.status for r in results) == {200: len(results)}
    assert {r.deployment for r in results} == {"blue", "green"}
    after_last = [r for r in results if r.sent > last_applied]
    assert len(after_last) >= 100
    assert all(r.deployment == "blue" for r in after_last)
    assert blue[0].hits > 0 and green[0].hits > 0 and green[1].hits > 0
    sources = [e["source"] for e in router.events("config.applied")]
    assert sources == ["file"] * len(steps)


def test_admin_changes_under_load_fail_no_request(backends: Backends, start_router) -> None:
    blue, green = backends.start("blue", delay=0.003), backends.start("green", delay=0.003)
    deployments = [deployment("blue", [blue]), deployment("green", [green])]
    router = start_router(router_config(deployments, traffic={"blue": 100}))

    def shift(traffic: dict[str, int]) -> None:
        body = json.dumps(router_config(deployments, traffic=traffic)).encode()
        answer = request(f"{router.url}/-/config", headers=bearer(ADMIN_SECRET), body=body)
        assert answer.status == 200

    n = 1000
    at = {250: lambda: shift({"blue": 10, "green": 90}), 600: lambda: shift({"green": 100})}
    results = load(f"{router.url}/score", n, concurrency=16, headers=AUTH, at=at)
    assert Counter(r.status for r in results) == {200: n}
    # The shift is instant: once the call returned, no request goes to blue.
    assert all(r.deployment == "green" for r in results[-300:])
    assert green.hits > 400


def test_several_workers_share_the_port_and_sum_their_metrics(
    backends: Backends, start_router
) -> None:
    blue, green = backends.start("blue"), backends.start("green")
    deployments = [deployment("blue", [blue]), deployment("green", [green])]
    router = start_router(router_config(deployments, traffic={"blue": 100}), workers=2)
    # Fresh connections each time so that both workers get some.
    n = 200
    statuses = Counter(request(f"{router.url}/score", headers=AUTH).status for _ in range(n))
    assert statuses == {200: n}
    workers = {e["pid"] for e in router.events("listening") if e.get("role") != "supervisor"}
    assert len(workers) == 2
    text = router.metrics()
    assert metric_value(text, "router_requests_total", deployment="blue", code="200") == n
    # An admin change reaches both workers through the shared file.
    body = json.dumps(router_config(deployments, traffic={"green": 100})).encode()
    assert request(f"{router.url}/-/config", headers=bearer(ADMIN_SECRET), body=body).status == 200
    router.wait_for_event("config.applied", count=2)
    after = [request(f"{router.url}/score", headers=AUTH).deployment for _ in range(40)]
    assert set(after) == {"green"}


def test_sigterm_drains_requests_in_flight(backends: Backends, start_router) -> None:
    slow = backends.start("blue", delay=1.0)
    router = start_router(router_config([deployment("blue", [slow])], traffic={"blue": 100}))
    results: list[int] = []
    caller = threading.Thread(
        target=lambda: results.append(request(f"{router.url}/score", headers=AUTH).status)
    )
    caller.start()
    deadline = time.monotonic() + 5
    while slow.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    router.process.send_signal(signal.SIGTERM)
    caller.join(10)
    assert results == [200]
    assert router.process.wait(10) == 0
    assert http_get  # the router is gone; nothing listens any more


def test_config_digest_names_the_config_served_without_credentials(
    backends: Backends, start_router
) -> None:
    from reconciler.router.config import parse_config

    blue = backends.start("blue")
    first = router_config([deployment("blue", [blue])], traffic={"blue": 100})
    router = start_router(first)
    status, _, body = http_get(f"{router.url}/-/config-digest")
    assert status == 200
    assert json.loads(body) == {"digest": parse_config(json.dumps(first).encode()).digest()}
    second = router_config(
        [deployment("blue", [blue])], traffic={"blue": 100}, max_body_bytes=12345
    )
    write_config(router.config_path, second)
    router.wait_for_event("config.applied")
    _, _, body = http_get(f"{router.url}/-/config-digest")
    assert json.loads(body) == {"digest": parse_config(json.dumps(second).encode()).digest()}
    assert json.loads(body) != {"digest": parse_config(json.dumps(first).encode()).digest()}


def test_config_digest_of_several_workers_names_a_config_only_once_every_worker_serves_it(
    backends: Backends, start_router
) -> None:
    from reconciler.router.config import parse_config

    blue, green = backends.start("blue"), backends.start("green")
    deployments = [deployment("blue", [blue]), deployment("green", [green])]
    first = router_config(deployments, traffic={"blue": 100})
    router = start_router(first, workers=2)
    _, _, body = http_get(f"{router.url}/-/config-digest")
    served = json.loads(body)
    assert served["digest"] == parse_config(json.dumps(first).encode()).digest()
    assert len(served["workers"]) == 2
    second = router_config(deployments, traffic={"green": 100})
    wanted = parse_config(json.dumps(second).encode()).digest()
    body = json.dumps(second).encode()
    assert request(f"{router.url}/-/config", headers=bearer(ADMIN_SECRET), body=body).status == 200
    # The worker that took the call serves the new config, the other one learns it from the
    # file a moment later: until then the router names no digest (never the old one).
    answers = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answers.append(json.loads(http_get(f"{router.url}/-/config-digest")[2])["digest"])
        if answers[-1] == wanted:
            break
    assert answers[-1] == wanted
    assert set(answers) <= {None, wanted}
    # Once it names it, every request on any worker follows it.
    after = Counter(request(f"{router.url}/score", headers=AUTH).deployment for _ in range(100))
    assert after == {"green": 100}
