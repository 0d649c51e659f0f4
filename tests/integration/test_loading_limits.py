"""What `validate` passes, apply accepts: real git repositories, the CLI as users run it.

Links out of the repository, duplicate keys and a broken reconciler.yaml give the same
error (file, line, field) in the working tree and in a commit, from `reconcile validate`,
`reconcile --dry-run` and `reconcile diff`, and never a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from repo_builder import RepoBuilder

from reconciler.cli import main
from reconciler.gitsource import GitSource
from reconciler.loading import load_desired_state
from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic


def one_deployment(r: RepoBuilder) -> None:
    r.basics()
    r.endpoint("my-endpoint", traffic={"blue": 100})
    r.deployment("my-endpoint", "blue")


def run(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    # Exit codes come through sys.exit; anything else is a traceback a user would see.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def commit_errors(r: RepoBuilder) -> tuple[Diagnostic, ...]:
    source = GitSource(r.root)
    with pytest.raises(DesiredStateInvalid) as caught:
        load_desired_state(source.tree("HEAD"))
    return caught.value.errors


def test_a_link_out_of_the_repository_is_refused_in_the_working_tree_and_in_a_commit(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    one_deployment(repo)
    (repo.root / "src" / "score.py").unlink()
    (repo.root / "src" / "score.py").symlink_to("/etc/passwd")
    repo.commit("score.py is a link to a host file")
    result = run("validate", "--repo", str(repo.root), "--output", "json")
    assert result.exit_code == 1
    wanted = {
        "file": "endpoints/my-endpoint/blue.yml",
        "field": "code_configuration.scoring_script",
        "message": "'src/score.py' is a symbolic link to '/etc/passwd', outside the "
        "repository: links are followed only inside it",
    }
    (error,) = json.loads(result.output)["errors"]
    assert {k: error[k] for k in wanted} == wanted
    (committed,) = commit_errors(repo)
    assert (committed.file, committed.field, committed.message) == tuple(wanted.values())
    assert committed.line == error["line"] is not None


def test_a_link_inside_the_repository_gives_the_same_digests_on_disk_and_in_git(
    repo: RepoBuilder,
) -> None:
    one_deployment(repo)
    repo.write("shared/score.py", "def init():\n    pass\n")
    (repo.root / "src" / "score.py").unlink()
    (repo.root / "src" / "score.py").symlink_to("../shared/score.py")
    repo.commit("score.py is a link inside the repository")
    source = GitSource(repo.root)
    on_disk = load_desired_state(source.working_tree())
    committed = load_desired_state(source.tree("HEAD"))
    assert on_disk.deployments[0].code == committed.deployments[0].code
    assert on_disk.deployments[0].model == committed.deployments[0].model


BAD_CONFIG = "targets:\n  local:\n    type: docker\n    resource_scale: lots\n"
BAD_LINE = "reconciler.yaml:4: targets.local.resource_scale: must be a number, got 'lots'"


def test_validate_reports_a_bad_target_option_with_file_line_and_field(repo: RepoBuilder) -> None:
    one_deployment(repo)
    repo.write("reconciler.yaml", BAD_CONFIG)
    repo.commit("bad option")
    result = run("validate", "--repo", str(repo.root))
    assert result.exit_code == 1
    assert f"error: {BAD_LINE}" in result.output


@pytest.mark.parametrize("target", [[], ["--target", "status"]])
def test_dry_run_reports_a_bad_target_option_without_a_traceback(
    repo: RepoBuilder, target: list[str]
) -> None:
    one_deployment(repo)
    repo.write("reconciler.yaml", BAD_CONFIG)
    repo.commit("bad option")
    result = run("--repo", str(repo.root), "--dry-run", *target)
    assert result.exit_code == 1
    assert f"error: {BAD_LINE}" in result.output


def test_diff_reports_a_bad_target_option(repo: RepoBuilder) -> None:
    one_deployment(repo)
    repo.commit("base")
    repo.write("reconciler.yaml", "targets:\n  local:\n    router_port_range: 5\n")
    repo.commit("head")
    result = run("diff", "--base", "HEAD~1", "--repo", str(repo.root), "--output", "json")
    assert result.exit_code == 1
    (error,) = json.loads(result.output)["errors"]
    assert (error["file"], error["line"], error["field"]) == (
        "reconciler.yaml",
        3,
        "targets.local.router_port_range",
    )


def test_traffic_written_twice_is_an_error_in_validate_and_diff(repo: RepoBuilder) -> None:
    one_deployment(repo)
    repo.deployment("my-endpoint", "green")
    repo.commit("base")
    path = repo.root / "endpoints" / "my-endpoint" / "endpoint.yml"
    text = path.read_text()
    path.write_text(text + "traffic:\n  blue: 0\n  green: 100\n")
    second = len(text.splitlines()) + 1
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("traffic:"))
    repo.commit("traffic twice")
    wanted = {
        "file": "endpoints/my-endpoint/endpoint.yml",
        "line": second,
        "field": "traffic",
        "message": f"duplicate key `traffic` (first at line {first})",
    }
    result = run("validate", "--repo", str(repo.root), "--output", "json")
    assert (result.exit_code, json.loads(result.output)["errors"]) == (1, [wanted])
    result = run("diff", "--base", "HEAD~1", "--repo", str(repo.root), "--output", "json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["errors"] == [wanted] and report["steps"] == []


@pytest.mark.timeout(120)  # a guard: before the fix, reading the pipe blocked forever
def test_validate_reports_a_fifo_model_file_and_returns(repo: RepoBuilder) -> None:
    one_deployment(repo)
    weights = repo.root / "models" / "sklearn-regression" / "v1" / "model.json"
    weights.unlink()
    os.mkfifo(weights)
    result = run("validate", "--repo", str(repo.root), "--output", "json")
    assert result.exit_code == 1
    (error,) = json.loads(result.output)["errors"]
    assert (error["file"], error["field"]) == ("models/sklearn-regression-1.yml", "path")
    assert error["message"] == (
        "'models/sklearn-regression/v1/model.json' is a named pipe (FIFO), not a regular "
        "file: it is never read"
    )


def test_an_image_holds_what_loading_digested_for_a_link_inside_the_repository(
    tmp_path: Path,
) -> None:
    # Loading reads a link inside the repository as the file it names; the image's layer
    # must hold that file too, not a link that dangles once the folder is copied alone.
    from reconciler.images.layers import _add_tree, _context_tar

    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "score.py").write_text("def run(data):\n    return data\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "score.py").symlink_to("../shared/score.py")
    with _context_tar() as (_handle, tar):
        _add_tree(tar, tmp_path / "src", "var/azureml-app/src")
        member = tar.getmember("var/azureml-app/src/score.py")
    assert member.isfile() and member.size == len("def run(data):\n    return data\n")


def test_a_repository_in_a_sub_folder_reads_links_as_its_checkout_does(tmp_path: Path) -> None:
    # The repository is ml/ of the checkout: a link to a file of the checkout outside ml/
    # is outside the repository, in the commit as on disk.
    checkout = RepoBuilder(tmp_path / "checkout")
    sub = RepoBuilder.__new__(RepoBuilder)  # writes files into ml/, no `git init` of its own
    sub.root = checkout.root / "ml"
    one_deployment(sub)
    checkout.write("shared/score.py", "def run(data):\n    return data\n")
    (sub.root / "src" / "score.py").unlink()
    (sub.root / "src" / "score.py").symlink_to("../../shared/score.py")
    checkout.commit("ml/ is the repository")
    source = GitSource(sub.root)
    message = (
        "'src/score.py' is a symbolic link to '../../shared/score.py', outside the "
        "repository: links are followed only inside it"
    )
    for tree in (source.tree("HEAD"), source.working_tree()):
        with pytest.raises(DesiredStateInvalid) as caught:
            load_desired_state(tree)
        assert [e.message for e in caught.value.errors] == [message]
