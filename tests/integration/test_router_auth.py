"""Router over real sockets: the auth matrix (keys, regenerated keys, tokens), admin guard, logs."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    ADMIN_SECRET,
    PRIMARY_KEY,
    SECONDARY_KEY,
    Backends,
    backends_fixture,
    bearer,
    deployment,
    http_get,
    request,
    router_config,
    start_router_fixture,
)

from reconciler.router.tokens import generate_token_secret, issue_token

TOKEN_SECRET = generate_token_secret()


def _admin_post(url: str, doc: object, secret: str = ADMIN_SECRET) -> int:
    return request(f"{url}/-/config", headers=bearer(secret), body=json.dumps(doc).encode()).status


def test_key_matrix_and_regeneration(backends: Backends, start_router, tmp_path: Path) -> None:
    blue = backends.start("blue")
    doc = router_config([deployment("blue", [blue])], traffic={"blue": 100})
    router = start_router(doc)
    url = f"{router.url}/score"
    refused = [
        request(url),  # none
        request(url, headers=bearer("not-a-key")),  # wrong
        request(url, headers={"Authorization": PRIMARY_KEY}),  # no scheme
        request(url, headers={"Authorization": f"Basic {PRIMARY_KEY}"}),  # wrong scheme
        request(url, headers=bearer(PRIMARY_KEY[:-1])),  # almost right
    ]
    assert [r.status for r in refused] == [401] * 5
    # No hint of which part was wrong: every refusal has the same body.
    assert len({r.body for r in refused}) == 1
    assert request(url, headers=bearer(PRIMARY_KEY)).status == 200
    assert request(url, headers=bearer(SECONDARY_KEY)).status == 200
    assert blue.hits == 2

    # Regenerate the secondary key: the old one stops working, the primary goes on.
    new_secondary = "regenerated-secondary-key-0123456789"
    regenerated = router_config(
        [deployment("blue", [blue])],
        traffic={"blue": 100},
        keys=(PRIMARY_KEY, new_secondary),
    )
    assert _admin_post(router.url, regenerated, secret="wrong-admin") == 401
    assert request(f"{router.url}/-/config", method="GET", body=None).status == 401
    assert _admin_post(router.url, regenerated) == 200
    assert request(url, headers=bearer(SECONDARY_KEY)).status == 401
    assert request(url, headers=bearer(PRIMARY_KEY)).status == 200
    assert request(url, headers=bearer(new_secondary)).status == 200
    # The admin change is written back (0600) so that a restart keeps it.
    written = json.loads(router.config_path.read_text())
    assert router.config_path.stat().st_mode & 0o777 == 0o600
    assert len(written["key_hashes"]) == 2 and PRIMARY_KEY not in router.config_path.read_text()
    view = request(
        f"{router.url}/-/config", method="GET", headers=bearer(ADMIN_SECRET), body=None
    ).json()
    assert "key_hashes" not in view and view["traffic"] == {"blue": 100}


def test_invalid_admin_config_is_refused_and_nothing_changes(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    bad = router_config([deployment("blue", [blue])], traffic={"blue": 60})  # sums to 60
    assert _admin_post(router.url, bad) == 400
    assert request(f"{router.url}/score", headers=bearer(PRIMARY_KEY)).status == 200


def _token_config(blue: object, endpoint: str = "ep-test") -> dict[str, object]:
    doc = router_config([deployment("blue", [blue])], traffic={"blue": 100}, endpoint=endpoint)
    doc["auth_mode"] = "aml_token"
    doc["key_hashes"] = []
    doc["token_secret"] = base64.urlsafe_b64encode(TOKEN_SECRET).decode().rstrip("=")
    return doc


def test_token_matrix(backends: Backends, start_router) -> None:
    blue = backends.start("blue")
    router = start_router(_token_config(blue))
    url = f"{router.url}/score"
    now = time.time()
    valid = issue_token(TOKEN_SECRET, "ep-test", now=now, ttl_s=3600)
    assert valid["tokenType"] == "Bearer" and valid["expiryTimeUtc"] > now
    expired = issue_token(TOKEN_SECRET, "ep-test", now=now - 7200, ttl_s=3600)
    other_endpoint = issue_token(TOKEN_SECRET, "ep-other", now=now, ttl_s=3600)
    other_secret = issue_token(generate_token_secret(), "ep-test", now=now, ttl_s=3600)
    tampered = valid["accessToken"][:-2] + ("AA" if valid["accessToken"][-2:] != "AA" else "BB")
    assert request(url, headers=bearer(valid["accessToken"])).status == 200
    refused = [
        request(url),
        request(url, headers=bearer(expired["accessToken"])),
        request(url, headers=bearer(other_endpoint["accessToken"])),
        request(url, headers=bearer(other_secret["accessToken"])),
        request(url, headers=bearer(tampered)),
        request(url, headers=bearer(PRIMARY_KEY)),  # a key means nothing in aml_token mode
    ]
    assert [r.status for r in refused] == [401] * 6
    assert len({r.body for r in refused}) == 1
    assert blue.hits == 1
    # Reasons are kept for the operator (metrics), not told to the caller.
    text = router.metrics()
    for reason in ("expired", "wrong_endpoint", "bad_signature", "missing"):
        assert f'reason="{reason}"' in text


def test_logs_hold_no_key_token_or_body(backends: Backends, start_router) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    marker = b'{"secret_payload": "body-marker-7f3a"}'
    assert request(f"{router.url}/score", headers=bearer(PRIMARY_KEY), body=marker).status == 200
    request(f"{router.url}/score", headers=bearer("wrong-key-marker-99"), body=marker)
    assert http_get(f"{router.url}/-/ready")[0] == 200
    router.wait_for_event("request", count=2)
    log = "\n".join(router.lines)
    for secret in (PRIMARY_KEY, "wrong-key-marker-99", "body-marker-7f3a", ADMIN_SECRET):
        assert secret not in log
    access = router.events("request")
    assert {e["status"] for e in access} == {200, 401}
    assert all(e["request_id"] and "duration_ms" in e for e in access)
