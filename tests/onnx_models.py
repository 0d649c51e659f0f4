"""Small ONNX models for tests, built with onnx.helper and run with ONNX Runtime on the host.

onnx and onnxruntime are what a Triton deployment's image holds, not what the reconciler
needs, so they live in ~/.cache/reconciler-tests/onnx-venv, made once (about 30 MB of
wheels; later runs find it). onnxruntime and numpy there are the versions the Triton
environment pins (reconciler.nocode.triton.PACKAGES), so the host computes what the served
model computes. Without network, or if the install fails, the tests that need it are
skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from cached_venv import CACHE, cached_venv

from reconciler.nocode.triton import PACKAGES

VENV = CACHE / "onnx-venv"
REQUIREMENTS = ("onnx==1.23.2", *(p for p in PACKAGES if not p.startswith("nvidia-pytriton")))

# A two-layer network, x (batch, 3) -> y (batch, 2) float32 and label (batch, 1) int64: the
# weights are fixed, so every run builds the same model.
BUILD = r"""
import sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

w1 = np.array([[0.5, -1.0, 0.25, 2.0], [1.5, 0.75, -0.5, 0.1], [-2.0, 0.3, 1.0, 0.6]], np.float32)
b1 = np.array([0.1, -0.2, 0.3, 0.05], np.float32)
w2 = np.array([[1.0, -0.5], [0.25, 2.0], [-1.5, 0.7], [0.8, 0.125]], np.float32)
b2 = np.array([0.01, -0.02], np.float32)
nodes = [
    helper.make_node("MatMul", ["x", "w1"], ["h0"]),
    helper.make_node("Add", ["h0", "b1"], ["h1"]),
    helper.make_node("Relu", ["h1"], ["h2"]),
    helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
    helper.make_node("Add", ["h3", "b2"], ["y"]),
    helper.make_node("ArgMax", ["y"], ["label"], axis=1, keepdims=1),
]
graph = helper.make_graph(
    nodes,
    "tiny",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
    [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
        helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
    ],
    [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, sys.argv[1])
"""

RUN = r"""
import json, sys
import numpy as np
import onnxruntime

path, feeds = sys.argv[1], json.loads(sys.argv[2])
session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
inputs = {i.name: i for i in session.get_inputs()}
arrays = {name: np.asarray(v, dtype=np.float32) for name, v in feeds.items()}
names = [o.name for o in session.get_outputs()]
print(json.dumps({n: r.tolist() for n, r in zip(names, session.run(names, arrays))}))
"""


def venv_python() -> Path:
    """The Python of the ONNX virtual environment, made on first use."""
    return cached_venv(VENV, REQUIREMENTS)


def _env() -> dict[str, str]:
    # The reconciler's PYTHONPATH must not reach the venv's Python.
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def build_tiny_model(path: Path) -> Path:
    """Write the tiny network to `path` (x: float32 [batch, 3] -> y [batch, 2], label)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(venv_python()), "-c", BUILD, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


def run_on_host(path: Path, feeds: dict[str, Any]) -> dict[str, Any]:
    """Every output of the model at `path` for float32 `feeds`, by ONNX Runtime on the host."""
    proc = subprocess.run(
        [str(venv_python()), "-c", RUN, str(path), json.dumps(feeds)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
