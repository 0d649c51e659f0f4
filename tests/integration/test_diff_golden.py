"""`reconcile diff` between two real commits, pinned by golden files (text, JSON, markdown).

Each scenario writes a base commit and a head commit into a git repository made in a
temporary folder, runs the command as a user would, and compares its output with
tests/golden/NAME.{txt,json,md}. Set UPDATE_GOLDEN=1 to rewrite the files after a
deliberate change, then review the diff of the golden files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main

GOLDEN = Path(__file__).parent.parent / "golden"
FORMATS = {"text": "txt", "json": "json", "markdown": "md"}


def two_deployments(r: RepoBuilder, *, blue: int = 90, green: int = 10) -> None:
    r.basics()
    r.model(version=2, weights="2")
    r.endpoint("my-endpoint", traffic={"blue": blue, "green": green})
    r.deployment("my-endpoint", "blue")
    r.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")


def create_from_empty(r: RepoBuilder) -> tuple[list[str], int]:
    r.write("README.md", "GitOps repository\n")
    r.commit("empty")
    two_deployments(r)
    return [], 2


def scale_only(r: RepoBuilder) -> tuple[list[str], int]:
    two_deployments(r)
    r.commit("base")
    r.deployment("my-endpoint", "blue", instance_count=3)
    return [], 2


def scale_and_code(r: RepoBuilder) -> tuple[list[str], int]:
    two_deployments(r)
    r.commit("base")
    r.deployment("my-endpoint", "blue", instance_count=2)
    r.code(version="2")
    return [], 2


def code_only(r: RepoBuilder) -> tuple[list[str], int]:
    two_deployments(r)
    r.commit("base")
    r.code(version="2")  # no YAML changes: the code folder's digest changes
    return [], 2


def blue_green_switch(r: RepoBuilder) -> tuple[list[str], int]:
    r.basics()
    r.model(version=2, weights="2")
    r.endpoint("my-endpoint", traffic={"blue": 100})
    r.deployment("my-endpoint", "blue", instance_count=3)
    r.deployment("my-endpoint", "green", instance_count=1, model="azureml:sklearn-regression:2")
    r.commit("base")
    r.endpoint("my-endpoint", traffic={"green": 100})
    r.deployment("my-endpoint", "blue", instance_count=1)
    r.deployment("my-endpoint", "green", instance_count=3, model="azureml:sklearn-regression:2")
    return [], 2


def delete_with_traffic(r: RepoBuilder) -> tuple[list[str], int]:
    two_deployments(r)
    r.commit("base")
    r.remove("endpoints/my-endpoint/green.yml")
    r.endpoint("my-endpoint", traffic={"blue": 100})
    return [], 2


def mirror_on(r: RepoBuilder) -> tuple[list[str], int]:
    two_deployments(r, blue=100, green=0)
    r.commit("base")
    r.endpoint("my-endpoint", traffic={"blue": 100, "green": 0}, mirror={"green": 20})
    return [], 2


def mirror_off(r: RepoBuilder) -> tuple[list[str], int]:
    two_deployments(r, blue=100, green=0)
    r.endpoint("my-endpoint", traffic={"blue": 100, "green": 0}, mirror={"green": 20})
    r.commit("base")
    r.endpoint("my-endpoint", traffic={"blue": 100, "green": 0})
    return [], 2


def _two_endpoints(r: RepoBuilder) -> None:
    two_deployments(r)
    r.endpoint("old-endpoint", traffic={"main": 100})
    r.deployment("old-endpoint", "main")
    r.commit("base")
    r.remove("endpoints/old-endpoint/endpoint.yml")
    r.remove("endpoints/old-endpoint/main.yml")


def prune_on(r: RepoBuilder) -> tuple[list[str], int]:
    _two_endpoints(r)
    return ["--prune"], 2


def prune_off(r: RepoBuilder) -> tuple[list[str], int]:
    _two_endpoints(r)
    return [], 0


def no_change(r: RepoBuilder) -> tuple[list[str], int]:
    two_deployments(r)
    r.commit("base")
    r.write("README.md", "only documentation changed\n")
    return [], 0


def model_environment_and_size(r: RepoBuilder) -> tuple[list[str], int]:
    """What a reviewer must see of a deployment change: model, code, packages, quota."""
    two_deployments(r)
    r.write_yaml(
        "reconciler.yaml", {"targets": {"local": {"type": "docker", "capacity_cores": 24}}}
    )
    r.commit("base")
    r.environment(version=2, packages=("numpy==2.1.0", "pandas>=2"))
    r.model(version=3, weights="3")
    r.deployment(
        "my-endpoint",
        "green",
        model="azureml:sklearn-regression:3",
        environment="azureml:sklearn-env:2",
        instance_type="Standard_DS4_v2",
        instance_count=2,
    )
    r.code(version="3")
    return [], 2


def policy_violations(r: RepoBuilder) -> tuple[list[str], int]:
    """A 40-point shift where 20 are allowed, on an endpoint that needs approval: exit 1,
    and the plan is still shown so that the reviewer sees what was asked for."""
    two_deployments(r)
    r.write_yaml(
        "reconciler.yaml",
        {"policies": {"max_traffic_shift": 20, "require_approval": ["my-endpoint"]}},
    )
    r.commit("base")
    r.endpoint("my-endpoint", traffic={"blue": 50, "green": 50})
    return [], 1


SCENARIOS: dict[str, Callable[[RepoBuilder], tuple[list[str], int]]] = {
    f.__name__: f
    for f in (
        create_from_empty,
        scale_only,
        scale_and_code,
        code_only,
        blue_green_switch,
        delete_with_traffic,
        mirror_on,
        mirror_off,
        prune_on,
        prune_off,
        no_change,
        model_environment_and_size,
        policy_violations,
    )
}


def run_diff(r: RepoBuilder, output: str, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main,
        [
            "diff",
            "--base",
            "HEAD~1",
            "--head",
            "HEAD",
            "--repo",
            str(r.root),
            "--output",
            output,
            *extra,
        ],
    )
    return result.exit_code, result.output


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_diff_matches_golden_plans(name: str, repo: RepoBuilder) -> None:
    extra, expected_exit = SCENARIOS[name](repo)
    repo.commit("head")
    for output, suffix in FORMATS.items():
        code, printed = run_diff(repo, output, *extra)
        assert code == expected_exit, printed
        golden = GOLDEN / f"{name}.{suffix}"
        if os.environ.get("UPDATE_GOLDEN"):
            golden.write_text(printed)
        assert printed == golden.read_text(), f"{golden} differs; UPDATE_GOLDEN=1 rewrites it"


def _actions(r: RepoBuilder, *extra: str) -> list[tuple[str, str | None]]:
    code, printed = run_diff(r, "json", *extra)
    assert code in (0, 2), printed
    return [(s["action"], s["deployment"]) for s in json.loads(printed)["steps"]]


def test_scale_comes_before_the_code_update_of_the_same_deployment(repo: RepoBuilder) -> None:
    scale_and_code(repo)
    repo.commit("head")
    actions = _actions(repo)
    assert actions.index(("scale_deployment", "blue")) < actions.index(
        ("update_deployment", "blue")
    )


def test_switch_raises_capacity_before_traffic_and_lowers_it_after(repo: RepoBuilder) -> None:
    blue_green_switch(repo)
    repo.commit("head")
    actions = _actions(repo)
    traffic = actions.index(("set_traffic", None))
    assert actions.index(("scale_deployment", "green")) < traffic
    assert actions.index(("scale_deployment", "blue")) > traffic


def test_traffic_leaves_a_deployment_before_it_is_deleted(repo: RepoBuilder) -> None:
    delete_with_traffic(repo)
    repo.commit("head")
    actions = _actions(repo)
    assert actions.index(("set_traffic", None)) < actions.index(("delete_deployment", "green"))


def test_an_invalid_head_prints_errors_and_exits_1(repo: RepoBuilder) -> None:
    two_deployments(repo)
    repo.commit("base")
    repo.endpoint("my-endpoint", traffic={"blue": 50, "green": 10})
    repo.commit("head")
    code, printed = run_diff(repo, "json")
    assert code == 1
    report = json.loads(printed)
    assert report["steps"] == []
    assert report["errors"][0]["file"] == "endpoints/my-endpoint/endpoint.yml"
    assert report["errors"][0]["field"].startswith("traffic")


def test_an_unknown_base_revision_is_a_clear_error(repo: RepoBuilder) -> None:
    two_deployments(repo)
    repo.commit("base")
    result = CliRunner().invoke(
        main, ["diff", "--base", "no-such-branch", "--repo", str(repo.root)]
    )
    assert result.exit_code == 1
    assert "no-such-branch" in result.output
    assert "Traceback" not in result.output
