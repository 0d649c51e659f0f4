"""Target types by name: what `type:` of a reconciler.yaml target may say, and how a target
of each type is opened.

Each type's factory imports its package only when called, so commands that open no target
(`reconcile diff`, `validate`) never load the Docker SDK or the kubernetes client. A new
target type is its package, a factory here and one line in TARGET_TYPES; the schema's enum
of types (schemas/reconciler.schema.json) and repoconfig.TARGET_TYPES name the same types,
which tests/unit/test_target_contract.py keeps so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from reconciler.repoconfig import TargetConfig
from reconciler.targets.base import Target


class TargetFactory(Protocol):
    """Opens the target an entry of reconciler.yaml describes. Raises TargetError.

    repo_root is the checkout images are built from; repository says which repository
    applies (GitSource.identity), for targets that several repositories may share.
    """

    def __call__(self, entry: TargetConfig, *, repo_root: Path, repository: str) -> Target: ...


def _docker(entry: TargetConfig, *, repo_root: Path, repository: str) -> Target:
    from reconciler.targets.docker.options import DockerOptions
    from reconciler.targets.docker.target import DockerTarget

    options = DockerOptions.from_config(entry.name, entry.options)
    return DockerTarget(options, repo_root=repo_root, repository=repository)


def _kubernetes(entry: TargetConfig, *, repo_root: Path, repository: str) -> Target:
    from reconciler.targets.kubernetes.options import KubernetesOptions
    from reconciler.targets.kubernetes.target import KubernetesTarget

    options = KubernetesOptions.from_config(entry.name, entry.options)
    return KubernetesTarget(options, repo_root=repo_root)


TARGET_TYPES: Mapping[str, TargetFactory] = MappingProxyType(
    {
        "docker": _docker,
        "kubernetes": _kubernetes,
    }
)
