"""How Azure ML's own loaders (azure-ai-ml) read the YAML where a JSON Schema is stricter.

Pure rules over parsed documents, used by loading before a document meets its schema:
- enumerations are matched as Azure matches them and normalised to the canonical form
  (`auth_mode: Key` and `AMLToken`, `type: Kubernetes`, `scale_settings.type:
  TargetUtilization`, `public_network_access: Disabled`...): Azure snake-cases some fields
  (AMLToken -> aml_token) and lower-cases others, and refuses what neither makes canonical
  (`amltoken` stays an error, as it is in Azure);
- registry references (`azureml://registries/NAME/models|environments/...`) are recognised,
  so that their error says what is missing here instead of calling them malformed;
- fields Azure fills in itself (id, provisioning_state, scoring_uri...) are named, so that a
  file exported from a workspace loads, with a warning that they have no effect.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

ENDPOINT: Final = "endpoint"
DEPLOYMENT: Final = "deployment"
MODEL: Final = "model"
ENVIRONMENT: Final = "environment"


def camel_to_snake(text: str) -> str:
    """Azure's casing rule for some enumerations: AMLToken -> aml_token, Key -> key.

    A comma-separated list is converted item by item, as Azure does.
    """
    if "," in text:
        return ",".join(camel_to_snake(part.strip()) for part in text.split(","))
    text = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", text)
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", text).lower()


def _lower(text: str) -> str:
    return text.lower()


@dataclass(frozen=True, slots=True)
class _Enumeration:
    """Values a field of Azure's YAML takes (at `path`), compared after `casing`."""

    path: tuple[str, ...]  # "*" stands for any key of a mapping
    values: frozenset[str]
    casing: Callable[[str], str]


def _enum(path: str, values: str, casing: Callable[[str], str]) -> _Enumeration:
    return _Enumeration(tuple(path.split(".")), frozenset(values.split()), casing)


_SNAKE = camel_to_snake
_MODEL_TYPES = "custom_model mlflow_model triton_model"
_NETWORK = "enabled disabled"

# What Azure's loaders match without regard to case, per kind of file, with the casing
# transform each field gets there (StringTransformedEnum's casing_transform).
ENUMERATIONS: Final[Mapping[str, tuple[_Enumeration, ...]]] = {
    ENDPOINT: (
        _enum("auth_mode", "key aml_token aad_token", _SNAKE),
        _enum("public_network_access", _NETWORK, _lower),
        _enum("identity.type", "system_assigned user_assigned none", _SNAKE),
    ),
    DEPLOYMENT: (
        _enum("type", "managed kubernetes", _SNAKE),
        _enum("scale_settings.type", "default target_utilization", _SNAKE),
        _enum("egress_public_network_access", _NETWORK, _lower),
        _enum("data_collector.rolling_rate", "minute hour day", _lower),
        _enum("model.type", _MODEL_TYPES, _lower),
        _enum("environment.os_type", "linux windows", _lower),
    ),
    MODEL: (_enum("type", _MODEL_TYPES, _lower),),
    ENVIRONMENT: (_enum("os_type", "linux windows", _lower),),
}


