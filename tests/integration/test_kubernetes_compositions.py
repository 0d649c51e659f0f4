"""Compositions on one namespace of the fake API server, with faults: two repositories that
kept the same target name, two targets (other names) on the same namespace, and one
endpoint's state (its record ConfigMap, keys and router config Secrets) deleted or
corrupted. Neither repository nor target sees, plans for, writes over, prunes, rotates the
keys of, reads the keys or logs of the other's endpoint; the repository that made it repairs
it. A checkout that gained a remote, and a clone URL in other case, are still its maker.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from daemon_process import WatchProcess
from kube_fake import (
    NAMESPACE,
    FakeKubernetes,
    apply_rev,
    failures,
    gateway_options,
    make_target,
    one_pass,
    options,
    plan_rev,
    serve,
)
from repo_builder import RepoBuilder
from test_kubernetes_cli import write_kubeconfig
from waiting import wait_for

from reconciler.cli import main
from reconciler.gitsource import GitSource
from reconciler.router.tokens import hash_key
from reconciler.targets.base import TargetError
from reconciler.targets.kubernetes import manifests as m
from reconciler.targets.kubernetes.client import KubeClient

EP = "shared-ep"
ONE, OTHER = "github.com/org/one", "github.com/org/other"
BLUE = m.deployment_object_name(EP, "blue")


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


@pytest.fixture
def other(tmp_path: Path) -> RepoBuilder:
    return RepoBuilder(tmp_path / "other")


def _endpoint(repo: RepoBuilder, name: str, message: str) -> None:
    repo.basics()
    repo.endpoint(name, traffic={"blue": 100})
    repo.deployment(name, "blue")
    repo.commit(message)


def _lose_state(fake: FakeKubernetes, how: str) -> None:
    """The endpoint's state on the server: deleted, or its JSON truncated or of the wrong
    shape (someone's `kubectl edit`); its router and instances run on."""
    client = KubeClient.for_host(fake.url, NAMESPACE)
    state = [
        ("configmaps", "ConfigMap", m.record_name(EP), m.ENDPOINT_RECORD),
        ("secrets", "Secret", m.router_config_name(EP), m.ROUTER_CONFIG_FILE),
        ("secrets", "Secret", m.keys_secret_name(EP), "primaryKey"),
    ]
    for plural, kind, name, key in state:
        if how == "deleted":
            client.delete(kind, name)
            continue
        obj = fake.get(plural, name)
        assert obj is not None
        bad = '{"name": "shared-' if how == "truncated" else "[1, 2]"
        obj["data"] = {key: bad if kind == "ConfigMap" else base64.b64encode(bad.encode()).decode()}
        fake.put(obj)


def _refuses_everything(target: object, *, owner: str) -> None:
    """Each operation beyond the plan refuses the endpoint, naming who made it."""
    calls = {
        "credentials": lambda: target.endpoint_credentials(EP),  # type: ignore[attr-defined]
        "token": lambda: target.token(EP, now=0.0),  # type: ignore[attr-defined]
        "regenerate-key": lambda: target.regenerate_key(EP, "primary"),  # type: ignore[attr-defined]
        "logs": lambda: target.logs(EP, "blue"),  # type: ignore[attr-defined]
        "previous logs": lambda: target.previous_logs(EP, "blue"),  # type: ignore[attr-defined]
    }
    for what, call in calls.items():
        with pytest.raises(TargetError) as refused:
            call()
        assert owner in str(refused.value), (what, str(refused.value))


@pytest.mark.parametrize("state", ["kept", "deleted", "truncated", "wrong-shape"])
def test_a_second_repository_on_the_same_target_leaves_the_first_ones_endpoint_alone(
    repo: RepoBuilder, other: RepoBuilder, fake: FakeKubernetes, state: str
) -> None:
    _endpoint(repo, EP, "one's endpoint")
    assert not failures(apply_rev(repo, make_target(fake, repository=ONE)))
    pods = fake.names("pods", f"{m.ENDPOINT_LABEL}={EP},{m.ROLE_LABEL}={m.ROLE_INSTANCE}")
    fake.pod_logs[pods[0]] = "one's request bodies\n"
    if state != "kept":
        _lose_state(fake, state)
    before = {plural: fake.names(plural) for plural in ("deployments", "services", "secrets")}
    keys = fake.get("secrets", m.keys_secret_name(EP))

    _endpoint(other, "other-ep", "other's endpoint")
    theirs = make_target(fake, repository=OTHER)
    assert EP not in [e.name for e in theirs.observe().endpoints]
    assert not [d for d in theirs.observe().deployments if d.key.endpoint == EP]
    planned = plan_rev(other, theirs, prune=True)
    assert [s.target_name for s in planned.plan.steps if EP in s.target_name] == []
    assert not failures(apply_rev(other, theirs, prune=True))
    for plural, names in before.items():
        assert set(names) <= set(fake.names(plural)), plural
    assert fake.get("secrets", m.keys_secret_name(EP)) == keys
    _refuses_everything(theirs, owner=ONE)

    # Its maker sees it (broken, when its state was lost) and repairs it.
    ours = make_target(fake, repository=ONE)
    assert EP in [e.name for e in ours.observe().endpoints]
    assert not failures(apply_rev(repo, ours, prune=True))
    assert ours.endpoint_credentials(EP).primary_key
    assert not plan_rev(repo, ours, prune=True).plan.steps


def test_the_same_endpoint_in_a_second_repository_is_refused_not_taken_over(
    repo: RepoBuilder, other: RepoBuilder, fake: FakeKubernetes
) -> None:
    _endpoint(repo, EP, "one's endpoint")
    assert not failures(apply_rev(repo, make_target(fake, repository=ONE)))
    _lose_state(fake, "deleted")  # nothing left that says "exists": only the router, instances
    _endpoint(other, EP, "the same name")
    theirs = make_target(fake, repository=OTHER)
    result = apply_rev(other, theirs)
    assert failures(result) and ONE in failures(result)[0], failures(result)
    assert fake.get("secrets", m.keys_secret_name(EP)) is None  # no keys of theirs written
    router = fake.get("deployments", m.router_name(EP))
    assert router is not None and router["metadata"]["annotations"][m.REPOSITORY_ANNOTATION] == ONE


@pytest.mark.parametrize("state", ["kept", "deleted"])
def test_a_second_target_on_the_same_namespace_refuses_an_endpoint_of_the_same_name(
    repo: RepoBuilder, other: RepoBuilder, fake: FakeKubernetes, state: str
) -> None:
    """Object names are the endpoint's alone: a second target writing them would take the
    first one's endpoint over (its keys, its router); it refuses, naming that target."""
    _endpoint(repo, EP, "one's endpoint")
    assert not failures(apply_rev(repo, make_target(fake, repository=ONE)))
    if state != "kept":
        _lose_state(fake, state)
    before = {
        plural: {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in fake.list(plural)}
        for plural in ("deployments", "services", "secrets", "configmaps")
    }
    _endpoint(other, EP, "the same name")
    second = make_target(fake, options(name="cluster-b"), repository=ONE)
    assert second.observe().endpoints == ()
    result = apply_rev(other, second, prune=True)
    assert failures(result) and "target cluster " in failures(result)[0], failures(result)
    after = {
        plural: {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in fake.list(plural)}
        for plural in before
    }
    assert after == before
    _refuses_everything(second, owner="target cluster ")


def test_a_remote_added_to_the_checkout_keeps_its_endpoints_its_own(
    repo: RepoBuilder, fake: FakeKubernetes, tmp_path: Path
) -> None:
    _endpoint(repo, EP, "made before the remote")
    folder = f"path:{repo.root.resolve()}"
    assert not failures(apply_rev(repo, make_target(fake, repository=folder, repo_root=repo.root)))
    remote = make_target(fake, repository="github.com/org/models", repo_root=repo.root)
    assert EP in [e.name for e in remote.observe().endpoints]
    assert not plan_rev(repo, remote).plan.steps
    remote.regenerate_key(EP, "primary")
    # Another folder with no remote is another repository.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stranger = make_target(fake, repository=f"path:{elsewhere}", repo_root=elsewhere)
    assert EP not in [e.name for e in stranger.observe().endpoints]
    _refuses_everything(stranger, owner=folder)


def test_clone_urls_in_other_case_are_one_repository(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    _endpoint(repo, EP, "one's endpoint")
    assert not failures(apply_rev(repo, make_target(fake, repository="github.com/Org/Models")))
    clone = make_target(fake, repository="github.com/org/models")
    assert EP in [e.name for e in clone.observe().endpoints]
    assert not [s for s in plan_rev(repo, clone, prune=True).plan.steps]
    assert clone.endpoint_credentials(EP).primary_key
    # The case of a host that tells case apart counts.
    elsewhere = make_target(fake, repository="git.example.com/org/models")
    assert EP not in [e.name for e in elsewhere.observe().endpoints]


def test_endpoints_made_before_repositories_were_recorded_stay_everyones(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    """Objects with no repository annotation (made by an earlier version, or through the
    API with no repository): any repository of the target takes them as its own, as before
    (nothing tells whose they are)."""
    _endpoint(repo, EP, "one's endpoint")
    assert not failures(apply_rev(repo, make_target(fake)))
    router = fake.get("deployments", m.router_name(EP))
    assert router is not None
    assert m.REPOSITORY_ANNOTATION not in (router["metadata"].get("annotations") or {})
    ours = make_target(fake, repository=ONE)
    assert EP in [e.name for e in ours.observe().endpoints]
    assert not failures(apply_rev(repo, ours, prune=True))
    assert EP in [e.name for e in make_target(fake, repository=OTHER).observe().endpoints]


def test_an_endpoint_made_before_repositories_were_recorded_is_its_own_until_changed(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    """The upgrade: an endpoint of an earlier version (no annotation) stays its repository's
    (no refusal); a pass with nothing to change writes nothing, so nothing is recorded; the
    owner's next change records its repository (server-side apply), and from then on
    another repository of the target neither sees nor prunes it."""
    _endpoint(repo, EP, "one's endpoint")
    assert not failures(apply_rev(repo, make_target(fake)))
    ours = make_target(fake, repository=ONE)
    assert ours.endpoint_credentials(EP) is not None
    ours.logs(EP, "blue")
    fake.requests.clear()
    assert not failures(apply_rev(repo, ours))
    assert [r for r in fake.requests if r.method not in ("GET",)] == []
    assert EP in [e.name for e in make_target(fake, repository=OTHER).observe().endpoints]
    repo.deployment(EP, "green")
    repo.commit("green")
    assert not failures(apply_rev(repo, ours))
    green = fake.get("deployments", m.deployment_object_name(EP, "green"))
    assert green is not None
    assert green["metadata"]["annotations"][m.REPOSITORY_ANNOTATION] == ONE
    theirs = make_target(fake, repository=OTHER)
    assert EP not in [e.name for e in theirs.observe().endpoints]
    their_repo = RepoBuilder(repo.root.parent / "theirs")
    _endpoint(their_repo, "their-ep", "theirs")
    assert not failures(apply_rev(their_repo, theirs, prune=True))
    assert fake.get("deployments", m.router_name(EP)) is not None
    assert EP in [e.name for e in ours.observe().endpoints]


def test_a_long_repository_identity_in_any_script_is_recorded_whole_in_an_annotation(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    """The identity is recorded raw (not hashed), in an annotation alone: no label (63
    characters of a narrow alphabet; the fake refuses others, as the API server does) nor
    selector holds it, so a folder of 400 characters in any script is recorded whole and
    still tells one repository from another."""
    long = "path:/srv/" + "модели-ünïcödé-名前/" * 20 + "//deploy"
    assert len(long) > 300
    _endpoint(repo, EP, "one's endpoint")
    assert not failures(apply_rev(repo, make_target(fake, repository=long)))
    for plural, name in (("deployments", m.router_name(EP)), ("configmaps", m.record_name(EP))):
        obj = fake.get(plural, name)
        assert obj is not None
        assert obj["metadata"]["annotations"][m.REPOSITORY_ANNOTATION] == long
        assert long not in json.dumps(obj["metadata"].get("labels"), ensure_ascii=False)
    assert EP in [e.name for e in make_target(fake, repository=long).observe().endpoints]
    assert EP not in [e.name for e in make_target(fake, repository=long[:-1]).observe().endpoints]


def _ownership_lists(fake: FakeKubernetes) -> dict[str, int]:
    """The lists of an endpoint's objects across targets (whose is it?) by endpoint."""
    found: dict[str, int] = {}
    for r in fake.requests:
        selector = r.query.get("labelSelector", "")
        if r.method == "GET" and m.TARGET_LABEL not in selector and m.ENDPOINT_LABEL in selector:
            name = selector.split(f"{m.ENDPOINT_LABEL}=")[1].split(",")[0]
            found[name] = found.get(name, 0) + 1
    return found


def test_whose_an_endpoint_is_is_asked_once_a_pass_and_not_again_by_each_read(
    repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    """Three lists (ConfigMap, Secret, Deployment) tell whose an endpoint is: asked once a
    pass for each endpoint it changes, whatever the number of its steps, and once in all by
    the reads that follow (credentials, logs, metrics) until the next pass observes."""
    repo.basics()
    for name in ("ep-a", "ep-b", "ep-c"):
        repo.endpoint(name, traffic={"blue": 100})
        repo.deployment(name, "blue")
    repo.commit("three endpoints")
    target = make_target(fake, repository=ONE)
    fake.requests.clear()
    result = one_pass(repo, target)  # its rollouts still in progress at its end
    assert [s.endpoint for s in result.plan.steps].count("ep-a") == 3
    assert _ownership_lists(fake) == {"ep-a": 3, "ep-b": 3, "ep-c": 3}
    # The pass ends with an observe (for status): the reads after it ask once in all.
    fake.requests.clear()
    for _ in range(3):
        target.endpoint_credentials("ep-a")
        target.logs("ep-a", "blue")
    assert _ownership_lists(fake) == {"ep-a": 3}
    # The next pass asks again (what another repository did meanwhile is seen).
    target.observe()
    target.endpoint_credentials("ep-a")
    assert _ownership_lists(fake) == {"ep-a": 6}


def test_the_command_line_of_a_second_repository_leaves_the_first_ones_endpoint_alone(
    repo: RepoBuilder, other: RepoBuilder, fake: FakeKubernetes, tmp_path: Path
) -> None:
    """Through `reconcile` (the daemon opens its target the same way): two clones of two
    repositories, one target name, one namespace; the first one's state deleted."""
    config = write_kubeconfig(tmp_path / "kubeconfig", fake.url)
    settings = {
        "targets": {
            "cluster": {"type": "kubernetes", "kubeconfig": str(config), "registry": "r.io/ml"}
        },
        "prune": True,
    }
    repo.git("remote", "add", "origin", "https://github.com/org/one.git")
    repo.write_yaml("reconciler.yaml", settings)
    _endpoint(repo, EP, "one's endpoint")
    one = GitSource(repo.root).identity()
    assert not failures(apply_rev(repo, make_target(fake, repository=one)))
    pod = fake.names("pods", f"{m.ENDPOINT_LABEL}={EP},{m.ROLE_LABEL}={m.ROLE_INSTANCE}")[0]
    fake.pod_logs[pod] = "one's request bodies\n"
    _lose_state(fake, "deleted")
    objects = {plural: fake.names(plural) for plural in ("deployments", "services")}

    other.git("remote", "add", "origin", "https://github.com/org/other.git")
    other.write_yaml("reconciler.yaml", settings)
    other.commit("no endpoints yet")
    runner, base = CliRunner(), ["--repo", str(other.root)]
    live = runner.invoke(main, ["status", "--live", *base])
    assert live.exit_code == 0 and EP not in live.output, live.output
    planned = runner.invoke(main, [*base, "--dry-run", "--output", "json"])
    assert planned.exit_code == 0 and json.loads(planned.output)["steps"] == [], planned.output
    pruned = runner.invoke(main, base)
    assert pruned.exit_code == 0, pruned.output
    assert {plural: fake.names(plural) for plural in objects} == objects
    # The daemon, prune on, opens its target the same way.
    daemon = WatchProcess(tmp_path / "daemon", "--repo", str(other.root), "--interval", "1")
    try:
        wait_for(lambda: len(daemon.events("pass_finished")) >= 2, 60, "two passes")
    finally:
        daemon.stop()
    assert [e["steps"] for e in daemon.events("pass_finished")][:2] == [0, 0]
    assert {plural: fake.names(plural) for plural in objects} == objects
    for command in (
        ["credentials", EP],
        ["regenerate-key", EP, "--key", "primary"],
        ["logs", EP, "blue"],
        ["invoke", EP, "--request-file", str(tmp_path / "kubeconfig")],
    ):
        refused = runner.invoke(main, [*command, *base])
        assert refused.exit_code != 0, (command, refused.output)
        assert "request bodies" not in refused.output
        assert any(said in refused.output for said in ("does not exist", "another repository")), (
            command,
            refused.output,
        )
    assert fake.get("secrets", m.keys_secret_name(EP)) is None


@pytest.mark.parametrize("lost", ["keys deleted", "keys truncated", "record deleted"])
def test_an_endpoint_whose_keys_or_record_alone_are_lost_is_repaired_by_its_repository(
    repo: RepoBuilder, fake: FakeKubernetes, lost: str
) -> None:
    """The router config intact: a pass still sees what is missing and writes it again
    (new keys where they are gone; the routers take their hashes), and the keys work."""
    _endpoint(repo, EP, "one's endpoint")
    ours = make_target(fake, repository=ONE)
    assert not failures(apply_rev(repo, ours))
    client = KubeClient.for_host(fake.url, NAMESPACE)
    if lost == "keys deleted":
        client.delete("Secret", m.keys_secret_name(EP))
    elif lost == "keys truncated":
        keys = fake.get("secrets", m.keys_secret_name(EP))
        assert keys is not None
        keys["data"] = {"primaryKey": base64.b64encode(b'{"trunc').decode()}
        fake.put(keys)
    else:
        client.delete("ConfigMap", m.record_name(EP))
    (live,) = ours.observe().endpoints
    assert live.repair is not None or not live.spec_known, live
    assert not failures(apply_rev(repo, ours))
    assert not plan_rev(repo, ours).plan.steps
    creds = ours.endpoint_credentials(EP)
    secret = fake.get("secrets", m.router_config_name(EP))
    assert secret is not None
    config = json.loads(base64.b64decode(secret["data"][m.ROUTER_CONFIG_FILE]))
    assert hash_key(creds.primary_key) in json.dumps(config)
    assert fake.get("configmaps", m.record_name(EP)) is not None


def test_gateway_api_a_second_repository_leaves_the_first_ones_endpoint_and_route_alone(
    repo: RepoBuilder, other: RepoBuilder, fake: FakeKubernetes
) -> None:
    """Routed by an HTTPRoute (no router of ours): the same, its record and keys deleted;
    its maker repairs it, new keys issued."""
    _endpoint(repo, EP, "one's endpoint")
    assert not failures(apply_rev(repo, make_target(fake, gateway_options(), repository=ONE)))
    client = KubeClient.for_host(fake.url, NAMESPACE)
    client.delete("ConfigMap", m.record_name(EP))
    client.delete("Secret", m.keys_secret_name(EP))
    route = fake.get("httproutes", m.route_name(EP))
    _endpoint(other, "other-ep", "other's endpoint")
    theirs = make_target(fake, gateway_options(), repository=OTHER)
    assert [e.name for e in theirs.observe().endpoints] == []
    assert not failures(apply_rev(other, theirs, prune=True))
    assert fake.get("httproutes", m.route_name(EP)) == route
    assert BLUE in fake.names("deployments")
    _refuses_everything(theirs, owner=ONE)
    ours = make_target(fake, gateway_options(), repository=ONE)
    assert not failures(apply_rev(repo, ours, prune=True))
    assert ours.endpoint_credentials(EP).primary_key
    assert not plan_rev(repo, ours, prune=True).plan.steps


@pytest.mark.parametrize(
    ("kind", "name"),
    [("ConfigMap", m.record_name(EP)), ("Secret", m.keys_secret_name(EP)), ("Service", BLUE)],
)
def test_an_object_of_the_same_name_that_is_not_ours_is_not_taken_over(
    repo: RepoBuilder, fake: FakeKubernetes, kind: str, name: str
) -> None:
    """Someone's object (no managed-by label) where a new endpoint or deployment would
    write: applied with force it became ours, and went with the endpoint's deletion."""
    body: dict[str, Any] = {"data": {"user": base64.b64encode(b"theirs").decode()}}
    if kind == "Service":
        body = {"spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}}}
    theirs = {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "theirs"}},
        **body,
    }
    fake.put(theirs)
    kept = fake.get(f"{kind.lower()}s", name)
    _endpoint(repo, EP, "one's endpoint")
    result = apply_rev(repo, make_target(fake, repository=ONE))
    assert failures(result) and f"{kind} {name} on namespace" in failures(result)[0], failures(
        result
    )
    assert fake.get(f"{kind.lower()}s", name) == kept
