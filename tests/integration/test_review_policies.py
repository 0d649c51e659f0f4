"""Policies of reconciler.yaml through `reconcile diff` and `reconcile validate`, on real
git repositories: each rule with a repository that keeps it and one that breaks it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main

HOUR = 3600


def two_deployments(r: RepoBuilder, *, blue: int = 90, green: int = 10) -> None:
    r.basics()
    r.model(version=2, weights="2")
    r.endpoint("my-endpoint", traffic={"blue": blue, "green": green})
    r.deployment("my-endpoint", "blue", instance_count=2)
    r.deployment("my-endpoint", "green", instance_count=2, model="azureml:sklearn-regression:2")


def policies(r: RepoBuilder, **rules: Any) -> None:
    r.write_yaml("reconciler.yaml", {"policies": rules})


def commit_at(r: RepoBuilder, message: str, *, hours_ago: float, mp: pytest.MonkeyPatch) -> None:
    # git reads the dates from the environment the builder's subprocess inherits.
    stamp = f"{int(time.time() - hours_ago * HOUR)} +0000"
    with mp.context() as m:
        m.setenv("GIT_COMMITTER_DATE", stamp)
        m.setenv("GIT_AUTHOR_DATE", stamp)
        r.commit(message)


def diff(r: RepoBuilder, *extra: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(
        main,
        ["diff", "--base", "HEAD~1", "--repo", str(r.root), "--output", "json", *extra],
    )
    return result.exit_code, json.loads(result.output)


def violations(report: dict[str, Any]) -> list[str]:
    return [e["message"] for e in report["errors"] if e["field"].startswith("policies.")]


# --- max_traffic_shift --------------------------------------------------------------------


def test_max_traffic_shift_passes_a_small_step(repo: RepoBuilder) -> None:
    two_deployments(repo)
    policies(repo, max_traffic_shift=20)
    repo.commit("base")
    repo.endpoint("my-endpoint", traffic={"blue": 70, "green": 30})
    repo.commit("head")
    code, report = diff(repo)
    assert (code, report["errors"]) == (2, [])


def test_max_traffic_shift_fails_a_jump(repo: RepoBuilder) -> None:
    two_deployments(repo)
    policies(repo, max_traffic_shift=20)
    repo.commit("base")
    repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 50})
    repo.commit("head")
    code, report = diff(repo)
    assert code == 1
    (error,) = report["errors"]
    assert {k: error[k] for k in ("file", "line", "field")} == {
        "file": "reconciler.yaml",
        "line": 2,
        "field": "policies.max_traffic_shift",
    }
    assert (
        "my-endpoint moves 40 points of traffic (blue 90 -> 50, green 10 -> 50)"
        in (error["message"])
    )
    assert "where 20 are allowed" in error["message"]
    # The plan is still there for the reviewer.
    assert [s["action"] for s in report["steps"]] == ["set_traffic"]


def test_a_change_cannot_relax_the_policy_it_is_judged_by(repo: RepoBuilder) -> None:
    two_deployments(repo)
    policies(repo, max_traffic_shift=20)
    repo.commit("base")
    policies(repo, max_traffic_shift=100)
    repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 50})
    repo.commit("head")
    code, report = diff(repo)
    assert code == 1
    assert "where 20 are allowed" in violations(report)[0]


# --- mirror_before_traffic ----------------------------------------------------------------


def _mirror_then_traffic(
    r: RepoBuilder, mp: pytest.MonkeyPatch, *, mirrored_hours_ago: float | None
) -> None:
    two_deployments(r, blue=100, green=0)
    policies(r, mirror_before_traffic={"min_hours": 24})
    commit_at(r, "green deployed, no traffic", hours_ago=100, mp=mp)
    if mirrored_hours_ago is not None:
        r.endpoint("my-endpoint", traffic={"blue": 100, "green": 0}, mirror={"green": 20})
        commit_at(r, "mirror green", hours_ago=mirrored_hours_ago, mp=mp)
    r.write("README.md", "unrelated\n")
    commit_at(r, "docs", hours_ago=0.5, mp=mp)  # the base: mirroring goes on through it
    r.endpoint("my-endpoint", traffic={"blue": 90, "green": 10})
    r.commit("give green traffic")


def test_mirror_before_traffic_passes_after_a_day_of_mirroring(
    repo: RepoBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mirror_then_traffic(repo, monkeypatch, mirrored_hours_ago=48)
    code, report = diff(repo)
    assert (code, report["errors"]) == (2, [])


def test_mirror_before_traffic_fails_after_three_hours(
    repo: RepoBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mirror_then_traffic(repo, monkeypatch, mirrored_hours_ago=3)
    code, report = diff(repo)
    assert code == 1
    (message,) = violations(report)
    assert message.startswith(
        "policy mirror_before_traffic: my-endpoint/green gets 10% of live traffic after 3"
    )
    assert "hours of mirroring" in message and "where 24 are required" in message


def test_mirror_before_traffic_fails_without_any_mirroring(
    repo: RepoBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _mirror_then_traffic(repo, monkeypatch, mirrored_hours_ago=None)
    code, report = diff(repo)
    assert code == 1
    (message,) = violations(report)
    assert "my-endpoint/green gets 10% of live traffic but had none and was not mirrored" in (
        message
    )


# --- min_instances_with_traffic -----------------------------------------------------------


def _validate(r: RepoBuilder) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["validate", "--repo", str(r.root)])
    return result.exit_code, result.output


def test_min_instances_with_traffic_in_validate_and_diff(repo: RepoBuilder) -> None:
    two_deployments(repo)
    policies(repo, min_instances_with_traffic=2)
    repo.commit("base")
    assert _validate(repo)[0] == 0
    repo.deployment("my-endpoint", "green", instance_count=1, model="azureml:sklearn-regression:2")
    code, printed = _validate(repo)
    assert code == 1
    assert (
        "error: reconciler.yaml:2: policies.min_instances_with_traffic: policy "
        "min_instances_with_traffic: my-endpoint/green gets 10% of live traffic with "
        "instance_count 1 where at least 2 are required"
    ) in printed
    repo.commit("head")
    code, report = diff(repo)
    assert code == 1
    assert "instance_count 1 where at least 2" in violations(report)[0]


def test_validate_reports_policy_syntax_errors_in_json(repo: RepoBuilder) -> None:
    two_deployments(repo)
    policies(repo, max_traffic_shift="a lot")
    result = CliRunner().invoke(main, ["validate", "--repo", str(repo.root), "--output", "json"])
    assert result.exit_code == 1
    (error,) = json.loads(result.output)["errors"]
    assert (error["file"], error["line"], error["field"]) == (
        "reconciler.yaml",
        2,
        "policies.max_traffic_shift",
    )


# --- require_approval ---------------------------------------------------------------------


def _approval_repo(r: RepoBuilder, message: str) -> None:
    two_deployments(r)
    policies(r, require_approval=["my-endpoint"])
    r.commit("base")
    r.endpoint("my-endpoint", traffic={"blue": 80, "green": 20})
    r.commit(message)


def test_require_approval_fails_without_a_marker(repo: RepoBuilder) -> None:
    _approval_repo(repo, "move traffic")
    code, report = diff(repo)
    assert code == 1
    assert "my-endpoint changes (traffic) and needs an explicit approval" in (violations(report)[0])


def test_require_approval_passes_with_a_commit_trailer(repo: RepoBuilder) -> None:
    _approval_repo(repo, "move traffic\n\nReconcile-Approved: my-endpoint\n")
    code, report = diff(repo)
    assert (code, report["errors"]) == (2, [])


def test_require_approval_passes_with_the_approve_option(repo: RepoBuilder) -> None:
    _approval_repo(repo, "move traffic")
    code, report = diff(repo, "--approve", "my-endpoint")
    assert (code, report["errors"]) == (2, [])


def test_markdown_shows_violations_first(repo: RepoBuilder) -> None:
    _approval_repo(repo, "move traffic")
    result = CliRunner().invoke(
        main, ["diff", "--base", "HEAD~1", "--repo", str(repo.root), "--output", "markdown"]
    )
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[2] == "**⛔ 1 policy violation: this change may not merge.**"
    assert lines[4].startswith("- **require_approval** (`reconciler.yaml:2`): my-endpoint")
