"""The generated scoring script of no-code MLflow deployments, on real MLflow models.

Models are logged by MLflow itself in the test (scikit-learn LinearRegression on named
columns, LogisticRegression on a tensor, a custom pyfunc python_model on a named tensor,
and a LightGBM booster on named columns), each with its signature. The script
(reconciler/nocode/mlflow_score.py) then runs as in a container: with AZUREML_MODEL_DIR
pointing at a folder holding the model folder, its init() and run() called in a
subprocess, and once under the real azmlinfsrv over HTTP.

MLflow, scikit-learn, pandas and azureml-inference-server-http live in their own virtual
environment in a cache folder (~/.cache/reconciler-tests/mlflow-venv), made once, as the
image of such a deployment has them and the reconciler's own environment does not. Without
network (or if the install fails) the tests are skipped with the reason.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow_models import LIGHTGBM_EXPECTED, clean_env, log_models, venv_python

from reconciler.model.specs import ModelSpec
from reconciler.nocode.mlflowmodel import mlflow_environment, scoring_code

# Seconds of CPU: MLflow is imported by three processes (log, score, serve).
pytestmark = pytest.mark.slow

DRIVER = r"""
import importlib.util, json, os, sys

script, models = sys.argv[1], json.loads(sys.argv[2])
for index, (model_dir, requests) in enumerate(models):
    os.environ["AZUREML_MODEL_DIR"] = model_dir
    spec = importlib.util.spec_from_file_location(f"score{index}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    answers = []
    for body in requests:
        out = module.run(body)
        if hasattr(out, "status_code"):  # an AMLResponse
            answers.append([out.status_code, json.loads(out.get_data(as_text=True))])
        else:
            answers.append([200, json.loads(json.dumps(out))])
    print(json.dumps(answers), flush=True)
"""


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    """linear, logistic, custom, lightgbm: each an AZUREML_MODEL_DIR holding one model
    folder."""
    return log_models()


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("app") / scoring_code().scoring_script
    path.write_bytes(scoring_code().content)
    return path


def _score(script: Path, cases: list[tuple[Path, list[Any]]]) -> list[list[list[Any]]]:
    """init() then run(body) for each body, per model, in the models' own Python."""
    payload = json.dumps(
        [
            [str(folder), [b if isinstance(b, str) else json.dumps(b) for b in bodies]]
            for folder, bodies in cases
        ]
    )
    proc = subprocess.run(
        [str(venv_python()), "-c", DRIVER, str(script), payload],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]


LINEAR_OK = [
    {"input_data": {"columns": ["a", "b"], "index": [0, 1], "data": [[1, 0], [2, 1]]}},
    {"input_data": {"columns": ["b", "a"], "data": [[0, 1], [1, 2]]}},
    {"input_data": [[1, 0], [2, 1]]},
    {"input_data": {"a": [1, 2], "b": [0, 1]}},
    {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 0], [2, 1]]}},
    {"dataframe_records": [{"a": 1, "b": 0}, {"a": 2.0, "b": 1.0}]},
    {"instances": [{"a": 1, "b": 0}, {"a": 2, "b": 1}]},
    {"inputs": {"a": [1, 2], "b": [0, 1]}},
]
LINEAR_BAD = [
    ({"input_data": {"columns": ["a", "c"], "data": [[1, 0]]}}, "missing inputs ['b']"),
    ({"input_data": {"columns": ["a", "b"], "data": [["x", 0]]}}, "column a"),
    ({"dataframe_records": [{"a": 1, "b": "text"}]}, "column b"),
    ({"input_data": {"columns": ["a", "b"], "data": [[1, 0]]}, "inputs": [1]}, "exactly one"),
    ({"data": [[1, 0]]}, "exactly one of input_data"),
    ("not json", "not JSON"),
    ([[1, 0]], "JSON object"),
]


LOGISTIC_OK = [
    {"input_data": [[0.0, 0.5], [6.0, 6.0]]},
    {"instances": [[0.0, 0.5], [6.0, 6.0]]},
    {"inputs": [[0.0, 0.5], [6.0, 6.0]]},
]
CUSTOM_OK = [{"input_data": {"x": [1.5, -1.0]}}, {"inputs": {"x": [1.5, -1.0]}}]


