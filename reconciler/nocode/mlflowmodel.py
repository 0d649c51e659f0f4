"""No-code MLflow deployments: the environment and the scoring script an MLflow model needs.

A deployment whose model is `type: mlflow_model` (a folder with an `MLmodel` file) may name
no environment and no code_configuration, as in Azure ML. Its environment then comes from
the model's own files, which MLflow writes when it logs a model: the conda file that
`MLmodel` names (`conda.yaml`), else `python_env.yaml` with its `requirements.txt`, else a
`requirements.txt` alone. Its scoring script is mlflow_score.py beside this module,
copied as `score.py` into the deployment's image; it serves the model's pyfunc flavor.

Pure apart from reading that shipped script: the model's files come through a `read`
callable (repository-relative path -> bytes, or None when there is no such file), so
loading can feed it from a git tree and tests from plain values.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import yaml

from reconciler.model.specs import (
    MLFLOW_MODEL,
    DeploymentSpec,
    EnvironmentSpec,
    ModelSpec,
    spec_digest,
)

__all__ = [
    "MLFLOW_MODEL",
    "MLMODEL",
    "SCORING_SCRIPT",
    "GeneratedCode",
    "MlflowEnvironment",
    "MlflowModelError",
    "generated_code",
    "mlflow_environment",
    "scoring_code",
]

MLMODEL: Final = "MLmodel"
SCORING_SCRIPT: Final = "score.py"
# The folder of the generated script in an image, under /var/azureml-app.
CODE_FOLDER: Final = "mlflow-nocode"
# Part of the environment digest: bump it when the way requirements are derived changes,
# so environments derived the old way are rebuilt.
RECIPE: Final = "1"

# What the generated scoring script imports, beside the inference server.
SCRIPT_PACKAGES: Final = ("mlflow-skinny", "pandas", "numpy")
_NAME: Final = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PYTHON_PIN: Final = re.compile(r"^python\s*(?:={1,2}|>=|~=)?\s*([0-9]+\.[0-9]+)")
# `mlflow==3.1.0`, `mlflow>=2`, `mlflow`; not `mlflow[extras]`, `mlflow-skinny`, ...
_MLFLOW_LINE: Final = re.compile(r"^\s*mlflow\s*(?=$|[<>=!~;\s])", re.IGNORECASE)


class MlflowModelError(ValueError):
    """An MLflow model that cannot be deployed with no code; `file` is where it shows."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


@dataclass(frozen=True, slots=True)
class MlflowEnvironment:
    """The environment derived from a model folder, and what was changed on the way."""

    environment: EnvironmentSpec
    source: str  # repository-relative file the requirements came from
    notes: tuple[str, ...] = ()  # substitutions worth a warning


@dataclass(frozen=True, slots=True)
class GeneratedCode:
    """A scoring script the reconciler writes for a no-code deployment."""

    folder: str  # folder name under the app root
    scoring_script: str  # file name in it
    content: bytes
    digest: str  # "sha256:..." of content


Reader = Callable[[str], bytes | None]


def scoring_code() -> GeneratedCode:
    """The scoring script of no-code MLflow deployments, as shipped with the package."""
    content = resources.files(__package__ or "reconciler.nocode").joinpath("mlflow_score.py")
    data = content.read_bytes()
    return GeneratedCode(
        folder=CODE_FOLDER,
        scoring_script=SCORING_SCRIPT,
        content=data,
        digest="sha256:" + hashlib.sha256(data).hexdigest(),
    )


def generated_code(deployment: DeploymentSpec) -> GeneratedCode | None:
    """The scoring script the reconciler writes for `deployment`, if it needs one: an
    mlflow_model with no code_configuration (a custom container runs as it is).
    """
    model = deployment.model
    if deployment.code is not None or deployment.environment.custom_container:
        return None
    if model is None or model.type != MLFLOW_MODEL:
        return None
    return scoring_code()


def _yaml_mapping(read: Reader, path: str, what: str) -> dict[str, Any] | None:
    data = read(path)
    if data is None:
        return None
    try:
        value = yaml.safe_load(data)
    except yaml.YAMLError as error:
        raise MlflowModelError(path, f"{what} is not valid YAML: {error}") from None
    if not isinstance(value, dict):
        raise MlflowModelError(path, f"{what} must be a YAML mapping")
    return value


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_lines(read: Reader, path: str, *, depth: int = 0) -> list[str]:
    """Lines of a pip requirements file, `-r FILE` inlined (relative to that file)."""
    data = read(path)
    if data is None:
        raise MlflowModelError(path, "the requirements file does not exist")
    lines: list[str] = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        lines.extend(_expanded(read, path, line, depth=depth))
    return lines


def _expanded(read: Reader, owner: str, line: str, *, depth: int) -> list[str]:
    option, _, target = line.partition(" ")
    if option in ("-r", "--requirement", "-c", "--constraint") and target.strip():
        if option in ("-c", "--constraint"):
            # The image's install has no constraints file; silently dropping one would
            # install versions the author excluded.
            raise MlflowModelError(
                owner, f"constraints files ({line}) are not supported: pin the versions instead"
            )
        if depth >= 5:
            raise MlflowModelError(owner, f"requirements files nest too deep at {line}")
        included = posixpath.normpath(posixpath.join(posixpath.dirname(owner), target.strip()))
        return _requirement_lines(read, included, depth=depth + 1)
    return [line]


