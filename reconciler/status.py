"""Status documents: what each endpoint looks like after a pass, as stable YAML. PURE.

One document per endpoint, written to `status/ENDPOINT.yaml` on the status branch. No
timestamps and a fixed key order, so a pass that changes nothing writes the same bytes and
makes no commit. Never a key or token: nothing here ever holds one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.health import Health, deployment_health, endpoint_health
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.keys import ResourceKey
from reconciler.model.plan import Plan
from reconciler.model.results import Outcome, StepResult
from reconciler.model.specs import (
    DeploymentSpec,
    EndpointSpec,
    ScaleSettings,
    Weights,
    to_json,
    weights,
)
from reconciler.model.state import (
    DesiredState,
    LiveDeployment,
    LiveEndpoint,
    LiveState,
    ProvisioningState,
)

STATUS_DIR = "status"
LOG_TAIL_LINES = 20


def status_path(endpoint: str) -> str:
    return f"{STATUS_DIR}/{endpoint}.yaml"


def build_status(
    *,
    revision: str | None,
    target: str,
    live: LiveState,
    plan: Plan,
    results: Sequence[StepResult] = (),
    declared: Sequence[str] = (),
    desired: DesiredState | None = None,
) -> dict[str, dict[str, Any]]:
    """Status documents keyed by endpoint name.

    desired (when given) names the model and environment of a deployment whose target
    does not give its spec back, when what runs is what it declares (same digest).

    live is the state observed after the pass; plan and results say what the pass tried;
    declared lists the endpoints the desired state names (some may not exist yet).
    Errors of an invalid desired state go into every document: whatever served before
    still serves, and the status says why nothing changed.
    """
    failures = _failures_by_key(plan, results)
    pending = _pending_by_endpoint(plan, results)
    running = _in_progress_by_endpoint(plan, results)
    names = sorted({e.name for e in live.endpoints} | set(declared))
    declared_specs = {d.key: d for d in desired.deployments} if desired is not None else {}
    docs: dict[str, dict[str, Any]] = {}
    for name in names:
        endpoint = live.endpoint(name)
        docs[name] = _endpoint_doc(
            name,
            endpoint=endpoint,
            live=live,
            revision=revision,
            target=target,
            errors=plan.errors,
            failures=failures,
            pending=pending.get(name, []),
            running=running.get(name, []),
            declared=declared_specs,
        )
    return docs


def _in_progress_by_endpoint(
    plan: Plan, results: Sequence[StepResult]
) -> dict[str, list[dict[str, Any]]]:
    """Steps of the pass in progress (a change the target completes on its own, a health
    gate not met yet), per endpoint, in plan order, with what each waits for."""
    found: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if result.outcome != Outcome.IN_PROGRESS:
            continue
        step = plan.steps[result.index]
        found.setdefault(step.endpoint, []).append(
            {"action": str(step.action), "deployment": step.deployment, "progress": result.message}
        )
    return found


def _pending_by_endpoint(
    plan: Plan, results: Sequence[StepResult]
) -> dict[str, list[dict[str, Any]]]:
    """Steps of the pass that were not run (a stop request, or a step before them that
    failed), per endpoint, in plan order: the work the next pass still has to do."""
    found: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        if result.outcome != Outcome.SKIPPED:
            continue
        step = plan.steps[result.index]
        found.setdefault(step.endpoint, []).append(
            {"action": str(step.action), "deployment": step.deployment, "why": result.message}
        )
    return found


def _failures_by_key(plan: Plan, results: Sequence[StepResult]) -> dict[ResourceKey, StepResult]:
    found: dict[ResourceKey, StepResult] = {}
    for result in results:
        if result.outcome != Outcome.FAILED:
            continue
        step = plan.steps[result.index]
        found.setdefault(ResourceKey(step.endpoint, step.deployment), result)
        found.setdefault(ResourceKey(step.endpoint), result)
    return found


def _endpoint_doc(
    name: str,
    *,
    endpoint: LiveEndpoint | None,
    live: LiveState,
    revision: str | None,
    target: str,
    errors: tuple[Diagnostic, ...],
    failures: Mapping[ResourceKey, StepResult],
    pending: list[dict[str, Any]],
    running: list[dict[str, Any]],
    declared: Mapping[ResourceKey, DeploymentSpec],
) -> dict[str, Any]:
    failed = failures.get(ResourceKey(name))
    if failed is not None:
        state: str = str(ProvisioningState.FAILED)
    elif endpoint is None:
        state = str(ProvisioningState.CREATING)
    elif pending or running:
        # Steps in progress, or left undone (waiting for one in progress, or the
        # reconciler stopped mid-pass): not Succeeded, whatever the target shows of the
        # steps that did run.
        state = str(ProvisioningState.UPDATING)
    else:
        state = str(endpoint.provisioning_state)
    health = endpoint_health(endpoint, live)
    undone = {p["deployment"] for p in pending + running if p["deployment"]}
    deployments = {
        d.name: _deployment_doc(
            d, failures.get(d.key), pending=d.name in undone, declared=declared.get(d.key)
        )
        for d in live.deployments_of(name)
    }
    doc: dict[str, Any] = {
        "endpoint": name,
        "commit": revision,
        "target": target,
        "provisioning_state": state,
        "health": str(health if failed is None else max(health, Health.DEGRADED)),
        "scoring_uri": endpoint.scoring_uri if endpoint else None,
        "openapi_uri": endpoint.openapi_uri if endpoint else None,
        "auth_mode": endpoint.spec.auth_mode if endpoint else None,
        "traffic": dict(endpoint.spec.traffic) if endpoint else {},
        "mirror_traffic": dict(endpoint.spec.mirror_traffic) if endpoint else {},
        "deployments": deployments,
        # A failed step says why first; else what the target found broken (a repair).
        "last_error": _error_text(failed) or (endpoint.repair if endpoint else None),
        "errors": [e.as_json() for e in errors],
        "pending_steps": pending,
    }
    if running:
        # Only while a step is in progress (added after pending_steps): the status files
        # of endpoints at rest stay as they were.
        doc["in_progress_steps"] = running
    if endpoint is not None and endpoint.notes:
        # Only when there are some: status files of endpoints without notes stay as they were.
        doc["notes"] = list(endpoint.notes)
    return doc


def running_assets(
    d: LiveDeployment, declared: DeploymentSpec | None = None
) -> tuple[str | None, str | None]:
    """(model, environment) of what a deployment's instances run, as `name:version` (the
    environment's image when it has no name), None where unknown: from the spec the
    target gives back, else from the declared spec when its digest is what runs."""
    spec = d.spec
    if spec is None and declared is not None and declared.digest == d.digest:
        spec = declared
    if spec is None:
        return None, None
    model = f"{spec.model.name}:{spec.model.version}" if spec.model is not None else None
    env = spec.environment
    environment = f"{env.name}:{env.version}" if env.name else env.image
    return model, environment


def _deployment_doc(
    d: LiveDeployment,
    failed: StepResult | None,
    *,
    pending: bool = False,
    declared: DeploymentSpec | None = None,
) -> dict[str, Any]:
    last_error = _error_text(failed) or d.last_error
    state = d.provisioning_state
    if failed is not None:
        state = ProvisioningState.FAILED
    elif pending and state == ProvisioningState.SUCCEEDED:
        state = ProvisioningState.UPDATING
    return {
        "provisioning_state": str(state),
        "health": str(deployment_health(d)),
        "instance_type": d.instance_type,
        "instance_count": d.instance_count,
        "ready_instances": d.ready_instances,
        "scale_settings": to_json(d.scale_settings),
        "spec_digest": d.digest,
        "last_error": last_error,
        **({"autoscale": d.autoscale} if d.autoscale else {}),
        # Added later (after autoscale): what runs, as `name:version`.
        **_assets(d, declared),
    }


def _assets(d: LiveDeployment, declared: DeploymentSpec | None) -> dict[str, str]:
    model, environment = running_assets(d, declared)
    found = {"model": model, "environment": environment}
    return {k: v for k, v in found.items() if v is not None}


def _error_text(result: StepResult | None) -> str | None:
    if result is None:
        return None
    text = result.message
    if result.error_code:
        text = f"{result.error_code}: {text}"
    if result.log_tail:
        tail = "\n".join(result.log_tail.splitlines()[-LOG_TAIL_LINES:])
        text = f"{text}\n{tail}"
    return text


def render_status(doc: Mapping[str, Any]) -> str:
    """Stable YAML: the key order of the document, block style, no timestamps."""
    return yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False, width=100)


@dataclass(frozen=True, slots=True)
class ReadStatus:
    """An endpoint's status file read back: the live state it records, and its commit."""

    endpoint: LiveEndpoint
    deployments: tuple[LiveDeployment, ...]
    revision: str | None
    target: str


