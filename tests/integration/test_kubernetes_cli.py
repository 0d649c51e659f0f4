"""The command line with a Kubernetes target: `render`, and commands reaching the fake API
server through a kubeconfig (context, namespace) as they would reach a cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from kube_fake import FakeKubernetes, apply_rev, failures, make_target, serve
from repo_builder import RepoBuilder

from reconciler.cli import main
from reconciler.targets.kubernetes import manifests as m
from reconciler.targets.kubernetes.client import connect
from reconciler.targets.kubernetes.options import KubernetesOptions

EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "example-repo"


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


def write_kubeconfig(path: Path, server: str, *, namespace: str = "ml") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-checked"}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "tester", "namespace": namespace},
                    },
                    {"name": "other", "context": {"cluster": "fake", "user": "tester"}},
                ],
                "current-context": "fake",
            }
        )
    )
    return path


def test_render_prints_valid_manifests_of_the_example_repo() -> None:
    import kubernetes_validate

    result = CliRunner().invoke(
        main, ["render", "--target", "kubernetes", "--repo", str(EXAMPLE_REPO), "--worktree"]
    )
    assert result.exit_code == 0, result.output
    documents = [d for d in yaml.safe_load_all(result.output) if d]
    kinds = sorted(d["kind"] for d in documents)
    assert (
        kinds
        == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Secret", "Secret"]
        + ["Service"] * 3
    )
    for document in documents:
        for version in ("1.29.0", "1.33.0"):
            kubernetes_validate.validate(document, version, strict=True)
    assert "Secrets hold freshly generated keys" in result.output


def test_render_without_secrets_is_deterministic() -> None:
    args = ["render", "--repo", str(EXAMPLE_REPO), "--worktree", "--no-secrets"]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, [*args, "--namespace", "team-a"])
    assert first.exit_code == 0, first.output
    assert "kind: Secret" not in first.output
    assert first.output == CliRunner().invoke(main, args).output
    assert "namespace: team-a" in second.output and "namespace: default" in first.output


def test_render_refuses_a_docker_target() -> None:
    result = CliRunner().invoke(
        main, ["render", "--target", "local", "--repo", str(EXAMPLE_REPO), "--worktree"]
    )
    assert result.exit_code == 1
    assert "not a kubernetes target" in result.output


def test_connect_reads_the_kubeconfig_context_and_namespace(
    tmp_path: Path, fake: FakeKubernetes
) -> None:
    config = write_kubeconfig(tmp_path / "config", fake.url, namespace="team-a")
    connection = connect(KubernetesOptions(kubeconfig=config))
    assert connection.namespace == "team-a" and not connection.in_cluster
    assert connection.api_client.configuration.host == fake.url
    other = connect(KubernetesOptions(kubeconfig=config, context="other"))
    assert other.namespace == "default"
    explicit = connect(KubernetesOptions(kubeconfig=config, namespace="ml"))
    assert explicit.namespace == "ml"


def test_connect_uses_the_service_account_in_a_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.targets.kubernetes import client as client_module

    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("token-of-the-pod")
    (account / "namespace").write_text("ml-system\n")
    (account / "ca.crt").write_text("not read until a TLS connection\n")
    monkeypatch.setattr(client_module, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.setattr(
        "kubernetes.config.incluster_config.SERVICE_TOKEN_FILENAME", str(account / "token")
    )
    monkeypatch.setattr(
        "kubernetes.config.incluster_config.SERVICE_CERT_FILENAME", str(account / "ca.crt")
    )
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    connection = connect(KubernetesOptions())
    assert connection.in_cluster and connection.namespace == "ml-system"
    assert connection.api_client.configuration.host == "https://127.0.0.1:6443"


def test_dry_run_credentials_and_logs_through_a_kubeconfig(
    repo: RepoBuilder, fake: FakeKubernetes, tmp_path: Path
) -> None:
    config = write_kubeconfig(tmp_path / "kubeconfig", fake.url)
    repo.basics()
    repo.endpoint("my-endpoint", traffic={"blue": 100})
    repo.deployment("my-endpoint", "blue", instance_count=2)
    repo.write_yaml(
        "reconciler.yaml",
        {
            "targets": {
                "cluster": {
                    "type": "kubernetes",
                    "kubeconfig": str(config),
                    "registry": "127.0.0.1:5000/ml",
                }
            }
        },
    )
    repo.commit("blue")
    assert not failures(apply_rev(repo, make_target(fake)))
    runner = CliRunner()
    base = ["--repo", str(repo.root)]

    planned = runner.invoke(main, [*base, "--dry-run", "--output", "json"])
    assert planned.exit_code == 0, planned.output
    assert json.loads(planned.output)["steps"] == []

    repo.deployment("my-endpoint", "blue", instance_count=3)
    repo.commit("scale")
    planned = runner.invoke(main, [*base, "--dry-run", "--output", "json"])
    assert planned.exit_code == 2, planned.output
    assert [s["action"] for s in json.loads(planned.output)["steps"]] == ["scale_deployment"]

    creds = runner.invoke(main, ["credentials", "my-endpoint", *base])
    assert creds.exit_code == 0, creds.output
    keys = json.loads(creds.output)
    assert keys == {
        "primaryKey": make_target(fake).endpoint_credentials("my-endpoint").primary_key,
        "secondaryKey": make_target(fake).endpoint_credentials("my-endpoint").secondary_key,
    }

    pod = fake.names("pods", f"{m.DEPLOYMENT_LABEL}=blue")[1]
    fake.pod_logs[pod] = "".join(f"line {i}\n" for i in range(50))
    logs = runner.invoke(
        main, ["logs", "my-endpoint", "blue", "--instance", "1", "--lines", "3", *base]
    )
    assert logs.exit_code == 0, logs.output
    assert logs.output == f"==> {pod} <==\nline 47\nline 48\nline 49\n"
