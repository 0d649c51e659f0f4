"""No-code Triton deployments (`type: triton_model`): a model repository served by the real
Triton Inference Server, speaking the KServe v2 protocol.

Azure ML serves a triton_model (a model repository: `MODEL/config.pbtxt`,
`MODEL/1/model.onnx`, ...) with NVIDIA's Triton image and its backends. No image can be
pulled on our targets; the Triton build a package index has is the tritonserver binary
(2.51) inside the `nvidia-pytriton` wheel, which carries the Python backend alone. So here:
- the server is that tritonserver, on port 8000 (`GET /v2/health/ready`,
  `POST /v2/models/NAME/infer`, ...), installed from the wheel into the deployment's
  environment with onnxruntime and numpy<2 (the backend's stub is built against numpy 1);
- a model whose configuration says ONNX Runtime (`platform: "onnxruntime_onnx"`,
  `backend: "onnxruntime"`, or neither and a `model.onnx` file) is served by the Python
  backend running the reconciler's model.py (triton_onnx_model.py beside this module),
  which runs the ONNX file with onnxruntime's InferenceSession on the CPU. Its config.pbtxt
  is rewritten for that in the image, never in the user's folder: `backend: "python"`, the
  inputs, outputs, max_batch_size, batching and the rest kept, so Triton still checks each
  request (names, datatypes, shapes, batch size) against them before the model sees it;
- an ONNX model's configuration is completed from the model, as Triton completes it: a
  model folder without config.pbtxt whose version folders hold model.onnx is served with a
  generated one (its name, the Python backend), and the model.py's auto_complete_config
  adds the inputs and outputs the config does not list (and max_batch_size) when Triton
  loads it, so Azure's own Triton sample (no config.pbtxt) serves here;
- Python-backend models (their own model.py) and ensembles are served as they are;
- every other backend (TensorRT, PyTorch, TensorFlow, OpenVINO, ...) is refused when the
  files are validated, naming the file and the backend: Triton here cannot run it.

Pure apart from reading the shipped model.py: the repository's files come as a list of
paths and a `read` callable, so loading feeds them from a git tree and the image builder
from the checkout.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Final

from reconciler.model.specs import (
    TRITON_MODEL,
    DeploymentSpec,
    EnvironmentSpec,
    ModelSpec,
    spec_digest,
)
from reconciler.nocode.pbtxt import Field, PbtxtError, edit, parse, quote

__all__ = [
    "CODE_FOLDER",
    "HTTP_PORT",
    "LIVE_PATH",
    "PACKAGES",
    "READY_PATH",
    "TRITON_MODEL",
    "ImageEntry",
    "ServedModel",
    "TritonModelError",
    "TritonRepository",
    "entries_digest",
    "image_entries",
    "model_files",
    "onnx_model_script",
    "read_repository",
    "server_command",
    "server_environment",
    "serves_triton",
    "site_packages",
    "triton_environment",
]

CONFIG: Final = "config.pbtxt"
# Pinned: the stub of the Python backend is built against numpy 1, and one onnxruntime
# gives the same numbers wherever this environment is built.
PACKAGES: Final = ("nvidia-pytriton==0.7.0", "onnxruntime==1.32.0", "numpy==1.26.4")
# Part of the environment digest and of the generated files: bump it when the way the
# server is installed or the repository generated changes.
RECIPE: Final = "1"
HTTP_PORT: Final = 8000  # Triton's own default HTTP port
READY_PATH: Final = "/v2/health/ready"
LIVE_PATH: Final = "/v2/health/live"
# The folder of the generated model repository and backend links in an image, under the
# app root.
CODE_FOLDER: Final = "triton-nocode"
MODEL_FILE_PARAMETER: Final = "reconciler_onnx_model_file"

ONNX, PYTHON, ENSEMBLE = "onnx", "python", "ensemble"
_VERSION = re.compile(r"^[1-9][0-9]*$")  # Triton ignores other names, and those starting with 0
# Backends and platforms Triton has that the server installed here does not, for messages.
_OTHER_BACKENDS: Final = {
    "tensorrt_plan": "TensorRT",
    "tensorrt": "TensorRT",
    "pytorch_libtorch": "PyTorch",
    "pytorch": "PyTorch",
    "tensorflow_graphdef": "TensorFlow",
    "tensorflow_savedmodel": "TensorFlow",
    "tensorflow": "TensorFlow",
    "openvino": "OpenVINO",
    "fil": "FIL",
    "dali": "DALI",
    "vllm": "vLLM",
    "tensorrtllm": "TensorRT-LLM",
}
# A model file's name says its backend when config.pbtxt names none (Triton's auto-complete).
_FILE_BACKENDS: Final = {
    "model.onnx": ONNX,
    "model.py": PYTHON,
    "model.plan": "tensorrt",
    "model.pt": "pytorch",
    "model.savedmodel": "tensorflow",
    "model.graphdef": "tensorflow",
}
_SERVED_HERE: Final = (
    "the Triton Inference Server installed here (tritonserver 2.51 of the nvidia-pytriton "
    "wheel) has only its Python backend: it serves ONNX models (platform onnxruntime_onnx or "
    "backend onnxruntime, run by ONNX Runtime on the CPU), Python-backend models and "
    "ensembles of them. Serve this model with a scoring script (code_configuration and an "
    "environment) or a custom container"
)
# Top-level fields of an ONNX model's config that mean nothing to the Python backend:
# removed from the served copy (backend and the model file's name are set anew).
_DROPPED: Final = frozenset(
    {"platform", "backend", "runtime", "default_model_filename", "cc_model_filenames"}
)

# How the served model.py completes a configuration (the batch dimension), for notes.
_COMPLETION: Final = (
    " (a first dimension that is dynamic in every input and output, with max_batch_size "
    "unset or 0 and no tensor written, gives max_batch_size 4 and dynamic batching, as "
    "Triton's ONNX Runtime backend does; otherwise the dims are the model's shapes with "
    "max_batch_size as written)"
)

Reader = Callable[[str], bytes | None]


class TritonModelError(ValueError):
    """A model repository that cannot be served with no code; `file` and `line` say where."""

    def __init__(self, file: str, message: str, line: int | None = None) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")
        self.file = file
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One model of the repository and how it is served."""

    name: str  # its folder's name
    kind: str  # ONNX (served through the generated model.py), PYTHON or ENSEMBLE (as is)
    versions: tuple[str, ...]  # numbered version folders
    entries: tuple[str, ...]  # files, relative to the model's folder
    served_config: bytes | None = None  # the rewritten config.pbtxt of an ONNX model


