"""`reconcile diff` in a CI clone that lacks the base: it fetches it, or says how to."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main
from reconciler.gitsource import GitSource


@pytest.fixture
def origin(repo: RepoBuilder) -> RepoBuilder:
    """main with a blue/green endpoint; branch `feature` moves 30 points of traffic."""
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": 90, "green": 10})
    repo.deployment("my-endpoint", "blue")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")
    repo.commit("base")
    for n in range(3):  # history below the base that a shallow clone leaves out
        repo.write("README.md", f"notes {n}\n")
        repo.commit(f"docs {n}")
    repo.git("checkout", "-q", "-b", "feature")
    repo.endpoint("my-endpoint", traffic={"blue": 60, "green": 40})
    repo.commit("move traffic")
    repo.git("checkout", "-q", "main")
    return repo


def clone(origin: RepoBuilder, dest: Path, *options: str) -> Path:
    subprocess.run(
        ["git", "clone", "-q", *options, "--branch", "feature", origin.root.as_uri(), str(dest)],
        check=True,
        capture_output=True,
    )
    return dest


def git(path: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def diff(path: Path, base: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["diff", "--base", base, "--repo", str(path), "--output", "json"]
    )
    return result.exit_code, result.output


def test_a_shallow_clone_fetches_the_base_branch(origin: RepoBuilder, tmp_path: Path) -> None:
    path = clone(origin, tmp_path / "ci", "--depth", "1")
    assert git(path, "rev-parse", "--is-shallow-repository") == "true"
    code, printed = diff(path, "origin/main")
    assert code == 2, printed
    steps = json.loads(printed)["steps"]
    assert [(s["action"], s["changes"][0]["to"]) for s in steps] == [("set_traffic", 60)]
    # The base branch is now there under its usual name, and the clone is still shallow.
    assert git(path, "rev-parse", "origin/main") == origin.git("rev-parse", "main")
    assert git(path, "rev-parse", "--is-shallow-repository") == "true"


def test_a_branch_name_is_fetched_from_origin(origin: RepoBuilder, tmp_path: Path) -> None:
    path = clone(origin, tmp_path / "ci", "--depth", "1")
    code, printed = diff(path, "main")
    assert code == 2, printed


def test_a_complete_clone_stays_complete(origin: RepoBuilder, tmp_path: Path) -> None:
    path = clone(origin, tmp_path / "ci", "--single-branch")
    code, printed = diff(path, "origin/main")
    assert code == 2, printed
    assert git(path, "rev-parse", "--is-shallow-repository") == "false"


def test_a_base_that_cannot_be_fetched_is_a_clear_error(
    origin: RepoBuilder, tmp_path: Path
) -> None:
    path = clone(origin, tmp_path / "ci", "--depth", "1")
    code, printed = diff(path, "origin/no-such-branch")
    assert code == 1
    assert "cannot find BASE 'origin/no-such-branch'" in printed
    assert "fetch it with `git fetch origin no-such-branch`" in printed
    assert "Traceback" not in printed


def test_a_repository_without_a_remote_says_so(origin: RepoBuilder) -> None:
    code, printed = diff(origin.root, "origin/main")
    assert code == 1
    assert "no remote to fetch it from" in printed


def test_first_parent_history_knows_where_it_is_cut(origin: RepoBuilder, tmp_path: Path) -> None:
    full = GitSource(origin.root)
    commits, complete = full.first_parent_log("main")
    assert (len(commits), complete) == (4, True)
    assert commits[0][0] == origin.git("rev-parse", "main")
    assert full.first_parent_log("main", limit=2)[1] is False
    shallow = GitSource(clone(origin, tmp_path / "ci", "--depth", "1"))
    commits, complete = shallow.first_parent_log("HEAD")
    assert (len(commits), complete) == (1, False)


def test_a_base_that_cannot_be_fetched_shows_all_git_said(
    origin: RepoBuilder, tmp_path: Path
) -> None:
    path = clone(origin, tmp_path / "ci", "--depth", "1")
    missing = tmp_path / "moved-away.git"
    git(path, "remote", "set-url", "origin", str(missing))
    code, printed = diff(path, "origin/main")
    assert code == 1
    # The line that says what went wrong, not only git's closing advice.
    assert f"fatal: '{missing}' does not appear to be a git repository" in printed
    assert "Could not read from remote repository." in printed
    assert "and the repository exists." in printed
    assert "fetch it with `git fetch origin main`" in printed
    assert "Traceback" not in printed


def test_a_token_in_the_remote_url_is_never_printed(origin: RepoBuilder, tmp_path: Path) -> None:
    path = clone(origin, tmp_path / "ci", "--depth", "1")
    # Port 1 of the loopback: nothing listens, the fetch fails at once.
    git(path, "remote", "set-url", "origin", "https://x-access-token:ghs_S3CRET@127.0.0.1:1/r.git")
    code, printed = diff(path, "origin/main")
    assert code == 1
    assert "127.0.0.1" in printed  # git's message is there
    assert "ghs_S3CRET" not in printed


def test_credentials_of_urls_are_masked() -> None:
    from reconciler.gitsource import redact

    text = "fatal: repository 'https://oauth2:glpat-abc@gitlab.example/g/r.git/' not found"
    assert redact(text) == "fatal: repository 'https://***@gitlab.example/g/r.git/' not found"
    assert redact("ssh://git@host/r.git and /plain/path") == "ssh://***@host/r.git and /plain/path"