@pytest.fixture(scope="module")
def answers(models: dict[str, Path], script: Path) -> dict[str, list[list[Any]]]:
    """Every request of this file, scored in one process (MLflow takes seconds to import)."""
    expected = json.loads((models["lightgbm"].parent / LIGHTGBM_EXPECTED).read_text())
    table = {"columns": expected["columns"], "data": expected["rows"]}
    linear, bad, logistic, custom, lightgbm = _score(
        script,
        [
            (models["linear"], LINEAR_OK),
            (models["linear"], [body for body, _ in LINEAR_BAD]),
            (models["logistic"], LOGISTIC_OK),
            (models["custom"], CUSTOM_OK),
            (models["lightgbm"], [{"input_data": table}, {"dataframe_split": table}]),
        ],
    )
    return {
        "linear": linear,
        "bad": bad,
        "logistic": logistic,
        "custom": custom,
        "lightgbm": lightgbm,
        "lightgbm_expected": [[200, expected["predictions"]]],
    }


def test_every_input_format_gives_the_predictions(answers: dict[str, list[list[Any]]]) -> None:
    for body, (status, answer) in zip(LINEAR_OK, answers["linear"], strict=True):
        assert status == 200, (body, answer)
        assert answer == pytest.approx([2.0, 7.0]), body
    assert answers["logistic"] == [[200, [0, 1]]] * len(LOGISTIC_OK)
    expected = [{"double": 3.0, "positive": True}, {"double": -2.0, "positive": False}]
    assert answers["custom"] == [[200, expected]] * len(CUSTOM_OK)


def test_a_lightgbm_model_answers_its_own_predictions(answers: dict[str, list[list[Any]]]) -> None:
    # The booster's predictions where it was trained, against the script's through pyfunc.
    ((status, predictions),) = answers["lightgbm_expected"]
    for answer in answers["lightgbm"]:
        assert answer == [status, pytest.approx(predictions, rel=1e-9)]
    assert len(answers["lightgbm"]) == 2


def test_a_request_that_does_not_fit_the_signature_is_a_400_naming_the_column(
    answers: dict[str, list[list[Any]]],
) -> None:
    for (body, words), (status, answer) in zip(LINEAR_BAD, answers["bad"], strict=True):
        assert status == 400, (body, answer)
        assert words in answer["message"], (body, answer)


def test_the_model_folders_environment_is_what_mlflow_wrote(models: dict[str, Path]) -> None:
    folder = models["linear"] / "linear-model"
    model = ModelSpec(name="linear", version="1", path="linear-model", type="mlflow_model")

    def read(path: str) -> bytes | None:
        file = models["linear"] / path
        return file.read_bytes() if file.is_file() else None

    result = mlflow_environment(model, read)
    assert result.source == "linear-model/conda.yaml"
    names = {line.split("==")[0] for line in result.environment.pip_packages}
    assert {"mlflow-skinny", "scikit-learn", "cloudpickle"} <= names
    assert "mlflow" not in names
    assert (folder / "MLmodel").is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def infsrv(models: dict[str, Path], script: Path) -> Iterator[str]:
    """The real azmlinfsrv serving the linear model with the generated script."""
    port = _free_port()
    process = subprocess.Popen(
        [
            str(venv_python().parent / "azmlinfsrv"),
            "--entry_script",
            script.name,
            "--port",
            str(port),
        ],
        cwd=script.parent,
        env=clean_env(AZUREML_MODEL_DIR=str(models["linear"])),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                _, err = process.communicate(timeout=20)
                pytest.fail(f"azmlinfsrv did not start: {err.decode()[-3000:]}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{url}/score",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_inference_server_answers_with_the_predictions_and_400s(infsrv: str) -> None:
    status, answer = _post(infsrv, LINEAR_OK[0])
    assert status == 200 and answer == pytest.approx([2.0, 7.0])
    status, answer = _post(infsrv, {"input_data": {"columns": ["a"], "data": [[1.0]]}})
    assert status == 400
    assert "missing inputs ['b']" in answer["message"]
