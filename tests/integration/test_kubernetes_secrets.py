"""Secret references on the Kubernetes target (the fake API server): secretKeyRefs to
connection Secrets the target never writes; a missing Secret or key warns at dry-run and
fails that deployment at once, while another of the same commit is created."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from kube_fake import NAMESPACE, FakeKubernetes, apply_rev, make_target, plan_rev, serve
from repo_builder import RepoBuilder

from reconciler.model.plan import Action
from reconciler.model.results import Outcome
from reconciler.targets.kubernetes import manifests as m

EP, OTHER = "sec-ep", "plain-ep"
KEY_REF = "${{azureml://connections/openai/credentials/api-key}}"
URL_REF = "${{azureml://connections/openai/target}}"


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


def secret(data: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "conn-openai", "namespace": NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def test_missing_connection_secret_warns_fails_its_deployment_alone_then_works(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    repo.basics()
    repo.endpoint(EP, traffic={"blue": 100})
    repo.deployment(EP, "blue", environment_variables={"API_KEY": KEY_REF, "API_URL": URL_REF})
    repo.endpoint(OTHER, traffic={"blue": 100})
    repo.deployment(OTHER, "blue")
    repo.commit("a reference to a Secret the cluster lacks")
    target = make_target(fake)

    planned = plan_rev(repo, target).plan
    warned = {w.field: w for w in planned.warnings if "conn-openai" in w.message}
    assert set(warned) == {"environment_variables.API_KEY", "environment_variables.API_URL"}
    assert warned["environment_variables.API_KEY"].file == f"endpoints/{EP}/blue.yml"
    assert (
        "kubectl create secret generic conn-openai"
        in warned["environment_variables.API_KEY"].message
    )

    result = apply_rev(repo, target)
    failed = [r for r in result.results if r.outcome == Outcome.FAILED]
    assert len(failed) == 1, result.results
    step = result.plan.steps[failed[0].index]
    assert (step.action, step.endpoint) == (Action.CREATE_DEPLOYMENT, EP)
    assert failed[0].error_code == "MissingConnection"
    assert "conn-openai" in failed[0].message
    assert fake.get("deployments", m.deployment_object_name(EP, "blue")) is None
    assert fake.get("deployments", m.deployment_object_name(OTHER, "blue")) is not None
    assert fake.get("secrets", "conn-openai") is None  # never written by the target

    # A Secret without the target key: still named, key by key.
    fake.put(secret({"api-key": "s3cr3t"}))
    planned = plan_rev(repo, target).plan
    warned = {w.field: w for w in planned.warnings if "conn-openai" in w.message}
    assert set(warned) == {"environment_variables.API_URL"}
    assert "key target of Secret conn-openai" in warned["environment_variables.API_URL"].message

    fake.put(secret({"api-key": "s3cr3t", "target": "https://x/"}))
    assert not [w for w in plan_rev(repo, target).plan.warnings if "conn-openai" in w.message]
    result = apply_rev(repo, target)
    assert all(r.outcome == Outcome.SUCCEEDED for r in result.results), result.results
    deployment = fake.get("deployments", m.deployment_object_name(EP, "blue"))
    assert deployment is not None
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "conn-openai", "key": "api-key"}
    assert "s3cr3t" not in str(deployment)
