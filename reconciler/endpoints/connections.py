"""A connection: the secrets and settings that deployments' environment variables reference.

What a connection is, and the rules of its name and keys, are the same on every target;
where the values are kept is the target's (Docker: a volume, connections.py there;
Kubernetes: Secrets). Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.model.secrets import CREDENTIALS, KEY_PATTERN, METADATA, NAME_PATTERN, SecretRef

__all__ = ["Connection", "check_connection"]

_NAME = re.compile(NAME_PATTERN)
_KEY = re.compile(KEY_PATTERN)


@dataclass(frozen=True)
class Connection:
    """One connection: a target URL, credentials (secret) and metadata (not secret)."""

    name: str
    target: str | None = None
    credentials: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Connection({self.name!r}, credentials={sorted(self.credentials)})"

    def value(self, ref: SecretRef) -> str | None:
        if ref.kind == CREDENTIALS:
            return self.credentials.get(ref.key or "")
        if ref.kind == METADATA:
            return self.metadata.get(ref.key or "")
        return self.target

    def merged(self, other: Connection) -> Connection:
        """This connection with what `other` gives replacing what it had."""
        return Connection(
            self.name,
            other.target if other.target is not None else self.target,
            {**self.credentials, **other.credentials},
            {**self.metadata, **other.metadata},
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "target": self.target,
                "credentials": dict(self.credentials),
                "metadata": dict(self.metadata),
            },
            sort_keys=True,
        ).encode()


def check_connection(conn: Connection) -> None:
    """ValueError naming what is wrong (a name or key, never a value)."""
    if not _NAME.fullmatch(conn.name):
        raise ValueError(
            f"connection name {conn.name!r} is not valid: letters, digits, '_', '.' and '-', "
            "at most 128, not starting with '.' or '-'"
        )
    for kind, table in (("credential", conn.credentials), ("metadata", conn.metadata)):
        for key, value in table.items():
            if not _KEY.fullmatch(key):
                raise ValueError(f"{kind} key {key!r} is not valid: letters, digits, '_', '.', '-'")
            if "\0" in value:
                raise ValueError(f"{kind} {key} holds a NUL byte, which no environment can")
    if conn.target is not None and "\0" in conn.target:
        raise ValueError("the target URL holds a NUL byte")
