"""The desired state of a revision, with the instance types of its repository's targets.

What `validate`, `diff` and `status` need of a pass's first stage, without the rest of
the engine (executor, health, status documents, targets' capabilities): a short command
imports only what it runs (issue 15). reconciler.engine re-exports these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from reconciler.filetree import FileTree
from reconciler.loading import load_desired_state
from reconciler.model.diagnostics import DesiredStateInvalid
from reconciler.model.instance_types import DEFAULT_INSTANCE_TYPES, InstanceType
from reconciler.model.state import DesiredState
from reconciler.repoconfig import RepoConfig, load_repo_config
from reconciler.targets.base import TargetError
from reconciler.targets.kubernetes.options import KubernetesOptions

if TYPE_CHECKING:
    from reconciler.model.plan import Plan

__all__ = ["load", "load_desired", "repository_instance_types", "targets_instance_types"]


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
    return load_desired(tree, revision, instance_types, names)


def load_desired(
    tree: FileTree,
    revision: str | None,
    instance_types: Mapping[str, InstanceType],
    target_names: tuple[str, ...],
) -> tuple[DesiredState | None, Plan | None]:
    """load() with the instance types given."""
    try:
        desired = load_desired_state(
            tree, instance_types=instance_types, revision=revision, target_names=target_names
        )
        return desired, None
    except DesiredStateInvalid as invalid:
        # Planning is imported for an invalid state only: a valid one needs none of it.
        from reconciler.planning import invalid_plan

        return None, invalid_plan(invalid.errors)
