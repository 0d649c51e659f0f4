"""Desired specs of endpoints and deployments, normalised with every default filled in.

Loading turns YAML into these values; diffing compares them; the plan carries them to the
executor. Mappings are stored as sorted tuples of pairs so that specs are immutable and
their canonical form (and so their digest) does not depend on the order in a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

from reconciler.model.keys import ResourceKey

JsonValue = Any  # JSON-compatible value: None, bool, int, float, str, list, dict
Pairs = tuple[tuple[str, str], ...]
Weights = tuple[tuple[str, int], ...]

MANAGED = "managed"
KUBERNETES = "kubernetes"


def pairs(mapping: Mapping[str, Any] | None) -> Pairs:
    """A mapping as sorted (key, str(value)) pairs."""
    if not mapping:
        return ()
    return tuple(sorted((str(k), _scalar_text(v)) for k, v in mapping.items()))


def _scalar_text(value: Any) -> str:
    # YAML turns `true` into True and `1` into 1; environment variables and tags are text.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def weights(mapping: Mapping[str, int] | None) -> Weights:
    """Traffic weights as sorted pairs; 0 percent is the same as absent, so it is dropped."""
    if not mapping:
        return ()
    return tuple(sorted((str(k), int(v)) for k, v in mapping.items() if int(v) != 0))


def weight_of(table: Weights, deployment: str) -> int:
    for name, percent in table:
        if name == deployment:
            return percent
    return 0


@dataclass(frozen=True, slots=True)
class SourceLocation:
    """Where a spec was declared: a repository-relative POSIX path and a 1-based line."""

    file: str
    line: int | None = None


@dataclass(frozen=True, slots=True)
class ScaleSettings:
    """A deployment's scale_settings: default, or target_utilization's bounds."""

    type: str = "default"  # "default" or "target_utilization"
    min_instances: int | None = None
    max_instances: int | None = None
    target_utilization_percentage: int | None = None
    polling_interval: int | None = None

    @property
    def autoscaled(self) -> bool:
        return self.type == "target_utilization"


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """A deployment's request_settings: timeout, concurrency and queue wait."""

    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 500


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """A deployment's liveness or readiness probe."""

    initial_delay: int = 10
    period: int = 10
    timeout: int = 2
    success_threshold: int = 1
    failure_threshold: int = 30


@dataclass(frozen=True, slots=True)
class Resources:
    """Kubernetes requests and limits (cpu, memory, nvidia.com/gpu) as given, as text."""

    requests: Pairs = ()
    limits: Pairs = ()


@dataclass(frozen=True, slots=True)
class Route:
    """The port and path a custom container serves (inference_config)."""

    port: int
    path: str


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    """Routes of a custom container; such a container runs as it is."""

    liveness_route: Route
    readiness_route: Route
    scoring_route: Route


# The model types of no-code deployments (reconciler.nocode): their files say what serves
# them, so such a deployment may name no environment.
MLFLOW_MODEL: Final = "mlflow_model"
TRITON_MODEL: Final = "triton_model"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model: files in the repository, registered (a model file) or inline."""

    name: str
    version: str
    path: str  # repository-relative file or folder
    type: str = "custom_model"
    digest: str = ""  # content digest of the files under path
    registered: bool = False  # from a model file referenced as azureml:NAME:VERSION
    properties: Pairs = ()  # Azure's free-form asset properties, as text


@dataclass(frozen=True, slots=True)
class CodeSpec:
    """A deployment's scoring code: its folder, script and content digest."""

    path: str  # repository-relative folder
    scoring_script: str  # relative to path
    digest: str = ""  # content digest of every file under path


@dataclass(frozen=True, slots=True)
class EnvironmentSpec:
    """A deployment's environment: an image, or one built from conda or Docker files."""

    name: str | None = None
    version: str | None = None
    image: str | None = None
    conda_file: str | None = None  # repository-relative
    build_context: str | None = None  # repository-relative folder
    dockerfile_path: str = "Dockerfile"  # relative to build_context
    inference_config: InferenceConfig | None = None
    conda_packages: tuple[str, ...] = ()  # conda dependencies as written, pip excluded
    pip_packages: tuple[str, ...] = ()  # the pip section of the conda file
    python_version: str | None = None  # from a `python=3.x` conda dependency
    digest: str = ""  # content digest: image, conda file, build context, inference config

    @property
    def custom_container(self) -> bool:
        return self.inference_config is not None


