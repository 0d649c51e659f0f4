"""A hostile operator against the Docker target's per-endpoint state, on the real engine.

Each test breaks the endpoint's state the way an operator or an earlier version could (an
endpoint of the earlier host-folder layout, two repositories naming their target `local`,
a network removed by hand, a router config or state volume spoiled, names that run into
each other) and says what the product must do: a visible repair that converges, keys and
port kept, or a clear error; never "No changes" over an endpoint that does not serve, never
one target reading another's keys. Each failed before its fix (a hostile review of the
state volume design).
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker_state
import pytest

from reconciler.engine import plan_pass
from reconciler.gitsource import GitSource
from reconciler.model.plan import Action, Step
from reconciler.targets.base import TargetError
from reconciler.targets.docker.state import (
    CREDENTIALS,
    DEPLOYMENTS,
    ENDPOINT,
    MOUNT,
    ROUTER_CONFIG,
    write_files,
)

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld, WorldFactory

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def actions(plan_steps: tuple[Step, ...]) -> list[str]:
    return [str(s.action) for s in plan_steps]


def status_at(uri: str, key: str) -> int:
    """The status of one request to a scoring URI on 127.0.0.1; 0 when none came."""
    assert uri.startswith("http://127.0.0.1:"), uri
    request = urllib.request.Request(
        uri,
        data=b'{"x": 1}',
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def role(world: DockerWorld, endpoint: str, name: str) -> list[Any]:
    labels = [
        f"reconciler.target={world.options.name}",
        f"reconciler.endpoint={endpoint}",
        f"reconciler.role={name}",
    ]
    return list(
        world.client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)
    )


def network(world: DockerWorld, endpoint: str, name: str) -> Any:
    """The endpoint's `internal` network, or the target's `edge` one (shared by its routers)."""
    labels = [f"reconciler.target={world.options.name}", f"reconciler.role={name}"]
    if name != "edge":
        labels.append(f"reconciler.endpoint={endpoint}")
    found = world.client.networks.list(filters={"label": labels})
    assert len(found) == 1, found
    return found[0]


def remove_network(world: DockerWorld, net: Any) -> None:
    """What an operator does to remove a network in use: disconnect everyone, remove."""
    net.reload()
    for container_id in list(net.attrs.get("Containers") or {}):
        net.disconnect(container_id, force=True)
    net.remove()


def legacy_layout(world: DockerWorld, endpoint: str, *, uri: str, key: str) -> Path:
    """Turn a served endpoint into what the earlier version (ccf72e1) left on a host: its
    state in STATE/endpoints/NAME (credentials.json, endpoint.json, deployments/D.json,
    router/router.json, bind-mounted into the router), the router on Docker's shared bridge
    and its endpoint's network, no volume, no holder, no edge network."""
    files = docker_state.state_files(world.client, world.options.name, endpoint)
    folder = world.options.state_dir / "endpoints" / endpoint
    (folder / "router").mkdir(parents=True)
    (folder / "deployments").mkdir()
    (folder / "credentials.json").write_bytes(files[CREDENTIALS])
    (folder / "endpoint.json").write_bytes(files[ENDPOINT])
    (folder / "router" / "router.json").write_bytes(files[ROUTER_CONFIG])
    for name, record in json.loads(files[DEPLOYMENTS]).items():
        (folder / "deployments" / f"{name}.json").write_text(json.dumps(record))
    (old,) = role(world, endpoint, "router")
    image, labels, name = old.image.id, dict(old.labels), old.name
    bindings = old.attrs["HostConfig"]["PortBindings"]
    for c in [old, *role(world, endpoint, "state")]:
        c.remove(force=True)
    remove_network(world, network(world, endpoint, "edge"))
    for volume in world.client.volumes.list(
        filters={"label": [f"reconciler.target={world.options.name}"]}
    ):
        volume.remove(force=True)
    legacy = world.client.containers.create(
        image,
        name=name,
        labels=labels,
        volumes={str(folder / "router"): {"bind": MOUNT, "mode": "rw"}},
        ports={
            "8080/tcp": ("127.0.0.1", int(bindings["8080/tcp"][0]["HostPort"])),
            "9090/tcp": ("127.0.0.1", int(bindings["9090/tcp"][0]["HostPort"])),
        },
        user="root",
        restart_policy={"Name": "unless-stopped"},
    )
    network(world, endpoint, "internal").connect(legacy)
    legacy.start()
    world.wait_for(lambda: status_at(uri, key) == 200, what="the legacy router serving")
    return folder


