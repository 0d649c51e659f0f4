"""The desired state of a revision, with the instance types of its repository's targets
and what its reconciler.yaml adds to it (the shadow comparison of rollout policies).

What `validate`, `diff` and `status` need of a pass's first stage, without the rest of
the engine (executor, health, status documents, targets' capabilities): a short command
imports only what it runs (issue 15). reconciler.engine re-exports these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from reconciler.filetree import FileTree
from reconciler.loading import load_desired_state
from reconciler.model.diagnostics import DesiredStateInvalid
from reconciler.model.instance_types import DEFAULT_INSTANCE_TYPES, InstanceType
from reconciler.model.state import DesiredState
from reconciler.repoconfig import RepoConfig, load_repo_config
from reconciler.targets.errors import TargetError

if TYPE_CHECKING:
    from reconciler.model.plan import Plan
    from reconciler.rollouts.policy import RolloutPolicies

__all__ = [
    "load",
    "load_desired",
    "repository_config",
    "repository_instance_types",
    "targets_instance_types",
    "with_shadow_tolerances",
]


def targets_instance_types(config: RepoConfig) -> dict[str, InstanceType]:
    """Instance types some target of reconciler.yaml has: Azure's sizes (every target) and
    each Kubernetes target's own `instance_types` (a cluster defines its types)."""
    table = dict(DEFAULT_INSTANCE_TYPES)
    for target in config.targets:
        if target.type == "kubernetes":
            # Only for a Kubernetes target (issue 15: start-up).
            from reconciler.targets.kubernetes.options import KubernetesOptions

            try:
                table.update(
                    KubernetesOptions.from_config(target.name, target.options).instance_types
                )
            except TargetError:
                continue  # reconciler.yaml's own errors say what is wrong with it
    return table


def repository_config(tree: FileTree) -> RepoConfig | DesiredStateInvalid:
    """The tree's reconciler.yaml, or its errors (file, line, field)."""
    try:
        return load_repo_config(tree)
    except DesiredStateInvalid as invalid:
        return invalid


def repository_instance_types(tree: FileTree) -> tuple[dict[str, InstanceType], tuple[str, ...]]:
    """(instance types of the targets of the tree's reconciler.yaml, the targets' names)."""
    config = repository_config(tree)
    if isinstance(config, DesiredStateInvalid):
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
    desired, failed, _ = load_desired(tree, revision, instance_types, strict=False)
    return desired, failed


def load_desired(
    tree: FileTree,
    revision: str | None,
    instance_types: Mapping[str, InstanceType] | None,
    *,
    strict: bool,
) -> tuple[DesiredState | None, Plan | None, Mapping[str, InstanceType]]:
    """The desired state with what reconciler.yaml adds to it (the shadow comparison of
    the endpoints' rollout policies), or a plan of errors. `strict` (a plan to apply): an
    invalid reconciler.yaml is an error too, as its settings would be missing from the
    desired state (a router's tolerances reset by a typo in another key). Otherwise (a
    review, validate, which read reconciler.yaml and say its errors themselves) the files'
    desired state is loaded without those settings."""
    config = repository_config(tree)
    names: tuple[str, ...] = ()
    if instance_types is None:
        valid = config if isinstance(config, RepoConfig) else RepoConfig()
        instance_types = targets_instance_types(valid)
        names = tuple(t.name for t in valid.targets)
    try:
        desired = load_desired_state(
            tree, instance_types=instance_types, revision=revision, target_names=names
        )
    except DesiredStateInvalid as invalid:
        # Planning is imported for an invalid state only: a valid one needs none of it.
        from reconciler.planning import invalid_plan

        more = config.errors if strict and isinstance(config, DesiredStateInvalid) else ()
        return None, invalid_plan((*invalid.errors, *more)), instance_types
    if isinstance(config, DesiredStateInvalid):
        if strict:
            from reconciler.planning import invalid_plan

            return None, invalid_plan(config.errors), instance_types
        return desired, None, instance_types
    return with_shadow_tolerances(desired, config.rollouts), None, instance_types


def with_shadow_tolerances(desired: DesiredState, rollouts: RolloutPolicies) -> DesiredState:
    """Each endpoint under a rollout policy with a `comparison` gets it as the router's
    shadow comparison, the router's defaults filled in; None where it is the default, so
    that a policy without one changes nothing of what runs."""
    if rollouts.empty:
        return desired
    from reconciler.rollouts.policy import Comparison  # loaded with the policies

    changed = False
    endpoints = []
    for spec in desired.endpoints:
        policy = rollouts.for_endpoint(spec.name)
        wanted = None
        chosen = policy.comparison if policy is not None else None
        if chosen is not None and chosen != Comparison():
            # Imported here: it loads the router's config module (~2 ms), which neither a
            # repository without rollout policies nor policies that leave the comparison to
            # the router (its defaults: None) need at start-up (issue 15).
            from reconciler.endpoints.comparison import tolerance_of

            wanted = tolerance_of(
                rtol=chosen.rtol, atol=chosen.atol, max_body_bytes=chosen.max_body_bytes
            )
        if wanted != spec.shadow_comparison:
            spec = replace(spec, shadow_comparison=wanted)
            changed = True
        endpoints.append(spec)
    return replace(desired, endpoints=tuple(endpoints)) if changed else desired
