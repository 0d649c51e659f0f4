"""The pull-request comment of a change that starts a rollout (`reconcile diff --output
markdown` on real git repositories): the person approving it sees the schedule and the
thresholds the daemon will hold the new version to, or why no rollout starts."""

from __future__ import annotations

from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main

POLICY = {
    "rollouts": {
        "default": {
            "steps": [{"mirror": 20, "for": "10m"}, {"traffic": 10, "for": "5m"}, 50, 100],
            "interval": "1m",
            "thresholds": {"error_rate": 0.01, "p99_ms": 500, "min_requests": 50},
        }
    }
}


def comment(r: RepoBuilder) -> str:
    result = CliRunner().invoke(
        main, ["diff", "--base", "HEAD~1", "--repo", str(r.root), "--output", "markdown"]
    )
    assert result.exit_code == 2, result.output
    return result.output


def stable_blue(r: RepoBuilder) -> None:
    r.basics()
    r.model(version=2, weights="2")
    r.write_yaml("reconciler.yaml", POLICY)
    r.endpoint("my-endpoint", traffic={"blue": 100})
    r.deployment("my-endpoint", "blue")


def test_a_new_deployment_beside_the_stable_one_shows_the_rollout_schedule(
    repo: RepoBuilder,
) -> None:
    stable_blue(repo)
    repo.commit("blue serves")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")
    repo.commit("green, the new model")
    text = comment(repo)
    section = text.split("### Rollouts this change starts", 1)[1].split("###", 1)[0]
    assert "**`my-endpoint`**: `green` (new) against the stable `blue`" in section
    assert "each step a commit to the watched branch" in section
    assert (
        "Schedule: mirror 20% for 10m, traffic 10% for 5m, traffic 50% for 1m, "
        "traffic 100% for 1m; judged every 1m on at least 50 requests; "
        "thresholds: error_rate 0.01, p99_ms 500." in section
    ), section


def test_a_stable_deployment_changed_in_place_says_why_no_rollout_starts(
    repo: RepoBuilder,
) -> None:
    stable_blue(repo)
    repo.commit("blue serves")
    repo.deployment("my-endpoint", "blue", model="azureml:sklearn-regression:2")
    repo.commit("blue's model changed in place")
    section = comment(repo).split("### Rollouts this change starts", 1)[1]
    assert "`my-endpoint`: blue holds all live traffic and changes in place" in section


def test_no_policy_no_rollout_section(repo: RepoBuilder) -> None:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue")
    repo.commit("blue serves")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")
    repo.commit("green")
    assert "Rollouts this change starts" not in comment(repo)
