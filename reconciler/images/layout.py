"""Where a deployment's files and server sit in its image: the runtime contract.

PURE: paths and routes worked out from a spec, no I/O. The image builders (layers.py) put
the files there; both targets route requests and probe instances by `serving`, and the
Kubernetes manifests set the same variables, so this module must stay free of the Docker
SDK (import-linter: "Kubernetes manifests do no I/O").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from reconciler.model.specs import DeploymentSpec, Route
from reconciler.nocode import triton
from reconciler.nocode.mlflowmodel import generated_code
from reconciler.router.config import DeploymentRoute

__all__ = [
    "APP_ROOT",
    "MODELS_ROOT",
    "SERVER_PORT",
    "VENV",
    "DeploymentLayout",
    "Serving",
    "deployment_layout",
    "serving",
]

VENV = "/opt/venv"
APP_ROOT = "/var/azureml-app"
MODELS_ROOT = f"{APP_ROOT}/azureml-models"
SERVER_PORT = 5001


@dataclass(frozen=True, slots=True)
class DeploymentLayout:
    """Where a deployment's files sit in its image and the variables that point there."""

    code_source: str | None  # repository-relative folder
    code_dir: str | None  # /var/azureml-app/<code folder name>
    app_root: str | None  # folder of the scoring script
    entry_script: str | None  # its file name
    model_source: str | None  # repository-relative file or folder
    model_target: str | None  # where that file or folder goes
    model_dir: str  # AZUREML_MODEL_DIR

    def environment(self) -> tuple[tuple[str, str], ...]:
        variables = [("AZUREML_MODEL_DIR", self.model_dir)]
        if self.app_root and self.entry_script:
            variables += [
                ("AML_APP_ROOT", self.app_root),
                ("AZUREML_ENTRY_SCRIPT", self.entry_script),
            ]
        return tuple(variables)


def deployment_layout(deployment: DeploymentSpec) -> DeploymentLayout:
    """Paths of the runtime contract (SPEC-REFERENCE.md) for one deployment."""
    code = deployment.code
    code_dir = app_root = entry_script = None
    if code is not None:
        code_name = PurePosixPath(code.path.strip("/")).name or "code"
        code_dir = f"{APP_ROOT}/{code_name}"
        script = PurePosixPath(code_dir) / code.scoring_script
        app_root, entry_script = str(script.parent), script.name
    elif (generated := generated_code(deployment)) is not None:
        # A no-code MLflow deployment: the reconciler's scoring script, in a folder of its own.
        code_dir = app_root = f"{APP_ROOT}/{generated.folder}"
        entry_script = generated.scoring_script
    elif triton.serves_triton(deployment):
        # A no-code Triton deployment: the model repository Triton serves, generated.
        code_dir = app_root = f"{APP_ROOT}/{triton.CODE_FOLDER}"
    model = deployment.model
    if deployment.environment.custom_container and deployment.model_mount_path:
        model_dir = deployment.model_mount_path.rstrip("/") or "/"
    elif model is not None:
        model_dir = f"{MODELS_ROOT}/{model.name}/{model.version or '1'}"
    else:
        model_dir = MODELS_ROOT
    model_source = model_target = None
    if model is not None:
        model_source = model.path.strip("/")
        # A folder keeps its own name inside the model folder; a file sits directly in it.
        model_target = f"{model_dir}/{PurePosixPath(model_source).name}"
    return DeploymentLayout(
        code_source=code.path.strip("/") if code is not None else None,
        code_dir=code_dir,
        app_root=app_root,
        entry_script=entry_script,
        model_source=model_source,
        model_target=model_target,
        model_dir=model_dir,
    )


@dataclass(frozen=True, slots=True)
class Serving:
    """Where a deployment's server answers: requests, liveness and readiness (port, path)."""

    scoring: Route
    liveness: Route
    readiness: Route


def serving(spec: DeploymentSpec) -> Serving:
    """The routes of a deployment's server: the inference server's (SPEC-REFERENCE.md),
    Triton's for a no-code triton_model, or those a custom container's inference_config
    names. Both targets route requests and probe instances by them.
    """
    config = spec.environment.inference_config
    if config is not None:
        return Serving(config.scoring_route, config.liveness_route, config.readiness_route)
    if triton.serves_triton(spec):
        # Triton answers the KServe v2 paths, which the router passes on as they are;
        # `/score` reaches it as `/score` (and gets its 404).
        port = triton.HTTP_PORT
        return Serving(
            Route(port, "/score"), Route(port, triton.LIVE_PATH), Route(port, triton.READY_PATH)
        )
    return Serving(Route(SERVER_PORT, "/score"), Route(SERVER_PORT, "/"), Route(SERVER_PORT, "/"))


def route_of(spec: DeploymentSpec, instances: Iterable[str] = ()) -> DeploymentRoute:
    """How the router reaches a deployment, as both targets route it: the deployment's
    request settings and the scoring and liveness paths of what it serves (serving), to
    `instances` (host:port). The Docker target adds a custom container's probes."""
    routes = serving(spec)
    settings = spec.request_settings
    return DeploymentRoute(
        name=spec.name,
        instances=tuple(instances),
        request_timeout_ms=settings.request_timeout_ms,
        max_concurrent_requests_per_instance=settings.max_concurrent_requests_per_instance,
        max_queue_wait_ms=settings.max_queue_wait_ms,
        scoring_path=routes.scoring.path,
        liveness_path=routes.liveness.path,
    )
