"""A no-code MLflow deployment on the real Docker Engine, answering through the router.

The model is a scikit-learn LinearRegression logged by MLflow in the test (see
tests/mlflow_models.py) and committed to the repository as MLflow wrote it; the deployment
names neither an environment nor a scoring script. The environment image is built from the
model's own conda.yaml (mlflow as mlflow-skinny, plus the inference server), the thin layer
gets the generated score.py, and azmlinfsrv serves it behind the endpoint's router.

The first run on a machine downloads the model's wheels (about 90 MB) and builds their
image; later runs find both.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest
from mlflow_models import log_models

from reconciler.targets.docker.images import APP_ROOT

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json"


def test_an_mlflow_model_with_no_code_answers_through_the_router(
    docker_world: DockerWorld, tmp_path_factory: pytest.TempPathFactory
) -> None:
    world = docker_world
    logged = log_models(tmp_path_factory.mktemp("logged"))["linear"] / "linear-model"
    shutil.copytree(logged, world.repo.root / "models" / "linear-model")
    world.repo.endpoint("mlflow-ep", traffic={"blue": 100})
    world.repo.write_yaml(
        "endpoints/mlflow-ep/blue.yml",
        {
            "$schema": SCHEMA,
            "name": "blue",
            "endpoint_name": "mlflow-ep",
            "model": {"path": "../../models/linear-model", "type": "mlflow_model"},
            "instance_type": "Standard_DS3_v2",
            "instance_count": 1,
        },
    )
    world.repo.commit("an MLflow model, no code, no environment")
    result = world.apply()
    assert result.status["mlflow-ep"]["deployments"]["blue"]["ready_instances"] == 1

    url, key = world.scoring_uri("mlflow-ep"), world.key("mlflow-ep")
    split = {"input_data": {"columns": ["a", "b"], "index": [0, 1], "data": [[1, 0], [2, 1]]}}
    answer = post(url, key=key, body=split)
    assert (answer.status, answer.deployment) == (200, "blue"), answer
    assert answer.body == pytest.approx([2.0, 7.0])
    answer = post(url, key=key, body={"dataframe_records": [{"a": 3, "b": 0}]})
    assert (answer.status, answer.body) == (200, pytest.approx([6.0])), answer

    # A column the signature lacks: the model's 400, which the router passes on as 424.
    answer = post(url, key=key, body={"input_data": {"columns": ["a"], "data": [[1.0]]}})
    assert answer.status == 424, answer
    assert answer.headers["ms-azureml-model-error-statuscode"] == "400"
    assert "missing inputs ['b']" in answer.body["message"]

    (container,) = world.containers("mlflow-ep", "blue")
    code, output = container.exec_run(["ls", f"{APP_ROOT}/mlflow-nocode"])
    assert code == 0 and "score.py" in output.decode().split()
    assert world.apply().plan.steps == ()


def post(url: str, *, key: str, body: object):  # type: ignore[no-untyped-def]
    from docker_target_fixtures import post as send

    return send(url, key=key, body=body, timeout=60)
