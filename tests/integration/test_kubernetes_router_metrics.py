"""The Kubernetes target reads its routers' metrics (HasRouterMetrics, what a rollout's
analysis judges) through the fake API server's pod proxy, each router pod answered by a
real HTTP server on loopback serving Prometheus text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_fake import FakeKubernetes, apply_rev, failures, make_target, options, serve
from repo_builder import RepoBuilder
from rollout_fixtures import MetricsServer

from reconciler.rollouts.analysis import parse_exposition, parse_expositions, step_figures
from reconciler.targets.capabilities import HasRouterMetrics, HasRouterMetricsEach
from reconciler.targets.kubernetes import manifests as m

EP = "my-endpoint"


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


def test_the_metrics_of_every_ready_router_pod_are_read_and_add_up(
    repo: RepoBuilder, fake: FakeKubernetes, tmp_path: Path
) -> None:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint(EP, traffic={"blue": 90, "green": 10})
    repo.deployment(EP, "blue")
    repo.deployment(EP, "green", model="azureml:sklearn-regression:2")
    repo.commit("base")
    target = make_target(fake, options(router_replicas=2))
    assert not failures(apply_rev(repo, target))
    pods = fake.names("pods", f"{m.ENDPOINT_LABEL}={EP},{m.ROLE_LABEL}={m.ROLE_ROUTER}")
    assert len(pods) == 2
    servers = [MetricsServer(per_scrape=10), MetricsServer(per_scrape=30)]
    try:
        for pod, server in zip(pods, servers, strict=True):
            fake.attach_router(pod, server.url.removesuffix("/metrics"), tmp_path / f"{pod}.json")
        assert isinstance(target, HasRouterMetrics)
        snapshot = parse_exposition(target.router_metrics(EP), EP)
        # The rollout's analysis reads each pod on its own (one pod's restart is its own).
        assert isinstance(target, HasRouterMetricsEach)
        each = target.router_metrics_each(EP)
        assert sorted(each) == sorted(pods)
        apart = parse_expositions(each, EP)
    finally:
        for server in servers:
            server.close()
    figures = step_figures(snapshot, stable="blue", canary="green", canary_kind="live", elapsed_s=1)
    # One scrape of each pod: 10 + 30 live requests of each deployment.
    assert figures.canary.requests == 40 and figures.stable.requests == 40
    # Scraped once more each (10 + 30 again), the pods read apart give the same sums.
    apart_figures = step_figures(
        apart, stable="blue", canary="green", canary_kind="live", elapsed_s=1
    )
    assert apart_figures.canary.requests == 80 and apart_figures.stable.requests == 80
