"""Both targets execute the same plan: the golden scenarios on the Kubernetes target.

For each scenario of test_diff_golden, the base commit is applied to the Kubernetes target
(the real `kubernetes` client over HTTP against the fake API server); the plan against
what the target then observes must be the golden plan that `reconcile diff` prints (which
assumes the base fully applied), and after executing it the target observes the desired
state: planning again gives no step.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_fake import (
    FakeKubernetes,
    apply_rev,
    failures,
    gateway_options,
    make_target,
    options,
    plan_rev,
    serve,
)
from repo_builder import RepoBuilder
from test_diff_golden import SCENARIOS

from reconciler.model.specs import weights

GOLDEN = Path(__file__).parent.parent / "golden"


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


def _run_scenario(name: str, repo: RepoBuilder, fake: FakeKubernetes, gateway: bool) -> None:
    extra, _ = SCENARIOS[name](repo)
    repo.commit("head")
    prune = "--prune" in extra
    target = make_target(fake, gateway_options() if gateway else options())

    base = apply_rev(repo, target, "HEAD~1", prune=prune)
    assert not failures(base), failures(base)

    planned = plan_rev(repo, target, "HEAD", prune=prune)
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    assert planned.plan.as_json()["steps"] == golden["steps"]

    applied = apply_rev(repo, target, "HEAD", prune=prune)
    assert not failures(applied), failures(applied)
    again = plan_rev(repo, target, "HEAD", prune=prune)
    assert again.plan.steps == (), [s.as_json() for s in again.plan.steps]

    # What the target observes is what the repository declares.
    from reconciler.engine import load
    from reconciler.gitsource import GitSource

    source = GitSource(repo.root)
    desired, _ = load(source.tree(source.resolve("HEAD")))
    assert desired is not None
    live = target.observe()
    for endpoint in desired.endpoints:
        seen = live.endpoint(endpoint.name)
        assert seen is not None
        assert seen.spec.traffic == weights(dict(endpoint.traffic))
        assert seen.spec.mirror_traffic == endpoint.mirror_traffic
    for spec in desired.deployments:
        (seen_d,) = [d for d in live.deployments if d.key == spec.key]
        assert seen_d.digest == spec.digest
        assert seen_d.instance_count == spec.instance_count
        assert seen_d.ready_instances == spec.instance_count


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden_plans_run_the_same_on_kubernetes(
    name: str, repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    _run_scenario(name, repo, fake, gateway=False)


@pytest.mark.parametrize("name", ["blue_green_switch", "mirror_on", "delete_with_traffic"])
def test_golden_plans_run_the_same_with_gateway_api(
    name: str, repo: RepoBuilder, fake: FakeKubernetes
) -> None:
    _run_scenario(name, repo, fake, gateway=True)
