"""Field ownership as a real API server keeps it, and the target living with it.

First the fake API server itself, over plain HTTP: server-side apply by field manager
(managedFields, conflicts, force, fields dropped only when their last owner stops applying
them), Update operations taking what they change, the scale subresource, generation and
the controller's lag, label selectors, namespaces. Then the target: a deployment that
becomes autoscaled hands `replicas` over before it stops applying the field, so the count
never falls back to the default of 1 (server-side apply's "transferring ownership").
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kube_fake import NAMESPACE, FakeKubernetes, apply_rev, failures, make_target, plan_rev, serve
from repo_builder import RepoBuilder

from reconciler.targets.kubernetes import manifests as m

EP = "own-ep"
BLUE = m.deployment_object_name(EP, "blue")
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


def call(
    fake: FakeKubernetes,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = "application/json",
    **query: str,
) -> tuple[int, Any]:
    """One request over HTTP, as any client would send it; (status, JSON answer)."""
    url = fake.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def apply(
    fake: FakeKubernetes, doc: dict[str, Any], manager: str, *, force: bool = False
) -> tuple[int, Any]:
    name = doc["metadata"]["name"]
    return call(
        fake,
        "PATCH",
        f"{DEPLOYMENTS}/{name}",
        doc,
        content_type="application/apply-patch+yaml",
        fieldManager=manager,
        force="true" if force else "false",
    )


def deployment(name: str = "web", **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "web:1"}]},
            },
            **spec,
        },
    }


def replicas_only(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    }


# --- the fake API server -------------------------------------------------------------------


def test_apply_records_managed_fields_per_manager(fake: FakeKubernetes) -> None:
    status, created = apply(fake, deployment(replicas=3), "tool-a")
    assert status == 201
    (entry,) = created["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"], entry["fieldsType"]) == (
        "tool-a",
        "Apply",
        "FieldsV1",
    )
    fields = entry["fieldsV1"]
    assert fields["f:spec"]["f:replicas"] == {}
    assert fields["f:metadata"]["f:labels"] == {"f:app": {}}
    containers = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert containers == {'k:{"name":"main"}': {".": {}, "f:image": {}, "f:name": {}}}
    # Server-set and defaulted fields belong to nobody.
    assert created["spec"]["revisionHistoryLimit"] == 10
    assert "f:revisionHistoryLimit" not in fields["f:spec"]


def test_apply_conflicts_name_the_other_manager_unless_forced(fake: FakeKubernetes) -> None:
    apply(fake, deployment(replicas=3), "tool-a")
    status, answer = apply(fake, replicas_only("web", 5), "tool-b")
    assert status == 409 and answer["reason"] == "Conflict"
    assert (
        answer["message"]
        == 'Apply failed with 1 conflict: conflict with "tool-a" using apps/v1: .spec.replicas'
    )
    assert answer["details"]["causes"] == [
        {
            "reason": "FieldManagerConflict",
            "message": 'conflict with "tool-a" using apps/v1',
            "field": ".spec.replicas",
        }
    ]
    assert fake.get("deployments", "web")["spec"]["replicas"] == 3  # type: ignore[index]
    # The value it already has: no conflict, ownership shared.
    status, _ = apply(fake, replicas_only("web", 3), "tool-b")
    assert status == 200
    assert fake.owners("deployments", "web", "spec", "replicas") == [
        "tool-a/Apply",
        "tool-b/Apply",
    ]
    # force takes the field over.
    status, forced = apply(fake, replicas_only("web", 5), "tool-c", force=True)
    assert status == 200 and forced["spec"]["replicas"] == 5
    assert fake.owners("deployments", "web", "spec", "replicas") == ["tool-c/Apply"]


def test_a_field_left_out_goes_only_when_its_applier_was_the_only_owner(
    fake: FakeKubernetes,
) -> None:
    apply(fake, deployment(replicas=3), "tool-a")
    status, alone = apply(fake, deployment(), "tool-a")
    assert status == 200
    assert alone["spec"]["replicas"] == 1  # removed, then defaulted: the reset
    assert fake.owners("deployments", "web", "spec", "replicas") == []

    apply(fake, deployment(replicas=3), "tool-a")
    apply(fake, replicas_only("web", 3), "handover")
    _, shared = apply(fake, deployment(), "tool-a")
    assert shared["spec"]["replicas"] == 3  # the other owner keeps it
    assert fake.owners("deployments", "web", "spec", "replicas") == ["handover/Apply"]
    assert fake.replicas_history["web"] == [3, 1, 3]


def test_updates_own_what_they_change_and_the_scale_subresource_too(
    fake: FakeKubernetes,
) -> None:
    apply(fake, deployment(replicas=2), "tool-a")
    # A scale to the value it has changes nothing, so it takes nothing.
    status, _ = call(
        fake,
        "PATCH",
        f"{DEPLOYMENTS}/web/scale",
        {"spec": {"replicas": 2}},
        content_type="application/merge-patch+json",
        fieldManager="scaler",
    )
    assert status == 200
    assert fake.owners("deployments", "web", "spec", "replicas") == ["tool-a/Apply"]
    fake.autoscale("web", 4)
    assert fake.owners("deployments", "web", "spec", "replicas") == [
        "kube-controller-manager/Update/scale"
    ]
    # An edit by hand (a merge patch) owns the label it changed; the applier keeps the rest.
    status, edited = call(
        fake,
        "PATCH",
        f"{DEPLOYMENTS}/web",
        {"metadata": {"labels": {"app": "web", "team": "x"}}},
        content_type="application/merge-patch+json",
        fieldManager="kubectl-edit",
    )
    assert status == 200 and edited["metadata"]["labels"]["team"] == "x"
    assert fake.owners("deployments", "web", "metadata", "labels", "team") == [
        "kubectl-edit/Update"
    ]
    assert fake.owners("deployments", "web", "metadata", "labels", "app") == ["tool-a/Apply"]
    # The applier's next apply conflicts with neither (it leaves replicas and team alone).
    status, again = apply(fake, deployment(), "tool-a")
    assert status == 200
    assert again["spec"]["replicas"] == 4 and again["metadata"]["labels"]["team"] == "x"


def test_generation_follows_spec_and_the_controller_lags_one_request(
    fake: FakeKubernetes,
) -> None:
    _, created = apply(fake, deployment(replicas=1), "tool-a")
    assert created["metadata"]["generation"] == 1 and "status" not in created
    _, seen = call(fake, "GET", f"{DEPLOYMENTS}/web")
    assert "status" not in seen  # the controller has not run yet
    _, seen = call(fake, "GET", f"{DEPLOYMENTS}/web")
    assert seen["status"]["observedGeneration"] == 1
    _, labelled = apply(
        fake,
        deployment(replicas=1) | {"metadata": {"name": "web", "labels": {"app": "web", "x": "y"}}},
        "tool-a",
    )
    assert labelled["metadata"]["generation"] == 1  # metadata is not spec
    _, scaled = apply(fake, deployment(replicas=2), "tool-a")
    assert scaled["metadata"]["generation"] == 2
    _, stale = call(fake, "GET", f"{DEPLOYMENTS}/web")
    assert stale["status"]["observedGeneration"] == 1 and stale["status"]["replicas"] == 1
    _, fresh = call(fake, "GET", f"{DEPLOYMENTS}/web")
    assert fresh["status"]["observedGeneration"] == 2 and fresh["status"]["replicas"] == 2


def test_a_deployment_whose_selector_misses_its_template_is_invalid(
    fake: FakeKubernetes,
) -> None:
    doc = deployment()
    doc["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    status, answer = apply(fake, doc, "tool-a")
    assert status == 422 and "selector" in answer["message"]
    assert fake.get("deployments", "web") is None
    apply(fake, deployment(), "tool-a")
    changed = deployment()
    changed["spec"]["selector"]["matchLabels"]["tier"] = "x"
    changed["spec"]["template"]["metadata"]["labels"]["tier"] = "x"
    status, answer = apply(fake, changed, "tool-a")
    assert status == 422 and "immutable" in answer["message"]


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("app=web", ["web"]),
        ("app==web", ["web"]),
        ("app!=web", ["api", "bare"]),
        ("app", ["api", "web"]),
        ("!app", ["bare"]),
        ("app in (web, api)", ["api", "web"]),
        ("app notin (web),tier=front", ["api"]),
        ("", ["api", "bare", "web"]),
    ],
)
def test_label_selectors_select_as_the_api_server_does(
    fake: FakeKubernetes, selector: str, names: list[str]
) -> None:
    for name, labels in (
        ("web", {"app": "web", "tier": "front"}),
        ("api", {"app": "api", "tier": "front"}),
        ("bare", {}),
    ):
        fake.put(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
            }
        )
    status, answer = call(
        fake, "GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps", labelSelector=selector
    )
    assert status == 200
    assert sorted(i["metadata"]["name"] for i in answer["items"]) == names


@pytest.mark.parametrize("selector", ["app=web,", "app in web", "a b", "app=(x)", "-bad-=x"])
def test_a_malformed_selector_is_a_bad_request(fake: FakeKubernetes, selector: str) -> None:
    status, answer = call(
        fake, "GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps", labelSelector=selector
    )
    assert status == 400 and answer["reason"] == "BadRequest"


def test_a_write_into_a_missing_namespace_is_not_found(fake: FakeKubernetes) -> None:
    status, answer = call(
        fake,
        "PATCH",
        "/apis/apps/v1/namespaces/absent/deployments/web",
        deployment(),
        content_type="application/apply-patch+yaml",
        fieldManager="tool-a",
    )
    assert status == 404
    assert answer["details"] == {"name": "absent", "kind": "namespaces"}
    # Listing a namespace that does not exist is empty, not an error.
    status, answer = call(fake, "GET", "/apis/apps/v1/namespaces/absent/deployments")
    assert status == 200 and answer["items"] == []


# --- the target ------------------------------------------------------------------------------


def _autoscaled(repo: RepoBuilder, count: int) -> None:
    repo.deployment(
        EP,
        "blue",
        instance_count=count,
        scale_settings={
            "type": "target_utilization",
            "min_instances": 2,
            "max_instances": 6,
            "target_utilization_percentage": 60,
        },
    )


def test_a_deployment_that_becomes_autoscaled_keeps_its_count_through_the_handover(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    repo.basics()
    repo.endpoint(EP, traffic={"blue": 100})
    repo.deployment(EP, "blue", instance_count=3)
    repo.commit("three fixed instances")
    target = make_target(fake)
    assert not failures(apply_rev(repo, target))
    assert fake.owners("deployments", BLUE, "spec", "replicas") == [f"{m.MANAGER}/Apply"]

    _autoscaled(repo, 3)
    repo.commit("autoscaled from three")
    result = apply_rev(repo, target)
    assert not failures(result), failures(result)
    # Never reset to the default of 1 on the way: the field was handed over first.
    assert fake.replicas_history[BLUE] == [3]
    assert fake.owners("deployments", BLUE, "spec", "replicas") == [f"{m.HANDOVER_MANAGER}/Apply"]
    assert fake.get("horizontalpodautoscalers", BLUE) is not None

    # The autoscaler takes it from there; an update of the deployment leaves its count.
    fake.autoscale(BLUE, 5)
    assert plan_rev(repo, target).plan.steps == ()
    repo.code(version="2")
    repo.commit("code v2")
    result = apply_rev(repo, target)
    assert not failures(result), failures(result)
    assert fake.replicas_history[BLUE] == [3, 5]
    assert fake.owners("deployments", BLUE, "spec", "replicas") == [
        "kube-controller-manager/Update/scale"
    ]


def test_an_autoscaled_deployment_back_to_a_fixed_count_takes_the_field_back(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    repo.basics()
    repo.endpoint(EP, traffic={"blue": 100})
    _autoscaled(repo, 2)
    repo.commit("autoscaled")
    target = make_target(fake)
    assert not failures(apply_rev(repo, target))
    fake.autoscale(BLUE, 4)

    repo.deployment(EP, "blue", instance_count=4)
    repo.commit("four fixed")
    result = apply_rev(repo, target)
    assert not failures(result), failures(result)
    assert fake.get("horizontalpodautoscalers", BLUE) is None
    # Applied with the value the autoscaler left: no conflict, so the field is shared
    # (force takes only what conflicts) until the HPA is gone; ours from now on.
    assert f"{m.MANAGER}/Apply" in fake.owners("deployments", BLUE, "spec", "replicas")
    # Created at its start count (not at the default of 1, then scaled).
    assert fake.replicas_history[BLUE] == [2, 4]


def test_objects_on_the_server_after_the_merges_are_valid_for_the_official_schema(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    """What server-side apply made of our manifests (merged, defaulted, handed over,
    scaled) is still valid, as the API server would have checked."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    repo.basics()
    repo.endpoint(EP, traffic={"blue": 100}, public_network_access="disabled")
    repo.deployment(EP, "blue", instance_count=3, egress_public_network_access="disabled")
    repo.commit("fixed")
    target = make_target(fake)
    assert not failures(apply_rev(repo, target))
    _autoscaled(repo, 3)
    repo.commit("autoscaled")
    assert not failures(apply_rev(repo, target))
    fake.autoscale(BLUE, 4)
    kinds = set()
    plurals = ("deployments", "services", "secrets", "configmaps", "horizontalpodautoscalers")
    for plural in (*plurals, "networkpolicies"):
        for obj in fake.list(plural):
            kinds.add(obj["kind"])
            kubernetes_validate.validate(obj, "1.33.0", strict=True)
    assert kinds == {
        "Deployment",
        "Service",
        "Secret",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
