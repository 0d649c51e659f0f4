"""Helpers of the Kubernetes target tests: a target on the fake API server, passes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kube_fake import FakeKubernetes
from repo_builder import RepoBuilder

from reconciler.engine import PassResult, run_pass
from reconciler.executor import Gate
from reconciler.gitsource import GitSource
from reconciler.model.results import Outcome
from reconciler.targets.kubernetes.client import KubeClient
from reconciler.targets.kubernetes.images import PlannedImages
from reconciler.targets.kubernetes.options import GatewayRef, KubernetesOptions

NAMESPACE = "ml"
FAST_GATE = Gate(timeout_s=20.0, poll_s=0.02)


def options(**overrides: Any) -> KubernetesOptions:
    base = KubernetesOptions(
        name="cluster",
        namespace=NAMESPACE,
        registry="127.0.0.1:5000/ml",
        poll_s=0.01,
        ready_timeout_s=20.0,
        config_propagation_s=0.0,
    )
    return replace(base, **overrides)


def gateway_options(**overrides: Any) -> KubernetesOptions:
    return options(
        router="gateway-api", gateway=GatewayRef("ml-gateway", "gateway-system"), **overrides
    )


def make_target(fake: FakeKubernetes, opts: KubernetesOptions | None = None) -> Any:
    from reconciler.targets.kubernetes.target import KubernetesTarget

    opts = opts or options()
    return KubernetesTarget(
        opts,
        repo_root=Path("."),
        client=KubeClient.for_host(fake.url, NAMESPACE),
        images=PlannedImages(opts),
    )


def apply_rev(
    repo: RepoBuilder, target: Any, rev: str = "HEAD", *, prune: bool = False
) -> PassResult:
    source = GitSource(repo.root)
    commit = source.resolve(rev)
    return run_pass(
        source.tree(commit), target, prune=prune, dry_run=False, revision=commit, gate=FAST_GATE
    )


def plan_rev(
    repo: RepoBuilder, target: Any, rev: str = "HEAD", *, prune: bool = False
) -> PassResult:
    source = GitSource(repo.root)
    commit = source.resolve(rev)
    return run_pass(
        source.tree(commit), target, prune=prune, dry_run=True, revision=commit, gate=FAST_GATE
    )


def failures(result: PassResult) -> list[str]:
    return [
        f"{result.plan.steps[r.index].action} {result.plan.steps[r.index].target_name}: {r.message}"
        for r in result.results
        if r.outcome != Outcome.SUCCEEDED
    ]
