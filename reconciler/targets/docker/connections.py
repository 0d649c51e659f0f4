"""Connections of the Docker target: the secrets that environment variables reference.

A deployment's variable may be `${{azureml://connections/NAME/credentials/KEY}}` (or
`.../metadata/KEY`, `.../target`: reconciler.model.secrets). The values live with the
target, never in git: in one Docker volume per target, `rcl-TARGET-connections`
(labels reconciler.managed-by, reconciler.target, reconciler.role=connections), one file
per connection, mode 0600:

    connections/NAME.json   {"target": URL or null, "credentials": {KEY: VALUE},
                             "metadata": {KEY: VALUE}}
    digest-key              32 random bytes (hex): the key of the values' digests

As with an endpoint's state volume (state.py), a holder container of the same name that
never runs mounts the volume at state.MOUNT: the handle for Docker's archive API and a user
of the volume, so Docker will not remove it. The archive API cannot delete a file, so a
deleted connection is an empty file, which reads as absent.

Resolved values go into an instance's environment and nowhere else: not into labels (an
instance's carry the spec, which holds the reference), logs, status, plans, or the router.
An instance's label `reconciler.connections` records, per connection, a keyed digest of the
values it was started with: HMAC-SHA256 under the target's own random key (digest-key,
made with the first connection), never a plain hash, which anyone could test guesses of a
short secret against. Observe compares it with the digest of the values held now, so a
changed connection shows as a change of the deployment and is rolled like any other (as
Kubernetes rolls a pod template whose secret-hash annotation changed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import docker.errors

from reconciler.endpoints.connections import Connection, check_connection
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.errors import ErrorCode
from reconciler.model.secrets import (
    CREDENTIALS,
    METADATA,
    NAME_PATTERN,
    SecretRef,
    variables,
)
from reconciler.model.specs import DeploymentSpec
from reconciler.targets.base import TargetError, TargetUnavailable
from reconciler.targets.docker.state import MOUNT, StateUnreadable, read_files, write_files

L = "reconciler."
MANAGED = f"{L}managed-by"
MANAGER = "ml-endpoint-reconciler"
ROLE = "connections"
FOLDER = "connections"
KEY_FILE = "digest-key"
# The instance label of the values' digests, and how long a digest is shown (16 hex digits:
# 64 bits tell two values apart; the label keeps all 64).
DIGESTS_LABEL = f"{L}connections"
SHOWN_HEX = 16
_NAME = re.compile(NAME_PATTERN)


def _connection_from_json(name: str, content: bytes) -> Connection | None:
    if not content.strip():
        return None  # deleted
    try:
        data = json.loads(content)
    except ValueError:
        raise StateUnreadable(f"connection {name}: not JSON (truncated or corrupt)") from None
    if not isinstance(data, dict):
        raise StateUnreadable(f"connection {name}: not a JSON object")
    target = data.get("target")
    tables: list[dict[str, str]] = []
    for part in ("credentials", "metadata"):
        table = data.get(part) or {}
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in table.items()
        ):
            raise StateUnreadable(f"connection {name}: {part} is not a table of texts")
        tables.append(table)
    if target is not None and not isinstance(target, str):
        raise StateUnreadable(f"connection {name}: target is not a text")
    return Connection(name, target, tables[0], tables[1])


def value_digests(
    spec: DeploymentSpec, found: Mapping[str, Connection], key: bytes
) -> dict[str, str | None]:
    """Per connection `spec` references, the HMAC-SHA256 (hex) under `key` of the values
    it takes from it (its references and their values, canonical JSON); None when one
    of them is missing. Only referenced values count: a change of a key no variable
    names rolls nothing."""
    taken: dict[str, list[tuple[str, str | None]]] = {}
    for _, ref in variables(spec):
        taken.setdefault(ref.connection, []).append((ref.text, _value(found, ref)))
    digests: dict[str, str | None] = {}
    for name, pairs in sorted(taken.items()):
        if any(value is None for _, value in pairs):
            digests[name] = None
            continue
        message = json.dumps(sorted(set(pairs)), separators=(",", ":")).encode()
        digests[name] = hmac.new(key, message, hashlib.sha256).hexdigest()
    return digests


def shown(digest: str) -> str:
    """A keyed digest as plans and status show it."""
    return f"hmac-sha256:{digest[:SHOWN_HEX]}"


def _safe_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)


class ConnectionStore:
    """The connections of one Docker target, in its `rcl-TARGET-connections` volume.

    image names (or gives, when called) the image of the holder container, needed only
    the first time a connection is written.
    """

    def __init__(self, client: Any, target_name: str, image: str | Callable[[], str]) -> None:
        self.client = client
        self.target_name = target_name
        self.image = image
        self.name = f"rcl-{_safe_name(target_name)}-connections"

    def _labels(self) -> dict[str, str]:
        return {MANAGED: MANAGER, f"{L}target": self.target_name, f"{L}role": ROLE}

    def _holder(self) -> Any | None:
        filters = [f"{k}={v}" for k, v in self._labels().items()]
        try:
            found = self.client.containers.list(
                all=True, filters={"label": filters}, ignore_removed=True
            )
        except docker.errors.DockerException as exc:
            raise TargetUnavailable(f"Docker Engine: {exc}") from None
        return found[0] if found else None

    def _ensure_holder(self) -> Any:
        holder = self._holder()
        if holder is not None:
            return holder
        try:
            volume = self.client.volumes.get(self.name)
        except docker.errors.NotFound:
            volume = self.client.volumes.create(self.name, labels=self._labels())
        image = self.image if isinstance(self.image, str) else self.image()
        # Never started: only a handle on the volume (state.py's holders do the same).
        return self.client.containers.create(
            image,
            command=["true"],
            name=self.name,
            labels=self._labels(),
            volumes={volume.name: {"bind": MOUNT, "mode": "rw"}},
            network_mode="none",
        )

    def read(self) -> dict[str, Connection]:
        """Every connection of the target, by name (none before the first is set)."""
        return self._read()[0]

    def _read(self) -> tuple[dict[str, Connection], bytes | None]:
        """The connections and the digest key (None before one is made), in one read."""
        holder = self._holder()
        if holder is None:
            return {}, None
        try:
            files = read_files(
                holder, lambda path: path.startswith(f"{FOLDER}/") or path == KEY_FILE
            )
        except StateUnreadable as exc:
            raise TargetError(
                f"connections unreadable: {exc}", code=ErrorCode.CONNECTIONS_UNREADABLE
            ) from None
        key = _key_from(files.pop(KEY_FILE, None))
        found: dict[str, Connection] = {}
        for path, content in files.items():
            folder, _, file_name = path.rpartition("/")
            name = file_name.removesuffix(".json")
            if folder != FOLDER or not file_name.endswith(".json") or not _NAME.fullmatch(name):
                continue
            try:
                conn = _connection_from_json(name, content)
            except StateUnreadable as exc:
                raise TargetError(str(exc), code=ErrorCode.CONNECTIONS_UNREADABLE) from None
            if conn is not None:
                found[name] = conn
        return found, key

    def set(self, conn: Connection) -> Connection:
        """Create a connection, or merge into the one of that name; returns the result."""
        check_connection(conn)
        found, key = self._read()
        current = found.get(conn.name)
        merged = current.merged(conn) if current is not None else conn
        files = {f"{FOLDER}/{conn.name}.json": merged.to_json()}
        if key is None:
            files[KEY_FILE] = _new_key()
        try:
            write_files(self._ensure_holder(), files)
        except (StateUnreadable, docker.errors.DockerException) as exc:
            raise TargetError(f"connection {conn.name} not written: {exc}") from None
        return merged

    def delete(self, name: str) -> bool:
        """Forget a connection (its file is emptied); False if there was none."""
        if name not in self.read():
            return False
        holder = self._holder()
        assert holder is not None
        try:
            write_files(holder, {f"{FOLDER}/{name}.json": b""})
        except (StateUnreadable, docker.errors.DockerException) as exc:
            raise TargetError(f"connection {name} not deleted: {exc}") from None
        return True

    # --- for the target -------------------------------------------------------------

    def resolve(self, spec: DeploymentSpec) -> tuple[dict[str, str], dict[str, str]]:
        """The spec's environment variables with each reference replaced by its value, and
        per connection the keyed digest of the values taken (for DIGESTS_LABEL).

        TargetError(code=ErrorCode.MISSING_CONNECTION) for a reference this target cannot resolve,
        naming the connection, the key and the command that sets it (never a value).
        """
        refs = variables(spec)
        resolved = dict(spec.environment_variables)
        if not refs:
            return resolved, {}
        found, key = self._read()
        for variable, ref in refs:
            value = _value(found, ref)
            if value is None:
                raise TargetError(
                    f"{spec.key}: environment variable {variable} references "
                    f"{_missing(found, ref, self.target_name)}",
                    code=ErrorCode.MISSING_CONNECTION,
                )
            resolved[variable] = value
        if key is None:
            # Connections set by an earlier version: the key comes with the first digest.
            stored = _new_key()
            self._write_key(stored)
            key = _key_from(stored)
            assert key is not None
        digests = value_digests(spec, found, key)
        return resolved, {name: digest for name, digest in digests.items() if digest}

    def digests_now(self, specs: Iterable[DeploymentSpec]) -> list[dict[str, str | None]]:
        """For each spec, what resolve() would record now (None: a missing value), from
        one read; nothing is written. Without a key yet (connections of an earlier
        version) the digests are under a key of this call: no instance recorded any."""
        specs = list(specs)
        if not any(variables(spec) for spec in specs):
            return [{} for _ in specs]
        found, key = self._read()
        key = key or secrets.token_bytes(32)
        return [value_digests(spec, found, key) for spec in specs]

    def _write_key(self, key: bytes) -> None:
        holder = self._holder()
        assert holder is not None  # a value was resolved: there are connections
        try:
            write_files(holder, {KEY_FILE: key})
        except (StateUnreadable, docker.errors.DockerException) as exc:
            raise TargetError(f"the connections' digest key not written: {exc}") from None

    def missing(self, deployments: Iterable[DeploymentSpec]) -> tuple[Diagnostic, ...]:
        """A warning for each reference to a connection or key this target lacks."""
        specs = [(spec, refs) for spec in deployments if (refs := variables(spec))]
        if not specs:
            return ()
        try:
            found = self.read()
        except TargetUnavailable:
            raise
        except TargetError as exc:
            return (Diagnostic("reconciler.yaml", None, f"targets.{self.target_name}", str(exc)),)
        warnings: list[Diagnostic] = []
        for spec, refs in specs:
            for variable, ref in refs:
                if _value(found, ref) is not None:
                    continue
                where = spec.source
                warnings.append(
                    Diagnostic(
                        where.file if where else "",
                        where.line if where else None,
                        f"environment_variables.{variable}",
                        f"{spec.key} references {_missing(found, ref, self.target_name)}; "
                        "the deployment will fail to start until then",
                    )
                )
        return tuple(warnings)


def _new_key() -> bytes:
    return secrets.token_hex(32).encode()


def _key_from(content: bytes | None) -> bytes | None:
    """The digest key of its file (hex); None for none, or one unreadable (made anew:
    instances then roll once, as for a lost key)."""
    try:
        key = bytes.fromhex(content.decode()) if content else b""
    except (UnicodeDecodeError, ValueError):
        return None
    return key if len(key) >= 16 else None


def _value(found: Mapping[str, Connection], ref: SecretRef) -> str | None:
    conn = found.get(ref.connection)
    return conn.value(ref) if conn is not None else None


def _missing(found: Mapping[str, Connection], ref: SecretRef, target: str) -> str:
    """`<what>, which target T does not have: set it with <command>`."""
    command = f"reconcile connection set {ref.connection} --target {target}"
    note = ""
    if ref.kind == CREDENTIALS:
        command += f" --credential {ref.key}"
        note = " (it reads the value from stdin)"
    elif ref.kind == METADATA:
        command += f" --metadata {ref.key}=VALUE"
    else:
        command += " --target-url URL"
    what = f"connection {ref.connection}" if ref.connection not in found else f"the {ref.what}"
    return f"{what}, which target {target} does not have: set it with `{command}`{note}"
