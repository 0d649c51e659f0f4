"""Images of the Kubernetes target pushed to a real registry on 127.0.0.1 (Debian's
docker-registry), by the real Docker Engine. Skipped, with the reason, when either is
missing (`apt-get install docker-registry`)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_fake import options

from reconciler.images.baseimage import BASE_IMAGE
from reconciler.images.layout import deployment_layout
from reconciler.model.specs import (
    DeploymentSpec,
    EnvironmentSpec,
    InferenceConfig,
    ModelSpec,
    Route,
)
from reconciler.targets.base import TargetError
from reconciler.targets.kubernetes import manifests as m
from reconciler.targets.kubernetes.images import RegistryImages, push_image, registry_has

pytestmark = pytest.mark.docker
REGISTRY_BINARY = "/usr/bin/docker-registry"


def _docker() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Docker Engine: {exc}")
    if not client.images.list(name=BASE_IMAGE):
        pytest.skip(f"local base image {BASE_IMAGE} not built (scripts build it)")
    return client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(REGISTRY_BINARY).exists() and shutil.which("docker-registry") is None:
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    folder = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    binary = REGISTRY_BINARY if Path(REGISTRY_BINARY).exists() else "docker-registry"
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.skip(f"docker-registry did not start on {address}")
                time.sleep(0.1)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_push_to_the_registry_named_by_the_target(registry: str) -> None:
    client = _docker()
    tag = f"test-{uuid.uuid4().hex[:8]}"
    reference = f"{registry}/ml/reconciler-app:{tag}"
    assert not registry_has(reference)
    try:
        push_image(client, BASE_IMAGE, reference, lambda _m: None)
    finally:
        client.images.remove(reference, noprune=True)
    assert "ml/reconciler-app" in _get_json(f"http://{registry}/v2/_catalog")["repositories"]
    assert tag in _get_json(f"http://{registry}/v2/ml/reconciler-app/tags/list")["tags"]
    assert registry_has(reference)
    assert not registry_has(f"{registry}/ml/reconciler-app:absent")


def _custom_model_spec(model_path: str, digest: str) -> DeploymentSpec:
    route = Route(8000, "/health")
    environment = EnvironmentSpec(
        name="custom",
        version="1",
        image="example.invalid/team/custom-server:1.0",
        inference_config=InferenceConfig(route, route, Route(8000, "/predict")),
        digest="sha256:custom",
    )
    return DeploymentSpec(
        endpoint_name="my-endpoint",
        name="custom",
        environment=environment,
        model=ModelSpec("weights", "3", model_path, digest=digest),
        model_mount_path="/models",
    )


def test_a_custom_container_keeps_its_image_and_gets_its_model_from_an_init_image(
    registry: str, tmp_path: Path
) -> None:
    client = _docker()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.json").write_text('{"weights": [7]}\n')
    spec = _custom_model_spec("weights", f"sha256:{uuid.uuid4().hex}")
    opts = options(registry=f"{registry}/ml")
    said: list[str] = []
    images = RegistryImages(opts, repo_root=tmp_path, docker_client=client)

    planned = images.deployment_image(spec, said.append)
    assert planned.image == spec.environment.image  # the user's image, as it is
    assert planned.model_image is not None
    assert planned.model_image.startswith(f"{registry}/ml/reconciler-model:")
    assert registry_has(planned.model_image)
    assert any("pushing" in line for line in said)

    # What the init container of the manifest does, with the pushed image.
    manifest = m.deployment_manifest(
        m.RenderContext("ml", opts, "router:1"), spec, replicas=1, image=planned
    )
    init = manifest["spec"]["template"]["spec"]["initContainers"][0]
    assert init["image"] == planned.model_image
    copy = init["command"][2]
    output = client.containers.run(
        planned.model_image,
        ["/bin/sh", "-c", f"mkdir -p {m.MODEL_STAGING} && {copy} && ls -R {m.MODEL_STAGING}"],
        remove=True,
    ).decode()
    assert "model.json" in output
    assert deployment_layout(spec).model_dir == "/models"

    # Content-addressed: a second process finds the tag in the registry and builds nothing.
    again: list[str] = []
    second = RegistryImages(opts, repo_root=tmp_path, docker_client=client)
    assert second.deployment_image(spec, again.append) == planned
    assert not again


def test_without_builds_a_missing_image_is_a_clear_error(registry: str, tmp_path: Path) -> None:
    opts = options(registry=f"{registry}/ml", build_images=False)
    spec = _custom_model_spec("weights", f"sha256:{uuid.uuid4().hex}")
    images = RegistryImages(opts, repo_root=tmp_path, docker_client=object())
    with pytest.raises(TargetError, match="not in the registry") as caught:
        images.deployment_image(spec, lambda _m: None)
    assert caught.value.code == "ImageMissing"
