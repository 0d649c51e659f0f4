"""`reconcile validate --target NAME` and `reconcile diff --target NAME` say, before any apply,
what a Docker target does differently from Azure ML: an image its image_map replaces, a
Python pin the image does not have, Kubernetes resources applied as container limits.
Real git repositories; the Docker target is only read from reconciler.yaml (no engine)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main

pytest_plugins = ("docker_fixtures",)

MCR = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"


def shop(repo: RepoBuilder, *, python: str = "3.12") -> None:
    repo.basics()
    repo.write(
        "endpoints/shop/conda.yml", f"dependencies:\n  - python={python}\n  - pip:\n    - numpy\n"
    )
    repo.endpoint("shop", traffic={"blue": 100})
    repo.deployment(
        "shop",
        "blue",
        environment={"image": MCR, "conda_file": "conda.yml"},  # type: ignore[arg-type]
    )
    repo.write_yaml("reconciler.yaml", {"targets": {"laptop": {"type": "docker"}}})


def run(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, [*args, "--output", "json"])
    return result.exit_code, json.loads(result.stdout)


def by_field(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["field"]: w for w in report["warnings"] if w["file"] == "endpoints/shop/blue.yml"}


def test_validate_with_a_docker_target_says_what_it_replaces(repo: RepoBuilder) -> None:
    shop(repo)
    repo.commit("shop")
    code, report = run("validate", "--repo", str(repo.root), "--target", "laptop")
    assert code == 0, report
    said = by_field(report)
    image, python = said["environment.image"], said["environment.conda_file"]
    assert image["line"] == 9 and python["line"] == 10
    assert MCR in image["message"] and "Docker target 'laptop'" in image["message"]
    assert "python=3.12" in python["message"] and "3.11" in python["message"]


def test_validate_without_a_target_says_nothing_of_one(repo: RepoBuilder) -> None:
    shop(repo)
    repo.commit("shop")
    code, report = run("validate", "--repo", str(repo.root))
    assert code == 0, report
    assert by_field(report) == {}


def test_validate_names_the_known_targets_for_an_unknown_one(repo: RepoBuilder) -> None:
    shop(repo)
    repo.commit("shop")
    result = CliRunner().invoke(main, ["validate", "--repo", str(repo.root), "--target", "prod"])
    assert result.exit_code == 1
    assert "no target named 'prod'" in result.output and "laptop" in result.output


def test_the_review_with_a_target_says_it_too(repo: RepoBuilder) -> None:
    shop(repo, python="3.11")
    repo.commit("base")
    repo.deployment(
        "shop",
        "blue",
        environment={"image": MCR, "conda_file": "conda.yml"},  # type: ignore[arg-type]
        instance_count=2,
    )
    repo.commit("two instances")
    code, report = run("diff", "--base", "HEAD~1", "--repo", str(repo.root), "--target", "laptop")
    assert code == 2, report
    said = by_field(report)
    assert list(said) == ["environment.image"]  # 3.11 is the image's Python: nothing to say
    assert "replaced by" in said["environment.image"]["message"]


@pytest.mark.docker
def test_a_dry_run_on_the_docker_target_says_it(repo: RepoBuilder, docker_client: Any) -> None:
    # A Docker target whose state folder is this test's: planning only observes the engine.
    shop(repo)
    state = str(repo.root.parent / "state")
    repo.write_yaml(
        "reconciler.yaml", {"targets": {"laptop": {"type": "docker", "state_dir": state}}}
    )
    repo.commit("shop")
    code, report = run("--repo", str(repo.root), "--target", "laptop", "--dry-run")
    assert code == 2, report
    assert set(by_field(report)) == {"environment.image", "environment.conda_file"}
