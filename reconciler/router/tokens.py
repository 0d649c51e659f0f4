"""Endpoint credentials: keys (stored hashed) and aml_token tokens (HMAC-SHA256, with expiry).

Pure helpers, no I/O and no clock: callers pass `now` (Unix seconds). The reconciler's
`reconcile credentials` / `regenerate-key` commands use `generate_key`, `hash_key`,
`generate_token_secret` and `issue_token`; the router uses `key_bytes_match` (`key_matches`
on raw bytes) and `check_token`.

Keys. `generate_key()` makes a random URL-safe key; the router's config stores only
`hash_key(key)`, the hex SHA-256 of its UTF-8 text. Keys are long random strings, so a plain
(unsalted) hash is enough: nothing can be guessed from it. Checking hashes the presented key
and compares it with *every* stored hash with `hmac.compare_digest`, so the time taken does
not depend on which key matched or how much of it was right.

Tokens (aml_token mode). `accessToken` = `base64url(payload) "." base64url(signature)`,
unpadded, where payload is compact JSON `{"aud": ENDPOINT, "exp": UNIX_S, "iat": UNIX_S}` and
signature = HMAC-SHA256(token_secret, base64url(payload)). The token secret is per endpoint,
so a token names and fits one endpoint only; `aud` is also checked so that a token of one
endpoint is refused by another even if two endpoints were given the same secret. A token is
valid while `now < exp`. `issue_token` returns Azure ML's shape::

    {"accessToken": "...", "tokenType": "Bearer",
     "expiryTimeUtc": 1700003600, "refreshAfterTimeUtc": 1700001800}

(times are integer Unix seconds, as Azure's REST API gives them; refresh at half-life).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from typing import Any

_TOKEN_MAX_LEN = 4096  # far above a real token; refuses absurd headers before any work


def generate_key() -> str:
    """A new random endpoint key (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """What the router's config stores for a key (or for the admin secret)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_matches(presented: str, stored_hashes: Iterable[str]) -> bool:
    """Whether `presented` is one of the keys; constant time in the key's content."""
    return key_bytes_match(
        presented.encode("utf-8", "surrogateescape"), key_digests(tuple(stored_hashes))
    )


def key_digests(stored_hashes: Iterable[str]) -> tuple[bytes, ...]:
    """The stored hex hashes as raw digests, for `key_bytes_match` (once per config)."""
    return tuple(bytes.fromhex(stored) for stored in stored_hashes)


def key_bytes_match(presented: bytes, stored_digests: Iterable[bytes]) -> bool:
    """`key_matches` for a key as raw bytes (a header value) and hashes as raw digests.

    The router's hot path: no decoding and encoding of the key, no hex digits. Same result
    as `key_matches` on the key's UTF-8 (surrogateescape) text.
    """
    digest = hashlib.sha256(presented).digest()
    matched = False
    for stored in stored_digests:
        # No early exit: every stored hash is compared whatever the outcome.
        matched |= hmac.compare_digest(digest, stored)
    return matched


def generate_token_secret() -> bytes:
    """A new HMAC secret for an endpoint's aml_token tokens."""
    return secrets.token_bytes(32)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signed_part: str) -> str:
    return _b64encode(hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest())


def issue_token(secret: bytes, endpoint: str, *, now: float, ttl_s: int) -> dict[str, Any]:
    """A token for `endpoint`, valid `ttl_s` seconds from `now`, in Azure ML's shape."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    issued = int(now)
    expiry = issued + ttl_s
    payload = json.dumps(
        {"aud": endpoint, "exp": expiry, "iat": issued}, separators=(",", ":"), sort_keys=True
    )
    signed_part = _b64encode(payload.encode())
    return {
        "accessToken": f"{signed_part}.{_sign(secret, signed_part)}",
        "tokenType": "Bearer",
        "expiryTimeUtc": expiry,
        "refreshAfterTimeUtc": issued + ttl_s // 2,
    }


class TokenCheck(enum.Enum):
    """Why a token was accepted or refused: for logs and metrics, never for the caller."""

    VALID = "valid"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_ENDPOINT = "wrong_endpoint"
    EXPIRED = "expired"


def check_token(secret: bytes, token: str, *, endpoint: str, now: float) -> TokenCheck:
    """Check signature first (so nothing unsigned is parsed as JSON), then audience, expiry."""
    if len(token) > _TOKEN_MAX_LEN or token.count(".") != 1:
        return TokenCheck.MALFORMED
    signed_part, signature = token.split(".")
    try:
        expected = _sign(secret, signed_part)
    except UnicodeEncodeError:
        return TokenCheck.MALFORMED
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogateescape")):
        return TokenCheck.BAD_SIGNATURE
    try:
        payload = json.loads(_b64decode(signed_part))
    except (binascii.Error, ValueError):
        return TokenCheck.MALFORMED
    if not isinstance(payload, dict):
        return TokenCheck.MALFORMED
    expiry = payload.get("exp")
    if isinstance(expiry, bool) or not isinstance(expiry, int):
        return TokenCheck.MALFORMED
    if payload.get("aud") != endpoint:
        return TokenCheck.WRONG_ENDPOINT
    if now >= expiry:
        return TokenCheck.EXPIRED
    return TokenCheck.VALID


def verify_token(secret: bytes, token: str, *, endpoint: str, now: float) -> bool:
    """Whether `token` is a valid, unexpired token of `endpoint`."""
    return check_token(secret, token, endpoint=endpoint, now=now) is TokenCheck.VALID