def normalised(document: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """The document with each enumeration in its canonical form; the input is not changed.

    A value that no casing makes canonical is left as written, for the schema to report it
    as the person wrote it.
    """
    out: Any = document
    for enumeration in ENUMERATIONS.get(kind, ()):
        out = _normalise(out, enumeration.path, enumeration)
    result: Mapping[str, Any] = out
    return result


def _normalise(node: Any, path: tuple[str, ...], enumeration: _Enumeration) -> Any:
    """node with the value(s) at path normalised; copies only what changes."""
    if not isinstance(node, dict) or not path:
        return node
    head, rest = path[0], path[1:]
    keys = list(node) if head == "*" else [head] if head in node else []
    changed: dict[Any, Any] = {}
    for key in keys:
        value = node[key]
        if rest:
            new = _normalise(value, rest, enumeration)
        elif isinstance(value, str) and value not in enumeration.values:
            candidate = enumeration.casing(value)
            new = candidate if candidate in enumeration.values else value
        else:
            new = value
        if new is not value:
            changed[key] = new
    return {**node, **changed} if changed else node


# --------------------------------------------------------------------------------------
# Registry references

_REGISTRY: Final = re.compile(
    r"^azureml://registries/(?P<registry>[^/]+)/(?P<kind>models|environments)/(?P<name>[^/]+)"
    r"(?:/versions/(?P<version>[^/]+)|/labels/(?P<label>[^/]+))?/?$"
)
# A workspace asset by its ARM id: azureml:/subscriptions/.../models/NAME/versions/VERSION.
_ARM_ID: Final = re.compile(
    r"^azureml:/subscriptions/[^/]+/resource[gG]roups/[^/]+/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/[^/]+/(?:models|environments)/"
    r"(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?$"
)
REGISTRY_PATTERN: Final = "^azureml://registries/"


@dataclass(frozen=True, slots=True)
class RegistryReference:
    """An asset of an Azure ML registry (azureml://registries/...), as written."""

    text: str
    registry: str
    kind: str  # model or environment
    name: str
    version: str | None  # None: a label (latest) or none at all


def registry_reference(text: str) -> RegistryReference | None:
    match = _REGISTRY.match(text)
    if match is None:
        return None
    kind = MODEL if match.group("kind") == "models" else ENVIRONMENT
    return RegistryReference(
        text, match.group("registry"), kind, match.group("name"), match.group("version")
    )


def arm_id_reference(text: str) -> tuple[str, str | None] | None:
    """(name, version) of a workspace asset named by its ARM id; None for other text."""
    match = _ARM_ID.match(text)
    return None if match is None else (match.group("name"), match.group("version"))


def registry_message(reference: RegistryReference) -> str:
    """Why a registry reference cannot be used here, and how to declare the asset instead."""
    version = f"\nversion: {reference.version}" if reference.version else ""
    pin = f":{reference.version}" if reference.version else "@latest"
    what = "an image or conda_file" if reference.kind == ENVIRONMENT else "a path"
    article = "an" if reference.kind == ENVIRONMENT else "a"
    kind = reference.kind
    return (
        f"{reference.text!r} is an asset of the Azure ML registry '{reference.registry}'; "
        f"registry assets are not available to this repository. Declare the {kind} here "
        f"instead: {article} {kind} file with $schema ...{kind}.schema.json, "
        f"name: {reference.name}{version} and {what}, then reference it as "
        f"azureml:{reference.name}{pin}"
    ).replace("\n", ", ")


# --------------------------------------------------------------------------------------
# Fields Azure fills in itself: accepted on load (a file exported from a workspace has
# them), never read. Field -> what it is, for the warning.

REPORTED_BY_AZURE: Final[Mapping[str, Mapping[str, str]]] = {
    ENDPOINT: {
        "id": "id (set by Azure)",
        "location": "location (the Azure region)",
        "provisioning_state": "provisioning_state (reported by the target, see status/)",
        "scoring_uri": "scoring_uri (reported by the target, see status/)",
        "openapi_uri": "openapi_uri (reported by the target, see status/)",
        "kind": "kind (set by Azure)",
    },
    DEPLOYMENT: {
        "id": "id (set by Azure)",
        "provisioning_state": "provisioning_state (reported by the target, see status/)",
        "private_network_connection": "private_network_connection",
    },
    MODEL: {
        "id": "id (set by Azure)",
        "stage": "stage",
        "flavors": "flavors (an MLflow model's flavors come from its MLmodel file)",
        "datastore": "datastore (models are read from the repository)",
        "system_metadata": "system_metadata",
    },
    ENVIRONMENT: {
        "id": "id (set by Azure)",
        "datastore": "datastore (environments are read from the repository)",
    },
}
