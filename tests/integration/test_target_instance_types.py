"""Instance types come from the targets of reconciler.yaml: Azure's sizes on every target, and
a Kubernetes target's own `instance_types` (a cluster defines its types) valid in `validate`,
counted in the plan's and the review's quota, and known to `render`; a type no target has
is an error naming the targets."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main

TARGETS = {
    "targets": {
        "laptop": {"type": "docker"},
        "cluster": {
            "type": "kubernetes",
            "instance_types": {"gpu-small": {"cores": 6, "memory_gb": 16, "gpus": 1}},
        },
    }
}


def shop(repo: RepoBuilder, instance_type: str) -> None:
    repo.basics()
    repo.endpoint("shop", traffic={"blue": 100}, compute="azureml:cluster")
    repo.deployment("shop", "blue", type="kubernetes", instance_type=instance_type)
    repo.write_yaml("reconciler.yaml", TARGETS)
    repo.commit("shop")


def validate(repo: RepoBuilder) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["validate", "--repo", str(repo.root), "--output", "json"])
    return result.exit_code, json.loads(result.stdout)


def test_a_kubernetes_targets_own_instance_type_validates(repo: RepoBuilder) -> None:
    shop(repo, "gpu-small")
    code, report = validate(repo)
    assert code == 0, report
    assert report["errors"] == []


def test_a_type_no_target_has_is_an_error_naming_the_targets(repo: RepoBuilder) -> None:
    shop(repo, "gpu-large")
    code, report = validate(repo)
    assert code == 1
    (error,) = report["errors"]
    assert (error["file"], error["field"]) == ("endpoints/shop/blue.yml", "instance_type")
    assert "no target of reconciler.yaml has it: laptop, cluster" in error["message"]


def test_the_review_and_render_know_the_targets_types(repo: RepoBuilder) -> None:
    shop(repo, "gpu-small")
    repo.deployment("shop", "blue", type="kubernetes", instance_type="gpu-small", instance_count=2)
    repo.commit("two instances")
    runner = CliRunner()
    reviewed = runner.invoke(
        main, ["diff", "--base", "HEAD~1", "--repo", str(repo.root), "--output", "json"]
    )
    assert reviewed.exit_code == 2, reviewed.output
    planned = json.loads(reviewed.stdout)
    assert planned["errors"] == []
    # The cluster's cores (6; no Azure size has this name) reach the plan's quota...
    [scale] = planned["steps"]
    assert "(quota: ceil(1.2 x 2) x 6 cores = 18 cores)" in scale["reason"]
    # ... and the review's total.
    review = runner.invoke(
        main, ["diff", "--base", "HEAD~1", "--repo", str(repo.root), "--output", "markdown"]
    )
    assert "12 → **18** cores" in review.output, review.output
    rendered = runner.invoke(main, ["render", "--repo", str(repo.root), "--target", "cluster"])
    assert rendered.exit_code == 0, rendered.output
    assert "nvidia.com/gpu" in rendered.output
