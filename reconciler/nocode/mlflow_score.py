# mypy: ignore-errors
"""Scoring script of a no-code MLflow deployment, run by azmlinfsrv inside the container.

This file is never imported by the reconciler: its source is copied as `score.py` into the
thin layer of a deployment whose model is an `mlflow_model` and that names no
code_configuration (it runs with the model's own Python packages, not the reconciler's).

It loads the model's pyfunc flavor from AZUREML_MODEL_DIR (the folder holding `MLmodel`,
or MLFLOW_MODEL_FOLDER inside it as Azure ML sets it) and answers requests in Azure ML's
MLflow formats:
- `{"input_data": {"columns": [...], "index": [...], "data": [[...]]}}` (pandas split),
- `{"input_data": [[...], ...]}` (rows of the signature's columns, or a tensor),
- `{"input_data": {"name": [...], ...}}` (named tensors or columns),
- MLflow's own `dataframe_split`, `dataframe_records`, `instances`, `inputs` (+ `params`).
The model signature is enforced (pyfunc does, on the parsed input); a request that does
not fit it gets a 400 whose message names the column. The answer is the JSON list of
predictions (a DataFrame answers with its records).
"""

from __future__ import annotations

import json
import logging
import os

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.scoring_server import infer_and_parse_data

try:
    # azmlinfsrv registers this name before it loads a scoring script.
    from azureml.contrib.services.aml_response import AMLResponse
except ImportError:  # imported outside the server (a test driving init/run directly)
    from azureml_inference_server_http.api.aml_response import AMLResponse

logger = logging.getLogger("mlflow_score")

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# Error codes of MlflowException that mean the request, not the model, is wrong.
CALLER_ERRORS = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST"})
SPLIT_KEYS = frozenset({"columns", "index", "data"})
model = None
input_schema = None


def _model_folder() -> str:
    """The folder holding MLmodel: MLFLOW_MODEL_FOLDER, the model dir, or its one child."""
    root = os.environ["AZUREML_MODEL_DIR"]
    named = os.environ.get("MLFLOW_MODEL_FOLDER")
    if named:
        return os.path.join(root, named)
    if os.path.isfile(os.path.join(root, "MLmodel")):
        return root
    # A registered folder keeps its own name inside AZUREML_MODEL_DIR.
    found = sorted(
        os.path.join(root, name)
        for name in os.listdir(root)
        if os.path.isfile(os.path.join(root, name, "MLmodel"))
    )
    if len(found) != 1:
        raise RuntimeError(
            f"expected one MLflow model (a folder with MLmodel) in {root}, found {found}"
        )
    return found[0]


def init():
    global model, input_schema
    folder = _model_folder()
    model = mlflow.pyfunc.load_model(folder)
    input_schema = model.metadata.get_input_schema()
    logger.info("loaded MLflow model from %s; signature inputs: %s", folder, input_schema)


def _bad_request(message):
    return AMLResponse({"message": message}, 400, json_str=True)


def _column_names():
    if input_schema is None or input_schema.is_tensor_spec() or not input_schema.has_input_names():
        return None
    return input_schema.input_names()


def _azure_input(value):
    """Azure ML's `input_data` in MLflow's terms: a split frame, rows or named tensors."""
    if isinstance(value, dict) and value and set(value) <= SPLIT_KEYS and "data" in value:
        split = dict(value)
        if "columns" not in split and _column_names() is not None:
            split["columns"] = _column_names()
        return {"dataframe_split": split}
    if isinstance(value, list):
        names = _column_names()
        if names is not None and value and all(isinstance(row, list) for row in value):
            return {"dataframe_split": {"columns": names, "data": value}}
        return {"inputs": value}
    if isinstance(value, dict):
        return {"inputs": value}
    raise ValueError("input_data must be a split frame ({columns, data}), a list or a mapping")


def _short(error):
    # MLflow's schema errors quote the whole input first; the cause is after "Error: ".
    text = str(error)
    _, marker, cause = text.rpartition("Error: ")
    return cause.strip() if marker else text


def _jsonable(value):
    if isinstance(value, pd.DataFrame):
        return json.loads(value.to_json(orient="records"))
    if isinstance(value, pd.Series):
        return json.loads(value.to_json(orient="values"))
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _parse(request):
    try:
        return infer_and_parse_data(request, input_schema)
    except (MlflowException, ValueError, TypeError) as error:
        if _column_names() is None:
            raise
        # Casting to the signature's types failed without saying which column; read the
        # values as they are and let pyfunc's schema enforcement name it.
        logger.info(
            "input not castable to the signature (%s); enforcing it on the raw input", error
        )
        return infer_and_parse_data(request, None)


def run(raw_data):
    try:
        body = json.loads(raw_data) if isinstance(raw_data, (str, bytes)) else raw_data
    except ValueError as error:
        return _bad_request(f"the request body is not JSON: {error}")
    if not isinstance(body, dict):
        return _bad_request("the request body must be a JSON object with input_data")
    params = body.get("params")
    given = [key for key in ("input_data", *MLFLOW_FORMATS) if key in body]
    if len(given) != 1:
        return _bad_request(
            "the request body must have exactly one of input_data, "
            f"{', '.join(MLFLOW_FORMATS)}; got {sorted(body)}"
        )
    try:
        if given[0] == "input_data":
            request = _azure_input(body["input_data"])
        else:
            request = {given[0]: body[given[0]]}
        data = _parse(request)
    except (MlflowException, ValueError, TypeError, KeyError) as error:
        return _bad_request(f"the input could not be read: {_short(error)}")
    try:
        predictions = model.predict(data, params=params) if params else model.predict(data)
    except MlflowException as error:
        if error.error_code not in CALLER_ERRORS:
            raise
        # Schema enforcement: a missing column, or one whose values do not fit its type.
        return _bad_request(f"the input does not match the model signature: {_short(error)}")
    return _jsonable(predictions)
