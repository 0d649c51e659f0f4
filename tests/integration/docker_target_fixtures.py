"""Fixtures for the Docker target against the machine's real Docker Engine (a pytest plugin).

Load it with `pytest_plugins = ("docker_target_fixtures",)` and take everything from the
`docker_world` fixture. Each test gets a target of its own (a unique name, a state folder
in its tmp_path, router ports from a block picked for this session), so tests never see
each other's endpoints; its containers and networks, found by the `reconciler.target`
label, are removed when the test ends, failed or not. Images stay: environment and thin
images are tagged by content and reused by the next run.

Traffic goes to 127.0.0.1 only: requests through the router's published port, and checks of
single instances through `docker exec` inside them, never to a container's own address.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import docker_state
import pytest
from repo_builder import RepoBuilder

from reconciler.engine import PassResult, converge, plan_pass
from reconciler.executor import Gate
from reconciler.gitsource import GitSource
from reconciler.images.baseimage import BASE_IMAGE, ensure_base_image
from reconciler.model.plan import Plan
from reconciler.model.results import Outcome
from reconciler.targets.docker.options import DockerOptions
from reconciler.targets.docker.target import DockerTarget

# One environment for every test: same conda file, same content digest, so its image is
# built once (the first run on a machine) and found by tag afterwards. No packages beyond
# the inference server: the scoring scripts need none, and the image stays small.
ENVIRONMENT_PACKAGES: tuple[str, ...] = ()
# Generous: the machine is shared, and a first run builds the environment image.
GATE = Gate(timeout_s=300.0, poll_s=0.5)
SESSION = f"test-{secrets.token_hex(3)}"
_counter = itertools.count(1)

SCORE_PY = """\
import json
import os


def init():
    global model_dir
    model_dir = os.environ.get("AZUREML_MODEL_DIR", "")


def run(raw_data):
    return {{"version": "{version}", "echo": json.loads(raw_data)}}
"""

FAILING_SCORE_PY = """\
def init():
    raise RuntimeError("{message}")


def run(raw_data):
    return {{}}
"""


@dataclass
class Answer:
    """One answer of the scoring URI."""

    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def deployment(self) -> str | None:
        return self.headers.get("azureml-model-deployment")

    @property
    def version(self) -> str | None:
        return self.body.get("version") if isinstance(self.body, dict) else None


def post(
    url: str,
    *,
    key: str | None,
    body: Any = None,
    deployment: str | None = None,
    timeout: float = 30,
) -> Answer:
    """POST JSON to a URL on 127.0.0.1 (one connection per request)."""
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", f"tests talk to the loopback only, not {url}"
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if deployment is not None:
        headers["azureml-model-deployment"] = deployment
    connection = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.request("POST", parts.path, body=json.dumps(body or {"x": 1}), headers=headers)
        response = connection.getresponse()
        raw = response.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Answer(response.status, parsed, {k.lower(): v for k, v in response.getheaders()})
    finally:
        connection.close()


class Load:
    """Requests sent one after another from a thread while a pass runs; every answer kept.

    A failure is any answer but 200, or no answer at all. Paced (PACE_S between requests)
    so that on a small machine the load does not starve the instances being started.
    """

    PACE_S = 0.01

    def __init__(self, send: Callable[[], Answer]) -> None:
        self._send = send
        self._stop = threading.Event()
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(self._send())
            except OSError as err:
                self.errors.append(repr(err))
            self._stop.wait(self.PACE_S)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def failures(self) -> list[str]:
        bad = [f"{a.status}: {a.body}" for a in self.answers if a.status != 200]
        return bad + self.errors


def identity(repo: RepoBuilder) -> str:
    """The repository's identity as the command line gives it to the target."""
    return GitSource(repo.root).identity()


class CountingAPI(docker.APIClient):  # type: ignore[misc]
    """The Docker API client, counting the container listings, inspections and archive
    reads it sends (the engine is the real one: the calls go through)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: Counter[str] = Counter()

    def containers(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["containers"] += 1
        return super().containers(*args, **kwargs)

    def inspect_container(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["inspect_container"] += 1
        return super().inspect_container(*args, **kwargs)

    def get_archive(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["get_archive"] += 1
        return super().get_archive(*args, **kwargs)


def counting_target(world: DockerWorld) -> tuple[DockerTarget, CountingAPI]:
    """A target of the world's whose Docker API calls are counted."""
    client = docker.from_env(timeout=120)
    api = CountingAPI(**docker.utils.kwargs_from_env(), timeout=120)
    client.api = api
    target = DockerTarget(
        world.options, repo_root=world.repo.root, client=client, repository=identity(world.repo)
    )
    return target, api


