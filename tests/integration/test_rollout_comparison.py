"""A rollout policy's `comparison` (reconciler.yaml) reaches the endpoints under it as the
router's shadow comparison: a plan step of its own (update_endpoint, the change named), once;
back to the router's defaults when it goes; an invalid reconciler.yaml plans nothing rather
than reset it. Against real git and the in-package memory target (the engine's carrying is
under test, not a platform; the Docker target's router is in test_docker_rollout)."""

from __future__ import annotations

from typing import Any

from repo_builder import RepoBuilder

from reconciler.engine import converge, plan_pass
from reconciler.gitsource import GitSource
from reconciler.model.plan import Plan
from reconciler.model.specs import ShadowTolerance
from reconciler.targets.memory import MemoryTarget

EP = "my-endpoint"


def rollouts(**comparison: Any) -> dict[str, Any]:
    policy: dict[str, Any] = {"steps": [{"mirror": 20}, 100]}
    if comparison:
        policy["comparison"] = comparison
    return {"rollouts": {"default": policy}}


def plan_of(repo: RepoBuilder, target: MemoryTarget) -> Plan:
    source = GitSource(repo.root)
    plan, _ = plan_pass(source.tree("HEAD"), target.observe(), prune=False)
    return plan


def apply(repo: RepoBuilder, target: MemoryTarget) -> None:
    source = GitSource(repo.root)
    result = converge(source.tree("HEAD"), target, prune=False)
    assert not result.plan.errors and not result.failed, result.plan.errors


def test_a_policy_comparison_is_one_endpoint_update_then_nothing_and_goes_back_when_removed(
    repo: RepoBuilder,
) -> None:
    target = MemoryTarget()
    repo.basics()
    repo.endpoint(EP, traffic={"blue": 100})
    repo.deployment(EP, "blue")
    repo.write_yaml("reconciler.yaml", rollouts())
    repo.commit("blue, a policy without comparison")
    apply(repo, target)
    assert plan_of(repo, target).steps == ()
    assert target.snapshot().endpoint(EP).spec.shadow_comparison is None  # type: ignore[union-attr]

    repo.write_yaml("reconciler.yaml", rollouts(rtol=0.01))
    repo.commit("compare within 1%")
    (step,) = plan_of(repo, target).steps
    assert (step.action, step.endpoint) == ("update_endpoint", EP)
    assert "`comparison` of its rollout policy in reconciler.yaml" in step.reason
    changed = {c.path: (c.before, c.after) for c in step.changes}
    # The defaults of the router are filled in: what runs is said whole.
    assert changed == {
        "shadow_comparison": (
            None,
            {"rtol": 0.01, "atol": 1e-9, "max_body_bytes": 1024 * 1024},
        )
    }
    apply(repo, target)
    live = target.snapshot().endpoint(EP)
    assert live is not None
    assert live.spec.shadow_comparison == ShadowTolerance(0.01, 1e-9, 1024 * 1024)
    assert plan_of(repo, target).steps == ()

    # A typo elsewhere in reconciler.yaml: errors, no step (the tolerance is not reset).
    repo.write_yaml("reconciler.yaml", {**rollouts(rtol=0.01), "prunne": True})
    repo.commit("a typo")
    broken = plan_of(repo, target)
    assert broken.steps == ()
    assert [(e.file, e.field) for e in broken.errors] == [("reconciler.yaml", "prunne")]

    # The policy's comparison at the router's defaults: nothing to carry, back to them.
    repo.write_yaml("reconciler.yaml", rollouts(rtol=1e-6))
    repo.commit("back to the defaults")
    (back,) = plan_of(repo, target).steps
    assert [(c.path, c.after) for c in back.changes] == [("shadow_comparison", None)]
    apply(repo, target)
    assert target.snapshot().endpoint(EP).spec.shadow_comparison is None  # type: ignore[union-attr]


def test_an_endpoint_with_rollouts_disabled_keeps_the_routers_defaults(repo: RepoBuilder) -> None:
    target = MemoryTarget()
    repo.basics()
    repo.endpoint(EP, traffic={"blue": 100})
    repo.deployment(EP, "blue")
    config = rollouts(atol=0.5)
    config["rollouts"]["endpoints"] = {EP: {"enabled": False}}
    repo.write_yaml("reconciler.yaml", config)
    repo.commit("no rollouts here")
    apply(repo, target)
    assert target.snapshot().endpoint(EP).spec.shadow_comparison is None  # type: ignore[union-attr]
