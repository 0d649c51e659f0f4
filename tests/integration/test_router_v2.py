"""Router over real sockets: the KServe v2 paths of Triton deployments (`/v2/...`).

Azure ML endpoints of Triton deployments are called at `/v2/health/ready`,
`/v2/models/NAME/infer`, ...: the router checks the caller's key, picks a deployment by the
pin header or the traffic split, applies its limits, and passes the request on with its
method, path and query as sent.
"""

from __future__ import annotations

import math
import time
from collections import Counter

from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    PRIMARY_KEY,
    Backends,
    backends_fixture,
    bearer,
    deployment,
    load,
    request,
    router_config,
    start_router_fixture,
)

AUTH = bearer(PRIMARY_KEY)
INFER = "/v2/models/tiny/infer"


def test_v2_requests_follow_the_traffic_split_and_the_pin_header(
    backends: Backends, start_router
) -> None:
    blue, green = backends.start("blue"), backends.start("green")
    router = start_router(
        router_config(
            [deployment("blue", [blue]), deployment("green", [green])],
            traffic={"blue": 70, "green": 30},
        )
    )
    n = 600
    results = load(f"{router.url}{INFER}", n, concurrency=8, headers=AUTH)
    assert Counter(r.status for r in results) == {200: n}
    answered = Counter(r.deployment for r in results)
    assert abs(answered["green"] - n * 0.3) <= 5 * math.sqrt(n * 0.3 * 0.7), answered
    assert (blue.hits, green.hits) == (answered["blue"], answered["green"])
    assert set(blue.seen_targets) == {("POST", INFER)}
    pinned = load(
        f"{router.url}/v2/health/ready",
        20,
        method="GET",
        body=None,
        headers={**AUTH, "azureml-model-deployment": "green"},
    )
    assert {(r.status, r.deployment) for r in pinned} == {(200, "green")}
    assert green.seen_targets[-1] == ("GET", "/v2/health/ready")
    unknown = request(f"{router.url}{INFER}", headers={**AUTH, "azureml-model-deployment": "x"})
    assert unknown.status == 404


def test_v2_requests_pass_with_their_method_path_and_query_as_sent(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    server_metadata = request(f"{router.url}/v2", method="GET", headers=AUTH, body=None)
    assert (server_metadata.status, server_metadata.deployment) == (200, "blue")
    encoded = "/v2/models/my%20model/versions/2/infer?trace=1"
    assert request(f"{router.url}{encoded}", headers=AUTH).status == 200
    assert blue.seen_targets == [("GET", "/v2"), ("POST", encoded)]
    # The model never sees the caller's key; it does see the request id.
    seen = {k.lower() for k in blue.seen_headers[-1]}
    assert "authorization" not in seen and "x-request-id" in seen


def test_v2_requests_need_credentials_and_get_or_post(backends: Backends, start_router) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    ready = f"{router.url}/v2/health/ready"
    assert request(ready, method="GET", body=None).status == 401
    assert request(ready, method="GET", body=None, headers=bearer("wrong")).status == 401
    put = request(f"{router.url}{INFER}", method="PUT", headers=AUTH)
    assert (put.status, put.headers["allow"]) == (405, "GET, POST")
    assert request(f"{router.url}/v2x/health", method="GET", headers=AUTH, body=None).status == 404
    assert blue.hits == 0


def test_an_error_of_the_server_reaches_the_caller_as_424_with_its_status(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue", status=400)
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    answer = request(f"{router.url}{INFER}", headers=AUTH)
    assert answer.status == 424
    assert answer.headers["ms-azureml-model-error-statuscode"] == "400"
    assert answer.json()["deployment"] == "blue"  # the server's own body passes


def test_inference_is_mirrored_and_health_checks_are_not(backends: Backends, start_router) -> None:
    blue, shadow = backends.start("blue"), backends.start("shadow")
    router = start_router(
        router_config(
            [deployment("blue", [blue]), deployment("shadow", [shadow])],
            traffic={"blue": 100},
            mirror={"shadow": 50},
        )
    )
    checks = load(f"{router.url}/v2/health/ready", 100, method="GET", body=None, headers=AUTH)
    assert {(r.status, r.deployment) for r in checks} == {(200, "blue")}
    inference = load(f"{router.url}{INFER}", 100, headers=AUTH)
    assert {(r.status, r.deployment) for r in inference} == {(200, "blue")}
    deadline = time.monotonic() + 10
    while shadow.hits < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 20 <= shadow.hits <= 80, shadow.hits
    assert set(shadow.seen_targets) == {("POST", INFER)}
