"""What a Docker target changes, said before apply: an image its image_map replaces, a
Python pin its base image does not have, Kubernetes resources applied as Docker limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.images.baseimage import BASE_IMAGE, DEFAULT_IMAGE_MAP
from reconciler.model.specs import (
    DeploymentSpec,
    EnvironmentSpec,
    InferenceConfig,
    Resources,
    Route,
    SourceLocation,
)
from reconciler.targets.docker.options import DockerOptions
from reconciler.targets.docker.preflight import (
    cpu_cores,
    memory_bytes,
    preflight_warnings,
    resource_limits,
)
from reconciler.targets.docker.target import DockerTarget

MCR = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
LINES = {("environment", "image"): 9, ("environment", "conda_file"): 10, ("resources",): 14}


def line_of(file: str, field: tuple[str | int, ...]) -> int | None:
    assert file == "shop/blue.yml"
    return LINES.get(field)


def spec(environment: EnvironmentSpec, *, resources: Resources | None = None) -> DeploymentSpec:
    return DeploymentSpec(
        endpoint_name="shop",
        name="blue",
        environment=environment,
        resources=resources,
        source=SourceLocation("shop/blue.yml", 1),
    )


def warnings_of(*specs: DeploymentSpec) -> list[tuple[str, int | None, str, str]]:
    found = preflight_warnings(
        specs, target="local", base_image=BASE_IMAGE, image_map=DEFAULT_IMAGE_MAP, line_of=line_of
    )
    return [(w.file, w.line, w.field, w.message) for w in found]


def test_an_image_the_image_map_replaces_is_said_with_its_line() -> None:
    env = EnvironmentSpec(image=MCR, conda_file="shop/conda.yml", python_version="3.11")
    ((file, line, field, message),) = warnings_of(spec(env))
    assert (file, line, field) == ("shop/blue.yml", 9, "environment.image")
    assert MCR in message and BASE_IMAGE in message and "'local'" in message


def test_a_python_pin_the_base_image_does_not_have_is_said() -> None:
    env = EnvironmentSpec(image=MCR, conda_file="shop/conda.yml", python_version="3.12")
    found = warnings_of(spec(env))
    assert [(f, line, field) for f, line, field, _ in found] == [
        ("shop/blue.yml", 9, "environment.image"),
        ("shop/blue.yml", 10, "environment.conda_file"),
    ]
    assert "python=3.12" in found[1][3] and "Python 3.11" in found[1][3]


def test_an_image_of_its_own_says_nothing() -> None:
    env = EnvironmentSpec(image="registry.example/shop:1", python_version="3.12")
    assert warnings_of(spec(env)) == []


def test_a_custom_container_runs_its_image_and_gets_no_python_warning() -> None:
    route = Route(8000, "/")
    custom = EnvironmentSpec(
        image="registry.example/server:1",
        python_version="3.12",
        inference_config=InferenceConfig(route, route, route),
    )
    assert warnings_of(spec(custom)) == []


def test_kubernetes_resources_are_said_to_become_docker_limits() -> None:
    resources = Resources(requests=(("cpu", "0.1"),), limits=(("cpu", "200m"), ("memory", "200Mi")))
    env = EnvironmentSpec(image="registry.example/shop:1")
    ((file, line, field, message),) = warnings_of(spec(env, resources=resources))
    assert (file, line, field) == ("shop/blue.yml", 14, "resources")
    assert "0.2 CPU, 200 MiB" in message


@pytest.mark.parametrize(
    ("quantity", "cores"), [("2", 2.0), ("0.5", 0.5), ("500m", 0.5), (".25", 0.25), ("x", None)]
)
def test_cpu_quantities(quantity: str, cores: float | None) -> None:
    assert cpu_cores(quantity) == cores


@pytest.mark.parametrize(
    ("quantity", "size"),
    [
        ("200Mi", 200 * 2**20),
        ("0.1Gi", int(0.1 * 2**30)),
        ("1G", 10**9),
        ("128", 128),
        ("1e3", 1000),
    ],
)
def test_memory_quantities(quantity: str, size: int) -> None:
    assert memory_bytes(quantity) == size


def test_limits_come_from_the_limits_else_the_requests() -> None:
    assert resource_limits(Resources(requests=(("cpu", "1"), ("memory", "1Gi")))) == (1.0, 2**30)
    both = Resources(requests=(("cpu", "1"),), limits=(("cpu", "2"),))
    assert resource_limits(both) == (2.0, None)
    assert resource_limits(None) == (None, None)


def test_the_docker_target_applies_kubernetes_resources_as_container_limits(
    tmp_path: Path,
) -> None:
    target = DockerTarget(DockerOptions(state_dir=tmp_path), repo_root=tmp_path)
    resources = Resources(limits=(("cpu", "200m"), ("memory", "200Mi")))
    env = EnvironmentSpec(image="registry.example/shop:1")
    given = spec(env, resources=resources)
    assert target._limits(given) == {"nano_cpus": 200_000_000, "mem_limit": 200 * 2**20}
    # Without resources, the instance type's figures (scaled) as before.
    sized = DeploymentSpec(
        endpoint_name="shop", name="blue", environment=env, instance_type="Standard_DS3_v2"
    )
    assert target._limits(sized)["nano_cpus"] == int(4 * 0.25 * 1e9)
