"""Router in front of the real Azure ML inference server (`azmlinfsrv`) running a score.py.

azureml-inference-server-http pins old dependencies, so it lives in its own virtual
environment in a cache folder (~/.cache/reconciler-tests/infsrv-venv), made once. Without
network (or if the install fails) the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from router_fixtures import (  # noqa: F401  (fixture: start_router)
    PRIMARY_KEY,
    bearer,
    deployment,
    http_get,
    load,
    request,
    router_config,
    start_router_fixture,
)

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reconciler-tests"
VENV = CACHE / "infsrv-venv"
SCORE_PY = """
import json

def init():
    global scale
    scale = 2

def run(data):
    values = json.loads(data)["data"]
    return {"result": [v * scale for v in values]}
"""


def _infsrv_binary() -> Path:
    binary = VENV / "bin" / "azmlinfsrv"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=120
        )
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", "azureml-inference-server-http"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (subprocess.SubprocessError, OSError) as error:
        pytest.skip(f"cannot install azureml-inference-server-http into {VENV}: {error}")
    if not binary.exists():
        pytest.skip("azureml-inference-server-http installed no azmlinfsrv command")
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def infsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _infsrv_binary()
    folder = tmp_path_factory.mktemp("infsrv")
    (folder / "score.py").write_text(SCORE_PY)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    process = subprocess.Popen(
        [str(binary), "--entry_script", "score.py", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if http_get(f"http://127.0.0.1:{port}/")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("azmlinfsrv did not start")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def test_router_in_front_of_the_inference_server(infsrv: str, start_router) -> None:
    router = start_router(router_config([deployment("blue", [infsrv])], traffic={"blue": 100}))
    answer = request(
        f"{router.url}/score", headers=bearer(PRIMARY_KEY), body=b'{"data": [1, 2, 3]}'
    )
    assert answer.status == 200
    assert answer.json() == {"result": [2, 4, 6]}
    assert answer.headers["azureml-model-deployment"] == "blue"
    # gunicorn's sync worker closes every connection: the pool must cope, under load too.
    results = load(f"{router.url}/score", 60, concurrency=4, headers=bearer(PRIMARY_KEY))
    assert {r.status for r in results} == {200}
    status, _, body = http_get(f"{router.url}/swagger.json", bearer(PRIMARY_KEY))
    assert status == 200 and json.loads(body)["paths"]["/score"]
    # A failing run() comes back as 424 with the server's status.
    broken = request(f"{router.url}/score", headers=bearer(PRIMARY_KEY), body=b'{"nodata": 1}')
    assert broken.status == 424
    assert broken.headers["ms-azureml-model-error-statuscode"] == "500"
