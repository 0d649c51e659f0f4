"""`reconcile status` read from the status branch of a real git repository: when it was
recorded and of which commit, what each deployment runs (model and environment
`name:version`), and "no endpoints" when there is none. (`--live` against a real target is
in test_docker_first_hour.py.)"""

from __future__ import annotations

import time

import yaml
from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main
from reconciler.engine import run_pass
from reconciler.gitsource import GitSource
from reconciler.targets.memory import MemoryTarget


def _apply_head(repo: RepoBuilder) -> str:
    source = GitSource(repo.root)
    commit = source.resolve("HEAD")
    result = run_pass(
        source.tree(commit),
        MemoryTarget(),
        prune=False,
        dry_run=False,
        revision=commit,
        write_status=lambda files, message: source.write_status(files, message=message),
    )
    assert not result.failed, result.results
    return commit


def test_status_names_the_commit_the_time_and_what_each_deployment_runs(
    repo: RepoBuilder,
) -> None:
    repo.basics()
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue")
    commit = repo.commit("blue")
    before = time.time()
    _apply_head(repo)
    result = CliRunner().invoke(main, ["status", "--repo", str(repo.root)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("status recorded ") and " UTC on reconcile-status" in lines[0]
    recorded = time.strptime(lines[0].split("recorded ")[1][:19], "%Y-%m-%d %H:%M:%S")
    assert abs(time.mktime(recorded) - time.mktime(time.gmtime(before))) < 60
    assert f"my-endpoint: Succeeded (Healthy) at {commit[:12]}" in lines[1]
    blue = next(line for line in lines if line.startswith("  blue:"))
    assert "model sklearn-regression:1, environment sklearn-env:1" in blue
    # The status file holds them too, for scripts.
    _, files = GitSource(repo.root).read_status()
    doc = yaml.safe_load(files["status/my-endpoint.yaml"])
    assert doc["deployments"]["blue"]["model"] == "sklearn-regression:1"
    assert doc["deployments"]["blue"]["environment"] == "sklearn-env:1"


def test_status_says_no_endpoints_when_the_target_has_none(repo: RepoBuilder) -> None:
    repo.write("README.md", "nothing deployed yet\n")
    repo.commit("empty")
    _apply_head(repo)
    result = CliRunner().invoke(main, ["status", "--repo", str(repo.root)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == ["no endpoints"]
