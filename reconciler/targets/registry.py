"""Target types by name: what `type:` of a reconciler.yaml target may say, and how a target
of each type is opened.

Each type's factory imports its package only when called, so commands that open no target
(`reconcile diff`, `validate`) never load the Docker SDK or the kubernetes client. A new
target type is its package, a factory here and one line in TARGET_TYPES; the schema's enum
of types (schemas/reconciler.schema.json) and repoconfig.TARGET_TYPES name the same types,
which tests/unit/test_target_contract.py keeps so.

A type may also say, before anything is applied, what its targets do differently from
Azure ML (PREFLIGHTS): pure warnings over the desired state and the target's options, shown
by `validate --target`, `diff --target` and every plan; no target is opened for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from reconciler.targets.errors import TargetError

if TYPE_CHECKING:
    # Types only: `reconcile invoke` reads this registry without the plan's model.
    from reconciler.model.diagnostics import Diagnostic
    from reconciler.model.state import DesiredState
    from reconciler.repoconfig import TargetConfig
    from reconciler.targets.base import Target
    from reconciler.targets.capabilities import EndpointAccess

# The line of a field of a file of the repository (None: unknown), for warnings.
LineOf = Callable[[str, tuple[str | int, ...]], int | None]


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
    return KubernetesTarget(options, repo_root=repo_root, repository=repository)


TARGET_TYPES: Mapping[str, TargetFactory] = MappingProxyType(
    {
        "docker": _docker,
        "kubernetes": _kubernetes,
    }
)


class AccessReader(Protocol):
    """Reads what `reconcile invoke` needs of one endpoint without opening the target (its
    SDK's import alone costs more than the request); None when it cannot tell, and the
    caller opens the target instead."""

    def __call__(
        self, entry: TargetConfig, *, endpoint: str, repository: str
    ) -> EndpointAccess | None: ...


def _docker_access(entry: TargetConfig, *, endpoint: str, repository: str) -> EndpointAccess | None:
    from reconciler.targets.docker.access import endpoint_access

    return endpoint_access(entry.name, endpoint, repository=repository)


ENDPOINT_ACCESS: Mapping[str, AccessReader] = MappingProxyType({"docker": _docker_access})


class Preflight(Protocol):
    """Warnings of what a target of this type does differently, with file and line."""

    def __call__(
        self, entry: TargetConfig, desired: DesiredState, line_of: LineOf
    ) -> tuple[Diagnostic, ...]: ...


def _docker_preflight(
    entry: TargetConfig, desired: DesiredState, line_of: LineOf
) -> tuple[Diagnostic, ...]:
    from reconciler.targets.docker.options import DockerOptions
    from reconciler.targets.docker.preflight import preflight_warnings

    try:
        options = DockerOptions.from_config(entry.name, entry.options)
    except TargetError:
        return ()  # reconciler.yaml's own errors say what is wrong with it
    return preflight_warnings(
        desired.deployments,
        target=entry.name,
        base_image=options.base_image,
        image_map=options.image_map,
        line_of=line_of,
    )


PREFLIGHTS: Mapping[str, Preflight] = MappingProxyType({"docker": _docker_preflight})