@dataclass(frozen=True, slots=True)
class TritonRepository:
    """A validated model repository and what validation has to say about it."""

    folder: str  # repository-relative
    models: tuple[ServedModel, ...]
    warnings: tuple[str, ...] = ()


def serves_triton(deployment: DeploymentSpec) -> bool:
    """Whether Triton serves `deployment`: a triton_model with no code_configuration (a
    custom container runs as it is)."""
    model = deployment.model
    return (
        model is not None
        and model.type == TRITON_MODEL
        and deployment.code is None
        and not deployment.environment.custom_container
    )


def triton_environment(model: ModelSpec) -> EnvironmentSpec:
    """The environment of a no-code deployment of a triton_model: the server's packages."""
    digest = spec_digest({"no_code": TRITON_MODEL, "recipe": RECIPE, "pip": list(PACKAGES)})
    return EnvironmentSpec(
        name=f"{model.name}-triton",
        version=model.version,
        pip_packages=PACKAGES,
        digest=digest,
    )


# --- reading and checking a repository ------------------------------------------------------


def _scalar(fields: Iterable[Field], name: str) -> Field | None:
    for field in fields:
        if field.name == name and field.scalars:
            return field
    return None


def _has(fields: Iterable[Field], name: str) -> bool:
    return any(field.name == name for field in fields)


def _holds(entries: Iterable[str], version: str, filename: str) -> bool:
    """Whether version folder `version` holds `filename` (a file, or a folder of files)."""
    path = f"{version}/{filename}"
    return any(entry == path or entry.startswith(path + "/") for entry in entries)


def read_repository(folder: str, files: Iterable[str], read: Reader) -> TritonRepository:
    """Check the model repository at `folder` (repository-relative) whose files are `files`
    (repository-relative paths; others are ignored) and say how each model is served.

    Raises TritonModelError naming the file (and line) of the first problem.
    """
    folder = folder.strip("/")
    folder = "" if folder == "." else folder
    prefix = f"{folder}/" if folder else ""
    relative = sorted(path[len(prefix) :] for path in files if path.startswith(prefix))
    if CONFIG in relative:
        raise TritonModelError(
            f"{prefix}{CONFIG}",
            "this folder is one model's: a triton_model's path is the model repository, "
            "the folder holding one folder per model (MODEL/config.pbtxt, MODEL/1/model.onnx)",
        )
    per_model: dict[str, list[str]] = {}
    for path in relative:
        name, _, rest = path.partition("/")
        # Files beside the models (a README) are no model; hidden folders are not served.
        if rest and not name.startswith("."):
            per_model.setdefault(name, []).append(rest)
    if not per_model:
        raise TritonModelError(
            folder or ".",
            "a triton_model is a model repository: a folder with one folder per model "
            "(MODEL/config.pbtxt, MODEL/1/model.onnx); this one has none",
        )
    models: list[ServedModel] = []
    warnings: list[str] = []
    for name, entries in per_model.items():
        model, notes = _read_model(f"{prefix}{name}", name, tuple(entries), read)
        models.append(model)
        warnings.extend(notes)
    return TritonRepository(folder=folder, models=tuple(models), warnings=tuple(warnings))


