"""An MLflow model folder -> the environment of its no-code deployment (reconciler.nocode).

The files are written as MLflow 3 writes them when it logs a scikit-learn model (copied
from a real `mlflow.sklearn.save_model` output), plus the older and sparser layouts.
"""

from __future__ import annotations

import ast

import pytest

from reconciler.model.specs import ModelSpec
from reconciler.nocode.mlflowmodel import (
    MlflowModelError,
    mlflow_environment,
    scoring_code,
)

MLMODEL = b"""\
flavors:
  python_function:
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: mlflow.sklearn
    model_path: model.pkl
    predict_fn: predict
    python_version: 3.11.7
  sklearn:
    pickled_model: model.pkl
    serialization_format: cloudpickle
    sklearn_version: 1.9.1
mlflow_version: 3.17.2
signature:
  inputs: '[{"type": "double", "name": "a", "required": true}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1]}}]'
"""
CONDA = b"""\
channels:
- conda-forge
dependencies:
- python=3.11.7
- pip<=23.2.1
- pip:
  - mlflow==3.17.2
  - cloudpickle==3.1.3
  - scikit-learn==1.9.1
name: mlflow-env
"""
PYTHON_ENV = b"""\
python: 3.10.12
build_dependencies:
- pip==23.2.1
dependencies:
- -r requirements.txt
"""
REQUIREMENTS = b"mlflow==3.17.2\ncloudpickle==3.1.3\n# a comment\n\nlightgbm==4.7.0\n"
MODEL = ModelSpec(name="credit", version="3", path="models/credit", type="mlflow_model")