@dataclass
class DockerWorld:
    """A git repository, a Docker target of its own, and ways to look at both."""

    repo: RepoBuilder
    client: docker.DockerClient
    options: DockerOptions
    target: DockerTarget
    passes: list[PassResult] = field(default_factory=list)
    runs: list[list[PassResult]] = field(default_factory=list)  # the passes of each apply

    # --- the repository ------------------------------------------------------------------

    def basics(self) -> None:
        """A model and the shared environment, for deployments to use."""
        self.repo.model()
        self.repo.environment(packages=ENVIRONMENT_PACKAGES)

    def code(self, folder: str, version: str) -> None:
        self.repo.write(f"{folder}/score.py", SCORE_PY.format(version=version))

    def failing_code(self, folder: str, message: str) -> None:
        self.repo.write(f"{folder}/score.py", FAILING_SCORE_PY.format(message=message))

    # --- passes ----------------------------------------------------------------------------

    def new_target(self) -> DockerTarget:
        """A target with no memory of this one: what a restarted reconciler would make."""
        return DockerTarget(self.options, repo_root=self.repo.root, repository=identity(self.repo))

    def apply(
        self,
        *,
        prune: bool = False,
        target: DockerTarget | None = None,
        ok: bool = True,
        gate: Gate = GATE,
    ) -> PassResult:
        """Passes of HEAD until nothing is in progress, as `reconcile` runs them (the first
        pass's plan holds every step; the last pass's result is returned); with ok, the
        last pass has no failed step and nothing left in progress."""
        source = GitSource(self.repo.root)
        commit = source.resolve("HEAD")
        passes: list[PassResult] = []
        result = converge(
            source.tree(commit),
            target or self.target,
            prune=prune,
            revision=commit,
            gate=gate,
            on_pass=passes.append,
        )
        self.passes.extend(passes)
        self.runs.append(passes)
        if ok:
            assert not result.plan.errors, result.plan.errors
            failed = [r for r in result.results if r.outcome != Outcome.SUCCEEDED]
            assert not failed, failed
            assert not result.in_progress, "still in progress after the gate's time"
        return result

    def plan(self) -> Plan:
        """The plan of HEAD against what runs now, without applying it."""
        source = GitSource(self.repo.root)
        commit = source.resolve("HEAD")
        plan, _ = plan_pass(source.tree(commit), self.target.observe(), prune=False)
        return plan

    # --- the data plane ----------------------------------------------------------------------

    def scoring_uri(self, endpoint: str) -> str:
        """The scoring URI, from the endpoint's port in the state folder (cheap enough to
        ask before every request; tests compare it with what observe reports)."""
        port = self.target.endpoint_credentials(endpoint).port
        return f"http://127.0.0.1:{port}/score"

    def key(self, endpoint: str, which: str = "primary") -> str:
        creds = self.target.endpoint_credentials(endpoint)
        return creds.primary_key if which == "primary" else creds.secondary_key

    def score(
        self,
        endpoint: str,
        *,
        key: str | bool | None = True,
        deployment: str | None = None,
    ) -> Answer:
        """One request through the router; key True means the primary key, None none."""
        secret = self.key(endpoint) if key is True else key if isinstance(key, str) else None
        return post(self.scoring_uri(endpoint), key=secret, deployment=deployment)

    def status(self, endpoint: str, *, key: str | None = None) -> int:
        """The status of one request (the primary key unless `key`); 0 when the
        connection itself failed (a router down, a port proxy dead)."""
        try:
            return self.score(endpoint, key=key or True).status
        except OSError:
            return 0

    def serve(self, endpoint: str, *, version: str = "1") -> None:
        """The endpoint with deployment blue (code in src) at 100%, applied and answering
        `version`."""
        self.basics()
        self.code("src", version)
        self.repo.endpoint(endpoint, traffic={"blue": 100})
        self.repo.deployment(endpoint, "blue", code="../../src")
        self.repo.commit(f"{endpoint} blue")
        self.apply()
        answer = self.score(endpoint)
        assert (answer.status, answer.version) == (200, version), answer

    def load(self, endpoint: str) -> Load:
        url, key = self.scoring_uri(endpoint), self.key(endpoint)
        return Load(lambda: post(url, key=key))

    # --- containers --------------------------------------------------------------------------

    def containers(self, endpoint: str, deployment: str | None = None) -> list[Any]:
        labels = [f"reconciler.target={self.options.name}", f"reconciler.endpoint={endpoint}"]
        if deployment is None:
            labels.append("reconciler.role=instance")
        else:
            labels.append(f"reconciler.deployment={deployment}")
        found = self.client.containers.list(
            all=True, filters={"label": labels}, ignore_removed=True
        )
        return sorted(found, key=lambda c: int(c.labels.get("reconciler.index", "0")))

    def answers_inside(self, container: Any) -> bool:
        """Whether the inference server in the container answers GET / (docker exec)."""
        script = (
            "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5001/', timeout=2)"
        )
        try:
            code, _ = container.exec_run(["/opt/venv/bin/python", "-c", script])
        except docker.errors.APIError:
            return False
        return bool(code == 0)

    def score_inside(self, container: Any) -> Any:
        """POST /score on the instance's own loopback (docker exec), its parsed answer."""
        script = (
            "import json, urllib.request\n"
            "request = urllib.request.Request('http://127.0.0.1:5001/score', data=b'{}',\n"
            "    headers={'Content-Type': 'application/json'}, method='POST')\n"
            "print(urllib.request.urlopen(request, timeout=10).read().decode())\n"
        )
        code, output = container.exec_run(["/opt/venv/bin/python", "-c", script])
        text = output.decode(errors="replace")
        assert code == 0, f"{container.name} did not answer: {text[-500:]}"
        return json.loads(text.strip().splitlines()[-1])

    def wait_for(self, predicate: Callable[[], bool], *, what: str, timeout: float = 60) -> None:
        """Poll until predicate() holds; fail naming `what` after timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:.0f} s: {what}")
            time.sleep(0.2)

    def cleanup(self) -> None:
        """Remove every container, network and volume of this target (labels, not names)."""
        with contextlib.suppress(docker.errors.DockerException):
            docker_state.remove_target(self.client, self.options.name)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    """The machine's Docker Engine with the local base image; skips when none answers."""
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as err:
        pytest.skip(f"no Docker Engine answers (docker.from_env().ping() failed: {err})")
    ensure_base_image(client, BASE_IMAGE)
    yield client
    client.close()


