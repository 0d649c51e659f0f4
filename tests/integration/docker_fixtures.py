"""Fixtures for tests against the machine's real Docker Engine (a pytest plugin).

Load it with `pytest_plugins = ("docker_fixtures",)` in a test module, and take everything
from fixtures (importing the module as well would keep pytest from rewriting its asserts).
Tests using these fixtures are skipped, with the reason, when no engine answers.
Everything the tests start carries the label reconciler.test=1; containers are removed
after each test, images stay cached (the base image is a one-off per machine, environment
images are reused by tag).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from reconciler.images import layers as images
from reconciler.images.baseimage import BASE_IMAGE, ensure_base_image

TEST_LABELS = {"reconciler.test": "1"}


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        pytest.skip(f"no Docker Engine answers (docker.from_env().ping() failed: {err})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> str:
    """The local Python base image, built once per machine (about a minute) if missing."""
    ensure_base_image(docker_client, BASE_IMAGE)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def wheel_cache() -> Path:
    """Wheels kept between test runs, so later runs resolve packages with no network."""
    default = Path.home() / ".cache" / "reconciler-tests" / "wheels"
    return Path(os.environ.get("RECONCILER_TEST_WHEEL_CACHE", default))


RunContainer = Callable[..., Any]


@pytest.fixture
def run_container(docker_client: docker.DockerClient) -> Iterator[RunContainer]:
    """Start a labelled, detached container; every one is removed after the test."""
    started: list[Any] = []

    def run(image: str, **options: Any) -> Any:
        options.setdefault("network_mode", "none")
        labels = {**TEST_LABELS, **options.pop("labels", {})}
        container = docker_client.containers.run(image, detach=True, labels=labels, **options)
        started.append(container)
        return container

    yield run
    for container in started:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


@pytest.fixture(scope="session")
def test_labels() -> dict[str, str]:
    """Labels for every image and container a test makes, to find leftovers by."""
    return dict(TEST_LABELS)


@pytest.fixture(scope="session")
def run_once(docker_client: docker.DockerClient) -> Callable[..., bytes]:
    """Run a command in a labelled container with no network and return its output.

    Reads the output after the container ended (see images.run_once for why).
    """

    def run(image: str, command: list[str]) -> bytes:
        code, output = images.run_once(docker_client, image, entrypoint=command, labels=TEST_LABELS)
        assert code == 0, output.decode(errors="replace")
        return output

    return run


class ContainerHttp:
    """HTTP requests made inside a container, on its own loopback."""

    def request(
        self, container: Any, method: str, url: str, body: Any = None, *, timeout: float = 5
    ) -> tuple[int, str]:
        return http_in_container(container, method, url, body, timeout=timeout)

    def wait_until_ready(self, container: Any, url: str, *, timeout: float = 60) -> None:
        wait_until_ready(container, url, timeout=timeout)


@pytest.fixture(scope="session")
def container_http() -> ContainerHttp:
    return ContainerHttp()


def http_in_container(
    container: Any, method: str, url: str, body: Any = None, *, timeout: float = 5
) -> tuple[int, str]:
    """A request made inside the container (its loopback) by its own python3.

    The containers have no network and publish no port; this reaches the server the way a
    readiness probe would, without traffic leaving the machine's loopback.
    """
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        "method, url, body, timeout = json.loads(sys.argv[1])\n"
        "data = None if body is None else json.dumps(body).encode()\n"
        "request = urllib.request.Request(url, data=data, method=method,\n"
        "    headers={'Content-Type': 'application/json'})\n"
        "try:\n"
        "    with urllib.request.urlopen(request, timeout=timeout) as response:\n"
        "        print(response.status); print(response.read().decode())\n"
        "except urllib.error.HTTPError as err:\n"
        "    print(err.code); print(err.read().decode())\n"
    )
    argument = json.dumps([method, url, body, timeout])
    exit_code, output = container.exec_run(["python3", "-c", script, argument])
    text = output.decode(errors="replace")
    if exit_code != 0:
        return 0, text
    status, _, rest = text.partition("\n")
    return int(status), rest.strip()


def wait_until_ready(container: Any, url: str, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        container.reload()
        if container.status != "running":
            break
        status, last = http_in_container(container, "GET", url, timeout=2)
        if status == 200:
            return
        time.sleep(0.5)
    logs = container.logs(tail=40).decode(errors="replace")
    raise AssertionError(f"{url} not ready (last answer: {last[-300:]!r}); logs:\n{logs}")
