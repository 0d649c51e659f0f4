"""Connection Secrets on Kubernetes: which referenced ones a cluster lacks.

A deployment's secret references render as `secretKeyRef`s to `conn-NAME` Secrets that the
target never writes (manifests.connection_secret_name). A pod whose Secret or key is
missing never starts (CreateContainerConfigError) and a rollout would wait out its whole
deadline: the target checks first, warns at dry-run and fails the deployment at once. Only
the keys of a Secret are looked at, never its values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from reconciler.model.diagnostics import Diagnostic
from reconciler.model.secrets import variables
from reconciler.model.specs import DeploymentSpec
from reconciler.targets.kubernetes import manifests as m

GetSecret = Callable[[str], Mapping[str, Any] | None]


def missing_keys(spec: DeploymentSpec, get_secret: GetSecret) -> list[tuple[str, str]]:
    """(variable, what is missing) for each reference of the spec the cluster cannot give."""
    found: dict[str, Mapping[str, Any] | None] = {}
    problems: list[tuple[str, str]] = []
    for variable, ref in variables(spec):
        name = m.connection_secret_name(ref.connection)
        if name not in found:
            found[name] = get_secret(name)
        secret = found[name]
        key = m.connection_secret_key(ref)
        command = f"kubectl create secret generic {name} --from-file={key}=PATH"
        if secret is None:
            problems.append((variable, f"Secret {name} (connection {ref.connection}): {command}"))
        elif key not in (secret.get("data") or {}) and key not in (secret.get("stringData") or {}):
            problems.append(
                (variable, f"key {key} of Secret {name} (the {ref.what}); add it to the Secret")
            )
    return problems


def missing_warnings(
    deployments: Iterable[DeploymentSpec], get_secret: GetSecret, namespace: str
) -> tuple[Diagnostic, ...]:
    warnings: list[Diagnostic] = []
    for spec in deployments:
        for variable, what in missing_keys(spec, get_secret):
            warnings.append(
                Diagnostic(
                    spec.source.file if spec.source else "",
                    spec.source.line if spec.source else None,
                    f"environment_variables.{variable}",
                    f"{spec.key} needs {what} in namespace {namespace}; its pods will not "
                    "start until then",
                )
            )
    return tuple(warnings)
