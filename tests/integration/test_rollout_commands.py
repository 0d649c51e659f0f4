"""`reconcile rollout status|pause|resume|abort` on bad input, in real git repositories: exit
code 1 with an `error:` line that says why, and no commit made when one says it failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main

ENDPOINT = "my-endpoint"
ENDPOINT_FILE = f"endpoints/{ENDPOINT}/endpoint.yml"
POLICY = "rollouts:\n  default:\n    steps: [{traffic: 20, for: 1m}, 100]\n"
STEP_1 = (
    "rollout my-endpoint: step 1/2, green gets 20% of live traffic\n\n"
    "Reconcile-Rollout: my-endpoint step 1/2\n"
    "Reconcile-Rollout-Stable: blue\nReconcile-Rollout-Canary: green\n"
)


def endpoint_text(traffic: str) -> str:
    return f"name: {ENDPOINT}\nauth_mode: key\ntraffic: {traffic}\n"


def under_rollout(repo: RepoBuilder, *, policy: str = POLICY, traffic: str = "") -> str:
    """A repository whose endpoint is at step 1 of a rollout of green (the daemon's commit)."""
    repo.basics()
    repo.model(version=2, weights="2")
    repo.write(ENDPOINT_FILE, endpoint_text("{blue: 100}"))
    repo.deployment(ENDPOINT, "blue")
    repo.write("reconciler.yaml", policy)
    repo.commit("blue serves all traffic")
    repo.deployment(ENDPOINT, "green", model="azureml:sklearn-regression:2")
    repo.commit("green: model v2")
    repo.write(ENDPOINT_FILE, endpoint_text(traffic or "{blue: 80, green: 20}"))
    return repo.commit(STEP_1)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["rollout", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("verb", ["pause", "resume", "abort"])
def test_an_unknown_endpoint_or_one_without_a_policy_commits_nothing(
    repo: RepoBuilder, verb: str
) -> None:
    tip = under_rollout(repo)
    code, out, err = run(verb, "no-such-endpoint", "--repo", str(repo.root))
    assert (code, out) == (1, "")
    assert err.startswith("error: no endpoint no-such-endpoint at ")
    repo.write("reconciler.yaml", "{}\n")
    policy_gone = repo.commit("no rollout policy")
    code, out, err = run(verb, ENDPOINT, "--repo", str(repo.root))
    assert code == 1 and "is under no rollout policy" in err
    assert repo.git("rev-parse", "HEAD") == policy_gone != tip


def test_a_detached_head_is_refused_with_exit_1(repo: RepoBuilder) -> None:
    tip = under_rollout(repo)
    repo.git("checkout", "-q", "--detach", tip)
    for verb in ("pause", "abort", "status"):
        code, _, err = run(verb, ENDPOINT, "--repo", str(repo.root))
        assert code == 1 and "is on no branch with commits" in err, (verb, err)
    assert repo.git("rev-parse", "HEAD") == tip


def test_a_folder_that_is_no_repository_is_refused(tmp_path: Path) -> None:
    code, _, err = run("status", ENDPOINT, "--repo", str(tmp_path))
    assert code == 1 and err.startswith("error: ")
    code, _, err = run("abort", ENDPOINT, "--repo", str(tmp_path / "missing"))
    assert code == 1 and "does not exist" in err


def test_abort_with_an_uncommitted_edit_of_the_endpoint_file_is_refused_and_keeps_it(
    repo: RepoBuilder,
) -> None:
    tip = under_rollout(repo)
    edited = endpoint_text("{blue: 80, green: 20}") + "description: mine, not saved\n"
    (repo.root / ENDPOINT_FILE).write_text(edited)
    code, _, err = run("abort", ENDPOINT, "--repo", str(repo.root))
    assert code == 1 and "uncommitted edits" in err
    assert repo.git("rev-parse", "HEAD") == tip
    assert (repo.root / ENDPOINT_FILE).read_text() == edited


def test_abort_with_other_files_dirty_or_staged_commits_only_the_rollback(
    repo: RepoBuilder,
) -> None:
    under_rollout(repo)
    repo.write("NOTES.md", "staged, not mine to commit\n")
    repo.git("add", "NOTES.md")
    code, out, err = run("abort", ENDPOINT, "--repo", str(repo.root))
    assert code == 0, err
    assert repo.git("show", "--name-only", "--format=", "HEAD") == ENDPOINT_FILE
    assert repo.git("status", "--porcelain") == "A  NOTES.md"
    assert "traffic: {blue: 100, green: 0}" in (repo.root / ENDPOINT_FILE).read_text()
    assert "abort of my-endpoint committed as" in out


def test_abort_of_a_file_the_edit_refuses_is_an_error_line_not_a_traceback(
    repo: RepoBuilder,
) -> None:
    # The loader reads an anchor; the edit refuses to touch one (it may be shared).
    tip = under_rollout(repo, traffic="&weights {blue: 80, green: 20}")
    code, out, err = run("abort", ENDPOINT, "--repo", str(repo.root))
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot edit ") and "anchors, aliases and tags" in err
    assert repo.git("rev-parse", "HEAD") == tip


def test_abort_and_status_when_no_rollout_ever_ran_are_refused(repo: RepoBuilder) -> None:
    repo.basics()
    repo.write(ENDPOINT_FILE, endpoint_text("{blue: 100}"))
    repo.deployment(ENDPOINT, "blue")
    repo.write("reconciler.yaml", POLICY)
    tip = repo.commit("blue serves all traffic")
    code, _, err = run("abort", ENDPOINT, "--repo", str(repo.root))
    assert code == 1 and "nothing to abort" in err
    code, _, err = run("status", ENDPOINT, "--repo", str(repo.root))
    assert code == 1 and "no rollout of my-endpoint" in err
    assert repo.git("rev-parse", "HEAD") == tip


def test_abort_and_status_read_the_endpoints_own_mark_in_a_message_holding_several(
    repo: RepoBuilder,
) -> None:
    under_rollout(repo)
    repo.write("NOTES.md", "squashed\n")
    repo.commit(
        "squash of two pull requests\n\n"
        "Reconcile-Rollout: other-endpoint step 1/2\n"
        "Reconcile-Rollout-Stable: red\nReconcile-Rollout-Canary: yellow\n\n"
        + STEP_1.split("\n\n", 1)[1]
    )
    code, out, err = run("status", ENDPOINT, "--repo", str(repo.root), "--output", "json")
    assert code == 0, err
    rows = json.loads(out)["commits"]
    assert [(r["action"], r["stable"], r["canary"]) for r in rows] == [
        ("step", "blue", "green"),
        ("step", "blue", "green"),
    ]
    code, out, err = run("abort", ENDPOINT, "--repo", str(repo.root))
    assert code == 0, err
    message = repo.git("log", "-1", "--format=%B")
    assert "Reconcile-Rollout: my-endpoint rollback at step 1/2" in message
    assert "all traffic back to blue" in message


def test_abort_when_all_traffic_is_back_on_the_stable_says_so(repo: RepoBuilder) -> None:
    # A person reverted the step commit: nothing to abort, and the message says why.
    tip = under_rollout(repo, traffic="{blue: 100, green: 0}")
    code, _, err = run("abort", ENDPOINT, "--repo", str(repo.root))
    assert code == 1
    assert "all live traffic is on blue already: nothing to abort" in err
    assert repo.git("rev-parse", "HEAD") == tip
    # Values that are no step at all say that.
    repo.write(ENDPOINT_FILE, endpoint_text("{blue: 70, green: 30}"))
    repo.commit("by hand")
    code, _, err = run("abort", ENDPOINT, "--repo", str(repo.root))
    assert code == 1 and "are no step of the rollout of green" in err


def test_abort_of_an_endpoint_file_in_utf16_is_an_error_line_not_a_traceback(
    repo: RepoBuilder,
) -> None:
    # The loader reads a UTF-16 file (a byte order mark says so); the edit is of UTF-8 text.
    under_rollout(repo)
    text = (repo.root / ENDPOINT_FILE).read_text()
    (repo.root / ENDPOINT_FILE).write_bytes(text.encode("utf-16"))
    tip = repo.commit("saved as UTF-16")
    code, out, err = run("abort", ENDPOINT, "--repo", str(repo.root))
    assert (code, out) == (1, "")
    assert err.startswith(f"error: cannot edit {ENDPOINT_FILE}: it is not UTF-8 text")
    assert repo.git("rev-parse", "HEAD") == tip
