# mypy: ignore-errors
"""Triton Python-backend model that runs an ONNX file with ONNX Runtime (CPU).

This file is never imported by the reconciler: its source is copied as `model.py` into each
version folder of an ONNX model in the model repository that a no-code `triton_model`
deployment's image serves (reconciler/nocode/triton.py). The model's config.pbtxt there is
the user's with `backend: "python"` and the parameter `reconciler_onnx_model_file` (the
ONNX file's name in the version folder, `model.onnx` unless `default_model_filename` said
otherwise); its inputs, outputs and max_batch_size are the user's, and Triton checks every
request against them (names, datatypes, shapes, batch size) before execute() sees it.

auto_complete_config() runs first (Triton calls it in the stub before initialize when
auto-complete is on, as it is by default and in the command the reconciler starts): it
completes the config from the ONNX model as Triton's ONNX Runtime backend completes an ONNX
model's configuration, so a model folder without config.pbtxt, or a config.pbtxt without
input or output, serves as it does in Azure. Every input and output of the model that the
config does not list is added (name, data_type as TYPE_*, dims from the model's shape, a
dynamic or symbolic size as -1). The batch dimension: when the config sets no
max_batch_size (or 0) and lists no tensor, and every input and output of the model has a
dynamic first dimension, max_batch_size becomes 4 (Triton's default-max-batch-size), dynamic
batching is enabled and the dims leave the first dimension out, as Triton's ONNX Runtime
backend does; otherwise max_batch_size stays as written and, when it is above 0, the dims
leave the first dimension out (it is the batch).

initialize() checks the config against the ONNX model as Triton's ONNX Runtime backend
does (every configured input and output exists in the model, with the same datatype and a
shape of the model's rank and fixed sizes), so a mismatch fails the model's load with a
message naming the tensor. execute() runs each
request on its own (ONNX Runtime batches nothing across requests) and answers the outputs
the request asked for (all of them when it named none).
"""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

MODEL_FILE_PARAMETER = "reconciler_onnx_model_file"
# ONNX Runtime's tensor types as Triton names them (config.pbtxt's data_type).
ONNX_TO_TRITON = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}
# Triton's default-max-batch-size, which its ONNX Runtime backend gives a model that can batch.
DEFAULT_MAX_BATCH_SIZE = 4
# Thread settings Triton's ONNX Runtime backend reads from the config's parameters.
THREAD_PARAMETERS = {
    "intra_op_thread_count": "intra_op_num_threads",
    "inter_op_thread_count": "inter_op_num_threads",
}


def _parameter(config, key):
    entry = (config.get("parameters") or {}).get(key)
    return entry.get("string_value") if isinstance(entry, dict) else None


def _model_path(args, config):
    name = _parameter(config, MODEL_FILE_PARAMETER) or "model.onnx"
    path = os.path.join(args["model_repository"], args["model_version"], name)
    # Triton also takes a folder named model.onnx holding model.onnx (external weights).
    if os.path.isdir(path):
        path = os.path.join(path, "model.onnx")
    return path


