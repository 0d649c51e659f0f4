"""No-code deployments: what a model of a known type brings instead of code and environment.

`mlflowmodel` derives an MLflow model's environment and ships its scoring script
(`mlflow_score.py`, copied into images, never imported here). `triton` checks a Triton
model repository and says how Triton Inference Server serves it (its environment, the
repository generated in the image, and `triton_onnx_model.py`, the Python-backend model
that runs ONNX files with ONNX Runtime, copied into images, never imported here);
`pbtxt` reads Triton's configuration files.
"""
