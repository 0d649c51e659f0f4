"""The repository's own configuration: `reconciler.yaml` at its root.

It names the targets (docker, kubernetes, with their options), the default one, whether
pruning is on, the status branch, and the review policies. Every key is optional; a file
that is absent means one Docker target named `local`. Errors name the file, line and field
like every other error of the desired state.

`capacity_cores` of a target (any type) is not an option of its driver: it is the core
quota the review compares ceil(1.2 x instances) x cores with, so it is taken out of the
target's options into TargetConfig.capacity_cores. `policies:` is parsed by
reconciler.policies into frozen rules (see that module for their meaning), `rollouts:` by
reconciler.rollouts.policy into each endpoint's rollout policy.

The file is read like every YAML file of ours (reconciler.yamlsource: size and nesting
limits, duplicate keys) and checked against schemas/reconciler.schema.json, which holds
every option of every target type: what `reconcile validate` passes, opening the target
accepts. The few rules a schema cannot say (a port range's low end below its high end, a
Kubernetes target's name being a label) are checked here, with a line too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from reconciler.filetree import FileTree, TreeEntryError
from reconciler.jsonschemas import schema_problems, validators
from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic
from reconciler.policies import POLICY_FILE, Policies, parse_policies
from reconciler.rollouts.policy import RolloutPolicies, conflicts_with_policies, parse_rollouts
from reconciler.yamlsource import (
    MAX_YAML_BYTES,
    FieldLines,
    FieldPath,
    document_limits,
    duplicate_key_diagnostics,
    field_name,
    load_yaml_document,
)

CONFIG_FILE = POLICY_FILE
TARGET_TYPES = ("docker", "kubernetes")


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """One target of reconciler.yaml: its name, type and options."""

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    capacity_cores: int | None = None  # core quota of the target, for the review's figure


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """reconciler.yaml: targets, default target, prune, status branch, policies, rollouts."""

    targets: tuple[TargetConfig, ...] = (TargetConfig("local", "docker"),)
    default_target: str = "local"
    prune: bool = False
    status_branch: str = "reconcile-status"
    policies: Policies = Policies()
    rollouts: RolloutPolicies = RolloutPolicies()

    def target(self, name: str | None) -> TargetConfig | None:
        wanted = name or self.default_target
        return next((t for t in self.targets if t.name == wanted), None)


# What a Kubernetes label value may be (a Kubernetes target's name labels its objects).
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SCHEMA_FILE = "reconciler.schema.json"


def _pool_problem(pool: str, prefix: Any) -> str | None:
    """What is wrong with a Docker target's network_pool (the schema checked its shape)."""
    import ipaddress  # only for a target that sets one

    try:
        network = ipaddress.IPv4Network(pool, strict=True)
    except ValueError as exc:
        return f"not an IPv4 network ({exc}); write one such as 10.213.0.0/16"
    if isinstance(prefix, int) and network.prefixlen > prefix:
        return f"{network} is smaller than one /{prefix} subnet (network_prefix)"
    return None


def _parsed(tree: FileTree) -> tuple[bytes, Any]:
    """The file's text and document; DesiredStateInvalid when it cannot be read as one."""

    def invalid(line: int | None, field: str, message: str) -> DesiredStateInvalid:
        return DesiredStateInvalid((Diagnostic(CONFIG_FILE, line, field, message),))

    try:
        if tree.size(CONFIG_FILE) > MAX_YAML_BYTES:
            raise invalid(
                None, "", f"is larger than the {MAX_YAML_BYTES:,} bytes a YAML file may hold"
            )
        text = tree.read(CONFIG_FILE)
    except TreeEntryError as exc:
        raise invalid(None, "", exc.message) from None
    parsed = load_yaml_document(text, CONFIG_FILE)
    if parsed.error is not None:
        raise DesiredStateInvalid((parsed.error,))
    if parsed.unsupported_tag is not None:
        raise DesiredStateInvalid((parsed.unsupported_tag,))
    if len(parsed.documents) != 1:
        raise invalid(1, "", f"holds {len(parsed.documents)} YAML documents; it must hold one")
    if parsed.duplicate_keys:
        raise DesiredStateInvalid(duplicate_key_diagnostics(text, parsed))
    data = parsed.value
    problem = document_limits(data)
    if problem is not None:
        raise invalid(1, "", problem)
    return text, data