def _read_model(
    path: str, name: str, entries: tuple[str, ...], read: Reader
) -> tuple[ServedModel, list[str]]:
    config_path = f"{path}/{CONFIG}"
    data = read(config_path) if CONFIG in entries else None
    if data is None:
        return _read_unconfigured(path, name, entries)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TritonModelError(config_path, "is not UTF-8 text") from None
    try:
        fields = parse(text)
    except PbtxtError as error:
        raise TritonModelError(config_path, error.message, error.line) from None
    written = _scalar(fields, "name")
    if written is not None and written.first() != name:
        raise TritonModelError(
            config_path,
            f"name '{written.first()}' differs from the model's folder '{name}' (Triton "
            "requires them equal)",
            written.line,
        )
    versions = _versions(path, name, entries)
    kind, _ = _kind(config_path, fields, entries, versions)
    notes: list[str] = []
    filename_field = _scalar(fields, "default_model_filename")
    if kind == ENSEMBLE:
        return ServedModel(name, ENSEMBLE, versions, entries), notes
    default_file = "model.onnx" if kind == ONNX else "model.py"
    filename = filename_field.first() if filename_field is not None else None
    filename = filename or default_file
    for version in versions:
        if not _holds(entries, version, filename):
            raise TritonModelError(
                f"{path}/{version}",
                f"version folder {version} holds no {filename}"
                + (" (config.pbtxt's default_model_filename)" if filename_field else ""),
            )
    if kind == PYTHON:
        notes.append(
            f"{config_path}: Python-backend model '{name}' runs with the packages of the "
            f"Triton environment ({', '.join(PACKAGES)}) and what they bring; anything else "
            "its model.py imports is not installed"
        )
        return ServedModel(name, PYTHON, versions, entries), notes
    missing = [tensors for tensors in ("input", "output") if not _has(fields, tensors)]
    if missing:
        notes.append(
            f"{config_path}: lists no {' and no '.join(missing)}: completed from the ONNX model "
            f"when it loads, as Triton completes an ONNX model's configuration{_COMPLETION}"
        )
    served, more = _served_config(text, fields, filename=filename, config_path=config_path)
    notes.extend(more)
    return ServedModel(name, ONNX, versions, entries, served_config=served.encode()), notes


def _read_unconfigured(
    path: str, name: str, entries: tuple[str, ...]
) -> tuple[ServedModel, list[str]]:
    """A model folder without config.pbtxt: Triton auto-completes the configuration of an ONNX
    model (its platform from the `model.onnx` file, its tensors from the model), as in Azure's
    own Triton sample; any other model needs a config.pbtxt here."""
    versions = _versions(path, name, entries)
    latest = versions[-1]
    if not _holds(entries, latest, "model.onnx"):
        raise TritonModelError(
            path,
            f"has no {CONFIG} and version folder {latest} holds no model.onnx: Triton completes "
            f"the configuration of an ONNX model (MODEL/1/model.onnx) by itself; any other "
            f"model folder needs a {CONFIG} (Triton's model configuration)",
        )
    for version in versions:
        if not _holds(entries, version, "model.onnx"):
            raise TritonModelError(
                f"{path}/{version}", f"version folder {version} holds no model.onnx"
            )
    text = f"name: {quote(name)}\n"
    served = text + "\n" + _SUFFIX + _file_parameter("model.onnx")
    note = (
        f"{path}: has no {CONFIG}: served as an ONNX model (platform onnxruntime_onnx, name "
        f"'{name}'), its inputs, outputs and max_batch_size completed from the ONNX model when "
        f"it loads, as Triton completes them{_COMPLETION}"
    )
    return ServedModel(name, ONNX, versions, entries, served_config=served.encode()), [note]


def _versions(path: str, name: str, entries: tuple[str, ...]) -> tuple[str, ...]:
    """The numbered version folders of a model, oldest first; an error when there is none."""
    folders = {entry.split("/", 1)[0] for entry in entries if "/" in entry}
    versions = tuple(sorted((f for f in folders if _VERSION.match(f)), key=int))
    if not versions:
        raise TritonModelError(
            path,
            f"no version folder: a model's files go in numbered folders ({name}/1/model.onnx, "
            f"{name}/2/...); {path} has none",
        )
    return versions


