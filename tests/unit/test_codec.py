"""codec: specs read back from their canonical JSON are equal, digest included."""

from __future__ import annotations

import json

from specs_factory import deployment, endpoint

from reconciler.model.codec import deployment_from_json, endpoint_from_json
from reconciler.model.specs import (
    InferenceConfig,
    Resources,
    Route,
    ScaleSettings,
    to_json,
)


def test_a_deployment_round_trips_through_json_text() -> None:
    spec = deployment(
        environment_variables=(("A", "1"), ("B", "two")),
        scale_settings=ScaleSettings("target_utilization", 1, 4, 70, 1),
        resources=Resources(requests=(("cpu", "1"),), limits=(("memory", "2Gi"),)),
        tags=(("team", "ml"),),
    )
    back = deployment_from_json(json.loads(json.dumps(to_json(spec))))
    assert back == spec
    assert back.digest == spec.digest


def test_a_custom_container_round_trips() -> None:
    route = Route(8000, "/health")
    spec = deployment()
    env = spec.environment.__class__(
        image="custom:1",
        inference_config=InferenceConfig(route, route, Route(8000, "/predict")),
        digest="sha256:x",
    )
    custom = deployment(environment=env, model_mount_path="/models")
    assert deployment_from_json(to_json(custom)) == custom


def test_an_endpoint_round_trips_and_unknown_keys_are_ignored() -> None:
    spec = endpoint(traffic={"blue": 70, "green": 30}, mirror={"red": 5}, description="d")
    data = to_json(spec)
    assert isinstance(data, dict)
    data["added_in_a_later_version"] = True
    assert endpoint_from_json(data) == spec