def load_repo_config(tree: FileTree) -> RepoConfig:
    if not tree.is_file(CONFIG_FILE):
        return RepoConfig()
    text, data = _parsed(tree)
    data = {} if data is None else data
    lines = FieldLines(text)
    errors: list[Diagnostic] = []

    def error(path: FieldPath, message: str) -> None:
        errors.append(Diagnostic(CONFIG_FILE, lines.line(path), field_name(path), message))

    fast, full = validators(SCHEMA_FILE)
    if not fast(data):
        for problem in full.iter_errors(data):
            for path, message in schema_problems(problem, lines):
                error(path, message)
    if not isinstance(data, dict):
        raise DesiredStateInvalid(tuple(errors))
    targets: list[TargetConfig] = []
    raw_targets = data.get("targets")
    for name, options in (raw_targets if isinstance(raw_targets, dict) else {}).items():
        if not isinstance(options, dict):
            continue  # the schema said why
        kind = options.get("type", "docker")
        where: FieldPath = ("targets", str(name))
        ports = options.get("router_port_range")
        if kind == "docker" and isinstance(ports, list) and len(ports) == 2:
            low, high = ports
            if isinstance(low, int) and isinstance(high, int) and low > high:
                message = f"low port {low} is above high port {high}: write [low, high]"
                error((*where, "router_port_range"), message)
        pool = options.get("network_pool")
        if kind == "docker" and isinstance(pool, str):
            problem = _pool_problem(pool, options.get("network_prefix", 24))
            if problem is not None:
                error((*where, "network_pool"), problem)
        if kind == "kubernetes" and (not _LABEL_VALUE.match(str(name)) or len(str(name)) > 63):
            error(
                where,
                "a Kubernetes target's name labels its objects: at most 63 letters, digits, "
                "'-', '_' and '.', starting and ending with a letter or digit",
            )
        if kind not in TARGET_TYPES:
            continue
        rest = {k: v for k, v in options.items() if k not in ("type", "capacity_cores")}
        capacity = options.get("capacity_cores")
        capacity = (
            capacity if isinstance(capacity, int) and not isinstance(capacity, bool) else None
        )
        targets.append(TargetConfig(str(name), kind, MappingProxyType(rest), capacity))
    if not targets:
        targets = [TargetConfig("local", "docker")]
    default = data.get("default_target", targets[0].name)
    # Any target the file declares, its options valid or not: a target whose type is
    # misspelt is one error (its type), not a second one here.
    declared = set(raw_targets) if isinstance(raw_targets, dict) else set()
    if isinstance(default, str) and default not in {t.name for t in targets} | declared:
        error(("default_target",), f"names no target of `targets` ({default!r})")
    raw_policies = data.get("policies")
    policies = Policies()
    if isinstance(raw_policies, dict):
        policies, policy_errors = parse_policies(
            raw_policies, line_at=lambda path: lines.line(("policies", *path))
        )
        errors.extend(policy_errors)
    raw_rollouts = data.get("rollouts")
    rollouts = RolloutPolicies()
    if isinstance(raw_rollouts, dict):
        rollouts, rollout_errors = parse_rollouts(
            raw_rollouts, line_at=lambda path: lines.line(("rollouts", *path))
        )
        errors.extend(rollout_errors)
        errors.extend(
            conflicts_with_policies(
                rollouts, policies, line_at=lambda path: lines.line(("rollouts", *path))
            )
        )
    if errors:
        # The message breaks ties: a set has no order of its own.
        raise DesiredStateInvalid(
            tuple(sorted(set(errors), key=lambda e: (e.line or 0, e.field, e.message)))
        )
    return RepoConfig(
        targets=tuple(targets),
        default_target=str(default),
        prune=bool(data.get("prune", False)),
        status_branch=str(data.get("status_branch", "reconcile-status")),
        policies=policies,
        rollouts=rollouts,
    )
