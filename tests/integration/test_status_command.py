"""`reconcile status` read from the status branch of a real git repository: when it was
recorded and of which commit, what each deployment runs (model and environment
`name:version`), and "no endpoints" when there is none; `--live` asks a Kubernetes target
(the fake API server) here, the Docker target in test_docker_first_hour.py."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from click.testing import CliRunner
from kube_fake import apply_rev, failures, make_target, serve
from repo_builder import RepoBuilder
from status_fixtures import apply_head

from reconciler.cli import main
from reconciler.gitsource import GitSource
from reconciler.targets.kubernetes import manifests as m
from reconciler.targets.memory import MemoryTarget


def test_status_names_the_commit_the_time_and_what_each_deployment_runs(
    repo: RepoBuilder,
) -> None:
    repo.basics()
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue")
    commit = repo.commit("blue")
    before = time.time()
    apply_head(repo, MemoryTarget())
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
    apply_head(repo, MemoryTarget())
    result = CliRunner().invoke(main, ["status", "--repo", str(repo.root)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == ["no endpoints"]


def test_status_live_asks_a_kubernetes_target_and_shows_a_deployment_not_ready(
    repo: RepoBuilder, tmp_path: Path
) -> None:
    with serve() as fake:
        config = tmp_path / "kubeconfig"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                    "users": [{"name": "tester", "user": {"token": "not-checked"}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "tester"}}
                    ],
                    "current-context": "fake",
                }
            )
        )
        repo.write_yaml(
            "reconciler.yaml",
            {
                "targets": {
                    "cluster": {
                        "type": "kubernetes",
                        "kubeconfig": str(config),
                        "namespace": "ml",
                        "registry": "127.0.0.1:5000/ml",
                    }
                }
            },
        )
        repo.commit("a cluster, nothing deployed")
        live = CliRunner().invoke(main, ["status", "--live", "--repo", str(repo.root)])
        assert live.exit_code == 0, live.output
        assert live.output.splitlines()[1:] == ["no endpoints"]

        repo.basics()
        repo.endpoint("my-endpoint", traffic={"blue": 100})
        repo.deployment("my-endpoint", "blue", instance_count=2)
        repo.commit("blue")
        assert not failures(apply_rev(repo, make_target(fake)))
        live = CliRunner().invoke(main, ["status", "--live", "--repo", str(repo.root)])
        assert "my-endpoint: Succeeded (Healthy) on cluster" in live.output, live.output
        assert "  blue: Succeeded (Healthy) 2/2 ready; model sklearn-regression:1" in live.output

        # A pod lost behind the reconciler's back: the cluster says so, and so does --live.
        name = m.deployment_object_name("my-endpoint", "blue")
        fake.hold(name)
        fake.set_status("deployments", name, {"replicas": 2, "readyReplicas": 1})
        live = CliRunner().invoke(main, ["status", "--live", "--repo", str(repo.root)])
        blue = next(line for line in live.output.splitlines() if line.startswith("  blue:"))
        assert "(Healthy)" not in blue and "/2 ready" in blue, live.output
        assert "2/2 ready" not in blue
