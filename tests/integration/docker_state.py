"""Reading an endpoint's state volume from tests, as the Docker target itself does."""

from __future__ import annotations

import json
from typing import Any

import docker

from reconciler.targets.docker.state import CREDENTIALS, ROUTER_CONFIG, read_files


def holder(client: docker.DockerClient, target: str, endpoint: str) -> Any:
    """The container holding the endpoint's state volume."""
    labels = [
        f"reconciler.target={target}",
        f"reconciler.endpoint={endpoint}",
        "reconciler.role=state",
    ]
    found = client.containers.list(all=True, filters={"label": labels})
    assert found, f"no state holder of {target}/{endpoint}"
    return found[0]


def state_files(client: docker.DockerClient, target: str, endpoint: str) -> dict[str, bytes]:
    return read_files(holder(client, target, endpoint))


def credentials(client: docker.DockerClient, target: str, endpoint: str) -> dict[str, Any]:
    return dict(json.loads(state_files(client, target, endpoint)[CREDENTIALS]))


def router_config(client: docker.DockerClient, target: str, endpoint: str) -> dict[str, Any]:
    return dict(json.loads(state_files(client, target, endpoint)[ROUTER_CONFIG]))
