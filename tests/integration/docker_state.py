"""Reading an endpoint's state volume from tests, as the Docker target itself does."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import docker
import docker.errors

from reconciler.targets.docker.state import CREDENTIALS, ROUTER_CONFIG, read_files


def holder(client: docker.DockerClient, target: str, endpoint: str) -> Any:
    """The container holding the endpoint's state volume."""
    labels = [
        f"reconciler.target={target}",
        f"reconciler.endpoint={endpoint}",
        "reconciler.role=state",
    ]
    found = client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)
    assert found, f"no state holder of {target}/{endpoint}"
    return found[0]


def state_files(client: docker.DockerClient, target: str, endpoint: str) -> dict[str, bytes]:
    return read_files(holder(client, target, endpoint))


def credentials(client: docker.DockerClient, target: str, endpoint: str) -> dict[str, Any]:
    return dict(json.loads(state_files(client, target, endpoint)[CREDENTIALS]))


def router_config(client: docker.DockerClient, target: str, endpoint: str) -> dict[str, Any]:
    return dict(json.loads(state_files(client, target, endpoint)[ROUTER_CONFIG]))


def remove_target(client: docker.DockerClient, target: str) -> None:
    """Remove everything of a target from the engine, found by its label (labels, not
    names): containers first (they hold networks and volumes), then networks and volumes."""
    label = {"label": f"reconciler.target={target}"}
    for container in client.containers.list(all=True, filters=label, ignore_removed=True):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    for network in client.networks.list(filters=label):
        with contextlib.suppress(docker.errors.APIError):
            network.remove()
    for volume in client.volumes.list(filters=label):
        with contextlib.suppress(docker.errors.APIError):
            volume.remove(force=True)