@pytest.fixture(scope="session")
def router_ports() -> tuple[int, int]:
    """A block of 100 ports in 19000-19999 for this session's routers.

    Picked at random so a second session on the machine most likely takes another block;
    the target also skips ports something already listens on.
    """
    low = 19000 + 100 * secrets.randbelow(10)
    return low, low + 99


WorldFactory = Callable[..., DockerWorld]


@pytest.fixture
def docker_worlds(
    tmp_path: Path,
    docker_engine: docker.DockerClient,
    router_ports: tuple[int, int],
) -> Iterator[WorldFactory]:
    """make(folder="repo", **options): a world with a repository in tmp_path/folder and a
    target of its own (options override DockerOptions' test settings). Everything the
    worlds made on the engine is removed when the test ends, failed or not."""
    made: list[DockerWorld] = []

    def make(folder: str = "repo", **overrides: Any) -> DockerWorld:
        settings: dict[str, Any] = {
            "name": f"{SESSION}-{next(_counter)}",
            "state_dir": tmp_path / f"state-{folder}",
            "router_port_range": router_ports,
            "drain_s": 0.3,
            "ready_timeout_s": 180.0,
        }
        settings.update(overrides)
        options = DockerOptions(**settings)
        repo = RepoBuilder(tmp_path / folder)
        world = DockerWorld(
            repo=repo,
            client=docker_engine,
            options=options,
            target=DockerTarget(options, repo_root=repo.root, repository=identity(repo)),
        )
        made.append(world)
        return world

    try:
        yield make
    finally:
        for world in made:
            world.cleanup()


@pytest.fixture
def docker_world(docker_worlds: WorldFactory) -> DockerWorld:
    """One world: the usual case."""
    return docker_worlds()