def test_an_endpoint_of_the_earlier_layout_moves_into_a_volume_in_one_pass(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("old-ep")
    key, uri = world.key("old-ep"), world.scoring_uri("old-ep")
    legacy_layout(world, "old-ep", uri=uri, key=key)
    plan = world.plan()
    assert actions(plan.steps) == [Action.REPAIR_ENDPOINT]
    assert "earlier version" in (plan.steps[0].reason or "")
    result = world.apply()
    assert result.status["old-ep"]["provisioning_state"] == "Succeeded"
    # Converged: the router mounts the volume now, and the next pass has nothing to do.
    (router,) = role(world, "old-ep", "router")
    mounts = {m["Destination"]: m["Type"] for m in router.attrs["Mounts"]}
    assert mounts == {MOUNT: "volume"}
    assert world.plan().steps == ()
    # No caller broken: same keys, same scoring URI.
    assert (world.key("old-ep"), world.scoring_uri("old-ep")) == (key, uri)
    assert world.score("old-ep").status == 200


def test_two_repositories_with_one_target_name_do_not_clobber_each_other(
    docker_worlds: WorldFactory,
) -> None:
    name = f"hostile-{secrets.token_hex(3)}"
    a = docker_worlds("repo-a", name=name)
    b = docker_worlds("repo-b", name=name)
    a.serve("shared-ep", version="A")
    b.basics()
    b.code("src", "B")
    b.repo.endpoint("shared-ep", traffic={"blue": 100})
    b.repo.deployment("shared-ep", "blue", code="../../src")
    b.repo.commit("b's endpoint of the same name")
    result = b.apply(ok=False)
    # At least a clear error for b; a's callers keep what a deployed.
    assert result.failed
    assert a.score("shared-ep").version == "A"


def test_prune_in_another_repository_with_one_target_name_deletes_nothing_of_ours(
    docker_worlds: WorldFactory,
) -> None:
    name = f"hostile-{secrets.token_hex(3)}"
    a = docker_worlds("repo-a", name=name)
    b = docker_worlds("repo-b", name=name)
    a.serve("mine-ep")
    b.basics()
    b.repo.commit("b has no endpoint (yet)")
    source = GitSource(b.repo.root)
    plan, _ = plan_pass(source.tree(source.resolve("HEAD")), b.target.observe(), prune=True)
    assert Action.DELETE_ENDPOINT not in [s.action for s in plan.steps], actions(plan.steps)


def test_a_removed_internal_network_is_a_visible_repair(docker_world: DockerWorld) -> None:
    world = docker_world
    world.serve("inet-ep")
    key = world.key("inet-ep")
    remove_network(world, network(world, "inet-ep", "internal"))
    assert world.status("inet-ep") != 200  # callers are broken
    plan = world.plan()
    assert plan.steps != (), "No changes over an endpoint whose instances cannot be reached"
    world.apply()
    assert world.key("inet-ep") == key
    assert world.score("inet-ep").status == 200
    assert world.plan().steps == ()


def test_a_removed_edge_network_is_a_visible_repair(docker_world: DockerWorld) -> None:
    world = docker_world
    world.serve("edge-ep")
    remove_network(world, network(world, "edge-ep", "edge"))
    (endpoint,) = world.target.observe().endpoints
    assert endpoint.repair is not None and "network" in endpoint.repair
    world.apply()
    (router,) = role(world, "edge-ep", "router")
    router.restart(timeout=2)
    world.wait_for(lambda: world.status("edge-ep") == 200, what="the router back")


def test_repairing_an_unreadable_router_config_keeps_the_traffic(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("conf-ep")
    # Any repair first (its holder pruned): it writes the endpoint's whole spec, traffic
    # included, into state/endpoint.json, which observe falls back on without a config.
    docker_state.holder(world.client, world.options.name, "conf-ep").remove()
    assert actions(world.apply().plan.steps) == [Action.REPAIR_ENDPOINT]
    holder = docker_state.holder(world.client, world.options.name, "conf-ep")
    write_files(holder, {ROUTER_CONFIG: b"garbage{{{"})
    assert world.score("conf-ep").status == 200  # the router serves from memory meanwhile
    result = world.apply()
    assert Action.REPAIR_ENDPOINT in [s.action for s in result.plan.steps]
    assert result.status["conf-ep"]["provisioning_state"] == "Succeeded"
    answer = world.score("conf-ep")
    assert answer.status == 200, answer.body
    assert world.plan().steps == ()


def test_a_stray_big_file_in_the_state_volume_does_not_lock_out_the_keys(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("big-ep")
    key = world.key("big-ep")
    holder = docker_state.holder(world.client, world.options.name, "big-ep")
    write_files(holder, {"core.dump": b"\0" * (17 * 1024 * 1024)})
    fresh = world.new_target()
    # The error is kept as text only: the exception's frames hold the archive stream, and
    # while it is open the engine answers nothing about the holder.
    got, problem = None, ""
    try:
        got = fresh.endpoint_credentials("big-ep").primary_key
    except TargetError as exc:
        problem = str(exc)
    assert got == key, f"keys intact but unreadable: {problem}"
    world.apply(target=fresh)
    assert world.key("big-ep") == key
    assert world.score("big-ep").status == 200


def test_an_endpoint_named_edge_beside_the_targets_edge_network(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.basics()
    world.code("src", "1")
    for endpoint in ("edge", "other"):
        world.repo.endpoint(endpoint, traffic={"blue": 100})
        world.repo.deployment(endpoint, "blue", code="../../src")
    world.repo.commit("two endpoints")
    world.apply()
    assert world.score("edge").status == 200
    assert world.score("other").status == 200


def test_targets_whose_names_run_into_endpoint_names_never_share_state(
    docker_worlds: WorldFactory,
) -> None:
    name = f"hostile-{secrets.token_hex(3)}"
    # b first: its holder must go before a's volume when the fixture cleans up.
    b = docker_worlds("repo-b", name=f"{name}-a")
    a = docker_worlds("repo-a", name=name)
    a.serve("a-bcd")
    a_key = a.key("a-bcd")
    # `docker container prune` removes the never-started holder (it is "Created").
    for c in role(a, "a-bcd", "state"):
        c.remove()
    b.basics()
    b.code("src", "B")
    b.repo.endpoint("bcd", traffic={"blue": 100})
    b.repo.deployment("bcd", "blue", code="../../src")
    b.repo.commit("bcd")
    b.apply(ok=False)
    try:
        b_key: str | None = b.target.endpoint_credentials("bcd").primary_key
    except TargetError:
        b_key = None  # b has no keys of its own yet: fine, as long as it never has a's
    assert b_key != a_key, "target b reads the keys of target a"
    # a's endpoint is still a-bcd to a (its state not overwritten by b's spec).
    assert [e.name for e in a.new_target().observe().endpoints] == ["a-bcd"]
    assert a.key("a-bcd") == a_key


def test_keys_in_a_volume_nothing_mounts_are_not_called_missing(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("orphan-ep")
    key = world.key("orphan-ep")
    for name in ("router", "state"):
        for c in role(world, "orphan-ep", name):
            c.remove(force=True)
    (endpoint,) = world.new_target().observe().endpoints
    assert endpoint.repair is not None
    assert "new keys will be issued" not in endpoint.repair, endpoint.repair
    got, problem = None, ""
    try:
        got = world.new_target().endpoint_credentials("orphan-ep").primary_key
    except TargetError as exc:
        problem = str(exc)
    assert got == key, f"keys in the volume said to be absent: {problem}"


def test_the_endpoint_name_comes_from_the_labels_not_from_the_state_file(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("name-ep")
    holder = docker_state.holder(world.client, world.options.name, "name-ep")
    files = docker_state.state_files(world.client, world.options.name, "name-ep")
    spec = json.loads(files[ENDPOINT])
    write_files(holder, {ENDPOINT: json.dumps({**spec, "name": "phantom"}).encode()})
    assert [e.name for e in world.new_target().observe().endpoints] == ["name-ep"]
    assert Action.CREATE_ENDPOINT not in [s.action for s in world.plan().steps]


def test_a_foreign_volume_of_the_state_volumes_name_is_a_clear_error(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.basics()
    world.code("src", "1")
    world.repo.endpoint("vol-ep", traffic={"blue": 100})
    world.repo.deployment("vol-ep", "blue", code="../../src")
    world.repo.commit("vol-ep")
    name = f"{world.target._prefix('vol-ep')}-state"
    # Labelled with the target (so that the fixture removes it), not as a state volume.
    world.client.volumes.create(name, labels={"reconciler.target": world.options.name})
    try:
        result = world.apply(ok=False)
    except AssertionError as exc:
        pytest.fail(f"an assertion of the target escaped: {exc!r}")
    assert result.failed
    message = " ".join(r.message or "" for r in result.results)
    assert name in message, message
