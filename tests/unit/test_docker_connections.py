"""The Docker target's digests of connection values: keyed, of referenced values only."""

from __future__ import annotations

import hashlib

from specs_factory import deployment

from reconciler.targets.docker.connections import Connection, shown, value_digests

KEY_REF = "${{azureml://connections/openai/credentials/api-key}}"
URL_REF = "${{azureml://connections/openai/target}}"
OTHER_REF = "${{azureml://connections/search/credentials/token}}"
SECRET = "s3cr3t-Value-9f2c1"


def connections(api_key: str = SECRET, unused: str = "u1") -> dict[str, Connection]:
    openai = Connection(
        "openai", "https://x.test/", {"api-key": api_key, "unused": unused}, {"v": "1"}
    )
    return {"openai": openai, "search": Connection("search", None, {"token": "t"})}


SPEC = deployment(environment_variables=(("A", KEY_REF), ("U", URL_REF), ("S", OTHER_REF)))


def test_digests_are_per_connection_and_change_with_a_referenced_value_only() -> None:
    key = b"k" * 32
    before = value_digests(SPEC, connections(), key)
    assert sorted(before) == ["openai", "search"]
    assert value_digests(SPEC, connections(unused="u2"), key) == before
    after = value_digests(SPEC, connections(api_key="n3w"), key)
    assert after["openai"] != before["openai"] and after["search"] == before["search"]


def test_digests_are_keyed_never_a_plain_hash_of_the_value() -> None:
    one = value_digests(SPEC, connections(), b"a" * 32)["openai"]
    other = value_digests(SPEC, connections(), b"b" * 32)["openai"]
    assert one is not None and other is not None and one != other
    plain = {hashlib.sha256(text.encode()).hexdigest() for text in (SECRET, KEY_REF + SECRET)}
    assert one not in plain and SECRET not in one and SECRET not in shown(one)
    assert shown(one) == f"hmac-sha256:{one[:16]}"


def test_a_missing_value_has_no_digest() -> None:
    found = connections()
    del found["search"]
    assert value_digests(SPEC, found, b"k" * 32)["search"] is None
