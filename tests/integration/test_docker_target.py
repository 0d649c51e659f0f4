"""The Docker target on the machine's real Docker Engine, driven as `reconcile` drives it:
trees of real git commits through `engine.run_pass`, requests through the router on
127.0.0.1 with the endpoint's keys.

Each test has a target of its own (see docker_target_fixtures). The environment image is
shared by every test and built once per machine; after that a test costs what its
containers take to start. Checks of single instances run inside them (docker exec).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.executor import Gate
from reconciler.gitsource import GitSource
from reconciler.images.baseimage import BASE_IMAGE
from reconciler.model.plan import Action
from reconciler.model.results import Outcome
from reconciler.targets.docker.access import endpoint_access
from reconciler.targets.docker.listing import epoch

if TYPE_CHECKING:
    # Only for annotations: the module is loaded as a plugin, so that pytest rewrites
    # its asserts; importing it here first would keep it from doing so.
    from docker_target_fixtures import DockerWorld, WorldFactory

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]


# `reconcile invoke` in a new process: its exit code, then the HTTP client libraries of the
# Docker SDK it loaded (none: it reads the engine's socket with the standard library).
_INVOKE_AND_LIST_SDKS = """
import sys
from click.testing import CliRunner
from reconciler.cli import main
endpoint, repo, request = sys.argv[1:]
done = CliRunner().invoke(main, ["invoke", endpoint, "--repo", repo, "--request-file", request])
print(done.output)
print(done.exit_code, sorted({m.split(".")[0] for m in sys.modules} & {"docker", "requests"}))
"""


def actions(world: DockerWorld) -> list[tuple[str, str | None]]:
    """(action, deployment) of the steps the last apply planned first, in plan order."""
    return [(str(s.action), s.deployment) for s in world.runs[-1][0].plan.steps]


def running(world: DockerWorld, endpoint: str, deployment: str) -> list[str]:
    """Names of the deployment's containers that run."""
    return [c.name for c in world.containers(endpoint, deployment) if c.status == "running"]


def one_deployment(world: DockerWorld, endpoint: str, *, count: int = 1) -> None:
    """Endpoint `endpoint` with deployment blue (code in src, version 1) at 100%."""
    world.basics()
    world.code("src", "1")
    world.repo.endpoint(endpoint, traffic={"blue": 100})
    world.repo.deployment(endpoint, "blue", code="../../src", instance_count=count)


