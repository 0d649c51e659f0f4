"""The router's configuration: one JSON document per endpoint, read at start and on change.

The reconciler writes this file (Docker: a bind-mounted file; Kubernetes: a Secret) and the
router reads it; the admin call `POST /-/config` takes the same document. It holds secrets
(key hashes, the token secret, the admin secret's hash), so it is written with mode 0600 and
never logged: `RouterConfig.__repr__` hides those fields.

Format (version 1); every field but `endpoint` and `deployments` has a default::

    {
      "version": 1,
      "endpoint": "my-endpoint",
      "auth_mode": "key",                       # "key" or "aml_token"
      "key_hashes": ["<sha256 hex of primary>", "<sha256 hex of secondary>"],
      "token_secret": "<base64url HMAC secret>", # aml_token mode only
      "admin_secret_hash": "<sha256 hex>",       # null: the admin call is off
      "traffic": {"blue": 90, "green": 10},
      "mirror_traffic": {"shadow": 20},
      "deployments": [
        {"name": "blue",
         "instances": ["10.0.0.5:5001", "10.0.0.6:5001"],
         "request_timeout_ms": 5000,
         "max_concurrent_requests_per_instance": 1,
         "max_queue_wait_ms": 500,
         "scoring_path": "/score",
         "liveness_path": "/",
         "swagger_path": "/swagger.json",
         "readiness_probe": {"port": 8000, "path": "/ready", "period": 10, "timeout": 2,
                             "success_threshold": 1, "failure_threshold": 30},
         "liveness_probe": {"port": 8001, "path": "/live", "period": 10, "timeout": 2,
                            "success_threshold": 1, "failure_threshold": 30}}
      ],
      "host": "0.0.0.0", "port": 8080, "metrics_port": 9090,
      "max_body_bytes": 16777216,
      "connect_timeout_ms": 1000,
      "access_log": true,
      "shadow_comparison": {"rtol": 1e-6, "atol": 1e-9, "max_body_bytes": 1048576}
    }

Keys are stored as the hex SHA-256 of the key text (`tokens.hash_key`): the router never
holds a key, only what it needs to check one. Only hashes of the *current* keys are listed,
so regenerating a key is a config change that drops the old hash. An `instances` entry is
`host:port` (an `http://` prefix is accepted and dropped; backends are plain HTTP on a
private network). Weights are integer percents; traffic sums to 0 or 100.

`readiness_probe` and `liveness_probe` (optional, and left out of the document when absent,
so a config without them reads in routers that predate them) make the router ask each
instance itself: GET `path` on the instance's host at `port` every `period` seconds, an
answer 200-399 within `timeout` seconds a success. A custom container gets them (Azure's
readiness_route and liveness_route with the deployment's probe settings); the inference
server is watched by its container's own health check instead. See `probes.py`.

`shadow_comparison` (optional, every key with a default; left out of the document while it
holds the defaults, so a config without it reads in routers that predate it and keeps its
digest) sets how the answers of mirrored requests are compared with the live ones
(`compare.py`): numbers agree when `|shadow - live| <= atol + rtol * |live|`, and bodies are
compared only when both are at most `max_body_bytes` (the live body is kept until the
shadow's answer comes, so this bounds the memory comparison takes).

`parse_config` and `dump_config` are pure; `load_config` only adds reading the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.router.compare import DEFAULT_ATOL, DEFAULT_RTOL

CONFIG_VERSION = 1
AUTH_MODES = ("key", "aml_token")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_INSTANCE = re.compile(r"^(?:http://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})/?$")


class ConfigError(ValueError):
    """The document is not a valid router configuration; the message names the field."""


@dataclass(frozen=True, slots=True)
class Probe:
    """An HTTP check the router runs against every instance of a deployment (seconds)."""

    port: int
    path: str
    period: int = 10
    timeout: int = 2
    success_threshold: int = 1
    failure_threshold: int = 30


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """How a shadow's answers are held against the live ones (see compare.py)."""

    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DeploymentRoute:
    """Where one deployment's instances listen and the request settings that bound them."""

    name: str
    instances: tuple[str, ...] = ()  # "host:port"
    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 500
    scoring_path: str = "/score"
    liveness_path: str = "/"
    swagger_path: str = "/swagger.json"
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None

    @property
    def max_in_flight(self) -> int:
        """Azure ML's admission limit: 2 x max_concurrent_requests_per_instance x instances."""
        return 2 * self.max_concurrent_requests_per_instance * len(self.instances)


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Everything the router of one endpoint needs; immutable, swapped whole on a change."""

    endpoint: str
    deployments: tuple[DeploymentRoute, ...] = ()
    auth_mode: str = "key"
    key_hashes: tuple[str, ...] = field(default=(), repr=False)
    token_secret: bytes = field(default=b"", repr=False)
    admin_secret_hash: str | None = field(default=None, repr=False)
    traffic: tuple[tuple[str, int], ...] = ()  # sorted (deployment, percent), no zeros
    mirror_traffic: tuple[tuple[str, int], ...] = ()
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 9090
    max_body_bytes: int = 16 * 1024 * 1024
    connect_timeout_ms: int = 1000
    access_log: bool = True
    shadow_comparison: ShadowComparison = ShadowComparison()

    def deployment(self, name: str) -> DeploymentRoute | None:
        for route in self.deployments:
            if route.name == name:
                return route
        return None

    def digest(self) -> str:
        """SHA-256 of the canonical document: equal configs have equal digests."""
        return hashlib.sha256(dump_config(self).encode()).hexdigest()


def _fail(field_name: str, message: str) -> ConfigError:
    return ConfigError(f"{field_name}: {message}")


def _int(doc: Mapping[str, Any], key: str, default: int, *, where: str, low: int, high: int) -> int:
    value = doc.get(key, default)
    # bool is an int in Python; `true` for a timeout is a typo, not 1 ms.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{where}{key}", "must be an integer")
    if not low <= value <= high:
        raise _fail(f"{where}{key}", f"must be between {low} and {high}")
    return value


def _path(doc: Mapping[str, Any], key: str, default: str, *, where: str) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in " \r\n"):
        raise _fail(f"{where}{key}", "must be an absolute URL path without spaces")
    return value


def _probe(doc: Mapping[str, Any], key: str, *, where: str) -> Probe | None:
    value = doc.get(key)
    if value is None:
        return None
    inner = f"{where}{key}."
    if not isinstance(value, Mapping):
        raise _fail(f"{where}{key}", "must be an object")
    unknown = sorted(set(value) - set(Probe.__dataclass_fields__))
    if unknown:
        raise _fail(f"{inner}{unknown[0]}", "unknown key")
    if "path" not in value or "port" not in value:
        raise _fail(f"{where}{key}", "needs a port and a path")
    return Probe(
        port=_int(value, "port", 0, where=inner, low=1, high=65535),
        path=_path(value, "path", "/", where=inner),
        period=_int(value, "period", 10, where=inner, low=1, high=3600),
        timeout=_int(value, "timeout", 2, where=inner, low=1, high=3600),
        success_threshold=_int(value, "success_threshold", 1, where=inner, low=1, high=1000),
        failure_threshold=_int(value, "failure_threshold", 30, where=inner, low=1, high=1000),
    )


def _tolerance(doc: Mapping[str, Any], key: str, default: float, *, where: str) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{where}{key}", "must be a number")
    if not math.isfinite(value) or value < 0:
        raise _fail(f"{where}{key}", "must be a finite number >= 0")
    return float(value)


def _shadow_comparison(doc: Any) -> ShadowComparison:
    if doc is None:
        return ShadowComparison()
    if not isinstance(doc, Mapping):
        raise _fail("shadow_comparison", "must be an object")
    unknown = sorted(set(doc) - set(ShadowComparison.__dataclass_fields__))
    if unknown:
        raise _fail(f"shadow_comparison.{unknown[0]}", "unknown key")
    where = "shadow_comparison."
    default = ShadowComparison()
    return ShadowComparison(
        rtol=_tolerance(doc, "rtol", default.rtol, where=where),
        atol=_tolerance(doc, "atol", default.atol, where=where),
        max_body_bytes=_int(
            doc, "max_body_bytes", default.max_body_bytes, where=where, low=1, high=2**31
        ),
    )


def _probe_dict(probe: Probe) -> dict[str, Any]:
    return {
        "port": probe.port,
        "path": probe.path,
        "period": probe.period,
        "timeout": probe.timeout,
        "success_threshold": probe.success_threshold,
        "failure_threshold": probe.failure_threshold,
    }


def normalise_instance(text: str) -> str:
    """`http://host:port/` or `host:port` -> `host:port`; ConfigError when neither."""
    match = _INSTANCE.match(text.strip()) if isinstance(text, str) else None
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(f"instance {text!r}: expected host:port")
    return f"{match.group(1)}:{int(match.group(2))}"


def _deployment(doc: Any, index: int) -> DeploymentRoute:
    where = f"deployments[{index}]."
    if not isinstance(doc, Mapping):
        raise _fail(f"deployments[{index}]", "must be an object")
    known = {f.name for f in DeploymentRoute.__dataclass_fields__.values()}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise _fail(f"{where}{unknown[0]}", "unknown key")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(f"{where}name", "must be a deployment name")
    instances = doc.get("instances", [])
    if not isinstance(instances, list):
        raise _fail(f"{where}instances", "must be a list of host:port")
    try:
        normalised = tuple(normalise_instance(item) for item in instances)
    except ConfigError as error:
        raise _fail(f"{where}instances", str(error)) from None
    if len(set(normalised)) != len(normalised):
        raise _fail(f"{where}instances", "duplicate instance")
    return DeploymentRoute(
        name=name,
        instances=normalised,
        request_timeout_ms=_int(doc, "request_timeout_ms", 5000, where=where, low=1, high=180000),
        max_concurrent_requests_per_instance=_int(
            doc, "max_concurrent_requests_per_instance", 1, where=where, low=1, high=1000
        ),
        max_queue_wait_ms=_int(doc, "max_queue_wait_ms", 500, where=where, low=0, high=180000),
        scoring_path=_path(doc, "scoring_path", "/score", where=where),
        liveness_path=_path(doc, "liveness_path", "/", where=where),
        swagger_path=_path(doc, "swagger_path", "/swagger.json", where=where),
        readiness_probe=_probe(doc, "readiness_probe", where=where),
        liveness_probe=_probe(doc, "liveness_probe", where=where),
    )


def _weights(doc: Any, key: str, names: set[str]) -> tuple[tuple[str, int], ...]:
    if doc is None:
        return ()
    if not isinstance(doc, Mapping):
        raise _fail(key, "must map deployment names to percents")
    pairs: list[tuple[str, int]] = []
    for name, percent in doc.items():
        if name not in names:
            raise _fail(f"{key}.{name}", "names no deployment of this config")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise _fail(f"{key}.{name}", "must be an integer percent 0..100")
        if percent:
            pairs.append((str(name), percent))
    return tuple(sorted(pairs))


def _hash_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise _fail(key, "must be a list of sha256 hex digests")
    if len(value) > 2 or not all(_HEX64.match(h) for h in value):
        raise _fail(key, "at most two lowercase sha256 hex digests (primary, secondary)")
    return tuple(value)


def _secret(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _fail("token_secret", "must be base64url text")
    try:
        secret = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _fail("token_secret", "must be base64url text") from None
    if len(secret) < 16:
        raise _fail("token_secret", "must hold at least 16 bytes")
    return secret


def config_from_dict(doc: Any) -> RouterConfig:
    """Validate a decoded JSON document; every error names its field."""
    if not isinstance(doc, Mapping):
        raise ConfigError("config: must be a JSON object")
    known = set(RouterConfig.__dataclass_fields__) | {"version"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise _fail(unknown[0], "unknown key")
    if doc.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        raise _fail("version", f"only version {CONFIG_VERSION} is understood")
    endpoint = doc.get("endpoint")
    if not isinstance(endpoint, str) or not _NAME.match(endpoint):
        raise _fail("endpoint", "must be an endpoint name")
    auth_mode = doc.get("auth_mode", "key")
    if auth_mode not in AUTH_MODES:
        # aad_token needs Microsoft Entra; validation refuses it before a router is made.
        raise _fail("auth_mode", f"must be one of {', '.join(AUTH_MODES)}")
    raw_deployments = doc.get("deployments", [])
    if not isinstance(raw_deployments, list):
        raise _fail("deployments", "must be a list")
    deployments = tuple(_deployment(d, i) for i, d in enumerate(raw_deployments))
    names = [d.name for d in deployments]
    if len(set(names)) != len(names):
        raise _fail("deployments", "deployment names must be unique")
    traffic = _weights(doc.get("traffic"), "traffic", set(names))
    total = sum(p for _, p in traffic)
    if total not in (0, 100):
        raise _fail("traffic", f"percents sum to {total}; they must sum to 0 or 100")
    mirror = _weights(doc.get("mirror_traffic"), "mirror_traffic", set(names))
    if len(mirror) > 1 or any(p > 50 for _, p in mirror):
        raise _fail("mirror_traffic", "at most one deployment, at most 50 percent")
    if any(dict(traffic).get(name) for name, _ in mirror):
        raise _fail("mirror_traffic", "the mirrored deployment must have no live traffic")
    key_hashes = _hash_list(doc.get("key_hashes", []), "key_hashes")
    token_secret = b""
    if auth_mode == "key" and not key_hashes:
        raise _fail("key_hashes", "key mode needs at least one key hash")
    if auth_mode == "aml_token":
        token_secret = _secret(doc.get("token_secret"))
    admin = doc.get("admin_secret_hash")
    if admin is not None and (not isinstance(admin, str) or not _HEX64.match(admin)):
        raise _fail("admin_secret_hash", "must be a lowercase sha256 hex digest or null")
    host = doc.get("host", "0.0.0.0")
    if not isinstance(host, str) or not host:
        raise _fail("host", "must be an address")
    access_log = doc.get("access_log", True)
    if not isinstance(access_log, bool):
        raise _fail("access_log", "must be true or false")
    return RouterConfig(
        endpoint=endpoint,
        deployments=deployments,
        auth_mode=auth_mode,
        key_hashes=key_hashes,
        token_secret=token_secret,
        admin_secret_hash=admin,
        traffic=traffic,
        mirror_traffic=mirror,
        host=host,
        port=_int(doc, "port", 8080, where="", low=0, high=65535),
        metrics_port=_int(doc, "metrics_port", 9090, where="", low=0, high=65535),
        max_body_bytes=_int(doc, "max_body_bytes", 16 * 1024 * 1024, where="", low=1, high=2**31),
        connect_timeout_ms=_int(doc, "connect_timeout_ms", 1000, where="", low=1, high=60000),
        access_log=access_log,
        shadow_comparison=_shadow_comparison(doc.get("shadow_comparison")),
    )


def parse_config(text: str | bytes) -> RouterConfig:
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        # RecursionError: nested deeper than json parses (spoiled by hand).
        raise ConfigError(f"config: not JSON ({error.__class__.__name__})") from None
    return config_from_dict(doc)


def config_to_dict(cfg: RouterConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": CONFIG_VERSION,
        "endpoint": cfg.endpoint,
        "auth_mode": cfg.auth_mode,
        "key_hashes": list(cfg.key_hashes),
        "admin_secret_hash": cfg.admin_secret_hash,
        "traffic": dict(cfg.traffic),
        "mirror_traffic": dict(cfg.mirror_traffic),
        "deployments": [_deployment_dict(d) for d in cfg.deployments],
        "host": cfg.host,
        "port": cfg.port,
        "metrics_port": cfg.metrics_port,
        "max_body_bytes": cfg.max_body_bytes,
        "connect_timeout_ms": cfg.connect_timeout_ms,
        "access_log": cfg.access_log,
    }
    # Only when not the defaults: a router that predates it refuses keys it does not know,
    # and an old config's digest stays what it was.
    if cfg.shadow_comparison != ShadowComparison():
        comparison = cfg.shadow_comparison
        doc["shadow_comparison"] = {
            "rtol": comparison.rtol,
            "atol": comparison.atol,
            "max_body_bytes": comparison.max_body_bytes,
        }
    if cfg.auth_mode == "aml_token":
        doc["token_secret"] = base64.urlsafe_b64encode(cfg.token_secret).decode().rstrip("=")
    return doc


def _deployment_dict(route: DeploymentRoute) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": route.name,
        "instances": list(route.instances),
        "request_timeout_ms": route.request_timeout_ms,
        "max_concurrent_requests_per_instance": route.max_concurrent_requests_per_instance,
        "max_queue_wait_ms": route.max_queue_wait_ms,
        "scoring_path": route.scoring_path,
        "liveness_path": route.liveness_path,
        "swagger_path": route.swagger_path,
    }
    # Only when set: a router that predates probes refuses keys it does not know.
    if route.readiness_probe is not None:
        doc["readiness_probe"] = _probe_dict(route.readiness_probe)
    if route.liveness_probe is not None:
        doc["liveness_probe"] = _probe_dict(route.liveness_probe)
    return doc


def dump_config(cfg: RouterConfig) -> str:
    """Canonical JSON (sorted keys, 2-space indent); `parse_config` reads it back equal."""
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=True) + "\n"


def public_view(cfg: RouterConfig) -> dict[str, Any]:
    """What may be shown or logged: the config without key hashes or secrets."""
    doc = config_to_dict(cfg)
    for secret_field in ("key_hashes", "token_secret", "admin_secret_hash"):
        doc.pop(secret_field, None)
    doc["digest"] = cfg.digest()
    return doc


def load_config(path: str | Path) -> RouterConfig:
    """Read and validate a config file; ConfigError (naming the file) when it is wrong."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return parse_config(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
