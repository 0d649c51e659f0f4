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
        main,
        [
            "render",
            "--target",
            "kubernetes",
            "--repo",
            str(EXAMPLE_REPO),
            "--worktree",
            "--include-secrets",
        ],
    )
    assert result.exit_code == 0, result.output
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted(d["kind"] for d in documents)
    assert (
        kinds
        == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Secret", "Secret"]
        + ["Service"] * 3
    )
    for document in documents:
        for version in ("1.29.0", "1.33.0"):
            kubernetes_validate.validate(document, version, strict=True)
    assert "Secrets hold freshly generated keys" in result.stdout


def test_render_without_secrets_is_deterministic() -> None:
    args = ["render", "--repo", str(EXAMPLE_REPO), "--worktree", "--no-secrets"]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, [*args, "--namespace", "team-a"])
    assert first.exit_code == 0, first.output
    assert "kind: Secret" not in first.output
    assert first.output == CliRunner().invoke(main, args).output
    assert "namespace: team-a" in second.output and "namespace: default" in first.output
    # --no-secrets is the default now: the same output without it.
    assert first.stdout == CliRunner().invoke(main, args[:-1]).stdout


def several_deployments(repo: RepoBuilder) -> None:
    repo.basics()
    repo.endpoint("alpha", traffic={"blue": 70, "green": 30})
    repo.deployment("alpha", "blue", instance_count=2)
    repo.deployment("alpha", "green")
    repo.endpoint("beta", traffic={"main": 100}, public_network_access="disabled")
    repo.deployment("beta", "main", instance_count=3)
    repo.commit("two endpoints, three deployments")


def _no_anchors_or_aliases(text: str) -> None:
    for event in yaml.parse(text):
        assert not isinstance(event, yaml.AliasEvent), event
        assert getattr(event, "anchor", None) is None, event
    assert "&id0" not in text and "*id0" not in text


def test_render_prints_no_secret_material_by_default(repo: RepoBuilder) -> None:
    """Rendered manifests end up in pull requests and in git: by default they hold no key,
    token secret or admin secret, and say which Secrets the target makes itself."""
    several_deployments(repo)
    args = ["render", "--target", "kubernetes", "--repo", str(repo.root)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert "Secret" not in {d["kind"] for d in documents}
    for word in ("primaryKey", "secondaryKey", "tokenSecret", "adminSecret", "router.json:"):
        assert word not in result.stdout
    # The header names each Secret left out, who makes it, and how to get it printed.
    for endpoint in ("alpha", "beta"):
        assert f"# - {m.keys_secret_name(endpoint)}" in result.stdout
        assert f"# - {m.router_config_name(endpoint)}" in result.stdout
    assert "--include-secrets" in result.stdout
    # The routers still mount their config Secret by name (what the target writes).
    routers = [d for d in documents if d["metadata"]["name"] == m.router_name("alpha")]
    volumes = routers[0]["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["secret"]["secretName"] == m.router_config_name("alpha")
    # Nothing random is left: the same commit renders the same bytes.
    assert CliRunner().invoke(main, args).stdout == result.stdout


def test_render_include_secrets_prints_them_and_warns(repo: RepoBuilder) -> None:
    several_deployments(repo)
    args = ["render", "--target", "kubernetes", "--repo", str(repo.root), "--include-secrets"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "holds secrets" in result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    secrets = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Secret"}
    assert set(secrets) == {m.keys_secret_name(e) for e in ("alpha", "beta")} | {
        m.router_config_name(e) for e in ("alpha", "beta")
    }
    creds = m.credentials_from_secret(secrets[m.keys_secret_name("alpha")]["data"])
    assert len(creds.primary_key) >= 32
    # Both flags at once contradict each other: refused, nothing printed.
    both = CliRunner().invoke(main, [*args, "--no-secrets"])
    assert both.exit_code == 1
    assert both.stdout == "" and "--include-secrets" in both.stderr


def test_rendered_yaml_has_no_anchors_and_loads_back_equal(repo: RepoBuilder) -> None:
    several_deployments(repo)
    base = ["render", "--target", "kubernetes", "--repo", str(repo.root)]
    for args in (base, [*base, "--include-secrets"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        _no_anchors_or_aliases(result.stdout)
        documents = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert len(documents) >= 10
        # Plain YAML says the same as PyYAML's own (aliased) dump of the same documents.
        again = yaml.safe_dump_all(documents, sort_keys=False)
        assert [d for d in yaml.safe_load_all(again) if d] == documents
        # A label map repeated in one object is written out each time it appears.
        router = next(d for d in documents if d["metadata"]["name"] == m.router_name("alpha"))
        own = router["metadata"]["labels"]
        assert router["spec"]["selector"]["matchLabels"] == own
        assert router["spec"]["template"]["metadata"]["labels"] == own


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
    # The attempt before the pod's container last restarted (`kubectl logs --previous`):
    # where an init() raised, for a pod in CrashLoopBackOff.
    fake.pod_previous_logs[pod] = "starting\nFileNotFoundError: model.pkl\n"
    logs = ["logs", "my-endpoint", "blue", "--previous", *base]
    previous = runner.invoke(main, [*logs, "--instance", "1"])
    assert previous.exit_code == 0, previous.output
    assert previous.output == (
        f"==> {pod} (before its last restart) <==\nstarting\nFileNotFoundError: model.pkl\n"
    )
    other = fake.names("pods", f"{m.DEPLOYMENT_LABEL}=blue")[0]
    never = runner.invoke(main, [*logs, "--instance", "0"])
    assert never.exit_code == 0, never.output
    assert never.output.startswith(f"==> {other} (before its last restart) <==\n(not restarted")