def parse_status(text: str, *, file: str) -> ReadStatus:
    """Read a status document back into live state. Raises ValueError naming the file."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{file}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("endpoint"), str):
        raise ValueError(f"{file}: not a status document (no 'endpoint')")
    name = doc["endpoint"]
    spec = EndpointSpec(
        name=name,
        auth_mode=str(doc.get("auth_mode") or "key"),
        traffic=_weights(doc.get("traffic")),
        mirror_traffic=_weights(doc.get("mirror_traffic")),
    )
    endpoint = LiveEndpoint(
        spec=spec,
        provisioning_state=_state(doc.get("provisioning_state")),
        scoring_uri=doc.get("scoring_uri"),
        openapi_uri=doc.get("openapi_uri"),
        spec_known=False,
    )
    deployments = []
    for dep_name, d in sorted((doc.get("deployments") or {}).items()):
        if not isinstance(d, dict):
            raise ValueError(f"{file}: deployments.{dep_name} is not a mapping")
        scale = d.get("scale_settings") or {}
        deployments.append(
            LiveDeployment(
                key=ResourceKey(name, str(dep_name)),
                digest=str(d.get("spec_digest") or ""),
                instance_count=int(d.get("instance_count") or 0),
                scale_settings=ScaleSettings(**scale)
                if isinstance(scale, dict)
                else ScaleSettings(),
                ready_instances=int(d.get("ready_instances") or 0),
                provisioning_state=_state(d.get("provisioning_state")),
                last_error=d.get("last_error"),
                instance_type=d.get("instance_type"),
            )
        )
    return ReadStatus(
        endpoint=endpoint,
        deployments=tuple(deployments),
        revision=doc.get("commit"),
        target=str(doc.get("target") or ""),
    )


def _weights(value: Any) -> Weights:
    return weights(value) if isinstance(value, dict) else ()


def _state(value: Any) -> ProvisioningState:
    try:
        return ProvisioningState(value)
    except ValueError:
        return ProvisioningState.SUCCEEDED
