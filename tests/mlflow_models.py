"""Real MLflow models for tests, logged by MLflow in a virtual environment of its own.

MLflow, scikit-learn, pandas and azureml-inference-server-http are what the image of a
no-code MLflow deployment holds, not what the reconciler needs, so they live in
~/.cache/reconciler-tests/mlflow-venv, made once (a few minutes; later runs find it). Without
network, or if the install fails, the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reconciler-tests"
VENV = CACHE / "mlflow-venv"
PACKAGES = ("mlflow-skinny", "scikit-learn", "pandas", "azureml-inference-server-http")
MODELS = ("linear", "logistic", "custom")

# Each model in ROOT/NAME/NAME-model: ROOT/NAME is an AZUREML_MODEL_DIR holding one model
# folder, as a registered folder sits in a container.
LOG_MODELS = r"""
import sys
from pathlib import Path

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import LinearRegression, LogisticRegression

root = Path(sys.argv[1])
# y = 2a + 3b, exactly: answers can be compared as numbers.
frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 1.0, 0.0, 1.0]})
linear = LinearRegression().fit(frame, 2 * frame["a"] + 3 * frame["b"])
mlflow.sklearn.save_model(
    linear, root / "linear" / "linear-model",
    signature=infer_signature(frame, linear.predict(frame)),
    serialization_format="cloudpickle",
)
points = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [6.0, 5.0]])
logistic = LogisticRegression().fit(points, np.array([0, 0, 1, 1]))
mlflow.sklearn.save_model(
    logistic, root / "logistic" / "logistic-model",
    signature=infer_signature(points, logistic.predict(points)),
    serialization_format="cloudpickle",
)


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input["x"], dtype=np.float64)
        return pd.DataFrame({"double": x * 2, "positive": x > 0})


example = {"x": np.array([1.0, -2.0])}
mlflow.pyfunc.save_model(
    root / "custom" / "custom-model", python_model=Doubler(),
    signature=infer_signature(example, pd.DataFrame({"double": [2.0], "positive": [True]})),
)
"""


def venv_python() -> Path:
    """The Python of the MLflow virtual environment, made on first use."""
    python = VENV / "bin" / "python"
    marker = VENV / ".complete"
    if marker.exists():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(VENV)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", *PACKAGES],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as error:
        pytest.skip(f"cannot install {', '.join(PACKAGES)} into {VENV}: {error}")
    marker.write_text(" ".join(PACKAGES) + "\n")
    return python


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without its Python settings (the reconciler's
    PYTHONPATH must not reach the models' Python), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, "MLFLOW_TRACKING_URI": "file:///nonexistent", **extra}


def log_models(root: Path) -> dict[str, Path]:
    """linear, logistic, custom: each an AZUREML_MODEL_DIR holding its model folder."""
    proc = subprocess.run(
        [str(venv_python()), "-c", LOG_MODELS, str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: root / name for name in MODELS}
