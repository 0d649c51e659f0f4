"""Compositions on one Docker Engine, with faults: two repositories that kept the same target
name, each with an endpoint of its own, and one endpoint's state (the volume that records
which repository made it) lost. Neither repository sees, plans for or prunes the other's
endpoint, through a pass or through the command line's fast paths (`status --live`,
`credentials`, `invoke`); the repository that made it heals it. One tiny endpoint each;
every request goes to 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker_state
import pytest
import yaml
from click.testing import CliRunner
from daemon_process import WatchProcess
from waiting import wait_for

from reconciler.cli import main
from reconciler.model.plan import Action
from reconciler.targets.docker.state import (
    CREDENTIALS,
    DEPLOYMENTS,
    ENDPOINT,
    ROUTER_CONFIG,
    write_files,
)

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld, WorldFactory

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _lose_state(world: DockerWorld, endpoint: str) -> None:
    """The endpoint's router, state holder and state volume removed; its instances run on."""
    label = [f"reconciler.target={world.options.name}", f"reconciler.endpoint={endpoint}"]
    for role in ("router", "state"):
        for c in world.client.containers.list(
            all=True, filters={"label": [*label, f"reconciler.role={role}"]}, ignore_removed=True
        ):
            c.remove(force=True)
    for volume in world.client.volumes.list(filters={"label": label}):
        volume.remove(force=True)


def router(world: DockerWorld, endpoint: str) -> Any:
    (found,) = world.client.containers.list(
        all=True,
        filters={
            "label": [
                f"reconciler.target={world.options.name}",
                f"reconciler.endpoint={endpoint}",
                "reconciler.role=router",
            ]
        },
    )
    return found


def _cli_target(world: DockerWorld, *, prune: bool = False) -> list[str]:
    """reconciler.yaml naming the world's target, committed; the CLI's --repo arguments."""
    options = world.options
    settings = {
        "type": "docker",
        "state_dir": str(options.state_dir),
        "router_port_range": list(options.router_port_range),
        "drain_s": options.drain_s,
    }
    world.repo.write(
        "reconciler.yaml",
        yaml.safe_dump(
            {"targets": {options.name: settings}, "default_target": options.name, "prune": prune}
        ),
    )
    world.repo.commit("target settings")
    return ["--repo", str(world.repo.root)]


def _cli_sees_only_its_own(repo: list[str], *, own: str, other: str, request: str) -> None:
    runner = CliRunner()
    live = runner.invoke(main, ["status", "--live", *repo, "--output", "yaml"])
    assert live.exit_code == 0, live.output
    assert own in live.output and other not in live.output
    for command in (["credentials", other], ["invoke", other, "--request-file", request]):
        shown = runner.invoke(main, [*command, *repo])
        assert shown.exit_code == 1, (command, shown.output)
        assert f"endpoint {other} does not exist" in shown.output, shown.output
    mine = runner.invoke(main, ["credentials", own, *repo])
    assert mine.exit_code == 0 and "primaryKey" in mine.stdout, mine.output
    # Nor read its logs, nor change its keys: the target says whose it is.
    for command in (["logs", other, "blue"], ["regenerate-key", other, "--key", "primary"]):
        refused = runner.invoke(main, [*command, *repo])
        assert refused.exit_code == 1, (command, refused.output)
        assert "is managed by another repository" in refused.output, refused.output
        assert "==>" not in refused.output and "regenerated" not in refused.output