def _kind(
    config_path: str, fields: tuple[Field, ...], entries: tuple[str, ...], versions: tuple[str, ...]
) -> tuple[str, int | None]:
    """How a model is served (ONNX, PYTHON, ENSEMBLE) and the line that says so; a
    TritonModelError naming the backend for any other."""
    platform, backend = _scalar(fields, "platform"), _scalar(fields, "backend")
    platform_name = platform.first() if platform else None
    backend_name = backend.first() if backend else None
    if platform is not None and platform_name == "onnxruntime_onnx":
        return ONNX, platform.line
    if backend is not None and backend_name == "onnxruntime":
        return ONNX, backend.line
    if backend is not None and backend_name == PYTHON:
        return PYTHON, backend.line
    if platform is not None and platform_name == ENSEMBLE:
        return ENSEMBLE, platform.line
    for field, label in ((backend, "backend"), (platform, "platform")):
        if field is not None:
            value = field.first() or ""
            known = _OTHER_BACKENDS.get(value)
            shown = f"{label} '{value}'" + (f" ({known})" if known else "")
            raise TritonModelError(
                config_path, f"{shown} is not served here: {_SERVED_HERE}", field.line
            )
    latest = versions[-1]
    for filename, kind in _FILE_BACKENDS.items():
        if _holds(entries, latest, filename):
            if kind in (ONNX, PYTHON):
                return kind, None
            what = _OTHER_BACKENDS.get(kind, kind)
            raise TritonModelError(
                config_path,
                f"names no platform or backend, and {latest}/{filename} is a {what} model, "
                f"which is not served here: {_SERVED_HERE}",
            )
    raise TritonModelError(
        config_path,
        "names no platform or backend, and no model file says which (model.onnx, model.py, "
        f'... in version folder {latest}): set platform: "onnxruntime_onnx" or '
        'backend: "python"',
    )


def _served_config(
    text: str, fields: tuple[Field, ...], *, filename: str, config_path: str
) -> tuple[str, list[str]]:
    """The config.pbtxt an ONNX model is served with: the user's, with its platform, backend
    and model file name replaced by the Python backend and the reconciler's parameter."""
    changes: list[tuple[int, int, str]] = []
    notes: list[str] = []
    for field in fields:
        if field.name in _DROPPED:
            changes.append((field.start, field.end, ""))
        elif field.name == "optimization":
            # Execution accelerators (TensorRT, OpenVINO) and graph settings of the ONNX
            # Runtime backend; the Python backend refuses some of them.
            changes.append((field.start, field.end, ""))
            notes.append(
                f"{config_path}:{field.line}: optimization is not applied here (ONNX Runtime "
                "runs with its CPU provider and default graph optimizations)"
            )
        elif field.name == "instance_group":
            changes.extend(_on_cpu(field, config_path, notes))
    served = edit(text, changes).rstrip() + "\n\n" + _SUFFIX + _file_parameter(filename)
    return served, notes


def _on_cpu(field: Field, config_path: str, notes: list[str]) -> list[tuple[int, int, str]]:
    """KIND_GPU instance groups made KIND_CPU: onnxruntime here runs on the CPU only."""
    changes: list[tuple[int, int, str]] = []
    for group in field.messages:
        for item in group:
            if item.name == "kind" and item.first() == "KIND_GPU":
                scalar = item.scalars[0]
                changes.append((scalar.start, scalar.end, "KIND_CPU"))
                notes.append(
                    f"{config_path}:{item.line}: instance_group kind KIND_GPU runs as KIND_CPU "
                    "here (ONNX Runtime with its CPU provider)"
                )
            elif item.name == "gpus":
                changes.append((item.start, item.end, ""))
    return changes


_SUFFIX = (
    "# Added by ml-endpoint-reconciler: Triton's Python backend serves this ONNX model with\n"
    "# ONNX Runtime (model.py in each version folder); the original config.pbtxt is in\n"
    "# AZUREML_MODEL_DIR.\n"
    'backend: "python"\n'
)


def _file_parameter(filename: str) -> str:
    value = "{ string_value: " + quote(filename) + " }"
    return "parameters { key: " + quote(MODEL_FILE_PARAMETER) + " value " + value + " }\n"


# --- the image ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """A folder, file or symbolic link the reconciler puts in an image."""

    path: str  # absolute, in the image
    kind: str  # "dir", "file" or "link"
    content: bytes = b""
    target: str = ""  # a link's target


