"""No orphans of builds: a `reconcile` killed (SIGKILL or SIGTERM) while it builds a
deployment's thin layer leaves a container that carries the target's labels from the
moment it exists, and the next build of that target removes it. Against the real Docker
Engine, with the real `reconcile` command in a process of its own.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker_state
import pytest
import yaml

from reconciler.targets.docker.options import DockerOptions

pytest_plugins = ("docker_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Large enough that copying it into the build container and committing it take a while
# (the window in which the process is killed); zeros, so writing it costs nothing.
MODEL_BYTES = 256 * 1024 * 1024

CUSTOM_SERVER = """\
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
"""


@dataclass
class World:
    client: docker.DockerClient
    name: str  # the target's
    image_id: str  # the deployment's own image: only this test makes containers of it
    repo: Path
    state: Path

    def options(self) -> DockerOptions:
        return DockerOptions(name=self.name, state_dir=self.state / "docker")

    def of_our_image(self) -> list[Any]:
        return list(
            self.client.containers.list(
                all=True, filters={"ancestor": self.image_id}, ignore_removed=True
            )
        )

    def any_of_our_image(self) -> bool:
        # One request, no inspection of each: polled while a build runs.
        return bool(self.client.api.containers(all=True, filters={"ancestor": self.image_id}))


@pytest.fixture
def world(docker_client: docker.DockerClient, base_image: str, tmp_path: Path) -> Iterator[World]:
    name = f"orph{uuid.uuid4().hex[:8]}"
    tag = f"reconciler-test-custom:{name}"
    # An image of its own (a LABEL makes a new image id), so that the containers of this
    # test are told from those of every other build on the machine by their ancestor.
    dockerfile = f"FROM {base_image}\nLABEL reconciler.test=1 reconciler.test.id={name}\n"
    image, _ = docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True
    )
    repo = tmp_path / "repo"
    (repo / "endpoints" / "big-ep").mkdir(parents=True)
    (repo / "models" / "big").mkdir(parents=True)
    with open(repo / "models" / "big" / "weights.bin", "wb") as weights:
        weights.truncate(MODEL_BYTES)
    low = 21000 + int(name[4:], 16) % 90 * 10
    files: dict[str, Any] = {
        "reconciler.yaml": {
            "targets": {
                name: {
                    "type": "docker",
                    "state_dir": str(tmp_path / "state" / "docker"),
                    "router_port_range": [low, low + 9],
                }
            },
            "default_target": name,
        },
        "models/big.yml": {
            "$schema": "https://azuremlschemas.azureedge.net/latest/model.schema.json",
            "name": "big",
            "version": 1,
            "path": "big",
            "type": "custom_model",
        },
        "environments/custom-env.yml": {
            "$schema": "https://azuremlschemas.azureedge.net/latest/environment.schema.json",
            "name": "custom-env",
            "version": 1,
            "image": tag,
            "inference_config": {
                "liveness_route": {"port": 8000, "path": "/"},
                "readiness_route": {"port": 8000, "path": "/"},
                "scoring_route": {"port": 8000, "path": "/score"},
            },
        },
        "endpoints/big-ep/endpoint.yml": {
            "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json",
            "name": "big-ep",
            "auth_mode": "key",
            "traffic": {"big": 100},
        },
        "endpoints/big-ep/big.yml": {
            "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json",
            "name": "big",
            "endpoint_name": "big-ep",
            "model": "azureml:big:1",
            "environment": "azureml:custom-env:1",
            "instance_type": "Standard_DS3_v2",
            "instance_count": 1,
        },
    }
    for path, data in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(yaml.safe_dump(data, sort_keys=False))
    (repo / "server.py").write_text(CUSTOM_SERVER)
    yield World(docker_client, name, str(image.id), repo, tmp_path / "state")
    for container in docker_client.containers.list(
        all=True, filters={"label": f"reconciler.target={name}"}, ignore_removed=True
    ) + docker_client.containers.list(
        all=True, filters={"ancestor": str(image.id)}, ignore_removed=True
    ):
        with _gone():
            container.remove(force=True)
    docker_state.remove_target(docker_client, name)
    for built in docker_client.images.list(filters={"label": f"reconciler.test.id={name}"}):
        with _gone():
            docker_client.images.remove(built.id, force=True)


class _gone:
    """Cleanup tolerates what is already gone."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *rest: object) -> bool:
        return kind is not None and issubclass(kind, docker.errors.APIError)  # type: ignore[arg-type]