def _skinny(lines: list[str]) -> tuple[list[str], list[str]]:
    """`mlflow` requirements as `mlflow-skinny` of the same version, plus what the scoring
    script imports when the model does not name it; and notes saying so.

    Loading a pyfunc model needs only mlflow-skinny; the full package adds the tracking
    server, its UI and database drivers (pyarrow, matplotlib, SQLAlchemy, ...), about 95 MB
    of wheels in every image that serve no purpose here. It also brings pandas and numpy,
    which the scoring script needs: they are added when the model does not name them.
    """
    out, notes = [], []
    for line in lines:
        if _MLFLOW_LINE.match(line):
            swapped = _MLFLOW_LINE.sub("mlflow-skinny", line, count=1)
            out.append(swapped)
            notes.append(f"'{line}' is installed as '{swapped}' (enough to load pyfunc models)")
        else:
            out.append(line)
    named = {_canonical(match.group(1)) for line in out if (match := _NAME.match(line))}
    if "mlflow" in named:  # mlflow[extras]: the full package, which brings skinny
        named.add("mlflow-skinny")
    for package in SCRIPT_PACKAGES:
        if package not in named:
            out.append(package)
            notes.append(f"'{package}' is added: the scoring script needs it")
    return out, notes


def _conda(read: Reader, path: str) -> tuple[list[str], list[str], str | None]:
    """(conda packages, pip lines, python major.minor) of an MLflow conda file."""
    doc = _yaml_mapping(read, path, "the conda file")
    assert doc is not None
    dependencies = doc.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise MlflowModelError(path, "dependencies must be a list")
    conda: list[str] = []
    pip: list[str] = []
    python = None
    for item in dependencies:
        if isinstance(item, str):
            conda.append(item)
            if pinned := _PYTHON_PIN.match(item.strip()):
                python = pinned.group(1)
        elif isinstance(item, dict) and isinstance(item.get("pip"), list):
            for line in item["pip"]:
                pip.extend(_expanded(read, path, str(line).strip(), depth=0))
        else:
            raise MlflowModelError(path, f"a dependency must be text or a pip: list, got {item!r}")
    return conda, pip, python


def _python_env(read: Reader, path: str) -> tuple[list[str], str | None]:
    """(pip lines, python major.minor) of an MLflow python_env.yaml."""
    doc = _yaml_mapping(read, path, "python_env.yaml")
    assert doc is not None
    pinned = _PYTHON_PIN.match(f"python={doc.get('python', '')}")
    pip: list[str] = []
    for line in doc.get("dependencies") or []:
        pip.extend(_expanded(read, path, str(line).strip(), depth=0))
    return pip, pinned.group(1) if pinned else None


def _env_files(pyfunc: dict[str, Any]) -> tuple[str | None, str | None]:
    """The conda and virtualenv file names MLmodel gives (MLflow < 2 wrote `env: FILE`)."""
    env = pyfunc.get("env")
    if isinstance(env, str):
        return env, None
    if isinstance(env, dict):
        conda, virtualenv = env.get("conda"), env.get("virtualenv")
        return (
            conda if isinstance(conda, str) else None,
            virtualenv if isinstance(virtualenv, str) else None,
        )
    return None, None


def mlflow_environment(model: ModelSpec, read: Reader) -> MlflowEnvironment:
    """The environment of a no-code deployment of `model`, from the model's own files.

    Raises MlflowModelError naming the file when the folder is no MLflow model, has no
    pyfunc flavor, or says nothing of its requirements.
    """
    folder = model.path.strip("/")
    mlmodel_path = posixpath.join(folder, MLMODEL)
    mlmodel = _yaml_mapping(read, mlmodel_path, "MLmodel")
    if mlmodel is None:
        raise MlflowModelError(
            folder,
            f"an mlflow_model is a folder with an {MLMODEL} file (as MLflow saves a model); "
            f"there is no {mlmodel_path}",
        )
    flavors = mlmodel.get("flavors")
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    if not isinstance(pyfunc, dict):
        names = sorted(flavors) if isinstance(flavors, dict) else []
        raise MlflowModelError(
            mlmodel_path,
            "the model has no python_function flavor, which no-code deployment serves "
            f"(flavors: {', '.join(names) or 'none'}); deploy it with a scoring script",
        )
    conda_name, virtualenv_name = _env_files(pyfunc)
    candidates = [
        ("conda", conda_name or "conda.yaml"),
        ("virtualenv", virtualenv_name or "python_env.yaml"),
        ("requirements", "requirements.txt"),
    ]
    conda: list[str] = []
    pip: list[str] = []
    python: str | None = None
    source = None
    for kind, name in candidates:
        path = posixpath.normpath(posixpath.join(folder, name))
        if read(path) is None:
            continue
        source = path
        if kind == "conda":
            conda, pip, python = _conda(read, path)
        elif kind == "virtualenv":
            pip, python = _python_env(read, path)
        else:
            pip = _requirement_lines(read, path)
        break
    if source is None:
        raise MlflowModelError(
            mlmodel_path,
            "the model names no requirements: none of conda.yaml, python_env.yaml, "
            "requirements.txt is in its folder (MLflow writes them when it logs a model)",
        )
    if python is None and isinstance(pyfunc.get("python_version"), str):
        pinned = _PYTHON_PIN.match(f"python={pyfunc['python_version']}")
        python = pinned.group(1) if pinned else None
    pip, notes = _skinny(pip)
    conda_packages = tuple(conda)
    pip_packages = tuple(pip)
    digest = spec_digest(
        {
            "no_code": MLFLOW_MODEL,
            "recipe": RECIPE,
            "conda": list(conda_packages),
            "pip": list(pip_packages),
            "python": python,
        }
    )
    environment = EnvironmentSpec(
        name=f"{model.name}-mlflow",
        version=model.version,
        conda_packages=conda_packages,
        pip_packages=pip_packages,
        python_version=python,
        digest=digest,
    )
    return MlflowEnvironment(environment=environment, source=source, notes=tuple(notes))
