"""Secret references on the real Docker Engine: connections set with the CLI (stdin),
resolved into the instance's environment only, never into labels, the router, status or
plans; a missing connection warns at dry-run and fails its deployment alone; a changed one
rolls the deployments that take it (a keyed digest of the values on each instance).

Scoring scripts answer a SHA-256 of the secret they see, never the secret: a failing
assertion prints no secret either."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from typing import TYPE_CHECKING, Any

import docker.errors
import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.engine import plan_pass
from reconciler.gitsource import GitSource
from reconciler.model.plan import Action
from reconciler.model.results import Outcome

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

pytest_plugins = ("docker_target_fixtures",)
pytestmark = [pytest.mark.docker, pytest.mark.slow]

# API_KEY as a SHA-256 (None when unset); the others as they are (not secret).
ENV_SCORE = """\
import hashlib
import os


def init():
    pass


def run(raw_data):
    key = os.environ.get("API_KEY")
    return {
        "API_KEY": hashlib.sha256(key.encode()).hexdigest() if key is not None else None,
        "API_URL": os.environ.get("API_URL"),
        "PLAIN": os.environ.get("PLAIN"),
    }
"""
KEY_REF = "${{azureml://connections/openai/credentials/api-key}}"
URL_REF = "${{azureml://connections/openai/target}}"
SECRET = "s3cr3t-Value-9f2c1"
NEW_SECRET = "n3w-s3cr3t-77ab0"
URL = "https://openai.example.test/"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def set_connection(world: DockerWorld, repo: list[str], *args: str, value: str) -> None:
    """`reconcile connection set openai ARGS` with `value` on stdin, as a user types it."""
    done = CliRunner().invoke(main, ["connection", "set", "openai", *repo, *args], input=value)
    assert done.exit_code == 0, done.output
    assert value not in done.output


def cli_repo(world: DockerWorld) -> list[str]:
    """reconciler.yaml naming this world's target; the CLI's --repo arguments."""
    name = world.options.name
    settings = {
        "type": "docker",
        "state_dir": str(world.options.state_dir),
        "router_port_range": list(world.options.router_port_range),
        "drain_s": world.options.drain_s,
    }
    world.repo.write(
        "reconciler.yaml",
        yaml.safe_dump({"targets": {name: settings}, "default_target": name}),
    )
    return ["--repo", str(world.repo.root)]


def everything_docker_shows(world: DockerWorld) -> str:
    """Labels of every container, network and volume of the target, and the router's and
    holders' full `docker inspect`, as one text."""
    label = f"reconciler.target={world.options.name}"
    texts: list[Any] = []
    for container in world.client.containers.list(
        all=True, filters={"label": label}, ignore_removed=True
    ):
        texts.append(container.labels)
        if container.labels.get("reconciler.role") != "instance":
            texts.append(container.attrs)
    for volume in world.client.volumes.list(filters={"label": label}):
        texts.append(volume.attrs)
    for network in world.client.networks.list(filters={"label": label}):
        texts.append(network.attrs)
    return json.dumps(texts)


