"""The engine on real git repositories: a pass applied to the in-memory target writes its
status to the status branch, and `reconcile --dry-run --target status` plans from it."""

from __future__ import annotations

import json
import time

import yaml
from click.testing import CliRunner
from repo_builder import RepoBuilder
from status_fixtures import apply_head

from reconciler.cli import main
from reconciler.engine import run_pass
from reconciler.gitsource import DEFAULT_STATUS_BRANCH, GitSource
from reconciler.targets.memory import MemoryTarget


def _blue_green(repo: RepoBuilder) -> None:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": 90, "green": 10})
    repo.deployment("my-endpoint", "blue")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")


def test_a_pass_writes_one_status_file_per_endpoint_without_secrets(repo: RepoBuilder) -> None:
    _blue_green(repo)
    commit = repo.commit("blue and green")
    source = apply_head(repo, MemoryTarget())
    status_commit, files = source.read_status()
    assert status_commit is not None
    doc = yaml.safe_load(files["status/my-endpoint.yaml"])
    assert doc["commit"] == commit
    assert doc["traffic"] == {"blue": 90, "green": 10}
    assert doc["deployments"]["blue"]["provisioning_state"] == "Succeeded"
    assert doc["deployments"]["green"]["ready_instances"] == 1
    assert doc["deployments"]["blue"]["spec_digest"].startswith("sha256:")
    assert "key" not in json.dumps(doc["deployments"]).lower().replace("sklearn", "")
    # The working tree and the checked-out branch are untouched by the status commit.
    assert repo.git("status", "--porcelain") == ""
    assert repo.git("rev-parse", "HEAD") == commit


def test_an_unchanged_pass_makes_no_status_commit(repo: RepoBuilder) -> None:
    _blue_green(repo)
    repo.commit("blue and green")
    target = MemoryTarget()
    apply_head(repo, target)
    first = repo.git("rev-parse", DEFAULT_STATUS_BRANCH)
    apply_head(repo, target)
    assert repo.git("rev-parse", DEFAULT_STATUS_BRANCH) == first


def test_dry_run_against_the_status_branch_shows_field_changes(repo: RepoBuilder) -> None:
    _blue_green(repo)
    repo.commit("blue and green")
    apply_head(repo, MemoryTarget())
    repo.deployment("my-endpoint", "blue", instance_count=3)
    repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 50})
    repo.commit("scale blue, move traffic")

    result = CliRunner().invoke(
        main, ["--repo", str(repo.root), "--dry-run", "--target", "status", "--output", "json"]
    )
    assert result.exit_code == 2, result.output
    steps = json.loads(result.output)["steps"]
    assert [(s["action"], s["deployment"]) for s in steps] == [
        ("scale_deployment", "blue"),
        ("set_traffic", None),
    ]
    assert {"path": "instance_count", "from": 1, "to": 3} in steps[0]["changes"]


def test_dry_run_with_status_of_the_same_commit_plans_nothing(repo: RepoBuilder) -> None:
    _blue_green(repo)
    repo.commit("blue and green")
    apply_head(repo, MemoryTarget())
    result = CliRunner().invoke(main, ["--repo", str(repo.root), "--dry-run", "--target", "status"])
    assert result.exit_code == 0, result.output
    assert "No changes" in result.output


def test_status_command_reads_the_branch(repo: RepoBuilder) -> None:
    _blue_green(repo)
    repo.commit("blue and green")
    apply_head(repo, MemoryTarget())
    result = CliRunner().invoke(main, ["status", "--repo", str(repo.root)])
    assert result.exit_code == 0, result.output
    assert "my-endpoint: Succeeded" in result.output
    assert "blue 90%" in result.output


def test_an_invalid_commit_changes_nothing_and_records_its_errors(repo: RepoBuilder) -> None:
    _blue_green(repo)
    repo.commit("blue and green")
    target = MemoryTarget()
    source = apply_head(repo, target)
    before = target.observe()
    repo.deployment("my-endpoint", "blue", instance_cout=3)  # a typo
    bad = repo.commit("typo")
    result = run_pass(
        source.tree(bad),
        target,
        prune=True,
        dry_run=False,
        revision=bad,
        write_status=lambda files, message: source.write_status(files, message=message),
    )
    assert result.plan.errors and not result.plan.steps
    assert target.observe() == before
    _, files = source.read_status()
    doc = yaml.safe_load(files["status/my-endpoint.yaml"])
    assert doc["commit"] == bad
    assert doc["traffic"] == {"blue": 90, "green": 10}  # still serving as before
    assert any(e["field"].endswith("instance_cout") for e in doc["errors"])