@dataclass(frozen=True, slots=True)
class ShadowTolerance:
    """How the endpoint's router compares a mirrored answer with the live one
    (router.compare): numbers agree when `|shadow - live| <= atol + rtol * |live|`; bodies
    over max_body_bytes are not compared. Not a field of Azure's YAML: it comes from the
    `comparison` of the endpoint's rollout policy in reconciler.yaml, every value given
    (the router's defaults filled in), and is None where the router's defaults apply."""

    rtol: float
    atol: float
    max_body_bytes: int


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """An endpoint as its file declares it (what the plan compares)."""

    name: str
    flavor: str = MANAGED  # managed or kubernetes
    auth_mode: str = "key"
    traffic: Weights = ()
    mirror_traffic: Weights = ()
    description: str | None = None
    tags: Pairs = ()
    compute: str | None = None
    identity: str | None = None  # canonical JSON of the identity block; no meaning here
    public_network_access: str = "enabled"
    properties: Pairs = ()  # Azure's free-form properties, as text, like tags
    # From reconciler.yaml's rollout policy of the endpoint (`comparison`), not its file.
    shadow_comparison: ShadowTolerance | None = None
    source: SourceLocation | None = field(default=None, compare=False)

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.name)


# Fields whose change is a scaling, not an update of the running code (DESIGN rule 3).
SCALE_FIELDS = ("instance_count", "scale_settings")
# Fields that cannot change in place in Azure ML: the instances are replaced instead.
REPLACE_FIELDS = ("instance_type",)


# Not slots: the digest is cached on the instance (a frozen value never changes), which
# keeps a 3,000-deployment diff from hashing every spec several times.
@dataclass(frozen=True)
class DeploymentSpec:
    """A deployment as its file declares it, resolved (what the plan compares)."""

    endpoint_name: str
    name: str
    environment: EnvironmentSpec
    flavor: str = MANAGED
    model: ModelSpec | None = None
    model_mount_path: str | None = None
    code: CodeSpec | None = None
    instance_type: str | None = None
    instance_count: int = 1
    scale_settings: ScaleSettings = ScaleSettings()
    request_settings: RequestSettings = RequestSettings()
    liveness_probe: ProbeSettings = ProbeSettings()
    readiness_probe: ProbeSettings = ProbeSettings()
    environment_variables: Pairs = ()
    resources: Resources | None = None
    app_insights_enabled: bool = False
    egress_public_network_access: str = "enabled"
    data_collector: str | None = None  # canonical JSON; accepted, no meaning on our targets
    description: str | None = None
    tags: Pairs = ()
    properties: Pairs = ()  # Azure's free-form properties, as text, like tags
    source: SourceLocation | None = field(default=None, compare=False)

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.endpoint_name, self.name)

    @cached_property
    def digest(self) -> str:
        """Digest of what runs in an instance: everything but the scaling fields.

        Like a pod-template hash: a change of it means a rolling update; a change of the
        instance count alone does not.
        """
        # Remembered for equal specs (where it was declared aside): `reconcile diff` and
        # each daemon pass load the same unchanged deployments again, and hashing a spec
        # costs a tenth of digesting it (issue 15).
        known = _DIGESTS.get(self)
        if known is None:
            known = _text_digest(_template_text(self))
            if len(_DIGESTS) >= _DIGESTS_KEPT:
                _DIGESTS.clear()  # a bound, not an LRU: refilled within a pass
            _DIGESTS[self] = known
        return known


def spec_dict(spec: EndpointSpec | DeploymentSpec) -> dict[str, JsonValue]:
    """Canonical JSON-compatible form of a spec, without where it was declared."""
    data = to_json(spec)
    assert isinstance(data, dict)
    data.pop("source", None)
    return data


def template_dict(spec: DeploymentSpec) -> dict[str, JsonValue]:
    data = spec_dict(spec)
    for name in SCALE_FIELDS:
        data.pop(name, None)
    return data


def spec_digest(data: Mapping[str, JsonValue]) -> str:
    return _text_digest(_canonical(data))


# The canonical JSON text digests are taken of (sorted keys, no spaces): one encoder for
# all (json.dumps makes one per call, which costs more than encoding a small value).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_canonical = _CANONICAL.encode
# A text as that encoder writes it (json's own function: ensure_ascii=False).
_string_text = json.encoder.encode_basestring