def test_create_from_empty_then_keys_cli_and_a_restarted_reconciler(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    one_deployment(world, "keys-ep")
    world.repo.commit("blue")

    result = world.apply()
    assert actions(world) == [
        (Action.CREATE_ENDPOINT, None),
        (Action.CREATE_DEPLOYMENT, "blue"),
        (Action.SET_TRAFFIC, None),
    ]
    doc = result.status["keys-ep"]
    assert doc["provisioning_state"] == "Succeeded"
    assert doc["scoring_uri"] == world.scoring_uri("keys-ep")
    assert doc["traffic"] == {"blue": 100}
    assert doc["deployments"]["blue"]["provisioning_state"] == "Succeeded"
    assert doc["deployments"]["blue"]["ready_instances"] == 1

    answer = world.score("keys-ep")
    assert (answer.status, answer.version, answer.deployment) == (200, "1", "blue"), answer

    # Either key works; none, or any other, gets 401.
    assert world.score("keys-ep", key=world.key("keys-ep", "secondary")).status == 200
    assert world.score("keys-ep", key=None).status == 401
    assert world.score("keys-ep", key="not-a-key-of-this-endpoint").status == 401

    # What runs matches the commit: the next pass plans nothing...
    assert world.apply().plan.steps == ()
    # ...and so does a reconciler started afresh, which sees the same live state.
    fresh = world.new_target()
    assert fresh.observe() == world.target.observe()
    assert world.apply(target=fresh).plan.steps == ()

    # The command line, with this target named in reconciler.yaml.
    name = world.options.name
    world.repo.write(
        "reconciler.yaml",
        yaml.safe_dump(
            {
                "targets": {
                    name: {
                        "type": "docker",
                        "state_dir": str(world.options.state_dir),
                        "router_port_range": list(world.options.router_port_range),
                        "drain_s": world.options.drain_s,
                    }
                },
                "default_target": name,
            }
        ),
    )
    world.repo.write("sample-request.json", json.dumps({"data": [[1, 2]]}))
    world.repo.commit("target settings")
    runner = CliRunner()
    repo = ["--repo", str(world.repo.root)]

    planned = runner.invoke(main, [*repo, "--dry-run"])
    assert planned.exit_code == 0, planned.output  # nothing to change

    shown = runner.invoke(main, ["credentials", "keys-ep", *repo])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == {
        "primaryKey": world.key("keys-ep"),
        "secondaryKey": world.key("keys-ep", "secondary"),
    }

    request = str(world.repo.root / "sample-request.json")
    invoked = runner.invoke(main, ["invoke", "keys-ep", *repo, "--request-file", request])
    assert invoked.exit_code == 0, invoked.output
    assert json.loads(invoked.stdout) == {"version": "1", "echo": {"data": [[1, 2]]}}
    assert "deployment: blue\n" in invoked.stderr  # a line of its own
    # A deployment that does not exist is named, with the ones that do.
    mistyped = runner.invoke(
        main, ["invoke", "keys-ep", *repo, "--request-file", request, "--deployment", "bleu"]
    )
    assert mistyped.exit_code == 1
    assert "endpoint keys-ep has no deployment named 'bleu'" in mistyped.stderr
    assert "its deployments: blue" in mistyped.stderr
    # Invoke reads what it needs from the engine's socket (targets.docker.access) the same
    # as the target observes it, and a new process loads no Docker SDK for it (issue 15).
    quick = endpoint_access(name, "keys-ep", repository=GitSource(world.repo.root).identity())
    assert quick is not None
    assert (quick.scoring_uri, quick.auth_mode, quick.deployments) == (
        world.scoring_uri("keys-ep"),
        "key",
        ("blue",),
    )
    assert quick.credentials.primary_key == world.key("keys-ep")
    assert world.key("keys-ep") not in repr(quick)
    # Another repository's endpoint, or none: the whole target answers instead.
    assert endpoint_access(name, "keys-ep", repository="github.com/other/repo") is None
    assert endpoint_access(name, "no-such-ep", repository=None) is None
    fresh_process = subprocess.run(
        [sys.executable, "-c", _INVOKE_AND_LIST_SDKS, "keys-ep", str(world.repo.root), request],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert fresh_process.stdout.splitlines()[-1] == "0 []", fresh_process.stdout

    # A new primary key: the old one is refused at once, the secondary still works.
    old_primary, secondary = world.key("keys-ep"), world.key("keys-ep", "secondary")
    renewed = runner.invoke(main, ["regenerate-key", "keys-ep", "--key", "primary", *repo])
    assert renewed.exit_code == 0, renewed.output
    new_primary = world.key("keys-ep")
    assert new_primary not in (old_primary, secondary)
    assert world.score("keys-ep", key=old_primary).status == 401
    assert world.score("keys-ep", key=secondary).status == 200
    assert world.score("keys-ep", key=new_primary).status == 200
    shown = runner.invoke(main, ["credentials", "keys-ep", *repo])
    assert json.loads(shown.stdout)["primaryKey"] == new_primary
    invoked = runner.invoke(main, ["invoke", "keys-ep", *repo, "--request-file", request])
    assert invoked.exit_code == 0, invoked.output

    # The endpoint's files removed, and pruning on: traffic leaves, then the deployment,
    # then the endpoint goes with its router, network and keys.
    world.repo.remove("endpoints/keys-ep/endpoint.yml")
    world.repo.remove("endpoints/keys-ep/blue.yml")
    world.repo.commit("no endpoint")
    result = world.apply(prune=True)
    assert actions(world) == [
        (Action.SET_TRAFFIC, None),
        (Action.DELETE_DEPLOYMENT, "blue"),
        (Action.DELETE_ENDPOINT, None),
    ]
    label = f"reconciler.target={world.options.name}"
    assert (
        world.client.containers.list(all=True, filters={"label": label}, ignore_removed=True) == []
    )
    assert world.client.networks.list(filters={"label": label}) == []
    assert world.client.volumes.list(filters={"label": label}) == []
    assert world.target.observe().endpoints == ()


def test_blue_green_split_switch_and_delete_under_load(docker_world: DockerWorld) -> None:
    world = docker_world
    world.basics()
    world.code("src-blue", "blue")
    world.code("src-green", "green")
    world.repo.endpoint("split-ep", traffic={"blue": 70, "green": 30})
    world.repo.deployment("split-ep", "blue", code="../../src-blue")
    world.repo.deployment("split-ep", "green", code="../../src-green")
    world.repo.commit("blue 70, green 30")
    world.apply()

    answers = [world.score("split-ep") for _ in range(200)]
    assert all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:3]
    # The header names the deployment that answered, and its code says the same.
    assert all(a.deployment == a.version for a in answers)
    counts = Counter(a.deployment for a in answers)
    # 70% of 200 is 140, standard deviation 6.5: bounds of about 4.5 deviations.
    assert 110 <= counts["blue"] <= 170, counts
    assert counts["blue"] + counts["green"] == 200
    # The header sends a request straight to the deployment it names.
    pinned = [world.score("split-ep", deployment="green") for _ in range(10)]
    assert {(a.status, a.deployment) for a in pinned} == {(200, "green")}

    # All traffic to green while requests keep coming: none fails.
    world.repo.endpoint("split-ep", traffic={"blue": 0, "green": 100})
    world.repo.commit("green 100")
    with world.load("split-ep") as load:
        # Requests one after another from before the pass to after it (the pass itself
        # can be shorter than a few requests now that it reads no state through Docker).
        world.wait_for(lambda: len(load.answers) >= 3, what="the load under way")
        world.apply()
        after = len(load.answers)
        world.wait_for(lambda: len(load.answers) >= after + 3, what="the load after the pass")
    assert actions(world) == [(Action.SET_TRAFFIC, None)]
    assert load.failures == []
    assert len(load.answers) >= 6, "the load ran during the pass"
    assert {world.score("split-ep").deployment for _ in range(20)} == {"green"}

    # Blue, without traffic, scaled to zero: no container left, yet still a deployment
    # whose state matches its file (the next pass plans nothing).
    world.repo.deployment("split-ep", "blue", code="../../src-blue", instance_count=0)
    world.repo.commit("blue at zero")
    result = world.apply()
    assert actions(world) == [(Action.SCALE_DEPLOYMENT, "blue")]
    assert world.containers("split-ep", "blue") == []
    blue = result.status["split-ep"]["deployments"]["blue"]
    assert (blue["provisioning_state"], blue["instance_count"]) == ("Succeeded", 0)
    assert world.apply().plan.steps == ()

    # Back to blue, and green deleted, in one commit: blue's capacity comes first, then
    # traffic leaves green before its containers go, and no request fails.
    world.repo.deployment("split-ep", "blue", code="../../src-blue", instance_count=1)
    world.repo.endpoint("split-ep", traffic={"blue": 100})
    world.repo.remove("endpoints/split-ep/green.yml")
    world.repo.commit("blue 100, no green")
    with world.load("split-ep") as load:
        result = world.apply()
    assert actions(world) == [
        (Action.SCALE_DEPLOYMENT, "blue"),
        (Action.SET_TRAFFIC, None),
        (Action.DELETE_DEPLOYMENT, "green"),
    ]
    assert load.failures == []
    assert world.containers("split-ep", "green") == []
    assert set(result.status["split-ep"]["deployments"]) == {"blue"}
    assert {world.score("split-ep").deployment for _ in range(20)} == {"blue"}
    assert world.apply().plan.steps == ()


def test_scale_code_only_update_and_a_container_removed_by_hand(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    one_deployment(world, "scale-ep")
    world.repo.commit("one instance")
    world.apply()
    first = world.containers("scale-ep", "blue")[0]
    env_image = first.image.labels["reconciler.environment.image"]
    thin_image = first.image.id

    # 1 -> 3: all three run, are routed and answer.
    world.repo.deployment("scale-ep", "blue", code="../../src", instance_count=3)
    world.repo.commit("three instances")
    with world.load("scale-ep") as load:
        result = world.apply()
    assert actions(world) == [(Action.SCALE_DEPLOYMENT, "blue")]
    assert load.failures == []
    containers = world.containers("scale-ep", "blue")
    assert len(running(world, "scale-ep", "blue")) == 3
    assert [world.score_inside(c)["version"] for c in containers] == ["1", "1", "1"]
    assert result.status["scale-ep"]["deployments"]["blue"]["ready_instances"] == 3

    # Code only: a rolling update under load; the environment image is the same, only
    # the thin layer is new, and every instance answers with the new code.
    world.code("src", "2")
    world.repo.commit("code v2")
    with world.load("scale-ep") as load:
        world.apply()
    assert actions(world) == [(Action.UPDATE_DEPLOYMENT, "blue")]
    assert load.failures == []
    containers = world.containers("scale-ep", "blue")
    assert len(containers) == 3
    assert {c.name for c in containers}.isdisjoint({first.name})
    assert [world.score_inside(c)["version"] for c in containers] == ["2", "2", "2"]
    assert {c.image.labels["reconciler.environment.image"] for c in containers} == {env_image}
    assert {c.image.id for c in containers} != {thin_image}
    assert {world.score("scale-ep").version for _ in range(10)} == {"2"}

    # 3 -> 1 under load.
    world.repo.deployment("scale-ep", "blue", code="../../src", instance_count=1)
    world.repo.commit("one instance again")
    with world.load("scale-ep") as load:
        world.apply()
    assert actions(world) == [(Action.SCALE_DEPLOYMENT, "blue")]
    assert load.failures == []
    assert len(world.containers("scale-ep", "blue")) == 1

    # More instances and new code in one commit: the scaling comes first, with instances
    # of what runs (version 2), then the rolling update replaces them all.
    world.code("src", "3")
    world.repo.deployment("scale-ep", "blue", code="../../src", instance_count=2)
    world.repo.commit("two instances of v3")
    with world.load("scale-ep") as load:
        world.apply()
    assert actions(world) == [
        (Action.SCALE_DEPLOYMENT, "blue"),
        (Action.UPDATE_DEPLOYMENT, "blue"),
    ]
    assert load.failures == []
    assert {v for v in (a.version for a in load.answers)} <= {"2", "3"}
    containers = world.containers("scale-ep", "blue")
    assert [world.score_inside(c)["version"] for c in containers] == ["3", "3"]
    assert world.apply().plan.steps == ()

    # A container removed by hand is back after the next pass: the deployment keeps the
    # count it was asked for, and the plan repairs what falls short of it.
    containers[0].remove(force=True)
    [repair] = world.plan().steps
    assert (repair.action, repair.deployment) == (Action.REPAIR_DEPLOYMENT, "blue")
    assert "1 of 2 instance(s) missing" in repair.reason
    result = world.apply()
    assert actions(world) == [(Action.REPAIR_DEPLOYMENT, "blue")]
    containers = world.containers("scale-ep", "blue")
    assert len(running(world, "scale-ep", "blue")) == 2
    assert [world.score_inside(c)["version"] for c in containers] == ["3", "3"]
    assert result.status["scale-ep"]["deployments"]["blue"]["ready_instances"] == 2
    assert {world.score("scale-ep").status for _ in range(10)} == {200}
    assert world.apply().plan.steps == ()


def test_init_failure_keeps_the_old_version_serving(docker_world: DockerWorld) -> None:
    world = docker_world
    one_deployment(world, "fail-ep")
    world.repo.commit("blue v1")
    world.apply()

    # New code whose init() raises: the rolling update stops at its first new instance,
    # the old one keeps serving, and status says why, with the end of the log.
    world.failing_code("src", "the model file is corrupt")
    world.repo.commit("broken init")
    with world.load("fail-ep") as load:
        result = world.apply(ok=False)
    assert load.failures == []
    [failed] = [r for r in result.results if r.outcome == Outcome.FAILED]
    step = result.plan.steps[failed.index]
    assert (step.action, step.deployment) == (Action.UPDATE_DEPLOYMENT, "blue")
    assert failed.error_code == "DeploymentNotReady"
    assert "the model file is corrupt" in failed.log_tail
    blue = result.status["fail-ep"]["deployments"]["blue"]
    assert blue["provisioning_state"] == "Failed"
    assert "DeploymentNotReady" in blue["last_error"]
    assert "the model file is corrupt" in blue["last_error"]
    assert {world.score("fail-ep").version for _ in range(5)} == {"1"}
    # The failed instance is stopped, not crash-looping, and its log can be read.
    assert len(running(world, "fail-ep", "blue")) == 1
    assert "the model file is corrupt" in world.target.logs("fail-ep", "blue")

    # A new deployment that cannot start gets no traffic: its creation starts it, and it
    # is found failed, with its log; blue's broken version is still declared, so its
    # update fails again (at once: a version that failed to start is not retried), and
    # the traffic step after it is skipped.
    world.failing_code("src-green", "green cannot start either")
    world.repo.endpoint("fail-ep", traffic={"blue": 50, "green": 50})
    world.repo.deployment("fail-ep", "green", code="../../src-green")
    world.repo.commit("green, broken")
    with world.load("fail-ep") as load:
        result = world.apply(ok=False)
    assert load.failures == []
    assert (Action.CREATE_DEPLOYMENT, "green") in actions(world)
    outcomes = {
        (str(result.plan.steps[r.index].action), result.plan.steps[r.index].deployment): r.outcome
        for r in result.results
    }
    assert outcomes[(Action.UPDATE_DEPLOYMENT, "blue")] == Outcome.FAILED
    assert outcomes[(Action.SET_TRAFFIC, None)] == Outcome.SKIPPED
    assert running(world, "fail-ep", "green") == []  # stopped, its log kept
    doc = result.status["fail-ep"]
    assert doc["traffic"] == {"blue": 100}
    assert "green cannot start either" in doc["deployments"]["green"]["last_error"]
    assert {world.score("fail-ep").deployment for _ in range(10)} == {"blue"}

    # Fixed: green goes, blue rolls out its new code, nothing failed is left behind.
    world.code("src", "2")
    world.repo.endpoint("fail-ep", traffic={"blue": 100})
    world.repo.remove("endpoints/fail-ep/green.yml")
    world.repo.commit("fixed")
    with world.load("fail-ep") as load:
        result = world.apply()
    assert load.failures == []
    assert result.status["fail-ep"]["deployments"]["blue"]["provisioning_state"] == "Succeeded"
    assert set(result.status["fail-ep"]["deployments"]) == {"blue"}
    assert [c.status for c in world.containers("fail-ep", "blue")] == ["running"]
    assert world.containers("fail-ep", "green") == []
    assert {world.score("fail-ep").version for _ in range(5)} == {"2"}
    assert world.apply().plan.steps == ()


def test_an_instance_docker_restarted_serves_and_counts_again(docker_world: DockerWorld) -> None:
    world = docker_world
    world.basics()
    world.code("src", "1")
    world.repo.endpoint("crash-ep", traffic={"blue": 100})
    # Health checks every second: Docker soon calls the restarted instance healthy.
    probe = {"initial_delay": 1, "period": 1, "timeout": 2, "failure_threshold": 3}
    world.repo.deployment(
        "crash-ep", "blue", code="../../src", instance_count=2, readiness_probe=probe
    )
    world.repo.commit("two instances, quick probes")
    world.apply()
    from docker_target_fixtures import counting_target  # loaded as a plugin by now

    # A reconciler that has seen them: its next pass reuses the inspections of the
    # instances, as the engine's listing shows both running and healthy as before.
    watcher, api = counting_target(world)
    watcher.observe()
    api.calls.clear()
    watcher.observe()
    assert api.calls == {"containers": 1}, api.calls

    # The server of one instance stops (as after a crash); Docker's restart policy brings
    # it back.
    victim = world.containers("crash-ep", "blue")[0]
    # Long enough after its start that the listing's uptime ("Up N seconds") shows the
    # restart even once it is healthy again.
    started = epoch(victim.attrs["State"]["StartedAt"])
    assert started is not None
    time.sleep(max(0.0, started + 5 - time.time()))
    victim.exec_run(["/bin/sh", "-c", "kill -TERM 1"])

    def healthy_again() -> bool:
        victim.reload()
        health = (victim.attrs["State"].get("Health") or {}).get("Status")
        return int(victim.attrs["RestartCount"]) >= 1 and health == "healthy"

    world.wait_for(healthy_again, what="the instance Docker restarted is healthy")
    # The restarted one alone is inspected again.
    api.calls.clear()
    [blue] = watcher.observe().deployments_of("crash-ep")
    assert (blue.ready_instances, blue.provisioning_state) == (2, "Succeeded")
    assert api.calls["inspect_container"] == 1, api.calls
    # One restart that healed is no failure: nothing to do, both count and serve.
    result = world.apply()
    assert result.plan.steps == ()
    blue = result.status["crash-ep"]["deployments"]["blue"]
    assert (blue["provisioning_state"], blue["instance_count"], blue["ready_instances"]) == (
        "Succeeded",
        2,
        2,
    )
    assert victim.name in {c.name for c in world.containers("crash-ep", "blue")}
    assert {world.score("crash-ep").status for _ in range(10)} == {200}


CUSTOM_SERVER = """\
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the router's connection pool expects

    def do_GET(self):
        self.answer(200 if self.path in ("/live", "/ready") else 404, {"path": self.path})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/predict":
            self.answer(404, {"path": self.path})
            return
        self.answer(200, {"version": "custom", "path": self.path, "echo": json.loads(body)})

    def answer(self, status, document):
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
"""


def test_a_custom_container_is_reached_on_its_own_port(docker_world: DockerWorld) -> None:
    world = docker_world
    # A custom container (an environment with inference_config) runs its own server, on
    # its own port and paths; its image has no inference server and no /opt/venv.
    world.repo.write(
        "environments/custom/Dockerfile",
        f'FROM {BASE_IMAGE}\nCOPY server.py /srv/server.py\nCMD ["python3", "/srv/server.py"]\n',
    )
    world.repo.write("environments/custom/server.py", CUSTOM_SERVER)
    world.repo.write_yaml(
        "environments/custom-env.yml",
        {
            "$schema": "https://azuremlschemas.azureedge.net/latest/environment.schema.json",
            "name": "custom-env",
            "version": 1,
            "build": {"path": "custom"},
            "inference_config": {
                "liveness_route": {"port": 8000, "path": "/live"},
                "readiness_route": {"port": 8000, "path": "/ready"},
                "scoring_route": {"port": 8000, "path": "/predict"},
            },
        },
    )
    world.repo.endpoint("custom-ep", traffic={"custom": 100})
    world.repo.write_yaml(
        "endpoints/custom-ep/custom.yml",
        {
            "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json",
            "name": "custom",
            "endpoint_name": "custom-ep",
            "environment": "azureml:custom-env:1",
            "instance_type": "Standard_DS3_v2",
            "instance_count": 1,
        },
    )
    world.repo.commit("custom container")
    result = world.apply()
    assert result.status["custom-ep"]["deployments"]["custom"]["ready_instances"] == 1

    answer = world.score("custom-ep")
    assert (answer.status, answer.deployment) == (200, "custom"), answer
    assert answer.body == {"version": "custom", "path": "/predict", "echo": {"x": 1}}
    assert world.apply().plan.steps == ()


# The longest names Azure ML allows (32 characters each).
LONG_ENDPOINT = "an-endpoint-with-a-32-char-name1"
LONG_DEPLOYMENT = "a-deployment-with-32-chars-name2"


def test_two_targets_on_one_engine_with_the_longest_names(docker_worlds: WorldFactory) -> None:
    assert len(LONG_ENDPOINT) == len(LONG_DEPLOYMENT) == 32
    # Two targets (say a user's and a test run's) with an endpoint of the same name: each
    # has its own containers, network and router, and sees only its own.
    worlds = {version: docker_worlds(f"repo-{version}") for version in ("a", "b")}
    for version, world in worlds.items():
        world.basics()
        world.code("src", version)
        world.repo.endpoint(LONG_ENDPOINT, traffic={LONG_DEPLOYMENT: 100})
        world.repo.deployment(LONG_ENDPOINT, LONG_DEPLOYMENT, code="../../src")
        world.repo.commit(f"version {version}")
        world.apply()
    for version, world in worlds.items():
        answer = world.score(LONG_ENDPOINT)
        assert (answer.status, answer.version) == (200, version), answer
        live = world.target.observe()
        assert [d.name for d in live.deployments] == [LONG_DEPLOYMENT]
        assert len(world.containers(LONG_ENDPOINT)) == 1
        assert world.apply().plan.steps == ()


class Killed(BaseException):
    """The reconciler killed mid-step: no handler of the target gets to run."""


def kill_when(text: str) -> Callable[[str], None]:
    """A progress callback that kills the step at the message containing `text`."""

    def progress(message: str) -> None:
        if text in message:
            raise Killed(message)

    return progress


def test_a_reconciler_killed_mid_step_is_healed_by_the_next(docker_world: DockerWorld) -> None:
    world = docker_world
    one_deployment(world, "kill-ep")
    world.repo.commit("blue v1")
    plan = world.plan()
    assert [s.action for s in plan.steps] == [
        Action.CREATE_ENDPOINT,
        Action.CREATE_DEPLOYMENT,
        Action.SET_TRAFFIC,
    ]
    # Killed after starting blue's instance, before routing it.
    world.target.apply(plan.steps[0])
    with pytest.raises(Killed):
        world.target.apply(plan.steps[1], progress=kill_when("routed once ready"))
    [orphan] = world.containers("kill-ep", "blue")
    world.wait_for(lambda: world.answers_inside(orphan), what="the orphan instance answers")
    # A reconciler started afresh routes the instance it finds ready (a repair, as after
    # any creation), then moves the traffic.
    world.target = world.new_target()
    world.apply(gate=Gate(timeout_s=60, poll_s=0.5))
    assert actions(world) == [(Action.REPAIR_DEPLOYMENT, "blue"), (Action.SET_TRAFFIC, None)]
    assert world.score("kill-ep").version == "1"

    # Killed again, in a rolling update, as soon as the new instance started: it runs
    # beside the old one, which still serves alone...
    world.code("src", "2")
    world.repo.commit("blue v2")
    [update] = world.plan().steps
    assert update.action == Action.UPDATE_DEPLOYMENT
    with pytest.raises(Killed):
        world.target.apply(update, progress=kill_when("routed once ready"))
    assert len(world.containers("kill-ep", "blue")) == 2
    assert {world.score("kill-ep").version for _ in range(5)} == {"1"}
    # ...and the next reconciler finishes the rollout (whether that instance answers by
    # then or not), no request failing meanwhile.
    world.target = world.new_target()
    with world.load("kill-ep") as load:
        result = world.apply()
    assert load.failures == []
    assert [world.score_inside(c)["version"] for c in world.containers("kill-ep", "blue")] == ["2"]
    assert result.status["kill-ep"]["deployments"]["blue"]["provisioning_state"] == "Succeeded"
    assert world.apply().plan.steps == ()


SLEEPY_SCORE_PY = """\
import time


def init():
    time.sleep(600)


def run(raw_data):
    return {}
"""


def test_image_build_failure_and_readiness_timeout_are_named(
    docker_worlds: WorldFactory,
) -> None:
    world = docker_worlds(ready_timeout_s=8.0)
    world.basics()
    world.code("src", "1")
    # A conda package that pip has no form of: the environment image cannot be made.
    world.repo.write_yaml(
        "environments/conda-native.yaml",
        {"name": "native", "dependencies": ["python=3.11", "cudatoolkit=11.8", "pip"]},
    )
    world.repo.write_yaml(
        "environments/native-env.yml",
        {
            "$schema": "https://azuremlschemas.azureedge.net/latest/environment.schema.json",
            "name": "native-env",
            "version": 1,
            "image": "python:3.11-slim",
            "conda_file": "conda-native.yaml",
        },
    )
    world.repo.endpoint("errors-ep", traffic={"blue": 100})
    world.repo.deployment("errors-ep", "blue", code="../../src", environment="azureml:native-env:1")
    world.repo.commit("an environment that cannot be built")
    result = world.apply(ok=False)
    [failed] = [r for r in result.results if r.outcome == Outcome.FAILED]
    assert result.plan.steps[failed.index].action == Action.CREATE_DEPLOYMENT
    assert failed.error_code == "ImageBuildFailure"
    assert "cudatoolkit" in failed.message
    assert result.status["errors-ep"]["last_error"].startswith("ImageBuildFailure: ")
    assert world.containers("errors-ep", "blue") == []

    # An init() that never ends: no instance is ready within the target's time limit.
    world.repo.write("src/score.py", SLEEPY_SCORE_PY)
    world.repo.deployment("errors-ep", "blue", code="../../src")
    world.repo.commit("init never returns")
    result = world.apply(ok=False)
    # Found failed once its time is up, without any step waiting for it: the traffic step's
    # gate fails with the instance's log, and no traffic moves.
    [failed] = [r for r in result.results if r.outcome == Outcome.FAILED]
    assert result.plan.steps[failed.index].action == Action.SET_TRAFFIC
    assert failed.error_code == "DeploymentNotHealthy"
    assert "not ready after 8 s" in failed.log_tail
    blue = result.status["errors-ep"]["deployments"]["blue"]
    assert blue["provisioning_state"] == "Failed"
    assert "not ready after 8 s" in blue["last_error"]
    assert result.status["errors-ep"]["traffic"] == {}
    # Stopped, not left running: it would never serve.
    assert running(world, "errors-ep", "blue") == []
