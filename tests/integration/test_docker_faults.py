"""Faults of the Docker target's state on the real engine: each one healed, or refused clearly.

Two targets with one endpoint name (and one host state folder), the host folder removed,
the state volume lost, keys truncated, a router stopped, the port proxy in front of a
router killed by idle connections, the auth mode switched both ways. Each test names what
the product must do; every request goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import resource
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import docker_state
import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.model.plan import Action, Step
from reconciler.targets.docker.access import endpoint_access
from reconciler.targets.docker.state import CREDENTIALS, write_files
from reconciler.targets.docker.target import DockerTarget

if TYPE_CHECKING:
    # Only for annotations: the module is loaded as a plugin (pytest rewrites its asserts).
    from docker_target_fixtures import DockerWorld, WorldFactory

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def actions(plan_steps: tuple[Step, ...]) -> list[str]:
    return [str(s.action) for s in plan_steps]


def router(world: DockerWorld, endpoint: str) -> object:
    found = world.client.containers.list(
        all=True,
        filters={
            "label": [
                f"reconciler.target={world.options.name}",
                f"reconciler.endpoint={endpoint}",
                "reconciler.role=router",
            ]
        },
        ignore_removed=True,
    )
    assert len(found) == 1
    return found[0]


def use_target_in_cli(world: DockerWorld) -> list[str]:
    """reconciler.yaml naming the world's target, committed; the CLI's --repo arguments."""
    world.repo.write(
        "reconciler.yaml",
        yaml.safe_dump(
            {
                "targets": {
                    world.options.name: {
                        "type": "docker",
                        "state_dir": str(world.options.state_dir),
                        "router_port_range": list(world.options.router_port_range),
                        "drain_s": world.options.drain_s,
                    }
                },
                "default_target": world.options.name,
            }
        ),
    )
    world.repo.commit("target settings")
    return ["--repo", str(world.repo.root)]


def test_two_targets_with_one_endpoint_name_and_one_state_folder_stay_apart(
    docker_worlds: WorldFactory,
) -> None:
    # The same host state folder for both, as two repositories using the default get.
    shared = docker_worlds("repo-a").options.state_dir
    a = docker_worlds("repo-a2", state_dir=shared)
    b = docker_worlds("repo-b", state_dir=shared)
    for world in (a, b):
        world.serve("same-ep")
    # Each its own keys and port; neither key opens the other.
    assert a.scoring_uri("same-ep") != b.scoring_uri("same-ep")
    assert a.key("same-ep") != b.key("same-ep")
    assert a.status("same-ep", key=b.key("same-ep")) == 401
    # Routers sit on their endpoint's own networks only, never Docker's shared bridge.
    for world in (a, b):
        networks = set(router(world, "same-ep").attrs["NetworkSettings"]["Networks"])  # type: ignore[attr-defined]
        assert "bridge" not in networks
        assert len(networks) == 2, networks

    # b scales, then b prunes its endpoint: a serves on, untouched.
    b.repo.deployment("same-ep", "blue", code="../../src", instance_count=2)
    b.repo.commit("two")
    b.apply()
    assert len(b.containers("same-ep")) == 2 and len(a.containers("same-ep")) == 1
    key_a = a.key("same-ep")
    b.repo.remove("endpoints/same-ep/endpoint.yml")
    b.repo.remove("endpoints/same-ep/blue.yml")
    b.repo.commit("no endpoint")
    b.apply(prune=True)
    assert b.target.observe().endpoints == ()
    assert a.key("same-ep") == key_a
    assert a.score("same-ep").status == 200
    assert a.plan().steps == ()


def test_the_host_state_folder_removed_loses_nothing(docker_world: DockerWorld) -> None:
    world = docker_world
    world.serve("folder-ep")
    keys = (world.key("folder-ep"), world.key("folder-ep", "secondary"))
    shutil.rmtree(world.options.state_dir, ignore_errors=True)
    fresh = world.new_target()
    assert [(e.name, e.repair) for e in fresh.observe().endpoints] == [("folder-ep", None)]
    assert world.apply(target=fresh).plan.steps == ()
    # A restarted router reads its config from its volume: it serves with the same keys.
    router(world, "folder-ep").restart(timeout=2)  # type: ignore[attr-defined]
    world.wait_for(lambda: world.status("folder-ep") == 200, what="the router back")
    assert (
        fresh.endpoint_credentials("folder-ep").primary_key,
        world.key("folder-ep", "secondary"),
    ) == keys
    runner = CliRunner()
    repo = use_target_in_cli(world)
    shown = runner.invoke(main, ["credentials", "folder-ep", *repo])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["primaryKey"] == keys[0]


def test_a_stopped_router_is_a_visible_repair_and_is_repaired(docker_world: DockerWorld) -> None:
    world = docker_world
    world.serve("stop-ep")
    key = world.key("stop-ep")
    router(world, "stop-ep").stop(timeout=1)  # type: ignore[attr-defined]
    repo = use_target_in_cli(world)
    planned = CliRunner().invoke(main, [*repo, "--dry-run", "--output", "json"])
    assert planned.exit_code == 2, planned.output
    steps = json.loads(planned.stdout)["steps"]
    assert [s["action"] for s in steps] == ["repair_endpoint"]
    assert "router container is exited" in steps[0]["reason"]
    result = world.apply()
    assert actions(result.plan.steps) == [Action.REPAIR_ENDPOINT]
    assert result.status["stop-ep"]["provisioning_state"] == "Succeeded"
    assert world.key("stop-ep") == key
    assert world.score("stop-ep").status == 200
    assert world.plan().steps == ()


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count + 1000:
        pytest.skip(f"needs {count + 1000} open files, the limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 1000), hard))
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            try:
                opened.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break  # the proxy is gone already: that is the fault
        yield opened
    finally:
        for s in opened:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_port_proxy_killed_by_idle_connections_is_seen_and_repaired(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("idle-ep")
    key = world.key("idle-ep")
    port = int(world.scoring_uri("idle-ep").split(":")[2].split("/")[0])
    with idle_connections(port, 4000):
        time.sleep(1)
        if world.status("idle-ep") == 200:
            pytest.skip("this engine's port proxy survived 4,000 idle connections")
    # The router container is still "Up"; callers get nothing.
    assert router(world, "idle-ep").status == "running"  # type: ignore[attr-defined]
    assert world.status("idle-ep") != 200
    live = world.target.observe()
    assert live.endpoints[0].repair is not None
    assert f"does not answer on 127.0.0.1:{port}" in live.endpoints[0].repair
    plan = world.plan()
    assert actions(plan.steps) == [Action.REPAIR_ENDPOINT]
    world.apply()
    assert world.key("idle-ep") == key
    assert world.score("idle-ep").status == 200


def test_truncated_keys_are_a_clear_error_then_new_keys_said_once(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("trunc-ep")
    old = world.key("trunc-ep")
    holder = docker_state.holder(world.client, world.options.name, "trunc-ep")
    whole = docker_state.state_files(world.client, world.options.name, "trunc-ep")[CREDENTIALS]
    write_files(holder, {CREDENTIALS: whole[: len(whole) // 2]})
    runner = CliRunner()
    repo = use_target_in_cli(world)
    shown = runner.invoke(main, ["credentials", "trunc-ep", *repo])
    assert shown.exit_code == 1
    assert "keys of endpoint trunc-ep" in shown.output and "unreadable" in shown.output
    assert "Traceback" not in shown.output and old not in shown.output
    planned = runner.invoke(main, [*repo, "--dry-run"])
    assert planned.exit_code == 2, planned.output
    assert "repair_endpoint" in planned.output and "new keys will be issued" in planned.output
    applied = runner.invoke(main, [*repo])
    assert applied.exit_code == 0, applied.output
    assert applied.output.count("NEW KEYS issued for trunc-ep") == 1, applied.output
    # The plan apply prints warns as the dry run did (the image the target substitutes).
    warned = [line for line in planned.output.splitlines() if "environment.image" in line]
    assert warned
    assert [line for line in applied.output.splitlines() if "environment.image" in line] == warned
    status = yaml.safe_load(world.repo.git("show", "reconcile-status:status/trunc-ep.yaml"))
    assert status["notes"] == [
        "NEW KEYS issued for trunc-ep: its keys were unreadable (not JSON (JSONDecodeError, "
        "truncated or corrupt)); callers need the new ones (`reconcile credentials trunc-ep`)"
    ]
    new = world.key("trunc-ep")
    assert new != old
    assert world.score("trunc-ep", key=old).status == 401
    assert world.score("trunc-ep").status == 200


def test_a_lost_state_volume_is_rebuilt_with_new_keys_and_the_running_instances(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("lost-ep")
    old = world.key("lost-ep")
    label = [f"reconciler.target={world.options.name}", "reconciler.endpoint=lost-ep"]
    for role in ("router", "state"):
        for c in world.client.containers.list(
            all=True, filters={"label": [*label, f"reconciler.role={role}"]}, ignore_removed=True
        ):
            c.remove(force=True)
    for volume in world.client.volumes.list(filters={"label": label}):
        volume.remove(force=True)
    plan = world.plan()
    # Never "No changes" over a broken endpoint: a repair, then traffic back.
    assert actions(plan.steps) == [Action.REPAIR_ENDPOINT, Action.SET_TRAFFIC]
    assert "new keys will be issued" in plan.steps[0].reason
    instances = {c.id for c in world.containers("lost-ep")}
    result = world.apply()
    assert [n.split(":")[0] for n in result.status["lost-ep"]["notes"]] == [
        "NEW KEYS issued for lost-ep"
    ]
    assert {c.id for c in world.containers("lost-ep")} == instances  # kept, routed again
    assert world.key("lost-ep") != old
    assert world.score("lost-ep").status == 200
    assert world.score("lost-ep", key=old).status == 401


def test_auth_mode_switches_both_ways_and_old_credentials_stop_working(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("auth-ep")
    key = world.key("auth-ep")
    world.repo.endpoint("auth-ep", traffic={"blue": 100}, auth_mode="aml_token")
    world.repo.commit("tokens")
    result = world.apply()
    assert actions(result.plan.steps) == [Action.UPDATE_ENDPOINT]
    token = world.target.token("auth-ep", now=time.time())["accessToken"]
    assert world.score("auth-ep", key=token).status == 200
    assert world.score("auth-ep", key=key).status == 401
    # The command line reads the mode and the token secret from the engine's socket
    # (targets/docker/access.py): its token is accepted, and invoke sends one.
    quick = endpoint_access(world.options.name, "auth-ep", repository=None)
    assert quick is not None and quick.auth_mode == "aml_token"
    runner = CliRunner()
    repo = use_target_in_cli(world)
    shown = runner.invoke(main, ["credentials", "auth-ep", *repo, "--ttl", "60"])
    assert shown.exit_code == 0, shown.output
    assert world.score("auth-ep", key=json.loads(shown.stdout)["accessToken"]).status == 200
    (world.repo.root / "request.json").write_text(json.dumps({"data": [[1]]}))
    request = str(world.repo.root / "request.json")
    invoked = runner.invoke(main, ["invoke", "auth-ep", *repo, "--request-file", request])
    assert invoked.exit_code == 0, invoked.output
    assert "deployment: blue" in invoked.stderr
    world.repo.endpoint("auth-ep", traffic={"blue": 100}, auth_mode="key")
    world.repo.commit("keys again")
    world.apply()
    assert world.score("auth-ep", key=key).status == 200
    assert world.score("auth-ep", key=token).status == 401


def test_two_repositories_naming_their_targets_alike_leave_each_others_endpoints_alone(
    docker_worlds: WorldFactory,
) -> None:
    a = docker_worlds("repo-a")
    # The same target name and state folder: two repositories that both kept `local`.
    b = docker_worlds("repo-b", name=a.options.name, state_dir=a.options.state_dir)
    for world, identity in ((a, "github.com/org/a"), (b, "github.com/org/b")):
        world.target = DockerTarget(world.options, repo_root=world.repo.root, repository=identity)
    a.serve("shared-ep")
    key = a.key("shared-ep")
    # b declares an endpoint of the same name and one of its own, and prunes.
    b.serve("own-ep")
    b.repo.endpoint("shared-ep", traffic={"blue": 100})
    b.repo.deployment("shared-ep", "blue", code="../../src")
    b.repo.commit("shared too")
    plan = b.plan()
    assert [w.message for w in plan.warnings if "shared-ep" in w.message] == [
        "endpoint 'shared-ep' on target "
        f"{a.options.name!r} is managed by another repository (github.com/org/a); this "
        "repository can neither change nor prune it. To run an endpoint of that name from "
        "here, give this repository's target another name"
    ]
    # Declared here too: its creation fails, naming the owner; nothing of a's changes.
    failed = b.apply(ok=False)
    (result,) = [r for r in failed.results if r.message and "another repository" in r.message]
    assert failed.plan.steps[result.index].action == Action.CREATE_ENDPOINT
    assert "github.com/org/a" in result.message
    for endpoint in ("own-ep", "shared-ep"):
        b.repo.remove(f"endpoints/{endpoint}/endpoint.yml")
        b.repo.remove(f"endpoints/{endpoint}/blue.yml")
    b.repo.commit("nothing of its own")
    b.apply(prune=True)
    assert [e.name for e in b.target.observe().endpoints] == []
    assert [e.name for e in a.target.observe().endpoints] == ["shared-ep"]
    assert a.key("shared-ep") == key
    assert a.score("shared-ep").status == 200
    assert a.plan().steps == ()
