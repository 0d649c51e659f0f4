"""A no-code Triton deployment on the real Docker Engine, answering KServe v2 through the router.

The repository holds a Triton model repository as Azure ML's samples lay it out: an ONNX
model (`tiny/config.pbtxt` with `platform: "onnxruntime_onnx"`, `tiny/1/model.onnx`, built
in the test with onnx.helper), the same ONNX file without config.pbtxt (`bare`, as Azure's
Triton sample has it) and with a config naming no output (`partial`), whose configurations
Triton completes from the model, and a Python-backend model with its own model.py. The
deployment names neither an environment nor a scoring script. Its image runs the real
tritonserver of the nvidia-pytriton wheel; the ONNX model is served by the Python backend
running the reconciler's model.py with ONNX Runtime, from a repository generated in the
image. Requests go through the endpoint's router with its key, as callers of an Azure ML
Triton endpoint send them (`/v2/health/ready`, `/v2/models/NAME/infer`).

The first run on a machine downloads the environment's wheels (about 135 MB: the
nvidia-pytriton wheel is 55 MB, onnxruntime 28 MB, numpy 18 MB) and builds its image; later
runs find both, and the first test takes about 27 s.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from onnx_models import build_tiny_model, run_on_host

from reconciler.images.layout import APP_ROOT
from reconciler.nocode.triton import CODE_FOLDER

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json"
TINY_CONFIG = """\
name: "tiny"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] } ]
output [
  { name: "y", data_type: TYPE_FP32, dims: [ 2 ] },
  { name: "label", data_type: TYPE_INT64, dims: [ 1 ] }
]
"""
DOUBLE_CONFIG = """\
backend: "python"
max_batch_size: 0
input [ { name: "x", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "twice", data_type: TYPE_FP32, dims: [ -1 ] } ]
"""
DOUBLE_MODEL = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("twice", x * 2)]))
        return answers
"""


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


def call(
    port: int,
    method: str,
    path: str,
    *,
    key: str | None,
    body: Any = None,
    deployment: str | None = None,
) -> Reply:
    """One request to the router on 127.0.0.1 (one connection per request)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if deployment is not None:
        headers["azureml-model-deployment"] = deployment
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = None if body is None else json.dumps(body)
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Reply(response.status, parsed, {k.lower(): v for k, v in response.getheaders()})
    finally:
        connection.close()


def infer_request(rows: list[list[float]], *, outputs: list[str] | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "inputs": [
            {
                "name": "x",
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP32",
                "data": [v for row in rows for v in row],
            }
        ]
    }
    if outputs is not None:
        request["outputs"] = [{"name": name} for name in outputs]
    return request


def outputs_of(reply: Reply) -> dict[str, dict[str, Any]]:
    return {output["name"]: output for output in reply.body["outputs"]}


PARTIAL_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""


def write_model_repository(root: Path) -> Path:
    """models/triton with the ONNX model `tiny`, the same ONNX model as `bare` without
    config.pbtxt (as Azure's Triton sample has it) and as `partial` with a config naming no
    output, and the Python model `double`; the ONNX file's path (the host runs it too)."""
    repository = root / "models" / "triton"
    onnx_file = build_tiny_model(repository / "tiny" / "1" / "model.onnx")
    (repository / "tiny" / "config.pbtxt").write_text(TINY_CONFIG)
    for name in ("bare", "partial"):
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "model.onnx").write_bytes(onnx_file.read_bytes())
    (repository / "partial" / "config.pbtxt").write_text(PARTIAL_CONFIG)
    (repository / "double" / "1").mkdir(parents=True)
    (repository / "double" / "config.pbtxt").write_text(DOUBLE_CONFIG)
    (repository / "double" / "1" / "model.py").write_text(DOUBLE_MODEL)
    return onnx_file