def onnx_model_script() -> bytes:
    """The model.py of ONNX models, as shipped with the package."""
    package = resources.files(__package__ or "reconciler.nocode")
    return package.joinpath("triton_onnx_model.py").read_bytes()


def _pytriton(site_packages: str) -> str:
    return f"{site_packages}/pytriton/tritonserver"


def image_entries(
    repository: TritonRepository, *, code_dir: str, model_copy: str, site_packages: str, python: str
) -> tuple[ImageEntry, ...]:
    """What a deployment's image holds besides the user's files: under `code_dir`, the model
    repository Triton serves (`models/`) and the Python backend (`backends/python/`).

    `model_copy` is where the user's repository sits in the image, `site_packages` the
    environment's, `python` its version ("3.11", which picks the backend's stub). Models
    served as they are, and the files of ONNX models, are links into `model_copy`: the
    image holds the user's files once.
    """
    backend = _pytriton(site_packages)
    entries = [
        ImageEntry(code_dir, "dir"),
        ImageEntry(f"{code_dir}/models", "dir"),
        ImageEntry(f"{code_dir}/backends", "dir"),
        ImageEntry(f"{code_dir}/backends/python", "dir"),
    ]
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        target = f"{backend}/backends/python/{name}"
        entries.append(ImageEntry(f"{code_dir}/backends/python/{name}", "link", target=target))
    stub = f"{backend}/python_backend_stubs/{python}/triton_python_backend_stub"
    entries.append(
        ImageEntry(f"{code_dir}/backends/python/triton_python_backend_stub", "link", target=stub)
    )
    script = onnx_model_script()
    for model in repository.models:
        source = f"{model_copy}/{model.name}"
        served = f"{code_dir}/models/{model.name}"
        if model.served_config is None:
            entries.append(ImageEntry(served, "link", target=source))
            continue
        entries += [
            ImageEntry(served, "dir"),
            ImageEntry(f"{served}/{CONFIG}", "file", model.served_config),
        ]
        tops = sorted({entry.split("/", 1)[0] for entry in model.entries})
        for top in tops:
            if top == CONFIG or top in model.versions:
                continue
            entries.append(ImageEntry(f"{served}/{top}", "link", target=f"{source}/{top}"))
        for version in model.versions:
            entries.append(ImageEntry(f"{served}/{version}", "dir"))
            inside = sorted({e.split("/")[1] for e in model.entries if e.startswith(f"{version}/")})
            for item in inside:
                if item != "model.py":
                    target = f"{source}/{version}/{item}"
                    entries.append(ImageEntry(f"{served}/{version}/{item}", "link", target=target))
            entries.append(ImageEntry(f"{served}/{version}/model.py", "file", script))
    return tuple(entries)


def entries_digest(entries: Iterable[ImageEntry]) -> str:
    """Content digest of generated entries: part of the thin image's identity."""
    canonical = [[e.path, e.kind, hashlib.sha256(e.content).hexdigest(), e.target] for e in entries]
    text = json.dumps({"recipe": RECIPE, "entries": canonical}, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def server_command(*, code_dir: str, site_packages: str) -> tuple[str, ...]:
    """The command that runs tritonserver on the generated repository."""
    return (
        f"{_pytriton(site_packages)}/bin/tritonserver",
        f"--model-repository={code_dir}/models",
        f"--backend-directory={code_dir}/backends",
        f"--http-port={HTTP_PORT}",
        # The router speaks HTTP to it; metrics are the router's.
        "--allow-grpc=false",
        "--allow-metrics=false",
        # Warnings and errors only: at info level the server prints its tables of models
        # and options (some 40 lines) as it exits, and a failed model's reason would fall
        # out of the log tail that status and `reconcile logs` show.
        "--log-info=false",
        # Pinned (page-locked) host memory serves CUDA copies; ONNX Runtime here runs on the
        # CPU, and without a GPU driver the pool only logs a warning.
        "--pinned-memory-pool-byte-size=0",
    )


def server_environment(*, site_packages: str) -> tuple[tuple[str, str], ...]:
    """Variables tritonserver needs: the shared libraries the wheel carries."""
    return (("LD_LIBRARY_PATH", f"{site_packages}/nvidia_pytriton.libs"),)


def model_files(folder: str, paths: Iterable[str]) -> list[str]:
    """The paths under `folder` among `paths` (repository-relative), for read_repository."""
    folder = folder.strip("/")
    if folder in ("", "."):
        return list(paths)
    prefix = folder + "/"
    return [path for path in paths if path.startswith(prefix)]


def site_packages(venv: str, python: str) -> str:
    return posixpath.join(venv, "lib", f"python{python}", "site-packages")
