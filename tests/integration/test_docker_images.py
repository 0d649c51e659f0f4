"""Images of the Docker target against the real Docker Engine of this machine.

The base image is built once per machine (about a minute, needs root and debootstrap);
environment images are cached by tag, so after the first run these tests take seconds.
The first tests need no engine: they check the pure parts (mirror, tags, layout).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from reconciler.images import baseimage
from reconciler.images.baseimage import (
    BASE_IMAGE,
    ImageBuildError,
    debian_mirror,
    exclusive,
)
from reconciler.images.condamap import CondaMappingError
from reconciler.images.layers import (
    ImagePython,
    build_deployment_image,
    build_environment_image,
    deployment_layout,
    environment_requirements,
)
from reconciler.model.specs import (
    CodeSpec,
    DeploymentSpec,
    EnvironmentSpec,
    InferenceConfig,
    ModelSpec,
    Route,
)

pytest_plugins = ("docker_fixtures",)

# An image named as Azure ML environments name theirs: it cannot be pulled here, so the
# builds fall back to the local base image (with a warning), as users' repositories will.
AZURE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


NUMPY_ENV = EnvironmentSpec(
    name="numpy-env",
    version="1",
    image=AZURE_IMAGE,
    pip_packages=("numpy",),
    # Stable across runs, so the image built by one run is a cache hit for the next.
    digest=digest_of("test_docker_images numpy environment v1"),
)

SCORE_PY = """\
import json
import os

ready = None


def init():
    global ready
    ready = os.environ["AZUREML_MODEL_DIR"]


def run(data):
    return {"echo": json.loads(data)}
