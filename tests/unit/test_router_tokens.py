"""Keys and aml_token tokens: pure checks with the time passed in."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from reconciler.router.tokens import (
    TokenCheck,
    check_token,
    generate_key,
    generate_token_secret,
    hash_key,
    issue_token,
    key_matches,
    verify_token,
)

SECRET = b"s" * 32
NOW = 1_700_000_000.0


def test_keys_are_random_and_stored_as_sha256() -> None:
    first, second = generate_key(), generate_key()
    assert first != second and len(first) >= 40
    assert len(hash_key(first)) == 64 and first not in hash_key(first)
    stored = (hash_key(first), hash_key(second))
    assert key_matches(first, stored) and key_matches(second, stored)
    assert not key_matches(first + "x", stored)
    assert not key_matches("", stored)
    assert not key_matches(first, ())


def test_issue_has_azure_shape() -> None:
    token = issue_token(SECRET, "ep", now=NOW, ttl_s=3600)
    assert set(token) == {"accessToken", "tokenType", "expiryTimeUtc", "refreshAfterTimeUtc"}
    assert token["tokenType"] == "Bearer"
    assert token["expiryTimeUtc"] == int(NOW) + 3600
    assert token["refreshAfterTimeUtc"] == int(NOW) + 1800


def test_token_lifetime_and_audience() -> None:
    access = issue_token(SECRET, "ep", now=NOW, ttl_s=60)["accessToken"]
    assert verify_token(SECRET, access, endpoint="ep", now=NOW + 59.9)
    assert check_token(SECRET, access, endpoint="ep", now=NOW + 60) is TokenCheck.EXPIRED
    assert check_token(SECRET, access, endpoint="other", now=NOW) is TokenCheck.WRONG_ENDPOINT
    other = generate_token_secret()
    assert check_token(other, access, endpoint="ep", now=NOW) is TokenCheck.BAD_SIGNATURE


def test_a_forged_payload_fails_the_signature() -> None:
    access = issue_token(SECRET, "ep", now=NOW, ttl_s=60)["accessToken"]
    _, signature = access.split(".")
    forged = (
        base64.urlsafe_b64encode(json.dumps({"aud": "ep", "exp": 9_999_999_999, "iat": 0}).encode())
        .decode()
        .rstrip("=")
    )
    assert check_token(SECRET, f"{forged}.{signature}", endpoint="ep", now=NOW) is (
        TokenCheck.BAD_SIGNATURE
    )


@given(st.text(max_size=300))
def test_garbage_is_never_valid(text: str) -> None:
    assert not verify_token(SECRET, text, endpoint="ep", now=NOW)


def test_malformed_shapes() -> None:
    for text in ("", "a", "a.b.c", "." * 5000):
        assert check_token(SECRET, text, endpoint="ep", now=NOW) in (
            TokenCheck.MALFORMED,
            TokenCheck.BAD_SIGNATURE,
        )
