"""The status target and `reconcile status` in CI clones: the daemon pushed the status
branch to a real bare remote; fresh clones (full, single-branch, shallow) read it from
origin, fetching it when the clone lacks it, and say so when there is none at all."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from repo_builder import RepoBuilder

from reconciler.cli import main
from reconciler.engine import run_pass
from reconciler.gitsource import DEFAULT_STATUS_BRANCH, GitSource, RemoteCheckout
from reconciler.targets.memory import MemoryTarget

NO_STATUS = (
    f"no status found on branch {DEFAULT_STATUS_BRANCH} (local or origin): "
    "planning as if the target were empty"
)


def git(path: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def blue_green(repo: RepoBuilder, *, blue: int = 90, green: int = 10) -> None:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": blue, "green": green})
    repo.deployment("my-endpoint", "blue")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")


@pytest.fixture
def remote(repo: RepoBuilder, tmp_path: Path) -> Path:
    """A bare remote holding main (a blue/green endpoint), no status branch yet."""
    blue_green(repo)
    repo.commit("blue and green")
    for n in range(3):  # history a shallow clone leaves out
        repo.write("README.md", f"notes {n}\n")
        repo.commit(f"docs {n}")
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    repo.git("push", "-q", str(bare), "main:main")
    return bare


def daemon_pass(remote: Path, cache: Path, target: MemoryTarget) -> str:
    """What `reconcile watch --url` does in one pass: fetch, apply, commit status, push."""
    checkout = RemoteCheckout(remote.as_uri(), branch="main", cache_dir=cache)
    commit = checkout.fetch()
    result = run_pass(
        checkout.tree(commit),
        target,
        prune=False,
        dry_run=False,
        revision=commit,
        write_status=lambda files, message: checkout.write_status(files, message=message),
    )
    assert not result.failed, result.results
    checkout.push_status()
    return commit


def clone(remote: Path, dest: Path, *options: str) -> Path:
    # file:// (not a plain path): a local clone ignores --depth.
    subprocess.run(
        ["git", "clone", "-q", *options, "--branch", "main", remote.as_uri(), str(dest)],
        check=True,
        capture_output=True,
    )
    return dest


def dry_run(path: Path, output: str = "json") -> Result:
    return CliRunner().invoke(
        main, ["--repo", str(path), "--dry-run", "--target", "status", "--output", output]
    )


CLONES = {
    "full": ("--no-local",),
    "single-branch": ("--no-local", "--single-branch"),
    "shallow": ("--depth", "1"),
}


@pytest.mark.parametrize("options", CLONES.values(), ids=CLONES.keys())
def test_a_fresh_clone_plans_against_the_status_the_daemon_pushed(
    remote: Path, tmp_path: Path, options: tuple[str, ...]
) -> None:
    commit = daemon_pass(remote, tmp_path / "cache", MemoryTarget())
    path = clone(remote, tmp_path / "ci", *options)
    assert git(path, "rev-parse", "HEAD") == commit

    result = dry_run(path)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["steps"] == []
    assert printed["warnings"] == []

    status = CliRunner().invoke(main, ["status", "--repo", str(path)])
    assert status.exit_code == 0, status.output
    assert "my-endpoint: Succeeded" in status.output
    assert "blue 90%" in status.output
    if "--depth" in options:  # still shallow: only the status branch's tip was fetched
        assert git(path, "rev-parse", "--is-shallow-repository") == "true"


def test_a_shallow_clone_plans_only_what_its_pull_request_changes(
    remote: Path, repo: RepoBuilder, tmp_path: Path
) -> None:
    daemon_pass(remote, tmp_path / "cache", MemoryTarget())
    repo.git("checkout", "-q", "-b", "feature")
    repo.endpoint("my-endpoint", traffic={"blue": 60, "green": 40})
    repo.commit("move traffic")
    repo.git("push", "-q", str(remote), "feature:feature")
    path = tmp_path / "ci"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", "--branch", "feature", remote.as_uri(), str(path)],
        check=True,
        capture_output=True,
    )
    result = dry_run(path)
    assert result.exit_code == 2, result.output
    steps = json.loads(result.stdout)["steps"]
    assert [s["action"] for s in steps] == ["set_traffic"]


def test_no_status_anywhere_is_a_warning_in_every_output(remote: Path, tmp_path: Path) -> None:
    path = clone(remote, tmp_path / "ci", "--depth", "1")
    result = dry_run(path)
    assert result.exit_code == 2, result.output
    printed = json.loads(result.stdout)
    assert "create_endpoint" in [s["action"] for s in printed["steps"]]
    assert NO_STATUS in [w["message"] for w in printed["warnings"]]
    for output in ("text", "markdown"):
        shown = dry_run(path, output)
        assert shown.exit_code == 2, shown.output
        assert NO_STATUS in shown.stdout

    status = CliRunner().invoke(main, ["status", "--repo", str(path)])
    assert status.exit_code == 1
    assert f"no status found on branch {DEFAULT_STATUS_BRANCH} (local or origin)" in status.output


def test_a_clone_without_a_remote_warns_too(repo: RepoBuilder) -> None:
    blue_green(repo)
    repo.commit("blue and green")
    result = dry_run(repo.root)
    assert result.exit_code == 2, result.output
    assert NO_STATUS in [w["message"] for w in json.loads(result.stdout)["warnings"]]


def test_the_newer_of_local_and_origin_status_wins(
    remote: Path, repo: RepoBuilder, tmp_path: Path
) -> None:
    target = MemoryTarget()
    daemon_pass(remote, tmp_path / "cache", target)
    path = clone(remote, tmp_path / "ci", "--no-local")
    # A local branch made from origin's, then the daemon moves on: origin fast-forwards it.
    git(path, "branch", DEFAULT_STATUS_BRANCH, f"origin/{DEFAULT_STATUS_BRANCH}")
    repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 50})
    repo.commit("50/50")
    repo.git("push", "-q", str(remote), "main:main")
    daemon_pass(remote, tmp_path / "cache", target)
    git(path, "fetch", "-q", "origin")
    git(path, "merge", "-q", "--ff-only", "origin/main")
    source = GitSource(path)
    found = source.find_status(DEFAULT_STATUS_BRANCH)
    assert found.ref == f"refs/remotes/origin/{DEFAULT_STATUS_BRANCH}"
    assert "blue: 50" in found.files["status/my-endpoint.yaml"]
    result = dry_run(path)
    assert result.exit_code == 0, result.output

    # A local daemon's newer status, not pushed: the local branch contains origin's.
    git(path, "branch", "-f", DEFAULT_STATUS_BRANCH, f"origin/{DEFAULT_STATUS_BRANCH}")
    user = RepoBuilder(path)  # the CI clone, edited as a user would
    user.endpoint("my-endpoint", traffic={"blue": 30, "green": 70})
    commit = user.commit("30/70")
    run_pass(
        source.tree(commit),
        MemoryTarget.from_state(target.observe()),
        prune=False,
        dry_run=False,
        revision=commit,
        write_status=lambda files, message: source.write_status(files, message=message),
    )
    found = source.find_status(DEFAULT_STATUS_BRANCH)
    assert found.ref == f"refs/heads/{DEFAULT_STATUS_BRANCH}"
    assert "blue: 30" in found.files["status/my-endpoint.yaml"]


def test_a_remote_that_cannot_be_read_is_named_in_the_warning(remote: Path, tmp_path: Path) -> None:
    daemon_pass(remote, tmp_path / "cache", MemoryTarget())
    path = clone(remote, tmp_path / "ci", "--depth", "1")
    git(path, "remote", "set-url", "origin", str(tmp_path / "moved-away.git"))
    result = dry_run(path)
    assert result.exit_code == 2, result.output
    [warning] = json.loads(result.stdout)["warnings"]
    assert warning["message"].startswith(NO_STATUS)
    assert "cannot fetch reconcile-status from origin: fatal:" in warning["message"]
    assert "does not appear to be a git repository" in warning["message"]


@pytest.mark.parametrize(("offset", "wins"), [(3600, "local"), (-3600, "origin")])
def test_diverged_local_and_origin_status_the_later_commit_wins(
    remote: Path, tmp_path: Path, offset: int, wins: str
) -> None:
    daemon_pass(remote, tmp_path / "cache", MemoryTarget())
    path = clone(remote, tmp_path / "ci", "--no-local")
    origin_tip = git(path, "rev-parse", f"origin/{DEFAULT_STATUS_BRANCH}")
    when = int(git(path, "log", "-1", "--format=%ct", origin_tip)) + offset
    # A local status branch of its own history (another daemon's), an hour apart.
    text = git(path, "show", f"{origin_tip}:status/my-endpoint.yaml").replace(
        "blue: 90", "blue: 30"
    )
    blob = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"],
        cwd=path,
        input=text,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    inner = subprocess.run(
        ["git", "mktree"],
        cwd=path,
        input=f"100644 blob {blob}\tmy-endpoint.yaml\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = subprocess.run(
        ["git", "mktree"],
        cwd=path,
        input=f"040000 tree {inner}\tstatus\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
        "GIT_COMMITTER_DATE": f"{when} +0000",
        "GIT_AUTHOR_DATE": f"{when} +0000",
        "PATH": os.environ["PATH"],
    }
    local = subprocess.run(
        ["git", "commit-tree", tree, "-m", "other daemon"],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    git(path, "update-ref", f"refs/heads/{DEFAULT_STATUS_BRANCH}", local)
    found = GitSource(path).find_status(DEFAULT_STATUS_BRANCH)
    assert found.commit == (local if wins == "local" else origin_tip)
    blue = "blue: 30" if wins == "local" else "blue: 90"
    assert blue in found.files["status/my-endpoint.yaml"]
