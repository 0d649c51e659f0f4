"""Real MLflow models for tests, logged by MLflow in a virtual environment of its own.

MLflow, scikit-learn, LightGBM, pandas and azureml-inference-server-http are what the image
of a no-code MLflow deployment holds, not what the reconciler needs, so they live in
~/.cache/reconciler-tests/mlflow-venv, made once (a few minutes; later runs find it; a venv
made for a shorter package list gets the missing packages added). Without network, or if
the install fails, the tests that need it are skipped with the reason.

The models are logged once per venv and logging script, into the venv's folder: every test
of a session (and later sessions) reads the same files, so MLflow is not run twice and the
images of deployments made from them are found by content. Tests copy them before any
change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from cached_venv import CACHE, cached_venv, locked

VENV = CACHE / "mlflow-venv"
PACKAGES = ("mlflow-skinny", "scikit-learn", "lightgbm", "pandas", "azureml-inference-server-http")
MODELS = ("linear", "logistic", "custom", "lightgbm")
# The LightGBM model's own predictions of three rows, computed where it was trained:
# {"columns": [...], "rows": [[...]], "predictions": [...]}, beside the model folders.
LIGHTGBM_EXPECTED = "lightgbm-expected.json"

# Each model in ROOT/NAME/NAME-model: ROOT/NAME is an AZUREML_MODEL_DIR holding one model
# folder, as a registered folder sits in a container.
#
# The two models deployed on Docker (linear, lightgbm) name the same requirements, what
# MLflow infers for each put together (pip_requirements, as a team pins one environment
# for its models): one environment image serves both, so the LightGBM deployment costs
# no environment build of its own.
LOG_MODELS = r"""
import json
import sys
from importlib.metadata import version
from pathlib import Path

import lightgbm
import mlflow
import mlflow.lightgbm
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import LinearRegression, LogisticRegression

root = Path(sys.argv[1])
shared = [
    f"mlflow=={mlflow.__version__}",
    *(f"{name}=={version(name)}" for name in ("cloudpickle", "lightgbm", "pandas", "psutil")),
    f"scikit-learn=={version('scikit-learn')}",
]
# y = 2a + 3b, exactly: answers can be compared as numbers.
frame = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 1.0, 0.0, 1.0]})
linear = LinearRegression().fit(frame, 2 * frame["a"] + 3 * frame["b"])
mlflow.sklearn.save_model(
    linear, root / "linear" / "linear-model",
    signature=infer_signature(frame, linear.predict(frame)),
    serialization_format="cloudpickle",
    pip_requirements=shared,
)

# A LightGBM booster (the native flavor, loaded by mlflow.lightgbm) on three columns,
# trained deterministically on one thread.
rng = np.random.default_rng(7)
features = pd.DataFrame(rng.uniform(-2, 2, size=(200, 3)), columns=["f0", "f1", "f2"])
label = 3 * features["f0"] - 2 * features["f1"] + (features["f2"] > 0)
params = {
    "objective": "regression", "num_leaves": 7, "min_data_in_leaf": 5, "learning_rate": 0.3,
    "deterministic": True, "num_threads": 1, "seed": 0, "verbose": -1,
}
booster = lightgbm.train(params, lightgbm.Dataset(features, label), num_boost_round=20)
mlflow.lightgbm.save_model(
    booster, root / "lightgbm" / "lightgbm-model",
    signature=infer_signature(features, booster.predict(features)),
    pip_requirements=shared,
)
rows = [[0.1, 0.2, 0.3], [1.5, -0.5, -1.0], [-1.8, 1.9, 0.7]]
expected = booster.predict(pd.DataFrame(rows, columns=list(features.columns)))
(root / sys.argv[2]).write_text(json.dumps(
    {"columns": list(features.columns), "rows": rows, "predictions": expected.tolist()}
))
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
    return cached_venv(VENV, PACKAGES)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without its Python settings (the reconciler's
    PYTHONPATH must not reach the models' Python), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, "MLFLOW_TRACKING_URI": "file:///nonexistent", **extra}


def log_models() -> dict[str, Path]:
    """linear, logistic, custom, lightgbm: each an AZUREML_MODEL_DIR holding its model
    folder (read them, copy them to change them); beside them LIGHTGBM_EXPECTED holds the
    LightGBM model's own predictions. Logged on first use (a venv made anew logs anew)."""
    python = venv_python()
    script = hashlib.sha256(f"{LOG_MODELS}{LIGHTGBM_EXPECTED}".encode()).hexdigest()[:16]
    root = VENV / f"models-{script}"
    if not (root / ".complete").exists():
        with locked(VENV):
            if not (root / ".complete").exists():
                _log_into(python, root)
    return {name: root / name for name in MODELS}


def _log_into(python: Path, root: Path) -> None:
    """Log the models into a folder beside `root`, then rename it: `root` is whole or absent."""
    making = root.with_name(f"{root.name}.making")
    shutil.rmtree(making, ignore_errors=True)
    making.mkdir(parents=True)
    proc = subprocess.run(
        [str(python), "-c", LOG_MODELS, str(making), LIGHTGBM_EXPECTED],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (making / ".complete").write_text("")
    shutil.rmtree(root, ignore_errors=True)
    making.rename(root)
