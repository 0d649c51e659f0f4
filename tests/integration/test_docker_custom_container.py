"""Custom containers (BYOC) on the real Docker Engine, as Azure ML runs them.

The container is a small HTTP server built here from a build context (a Dockerfile at a
path of its own that COPYs files of its folder), on the local base image: nothing is
pulled. It listens where its `inference_config` says, on routes of its own: scoring and
readiness on port 8081, liveness on port 8082, each on its own path, so a check of the
wrong route is seen. Requests go through the endpoint's router with its keys.

What Azure does, and these tests pin:
- the router forwards `/score` to the scoring route's port and path;
- `environment_variables` reach the container; the model's files are at
  `model_mount_path` (a folder keeps its own name there) and `AZUREML_MODEL_DIR` says so;
- the readiness route decides traffic: an instance whose readiness route says 503 gets
  none (the router checks it with the deployment's readiness_probe settings), and a new
  version that never gets ready stops its rollout while the old one serves on;
- the liveness route decides restarts: failure_threshold failures in a row restart the
  container (the next pass), and a failing readiness route alone never does.
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import TYPE_CHECKING, Any

import docker.errors
import pytest

from reconciler.executor import Gate
from reconciler.images.baseimage import BASE_IMAGE
from reconciler.images.router import ROUTER_LEVEL
from reconciler.model.results import Outcome

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld, WorldFactory

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

SERVER = """\
import json, os, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A restarted container starts healthy again: the marker of a broken liveness goes.
if os.path.exists("/tmp/dead"):
    os.remove("/tmp/dead")
BANNER = open("/srv/app/banner.txt").read().strip()


def model_file(folder):
    try:
        with open(os.path.join(folder, "weights", "w.txt")) as handle:
            return handle.read().strip()
    except OSError as error:
        return f"missing: {error}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        if port == 8082 and self.path == "/healthz":
            self.answer(500 if os.path.exists("/tmp/dead") else 200, {"live": True})
        elif port == 8081 and self.path == "/v1/ready":
            status = int(os.environ.get("READY_STATUS", "200"))
            if os.path.exists("/tmp/unready"):
                status = 503
            self.answer(status, {"ready": status == 200})
        else:
            self.answer(404, {"path": self.path, "port": port})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.server_address[1] != 8081 or self.path != "/v1/predict":
            self.answer(404, {"path": self.path})
            return
        model_dir = os.environ.get("AZUREML_MODEL_DIR", "")
        self.answer(200, {
            "version": os.environ.get("VERSION"),
            "greeting": os.environ.get("GREETING"),
            "banner": BANNER,
            "path": self.path,
            "model_dir": model_dir,
            "model_from_env": model_file(model_dir),
            "model_at_mount": model_file("/srv/models"),
            "echo": json.loads(body or b"null"),
        })

    def answer(self, status, document):
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


