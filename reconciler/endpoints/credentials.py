"""Endpoint credentials: keys, token secret, admin secret, ports.

Both targets keep one such document per endpoint: the Docker target in the endpoint's state
volume (targets/docker/state.py, mode 0600), the Kubernetes target in a Secret. Keys never
go into labels, status, logs or the router's config (which holds only their hashes).
Regenerating one key leaves the other valid.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, replace

from reconciler.router.tokens import generate_key, generate_token_secret


@dataclass(frozen=True)
class EndpointCredentials:
    primary_key: str
    secondary_key: str
    token_secret: str  # base64url
    admin_secret: str
    port: int
    metrics_port: int

    def __repr__(self) -> str:  # never print a secret by accident
        return f"EndpointCredentials(port={self.port}, metrics_port={self.metrics_port})"

    @property
    def token_secret_bytes(self) -> bytes:
        text = self.token_secret
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    def regenerated(self, which: str) -> EndpointCredentials:
        if which == "primary":
            return replace(self, primary_key=generate_key())
        if which == "secondary":
            return replace(self, secondary_key=generate_key())
        raise ValueError(f"key must be primary or secondary, not {which!r}")


def credentials_from_json(text: bytes | str) -> EndpointCredentials:
    """Parse the stored document; ValueError naming what is wrong (never a secret)."""
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: nested deeper than json parses (spoiled by hand).
        raise ValueError(f"not JSON ({exc.__class__.__name__}, truncated or corrupt)") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    texts = ("primary_key", "secondary_key", "token_secret", "admin_secret")
    for name in texts:
        if not isinstance(data.get(name), str) or not data[name]:
            raise ValueError(f"{name} missing")
    for name in ("port", "metrics_port"):
        if not isinstance(data.get(name), int) or not 0 < data[name] < 65536:
            raise ValueError(f"{name} missing or not a port")
    creds = EndpointCredentials(**{n: data[n] for n in (*texts, "port", "metrics_port")})
    try:
        secret = creds.token_secret_bytes
    except ValueError:
        raise ValueError("token_secret is not base64url") from None
    if len(secret) < 16:
        raise ValueError("token_secret too short")
    return creds


def credentials_to_json(creds: EndpointCredentials) -> bytes:
    return json.dumps(asdict(creds), indent=2).encode()


def new_credentials(*, port: int, metrics_port: int) -> EndpointCredentials:
    return EndpointCredentials(
        primary_key=generate_key(),
        secondary_key=generate_key(),
        token_secret=base64.urlsafe_b64encode(generate_token_secret()).decode().rstrip("="),
        admin_secret=generate_key(),
        port=port,
        metrics_port=metrics_port,
    )
