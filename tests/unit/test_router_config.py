"""Router config: parsing, validation errors naming the field, canonical dump, no secrets shown."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.router.config import (
    ConfigError,
    DeploymentRoute,
    Probe,
    RouterConfig,
    ShadowComparison,
    dump_config,
    load_config,
    normalise_instance,
    parse_config,
    public_view,
)
from reconciler.router.tokens import generate_token_secret, hash_key


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "endpoint": "my-endpoint",
        "key_hashes": [hash_key("a"), hash_key("b")],
        "traffic": {"blue": 90, "green": 10},
        "deployments": [
            {"name": "blue", "instances": ["10.0.0.1:5001", "http://10.0.0.2:5001/"]},
            {"name": "green", "instances": ["green-0:5001"], "request_timeout_ms": 9000},
        ],
    }
    doc.update(overrides)
    return doc


def test_defaults_follow_azure_request_settings() -> None:
    config = parse_config(json.dumps(_doc()))
    blue = config.deployment("blue")
    assert blue == DeploymentRoute(
        name="blue",
        instances=("10.0.0.1:5001", "10.0.0.2:5001"),
        request_timeout_ms=5000,
        max_concurrent_requests_per_instance=1,
        max_queue_wait_ms=500,
    )
    assert blue.max_in_flight == 4  # 2 x 1 x 2 instances
    assert config.traffic == (("blue", 90), ("green", 10))
    assert (config.port, config.metrics_port, config.auth_mode) == (8080, 9090, "key")


def test_dump_is_canonical_and_round_trips() -> None:
    config = parse_config(json.dumps(_doc(traffic={"blue": 100}, mirror_traffic={"green": 30})))
    text = dump_config(config)
    assert parse_config(text) == config
    assert dump_config(parse_config(text)) == text
    assert config.digest() == parse_config(text).digest()


def test_token_mode_round_trips_its_secret() -> None:
    secret = generate_token_secret()
    encoded = base64.urlsafe_b64encode(secret).decode().rstrip("=")
    doc = _doc(auth_mode="aml_token", key_hashes=[], token_secret=encoded)
    config = parse_config(json.dumps(doc))
    assert config.token_secret == secret
    assert parse_config(dump_config(config)) == config


def test_secrets_never_in_repr_or_public_view() -> None:
    config = parse_config(json.dumps(_doc(admin_secret_hash=hash_key("admin"))))
    shown = repr(config) + json.dumps(public_view(config))
    for secret in (hash_key("a"), hash_key("b"), hash_key("admin")):
        assert secret not in shown
    assert public_view(config)["digest"] == config.digest()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"traffic": {"blue": 60}}, "traffic"),
        ({"traffic": {"purple": 100}}, "traffic.purple"),
        ({"traffic": {"blue": True, "green": 0}}, "traffic.blue"),
        ({"mirror_traffic": {"green": 20}}, "mirror_traffic"),  # green has live traffic
        ({"mirror_traffic": {"blue": 0, "green": 0}}, None),
        ({"auth_mode": "aad_token"}, "auth_mode"),
        ({"key_hashes": []}, "key_hashes"),
        ({"key_hashes": ["plain-text-key"]}, "key_hashes"),
        ({"auth_mode": "aml_token", "token_secret": "c2hvcnQ"}, "token_secret"),
        ({"endpoint": "1-bad"}, "endpoint"),
        ({"instance_cout": 3}, "instance_cout"),
        ({"admin_secret_hash": "nope"}, "admin_secret_hash"),
        ({"version": 2}, "version"),
        ({"port": 70000}, "port"),
        ({"shadow_comparison": [1e-6]}, "shadow_comparison"),
        ({"shadow_comparison": {"rtol": "1e-6"}}, "shadow_comparison.rtol"),
        ({"shadow_comparison": {"rtol": -1e-6}}, "shadow_comparison.rtol"),
        ({"shadow_comparison": {"atol": True}}, "shadow_comparison.atol"),
        ({"shadow_comparison": {"atol": float("inf")}}, "shadow_comparison.atol"),
        ({"shadow_comparison": {"atol": float("nan")}}, "shadow_comparison.atol"),
        ({"shadow_comparison": {"max_body_bytes": 0}}, "shadow_comparison.max_body_bytes"),
        ({"shadow_comparison": {"max_body_bytes": 1.5}}, "shadow_comparison.max_body_bytes"),
        ({"shadow_comparison": {"rtl": 1e-3}}, "shadow_comparison.rtl"),
        ({"shadow_comparison": {}}, None),
        ({"shadow_comparison": None}, None),
        ({"shadow_comparison": {"rtol": 0, "atol": 0}}, None),
    ],
)
def test_invalid_documents_name_the_field(overrides: dict[str, Any], field: str | None) -> None:
    if field is None:
        parse_config(json.dumps(_doc(**overrides)))
        return
    with pytest.raises(ConfigError, match=rf"^{field.replace('.', '[.]')}"):
        parse_config(json.dumps(_doc(**overrides)))


@pytest.mark.parametrize(
    ("deployment", "field"),
    [
        ({"name": "blue", "instances": ["nohost"]}, "deployments[0].instances"),
        ({"name": "blue", "instances": ["a:1", "a:1"]}, "deployments[0].instances"),
        ({"name": "blue", "request_timeout_ms": 0}, "deployments[0].request_timeout_ms"),
        ({"name": "blue", "request_timeout_ms": 180001}, "deployments[0].request_timeout_ms"),
        ({"name": "blue", "scoring_path": "score"}, "deployments[0].scoring_path"),
        ({"name": "blue", "replicas": 2}, "deployments[0].replicas"),
        ({"name": "blue", "readiness_probe": {"path": "/r"}}, "deployments[0].readiness_probe"),
        (
            {"name": "blue", "liveness_probe": {"port": 0, "path": "/l"}},
            "deployments[0].liveness_probe.port",
        ),
        (
            {"name": "blue", "liveness_probe": {"port": 80, "path": "l"}},
            "deployments[0].liveness_probe.path",
        ),
        (
            {"name": "blue", "readiness_probe": {"port": 80, "path": "/r", "period": 0}},
            "deployments[0].readiness_probe.period",
        ),
        (
            {"name": "blue", "readiness_probe": {"port": 80, "path": "/r", "delay": 1}},
            "deployments[0].readiness_probe.delay",
        ),
    ],
)
def test_invalid_deployments_name_the_field(deployment: dict[str, Any], field: str) -> None:
    doc = _doc(traffic={}, deployments=[deployment])
    with pytest.raises(ConfigError) as raised:
        parse_config(json.dumps(doc))
    assert str(raised.value).startswith(field)


def test_instances_are_normalised() -> None:
    assert normalise_instance("http://svc.ns:5001/") == "svc.ns:5001"
    assert normalise_instance("[::1]:80") == "[::1]:80"
    with pytest.raises(ConfigError):
        normalise_instance("https://svc:443")


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"router\.json"):
        load_config(path)
    path.write_text(json.dumps(_doc()))
    assert isinstance(load_config(path), RouterConfig)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_probes_round_trip_and_are_left_out_when_absent() -> None:
    """A config without probes dumps as before: a router that predates them reads it."""
    plain = dump_config(parse_config(json.dumps(_doc())))
    assert "probe" not in plain
    probed = _doc(
        traffic={"blue": 100},
        deployments=[
            {
                "name": "blue",
                "instances": ["blue-0:8000"],
                "readiness_probe": {"port": 8000, "path": "/ready", "period": 3},
                "liveness_probe": {
                    "port": 8001,
                    "path": "/live",
                    "timeout": 5,
                    "failure_threshold": 4,
                },
            }
        ],
    )
    config = parse_config(json.dumps(probed))
    route = config.deployment("blue")
    assert route is not None
    assert route.readiness_probe == Probe(port=8000, path="/ready", period=3)
    assert route.liveness_probe == Probe(port=8001, path="/live", timeout=5, failure_threshold=4)
    text = dump_config(config)
    assert parse_config(text) == config
    assert json.loads(text)["deployments"][0]["readiness_probe"] == {
        "port": 8000,
        "path": "/ready",
        "period": 3,
        "timeout": 2,
        "success_threshold": 1,
        "failure_threshold": 30,
    }


def test_shadow_comparison_defaults_and_is_left_out_while_default() -> None:
    """Old configs stay valid with unchanged digests; routers that predate the block read
    the dump of a config that does not set it."""
    plain = parse_config(json.dumps(_doc()))
    assert plain.shadow_comparison == ShadowComparison(
        rtol=1e-6, atol=1e-9, max_body_bytes=1024 * 1024
    )
    assert "shadow_comparison" not in dump_config(plain)
    explicit_defaults = parse_config(
        json.dumps(_doc(shadow_comparison={"rtol": 1e-6, "atol": 1e-9}))
    )
    assert explicit_defaults == plain
    assert explicit_defaults.digest() == plain.digest()


def test_shadow_comparison_round_trips() -> None:
    config = parse_config(
        json.dumps(_doc(shadow_comparison={"rtol": 1e-3, "atol": 0, "max_body_bytes": 4096}))
    )
    assert config.shadow_comparison == ShadowComparison(rtol=1e-3, atol=0.0, max_body_bytes=4096)
    text = dump_config(config)
    assert json.loads(text)["shadow_comparison"] == {
        "rtol": 1e-3,
        "atol": 0.0,
        "max_body_bytes": 4096,
    }
    assert parse_config(text) == config
    assert config.digest() != parse_config(json.dumps(_doc())).digest()


def test_the_admin_call_both_targets_make_is_one_the_router_serves() -> None:
    """reconciler.router.admin: the POST that gives a running router its config, shared by
    the Docker and Kubernetes targets (issue 12: the push is shared plumbing)."""
    from reconciler.router import server
    from reconciler.router.admin import CONFIG_DIGEST_PATH, CONFIG_PATH, config_post

    config = parse_config(json.dumps(_doc()))
    url, body, headers = config_post("http://10.1.2.3:8080/", config, "admin-s3cret")
    assert url == "http://10.1.2.3:8080/-/config"
    assert parse_config(body) == config
    assert headers == {
        "Authorization": "Bearer admin-s3cret",
        "Content-Type": "application/json",
    }
    assert CONFIG_PATH in server._ADMIN_PATHS
    assert CONFIG_DIGEST_PATH == "/-/config-digest"