def test_a_secret_reaches_the_instance_only_and_a_missing_one_fails_its_deployment_alone(
    docker_world: DockerWorld,
) -> None:
    world = docker_world
    world.basics()
    world.code("src", "1")
    world.repo.write("secret-src/score.py", ENV_SCORE)
    world.repo.endpoint("sec-ep", traffic={"blue": 100})
    world.repo.deployment(
        "sec-ep",
        "blue",
        code="../../secret-src",
        environment_variables={"API_KEY": KEY_REF, "API_URL": URL_REF, "PLAIN": "plain"},
    )
    world.repo.endpoint("plain-ep", traffic={"blue": 100})
    world.repo.deployment("plain-ep", "blue", code="../../src")
    repo = cli_repo(world)
    world.repo.commit("a deployment referencing a connection the target lacks")
    runner = CliRunner()

    # Dry-run: the missing connection is a warning naming file, field and the command.
    planned = runner.invoke(main, [*repo, "--dry-run", "--output", "json"])
    assert planned.exit_code == 2, planned.output
    plan = json.loads(planned.stdout)
    warned = [w for w in plan["warnings"] if w["field"] == "environment_variables.API_KEY"]
    assert len(warned) == 1, plan["warnings"]
    assert warned[0]["file"] == "endpoints/sec-ep/blue.yml"
    assert "connection openai" in warned[0]["message"]
    assert "reconcile connection set openai" in warned[0]["message"]

    # Apply: that deployment fails, named; the other endpoint of the commit is created.
    result = world.apply(ok=False)
    failed = [r for r in result.results if r.outcome == Outcome.FAILED]
    assert len(failed) == 1, result.results
    step = result.plan.steps[failed[0].index]
    assert (step.action, step.endpoint, step.deployment) == (
        Action.CREATE_DEPLOYMENT,
        "sec-ep",
        "blue",
    )
    assert "connection openai" in failed[0].message, failed[0].message
    assert "--credential api-key" in failed[0].message
    assert world.containers("sec-ep") == []
    assert world.score("plain-ep").status == 200

    # The connection, set with the CLI: the value from stdin, never on the command line.
    name = world.options.name
    shown = runner.invoke(
        main,
        ["connection", "set", "openai", *repo, "--target-url", URL, "--credential", "api-key"],
        input=SECRET + "\n",
    )
    assert shown.exit_code == 0, shown.output
    assert SECRET not in shown.output
    listed = runner.invoke(main, ["connection", "list", *repo, "--output", "json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [
        {"name": "openai", "target": URL, "credentials": ["api-key"], "metadata": []}
    ]
    assert SECRET not in listed.output
    # Kept in the target's own volume, behind a holder that never runs, file mode 0600.
    holder = world.client.containers.get(f"rcl-{name}-connections")
    assert holder.status == "created"
    assert holder.labels["reconciler.role"] == "connections"
    stream, _ = holder.get_archive("/etc/reconciler-router/connections/openai.json")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
        (member,) = archive.getmembers()
        assert member.mode & 0o777 == 0o600
    # More keys from a file and metadata on the command line: the stdin one is kept.
    extra = world.repo.root.parent / "other-key.txt"
    extra.write_text("from-a-file\n")
    more = ["--credential-file", f"other={extra}", "--metadata", "ApiVersion=2024-02-01"]
    added = runner.invoke(main, ["connection", "set", "openai", *repo, *more])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(main, ["connection", "list", *repo, "--output", "json"])
    assert json.loads(listed.stdout) == [
        {
            "name": "openai",
            "target": URL,
            "credentials": ["api-key", "other"],
            "metadata": ["ApiVersion"],
        }
    ]
    bad = runner.invoke(main, ["connection", "set", "a/b", *repo, "--target-url", URL])
    assert bad.exit_code == 1 and "connection name 'a/b' is not valid" in bad.output
    # Two values from one stdin would be ambiguous: refused.
    refused = runner.invoke(
        main,
        ["connection", "set", "openai", *repo, "--credential", "a", "--credential", "b"],
        input="x\n",
    )
    assert refused.exit_code == 1 and "only one --credential" in refused.output

    planned = runner.invoke(main, [*repo, "--dry-run", "--output", "json"])
    assert planned.exit_code == 2, planned.output
    assert not [w for w in json.loads(planned.stdout)["warnings"] if "openai" in w["message"]]
    assert SECRET not in planned.stdout
    # (a create step names the deployment; it carries no variables, resolved or not)

    result = world.apply()
    answer = world.score("sec-ep")
    assert answer.status == 200, answer
    assert answer.body == {"API_KEY": sha(SECRET), "API_URL": URL, "PLAIN": "plain"}

    # Nowhere but in the instance's environment: not in labels (the instance's spec label
    # holds the reference), the router's or a holder's inspect, status or the plan.
    shown_by_docker = everything_docker_shows(world)
    assert SECRET not in shown_by_docker
    assert KEY_REF in shown_by_docker
    (instance,) = world.containers("sec-ep", "blue")
    given = [sha(v) for v in instance.attrs["Config"]["Env"] if v.startswith("API_KEY=")]
    assert given == [sha(f"API_KEY={SECRET}")]
    status = json.dumps(result.status)
    assert SECRET not in status
    assert SECRET not in json.dumps([str(s) for s in result.plan.steps])
    tree = GitSource(world.repo.root)
    plan_now, _ = plan_pass(
        tree.tree(tree.resolve("HEAD")), world.target.observe(), prune=False, target=world.target
    )
    assert plan_now.steps == () and not plan_now.warnings

    deleted = runner.invoke(main, ["connection", "delete", "openai", *repo])
    assert deleted.exit_code == 0, deleted.output
    listed = runner.invoke(main, ["connection", "list", *repo, "--output", "json"])
    assert json.loads(listed.stdout) == []
    assert name in deleted.output


def test_a_changed_connection_rolls_the_deployment_taking_it_with_no_request_lost(
    docker_world: DockerWorld,
) -> None:
    """As Kubernetes with a secret-hash annotation: a new value of a connection is a change
    of each deployment that takes that value, shown by --dry-run with its reason and
    rolled by apply; a deployment taking another value of the connection stays."""
    world = docker_world
    world.basics()
    world.repo.write("secret-src/score.py", ENV_SCORE)
    world.repo.endpoint("roll-ep", traffic={"blue": 100})
    world.repo.deployment(
        "roll-ep",
        "blue",
        code="../../secret-src",
        environment_variables={"API_KEY": KEY_REF, "API_URL": URL_REF},
    )
    world.repo.deployment(
        "roll-ep", "green", code="../../secret-src", environment_variables={"API_URL": URL_REF}
    )
    repo = cli_repo(world)
    world.repo.commit("blue takes the key and the URL of openai, green the URL only")
    set_connection(world, repo, "--target-url", URL, "--credential", "api-key", value=SECRET)
    world.apply()
    assert world.score("roll-ep").body["API_KEY"] == sha(SECRET)
    (old_blue,) = world.containers("roll-ep", "blue")
    (green,) = world.containers("roll-ep", "green")
    # The instance records a keyed digest of what it was given, never the value or a
    # plain hash of it.
    recorded = json.loads(old_blue.labels["reconciler.connections"])
    assert list(recorded) == ["openai"] and len(recorded["openai"]) == 64
    assert recorded["openai"] not in (sha(SECRET), sha(URL))

    set_connection(world, repo, "--credential", "api-key", value=NEW_SECRET)
    runner = CliRunner()
    planned = runner.invoke(main, [*repo, "--dry-run", "--output", "json"])
    assert planned.exit_code == 2, planned.output
    (step,) = json.loads(planned.stdout)["steps"]
    assert (step["action"], step["endpoint"], step["deployment"]) == (
        "update_deployment",
        "roll-ep",
        "blue",
    )
    assert step["reason"].startswith("connection openai changed: rolling update"), step
    (change,) = step["changes"]
    assert change["path"] == "connections.openai"
    assert change["from"] == f"hmac-sha256:{recorded['openai'][:16]}"
    assert change["to"].startswith("hmac-sha256:") and change["to"] != change["from"]
    text = runner.invoke(main, [*repo, "--dry-run"])
    assert "update_deployment roll-ep/blue" in text.output, text.output
    assert "connection openai changed" in text.output
    assert world.score("roll-ep").body["API_KEY"] == sha(SECRET)  # the dry-run changed nothing

    # Apply, as `reconcile` runs it (status written to the status branch), under load.
    with world.load("roll-ep") as load:
        applied = runner.invoke(main, repo)
    assert applied.exit_code == 0, applied.output
    assert load.answers and not load.failures, load.failures[:5]
    (new_blue,) = world.containers("roll-ep", "blue")
    assert new_blue.id != old_blue.id
    with pytest.raises(docker.errors.NotFound):
        world.client.containers.get(old_blue.id)
    assert world.score("roll-ep").body["API_KEY"] == sha(NEW_SECRET)
    assert world.score_inside(new_blue)["API_KEY"] == sha(NEW_SECRET)
    assert [c.id for c in world.containers("roll-ep", "green")] == [green.id]
    planned = runner.invoke(main, [*repo, "--dry-run", "--output", "json"])
    assert planned.exit_code == 0 and json.loads(planned.stdout)["steps"] == [], planned.output

    # No value, and no plain hash of one, in labels, inspect, status, plans or output.
    status = subprocess.run(
        ["git", "-C", str(world.repo.root), "show", "reconcile-status:status/roll-ep.yaml"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "deployments:" in status
    shown = everything_docker_shows(world) + status + applied.output + text.output
    for secret in (SECRET, NEW_SECRET):
        assert secret not in shown and sha(secret) not in shown
