"""Committed against on disk, as a user meets it: every plan says which revision it read,
and a file a deployment needs that is edited or never `git add`ed is named with the fix.

Real git repositories in temporary folders, the CLI driven as a user does, planned against
the status files (no target needed).
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result
from kube_fake import apply_rev, failures, make_target, serve
from repo_builder import RepoBuilder
from test_reconcile_passes import kube_repo

from reconciler.cli import main
from reconciler.gitsource import GitSource, WorktreeChange

MODEL_FILE = "models/sklearn-regression/v1/model.json"


def _one_deployment(repo: RepoBuilder) -> None:
    repo.basics()
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue")


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _dry_run(repo: RepoBuilder, *extra: str) -> Result:
    return _run("--repo", str(repo.root), "--dry-run", "--target", "status", *extra)


def test_a_plan_of_a_clean_checkout_names_its_commit_in_text_and_json(repo: RepoBuilder) -> None:
    _one_deployment(repo)
    commit = repo.commit("one deployment")
    text = _dry_run(repo)
    assert text.exit_code == 2, text.output
    assert f"Revision: commit {commit[:12]} (HEAD)\n" in text.output
    assert "uncommitted" not in text.output
    plan = json.loads(_dry_run(repo, "--output", "json").output)
    assert plan["revision"] == {"commit": commit, "dirty": False, "source": "commit"}
    # The contract's keys stay as they were.
    assert list(plan)[:3] == ["steps", "errors", "warnings"]


def test_an_uncommitted_edit_is_named_where_the_plan_says_no_changes(repo: RepoBuilder) -> None:
    _one_deployment(repo)
    commit = repo.commit("one deployment")
    # The user edits a file and does not commit it.
    repo.deployment("my-endpoint", "blue", instance_count=3)
    result = _dry_run(repo, "--output", "json")
    plan = json.loads(result.output)
    assert plan["revision"] == {"commit": commit, "dirty": True, "source": "commit"}
    named = [w for w in plan["warnings"] if w["file"] == "endpoints/my-endpoint/blue.yml"]
    assert len(named) == 1, plan["warnings"]
    message = named[0]["message"]
    assert "modified and not committed" in message
    assert "the file of deployment my-endpoint/blue" in message
    assert "git add endpoints/my-endpoint/blue.yml" in message and "--worktree" in message
    text = _dry_run(repo).output
    assert "the working tree's uncommitted changes are not in this plan" in text


def test_a_model_file_never_added_is_named_with_git_add(repo: RepoBuilder) -> None:
    _one_deployment(repo)
    repo.git("add", "-A")
    repo.git("rm", "-q", "--cached", MODEL_FILE)
    repo.git("commit", "-q", "-m", "everything but the model file")
    result = _dry_run(repo, "--output", "json")
    plan = json.loads(result.output)
    assert result.exit_code == 1  # the commit lacks the model: an error, as before
    assert any("does not exist" in e["message"] for e in plan["errors"]), plan["errors"]
    named = [w for w in plan["warnings"] if w["file"] == MODEL_FILE]
    assert len(named) == 1, plan["warnings"]
    assert "untracked (never `git add`ed)" in named[0]["message"]
    assert "model sklearn-regression:1 of my-endpoint/blue" in named[0]["message"]
    assert f"`git add {MODEL_FILE}`" in named[0]["message"]


def test_a_plan_before_the_first_commit_says_it_read_the_files_on_disk(repo: RepoBuilder) -> None:
    _one_deployment(repo)
    result = _dry_run(repo, "--output", "json")
    plan = json.loads(result.output)
    assert plan["revision"] == {"commit": None, "dirty": True, "source": "worktree"}
    assert any("no commit yet" in w["message"] for w in plan["warnings"]), plan["warnings"]
    assert "Revision: the working tree (no commit yet)" in _dry_run(repo).output


def test_a_plan_with_worktree_says_it_read_the_uncommitted_files(repo: RepoBuilder) -> None:
    _one_deployment(repo)
    commit = repo.commit("one deployment")
    repo.deployment("my-endpoint", "blue", instance_count=3)
    plan = json.loads(_dry_run(repo, "--worktree", "--output", "json").output)
    assert plan["revision"] == {"commit": commit, "dirty": True, "source": "worktree"}
    assert not any("uncommitted" in w["message"] for w in plan["warnings"])


def test_validate_says_it_checked_the_working_tree_and_lists_its_differences(
    repo: RepoBuilder,
) -> None:
    _one_deployment(repo)
    repo.git("add", "-A")
    repo.git("rm", "-q", "--cached", MODEL_FILE)
    repo.git("commit", "-q", "-m", "no model file")
    commit = repo.git("rev-parse", "HEAD")
    repo.write("notes.txt", "a note\n")
    result = _run("validate", "--repo", str(repo.root))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"checked: the working tree; `reconcile` reads commit {commit[:12]}")
    assert f"  untracked  {MODEL_FILE}" in lines
    assert "  untracked  notes.txt" in lines
    warning = next(line for line in lines if line.startswith(f"warning: {MODEL_FILE}"))
    assert "apply and --dry-run" in warning and "git add" in warning
    report = json.loads(_run("validate", "--repo", str(repo.root), "--output", "json").output)
    assert report["checked"]["source"] == "worktree"
    assert report["checked"]["commit"] == commit
    assert {"path": MODEL_FILE, "change": "untracked"} in report["checked"]["differences"]


def test_validate_of_a_clean_checkout_says_it_matches_head(repo: RepoBuilder) -> None:
    _one_deployment(repo)
    commit = repo.commit("one deployment")
    result = _run("validate", "--repo", str(repo.root))
    assert result.output.splitlines()[0] == (
        f"checked: the working tree, the same as commit {commit[:12]} (HEAD)"
    )


def test_worktree_changes_are_relative_to_the_repository_folder(repo: RepoBuilder) -> None:
    repo.write("ops/a.yml", "a: 1\n")
    repo.write("ops/b.yml", "b: 1\n")
    repo.write("other.txt", "elsewhere\n")
    repo.commit("first")
    repo.git("mv", "ops/a.yml", "ops/renamed.yml")
    repo.write("ops/b.yml", "b: 2\n")
    repo.write("ops/new file.yml", "c: 1\n")
    repo.write("other.txt", "changed outside the folder\n")
    assert GitSource(repo.root / "ops").worktree_changes() == (
        WorktreeChange("b.yml", "modified"),
        WorktreeChange("new file.yml", "untracked"),
        WorktreeChange("renamed.yml", "renamed"),
    )


def test_apply_goes_on_past_a_file_no_deployment_needs_and_stops_at_one_it_needs(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    # Images are built from the files on disk, so an uncommitted file a deployment needs
    # stops an apply; a file none needs (notes, a training script) is only a warning: it
    # stopped the apply as well ("uncommitted changes under . (notes.txt)").
    with serve() as fake:
        kube_repo(repo, fake, tmp_path)
        _one_deployment(repo)
        repo.commit("one deployment")
        assert not failures(apply_rev(repo, make_target(fake)))
        runner = CliRunner(env={"XDG_STATE_HOME": str(tmp_path / "state")})
        apply = ["--repo", str(repo.root), "--log-format", "json"]
        repo.write("notes.txt", "things to try\n")
        (repo.root / "src" / "__pycache__").mkdir()
        (repo.root / "src" / "__pycache__" / "score.cpython-311.pyc").write_bytes(b"\0")
        done = runner.invoke(main, apply)
        assert done.exit_code == 0, done.output
        assert (
            "leaves out (it reads commit" in done.output and "notes.txt (untracked)" in done.output
        )
        repo.write("src/helpers.py", "WEIGHTS = 1\n")
        refused = runner.invoke(main, apply)
        assert refused.exit_code == 1, refused.output
        assert "src/helpers.py" in refused.stderr and "notes.txt" not in refused.stderr
        assert "--worktree" in refused.stderr
        # A model never `git add`ed (the commit does not load): named, the notes still not.
        repo.git("rm", "-q", "-r", "--cached", "models")
        repo.git("add", "src/helpers.py")
        repo.git("commit", "-q", "-m", "the model left out")
        refused = runner.invoke(main, apply)
        assert refused.exit_code == 1, refused.output
        assert MODEL_FILE in refused.stderr and "notes.txt" not in refused.stderr
