"""Loading no-code deployments: an mlflow_model with no environment and no code.

Azure ML deploys an MLflow model with neither: the environment comes from the model's own
files and the scoring is generated. A Triton model repository with neither is served by
Triton Inference Server; what Triton here cannot serve is refused at validate time, naming
the file.
"""

from __future__ import annotations

from textwrap import dedent

import pytest

from reconciler import loading
from reconciler.filetree import MemoryTree
from reconciler.loading import load_desired_state
from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic
from reconciler.model.state import DesiredState

AZURE = "https://azuremlschemas.azureedge.net/latest/"
ENDPOINT = f"$schema: {AZURE}managedOnlineEndpoint.schema.json\nname: mlflow-ep\n"
MLMODEL = dedent(
    """\
    flavors:
      python_function:
        env:
          conda: conda.yaml
          virtualenv: python_env.yaml
        loader_module: mlflow.sklearn
        python_version: 3.11.7
    mlflow_version: 3.17.2
    """
)
CONDA = dedent(
    """\
    channels:
    - conda-forge
    dependencies:
    - python=3.11.7
    - pip<=23.2.1
    - pip:
      - mlflow==3.17.2
      - scikit-learn==1.9.1
    name: mlflow-env
    """
)


def deployment(model: str, extra: str = "") -> str:
    return (
        f"$schema: {AZURE}managedOnlineDeployment.schema.json\n"
        "name: blue\nendpoint_name: mlflow-ep\n"
        f"model:\n{model}"
        "instance_type: Standard_DS3_v2\ninstance_count: 1\n"
    ) + extra


def tree(overrides: dict[str, str] | None = None, **files: str) -> MemoryTree:
    """The endpoint and the model folder, plus `files` ('__' for '/', '_dot_' for '.')."""
    base = {
        "endpoint.yml": ENDPOINT,
        "model/sklearn-model/MLmodel": MLMODEL,
        "model/sklearn-model/conda.yaml": CONDA,
        "model/sklearn-model/model.pkl": "weights",
    }
    base.update({path.replace("__", "/").replace("_dot_", "."): v for path, v in files.items()})
    base.update(overrides or {})
    return MemoryTree({path: text.encode() for path, text in base.items() if text})


def load(files: MemoryTree) -> DesiredState:
    loading.clear_cache()
    return load_desired_state(files)


def errors(files: MemoryTree) -> tuple[Diagnostic, ...]:
    with pytest.raises(DesiredStateInvalid) as caught:
        load(files)
    return caught.value.errors


MLFLOW_INLINE = "  path: model/sklearn-model\n  type: mlflow_model\n"


def test_an_mlflow_model_deploys_with_no_environment_and_no_code() -> None:
    state = load(tree(blue_dot_yml=deployment(MLFLOW_INLINE)))
    (blue,) = state.deployments
    assert blue.code is None
    assert blue.model is not None and blue.model.type == "mlflow_model"
    env = blue.environment
    assert env.pip_packages == ("mlflow-skinny==3.17.2", "scikit-learn==1.9.1", "pandas", "numpy")
    assert env.python_version == "3.11" and env.digest.startswith("sha256:")
    warning, *added = state.warnings
    assert [w.message.rsplit(": ", 1)[-1] for w in added] == ["the scoring script needs it"] * 2
    assert warning.file == "blue.yml" and warning.field == "model.path"
    assert "model/sklearn-model/conda.yaml" in warning.message
    assert "mlflow-skinny==3.17.2" in warning.message


def test_a_registered_mlflow_model_file_works_too() -> None:
    model_file = (
        f"$schema: {AZURE}model.schema.json\nname: credit\nversion: 2\n"
        "path: sklearn-model\ntype: mlflow_model\n"
    )
    files = tree(
        model__credit_dot_yml=model_file,
        blue_dot_yml=deployment("").replace("model:\n", "model: azureml:credit:2\n"),
    )
    (blue,) = load(files).deployments
    assert blue.environment.name == "credit-mlflow" and blue.environment.version == "2"


def test_a_change_of_the_models_packages_changes_the_deployment_digest() -> None:
    before = load(tree(blue_dot_yml=deployment(MLFLOW_INLINE))).deployments[0]
    newer = CONDA.replace("1.9.1", "1.9.2")
    changed = {"model/sklearn-model/conda.yaml": newer}
    after = load(tree(changed, blue_dot_yml=deployment(MLFLOW_INLINE))).deployments[0]
    assert before.digest != after.digest