def test_another_repositorys_endpoint_whose_state_is_lost_is_not_seen_planned_or_pruned(
    docker_worlds: WorldFactory, tmp_path: Path
) -> None:
    a = docker_worlds("repo-a")
    # The same target name and state folder: two repositories that both kept `local`.
    b = docker_worlds("repo-b", name=a.options.name, state_dir=a.options.state_dir)
    a.serve("ep-a")
    b.serve("ep-b")
    instances = {c.id for c in a.containers("ep-a")}
    key_a = a.key("ep-a")
    repo_b = _cli_target(b)
    request = b.repo.root / "request.json"
    request.write_text(json.dumps({"data": [[1]]}))
    _cli_sees_only_its_own(repo_b, own="ep-b", other="ep-a", request=str(request))
    assert a.key("ep-a") == key_a and a.score("ep-a").status == 200

    _lose_state(a, "ep-a")
    # b: the instances left of a's endpoint are not b's to see, repair or prune.
    for _ in range(2):  # the second pass reuses the first one's listings and inspections
        live = b.target.observe()
        assert [e.name for e in live.endpoints] == ["ep-b"]
        assert {d.endpoint for d in live.deployments} == {"ep-b"}
        assert any("ep-a" in w.message and "another repository" in w.message for w in live.warnings)
    _cli_sees_only_its_own(repo_b, own="ep-b", other="ep-a", request=str(request))
    assert b.plan().steps == ()
    # b's daemon, pruning, through its idle passes (listings and state digests reused).
    _cli_target(b, prune=True)
    daemon = WatchProcess(tmp_path / "daemon-b", "--repo", str(b.repo.root), "--interval", "1")
    try:
        wait_for(lambda: len(daemon.events("pass_finished")) >= 3, 120, "three passes of b")
    finally:
        daemon.stop()
    assert [e["steps"] for e in daemon.events("pass_finished")][:3] == [0, 0, 0]
    assert {c.id for c in a.containers("ep-a")} == instances
    b.apply(prune=True)
    assert {c.id for c in a.containers("ep-a")} == instances
    # Declared by b too: its creation fails naming the owner, rather than adopting a's.
    b.repo.endpoint("ep-a", traffic={"blue": 100})
    b.repo.deployment("ep-a", "blue", code="../../src")
    b.repo.commit("ep-a here too")
    failed = b.apply(ok=False)
    (refused,) = [r for r in failed.results if r.message and "another repository" in r.message]
    assert failed.plan.steps[refused.index].action == Action.CREATE_ENDPOINT
    assert {c.id for c in a.containers("ep-a")} == instances

    # a's own command line calls it broken, says why and what repairs it.
    runner, repo_a = CliRunner(), _cli_target(a)
    live = runner.invoke(main, ["status", "--live", *repo_a])
    assert live.exit_code == 0 and "ep-a: Failed (Degraded)" in live.output, live.output
    assert "its state (keys, router config) is gone" in live.output
    for command in (["credentials", "ep-a"], ["invoke", "ep-a", "--request-file", str(request)]):
        shown = runner.invoke(main, [*command, *repo_a])
        assert shown.exit_code == 1, (command, shown.output)
        assert "does not exist" not in shown.output, shown.output
        assert "its state (keys, router config) is gone" in shown.output, shown.output
        assert "`reconcile` repairs it" in shown.output, shown.output
    # a: never "No changes" over its broken endpoint; the repair keeps its instances.
    assert [str(s.action) for s in a.plan().steps] == [
        Action.REPAIR_ENDPOINT,
        Action.SET_TRAFFIC,
    ]
    a.apply()
    assert {c.id for c in a.containers("ep-a")} == instances
    assert a.score("ep-a").status == 200
    assert a.plan().steps == ()
    assert b.score("ep-b").status == 200


def test_apply_with_a_stale_lock_of_the_status_branch_says_so_without_a_traceback(
    docker_world: DockerWorld,
) -> None:
    """A reconciler killed with its process group while git wrote the status branch leaves
    git's lock file: the next apply still applies, then names the file and the fix (exit
    1), rather than ending in a traceback; once the file is gone, status is written."""
    world = docker_world
    repo = _cli_target(world)  # no endpoint: a pass observes the target and writes status
    lock = world.repo.root / ".git" / "refs" / "heads" / "reconcile-status.lock"
    lock.write_text("")
    runner = CliRunner()
    applied = runner.invoke(main, repo)
    assert applied.exit_code == 1, applied.output
    assert isinstance(applied.exception, SystemExit) and "Traceback" not in applied.output
    assert "status not written to branch reconcile-status" in applied.stderr
    assert str(lock) in applied.stderr and "remove it" in applied.stderr
    lock.unlink()
    again = runner.invoke(main, repo)
    assert again.exit_code == 0, again.output
    assert world.repo.git("log", "-1", "--format=%s", "reconcile-status").startswith("status of")