class StopAfter:
    """should_stop as SIGTERM makes it: false for the first `steps` steps, then true."""

    def __init__(self, steps: int) -> None:
        self.left = steps

    def __call__(self) -> bool:
        self.left -= 1
        return self.left < 0


def test_a_pass_stopped_before_its_last_step_says_what_is_left_undone(
    repo: RepoBuilder,
) -> None:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": 100, "green": 0}, mirror={"green": 10})
    repo.deployment("my-endpoint", "blue")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")
    commit = repo.commit("blue serves, green mirrored")
    source = GitSource(repo.root)
    target = MemoryTarget()

    def write(files: object, message: str) -> None:
        source.write_status(files, message=message)  # type: ignore[arg-type]

    result = run_pass(
        source.tree(commit),
        target,
        prune=False,
        dry_run=False,
        revision=commit,
        write_status=write,
        should_stop=StopAfter(4),
    )
    actions = [str(s.action) for s in result.plan.steps]
    assert actions[-2:] == ["set_mirror_traffic", "set_traffic"]
    assert [str(r.outcome) for r in result.results][-1] == "skipped"
    _, files = source.read_status()
    doc = yaml.safe_load(files["status/my-endpoint.yaml"])
    assert doc["provisioning_state"] == "Updating"
    assert doc["pending_steps"] == [
        {
            "action": "set_traffic",
            "deployment": None,
            "why": "skipped: the reconciler is stopping",
        }
    ]
    shown = CliRunner().invoke(main, ["status", "--repo", str(repo.root)])
    assert shown.exit_code == 0, shown.output
    assert "my-endpoint: Updating" in shown.output
    assert "left undone: set_traffic my-endpoint" in shown.output

    # The next pass finishes the job, and status says so.
    run_pass(
        source.tree(commit),
        target,
        prune=False,
        dry_run=False,
        revision=commit,
        write_status=write,
    )
    _, files = source.read_status()
    doc = yaml.safe_load(files["status/my-endpoint.yaml"])
    assert doc["provisioning_state"] == "Succeeded"
    assert doc["pending_steps"] == []
    assert doc["traffic"] == {"blue": 100}
    assert doc["mirror_traffic"] == {"green": 10}


class SlowCreate(MemoryTarget):
    """Creating a deployment takes a while (an image build)."""

    def apply(self, step, *, progress=None):  # type: ignore[no-untyped-def]
        if step.action == "create_deployment":
            time.sleep(0.6)
        return super().apply(step, progress=progress)


def test_a_long_step_is_in_status_while_it_runs_and_a_quiet_pass_commits_nothing(
    repo: RepoBuilder,
) -> None:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue")
    source = GitSource(repo.root)
    target = SlowCreate()

    def write(files: object, message: str) -> None:
        source.write_status(files, message=message)  # type: ignore[arg-type]

    def one_pass(commit: str) -> None:
        run_pass(
            source.tree(commit),
            target,
            prune=False,
            dry_run=False,
            revision=commit,
            write_status=write,
            status_delay_s=0.2,
        )

    one_pass(repo.commit("blue"))
    before = repo.git("rev-list", DEFAULT_STATUS_BRANCH).split()
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")
    commit = repo.commit("green")
    one_pass(commit)
    history = repo.git("rev-list", DEFAULT_STATUS_BRANCH).split()
    assert len(history) == len(before) + 2  # written while green's creation ran, and at the end
    running = yaml.safe_load(repo.git("show", f"{history[1]}:status/my-endpoint.yaml"))
    assert running["provisioning_state"] == "Updating"
    assert running["in_progress_steps"] == [
        {
            "action": "create_deployment",
            "deployment": "green",
            "progress": running["in_progress_steps"][0]["progress"],
        }
    ]
    assert running["in_progress_steps"][0]["progress"].startswith("running: new deployment")
    done = yaml.safe_load(repo.git("show", f"{history[0]}:status/my-endpoint.yaml"))
    assert done["provisioning_state"] == "Succeeded"
    assert "in_progress_steps" not in done
    one_pass(commit)  # nothing to do: nothing written
    assert repo.git("rev-list", DEFAULT_STATUS_BRANCH).split() == history