live = ThreadingHTTPServer(("0.0.0.0", 8082), Handler)
threading.Thread(target=live.serve_forever, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", 8081), Handler).serve_forever()
"""

# Small thresholds, so that the checks decide within seconds (Azure's minimum is 1 each).
PROBES = {"initial_delay": 1, "period": 1, "timeout": 1, "failure_threshold": 2}


def byoc_repository(world: DockerWorld, *, variables: dict[str, str]) -> None:
    """Endpoint byoc-ep with deployment `byoc` at 100%: an inline environment built from
    environments/byoc (Dockerfile at docker/serve.Dockerfile), a model folder mounted at
    /srv/models."""
    world.repo.write(
        "environments/byoc/docker/serve.Dockerfile",
        f"FROM {BASE_IMAGE}\n"
        "COPY server.py banner.txt /srv/app/\n"
        'CMD ["python3", "/srv/app/server.py"]\n',
    )
    world.repo.write("environments/byoc/server.py", SERVER)
    world.repo.write("environments/byoc/banner.txt", "copied from the build context\n")
    world.repo.write("models/weights/w.txt", "0.25 0.75\n")
    world.repo.endpoint("byoc-ep", traffic={"byoc": 100})
    world.repo.write_yaml(
        "endpoints/byoc-ep/byoc.yml",
        {
            "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json",
            "name": "byoc",
            "endpoint_name": "byoc-ep",
            "model": {"name": "weights", "version": 3, "path": "../../models/weights"},
            "model_mount_path": "/srv/models",
            "environment_variables": variables,
            "environment": {
                "build": {
                    "path": "../../environments/byoc",
                    "dockerfile_path": "docker/serve.Dockerfile",
                },
                "inference_config": {
                    "liveness_route": {"port": 8082, "path": "/healthz"},
                    "readiness_route": {"port": 8081, "path": "/v1/ready"},
                    "scoring_route": {"port": 8081, "path": "/v1/predict"},
                },
            },
            "instance_type": "Standard_DS2_v2",
            "instance_count": 1,
            "readiness_probe": PROBES,
            "liveness_probe": PROBES,
        },
    )


def the_instance(world: DockerWorld) -> Any:
    (container,) = [c for c in world.containers("byoc-ep", "byoc") if c.status == "running"]
    return container


def started_at(container: Any) -> str:
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


def test_a_custom_container_gets_its_variables_its_model_mount_and_requests_on_its_routes(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    byoc_repository(world, variables={"GREETING": "hello from git", "VERSION": "1"})
    world.repo.commit("byoc")
    result = world.apply()
    assert result.status["byoc-ep"]["deployments"]["byoc"]["ready_instances"] == 1

    answer = world.score("byoc-ep")
    assert (answer.status, answer.deployment) == (200, "byoc"), answer
    assert answer.body == {
        "version": "1",
        "greeting": "hello from git",
        "banner": "copied from the build context",  # COPY from the build context
        "path": "/v1/predict",  # the scoring route's path, on its port
        "model_dir": "/srv/models",
        "model_from_env": "0.25 0.75",
        "model_at_mount": "0.25 0.75",  # the model folder keeps its name under the mount
        "echo": {"x": 1},
    }
    assert world.score("byoc-ep", key=None).status == 401
    assert world.score("byoc-ep", key=world.key("byoc-ep", "secondary")).status == 200
    assert world.apply().plan.steps == ()

    # The readiness route says 503: the router stops sending requests there; the
    # container is not restarted for it (its liveness route is fine).
    container = the_instance(world)
    first_start = started_at(container)
    container.exec_run(["touch", "/tmp/unready"])
    world.wait_for(lambda: world.status("byoc-ep") == 503, what="unready instance out", timeout=20)
    answer = world.score("byoc-ep")
    assert answer.body == {"message": "no instance of the deployment is ready"}
    # Passes for a few seconds: the deployment waits for its instance to be ready again,
    # and nothing restarts it.
    unready = world.apply(ok=False, gate=Gate(timeout_s=3.0, poll_s=0.5))
    assert unready.status["byoc-ep"]["deployments"]["byoc"]["ready_instances"] == 0
    assert not [r for r in unready.results if r.outcome == Outcome.FAILED]
    assert started_at(container) == first_start
    container.exec_run(["rm", "/tmp/unready"])
    world.wait_for(lambda: world.status("byoc-ep") == 200, what="ready instance back", timeout=20)

    # The liveness route fails: after failure_threshold checks in a row (and
    # initial_delay + period x failure_threshold since it started), the next pass
    # restarts the container, which serves again.
    container.exec_run(["touch", "/tmp/dead"])
    world.wait_for(
        lambda: (
            world.target._router_health("byoc-ep")
            .get(container.labels["reconciler.address"], {})
            .get("liveness_failures", 0)
            >= 2
        ),
        what="liveness failures counted",
        timeout=20,
    )
    assert world.status("byoc-ep") == 200  # liveness takes no traffic away
    world.apply()
    assert started_at(container) != first_start, "not restarted for its liveness route"
    world.wait_for(lambda: world.status("byoc-ep") == 200, what="restarted instance serves")
    assert the_instance(world).id == container.id  # restarted in place, not replaced


def test_a_new_version_whose_readiness_route_says_503_gets_no_traffic_and_stops_its_rollout(
    docker_worlds: WorldFactory,
) -> None:
    # The wait for readiness is bounded by ready_timeout_s (else by the probe settings).
    world = docker_worlds(ready_timeout_s=8.0)
    byoc_repository(world, variables={"GREETING": "v1", "VERSION": "1"})
    world.repo.commit("byoc v1")
    world.apply()
    (old,) = world.containers("byoc-ep", "byoc")
    assert world.score("byoc-ep").version == "1"

    # Version 2 starts and stays alive, but its readiness route says 503.
    byoc_repository(world, variables={"GREETING": "v2", "VERSION": "2", "READY_STATUS": "503"})
    world.repo.commit("byoc v2, never ready")
    started = time.monotonic()
    result = world.apply(ok=False)
    steps = result.plan.steps
    failed = [(steps[r.index], r) for r in result.results if r.outcome == Outcome.FAILED]
    assert [(str(step.action), step.deployment) for step, _ in failed] == [
        ("update_deployment", "byoc")
    ]
    assert "not ready" in failed[0][1].message, failed[0][1]
    assert time.monotonic() - started < 60
    # The old version serves every request; the new one was never routed.
    assert {world.score("byoc-ep").version for _ in range(10)} == {"1"}
    routed = world.target._routed_instances("byoc-ep", "byoc")
    assert routed == {old.labels["reconciler.address"]}
    new = [c for c in world.containers("byoc-ep", "byoc") if c.id != old.id]
    assert len(new) == 1
    new[0].reload()
    # Alive all along (liveness fine): never restarted, stopped only when the rollout gave up.
    assert new[0].attrs["RestartCount"] == 0
    assert "not ready" in (result.status["byoc-ep"]["deployments"]["byoc"]["last_error"] or "")


def test_a_router_too_old_to_check_custom_containers_is_replaced_by_a_visible_repair(
    docker_world: DockerWorld,
) -> None:
    """Upgrading: a router image from before the checks (no level label: level 1) would
    refuse a config with probes. The deployment's step says so, and the next pass plans a
    repair_endpoint that replaces the router, keys and port kept."""
    world = docker_world
    current = world.target._router_image_tag(lambda message: None)
    old_image, _ = world.client.images.build(
        fileobj=io.BytesIO(f"FROM {current}\nLABEL reconciler.router-level=1\n".encode()),
        labels={"reconciler.target": world.options.name},
        rm=True,
    )
    try:
        # The router this target makes is of the old image (what an earlier reconciler
        # version started).
        world.target._router_image = str(old_image.id)
        byoc_repository(world, variables={"GREETING": "hi", "VERSION": "1"})
        world.repo.commit("byoc")
        # One pass (the target kept on the old image would fail its repair again and again).
        first = world.apply(ok=False, gate=Gate(timeout_s=0.0))
        outcomes = {(str(first.plan.steps[r.index].action), r.error_code) for r in first.results}
        assert ("create_deployment", "RouterOutdated") in outcomes
        keys = (world.key("byoc-ep"), world.key("byoc-ep", "secondary"))

        world.target = world.new_target()  # the upgraded reconciler
        plan = world.plan()
        repair = [s for s in plan.steps if s.action == "repair_endpoint"]
        assert repair and "predates the readiness and liveness checks" in repair[0].reason
        world.apply()
        (router,) = [
            c
            for c in world.client.containers.list(
                filters={
                    "label": [
                        f"reconciler.target={world.options.name}",
                        "reconciler.role=router",
                    ]
                }
            )
        ]
        assert router.labels["reconciler.router-level"] == str(ROUTER_LEVEL)
        assert (world.key("byoc-ep"), world.key("byoc-ep", "secondary")) == keys
        assert world.score("byoc-ep").version == "1"
        assert world.apply().plan.steps == ()
    finally:
        world.cleanup()
        with contextlib.suppress(docker.errors.APIError):
            world.client.images.remove(old_image.id, force=True)