def kill_mid_build(world: World, signum: signal.Signals) -> Any:
    """Run `reconcile` (one-shot apply) and kill it while its thin layer is being built;
    the container the build left behind."""
    log = world.state.parent / "reconcile.log"
    world.state.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "--log-format",
            "json",
            "--repo",
            str(world.repo),
            "--worktree",
        ],
        env={**os.environ, "XDG_STATE_HOME": str(world.state)},
        cwd=world.state.parent,  # not the project's folder: PYTHONPATH decides the package
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        # The router is built and started first; the first container of our image is the
        # thin layer's build container (a custom container needs no environment build).
        deadline = time.monotonic() + 600
        while not world.any_of_our_image() and process.poll() is None:
            assert time.monotonic() < deadline, "no build started within 600 s"
            time.sleep(0.02)
        process.send_signal(signum)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    left = world.of_our_image()
    assert len(left) == 1, (
        f"the build was not caught in the middle ({len(left)} containers of the image); "
        f"log:\n{log.read_text()[-3000:]}"
    )
    return left[0]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_build_killed_midway_leaves_a_labelled_container_the_next_pass_removes(
    world: World, signum: signal.Signals
) -> None:
    leftover = kill_mid_build(world, signum)
    assert leftover.status == "created"
    # Labelled from the moment it exists: found by the target's labels like the rest.
    assert leftover.labels.get("reconciler.managed-by") == "ml-endpoint-reconciler"
    assert leftover.labels.get("reconciler.target") == world.name
    assert leftover.labels.get("reconciler.role") == "build"

    # The next build of this target clears the leftover first: the next `reconcile` builds
    # the deployment again (one pass with --no-wait: the instance it starts need not be
    # ready for this).
    done = subprocess.run(
        [
            *(sys.executable, "-m", "reconciler.cli", "--log-format", "json"),
            *("--repo", str(world.repo), "--worktree", "--no-wait"),
        ],
        env={**os.environ, "XDG_STATE_HOME": str(world.state)},
        cwd=world.state.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # The image runs no server (the base image's own command exits): its instance may be
    # seen failing already (exit 1); what counts here is the build, not the instance.
    assert done.returncode in (0, 3) or (
        done.returncode == 1 and "never became ready" in done.stderr
    ), done.stderr[-3000:]
    left = world.of_our_image()
    assert leftover.id not in {c.id for c in left}
    assert [c for c in left if c.labels.get("reconciler.role") == "build"] == []


def test_cleanup_removes_only_this_targets_stale_build_containers(
    world: World, docker_client: docker.DockerClient
) -> None:
    def labels(target: str, role: str) -> dict[str, str]:
        return {
            "reconciler.managed-by": "ml-endpoint-reconciler",
            "reconciler.target": target,
            "reconciler.role": role,
            "reconciler.test": "1",
        }

    from reconciler.images.layers import remove_stale_build_containers

    other = f"{world.name}-other"
    made = {
        "ours": docker_client.containers.create(
            world.image_id, command=["true"], labels=labels(world.name, "build")
        ),
        "other target": docker_client.containers.create(
            world.image_id, command=["true"], labels=labels(other, "build")
        ),
        "not a build": docker_client.containers.create(
            world.image_id, command=["true"], labels=labels(world.name, "instance")
        ),
        "running build": docker_client.containers.run(
            world.image_id,
            command=["sleep", "600"],
            detach=True,
            labels=labels(world.name, "build"),
        ),
    }
    removed = remove_stale_build_containers(docker_client, world.name)
    left = {c.id for c in world.of_our_image()}
    assert removed == [made["ours"].name]
    # A build that still runs may belong to a process that lives: it is left to finish
    # (and is removed by a later pass once it stopped, or past the build timeout).
    assert left == {made[k].id for k in ("other target", "not a build", "running build")}
    made["running build"].stop(timeout=0)
    assert remove_stale_build_containers(docker_client, world.name) == [made["running build"].name]


def test_images_built_for_a_target_carry_its_labels_but_no_build_role(
    world: World, docker_client: docker.DockerClient
) -> None:
    from reconciler.images.layers import build_deployment_image, build_labels
    from reconciler.model.specs import DeploymentSpec, EnvironmentSpec, ModelSpec

    env = EnvironmentSpec(
        name="custom-env", version="1", image=world.image_id, inference_config=_routes()
    )
    spec = DeploymentSpec(
        endpoint_name="big-ep",
        name="small",
        environment=env,
        model=ModelSpec(name="small", version="1", path="small.bin"),
    )
    (world.repo / "small.bin").write_bytes(world.name.encode())  # a thin image of its own
    tag = build_deployment_image(
        docker_client,
        spec,
        env_image=world.image_id,
        repo_root=world.repo,
        labels=build_labels(world.name),
    )
    labels = docker_client.images.get(tag).attrs["Config"]["Labels"]
    assert labels["reconciler.managed-by"] == "ml-endpoint-reconciler"
    assert labels["reconciler.target"] == world.name
    assert labels["reconciler.role"] == "image"
    assert labels["reconciler.kind"] == "deployment"
    assert world.of_our_image() == []  # the build container went with the build


def _routes() -> Any:
    from reconciler.model.specs import InferenceConfig, Route

    route = Route(port=8000, path="/")
    return InferenceConfig(route, route, Route(port=8000, path="/score"))
