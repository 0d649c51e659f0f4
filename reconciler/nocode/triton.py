"""Triton model repositories (`type: triton_model`): refused, with the reason.

Azure ML serves a `triton_model` (a model repository: `MODEL/config.pbtxt`,
`MODEL/1/model.onnx`, ...) with NVIDIA's Triton Inference Server image, whose backends
(ONNX Runtime, TensorRT, PyTorch, TensorFlow, Python) run the models. No image can be pulled
on our targets, and the only Triton build installable from a package index, the
tritonserver binary inside the `nvidia-pytriton` wheel, carries the Python backend alone:
a repository of ONNX (or TensorRT, PyTorch, ...) models fails to load in it ("unable to find
backend library for backend 'onnxruntime'"). Rewriting users' model configurations to run
ONNX files through a Python model of our own would no longer be the server and backend they
configured, so a triton_model deployment is refused when the files are validated rather
than failing at apply time.
"""

from __future__ import annotations

from typing import Final

TRITON_MODEL: Final = "triton_model"

REFUSAL: Final = (
    "triton_model deployments are not supported on this reconciler's targets: Triton "
    "Inference Server cannot be installed here with its ONNX Runtime, TensorRT, PyTorch or "
    "TensorFlow backends (the nvidia-pytriton wheel carries only the Python backend). Serve "
    "the model with a scoring script (code_configuration and an environment, e.g. "
    "onnxruntime), or as a custom container whose image you build"
)


def refusal(model_type: str | None) -> str | None:
    """The reason a model of `model_type` cannot be deployed with no code, or None."""
    return REFUSAL if model_type == TRITON_MODEL else None
