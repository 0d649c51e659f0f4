"""One pass of the loop: load -> observe -> diff -> plan -> execute -> status.

Level-based: a pass starts from the revision it is given and from what the target shows
now, never from memory of an earlier pass. An invalid desired state yields a plan with
errors and no steps; the target is not touched, and status still records the errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from reconciler.executor import DEFAULT_GATE, Gate, execute
from reconciler.filetree import FileTree
from reconciler.loading import load_desired_state
from reconciler.model.diagnostics import DesiredStateInvalid
from reconciler.model.instance_types import DEFAULT_INSTANCE_TYPES, InstanceType
from reconciler.model.plan import Plan
from reconciler.model.results import Outcome, StepResult
from reconciler.model.state import DesiredState, LiveState
from reconciler.planning import invalid_plan, make_plan
from reconciler.repoconfig import RepoConfig, load_repo_config
from reconciler.status import build_status, render_status, status_path
from reconciler.targets.base import ChecksDesired, Settling, Target, TargetError
from reconciler.targets.kubernetes.options import KubernetesOptions

log = structlog.get_logger("reconciler.engine")

StatusWriter = Callable[[Mapping[str, str], str], None]


@dataclass(frozen=True, slots=True)
class PassResult:
    revision: str | None
    plan: Plan
    results: tuple[StepResult, ...]
    status: Mapping[str, Mapping[str, Any]]  # endpoint -> status document
    live_before: LiveState
    live_after: LiveState
    desired: DesiredState | None = None  # None when the revision was invalid

    @property
    def failed(self) -> bool:
        return bool(self.plan.errors) or any(r.outcome == Outcome.FAILED for r in self.results)


def targets_instance_types(config: RepoConfig) -> dict[str, InstanceType]:
    """Instance types some target of reconciler.yaml has: Azure's sizes (every target) and
    each Kubernetes target's own `instance_types` (a cluster defines its types)."""
    table = dict(DEFAULT_INSTANCE_TYPES)
    for target in config.targets:
        if target.type == "kubernetes":
            try:
                table.update(
                    KubernetesOptions.from_config(target.name, target.options).instance_types
                )
            except TargetError:
                continue  # reconciler.yaml's own errors say what is wrong with it
    return table


def repository_instance_types(tree: FileTree) -> tuple[dict[str, InstanceType], tuple[str, ...]]:
    """(instance types of the targets of the tree's reconciler.yaml, the targets' names)."""
    try:
        config = load_repo_config(tree)
    except DesiredStateInvalid:
        config = RepoConfig()  # its errors are reported by whoever reads it for its targets
    return targets_instance_types(config), tuple(t.name for t in config.targets)


def load(
    tree: FileTree,
    *,
    revision: str | None = None,
    instance_types: Mapping[str, InstanceType] | None = None,
) -> tuple[DesiredState | None, Plan | None]:
    """The desired state, or (None, a plan holding its errors).

    Without `instance_types`, those of the targets of the tree's reconciler.yaml: a
    Kubernetes target's own types are valid, and an unknown type names the targets.
    """
    names: tuple[str, ...] = ()
    if instance_types is None:
        instance_types, names = repository_instance_types(tree)
    return _load(tree, revision, instance_types, names)


def _load(
    tree: FileTree,
    revision: str | None,
    instance_types: Mapping[str, InstanceType],
    target_names: tuple[str, ...],
) -> tuple[DesiredState | None, Plan | None]:
    try:
        desired = load_desired_state(
            tree, instance_types=instance_types, revision=revision, target_names=target_names
        )
        return desired, None
    except DesiredStateInvalid as invalid:
        return None, invalid_plan(invalid.errors)


def plan_pass(
    tree: FileTree,
    live: LiveState,
    *,
    prune: bool,
    revision: str | None = None,
    instance_types: Mapping[str, InstanceType] | None = None,
    target: object | None = None,
) -> tuple[Plan, DesiredState | None]:
    """Load and plan; a target that checks the desired state (ChecksDesired) adds its
    warnings (a deployment referencing a connection the target lacks)."""
    names: tuple[str, ...] = ()
    if instance_types is None:
        instance_types, names = repository_instance_types(tree)
    desired, failed = _load(tree, revision, instance_types, names)
    if desired is None:
        assert failed is not None
        return failed, None
    extra = target.desired_warnings(desired) if isinstance(target, ChecksDesired) else ()
    plan = make_plan(
        desired, live, prune=prune, instance_types=instance_types, extra_warnings=extra
    )
    return plan, desired


def run_pass(
    tree: FileTree,
    target: Target,
    *,
    prune: bool,
    dry_run: bool,
    revision: str | None = None,
    instance_types: Mapping[str, InstanceType] | None = None,
    gate: Gate = DEFAULT_GATE,
    write_status: StatusWriter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> PassResult:
    if not dry_run and isinstance(target, Settling):
        target.settle()
    live = target.observe()
    plan, desired = plan_pass(
        tree, live, prune=prune, revision=revision, instance_types=instance_types, target=target
    )
    log.info(
        "pass_planned",
        revision=revision,
        steps=len(plan.steps),
        errors=len(plan.errors),
        dry_run=dry_run,
    )
    results: tuple[StepResult, ...] = ()
    live_after = live
    if not dry_run and plan.steps:
        results = execute(plan, target, gate=gate, should_stop=should_stop)
        live_after = target.observe()
    declared = tuple(e.name for e in desired.endpoints) if desired else ()
    docs = build_status(
        revision=revision,
        target=target.name,
        live=live_after,
        plan=plan,
        results=results,
        declared=declared,
    )
    if write_status is not None and not dry_run:
        files = {status_path(name): render_status(doc) for name, doc in docs.items()}
        write_status(files, f"status of {revision or 'working tree'} on {target.name}")
    return PassResult(revision, plan, results, docs, live, live_after, desired)
