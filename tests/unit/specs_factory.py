"""Small spec values for unit tests of the pure modules."""

from __future__ import annotations

from typing import Any

from reconciler.model.specs import (
    CodeSpec,
    DeploymentSpec,
    EndpointSpec,
    EnvironmentSpec,
    ModelSpec,
    weights,
)

ENV = EnvironmentSpec(name="env", version="1", image="python:3.11-slim", digest="sha256:e1")


def endpoint(name: str = "ep", traffic: dict[str, int] | None = None, **kw: Any) -> EndpointSpec:
    mirror = kw.pop("mirror", None)
    return EndpointSpec(name, traffic=weights(traffic), mirror_traffic=weights(mirror), **kw)


def deployment(name: str = "blue", endpoint: str = "ep", **kw: Any) -> DeploymentSpec:
    kw.setdefault("environment", ENV)
    kw.setdefault("instance_type", "Standard_DS3_v2")
    kw.setdefault("code", CodeSpec("src", "score.py", digest="sha256:c1"))
    kw.setdefault("model", ModelSpec("m", "1", "models/m", digest="sha256:m1"))
    return DeploymentSpec(endpoint_name=endpoint, name=name, **kw)