def test_a_folder_without_mlmodel_is_an_error_naming_the_field() -> None:
    no_mlmodel = {"model/sklearn-model/MLmodel": ""}
    (error,) = errors(tree(no_mlmodel, blue_dot_yml=deployment(MLFLOW_INLINE)))
    assert (error.file, error.field) == ("blue.yml", "model.path")
    assert "there is no model/sklearn-model/MLmodel" in error.message
    assert error.line == 5


def test_a_custom_model_still_needs_an_environment() -> None:
    custom = "  path: model/sklearn-model/model.pkl\n"
    extra = "code_configuration:\n  code: src\n  scoring_script: score.py\n"
    (error,) = errors(tree(blue_dot_yml=deployment(custom, extra), src__score_dot_py="x = 1\n"))
    assert (error.file, error.field) == ("blue.yml", "environment")
    assert "missing required field 'environment'" in error.message


TRITON_INLINE = "  path: model/triton\n  type: triton_model\n"
ONNX_CONFIG = (
    'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
    'input [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] } ]\n'
    'output [ { name: "y", data_type: TYPE_FP32, dims: [ 2 ] } ]\n'
)
TRITON_FILES = {
    "model/triton/tiny/config.pbtxt": ONNX_CONFIG,
    "model/triton/tiny/1/model.onnx": "onnx",
}


def test_a_triton_model_deploys_with_no_environment_and_no_code() -> None:
    state = load(tree(TRITON_FILES, blue_dot_yml=deployment(TRITON_INLINE)))
    (blue,) = state.deployments
    assert blue.code is None and blue.model is not None and blue.model.type == "triton_model"
    assert blue.environment.name == "triton-triton"
    assert "nvidia-pytriton==0.7.0" in blue.environment.pip_packages
    assert state.warnings == ()
    # A change of the repository's files is a change of the deployment.
    changed = {**TRITON_FILES, "model/triton/tiny/1/model.onnx": "other weights"}
    after = load(tree(changed, blue_dot_yml=deployment(TRITON_INLINE))).deployments[0]
    assert after.digest != blue.digest


def test_a_triton_model_of_another_backend_is_an_error_naming_its_config_line() -> None:
    tensorrt = {**TRITON_FILES, "model/triton/tiny/config.pbtxt": 'platform: "tensorrt_plan"\n'}
    (error,) = errors(tree(tensorrt, blue_dot_yml=deployment(TRITON_INLINE)))
    assert (error.file, error.field, error.line) == ("blue.yml", "model.path", 5)
    assert error.message.startswith(
        "model/triton/tiny/config.pbtxt:1: platform 'tensorrt_plan' (TensorRT) is not served here"
    )


def test_azures_triton_sample_without_config_pbtxt_loads_with_a_note_not_an_error() -> None:
    # azureml-examples cli/endpoints/online/triton/single-model: the model folder holds
    # 1/model.onnx alone; Triton completes the configuration from the model.
    sample = {"model/triton/densenet-onnx/1/model.onnx": "onnx"}
    state = load(tree(sample, blue_dot_yml=deployment(TRITON_INLINE)))
    (blue,) = state.deployments
    assert blue.environment.name == "triton-triton" and blue.code is None
    (note,) = state.warnings
    assert (note.file, note.field) == ("blue.yml", "model.path")
    assert note.message.startswith(
        "model/triton/densenet-onnx: has no config.pbtxt: served as an ONNX model"
    )


def test_a_python_backend_model_loads_with_a_warning_about_its_packages() -> None:
    python = {
        **TRITON_FILES,
        "model/triton/double/config.pbtxt": 'backend: "python"\n',
        "model/triton/double/1/model.py": "class TritonPythonModel: ...\n",
    }
    state = load(tree(python, blue_dot_yml=deployment(TRITON_INLINE)))
    (warning,) = state.warnings
    assert (warning.file, warning.field) == ("blue.yml", "model.path")
    assert "Python-backend model 'double' runs with the packages" in warning.message


def test_a_triton_model_with_an_environment_but_no_code_is_refused() -> None:
    extra = "environment:\n  image: python:3.11-slim\n"
    (error,) = errors(tree(TRITON_FILES, blue_dot_yml=deployment(TRITON_INLINE, extra)))
    assert (error.file, error.field) == ("blue.yml", "code_configuration")
    assert "a triton_model with no code_configuration names no environment" in error.message


def test_a_triton_model_that_is_a_file_is_refused() -> None:
    single = "  path: model/triton/tiny/1/model.onnx\n  type: triton_model\n"
    (error,) = errors(tree(TRITON_FILES, blue_dot_yml=deployment(single)))
    assert "a triton_model is a folder (a model repository" in error.message