# State files spoiled into JSON of another shape or cut short: the ones the endpoint needs
# are repaired by the next apply (router config: the same keys; keys: new ones); with the
# records it can do without, a plan of no steps is honest: the endpoint serves, through a
# restarted router too. (Six files by eight spoilings each, empty and nested past json's
# depth among them, were run once by hand: the same two behaviours; four cases stay here.)
NEEDED = [(ROUTER_CONFIG, b"[]"), (CREDENTIALS, b'{"blue": []}')]
RECORDS = [(ENDPOINT, b"[]"), (DEPLOYMENTS, b'{"blue": [')]


def test_spoiled_state_files_are_repaired_or_harmless_never_no_changes_over_a_broken_one(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.serve("spoil-ep")
    for path, content in NEEDED + RECORDS:
        key = world.key("spoil-ep")
        write_files(
            docker_state.holder(world.client, world.options.name, "spoil-ep"), {path: content}
        )
        steps = [str(s.action) for s in world.plan().steps]
        if (path, content) in NEEDED:
            assert steps[:1] == [Action.REPAIR_ENDPOINT], (path, content, steps)
        else:
            assert steps == [], (path, content, steps)
        world.apply()
        assert world.plan().steps == (), (path, content)
        if (path, content) in RECORDS:
            router(world, "spoil-ep").restart(timeout=2)
        world.wait_for(lambda: world.status("spoil-ep") == 200, what=f"served after {path}")
        assert (world.key("spoil-ep") == key) is (path != CREDENTIALS), (path, content)
        assert world.new_target().observe().endpoints[0].repair is None, (path, content)


def test_a_remote_added_to_the_checkout_keeps_its_endpoints_its_own(
    docker_worlds: WorldFactory,
) -> None:
    """Made from a checkout with no remote (`path:FOLDER`), then `git remote add origin`:
    the same checkout still updates and sees its endpoint (it was "managed by another
    repository (path:FOLDER)", to be created anew, and `status --live` said no endpoints);
    another checkout with no remote still cannot touch it."""
    world = docker_worlds("first")
    world.serve("remote-ep")
    world.repo.git("remote", "add", "origin", "https://github.com/org/models.git")
    world.target = world.new_target()  # its identity now: github.com/org/models
    assert world.target.repository == "github.com/org/models"
    world.code("src", "2")
    world.repo.commit("v2, after the remote was added")
    assert [str(s.action) for s in world.plan().steps] == [Action.UPDATE_DEPLOYMENT]
    world.apply()
    assert world.score("remote-ep").version == "2"
    live = CliRunner().invoke(main, ["status", "--live", *_cli_target(world)])
    assert live.exit_code == 0 and "remote-ep: Succeeded" in live.output, live.output
    other = docker_worlds("other", name=world.options.name, state_dir=world.options.state_dir)
    other.basics()
    other.repo.commit("nothing")
    assert other.target.observe().endpoints == ()
    other.apply(prune=True)
    assert world.score("remote-ep").status == 200


def test_an_endpoint_made_before_repositories_were_recorded_stays_its_own_and_anyones(
    docker_worlds: WorldFactory,
) -> None:
    """The upgrade: containers and volume of an earlier version carry no repository label
    (Docker cannot add one without recreating them). Its repository plans nothing for it
    (nothing is recreated for the label), reads its keys and logs; another repository that
    kept the target's name still sees and prunes it, as before (README)."""
    from reconciler.targets.docker.target import DockerTarget

    world = docker_worlds("earlier")
    world.target = DockerTarget(world.options, repo_root=world.repo.root, repository=None)
    world.serve("old-ep")

    def made() -> dict[str, dict[str, str]]:
        label = [f"reconciler.target={world.options.name}", "reconciler.endpoint=old-ep"]
        found = world.client.containers.list(all=True, filters={"label": label})
        return {c.id: c.labels for c in found}

    before = made()
    assert len(before) >= 3  # router, state holder, an instance
    assert all("reconciler.repository" not in labels for labels in before.values())
    world.target = world.new_target()
    assert world.target.repository is not None
    assert world.plan().steps == ()
    world.apply()
    assert made().keys() == before.keys()
    assert world.key("old-ep")
    assert "==>" in world.target.logs("old-ep", "blue")
    other = docker_worlds("stranger", name=world.options.name, state_dir=world.options.state_dir)
    other.basics()
    other.repo.commit("nothing")
    assert [e.name for e in other.target.observe().endpoints] == ["old-ep"]
    other.apply(prune=True)
    assert made() == {}


def test_an_endpoint_made_before_repositories_were_recorded_is_its_own_once_changed(
    docker_worlds: WorldFactory,
) -> None:
    """Its state volume can never get the label; the instances its repository's next change
    makes carry it, and from then on another repository that kept the target's name neither
    sees nor prunes the endpoint (its volume alone said anyone's for ever)."""
    from reconciler.targets.docker.target import DockerTarget

    world = docker_worlds("earlier")
    world.target = DockerTarget(world.options, repo_root=world.repo.root, repository=None)
    world.serve("old-ep")
    world.target = world.new_target()
    world.code("src", "2")
    world.repo.commit("v2, after the upgrade")
    assert [str(s.action) for s in world.plan().steps] == [Action.UPDATE_DEPLOYMENT]
    world.apply()
    other = docker_worlds("stranger", name=world.options.name, state_dir=world.options.state_dir)
    other.basics()
    other.repo.commit("nothing")
    live = other.target.observe()
    assert live.endpoints == ()
    assert any("old-ep" in w.message and "another repository" in w.message for w in live.warnings)
    other.apply(prune=True)
    assert world.score("old-ep").version == "2"
    # Nor do the command line's fast paths (invoke's and credentials' engine reader) give
    # its keys to the other repository.
    shown = CliRunner().invoke(main, ["credentials", "old-ep", *_cli_target(other)])
    assert shown.exit_code == 1 and "endpoint old-ep does not exist" in shown.output, shown.output
    assert world.key("old-ep") not in shown.output
    # Its own repository still sees and changes it.
    assert [e.name for e in world.new_target().observe().endpoints] == ["old-ep"]


def test_images_built_under_another_spelling_of_this_repository_are_its_own_to_collect(
    docker_engine: Any, tmp_path: Path
) -> None:
    """Image retention tells whose a build is as ownership does (targets/ownership.py):
    a clone URL in other case, and this checkout before it had a remote, built this
    repository's images; another repository's are never considered."""
    import io
    import uuid

    from reconciler.images import retention as r
    from reconciler.targets.docker.imagegc import target_images

    target = f"gc-{uuid.uuid4().hex[:10]}"
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    built: dict[str, str] = {}
    try:
        for owner in ("GitHub.com/Org/Models", f"path:{checkout}", "github.com/org/other"):
            labels = {
                r.MANAGED_BY: r.MANAGER,
                r.TARGET_LABEL: target,
                r.KIND_LABEL: "deployment",
                r.BUILT_FOR_REPOSITORY: owner,
            }
            dockerfile = io.BytesIO(b"FROM scratch\nLABEL reconciler.test=owner\n")
            image, _ = docker_engine.images.build(
                fileobj=dockerfile,
                labels=labels,
                tag=f"reconciler-app:{target}-{len(built)}",
                rm=True,  # the SDK keeps intermediate containers unless told
                forcerm=True,
            )
            built[owner] = image.id
        by_url = target_images(docker_engine, target=target, repository="github.com/org/models")
        assert {i.id for i in by_url} == {built["GitHub.com/Org/Models"]}
        found = target_images(
            docker_engine, target=target, repository="github.com/org/models", checkout=checkout
        )
        assert {i.id for i in found} == {built["GitHub.com/Org/Models"], built[f"path:{checkout}"]}
        elsewhere = target_images(
            docker_engine,
            target=target,
            repository="github.com/org/models",
            checkout=tmp_path / "elsewhere",
        )
        assert {i.id for i in elsewhere} == {built["GitHub.com/Org/Models"]}
    finally:
        for n in range(len(built)):
            docker_engine.images.remove(f"reconciler-app:{target}-{n}", force=True)
