"""Loading: the files of a repository -> a validated, normalised DesiredState.

Every YAML file of a FileTree is read; the four kinds that are ours (endpoint, deployment,
model, environment: SPEC-REFERENCE.md "Kinds of file") are validated against schemas/*.json,
normalised to the frozen specs of reconciler.model.specs with every default filled in, and
checked across files: references (azureml:NAME:VERSION, local paths, conda files), traffic,
names and limits. Every problem is reported at once, each with a file, a line and a field,
so one `reconcile validate` shows all that a pull request must fix. Any error makes the
whole state invalid (DesiredStateInvalid): applying half a repository could prune what the
other half declares.

Speed matters: the reconciler loads thousands of files on every pass and `reconcile diff`
loads two revisions. Files are parsed with libyaml (reconciler.yamlsource); lines are found
only for diagnostics; schemas are compiled once per process; and what one file gives on its
own (parsed, validated, normalised) is cached per process by path and git blob id, so an
unchanged file costs a dictionary lookup on the next pass or in the other revision. What
depends on other files (digests of code, models and conda files, references, cross-file
rules) is worked out on each load, with one Digester.
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

from reconciler.filetree import Digester, FileTree, TreeEntryError
from reconciler.gcpause import cyclic_gc_paused
from reconciler.jsonschemas import schema, schema_problems, shown, validators
from reconciler.model import azureyaml
from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic
from reconciler.model.instance_types import (
    DEFAULT_INSTANCE_TYPES,
    KUBERNETES_DEFAULT_INSTANCE_TYPE,
    InstanceType,
    canonical_instance_type,
)
from reconciler.model.secrets import MalformedReference, mentions_reference, parse_reference
from reconciler.model.specs import (
    KUBERNETES,
    MANAGED,
    MLFLOW_MODEL,
    TRITON_MODEL,
    CodeSpec,
    DeploymentSpec,
    EndpointSpec,
    EnvironmentSpec,
    InferenceConfig,
    ModelSpec,
    ProbeSettings,
    RequestSettings,
    Resources,
    Route,
    ScaleSettings,
    SourceLocation,
    pairs,
    spec_digest,
    weight_of,
    weights,
)
from reconciler.model.state import DesiredState
from reconciler.yamlsource import (
    MAX_NESTING_OF_OURS,
    MAX_YAML_BYTES,
    FieldLines,
    FieldPath,
    YamlDocument,
    document_limits,
    duplicate_key_diagnostics,
    field_name,
    first_content_line,
    load_yaml_document,
    might_exceed_limits,
)

__all__ = [
    "CACHE_SIZE",
    "MAX_NESTING_OF_OURS",
    "MAX_YAML_BYTES",
    "SCHEMA_FILES",
    "YamlDocument",
    "clear_cache",
    "load_desired_state",
    "load_yaml_document",
    "schema",
]

ENDPOINT: Final = "endpoint"
DEPLOYMENT: Final = "deployment"
MODEL: Final = "model"
ENVIRONMENT: Final = "environment"

SCHEMA_FILES: Final[Mapping[tuple[str, str], str]] = {
    (ENDPOINT, MANAGED): "managedOnlineEndpoint.schema.json",
    (ENDPOINT, KUBERNETES): "kubernetesOnlineEndpoint.schema.json",
    (DEPLOYMENT, MANAGED): "managedOnlineDeployment.schema.json",
    (DEPLOYMENT, KUBERNETES): "kubernetesOnlineDeployment.schema.json",
    (MODEL, ""): "model.schema.json",
    (ENVIRONMENT, ""): "environment.schema.json",
}
# Our kinds by the last part of a `$schema` URL, in lower case (people vary the case).
_KIND_BY_SCHEMA: Final = {name.lower(): kind for kind, name in SCHEMA_FILES.items()}

# Never desired state: git internals, CI configuration, the status branch's files (they hold
# name and traffic, so they would pass for endpoints) and the reconciler's own settings.
_SKIPPED_PREFIXES: Final = (".git/", ".github/", ".gitlab/", "status/")
_SKIPPED_FILES: Final = frozenset({".gitlab-ci.yml", "reconciler.yaml", "reconciler.yml"})

MAX_DEPLOYMENTS_PER_ENDPOINT: Final = 20
KUBERNETES_NAME_LENGTHS: Final = (6, 62)  # endpoint name + deployment name, together
# Entries of the per-process cache: two revisions of a 10,000-endpoint repository (40,000
# files each, plus a resolved spec per deployment) must fit, or `reconcile diff` parses every
# file twice (issue 15). An entry is a few kilobytes: the bound is the repository's size.
CACHE_SIZE: Final = 200_000

# azureml:NAME:VERSION, azureml:NAME@latest, or azureml:NAME (the latest too, as in Azure).
_REFERENCE: Final = re.compile(r"^azureml:([a-zA-Z0-9][a-zA-Z0-9_.-]*)(?::([^:@/]+)|@latest)?$")
_PYTHON_PIN: Final = re.compile(r"^python\s*={1,2}\s*([0-9]+(?:\.[0-9]+)*)")
# Whether a file that is not valid YAML looks like one of ours (see _analyse).
_LOOKS_OURS: Final = re.compile(
    rb"(?m)^\s*[\"']?(?:endpoint_name|auth_mode|traffic|mirror_traffic|code_configuration"
    rb"|scoring_script|instance_type|instance_count|inference_config)[\"']?\s*:"
    rb"|(?i:onlineendpoint|onlinedeployment|/model|/environment)\.schema\.json|azureml:"
)


_T = TypeVar("_T")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Kept under their old names: tests and tools read them from here.
_validators = validators
_shown = shown


# --------------------------------------------------------------------------------------
# One file: parse, classify, validate, normalise (cached by path and blob id)


@dataclass(frozen=True, slots=True)
class _Reference:
    """azureml:NAME:VERSION (version set) or azureml:NAME@latest (version None)."""

    text: str
    name: str
    version: str | None


@dataclass(frozen=True, slots=True)
class _DeploymentDraft:
    """A deployment with what its own file says; model, code and environment come later."""

    spec: DeploymentSpec  # its model, code and environment are placeholders
    model: ModelSpec | _Reference | None
    model_field: FieldPath
    code: CodeSpec | None
    environment: EnvironmentSpec | _Reference | None  # None: derived from the model
    # A model refused in its file (a registry asset): what serves it is unknown, so a
    # missing environment is not a second error.
    model_refused: bool = False


@dataclass(frozen=True, slots=True)
class _FileResult:
    """What one file of the repository gave: its kind, spec, errors and warnings."""

    kind: str | None = None  # None: not one of ours, ignored
    flavor: str = ""
    data: Mapping[str, Any] | None = None  # the parsed document; never mutated
    errors: tuple[Diagnostic, ...] = ()
    warnings: tuple[Diagnostic, ...] = ()
    # What the file declares, when it passed its schema:
    endpoint: EndpointSpec | None = None
    deployment: _DeploymentDraft | None = None
    asset: ModelSpec | EnvironmentSpec | None = None  # a model or environment file
    # A model package spec (`az ml model package --file`): the environment it makes.
    package_environment: str | None = None


_IGNORED: Final = _FileResult()


class _FileCheck:
    """The problems of one file; lines are looked up only when there is a problem."""

    def __init__(self, path: str, data: bytes | None) -> None:
        self.path = path
        self.folder = posixpath.dirname(path)
        self.lines = FieldLines(data)
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def _diagnostic(self, path: FieldPath, message: str) -> Diagnostic:
        return Diagnostic(self.path, self.lines.line(path), field_name(path), message)

    def error(self, path: FieldPath, message: str) -> None:
        self.errors.append(self._diagnostic(path, message))

    def no_effect(self, path: FieldPath, what: str) -> None:
        self.warnings.append(self._diagnostic(path, f"{what}: accepted, no effect on this target"))

    def warn(self, path: FieldPath, message: str) -> None:
        self.warnings.append(self._diagnostic(path, message))

    def repo_path(self, field: FieldPath, relative: str, *, what: str) -> str | None:
        """A path written in this file as a repository-relative POSIX path ("." the root)."""
        if "://" in relative:
            self.error(field, f"{what} must be a path in the repository, got {relative!r}")
            return None
        if relative.startswith(("/", "~")):
            self.error(field, f"{what} must be relative to this file's folder, got {relative!r}")
            return None
        joined = posixpath.normpath(posixpath.join(self.folder, relative))
        if joined == ".." or joined.startswith("../"):
            self.error(field, f"{what} {relative!r} is outside the repository")
            return None
        return joined


def _classify(value: Any) -> tuple[str, str] | None:
    """(kind, flavor) of a document, or None when it is not ours."""
    if not isinstance(value, dict):
        return None
    declared = value.get("$schema")
    by_schema: tuple[str, str] | None = None
    if isinstance(declared, str) and declared.strip():
        last = declared.strip().rsplit("/", 1)[-1].split("#", 1)[0].split("?", 1)[0]
        by_schema = _KIND_BY_SCHEMA.get(last.lower())
        if by_schema is None:
            return None  # another schema (a job, a batch endpoint): not ours
        kind = by_schema[0]
    elif "endpoint_name" in value:
        kind = DEPLOYMENT
    elif "name" in value and ("auth_mode" in value or "traffic" in value):
        kind = ENDPOINT
    else:
        return None
    # Azure ML picks the variant by `type: kubernetes` or `compute:`; $schema decides only
    # when neither is written, since schema lines are often copied from another example.
    if kind == DEPLOYMENT and "type" in value:
        written = value["type"]
        snake = azureyaml.camel_to_snake(written) if isinstance(written, str) else written
        return kind, KUBERNETES if snake == KUBERNETES else MANAGED
    if kind == ENDPOINT and "compute" in value:
        return kind, KUBERNETES
    if kind in (DEPLOYMENT, ENDPOINT):
        return kind, by_schema[1] if by_schema else MANAGED
    return kind, ""


def _package_environment(value: Any) -> str | None:
    """The environment a model package spec makes (its target_environment), else None."""
    if not isinstance(value, dict) or not isinstance(value.get("$schema"), str):
        return None
    last = value["$schema"].strip().rsplit("/", 1)[-1].lower()
    target = value.get("target_environment")
    return target if last == "modelversionpackage.json" and isinstance(target, str) else None


def _analyse(path: str, data: bytes) -> _FileResult:
    """Everything about one file that depends on its bytes alone."""
    parsed = load_yaml_document(data, path)
    if parsed.error is not None:
        # A file that is not YAML cannot be classified. When it looks like one of ours it is
        # an error: a broken commit must never read as "no endpoints", which prune would act
        # on. Otherwise (a Helm template, an encrypted file) it is a warning, so that a stray
        # file cannot block every deployment, and it is still never skipped in silence.
        if _LOOKS_OURS.search(data):
            return _FileResult(errors=(parsed.error,))
        message = f"{parsed.error.message}; ignored, as it does not look like an endpoint file"
        return _FileResult(warnings=(replace(parsed.error, message=message),))
    found: tuple[str, str] | None = None
    document: Any = None
    for candidate in parsed.documents:  # the first document of ours, classified once
        found = _classify(candidate)
        if found is not None:
            document = candidate
            break
    if found is None:
        made = next(filter(None, map(_package_environment, parsed.documents)), None)
        return _IGNORED if made is None else _FileResult(package_environment=made)
    kind, flavor = found
    line = first_content_line(data)
    problem = parsed.unsupported_tag
    too_big = might_exceed_limits(data) and document_limits(document)
    if len(parsed.documents) > 1:
        message = f"holds {len(parsed.documents)} YAML documents; a file of ours holds one"
        problem = Diagnostic(path, line, "", message)
    elif too_big:
        problem = Diagnostic(path, line, "", too_big)
    declared = document if isinstance(document, dict) else None
    if problem is not None:
        return _FileResult(kind, flavor, declared, errors=(problem,))
    if parsed.duplicate_keys:
        # The values read are the last ones, which a reviewer of the first would not expect:
        # nothing else of the file is checked until each key is written once.
        return _FileResult(kind, flavor, declared, errors=duplicate_key_diagnostics(data, parsed))
    if isinstance(document, dict):
        # Enumerations as Azure's loaders match them (auth_mode: Key, type: Kubernetes...),
        # in their canonical form before the schema sees them and in the state after.
        document = azureyaml.normalised(document, kind)
    check = _FileCheck(path, data)
    fast, full = _validators(SCHEMA_FILES[kind, flavor])
    if not fast(document):
        for error in full.iter_errors(document):
            for field, message in schema_problems(error, check.lines):
                check.error(field, message)
    endpoint: EndpointSpec | None = None
    deployment: _DeploymentDraft | None = None
    asset: ModelSpec | EnvironmentSpec | None = None
    # A document that passed its schema is normalised even when a rule of its own then fails
    # (a path outside the repository), so that its references are still checked and every
    # error shows at once; a file with any error never reaches the desired state.
    if not check.errors:
        source = SourceLocation(path, line)
        _reported_by_azure(document, kind, (), check)
        if kind == ENDPOINT:
            endpoint = _endpoint(document, flavor, source, check)
        elif kind == DEPLOYMENT:
            deployment = _deployment(document, flavor, source, check)
        elif kind == MODEL:
            asset = _model(document, check, path_field=("path",), registered=True)
        else:
            asset = _environment(document, (), check)
    return _FileResult(
        kind,
        flavor,
        document,
        errors=tuple(dict.fromkeys(check.errors)),
        warnings=tuple(dict.fromkeys(check.warnings)),
        endpoint=endpoint,
        deployment=deployment,
        asset=asset,
    )


def _canonical_json(value: Any) -> str | None:
    """A free-form block (identity, data_collector) as stable text; keys made text first."""
    if value is None:
        return None

    def plain(item: Any) -> Any:
        if isinstance(item, dict):
            return {str(k): plain(v) for k, v in item.items()}
        if isinstance(item, list):
            return [plain(v) for v in item]
        return item

    return json.dumps(plain(value), sort_keys=True, default=str)


def _reported_by_azure(
    doc: Mapping[str, Any], kind: str, prefix: FieldPath, check: _FileCheck
) -> None:
    """Fields Azure fills in or keeps for itself (a file exported from a workspace has them):
    accepted, each with a warning that it has no effect here."""
    for field, what in azureyaml.REPORTED_BY_AZURE[kind].items():
        if field in doc:
            check.no_effect((*prefix, field), what)


def _endpoint(
    doc: Mapping[str, Any], flavor: str, source: SourceLocation, check: _FileCheck
) -> EndpointSpec:
    auth_mode = doc.get("auth_mode", "key")
    if auth_mode == "aad_token":
        check.error(
            ("auth_mode",),
            "aad_token needs Microsoft Entra ID, which Docker and Kubernetes targets do not "
            "have; use key or aml_token",
        )
    if "identity" in doc:
        check.no_effect(("identity",), "identity")
    if doc.get("public_network_access") == "disabled":
        check.no_effect(("public_network_access",), "public_network_access disabled")
    return EndpointSpec(
        name=doc["name"],
        flavor=flavor,
        auth_mode=auth_mode,
        traffic=weights(doc.get("traffic")),
        mirror_traffic=weights(doc.get("mirror_traffic")),
        description=doc.get("description"),
        tags=pairs(doc.get("tags")),
        compute=doc.get("compute"),
        identity=_canonical_json(doc.get("identity")),
        public_network_access=doc.get("public_network_access", "enabled"),
        properties=pairs(doc.get("properties")),
        source=source,
    )


def _model(
    model: Mapping[str, Any], check: _FileCheck, *, path_field: FieldPath, registered: bool
) -> ModelSpec | None:
    """An inline model, a local model path, or a model file; its digest comes later."""
    path = check.repo_path(path_field, model["path"], what="model path")
    if path is None:
        return None
    # An inline model with only a path is named after its file, as Azure ML names it.
    stem = posixpath.splitext(posixpath.basename(path))[0] if path != "." else ""
    return ModelSpec(
        name=str(model.get("name") or stem or "model"),
        version=str(model.get("version", "1")),
        path=path,
        type=model.get("type", "custom_model"),
        registered=registered,
        properties=pairs(model.get("properties")),
    )


def _environment(env: Mapping[str, Any], prefix: FieldPath, check: _FileCheck) -> EnvironmentSpec:
    """An inline environment (prefix ("environment",)) or an environment file (prefix ())."""
    image, build = env.get("image"), env.get("build")
    if image is None and build is None:
        message = "an environment needs an image or a build context (build.path)"
        check.error(prefix or ("image",), message)
    elif image is not None and build is not None:
        message = "an environment has an image or a build context, not both"
        check.error(prefix or ("build",), message)
    if str(env.get("os_type", "linux")).lower() == "windows":
        check.error((*prefix, "os_type"), "Windows environments cannot run on our targets")
    conda = None
    if "conda_file" in env:
        conda = check.repo_path((*prefix, "conda_file"), env["conda_file"], what="conda file")
    context, dockerfile = None, "Dockerfile"
    if build is not None:
        context = check.repo_path((*prefix, "build", "path"), build["path"], what="build path")
        dockerfile = posixpath.normpath(build.get("dockerfile_path", "Dockerfile"))
        if dockerfile == ".." or dockerfile.startswith(("../", "/")):
            field = (*prefix, "build", "dockerfile_path")
            check.error(field, f"must be inside the build context, got {dockerfile!r}")
    config = env.get("inference_config")
    inference = None
    if config is not None:
        inference = InferenceConfig(
            *(_route(config[r], (*prefix, "inference_config", r), check) for r in _ROUTES),
        )
    # An environment file without a version is version 1; an inline one has none.
    version = env.get("version", None if prefix else "1")
    return EnvironmentSpec(
        name=env.get("name"),
        version=None if version is None else str(version),
        image=image,
        conda_file=conda,
        build_context=context,
        dockerfile_path=dockerfile,
        inference_config=inference,
    )


_ROUTES: Final = ("liveness_route", "readiness_route", "scoring_route")


def _route(route: Mapping[str, Any], field: FieldPath, check: _FileCheck) -> Route:
    """A route of a custom container; a path without its leading '/' is taken from the
    server's root, as a client resolves it against http://host:port/ (said as a warning)."""
    path = str(route["path"])
    if not path.startswith("/"):
        check.warn((*field, "path"), f"path {path!r} is taken from the server's root: '/{path}'")
        path = "/" + path
    return Route(int(route["port"]), path)


