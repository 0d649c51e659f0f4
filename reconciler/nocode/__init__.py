"""No-code deployments: what a model of a known type brings instead of code and environment.

`mlflowmodel` derives an MLflow model's environment and ships its scoring script
(`mlflow_score.py`, copied into images, never imported here). `triton` says why Triton
model repositories are refused on our targets.
"""