def _text_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _template_text(spec: DeploymentSpec) -> str:
    """_canonical(template_dict(spec)), the same text, put together field by field.

    The environment, the model and the code of a deployment are objects many deployments
    share (one resolution per load): their text is worked out once for all of them
    (_nested_text), where encoding the whole spec again for each deployment cost a large
    repository's `reconcile diff` a tenth of a second (issue 15). JSON's encoding is
    compositional, so the pieces make exactly the text of the whole.
    """
    parts: list[tuple[str, str]] = []
    for name, is_mapping, omitted_when_empty in _template_layout(type(spec)):
        item = getattr(spec, name)
        if omitted_when_empty and not item:
            continue
        kind = item.__class__
        if is_mapping:
            text = _canonical({str(k): v for k, v in item})
        elif kind is str:
            text = _string_text(item)
        elif item is None or kind is bool or kind is int or kind is float:
            text = _canonical(item)
        else:
            text = _nested_text(item)
        parts.append((name, text))
    return "{" + ",".join(f"{_string_text(name)}:{text}" for name, text in parts) + "}"


def _template_layout(kind: type) -> tuple[tuple[str, bool, bool], ...]:
    """The layout of the fields of a template (no source, no scaling), sorted by name as
    the canonical text orders them."""
    layout = _TEMPLATE_LAYOUTS.get(kind)
    if layout is None:
        kept = [f for f in _layout(kind) if f[0] != "source" and f[0] not in SCALE_FIELDS]
        layout = _TEMPLATE_LAYOUTS[kind] = tuple(sorted(kept))
    return layout


def _nested_text(value: Any) -> str:
    """_canonical(to_json(value)) of a frozen value, remembered by identity (the entry
    holds the value, so that its id is not reused while remembered)."""
    entry = _NESTED_TEXTS.get(id(value))
    if entry is not None and entry[0] is value:
        return entry[1]
    text = _canonical(to_json(value))
    if len(_NESTED_TEXTS) >= _NESTED_TEXTS_KEPT:
        _NESTED_TEXTS.clear()  # a bound, not an LRU: refilled within a load
    _NESTED_TEXTS[id(value)] = (value, text)
    return text


def _layout(kind: type) -> tuple[tuple[str, bool, bool], ...]:
    """(name, held as pairs standing for a mapping, left out while empty) of each field."""
    layout = _LAYOUTS.get(kind)
    if layout is None:
        layout = _LAYOUTS[kind] = tuple(
            (f.name, f.name in MAPPING_FIELDS, f.name in OMITTED_WHEN_EMPTY)
            for f in dataclasses.fields(kind)
        )
    return layout


# Fields held as sorted pairs that stand for a mapping in the canonical form.
MAPPING_FIELDS = frozenset(
    {
        "traffic",
        "mirror_traffic",
        "tags",
        "environment_variables",
        "requests",
        "limits",
        "properties",
    }
)
# Fields added after specs were first stored and digested: left out of the canonical form
# while empty, so that a spec without them keeps the digest it always had (an upgrade of the
# reconciler must not restart every deployment).
OMITTED_WHEN_EMPTY = frozenset({"properties", "shadow_comparison"})


def to_json(value: Any) -> JsonValue:
    """Canonical JSON-compatible form of a spec value (dataclasses, tuples, scalars)."""
    layout = _LAYOUTS.get(type(value))
    if layout is None:
        if isinstance(value, tuple):
            return [to_json(item) for item in value]
        if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            return value
        layout = _layout(type(value))
    out: dict[str, JsonValue] = {}
    for name, is_mapping, omitted_when_empty in layout:
        item = getattr(value, name)
        if omitted_when_empty and not item:
            continue
        if is_mapping:
            out[name] = {str(k): v for k, v in item}
        elif item is None or isinstance(item, (str, int, float, bool)):
            out[name] = item
        else:
            out[name] = to_json(item)
    return out


# Field layout of each spec class, worked out once: to_json runs for every spec of a
# large repository on every pass.
_LAYOUTS: dict[type, tuple[tuple[str, bool, bool], ...]] = {}
_TEMPLATE_LAYOUTS: dict[type, tuple[tuple[str, bool, bool], ...]] = {}
# Digests of the deployment specs seen in this process (DeploymentSpec.digest).
_DIGESTS: dict[DeploymentSpec, str] = {}
_DIGESTS_KEPT = 50_000
# Canonical texts of values inside specs, by identity (_nested_text).
_NESTED_TEXTS: dict[int, tuple[Any, str]] = {}
_NESTED_TEXTS_KEPT = 20_000


def version_changes(before: DeploymentSpec | None, after: DeploymentSpec) -> tuple[str, ...]:
    """What of a deployment's version changed: ("new",), some of model, code,
    environment, or () when none did (scaling, probes, settings are no new version).
    A new version is what a rollout rolls out and what mirror_before_traffic judges."""
    if before is None:
        return ("new",)
    return tuple(
        part
        for part in ("model", "code", "environment")
        if getattr(before, part) != getattr(after, part)
    )