def _shape(item):
    """The model's shape of a tensor, a dynamic or symbolic size as -1."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in item.shape or []]


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        config = auto_complete_model_config.as_dict()
        name = config.get("name", "")
        # The stub imports this file from the version folder being loaded, beside the model.
        folder = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(folder, _parameter(config, MODEL_FILE_PARAMETER) or "model.onnx")
        if os.path.isdir(path):
            path = os.path.join(path, "model.onnx")
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        inputs, outputs = session.get_inputs(), session.get_outputs()
        listed_inputs = {t["name"] for t in config.get("input") or []}
        listed_outputs = {t["name"] for t in config.get("output") or []}
        max_batch_size = int(config.get("max_batch_size") or 0)
        can_batch = all(_shape(item)[:1] == [-1] for item in [*inputs, *outputs])
        if max_batch_size == 0 and not listed_inputs and not listed_outputs and can_batch:
            max_batch_size = DEFAULT_MAX_BATCH_SIZE
            auto_complete_model_config.set_max_batch_size(max_batch_size)
            if "sequence_batching" not in config:
                auto_complete_model_config.set_dynamic_batching()
        for items, listed, add in (
            (inputs, listed_inputs, auto_complete_model_config.add_input),
            (outputs, listed_outputs, auto_complete_model_config.add_output),
        ):
            for item in items:
                if item.name in listed:
                    continue  # as written: initialize() checks it against the model
                datatype = ONNX_TO_TRITON.get(item.type)
                if datatype is None:
                    raise pb_utils.TritonModelException(
                        f"model '{name}': tensor '{item.name}' of the ONNX model has type "
                        f"{item.type}, which Triton has no datatype for"
                    )
                shape = _shape(item)
                dims = shape[1:] if max_batch_size > 0 else shape
                add({"name": item.name, "data_type": datatype, "dims": dims})
        return auto_complete_model_config

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        options = onnxruntime.SessionOptions()
        for key, option in THREAD_PARAMETERS.items():
            value = _parameter(config, key)
            if value and value.strip().isdigit() and int(value) > 0:
                setattr(options, option, int(value))
        self.session = onnxruntime.InferenceSession(
            _model_path(args, config), sess_options=options, providers=["CPUExecutionProvider"]
        )
        batching = int(config.get("max_batch_size") or 0) > 0
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.inputs = self._check(config.get("input") or [], inputs, "input", batching)
        self.outputs = self._check(config.get("output") or [], outputs, "output", batching)

    def _check(self, configured, in_model, kind, batching):
        """[(name, Triton datatype)] of the config's tensors, checked against the model as
        Triton's ONNX Runtime backend checks them: the name exists, the datatype is the
        same, and the shape (the batch dimension, then `reshape` or `dims`) has the model's
        rank and its fixed sizes."""
        found = {item.name: item for item in in_model}
        checked = []
        for tensor in configured:
            name, wanted = tensor["name"], tensor["data_type"]
            item = found.get(name)
            if item is None:
                raise pb_utils.TritonModelException(
                    f"model '{self.model_name}': config.pbtxt names {kind} '{name}', which the "
                    f"ONNX model does not have (it has {', '.join(sorted(found))})"
                )
            provided = ONNX_TO_TRITON.get(item.type, item.type)
            if provided != wanted:
                raise pb_utils.TritonModelException(
                    f"model '{self.model_name}': config.pbtxt expects datatype {wanted} for "
                    f"{kind} '{name}', the ONNX model provides {provided}"
                )
            reshape = (tensor.get("reshape") or {}).get("shape")
            dims = [int(d) for d in (reshape if reshape is not None else tensor.get("dims", []))]
            expected = ([-1] if batching else []) + dims
            model_shape = _shape(item)
            fits = len(expected) == len(model_shape) and all(
                e == m or e == -1 or m == -1 for e, m in zip(expected, model_shape, strict=True)
            )
            if not fits:
                raise pb_utils.TritonModelException(
                    f"model '{self.model_name}', {kind} '{name}': the ONNX model's shape is "
                    f"{model_shape}, config.pbtxt gives {expected} (the batch dimension first "
                    "when max_batch_size > 0, then dims, or reshape.shape when given)"
                )
            checked.append((name, wanted))
        return checked

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as error:  # the caller gets the reason, the model stays up
                message = f"ONNX Runtime failed on model '{self.model_name}': {error}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
        return responses

    def _one(self, request):
        feeds = {}
        for name, datatype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                continue  # an optional input the request left out
            value = tensor.as_numpy()
            if datatype == "TYPE_STRING":
                # Triton hands BYTES tensors over as bytes objects; ONNX Runtime wants text.
                value = np.vectorize(lambda item: item.decode("utf-8"), otypes=[object])(value)
            feeds[name] = value
        requested = set(request.requested_output_names() or ())
        wanted = [(n, t) for n, t in self.outputs if not requested or n in requested]
        results = self.session.run([name for name, _ in wanted], feeds)
        tensors = []
        for (name, datatype), value in zip(wanted, results, strict=True):
            value = np.asarray(value)
            if datatype == "TYPE_STRING":
                value = np.vectorize(lambda item: str(item).encode("utf-8"), otypes=[object])(value)
            tensors.append(pb_utils.Tensor(name, value))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self):
        self.session = None
