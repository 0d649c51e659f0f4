"""deploy/: the daemon's manifests are valid for two Kubernetes versions, its Role grants
what the Kubernetes target really asks of the API server (every request of a pass against
the fake API server is checked against the Role) and nothing wider, and its command line is
the one `reconcile watch` takes."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_fake import (
    FakeKubernetes,
    Request,
    apply_rev,
    failures,
    gateway_options,
    make_target,
    plan_rev,
    serve,
)
from repo_builder import RepoBuilder

from reconciler.cli import main

kubernetes_validate = pytest.importorskip("kubernetes_validate")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VERSIONS = ("1.29.0", "1.33.0")
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", VERSIONS)
def test_deploy_manifests_are_valid(path: Path, version: str) -> None:
    for document in _documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    (kustomization,) = _documents(DEPLOY / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secret-git.example.yaml"}
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # kustomize itself is not here; the files were checked one by one
    built = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        pytest.skip(f"kubectl kustomize unusable here: {built.stderr.strip()[:200]}")
    for document in yaml.safe_load_all(built.stdout):
        for version in VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


def _daemon() -> dict[str, Any]:
    (deployment,) = _documents(DEPLOY / "deployment.yaml")
    return deployment


def test_daemon_runs_reconcile_watch_with_options_it_has() -> None:
    container = _daemon()["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "watch"
    known = {
        opt
        for param in main.commands["watch"].params  # type: ignore[attr-defined]
        for opt in param.opts
    }
    assert {a for a in args if a.startswith("--")} <= known
    # Every $(VAR) of the arguments comes from the ConfigMap.
    (config,) = _documents(DEPLOY / "configmap.yaml")
    wanted = {v for a in args for v in re.findall(r"\$\((\w+)\)", a)}
    assert wanted <= set(config["data"])
    daemon_source = (Path(__file__).resolve().parents[2] / "reconciler" / "daemon.py").read_text()
    for probe in ("readinessProbe", "livenessProbe"):
        assert f'"{container[probe]["httpGet"]["path"]}"' in daemon_source


def test_git_credentials_come_from_the_secret() -> None:
    pod = _daemon()["spec"]["template"]["spec"]
    (secret,) = _documents(DEPLOY / "secret-git.example.yaml")
    volume = next(v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["GIT_CONFIG_VALUE_0"].endswith("/var/run/secrets/git/credentials")


# --- least privilege --------------------------------------------------------------------

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+)(?P<proxied>/.*)?)?)?$"
)


def _needed(request: Request) -> tuple[str, str, str]:
    """(API group, resource[/subresource], verb) that RBAC checks for a request."""
    match = _PATH.match(request.path)
    assert match is not None, request.path
    assert not match.group("proxied") or match.group("sub") == "proxy", request.path
    group = match.group("group") or ""
    resource = match.group("plural")
    if match.group("sub"):
        resource += "/" + match.group("sub")
    if request.method == "GET":
        verb = "get" if match.group("name") else "list"
    else:
        verb = request.method.lower()
    return group, resource, verb


def _granted() -> set[tuple[str, str, str]]:
    (role,) = _documents(DEPLOY / "role.yaml")
    assert role["kind"] == "Role"  # namespaced: no access beyond its namespace
    granted = set()
    for rule in role["rules"]:
        for value in rule["apiGroups"] + rule["resources"] + rule["verbs"]:
            assert "*" not in value, "no wildcards"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    return granted


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


def test_the_role_grants_every_request_of_the_target(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("rbac-ep", traffic={"blue": 100}, public_network_access="disabled")
    repo.deployment(
        "rbac-ep",
        "blue",
        instance_count=2,
        scale_settings={"type": "target_utilization", "min_instances": 2, "max_instances": 3},
    )
    repo.deployment("rbac-ep", "green", model="azureml:sklearn-regression:2")
    repo.commit("everything")
    for target in (make_target(fake), make_target(fake, gateway_options())):
        assert not failures(apply_rev(repo, target))
        target.logs("rbac-ep", "green")
        target.regenerate_key("rbac-ep", "secondary")
    # The autoscaled deployment's count pulled into new bounds: the scale subresource.
    repo.deployment(
        "rbac-ep",
        "blue",
        instance_count=2,
        scale_settings={"type": "target_utilization", "min_instances": 3, "max_instances": 3},
    )
    repo.commit("at least three")
    # The scale-up is planned; the last pass of a converged apply plans nothing.
    assert plan_rev(repo, make_target(fake)).plan.steps
    result = apply_rev(repo, make_target(fake))
    assert not failures(result) and not result.in_progress, failures(result)
    repo.remove("endpoints/rbac-ep/green.yml")
    repo.remove("endpoints/rbac-ep/blue.yml")
    repo.remove("endpoints/rbac-ep/endpoint.yml")
    repo.commit("nothing")
    assert not failures(apply_rev(repo, make_target(fake), prune=True))

    needed = {_needed(r) for r in fake.requests}
    # Server-side apply may create the object: RBAC then checks create as well as patch.
    applies = [q for q in fake.requests if q.content_type == "application/apply-patch+yaml"]
    needed |= {(g, r, "create") for g, r, _ in map(_needed, applies)}
    granted = _granted()
    assert needed <= granted, sorted(needed - granted)
    # And nothing beyond the kinds the target uses.
    assert {(g, r) for g, r, _ in granted} == {(g, r) for g, r, _ in needed}
