"""The review of a pull request on example-repo: the blue/green shift its README describes
gets the comment of tests/golden/example_repo_shift.md, and a jump past its policy fails."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main

EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "example-repo"
GOLDEN = Path(__file__).parent.parent / "golden" / "example_repo_shift.md"


def pull_request(repo: RepoBuilder, traffic: str) -> None:
    """example-repo as the base commit, then a commit that edits only the traffic block."""
    shutil.copytree(EXAMPLE_REPO, repo.root, dirs_exist_ok=True)
    repo.commit("example-repo")
    endpoint = repo.root / "endpoints" / "my-endpoint" / "endpoint.yml"
    text = endpoint.read_text()
    assert "traffic:\n  blue: 90\n  green: 10\n" in text
    endpoint.write_text(text.replace("  blue: 90\n  green: 10\n", traffic))
    repo.commit("move traffic")


def diff(repo: RepoBuilder, output: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, ["diff", "--base", "HEAD~1", "--repo", str(repo.root), "--output", output]
    )
    return result.exit_code, result.output


def test_a_fifty_fifty_shift_gets_the_review_comment(repo: RepoBuilder) -> None:
    pull_request(repo, "  blue: 50\n  green: 50\n")
    code, printed = diff(repo, "markdown")
    assert code == 2, printed
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(printed)
    assert printed == GOLDEN.read_text(), f"{GOLDEN} differs; UPDATE_GOLDEN=1 rewrites it"


def test_all_traffic_at_once_breaks_the_example_policy(repo: RepoBuilder) -> None:
    pull_request(repo, "  blue: 0\n  green: 100\n")
    code, printed = diff(repo, "json")
    assert code == 1
    (error,) = json.loads(printed)["errors"]
    assert error["field"] == "policies.max_traffic_shift"
    assert "my-endpoint moves 90 points of traffic" in error["message"]
    assert "where 50 are allowed" in error["message"]