def reader(files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    return lambda path: files.get(path)


def folder(**files: bytes) -> dict[str, bytes]:
    return {f"models/credit/{name.replace('_dot_', '.')}": data for name, data in files.items()}


def test_conda_file_named_by_mlmodel_gives_the_packages() -> None:
    files = folder(
        MLmodel=MLMODEL,
        conda_dot_yaml=CONDA,
        python_env_dot_yaml=PYTHON_ENV,
        requirements_dot_txt=REQUIREMENTS,
    )
    result = mlflow_environment(MODEL, reader(files))
    env = result.environment
    assert result.source == "models/credit/conda.yaml"
    assert env.pip_packages == (
        "mlflow-skinny==3.17.2",
        "cloudpickle==3.1.3",
        "scikit-learn==1.9.1",
        "pandas",
        "numpy",
    )
    assert env.conda_packages == ("python=3.11.7", "pip<=23.2.1")
    assert env.python_version == "3.11"
    assert (env.name, env.version) == ("credit-mlflow", "3")
    assert env.image is None and env.conda_file is None and not env.custom_container
    assert env.digest.startswith("sha256:")
    assert result.notes == (
        "'mlflow==3.17.2' is installed as 'mlflow-skinny==3.17.2' (enough to load pyfunc models)",
        "'pandas' is added: the scoring script needs it",
        "'numpy' is added: the scoring script needs it",
    )


def test_python_env_and_its_requirements_file_when_there_is_no_conda_file() -> None:
    files = folder(
        MLmodel=MLMODEL, python_env_dot_yaml=PYTHON_ENV, requirements_dot_txt=REQUIREMENTS
    )
    env = mlflow_environment(MODEL, reader(files)).environment
    assert env.pip_packages[:3] == (
        "mlflow-skinny==3.17.2",
        "cloudpickle==3.1.3",
        "lightgbm==4.7.0",
    )
    assert env.conda_packages == ()
    assert env.python_version == "3.10"


def test_requirements_file_alone_and_the_python_of_mlmodel() -> None:
    requirements = b"mlflow\nscikit-learn>=1.3 # why\nPandas==2.2\nnumpy<2\n"
    files = folder(MLmodel=MLMODEL, requirements_dot_txt=requirements)
    result = mlflow_environment(MODEL, reader(files))
    assert result.source == "models/credit/requirements.txt"
    # pandas and numpy as the model names them (any spelling): nothing added.
    expected = ("mlflow-skinny", "scikit-learn>=1.3", "Pandas==2.2", "numpy<2")
    assert result.environment.pip_packages == expected
    assert result.environment.python_version == "3.11"


def test_old_mlmodel_env_as_a_file_name() -> None:
    old = b"flavors:\n  python_function:\n    env: my_env.yaml\n    loader_module: mlflow.sklearn\n"
    files = folder(MLmodel=old, my_env_dot_yaml=CONDA)
    assert mlflow_environment(MODEL, reader(files)).source == "models/credit/my_env.yaml"


@pytest.mark.parametrize("line", ["mlflow[genai]==3.1", "mlflow-skinny==3.1"])
def test_only_the_plain_mlflow_package_becomes_skinny(line: str) -> None:
    files = folder(MLmodel=MLMODEL, requirements_dot_txt=f"{line}\npandas\nnumpy\n".encode())
    result = mlflow_environment(MODEL, reader(files))
    assert result.environment.pip_packages == (line, "pandas", "numpy")
    assert result.notes == ()


def test_what_the_scoring_script_imports_is_added_when_the_model_does_not_name_it() -> None:
    # As in Azure's own samples: `mlflow` unpinned, no pandas (full mlflow brought it).
    conda = b"dependencies:\n- python=3.12\n- pip:\n  - mlflow\n  - mlflowx\n  - scikit-learn\n"
    files = folder(MLmodel=MLMODEL, conda_dot_yaml=conda)
    result = mlflow_environment(MODEL, reader(files))
    expected = ("mlflow-skinny", "mlflowx", "scikit-learn", "pandas", "numpy")
    assert result.environment.pip_packages == expected
    assert result.environment.python_version == "3.12"
    assert len(result.notes) == 3


def test_digest_follows_the_packages_not_the_formatting() -> None:
    base = folder(MLmodel=MLMODEL, conda_dot_yaml=CONDA)
    reformatted = folder(MLmodel=MLMODEL, conda_dot_yaml=b"# logged by MLflow\n" + CONDA + b"\n")
    changed = folder(MLmodel=MLMODEL, conda_dot_yaml=CONDA.replace(b"1.9.1", b"1.9.0"))
    digest = mlflow_environment(MODEL, reader(base)).environment.digest
    assert mlflow_environment(MODEL, reader(reformatted)).environment.digest == digest
    assert mlflow_environment(MODEL, reader(changed)).environment.digest != digest


def test_nested_requirements_files_are_inlined() -> None:
    files = folder(
        MLmodel=MLMODEL,
        requirements_dot_txt=b"-r extra/more.txt\nnumpy\n",
        **{"extra/more_dot_txt": b"pandas==2.2\n"},
    )
    env = mlflow_environment(MODEL, reader(files)).environment
    assert env.pip_packages == ("pandas==2.2", "numpy", "mlflow-skinny")


@pytest.mark.parametrize(
    ("files", "where", "words"),
    [
        ({}, "models/credit", "there is no models/credit/MLmodel"),
        ({"MLmodel": b"flavors: [oops"}, "models/credit/MLmodel", "not valid YAML"),
        (
            {"MLmodel": b"flavors:\n  keras: {}\n"},
            "models/credit/MLmodel",
            "no python_function flavor, which no-code deployment serves (flavors: keras)",
        ),
        ({"MLmodel": MLMODEL}, "models/credit/MLmodel", "none of conda.yaml, python_env.yaml"),
        (
            {"MLmodel": MLMODEL, "requirements_dot_txt": b"-c constraints.txt\n"},
            "models/credit/requirements.txt",
            "constraints files (-c constraints.txt) are not supported",
        ),
        (
            {"MLmodel": MLMODEL, "conda_dot_yaml": b"dependencies: numpy\n"},
            "models/credit/conda.yaml",
            "dependencies must be a list",
        ),
    ],
)
def test_refusals_name_the_file(files: dict[str, bytes], where: str, words: str) -> None:
    with pytest.raises(MlflowModelError) as caught:
        mlflow_environment(MODEL, reader(folder(**files)))
    assert caught.value.file == where
    assert words in caught.value.message


def test_scoring_script_is_shipped_with_init_and_run() -> None:
    code = scoring_code()
    assert (code.folder, code.scoring_script) == ("mlflow-nocode", "score.py")
    tree = ast.parse(code.content)
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"init", "run"} <= functions
    assert code.digest.startswith("sha256:") and len(code.digest) == 71


def test_the_generated_script_has_its_place_in_the_runtime_contract() -> None:
    # Docker and Kubernetes share the layout (and the image builder): both start azmlinfsrv
    # on the generated score.py, with the model where AZUREML_MODEL_DIR says.
    from specs_factory import deployment

    from reconciler.images.layout import deployment_layout
    from reconciler.targets.kubernetes.manifests import environment_of

    model = ModelSpec("credit", "3", "models/credit-model", type="mlflow_model", digest="d")
    no_code = deployment(code=None, model=model)
    layout = deployment_layout(no_code)
    assert (layout.code_dir, layout.app_root, layout.entry_script) == (
        "/var/azureml-app/mlflow-nocode",
        "/var/azureml-app/mlflow-nocode",
        "score.py",
    )
    assert layout.model_target == "/var/azureml-app/azureml-models/credit/3/credit-model"
    variables = {item["name"]: item["value"] for item in environment_of(no_code)}
    assert variables["AML_APP_ROOT"] == "/var/azureml-app/mlflow-nocode"
    assert variables["AZUREML_ENTRY_SCRIPT"] == "score.py"
    # A custom model with no code gets no script: loading refuses it, and so would a build.
    assert deployment_layout(deployment(code=None)).entry_script is None
