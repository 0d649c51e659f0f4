"""Secret references in a deployment's environment variables, as Azure ML writes them.

A variable's value may name a secret instead of holding it (Azure ML's "secret
injection"); the reconciler keeps the reference in the spec (so digests, plans, status and
the review only ever see the reference) and the target resolves it when it starts an
instance. The forms understood here:

    ${{azureml://connections/NAME/credentials/KEY}}   one credential of a connection
    ${{azureml://connections/NAME/metadata/KEY}}      one metadata value of a connection
    ${{azureml://connections/NAME/target}}            the connection's target (a URL)

As in Azure ML, a reference is the whole value: only a value that is exactly one of these
patterns is resolved. Azure's two other forms are refused plainly, as a local limit:
`${{azureml://connections/NAME}}` (the whole connection as Azure's List Secrets JSON)
and `${{keyvault:https://...}}` (no key vault here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from reconciler.model.specs import DeploymentSpec

CREDENTIALS: Final = "credentials"
METADATA: Final = "metadata"
TARGET: Final = "target"

# Connection names become file names (Docker) and parts of Secret names (Kubernetes); keys
# become Secret keys, whose alphabet is [-._a-zA-Z0-9].
NAME_PATTERN: Final = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
KEY_PATTERN: Final = r"[A-Za-z0-9_.-]{1,253}"
_REFERENCE = re.compile(
    r"\$\{\{azureml://connections/(?P<name>" + NAME_PATTERN + r")/"
    r"(?:(?P<kind>credentials|metadata)/(?P<key>" + KEY_PATTERN + r")|target)\}\}"
)
_NAME = re.compile(NAME_PATTERN)
_KEY = re.compile(KEY_PATTERN)
_AZUREML = "${{azureml://connections/"
_KEYVAULT = "${{keyvault:"


@dataclass(frozen=True, order=True, slots=True)
class SecretRef:
    """One referenced value: a connection's credential, metadata value or target."""

    connection: str
    kind: str = TARGET  # credentials, metadata or target
    key: str | None = None  # None for the target

    @property
    def text(self) -> str:
        """The reference as written in a file."""
        tail = TARGET if self.key is None else f"{self.kind}/{self.key}"
        return f"${{{{azureml://connections/{self.connection}/{tail}}}}}"

    @property
    def what(self) -> str:
        """How a person names it: `credential KEY of connection NAME`, ..."""
        if self.kind == CREDENTIALS:
            return f"credential {self.key} of connection {self.connection}"
        if self.kind == METADATA:
            return f"metadata {self.key} of connection {self.connection}"
        return f"target of connection {self.connection}"


class MalformedReference(ValueError):
    """A value that starts like a secret reference but is none (the message says why)."""


def parse_reference(value: str) -> SecretRef | None:
    """The reference a value is, None for a plain value; MalformedReference if broken."""
    stripped = value.strip()
    if stripped.startswith(_KEYVAULT):
        raise MalformedReference(
            "key vault references are not available on this reconciler's targets: keep the "
            "secret in a connection of the target (`reconcile connection set`) and reference "
            "it as ${{azureml://connections/NAME/credentials/KEY}}"
        )
    if not stripped.startswith(_AZUREML):
        return None
    match = _REFERENCE.fullmatch(value)
    if match is not None:
        kind = match["kind"] or TARGET
        return SecretRef(match["name"], kind, match["key"])
    raise MalformedReference(_problem(value))


def _problem(value: str) -> str:
    forms = (
        "${{azureml://connections/NAME/credentials/KEY}}, "
        "${{azureml://connections/NAME/metadata/KEY}} or ${{azureml://connections/NAME/target}}"
    )
    if value != value.strip():
        return f"secret reference with spaces around it: expected exactly {forms}"
    if not value.endswith("}}"):
        return f"secret reference not closed with '}}}}': expected {forms}"
    inner = value[len(_AZUREML) : -2]
    parts = inner.split("/")
    name = parts[0]
    if not name:
        return f"secret reference without a connection name: expected {forms}"
    if not _NAME.fullmatch(name):
        return (
            f"connection name {name!r} is not valid: letters, digits, '_', '.' and '-', "
            "at most 128, not starting with '.' or '-'"
        )
    if len(parts) == 1:
        return (
            "a whole connection (${{azureml://connections/NAME}}, Azure's List Secrets JSON) "
            f"is not injected on this reconciler's targets: reference one value, {forms}"
        )
    kind = parts[1]
    if kind in (CREDENTIALS, METADATA):
        if len(parts) != 3 or not parts[2]:
            return f"{kind} reference needs exactly one KEY: expected {forms}"
        return f"key {parts[2]!r} is not valid: letters, digits, '_', '.' and '-'"
    if kind == TARGET:
        return f"nothing may follow 'target': expected {forms}"
    return f"unknown kind {kind!r} of connection reference: expected {forms}"


def mentions_reference(value: str) -> bool:
    """Whether a value holds a reference among other text (passed as written, not resolved)."""
    return (_AZUREML in value or _KEYVAULT in value) and not value.strip().startswith(
        (_AZUREML, _KEYVAULT)
    )


def variables(spec: DeploymentSpec) -> tuple[tuple[str, SecretRef], ...]:
    """(variable, reference) of every environment variable of a spec that is a reference."""
    found: list[tuple[str, SecretRef]] = []
    for variable, value in spec.environment_variables:
        try:
            ref = parse_reference(value)
        except MalformedReference:
            continue  # loading refused it already; a spec built by hand just keeps it as text
        if ref is not None:
            found.append((variable, ref))
    return tuple(found)


def references(spec: DeploymentSpec) -> tuple[SecretRef, ...]:
    """The distinct references of a spec, sorted."""
    return tuple(sorted({ref for _, ref in variables(spec)}))


def connections(spec: DeploymentSpec) -> tuple[str, ...]:
    """Names of the connections a spec references, sorted."""
    return tuple(sorted({ref.connection for ref in references(spec)}))