"""


def make_repo(root: Path, *, score: str = SCORE_PY) -> Path:
    (root / "onlinescoring").mkdir(parents=True)
    (root / "onlinescoring" / "score.py").write_text(score)
    (root / "models" / "sklearn").mkdir(parents=True)
    (root / "models" / "sklearn" / "weights.bin").write_bytes(b"\x00\x01weights")
    return root


def deployment(env: EnvironmentSpec) -> DeploymentSpec:
    # Digests are left empty: the builder computes them from the files, as for specs
    # made outside loading.
    return DeploymentSpec(
        endpoint_name="my-endpoint",
        name="blue",
        environment=env,
        code=CodeSpec(path="onlinescoring", scoring_script="score.py"),
        model=ModelSpec(name="sklearn-model", version="2", path="models/sklearn"),
    )


# --- no engine needed ------------------------------------------------------------------


def test_mirror_from_deb822_sources() -> None:
    sources = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""
    assert debian_mirror([sources]) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources() -> None:
    sources = [
        "deb http://security.example/debian-security bookworm-security main\n",
        "# deb http://old.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main contrib\n",
    ]
    assert debian_mirror(sources) == "http://mirror.example/debian"
    assert debian_mirror(["deb http://x.example/ubuntu jammy main\n"]) is None


def test_missing_debootstrap_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baseimage.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(ImageBuildError, match=r"apt-get install -y debootstrap"):
        baseimage.debootstrap_command()


def test_lock_lets_one_builder_in_at_a_time(tmp_path: Path) -> None:
    order: list[str] = []
    lock = tmp_path / "build.lock"
    inside = threading.Event()

    def second() -> None:
        inside.wait()
        with exclusive(lock, None, "image"):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with exclusive(lock, None, "image"):
        inside.set()
        time.sleep(0.3)
        order.append("first")
    thread.join(timeout=5)
    assert order == ["first", "second"]


def test_platform_tags_cover_older_manylinux() -> None:
    python = ImagePython("3.11", "cp", "glibc", "2.36", "x86_64")
    tags = python.platforms()
    assert python.abi == "cp311"
    assert tags[0] == "manylinux_2_36_x86_64"
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
        assert tag in tags
    assert "manylinux_2_37_x86_64" not in tags


def test_requirements_add_the_inference_server_once() -> None:
    env = EnvironmentSpec(pip_packages=("numpy",), conda_packages=("python=3.11", "pytorch"))
    assert environment_requirements(env) == ("numpy", "torch", "azureml-inference-server-http")
    pinned = EnvironmentSpec(pip_packages=("azureml_inference_server_http==1.5.1",))
    assert environment_requirements(pinned) == ("azureml_inference_server_http==1.5.1",)


def test_layout_follows_the_runtime_contract() -> None:
    layout = deployment_layout(deployment(NUMPY_ENV))
    assert layout.code_dir == "/var/azureml-app/onlinescoring"
    assert dict(layout.environment()) == {
        "AML_APP_ROOT": "/var/azureml-app/onlinescoring",
        "AZUREML_ENTRY_SCRIPT": "score.py",
        "AZUREML_MODEL_DIR": "/var/azureml-app/azureml-models/sklearn-model/2",
    }
    # A registered folder keeps its own name inside the model folder...
    assert layout.model_target == "/var/azureml-app/azureml-models/sklearn-model/2/sklearn"
    # ...and a single-file model sits directly in it.
    single = DeploymentSpec(
        endpoint_name="e",
        name="d",
        environment=NUMPY_ENV,
        code=CodeSpec(path="src/app", scoring_script="serve/score.py"),
        model=ModelSpec(name="m", version="1", path="model.pkl"),
    )
    layout = deployment_layout(single)
    assert layout.model_target == "/var/azureml-app/azureml-models/m/1/model.pkl"
    assert layout.app_root == "/var/azureml-app/app/serve"
    assert layout.entry_script == "score.py"


# --- against the engine ------------------------------------------------------------------


@pytest.fixture(scope="module")
def numpy_env_image(
    docker_client: docker.DockerClient,
    base_image: str,
    wheel_cache: Path,
    test_labels: dict[str, str],
) -> str:
    return build_environment_image(
        docker_client,
        NUMPY_ENV,
        repo_root=Path("."),
        base_image=base_image,
        wheel_cache=wheel_cache,
        labels=test_labels,
    )


@pytest.mark.docker
def test_base_image_has_python_3_11(
    docker_client: docker.DockerClient, base_image: str, run_once: Callable[..., bytes]
) -> None:
    output = run_once(
        base_image,
        ["python3", "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
    )
    assert output.decode().strip() == "3.11"
    # A second call finds the image: the build is a one-off per machine.
    started = time.monotonic()
    assert baseimage.ensure_base_image(docker_client, base_image) == (
        docker_client.images.get(base_image).id
    )
    assert time.monotonic() - started < 2


@pytest.mark.docker
def test_base_image_carries_the_native_libraries_wheels_link_against(
    base_image: str, run_once: Callable[..., bytes]
) -> None:
    # LightGBM and XGBoost wheels need the OpenMP runtime; embedding servers need libpython.
    output = run_once(
        base_image,
        [
            "python3",
            "-c",
            "import ctypes; ctypes.CDLL('libgomp.so.1'); "
            "ctypes.CDLL('libpython3.11.so.1.0'); print('loaded')",
        ],
    )
    assert output.decode().strip() == "loaded"


@pytest.mark.docker
def test_a_base_image_built_from_another_package_list_is_not_taken(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    # A machine that built the base image before a package was added must rebuild it;
    # an image that is not ours (pulled, or the user's) is taken as it is.
    def tagged(labels: dict[str, str]) -> str:
        digest = hashlib.sha256(json.dumps(labels).encode()).hexdigest()[:12]
        tag = f"reconciler-test/base-variant:{digest}"
        dockerfile = f"FROM {base_image}\n" + "".join(
            f'LABEL {k}="{v}"\n' for k, v in labels.items()
        )
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
        return tag

    old = tagged({baseimage.PACKAGES_LABEL: "python3,python3-venv,python3-pip,ca-certificates"})
    users = tagged({"reconciler.kind": "theirs", baseimage.PACKAGES_LABEL: ""})
    try:
        assert baseimage._current_base_id(docker_client, old) is None
        assert (
            baseimage._current_base_id(docker_client, users) == docker_client.images.get(users).id
        )
        assert baseimage._current_base_id(docker_client, base_image) == (
            docker_client.images.get(base_image).id
        )
    finally:
        for tag in (old, users):
            docker_client.images.remove(tag, force=True)


@pytest.mark.docker
def test_environment_installs_offline(
    docker_client: docker.DockerClient, numpy_env_image: str, run_once: Callable[..., bytes]
) -> None:
    output = run_once(
        numpy_env_image,
        ["python", "-c", "import numpy, azureml_inference_server_http; print(numpy.__name__)"],
    )
    assert output.decode().strip() == "numpy"
    config = docker_client.images.get(numpy_env_image).attrs["Config"]
    # The install's entrypoint does not stay in the image; the base's command does.
    assert not config.get("Entrypoint")
    assert config["Cmd"] == ["/bin/bash"]
    assert config["Labels"]["reconciler.kind"] == "environment"


@pytest.mark.docker
def test_environment_cache_hit(
    docker_client: docker.DockerClient, numpy_env_image: str, base_image: str, wheel_cache: Path
) -> None:
    events: list[str] = []
    started = time.monotonic()
    again = build_environment_image(
        docker_client,
        NUMPY_ENV,
        repo_root=Path("."),
        base_image=base_image,
        wheel_cache=wheel_cache,
        progress=lambda event, message: events.append(event),
    )
    assert time.monotonic() - started < 3
    assert again == numpy_env_image
    assert "environment_image_cached" in events
    # image_map says which local image stands for the Azure one: the same base here, so
    # the same environment image.
    mapped = build_environment_image(
        docker_client,
        NUMPY_ENV,
        repo_root=Path("."),
        base_image=base_image,
        wheel_cache=wheel_cache,
        image_map={"mcr.microsoft.com/azureml/*": BASE_IMAGE},
        pull=False,
    )
    assert docker_client.images.get(mapped).id == docker_client.images.get(numpy_env_image).id


@pytest.mark.docker
def test_code_only_change_rebuilds_only_the_thin_layer(
    docker_client: docker.DockerClient,
    numpy_env_image: str,
    base_image: str,
    wheel_cache: Path,
    tmp_path: Path,
    test_labels: dict[str, str],
) -> None:
    first_repo = make_repo(tmp_path / "first")
    second_repo = make_repo(tmp_path / "second", score=SCORE_PY + "\n# a comment\n")
    env_id = docker_client.images.get(numpy_env_image).id

    first = build_deployment_image(
        docker_client,
        deployment(NUMPY_ENV),
        env_image=numpy_env_image,
        repo_root=first_repo,
        labels=test_labels,
    )
    # The environment did not change: the same image, at once.
    env_again = build_environment_image(
        docker_client,
        NUMPY_ENV,
        repo_root=second_repo,
        base_image=base_image,
        wheel_cache=wheel_cache,
        pull=False,
    )
    assert docker_client.images.get(env_again).id == env_id
    started = time.monotonic()
    second = build_deployment_image(
        docker_client,
        deployment(NUMPY_ENV),
        env_image=env_again,
        repo_root=second_repo,
        labels=test_labels,
    )
    assert time.monotonic() - started < 30
    assert first != second
    env_layers = docker_client.images.get(env_id).attrs["RootFS"]["Layers"]
    for tag in (first, second):
        layers = docker_client.images.get(tag).attrs["RootFS"]["Layers"]
        assert layers[:-1] == env_layers  # one layer on top of the same environment
    # Same content, same image: no rebuild.
    assert (
        build_deployment_image(
            docker_client, deployment(NUMPY_ENV), env_image=env_again, repo_root=first_repo
        )
        == first
    )


@pytest.mark.docker
def test_scoring_script_served_by_the_inference_server(
    docker_client: docker.DockerClient,
    numpy_env_image: str,
    run_container: Callable[..., Any],
    container_http: Any,
    tmp_path: Path,
    test_labels: dict[str, str],
) -> None:
    repo = make_repo(tmp_path)
    tag = build_deployment_image(
        docker_client,
        deployment(NUMPY_ENV),
        env_image=numpy_env_image,
        repo_root=repo,
        labels=test_labels,
    )
    container = run_container(tag)
    container_http.wait_until_ready(container, "http://127.0.0.1:5001/")
    status, body = container_http.request(
        container, "POST", "http://127.0.0.1:5001/score", {"data": [1, 2, 3]}
    )
    assert status == 200, body
    assert json.loads(body) == {"echo": {"data": [1, 2, 3]}}
    # The model sits where AZUREML_MODEL_DIR says, its folder name kept.
    code, output = container.exec_run(["sh", "-c", 'cat "$AZUREML_MODEL_DIR/sklearn/weights.bin"'])
    assert code == 0 and output == b"\x00\x01weights"


@pytest.mark.docker
def test_missing_package_fails_with_its_name_in_the_log(
    docker_client: docker.DockerClient,
    base_image: str,
    wheel_cache: Path,
    test_labels: dict[str, str],
) -> None:
    env = EnvironmentSpec(
        name="broken",
        version="1",
        pip_packages=("this-package-does-not-exist-xyz",),
        digest=digest_of("test_docker_images broken environment"),
    )
    with pytest.raises(ImageBuildError) as caught:
        build_environment_image(
            docker_client,
            env,
            repo_root=Path("."),
            base_image=base_image,
            wheel_cache=wheel_cache,
            labels=test_labels,
        )
    assert "this-package-does-not-exist-xyz" in caught.value.log_tail
    assert len(caught.value.log_tail.splitlines()) <= 30


@pytest.mark.docker
def test_unmappable_conda_package_is_named(
    docker_client: docker.DockerClient, base_image: str, wheel_cache: Path
) -> None:
    env = EnvironmentSpec(
        name="cuda",
        version="1",
        conda_packages=("python=3.11", "numpy=1.26", "cudatoolkit=11.8", "mkl"),
        digest=digest_of("test_docker_images cuda environment"),
    )
    with pytest.raises(CondaMappingError) as caught:
        build_environment_image(
            docker_client,
            env,
            repo_root=Path("."),
            base_image=base_image,
            wheel_cache=wheel_cache,
        )
    assert caught.value.packages == ("cudatoolkit=11.8", "mkl")


@pytest.mark.docker
def test_build_context_is_built_as_written_with_mapped_from(
    docker_client: docker.DockerClient,
    run_once: Callable[..., bytes],
    base_image: str,
    wheel_cache: Path,
    tmp_path: Path,
    test_labels: dict[str, str],
) -> None:
    context = tmp_path / "environment"
    context.mkdir()
    (context / "hello.txt").write_text("from the build context\n")
    (context / "Dockerfile").write_text(f"FROM {AZURE_IMAGE}\nCOPY hello.txt /hello.txt\n")
    env = EnvironmentSpec(
        name="from-context",
        version="1",
        build_context="environment",
        digest=digest_of("test_docker_images build context v1"),
    )
    tag = build_environment_image(
        docker_client,
        env,
        repo_root=tmp_path,
        base_image=base_image,
        wheel_cache=wheel_cache,
        image_map={"mcr.microsoft.com/*": BASE_IMAGE},
        labels=test_labels,
    )
    output = run_once(tag, ["cat", "/hello.txt"])
    assert output == b"from the build context\n"
    image = docker_client.images.get(tag)
    assert image.attrs["Config"]["Labels"]["reconciler.kind"] == "environment"
    # The user's folder is left as it was: the mapped Dockerfile was sent from elsewhere.
    assert sorted(p.name for p in context.iterdir()) == ["Dockerfile", "hello.txt"]


@pytest.mark.docker
def test_custom_container_keeps_its_command_and_gets_its_model(
    docker_client: docker.DockerClient,
    run_once: Callable[..., bytes],
    base_image: str,
    wheel_cache: Path,
    tmp_path: Path,
    test_labels: dict[str, str],
) -> None:
    route = Route(port=8080, path="/")
    env = EnvironmentSpec(
        name="custom",
        version="1",
        image=base_image,
        inference_config=InferenceConfig(route, route, Route(port=8080, path="/score")),
        digest=digest_of("test_docker_images custom container v1"),
    )
    env_tag = build_environment_image(
        docker_client, env, repo_root=tmp_path, base_image=base_image, wheel_cache=wheel_cache
    )
    assert docker_client.images.get(env_tag).id == docker_client.images.get(base_image).id
    (tmp_path / "model.pkl").write_bytes(b"pickled")
    spec = DeploymentSpec(
        endpoint_name="my-endpoint",
        name="custom",
        environment=env,
        model=ModelSpec(name="m", version="4", path="model.pkl"),
        model_mount_path="/var/model-mount",
    )
    tag = build_deployment_image(
        docker_client, spec, env_image=env_tag, repo_root=tmp_path, labels=test_labels
    )
    config = docker_client.images.get(tag).attrs["Config"]
    assert config["Cmd"] == ["/bin/bash"]
    assert "AZUREML_MODEL_DIR=/var/model-mount" in config["Env"]
    output = run_once(tag, ["cat", "/var/model-mount/model.pkl"])
    assert output == b"pickled"
