"""No-code MLflow deployments on the real Docker Engine, answering through the router.

The models are a scikit-learn LinearRegression and a LightGBM booster, logged by MLflow
(mlflow.sklearn, mlflow.lightgbm) in the test (see tests/mlflow_models.py) and committed to
the repository as MLflow wrote them; the deployments name neither an environment nor a
scoring script. The environment image is built from the models' own conda.yaml (mlflow as
mlflow-skinny, plus the inference server; both models name the same packages, so one image
serves both), each thin layer gets the generated score.py, and azmlinfsrv serves it behind
the endpoint's router. The LightGBM answers are compared with the model's own predictions,
computed where it was trained.

The first run on a machine downloads the models' wheels (about 95 MB) and builds their
image; later runs find both.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import pytest
from mlflow_models import LIGHTGBM_EXPECTED, log_models

from reconciler.images.layers import LABEL_PREFIX
from reconciler.images.layout import APP_ROOT

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json"


def test_mlflow_models_of_two_flavors_with_no_code_answer_through_the_router(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    models = log_models()
    for name in ("linear", "lightgbm"):
        shutil.copytree(
            models[name] / f"{name}-model", world.repo.root / "models" / f"{name}-model"
        )
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
    # LightGBM, with no traffic: asked by the deployment header, through the router.
    world.repo.write_yaml(
        "endpoints/mlflow-ep/green.yml",
        {
            "$schema": SCHEMA,
            "name": "green",
            "endpoint_name": "mlflow-ep",
            "model": {"path": "../../models/lightgbm-model", "type": "mlflow_model"},
            "instance_type": "Standard_DS3_v2",
            "instance_count": 1,
        },
    )
    world.repo.commit("MLflow models of two flavors, no code, no environment")
    result = world.apply()
    deployments = result.status["mlflow-ep"]["deployments"]
    assert [deployments[name]["ready_instances"] for name in ("blue", "green")] == [1, 1]
    (blue_box,) = world.containers("mlflow-ep", "blue")
    (green_box,) = world.containers("mlflow-ep", "green")
    # One environment image under both thin layers: LightGBM added no environment build.
    env_label = f"{LABEL_PREFIX}environment.image"
    assert blue_box.image.labels[env_label] == green_box.image.labels[env_label]

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

    expected = json.loads((models["lightgbm"].parent / LIGHTGBM_EXPECTED).read_text())
    table = {"columns": expected["columns"], "data": expected["rows"]}
    answer = post(url, key=key, body={"input_data": table}, deployment="green")
    assert (answer.status, answer.deployment) == (200, "green"), answer
    assert answer.body == pytest.approx(expected["predictions"], rel=1e-9), answer
    records = [dict(zip(expected["columns"], row, strict=True)) for row in expected["rows"]]
    answer = post(url, key=key, body={"dataframe_records": records[:1]}, deployment="green")
    assert answer.body == pytest.approx(expected["predictions"][:1], rel=1e-9), answer

    for container in (blue_box, green_box):
        code, output = container.exec_run(["ls", f"{APP_ROOT}/mlflow-nocode"])
        assert code == 0 and "score.py" in output.decode().split()
    assert world.apply().plan.steps == ()


def post(url: str, *, key: str, body: object, deployment: str | None = None):  # type: ignore[no-untyped-def]
    from docker_target_fixtures import post as send

    return send(url, key=key, body=body, deployment=deployment, timeout=60)