def _integers(block: Mapping[str, Any] | None) -> dict[str, Any]:
    """A settings block with its numbers as int: JSON Schema takes 2.0 for an integer."""
    return {k: int(v) if isinstance(v, float) else v for k, v in (block or {}).items()}


# One object for each settings block written alike (most deployments of a repository write
# the same probes and request settings): a deployment's digest encodes a nested value once
# per object (specs._nested_text), so shared blocks cost a lookup instead of an encoding
# for each of thousands of deployments (issue 15). Keyed by each value's type too, so that
# 1, 1.0 and True (equal in Python, different in JSON) never share an object.
_SHARED: dict[tuple[Any, ...], Any] = {}
_SHARED_KEPT: Final = 10_000


def _shared(kind: type[_T], given: Mapping[str, Any]) -> _T:
    try:
        key = (kind, *given.items(), *map(type, given.values()))
        known = _SHARED.get(key)
    except TypeError:  # an unhashable value: never one of a valid settings block
        return kind(**given)
    if known is None:
        known = kind(**given)
        if len(_SHARED) >= _SHARED_KEPT:
            _SHARED.clear()  # a bound, not an LRU: refilled within a load
        _SHARED[key] = known
    return known


_DEFAULT_SCALE: Final = ScaleSettings()


def _scale_settings(doc: Mapping[str, Any], check: _FileCheck) -> ScaleSettings:
    given = _integers(doc.get("scale_settings"))
    if given.get("type", "default") == "default":
        for key in sorted(set(given) - {"type"}):
            message = f"{key} applies only when scale_settings.type is target_utilization"
            check.error(("scale_settings", key), message)
        return _DEFAULT_SCALE
    settings = ScaleSettings(
        type="target_utilization",
        min_instances=given.get("min_instances", 1),
        max_instances=given.get("max_instances", 1),
        target_utilization_percentage=given.get("target_utilization_percentage", 70),
        polling_interval=given.get("polling_interval", 1),
    )
    low, high = settings.min_instances or 0, settings.max_instances or 0
    count = doc.get("instance_count")
    count = int(count) if isinstance(count, float) else count
    if low > high:
        default = "" if "max_instances" in given else " (the default)"
        message = f"min_instances {low} is greater than max_instances {high}{default}"
        check.error(("scale_settings", "min_instances"), message)
    elif count is not None and not low <= count <= high:
        # Azure ML takes instance_count as the starting count; the autoscaler corrects it.
        check.warn(
            ("instance_count",),
            f"instance_count {count} is outside min_instances..max_instances ({low}..{high}); "
            "the autoscaler will bring it into that range",
        )
    return settings


