"""The example repository: its scoring script serves its models, its training reproduces them.

score.py is loaded the way azureml-inference-server-http loads it (from its file, not
registered in sys.modules) against a model folder laid out as Azure ML mounts it.
"""

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

pytest.importorskip("numpy", reason="numpy is needed to run the example repository's model")

EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "example-repo"
SCORE_SCRIPT = EXAMPLE_REPO / "src" / "score.py"
MODELS = EXAMPLE_REPO / "models"
SAMPLE_REQUEST = (EXAMPLE_REPO / "sample-request.json").read_text(encoding="utf-8")
SCHEMAS = EXAMPLE_REPO.parent / "schemas"


def load_score_module() -> ModuleType:
    """Import score.py afresh, as the inference server does."""
    spec = importlib.util.spec_from_file_location("entry_module", SCORE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], ModuleType]:
    """Return a function that starts score.py on model version N and returns the module."""

    def start(version: int) -> ModuleType:
        # Azure ML: AZUREML_MODEL_DIR=.../azureml-models/NAME/VERSION, and a registered
        # folder keeps its own name inside it.
        model_dir = tmp_path / "azureml-models" / "sklearn-regression" / str(version)
        shutil.copytree(MODELS / "sklearn-regression" / f"v{version}", model_dir / f"v{version}")
        monkeypatch.setenv("AZUREML_MODEL_DIR", str(model_dir))
        module = load_score_module()
        module.init()
        return module

    return start


def test_scores_the_sample_request_with_finite_predictions(
    serve: Callable[[int], ModuleType],
) -> None:
    score = serve(1)
    predictions = score.run(SAMPLE_REQUEST)
    assert len(predictions) == len(json.loads(SAMPLE_REQUEST)["data"]) == 2
    assert all(isinstance(value, float) and math.isfinite(value) for value in predictions)
    # The answer goes back to the caller as JSON.
    assert json.loads(json.dumps(predictions)) == predictions


def test_versions_one_and_two_predict_measurably_differently(
    serve: Callable[[int], ModuleType],
) -> None:
    blue = serve(1).run(SAMPLE_REQUEST)
    green = serve(2).run(SAMPLE_REQUEST)
    assert all(abs(one - two) > 1.0 for one, two in zip(blue, green, strict=True))


def test_accepts_a_decoded_body_as_well_as_a_json_string(
    serve: Callable[[int], ModuleType],
) -> None:
    score = serve(1)
    assert score.run(json.loads(SAMPLE_REQUEST)) == score.run(SAMPLE_REQUEST)
    assert score.run(SAMPLE_REQUEST.encode()) == score.run(SAMPLE_REQUEST)


ROW = [0.01] * 10


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", '"data" key'),
        ('{"rows": [[0.1]]}', '"data" key'),
        ('{"data": []}', "non-empty list"),
        ('{"data": [[0.1, 0.2]]}', "list of 10 numbers"),
        (json.dumps({"data": [ROW, [*ROW[:9], "x"]]}), "row 1 holds 'x'"),
        (json.dumps({"data": [[*ROW[:9], True]]}), "not a number"),
        (json.dumps({"data": [[*ROW[:9], None]]}), "not a number"),
        ('{"data": [[0,0,0,0,0,0,0,0,0,NaN]]}', "not a finite number"),
        (json.dumps({"data": [[*ROW[:9], 10**400]]}), "not a finite number"),
        (json.dumps({"data": [ROW] * 1001}), "at most 1000"),
    ],
)
def test_bad_input_raises_a_clear_value_error(
    serve: Callable[[int], ModuleType], body: str, message: str
) -> None:
    score = serve(1)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        score.run(body)


def test_run_before_init_and_missing_model_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    score = load_score_module()
    with pytest.raises(RuntimeError, match="init"):
        score.run(SAMPLE_REQUEST)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"model\.json"):
        score.init()
    monkeypatch.delenv("AZUREML_MODEL_DIR")
    with pytest.raises(RuntimeError, match="AZUREML_MODEL_DIR"):
        score.init()


def test_training_reproduces_the_committed_weights(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE_REPO / "training" / "train.py"),
            "--output-root",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    for version in (1, 2):
        relative = Path(f"v{version}") / "model.json"
        committed = (MODELS / "sklearn-regression" / relative).read_text(encoding="utf-8")
        assert (tmp_path / relative).read_text(encoding="utf-8") == committed


def read_yaml(relative: str) -> dict[str, Any]:
    """Return the mapping in a YAML file of the example repository."""
    content = yaml.safe_load((EXAMPLE_REPO / relative).read_text(encoding="utf-8"))
    assert isinstance(content, dict)
    return content


def assert_schema(relative: str, schema_file: str) -> None:
    """The file's `$schema` is a relative path to this project's schema (for editors)."""
    declared = read_yaml(relative)["$schema"]
    resolved = ((EXAMPLE_REPO / relative).parent / declared).resolve()
    assert resolved == SCHEMAS / schema_file
    schema = json.loads(resolved.read_text(encoding="utf-8"))
    assert schema["$id"].endswith("/" + schema_file)


def test_files_reference_each_other_consistently() -> None:
    endpoint = read_yaml("endpoints/my-endpoint/endpoint.yml")
    assert_schema("endpoints/my-endpoint/endpoint.yml", "managedOnlineEndpoint.schema.json")
    assert endpoint["traffic"] == {"blue": 90, "green": 10}
    for name, version in (("blue", 1), ("green", 2)):
        deployment = read_yaml(f"endpoints/my-endpoint/{name}.yml")
        assert_schema(f"endpoints/my-endpoint/{name}.yml", "managedOnlineDeployment.schema.json")
        assert (deployment["name"], deployment["endpoint_name"]) == (name, endpoint["name"])
        assert deployment["model"] == f"azureml:sklearn-regression:{version}"
        code = EXAMPLE_REPO / "endpoints/my-endpoint" / deployment["code_configuration"]["code"]
        assert (code / deployment["code_configuration"]["scoring_script"]).resolve() == (
            SCORE_SCRIPT
        )
        model = read_yaml(f"models/sklearn-regression-{version}.yml")
        assert_schema(f"models/sklearn-regression-{version}.yml", "model.schema.json")
        assert (model["name"], model["version"]) == ("sklearn-regression", version)
        assert (MODELS / model["path"] / "model.json").is_file()
        weights = json.loads((MODELS / model["path"] / "model.json").read_text())
        assert weights["version"] == version
        # The model file's description quotes the training figures of its weights.
        assert f"training R^2 {weights['training']['r2_train']:.3f}" in model["description"]
    environment = read_yaml("environments/sklearn-env.yml")
    assert_schema("environments/sklearn-env.yml", "environment.schema.json")
    assert (EXAMPLE_REPO / "environments" / environment["conda_file"]).is_file()
    config = read_yaml("reconciler.yaml")
    assert config["default_target"] in config["targets"]
