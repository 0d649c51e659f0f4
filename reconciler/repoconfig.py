"""The repository's own configuration: `reconciler.yaml` at its root.

It names the targets (docker, kubernetes, with their options), the default one, whether
pruning is on, the status branch, and the review policies. Every key is optional; a file
that is absent means one Docker target named `local`. Errors name the file, line and field
like every other error of the desired state.

`capacity_cores` of a target (any type) is not an option of its driver: it is the core
quota the review compares ceil(1.2 x instances) x cores with, so it is taken out of the
target's options into TargetConfig.capacity_cores. `policies:` is parsed by
reconciler.policies into frozen rules (see that module for their meaning).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from reconciler.filetree import FileTree
from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic
from reconciler.policies import POLICY_FILE, Policies, parse_policies

CONFIG_FILE = POLICY_FILE
TARGET_TYPES = ("docker", "kubernetes")
_TOP_KEYS = ("targets", "default_target", "prune", "status_branch", "policies")


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    capacity_cores: int | None = None  # core quota of the target, for the review's figure


@dataclass(frozen=True, slots=True)
class RepoConfig:
    targets: tuple[TargetConfig, ...] = (TargetConfig("local", "docker"),)
    default_target: str = "local"
    prune: bool = False
    status_branch: str = "reconcile-status"
    policies: Policies = Policies()

    def target(self, name: str | None) -> TargetConfig | None:
        wanted = name or self.default_target
        return next((t for t in self.targets if t.name == wanted), None)


def _line_of(node: yaml.Node | None, key: str) -> int | None:
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if getattr(k, "value", None) == key:
                return int(k.start_mark.line) + 1
    return None


def _line_at(node: yaml.Node | None, path: tuple[str, ...]) -> int | None:
    """The line of the deepest key of `path` found in a mapping node (1-based)."""
    line = None
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if getattr(k, "value", None) == key:
                line = int(k.start_mark.line) + 1
                node = v
                break
        else:
            break
    return line


def load_repo_config(tree: FileTree) -> RepoConfig:
    if not tree.is_file(CONFIG_FILE):
        return RepoConfig()
    text = tree.read(CONFIG_FILE)
    errors: list[Diagnostic] = []

    def error(fieldname: str, message: str, line: int | None = None) -> None:
        errors.append(Diagnostic(CONFIG_FILE, line, fieldname, message))

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DesiredStateInvalid(
            (Diagnostic(CONFIG_FILE, line, "", f"not valid YAML: {exc}"),)
        ) from None
    if not isinstance(data, dict):
        raise DesiredStateInvalid((Diagnostic(CONFIG_FILE, 1, "", "must be a mapping"),))
    for key in data:
        if key not in _TOP_KEYS:
            error(
                str(key),
                f"unknown field {key!r} (known: {', '.join(_TOP_KEYS)})",
                _line_of(node, str(key)),
            )
    targets: list[TargetConfig] = []
    raw_targets = data.get("targets") or {}
    if not isinstance(raw_targets, dict):
        error(
            "targets", "must be a mapping of target name to its settings", _line_of(node, "targets")
        )
        raw_targets = {}
    for name, options in raw_targets.items():
        if not isinstance(options, dict):
            error(f"targets.{name}", "must be a mapping with at least `type`")
            continue
        kind = options.get("type", "docker")
        if kind not in TARGET_TYPES:
            error(f"targets.{name}.type", f"must be one of {', '.join(TARGET_TYPES)}, got {kind!r}")
            continue
        rest = {k: v for k, v in options.items() if k not in ("type", "capacity_cores")}
        capacity = options.get("capacity_cores")
        if capacity is not None and (
            isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1
        ):
            error(
                f"targets.{name}.capacity_cores",
                f"must be a whole number of cores, at least 1, got {capacity!r}",
                _line_at(node, ("targets", str(name), "capacity_cores")),
            )
            capacity = None
        targets.append(TargetConfig(str(name), kind, MappingProxyType(rest), capacity))
    if not targets:
        targets = [TargetConfig("local", "docker")]
    default = data.get("default_target", targets[0].name)
    if default not in {t.name for t in targets}:
        error(
            "default_target",
            f"names no target of `targets` ({default!r})",
            _line_of(node, "default_target"),
        )
    prune = data.get("prune", False)
    if not isinstance(prune, bool):
        error("prune", "must be true or false", _line_of(node, "prune"))
    branch = data.get("status_branch", "reconcile-status")
    if not isinstance(branch, str) or not branch:
        error("status_branch", "must be a branch name", _line_of(node, "status_branch"))
    raw_policies = data.get("policies") or {}
    if not isinstance(raw_policies, dict):
        error("policies", "must be a mapping", _line_of(node, "policies"))
        raw_policies = {}
    policies, policy_errors = parse_policies(
        raw_policies, line_at=lambda path: _line_at(node, ("policies", *path))
    )
    errors.extend(policy_errors)
    if errors:
        raise DesiredStateInvalid(tuple(errors))
    return RepoConfig(
        targets=tuple(targets),
        default_target=str(default),
        prune=bool(prune),
        status_branch=str(branch),
        policies=policies,
    )