def _quantities(given: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Kubernetes quantities; Azure's `gpu` is Kubernetes' nvidia.com/gpu."""
    if not given or "gpu" not in given:
        return given
    return {("nvidia.com/gpu" if key == "gpu" else key): value for key, value in given.items()}


def _reference(text: str) -> _Reference | None:
    match = _REFERENCE.match(text)
    if match is not None:
        return _Reference(text, match.group(1), match.group(2))
    # The repository stands for the workspace, so an asset's ARM id names it by name too.
    by_id = azureyaml.arm_id_reference(text)
    return None if by_id is None else _Reference(text, *by_id)


def _registry_reference(text: Any, field: FieldPath, check: _FileCheck) -> bool:
    """True (and an error saying what to do instead) when text names a registry asset."""
    found = azureyaml.registry_reference(text) if isinstance(text, str) else None
    if found is not None:
        check.error(field, azureyaml.registry_message(found))
    return found is not None


def _deployment(
    doc: Mapping[str, Any], flavor: str, source: SourceLocation, check: _FileCheck
) -> _DeploymentDraft | None:
    model: ModelSpec | _Reference | None = None
    model_field: FieldPath = ("model",)
    given = doc.get("model")
    model_refused = _registry_reference(given, model_field, check)
    if model_refused:
        pass
    elif isinstance(given, str):
        model = _reference(given) or _model(
            {"path": given}, check, path_field=model_field, registered=False
        )
    elif isinstance(given, dict):
        model_field = ("model", "path")
        model = _model(given, check, path_field=model_field, registered=False)
        reported = {k: v for k, v in azureyaml.REPORTED_BY_AZURE[MODEL].items() if k != "id"}
        for name, what in reported.items():
            if name in given:
                check.no_effect(("model", name), what)

    code = None
    if "code_configuration" in doc:
        config = doc["code_configuration"]
        folder = check.repo_path(("code_configuration", "code"), config["code"], what="code folder")
        script = posixpath.normpath(config["scoring_script"] or ".")
        if script in (".", "..") or script.startswith(("../", "/")):
            field = ("code_configuration", "scoring_script")
            check.error(field, f"must be a file inside the code folder, got {script!r}")
        elif folder is not None:
            code = CodeSpec(path=folder, scoring_script=script)

    # No environment: a no-code deployment (an MLflow model brings its own), checked later.
    environment: EnvironmentSpec | _Reference | None = None
    if "environment" in doc and _registry_reference(doc["environment"], ("environment",), check):
        environment = None
    elif isinstance(doc.get("environment"), str):
        environment = _reference(doc["environment"])
    elif "environment" in doc:
        environment = _environment(doc["environment"], ("environment",), check)
        if "datastore" in doc["environment"]:
            what = azureyaml.REPORTED_BY_AZURE[ENVIRONMENT]["datastore"]
            check.no_effect(("environment", "datastore"), what)

    _check_secret_references(doc.get("environment_variables"), check)
    mount = doc.get("model_mount_path")
    if mount is not None and not mount.startswith("/"):
        check.error(("model_mount_path",), f"must be an absolute path, got {mount!r}")
    if doc.get("app_insights_enabled"):
        check.no_effect(("app_insights_enabled",), "app_insights_enabled true")
    if "data_collector" in doc:
        check.no_effect(("data_collector",), "data_collector")
    if doc.get("egress_public_network_access") == "disabled":
        check.no_effect(("egress_public_network_access",), "egress_public_network_access disabled")
    scale = _scale_settings(doc, check)
    resources = None
    if "resources" in doc:
        given_resources = doc["resources"]
        resources = Resources(
            requests=pairs(_quantities(given_resources.get("requests"))),
            limits=pairs(_quantities(given_resources.get("limits"))),
        )
    if environment is None and "environment" in doc:
        return None
    spec = DeploymentSpec(
        endpoint_name=doc["endpoint_name"],
        name=doc["name"],
        environment=EnvironmentSpec(),
        flavor=flavor,
        model_mount_path=mount,
        instance_type=doc.get("instance_type"),
        # Without instance_count, an autoscaled deployment starts at its minimum.
        instance_count=int(doc.get("instance_count", scale.min_instances or 1)),
        scale_settings=scale,
        request_settings=_shared(RequestSettings, _integers(doc.get("request_settings"))),
        liveness_probe=_shared(ProbeSettings, _integers(doc.get("liveness_probe"))),
        readiness_probe=_shared(ProbeSettings, _integers(doc.get("readiness_probe"))),
        environment_variables=pairs(doc.get("environment_variables")),
        resources=resources,
        app_insights_enabled=doc.get("app_insights_enabled", False),
        egress_public_network_access=doc.get("egress_public_network_access", "enabled"),
        data_collector=_canonical_json(doc.get("data_collector")),
        description=doc.get("description"),
        tags=pairs(doc.get("tags")),
        properties=pairs(doc.get("properties")),
        source=source,
    )
    return _DeploymentDraft(spec, model, model_field, code, environment, model_refused)


def _check_secret_references(variables: Mapping[str, Any] | None, check: _FileCheck) -> None:
    """Secret references in environment variables (reconciler.model.secrets): a broken
    one is an error; one among other text is passed as written, as Azure does, with a
    warning. The spec keeps the reference itself; the target resolves it."""
    for name, value in (variables or {}).items():
        if not isinstance(value, str):
            continue
        field: FieldPath = ("environment_variables", str(name))
        try:
            parse_reference(value)
        except MalformedReference as exc:
            check.error(field, str(exc))
            continue
        if mentions_reference(value):
            check.warn(
                field,
                "holds a secret reference among other text: only a value that is exactly "
                "one reference is resolved, so this one is passed as written",
            )


@dataclass(frozen=True, slots=True)
class _CondaInfo:
    """What a conda file declares: packages, Python, and its canonical text."""

    conda_packages: tuple[str, ...] = ()
    pip_packages: tuple[str, ...] = ()
    python_version: str | None = None
    errors: tuple[Diagnostic, ...] = ()
    # The file's content as canonical JSON: what the environment's image is keyed by, so
    # that files differing only in layout or comments share one image.
    canonical: str = ""


def _conda_info(path: str, data: bytes) -> _CondaInfo:
    """Packages of a conda file: text entries are conda packages, a `pip:` list pip ones."""
    parsed = load_yaml_document(data, path)
    if parsed.error is not None:
        return _CondaInfo(errors=(parsed.error,))
    if parsed.duplicate_keys:
        return _CondaInfo(errors=duplicate_key_diagnostics(data, parsed))
    check = _FileCheck(path, data)
    doc = parsed.value
    dependencies = doc.get("dependencies") if isinstance(doc, dict) else None
    if not isinstance(doc, dict):
        check.error((), "a conda file must be a mapping with a dependencies list")
    elif not isinstance(dependencies, list | None):
        check.error(("dependencies",), f"must be a list, got {_shown(dependencies, None)}")
    conda: list[str] = []
    pip: list[str] = []
    python = None
    for index, item in enumerate(dependencies if isinstance(dependencies, list) else []):
        if isinstance(item, str):
            conda.append(item)
            pinned = _PYTHON_PIN.match(item.strip())
            python = pinned.group(1) if pinned else python
        elif (
            isinstance(item, dict)
            and list(item) == ["pip"]
            and isinstance(item["pip"], list)
            and all(isinstance(p, str) for p in item["pip"])
        ):
            pip.extend(item["pip"])
        else:
            message = "must be a package (text) or a `pip:` list of packages"
            check.error(("dependencies", index), message)
    canonical = _canonical_json(doc) or ""
    return _CondaInfo(tuple(conda), tuple(pip), python, tuple(check.errors), canonical)


# --------------------------------------------------------------------------------------
# Per-process cache of what one file gives on its own


_CACHE: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _cached(key: tuple[str, str, str], compute: Callable[[], Any]) -> Any:
    """An LRU of CACHE_SIZE entries: a blob seen in another pass or revision is reused."""
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    value = compute()
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _store(key: tuple[str, str, str], value: Any) -> None:
    """Caches a value, replacing what the key held."""
    with _CACHE_LOCK:
        _CACHE[key] = value
        _CACHE.move_to_end(key)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)


def clear_cache() -> None:
    """Forget every cached file (for tests and benchmarks)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# --------------------------------------------------------------------------------------
# One load: every file of a tree, resolved and checked together


def _is_candidate(path: str) -> bool:
    return (
        path.lower().endswith((".yml", ".yaml"))
        and not path.startswith(_SKIPPED_PREFIXES)
        and path not in _SKIPPED_FILES
    )


def _by_version(versions: Iterable[str]) -> list[str]:
    """Versions in order: as numbers when every one is an integer, else as text."""
    listed = list(versions)
    if all(v.isdigit() for v in listed):
        return sorted(listed, key=int)
    return sorted(listed)


def _percentages(value: Any) -> dict[str, int]:
    """The well-formed entries of a traffic table (the schema reports the others)."""
    if not isinstance(value, dict):
        return {}
    return {
        str(k): int(v)
        for k, v in value.items()
        if _is_number(v) and float(v).is_integer()  # JSON Schema takes 50.0 for an integer
    }


def _order(item: Diagnostic) -> tuple[str, int, str, str]:
    return (item.file, item.line or 0, item.field, item.message)


Assets = dict[str, dict[str, tuple[str, Any]]]  # name -> version -> (file, resolved or None)


@dataclass(frozen=True, slots=True)
class _Content:
    """An environment with its packages and digest, or what keeps it from having them."""

    resolved: EnvironmentSpec | None
    problems: tuple[tuple[FieldPath, str], ...] = ()  # in the file that names the environment
    conda_errors: tuple[Diagnostic, ...] = ()  # in the conda file itself


class _Load:
    """The work of one load_desired_state call."""

    def __init__(
        self,
        tree: FileTree,
        instance_types: Mapping[str, InstanceType],
        target_names: tuple[str, ...] = (),
    ) -> None:
        self.tree = tree
        self.instance_types = instance_types
        # The targets of reconciler.yaml whose types make up instance_types, for errors.
        self.target_names = target_names
        self.digester = Digester(tree)
        self.paths = sorted(tree.paths())
        self.files = set(self.paths)
        self.dirs = {"."}
        for path in self.paths:
            folder = posixpath.dirname(path)
            while folder and folder not in self.dirs:
                self.dirs.add(folder)
                folder = posixpath.dirname(folder)
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.results: dict[str, _FileResult] = {}  # our files, in path order
        # Files with errors whose names cannot be read: they may declare what seems missing.
        self.unreadable: list[str] = []
        self.packages: dict[str, str] = {}  # environment made by a package spec -> its file
        self._lines: dict[str, FieldLines] = {}
        self._environments: dict[EnvironmentSpec, _Content] = {}
        self._codes: dict[CodeSpec, CodeSpec] = {}  # as written -> with its digest

    def line(self, path: str, field: FieldPath) -> int | None:
        if path not in self._lines:
            try:
                self._lines[path] = FieldLines(self.tree.read(path))
            except Exception:
                self._lines[path] = FieldLines(None)
        return self._lines[path].line(field)

    def error(self, path: str, field: FieldPath, message: str) -> None:
        self.errors.append(Diagnostic(path, self.line(path, field), field_name(field), message))

    def warn(self, path: str, field: FieldPath, message: str) -> None:
        self.warnings.append(Diagnostic(path, self.line(path, field), field_name(field), message))

    def digest(self, path: str) -> str:
        return self.digester.digest("" if path == "." else path)

    def of_kind(self, kind: str) -> list[tuple[str, _FileResult]]:
        return [(path, r) for path, r in self.results.items() if r.kind == kind]

    # -- files

    def read_all(self) -> None:
        for path in self.paths:
            if _is_candidate(path):
                result = self._sized_file(path)
                self.errors.extend(result.errors)
                self.warnings.extend(result.warnings)
                if result.kind is not None:
                    self.results[path] = result
                if result.package_environment is not None:
                    self.packages.setdefault(result.package_environment, path)
                data = result.data or {}
                names = ("name", "endpoint_name") if result.kind == DEPLOYMENT else ("name",)
                if result.errors and not all(isinstance(data.get(n), str) for n in names):
                    self.unreadable.append(path)

    def _sized_file(self, path: str) -> _FileResult:
        """One YAML file, unless it is too large to parse or is not a file to read."""
        try:
            size = self.tree.size(path)
        except TreeEntryError as exc:
            return _FileResult(errors=(Diagnostic(path, None, "", exc.message),))
        if size > MAX_YAML_BYTES:
            # Not read at all: a data file must not cost a gigabyte on every pass. A warning,
            # as a file this size is not one of ours, and never skipped in silence.
            message = (
                f"not read: {size:,} bytes, more than the {MAX_YAML_BYTES:,} a YAML file may "
                "hold; ignored, as no endpoint, deployment, model or environment file is "
                "this large"
            )
            return _FileResult(warnings=(Diagnostic(path, None, "", message),))
        result: _FileResult = self._cached_file(path, "file", _analyse, _FileResult)
        return result

    def perhaps_in(self) -> str:
        """A hint for "not declared" errors when a broken file may be the one declaring it."""
        if not self.unreadable:
            return ""
        return f"; {', '.join(self.unreadable[:3])} could not be read and may declare it"

    def _cached_file(
        self, path: str, kind: str, analyse: Callable[[str, bytes], Any], failed: Any
    ) -> Any:
        try:
            key = (kind, path, self.tree.blob_id(path))
            return _cached(key, lambda: analyse(path, self.tree.read(path)))
        except TreeEntryError as exc:  # a link out of the repository, a FIFO...
            return failed(errors=(Diagnostic(path, None, "", exc.message),))
        except Exception as exc:  # unreadable, or a bug: reported, never a traceback
            message = f"could not be loaded: {type(exc).__name__}: {exc}"
            return failed(errors=(Diagnostic(path, None, "", message),))

    # -- models and environments of model and environment files

    def assets(self, kind: str) -> Assets:
        """name -> version -> (file, resolved asset or None when the file is invalid)."""
        table: Assets = defaultdict(dict)
        for path, result in self.of_kind(kind):
            data = result.data or {}
            name, version = data.get("name"), data.get("version", "1")
            if not isinstance(name, str) or not isinstance(version, str | int):
                continue
            version = str(version)
            if version in table[name]:
                first = table[name][version][0]
                message = f"{kind} '{name}' version {version} is already declared in {first}"
                self.error(path, ("version",) if "version" in data else ("name",), message)
                continue
            # References to an invalid file resolve to None: its own errors say enough.
            asset = None if result.errors else result.asset
            if isinstance(asset, ModelSpec):
                asset = self.local_model(asset, path, ("path",))
            elif isinstance(asset, EnvironmentSpec):
                asset = self.environment(asset, path, ())
            table[name][version] = (path, asset)
        return table

    def lookup(self, reference: _Reference, table: Assets, *, kind: str, owner: str) -> Any:
        """The asset a reference names; None (and an error when it is missing) otherwise."""
        versions = table.get(reference.name)
        if not versions:
            message = (
                f"{kind} '{reference.name}' ({reference.text}) is not declared in this repository"
            )
            close = _close_matches(reference.name, sorted(table), n=1)
            package = self.packages.get(reference.name) if kind == ENVIRONMENT else None
            if package is not None:
                # A local limit, said as one: the package step has no counterpart here.
                message += (
                    f": it is the environment a model package makes ({package}, "
                    "target_environment), which `az ml model package` builds in an Azure ML "
                    "workspace; model packages are not built here. Deploy the model with its "
                    "environment and scoring script instead (model:, environment:, "
                    "code_configuration:)"
                )
            elif close:
                message += f" (did you mean '{close[0]}'?)"
            elif reference.name.lower().startswith("azureml-"):
                message += "; curated Azure ML environments are not available here"
            else:
                # The repository stands for the workspace: its assets are files here.
                version = f", version: {reference.version}" if reference.version else ""
                message += (
                    " (assets registered in an Azure ML workspace are not available here)"
                    f"; declare it with {'an' if kind == ENVIRONMENT else 'a'} {kind} file "
                    f"($schema ...{kind}.schema.json, "
                    f"name: {reference.name}{version})"
                )
            self.error(owner, (kind,), message)
            return None
        version = reference.version or _by_version(versions)[-1]
        if version not in versions:
            listed = ", ".join(_by_version(versions))
            message = f"{kind} '{reference.name}' has no version {version}; declared: {listed}"
            self.error(owner, (kind,), message)
            return None
        return versions[version][1]

    def local_model(self, model: ModelSpec, owner: str, field: FieldPath) -> ModelSpec | None:
        if model.path not in self.files and model.path not in self.dirs:
            self.error(owner, field, f"model path '{model.path}' does not exist")
            return None
        try:
            return replace(model, digest=self.digest(model.path))
        except TreeEntryError as exc:
            self.error(owner, field, exc.message)
            return None

    def environment(
        self, env: EnvironmentSpec, owner: str, prefix: FieldPath
    ) -> EnvironmentSpec | None:
        """An environment with its conda packages and content digest; problems reported.

        Deployments often share one inline environment, so the work is done once per
        distinct environment, while problems are still reported in each file that has them.
        """
        content = self._environments.get(env)
        if content is None:
            content = self._environments[env] = self._environment_content(env)
        for field, message in content.problems:
            self.error(owner, (*prefix, *field), message)
        self.errors.extend(content.conda_errors)
        return content.resolved

    def _environment_content(self, env: EnvironmentSpec) -> _Content:
        problems: list[tuple[FieldPath, str]] = []
        info = _CondaInfo()
        conda_digest: str | None = None
        build_digest: str | None = None
        if env.conda_file is not None:
            if env.conda_file not in self.files:
                problems.append((("conda_file",), f"conda file '{env.conda_file}' does not exist"))
            else:
                try:  # first: a conda file that is a link out of the repository is never read
                    self.digest(env.conda_file)
                except TreeEntryError as exc:
                    problems.append((("conda_file",), exc.message))
                else:
                    info = self._cached_file(env.conda_file, "conda", _conda_info, _CondaInfo)
                    conda_digest = spec_digest({"conda": info.canonical})
        if env.build_context is not None:
            dockerfile = posixpath.join(env.build_context, env.dockerfile_path)
            if env.build_context not in self.dirs:
                message = f"build context folder '{env.build_context}' does not exist"
                problems.append((("build", "path"), message))
            elif posixpath.normpath(dockerfile) not in self.files:
                message = f"no {env.dockerfile_path} in build context '{env.build_context}'"
                problems.append((("build", "dockerfile_path"), message))
            else:
                try:
                    build_digest = self.digest(env.build_context)
                except TreeEntryError as exc:
                    problems.append((("build", "path"), exc.message))
        if problems or info.errors:
            return _Content(None, tuple(problems), info.errors)
        config = env.inference_config
        content = {
            "image": env.image,
            "conda_file": conda_digest,
            "build": build_digest,
            "dockerfile_path": env.dockerfile_path if env.build_context else None,
            "inference_config": None
            if config is None
            else [[r.port, r.path] for r in (getattr(config, name) for name in _ROUTES)],
        }
        resolved = replace(
            env,
            conda_packages=info.conda_packages,
            pip_packages=info.pip_packages,
            python_version=info.python_version,
            digest=spec_digest(content),
        )
        return _Content(resolved)

    # -- deployments

    def deployments(self, models: Assets, environments: Assets) -> list[DeploymentSpec]:
        out = []
        for path, result in self.of_kind(DEPLOYMENT):
            if result.deployment is not None:
                spec = self.deployment(path, result, models, environments)
                if spec is not None and not result.errors:
                    out.append(spec)
        return out

    def deployment(
        self, path: str, result: _FileResult, models: Assets, environments: Assets
    ) -> DeploymentSpec | None:
        draft = result.deployment
        assert draft is not None
        complete = not draft.model_refused
        model = None
        if isinstance(draft.model, _Reference):
            model = self.lookup(draft.model, models, kind=MODEL, owner=path)
            complete = model is not None
        elif draft.model is not None:
            model = self.local_model(draft.model, path, draft.model_field)
            complete = model is not None
        code = draft.code
        if code is not None:
            code = self.code(code, path)
            complete = complete and code is not None
        if isinstance(draft.environment, _Reference):
            environment = self.lookup(draft.environment, environments, kind=ENVIRONMENT, owner=path)
        elif draft.environment is not None:
            environment = self.environment(draft.environment, path, ("environment",))
        elif complete:
            environment = self.no_code_environment(path, model, code, draft.model_field)
        else:
            environment = None
        if environment is None or not complete:
            return None
        if draft.spec.model_mount_path is not None and not environment.custom_container:
            message = "applies only to custom containers (an environment with inference_config)"
            self.error(path, ("model_mount_path",), message)
        no_code_needed = environment.custom_container or (
            model is not None
            and (
                model.type == MLFLOW_MODEL
                # Triton serves it, in an environment of its own.
                or (model.type == TRITON_MODEL and draft.environment is None)
            )
        )
        if code is None and not no_code_needed and not result.errors:
            message = (
                "missing required field 'code_configuration': a scoring script is needed "
                "unless the environment is a custom container or the model an mlflow_model"
            )
            if model is not None and model.type == TRITON_MODEL:
                message += (
                    " (a triton_model with no code_configuration names no environment "
                    "either: Triton Inference Server serves it)"
                )
            self.error(path, ("code_configuration",), message)
        instance_type = self.instance_type(draft.spec) or draft.spec.instance_type
        # The same spec object as the last load's when its file and all it resolved to are
        # unchanged (the other revision of `reconcile diff`, the daemon's next pass): its
        # digest is then known, and the diff sees an identical deployment at once.
        resolved = (model, code, environment, instance_type)
        key = ("spec", path, self.tree.blob_id(path))
        with _CACHE_LOCK:
            earlier = _CACHE.get(key)
        if earlier is not None and earlier[0] == resolved:
            spec: DeploymentSpec = earlier[1]
            return spec
        spec = replace(
            draft.spec,
            model=model,
            code=code,
            environment=environment,
            instance_type=instance_type,
        )
        _store(key, (resolved, spec))
        return spec

    def instance_type(self, spec: DeploymentSpec) -> str | None:
        """The table's spelling of the instance type (Azure matches it without regard to
        case); None when the table has no such type."""
        written = spec.instance_type
        if written is None:
            return None
        # Azure ML's Kubernetes extension gives every cluster this type; a cluster's other
        # types come from the target's instance_types.
        if spec.flavor == KUBERNETES and written.casefold() == KUBERNETES_DEFAULT_INSTANCE_TYPE:
            return KUBERNETES_DEFAULT_INSTANCE_TYPE
        return canonical_instance_type(written, self.instance_types)

    def no_code_environment(
        self, owner: str, model: ModelSpec | None, code: CodeSpec | None, model_field: FieldPath
    ) -> EnvironmentSpec | None:
        """The environment of a deployment that names none: its MLflow model's own, or
        Triton Inference Server's for a triton_model."""
        if model is not None and code is None and model.type == TRITON_MODEL:
            return self.triton_environment(owner, model, model_field)
        if model is None or model.type != MLFLOW_MODEL or code is not None:
            message = (
                "missing required field 'environment': only a deployment of an mlflow_model "
                "or a triton_model with no code_configuration may leave it out (the model's "
                "files say what serves it)"
            )
            self.error(owner, ("environment",), message)
            return None
        # The no-code modules only for a deployment that needs them (issue 15: start-up).
        from reconciler.nocode.mlflowmodel import MlflowModelError, mlflow_environment

        try:
            derived = mlflow_environment(model, self._read_if_file)
        except MlflowModelError as error:
            self.error(owner, model_field, f"{error.file}: {error.message}")
            return None
        for note in derived.notes:
            self.warn(owner, model_field, f"environment from {derived.source}: {note}")
        return derived.environment

    def triton_environment(
        self, owner: str, model: ModelSpec, model_field: FieldPath
    ) -> EnvironmentSpec | None:
        """Triton's environment, once the model repository is checked (a validate error
        naming the file, and line, of the first problem)."""
        from reconciler.nocode.triton import (
            TritonModelError,
            model_files,
            read_repository,
            triton_environment,
        )

        if model.path in self.files:
            message = (
                f"{model.path}: a triton_model is a folder (a model repository: "
                "MODEL/config.pbtxt, MODEL/1/model.onnx), not a file"
            )
            self.error(owner, model_field, message)
            return None
        try:
            repository = read_repository(
                model.path, model_files(model.path, self.files), self._read_if_file
            )
        except TritonModelError as error:
            self.error(owner, model_field, str(error))
            return None
        for note in repository.warnings:
            self.warn(owner, model_field, note)
        return triton_environment(model)

    def _read_if_file(self, path: str) -> bytes | None:
        return self.tree.read(path) if path in self.files else None

    def code(self, code: CodeSpec, owner: str) -> CodeSpec | None:
        # The deployments of an endpoint share a code folder: one object for them all, so
        # that their digests encode it once (specs._nested_text). Only a folder found and
        # digested is remembered; a problem is said in each file that has it.
        known = self._codes.get(code)
        if known is not None:
            return known
        if code.path not in self.dirs:
            message = f"code folder '{code.path}' does not exist"
            if code.path in self.files:
                message = f"code folder '{code.path}' is a file, not a folder"
                try:
                    self.tree.blob_id(code.path)
                except TreeEntryError as exc:  # a link: to a folder, or out of the repository
                    message = exc.message
            self.error(owner, ("code_configuration", "code"), message)
            return None
        script = posixpath.normpath(posixpath.join(code.path, code.scoring_script))
        if script not in self.files:
            message = f"scoring script '{code.scoring_script}' does not exist in '{code.path}'"
            self.error(owner, ("code_configuration", "scoring_script"), message)
            return None
        try:
            known = self._codes[code] = replace(code, digest=self.digest(code.path))
        except TreeEntryError as exc:
            field = "scoring_script" if exc.path == script else "code"
            self.error(owner, ("code_configuration", field), exc.message)
            return None
        return known

    # -- rules across files

    def declared(self) -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
        """Endpoints and deployments declared, valid or not, with the name rules checked.

        Invalid files count as declared, so that one mistake is reported once and does not
        also show up as traffic to an undeclared deployment, and so on.
        """
        endpoints: dict[str, list[str]] = defaultdict(list)
        for path, result in self.of_kind(ENDPOINT):
            name = (result.data or {}).get("name")
            if isinstance(name, str):
                if name in endpoints:
                    first = endpoints[name][0]
                    self.error(path, ("name",), f"endpoint '{name}' is already declared in {first}")
                endpoints[name].append(path)
        deployments: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for path, result in self.of_kind(DEPLOYMENT):
            data = result.data or {}
            endpoint, name = data.get("endpoint_name"), data.get("name")
            if not isinstance(endpoint, str):
                continue
            if endpoint not in endpoints:
                message = f"no endpoint named '{endpoint}' is declared in this repository"
                close = _close_matches(endpoint, sorted(endpoints), n=1)
                message += f" (did you mean '{close[0]}'?)" if close else self.perhaps_in()
                self.error(path, ("endpoint_name",), message)
            if not isinstance(name, str):
                continue
            if name in deployments[endpoint]:
                first = deployments[endpoint][name][0]
                message = f"deployment '{name}' of '{endpoint}' is already declared in {first}"
                self.error(path, ("name",), message)
            deployments[endpoint][name].append(path)
            low, high = KUBERNETES_NAME_LENGTHS
            if result.flavor == KUBERNETES and not low <= len(endpoint) + len(name) <= high:
                self.error(
                    path,
                    ("name",),
                    f"on Kubernetes, the endpoint and deployment names together must be {low} "
                    f"to {high} characters long, got {len(endpoint) + len(name)}",
                )
        for endpoint, names in deployments.items():
            if len(names) > MAX_DEPLOYMENTS_PER_ENDPOINT and endpoint in endpoints:
                self.error(
                    endpoints[endpoint][0],
                    ("name",),
                    f"endpoint '{endpoint}' has {len(names)} deployments; at most "
                    f"{MAX_DEPLOYMENTS_PER_ENDPOINT} are allowed",
                )
        return endpoints, deployments

    def check_traffic(self, declared: Mapping[str, Mapping[str, list[str]]]) -> None:
        for path, result in self.of_kind(ENDPOINT):
            data = result.data or {}
            name = data.get("name")
            if not isinstance(name, str):
                continue
            own = declared.get(name, {})
            traffic = _percentages(data.get("traffic"))
            mirror = _percentages(data.get("mirror_traffic"))
            for key, table in (("traffic", traffic), ("mirror_traffic", mirror)):
                for deployment in table:
                    if deployment not in own:
                        self.error(
                            path,
                            (key, deployment),
                            f"no deployment '{deployment}' of endpoint '{name}' is declared in "
                            f"this repository (declared: {', '.join(sorted(own)) or 'none'})"
                            + self.perhaps_in(),
                        )
            total = sum(traffic.values())
            if total not in (0, 100):
                message = f"traffic adds up to {total} percent; it must be 0 or 100"
                self.error(path, ("traffic",), message)
            for deployment, percent in mirror.items():
                if percent > 0 and traffic.get(deployment, 0) > 0:
                    self.error(
                        path,
                        ("mirror_traffic", deployment),
                        f"deployment '{deployment}' has {traffic[deployment]} percent of live "
                        "traffic; mirrored traffic must go to a deployment without live traffic",
                    )

    def check_deployments(self, endpoints: Mapping[str, EndpointSpec]) -> None:
        """Rules between a deployment and its endpoint, and the instance-type table."""
        known = sorted(self.instance_types)
        drafts = (r.deployment for _, r in self.of_kind(DEPLOYMENT))
        for spec in (d.spec for d in drafts if d is not None):
            path = spec.source.file if spec.source else ""
            endpoint = endpoints.get(spec.endpoint_name)
            if endpoint is not None and endpoint.flavor != spec.flavor:
                wanted = "type: kubernetes" if endpoint.flavor == KUBERNETES else "no type"
                message = (
                    f"endpoint '{endpoint.name}' is a {endpoint.flavor} endpoint; its "
                    f"deployments need {wanted}"
                )
                self.error(path, ("type",), message)
            written = spec.instance_type
            if written is not None and self.instance_type(spec) is None:
                close = _close_matches(written, known, n=3, cutoff=0.5)
                where = (
                    f" (no target of reconciler.yaml has it: {', '.join(self.target_names)})"
                    if self.target_names
                    else ""
                )
                # Compared without case, "_" and "-": Standard_DS3v2 and standard-ds3-v2
                # both mean Standard_DS3_v2.
                squeezed = {_squeeze(k): k for k in known}
                nearest = squeezed.get(_squeeze(written)) or (close[0] if close else None)
                message = f"unknown instance type '{written}'"
                if nearest is not None:
                    message += f" (did you mean '{nearest}'?)"
                message += f"{where}; valid names include " + ", ".join(close or known[:5])
                if written.casefold() == KUBERNETES_DEFAULT_INSTANCE_TYPE:
                    message = (
                        f"'{written}' is the default instance type of Kubernetes compute; a "
                        "managed deployment needs a VM size such as "
                        + ", ".join(close or known[:3])
                    )
                self.error(path, ("instance_type",), message)
            percent = weight_of(endpoint.traffic, spec.name) if endpoint else 0
            if percent and spec.instance_count == 0 and not spec.scale_settings.autoscaled:
                where = endpoint.source.file if endpoint and endpoint.source else path
                message = f"'{spec.name}' gets {percent} percent of traffic with instance_count 0"
                self.warn(where, ("traffic", spec.name), message)


def load_desired_state(
    tree: FileTree,
    *,
    instance_types: Mapping[str, InstanceType] = DEFAULT_INSTANCE_TYPES,
    revision: str | None = None,
    target_names: tuple[str, ...] = (),
) -> DesiredState:
    """Every endpoint and deployment a tree declares, validated and normalised.

    Raises DesiredStateInvalid with every error found, sorted by file, line and field.
    Warnings (fields accepted with no effect here, and the like) are in the state's warnings.
    `target_names`: the targets instance_types come from, named by an unknown type's error.
    """
    # The cache's objects outlive the load: no collection walks them while it runs.
    with cyclic_gc_paused():
        return _load_desired_state(tree, instance_types, revision, target_names)


def _load_desired_state(
    tree: FileTree,
    instance_types: Mapping[str, InstanceType],
    revision: str | None,
    target_names: tuple[str, ...],
) -> DesiredState:
    load = _Load(tree, instance_types, target_names)
    load.read_all()
    models = load.assets(MODEL)
    environments = load.assets(ENVIRONMENT)
    _, declared = load.declared()
    load.check_traffic(declared)
    endpoints: dict[str, EndpointSpec] = {}
    for _, result in load.of_kind(ENDPOINT):
        if result.endpoint is not None:
            endpoints.setdefault(result.endpoint.name, result.endpoint)
    deployments = load.deployments(models, environments)
    load.check_deployments(endpoints)
    if load.errors:
        raise DesiredStateInvalid(tuple(sorted(set(load.errors), key=_order)))
    return DesiredState(
        endpoints=tuple(sorted(endpoints.values(), key=lambda e: e.name)),
        deployments=tuple(sorted(deployments, key=lambda d: (d.endpoint_name, d.name))),
        warnings=tuple(sorted(set(load.warnings), key=_order)),
        revision=revision,
    )


def _squeeze(name: str) -> str:
    """An instance type's name without case, underscores and hyphens, to find near misses."""
    return name.casefold().replace("_", "").replace("-", "")


def _close_matches(
    word: str, possibilities: Iterable[str], *, n: int = 3, cutoff: float = 0.6
) -> list[str]:
    """difflib's close matches, imported only for an error's suggestion (start-up)."""
    import difflib

    return difflib.get_close_matches(word, list(possibilities), n=n, cutoff=cutoff)