def test_a_triton_model_with_no_code_answers_kserve_v2_through_the_router(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    onnx_file = write_model_repository(world.repo.root)
    world.repo.endpoint("triton-ep", traffic={"blue": 100})
    world.repo.write_yaml(
        "endpoints/triton-ep/blue.yml",
        {
            "$schema": SCHEMA,
            "name": "blue",
            "endpoint_name": "triton-ep",
            "model": {"path": "../../models/triton", "type": "triton_model"},
            "instance_type": "Standard_DS3_v2",
            "instance_count": 1,
        },
    )
    world.repo.commit("a Triton model repository, no code, no environment")
    result = world.apply()
    assert result.status["triton-ep"]["deployments"]["blue"]["ready_instances"] == 1
    port, key = world.target.endpoint_credentials("triton-ep").port, world.key("triton-ep")

    ready = call(port, "GET", "/v2/health/ready", key=key)
    assert (ready.status, ready.headers["azureml-model-deployment"]) == (200, "blue"), ready
    assert call(port, "GET", "/v2/health/ready", key=None).status == 401
    assert call(port, "GET", "/v2/health/ready", key=key, deployment="nobody").status == 404
    metadata = call(port, "GET", "/v2/models/tiny", key=key, deployment="blue")
    assert metadata.status == 200, metadata
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata.body["inputs"]] == [
        ("x", "FP32", [-1, 3])
    ]

    # The numbers ONNX Runtime gives on the host, from Triton through the router.
    rows = [[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0], [3.0, -1.0, -2.0]]
    expected = run_on_host(onnx_file, {"x": rows})
    answer = call(port, "POST", "/v2/models/tiny/infer", key=key, body=infer_request(rows))
    assert answer.status == 200, answer
    got = outputs_of(answer)
    assert (got["y"]["datatype"], got["y"]["shape"]) == ("FP32", [3, 2])
    assert np.array_equal(
        np.asarray(got["y"]["data"], np.float32), np.asarray(expected["y"], np.float32).ravel()
    )
    assert (got["label"]["datatype"], got["label"]["shape"]) == ("INT64", [3, 1])
    assert got["label"]["data"] == [row[0] for row in expected["label"]]
    only_y = call(
        port, "POST", "/v2/models/tiny/infer", key=key, body=infer_request(rows, outputs=["y"])
    )
    assert only_y.status == 200 and set(outputs_of(only_y)) == {"y"}, only_y

    # A wrong shape: Triton's 400, which the router passes on as 424 with that status.
    wrong = call(port, "POST", "/v2/models/tiny/infer", key=key, body=infer_request([[1.0] * 4]))
    assert wrong.status == 424, wrong
    assert wrong.headers["ms-azureml-model-error-statuscode"] == "400"
    assert "shape" in wrong.body["error"], wrong.body

    # No config.pbtxt: Triton completed it from the ONNX model (the served model.py's
    # auto_complete_config): a dynamic first dimension everywhere gives max_batch_size 4 and
    # dynamic batching, the dims are the model's without it; the numbers are the host's.
    bare = call(port, "GET", "/v2/models/bare/config", key=key)
    assert bare.status == 200, bare
    assert (bare.body["max_batch_size"], "dynamic_batching" in bare.body) == (4, True)
    tensors = [
        (t["name"], t["data_type"], t["dims"]) for t in bare.body["input"] + bare.body["output"]
    ]
    assert tensors == [
        ("x", "TYPE_FP32", [3]),
        ("y", "TYPE_FP32", [2]),
        ("label", "TYPE_INT64", [1]),
    ]
    for name in ("bare", "partial"):
        answer = call(port, "POST", f"/v2/models/{name}/infer", key=key, body=infer_request(rows))
        assert answer.status == 200, answer
        got = outputs_of(answer)
        assert (got["y"]["shape"], got["label"]["datatype"]) == ([3, 2], "INT64"), got
        assert np.array_equal(
            np.asarray(got["y"]["data"], np.float32), np.asarray(expected["y"], np.float32).ravel()
        )
        assert got["label"]["data"] == [row[0] for row in expected["label"]]
    # max_batch_size 4: a batch of 5 is Triton's 400, checked before the model sees it.
    five = call(port, "POST", "/v2/models/bare/infer", key=key, body=infer_request(rows + rows[:2]))
    assert (five.status, five.headers["ms-azureml-model-error-statuscode"]) == (424, "400"), five

    # The Python-backend model runs as it was written.
    twice = call(
        port,
        "POST",
        "/v2/models/double/infer",
        key=key,
        body={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -4]}]},
    )
    assert twice.status == 200, twice
    assert outputs_of(twice)["twice"]["data"] == [3.0, -8.0]

    # The user's files are in AZUREML_MODEL_DIR as written; Triton serves a generated copy.
    (container,) = world.containers("triton-ep", "blue")
    code, output = container.exec_run(
        ["/bin/sh", "-c", 'cat "$AZUREML_MODEL_DIR/triton/tiny/config.pbtxt"']
    )
    assert code == 0 and output.decode() == TINY_CONFIG
    code, output = container.exec_run(["cat", f"{APP_ROOT}/{CODE_FOLDER}/models/tiny/config.pbtxt"])
    served = output.decode()
    assert code == 0 and 'backend: "python"' in served and "onnxruntime_onnx" not in served
    assert world.apply().plan.steps == ()


def test_a_config_that_does_not_fit_the_onnx_model_fails_its_deployment_naming_the_tensor(
    docker_world: DockerWorld,
) -> None:
    # Triton's ONNX Runtime backend refuses to load such a model; so does the model.py
    # that serves it here, and tritonserver exits: the deployment fails with the reason.
    world = docker_world
    write_model_repository(world.repo.root)
    tiny = world.repo.root / "models" / "triton" / "tiny" / "config.pbtxt"
    tiny.write_text(
        TINY_CONFIG.replace(
            'name: "y", data_type: TYPE_FP32, dims: [ 2 ]',
            'name: "y", data_type: TYPE_FP32, dims: [ 5 ]',
        )
    )
    world.repo.endpoint("triton-bad", traffic={})
    world.repo.write_yaml(
        "endpoints/triton-bad/blue.yml",
        {
            "$schema": SCHEMA,
            "name": "blue",
            "endpoint_name": "triton-bad",
            "model": {"path": "../../models/triton", "type": "triton_model"},
            "instance_type": "Standard_DS3_v2",
            "instance_count": 1,
        },
    )
    world.repo.commit("a config whose output y does not fit the model")
    result = world.apply(ok=False)
    # The create step returns at once; the passes after it find the instance failed to
    # start: the deployment is Failed with Triton's own words, not retried.
    blue = result.status["triton-bad"]["deployments"]["blue"]
    assert blue["provisioning_state"] == "Failed", blue
    assert (
        "output 'y': the ONNX model's shape is [-1, 2], config.pbtxt gives [-1, 5]"
        in (blue["last_error"])
    ), blue["last_error"]
