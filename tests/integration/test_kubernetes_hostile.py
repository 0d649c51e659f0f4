"""The Kubernetes target against a hostile API server: one that ignores label selectors
and lists every object of a kind. Pruning and deleting must still touch only objects that
carry our labels (and this target's name), and observe must not take in anyone else's."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from kube_fake import NAMESPACE, FakeKubernetes, apply_rev, failures, make_target, options, serve
from repo_builder import RepoBuilder

from reconciler.targets.kubernetes import manifests as m

KEPT, GONE = "kept-ep", "gone-ep"


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


@pytest.fixture
def hostile() -> Iterator[FakeKubernetes]:
    with serve(FakeKubernetes(ignore_selectors=True)) as running:
        yield running


def _foreign(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    api = {"Deployment": "apps/v1"}.get(kind, "v1")
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        **extra,
    }


def _put_foreign_objects(fake: FakeKubernetes) -> None:
    """A user's objects in the same namespace, some with look-alike labels of ours."""
    fake.put(_foreign("ConfigMap", "user-settings", data={"a": "b"}))
    fake.put(
        _foreign("Secret", "user-secret", data={"token": base64.b64encode(b"user's").decode()})
    )
    lookalike = _foreign("ConfigMap", "lookalike")
    lookalike["metadata"]["labels"] = {m.ENDPOINT_LABEL: GONE, m.ROLE_LABEL: m.ROLE_ENDPOINT}
    fake.put(lookalike)
    fake.put(
        _foreign(
            "Deployment",
            "user-app",
            spec={
                "replicas": 1,
                "selector": {"matchLabels": {"app": "user-app"}},
                "template": {
                    "metadata": {"labels": {"app": "user-app"}},
                    "spec": {"containers": [{"name": "app", "image": "user/app:1"}]},
                },
            },
        )
    )
    fake.put(_foreign("Service", "user-app", spec={"ports": [{"port": 80}]}))


def test_prune_deletes_only_our_objects_when_the_server_ignores_selectors(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    repo.basics()
    for endpoint in (KEPT, GONE):
        repo.endpoint(endpoint, traffic={"blue": 100})
        repo.deployment(endpoint, "blue")
    repo.deployment(KEPT, "green")
    repo.commit("two endpoints")
    ours = make_target(fake)
    assert not failures(apply_rev(repo, ours))
    # Another target in the same namespace (another repository's reconciler): the
    # managed-by label and our other labels, only its target label differs.
    other_repo = RepoBuilder(repo.root.parent / "other-repo")
    other_repo.basics()
    other_repo.endpoint("theirs", traffic={"blue": 100})
    other_repo.deployment("theirs", "blue")
    other_repo.commit("the other target's endpoint")
    other = make_target(fake, options(name="other-cluster"))
    assert not failures(apply_rev(other_repo, other))
    _put_foreign_objects(fake)
    before = {p: set(fake.names(p)) for p in ("configmaps", "secrets", "deployments", "services")}

    fake.ignore_selectors = True  # from now on every LIST returns the whole kind
    repo.remove(f"endpoints/{GONE}/endpoint.yml")
    repo.remove(f"endpoints/{GONE}/blue.yml")
    repo.remove(f"endpoints/{KEPT}/green.yml")
    repo.commit("one endpoint and one deployment gone")
    result = apply_rev(repo, ours, prune=True)
    assert not failures(result), failures(result)

    # Ours of the endpoint and the deployment that went are gone...
    gone = {m.record_name(GONE), m.router_config_name(GONE), m.keys_secret_name(GONE)}
    gone |= {m.router_name(GONE), m.deployment_object_name(GONE, "blue")}
    gone.add(m.deployment_object_name(KEPT, "green"))
    for plural, names in before.items():
        assert not gone & set(fake.names(plural)), plural
        # ...and nothing else: the user's objects, the look-alike, the other target's.
        assert names - gone == set(fake.names(plural)), plural
    assert {"user-settings", "lookalike"} <= set(fake.names("configmaps"))
    assert "user-secret" in fake.names("secrets")
    assert {"user-app", m.router_name("theirs")} <= set(fake.names("deployments"))
    assert [e.name for e in other.observe().endpoints] == ["theirs"]


def test_observe_takes_in_no_one_elses_objects_when_the_server_ignores_selectors(
    repo: RepoBuilder, hostile: FakeKubernetes
) -> None:
    repo.basics()
    repo.endpoint(KEPT, traffic={"blue": 100})
    repo.deployment(KEPT, "blue")
    repo.commit("ours")
    ours = make_target(hostile)
    assert not failures(apply_rev(repo, ours))
    other_repo = RepoBuilder(repo.root.parent / "other-repo")
    other_repo.basics()
    other_repo.endpoint("theirs", traffic={"blue": 100})
    other_repo.deployment("theirs", "blue")
    other_repo.commit("theirs")
    assert not failures(apply_rev(other_repo, make_target(hostile, options(name="other"))))
    _put_foreign_objects(hostile)

    live = ours.observe()
    assert [e.name for e in live.endpoints] == [KEPT]
    assert [str(d.key) for d in live.deployments] == [f"{KEPT}/blue"]
