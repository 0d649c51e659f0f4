"""Scoring script of the sklearn-regression model, for Azure ML online deployments.

The azureml-inference-server-http package (command `azmlinfsrv`) imports this file, calls
`init()` once per worker, then `run()` for each `POST /score` with the request body as a
JSON string:

    {"data": [[age, sex, bmi, bp, s1, s2, s3, s4, s5, s6], ...]}

`run()` returns one prediction per row, as a JSON list of numbers. A bad request raises
ValueError with a message that says what is wrong; the server answers 500 and writes the
message and its traceback to the container's log.

The model is a linear regression whose weights are a small JSON file (see
training/train.py); only numpy is needed to score it.
"""

# No `from __future__ import annotations` here: the server imports this file without adding
# it to sys.modules, and dataclasses then fail to resolve string annotations.
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

WEIGHTS_FILE_NAME = "model.json"
# A bound on the batch size keeps one request within the deployment's request timeout.
MAX_ROWS = 1000

logger = logging.getLogger("score")


@dataclass(frozen=True)
class LinearModel:
    """Weights of a trained linear regression and what they were trained on."""

    name: str
    version: int
    feature_names: tuple[str, ...]
    coefficients: NDArray[np.float64]
    intercept: float

    @property
    def n_features(self) -> int:
        """Number of input features of one row."""
        return len(self.feature_names)

    def predict(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        """Predict the target of each row of a (n_rows x n_features) matrix."""
        return rows @ self.coefficients + self.intercept


_model: LinearModel | None = None


def _configure_logging() -> None:
    """Send this script's log lines to stderr at the level MODEL_LOG_LEVEL names."""
    level_name = os.environ.get("MODEL_LOG_LEVEL", "info").upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        level = logging.INFO
    logger.setLevel(level)
    if not logger.handlers:
        # The server configures only its own logger; without a handler our lines would be lost.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def find_weights_file(model_dir: Path) -> Path:
    """Return the one weights file under model_dir, at any depth.

    Azure ML mounts a registered folder model as AZUREML_MODEL_DIR/<folder name>/..., so the
    file is searched for rather than expected at a fixed place.
    """
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    candidates = sorted(model_dir.rglob(WEIGHTS_FILE_NAME))
    if not candidates:
        raise FileNotFoundError(f"no {WEIGHTS_FILE_NAME} found under {model_dir}")
    if len(candidates) > 1:
        listed = ", ".join(str(path) for path in candidates)
        raise RuntimeError(f"more than one {WEIGHTS_FILE_NAME} under {model_dir}: {listed}")
    return candidates[0]


def load_model(path: Path) -> LinearModel:
    """Read and check a weights file written by training/train.py."""
    content = json.loads(path.read_text(encoding="utf-8"))
    try:
        feature_names = tuple(str(name) for name in content["feature_names"])
        coefficients = np.asarray(content["coefficients"], dtype=np.float64)
        intercept = float(content["intercept"])
        name = str(content.get("name", "model"))
        version = int(content.get("version", 0))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a valid weights file: {error!r}") from error
    if coefficients.shape != (len(feature_names),):
        raise ValueError(
            f"{path}: {coefficients.size} coefficients for {len(feature_names)} features"
        )
    if not (np.all(np.isfinite(coefficients)) and math.isfinite(intercept)):
        raise ValueError(f"{path}: weights are not all finite numbers")
    return LinearModel(
        name=name,
        version=version,
        feature_names=feature_names,
        coefficients=coefficients,
        intercept=intercept,
    )


def init() -> None:
    """Load the model once per worker; called by the inference server at start-up."""
    global _model
    _configure_logging()
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    if not model_dir:
        raise RuntimeError("AZUREML_MODEL_DIR is not set: the deployment has no model")
    weights_path = find_weights_file(Path(model_dir))
    _model = load_model(weights_path)
    logger.info(
        "loaded model %s version %d (%d features) from %s",
        _model.name,
        _model.version,
        _model.n_features,
        weights_path,
    )


def _int_as_float(value: int) -> float:
    """Return value as a float, or infinity when it is too large for one."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _parse_rows(raw_data: Any, *, n_features: int) -> NDArray[np.float64]:
    """Turn a request body into a (n_rows x n_features) matrix, or raise ValueError."""
    if isinstance(raw_data, bytes | bytearray):
        raw_data = raw_data.decode("utf-8")
    if isinstance(raw_data, str):
        try:
            raw_data = json.loads(raw_data)
        except json.JSONDecodeError as error:
            raise ValueError(f"request body is not valid JSON: {error}") from error
    if not isinstance(raw_data, Mapping) or "data" not in raw_data:
        raise ValueError('request body must be a JSON object with a "data" key')
    rows = raw_data["data"]
    if not isinstance(rows, list) or not rows:
        raise ValueError('"data" must be a non-empty list of rows')
    if len(rows) > MAX_ROWS:
        raise ValueError(f'"data" has {len(rows)} rows; at most {MAX_ROWS} per request')
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n_features:
            raise ValueError(f"row {index} must be a list of {n_features} numbers")
        for value in row:
            # bool is an int in Python, but true/false is not a feature value.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"row {index} holds {value!r}, which is not a number")
            # float() of a huge integer overflows; treat it like infinity.
            if not math.isfinite(value if isinstance(value, float) else _int_as_float(value)):
                raise ValueError(f"row {index} holds {value!r}, which is not a finite number")
    return np.asarray(rows, dtype=np.float64)


def run(raw_data: Any) -> list[float]:
    """Score one request: return one prediction per row of its "data"."""
    if _model is None:
        raise RuntimeError("the model is not loaded: init() has not run")
    rows = _parse_rows(raw_data, n_features=_model.n_features)
    predictions = _model.predict(rows)
    logger.debug("scored %d rows with version %d", len(rows), _model.version)
    return [float(value) for value in predictions]
