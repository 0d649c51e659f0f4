"""Changes and the plan: ordered steps the executor runs, and nothing else.

The plan is data. Each step carries everything its execution needs (the full spec to
create or roll out, the instance count to scale to, the weights to set), so the executor
never goes back to the specs to work out what was meant, and `--dry-run` shows exactly the
steps that apply would run.

What a step carries is one payload type per action (CreateEndpoint, SetTraffic, ...): a
target's handler of an action gets exactly its payload, with no optional field to check,
and `targets.base.dispatch` matches on the payload type so that mypy finds an action no
target handles.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from reconciler.model.diagnostics import Diagnostic

# In a module of its own (validate and status need no steps); re-exported here.
from reconciler.model.revision import PlanRevision as PlanRevision
from reconciler.model.specs import (
    DeploymentSpec,
    EndpointSpec,
    JsonValue,
    ScaleSettings,
    Weights,
)


class Action(StrEnum):
    """Action names: a stable contract of the JSON output."""

    CREATE_ENDPOINT = "create_endpoint"
    UPDATE_ENDPOINT = "update_endpoint"
    DELETE_ENDPOINT = "delete_endpoint"
    CREATE_DEPLOYMENT = "create_deployment"
    SCALE_DEPLOYMENT = "scale_deployment"
    UPDATE_DEPLOYMENT = "update_deployment"
    DELETE_DEPLOYMENT = "delete_deployment"
    SET_TRAFFIC = "set_traffic"
    SET_MIRROR_TRAFFIC = "set_mirror_traffic"
    # Added after the first release: consumers of the JSON ignore actions they do not know.
    REPAIR_ENDPOINT = "repair_endpoint"
    REPAIR_DEPLOYMENT = "repair_deployment"


# --- payloads: what each action needs, one frozen type per action ---------------------------


@dataclass(frozen=True, slots=True)
class CreateEndpoint:
    """Make the endpoint (router, keys), with no traffic yet: traffic has its own steps."""

    spec: EndpointSpec
    action: ClassVar[Action] = Action.CREATE_ENDPOINT


@dataclass(frozen=True, slots=True)
class UpdateEndpoint:
    """Endpoint settings change (auth_mode, ...); the traffic that serves now stays."""

    spec: EndpointSpec
    action: ClassVar[Action] = Action.UPDATE_ENDPOINT


@dataclass(frozen=True, slots=True)
class RepairEndpoint:
    """The endpoint's router and records made whole again, to this spec."""

    spec: EndpointSpec
    action: ClassVar[Action] = Action.REPAIR_ENDPOINT


@dataclass(frozen=True, slots=True)
class DeleteEndpoint:
    """Everything of the endpoint goes (its deployments are gone already)."""

    action: ClassVar[Action] = Action.DELETE_ENDPOINT


@dataclass(frozen=True, slots=True)
class CreateDeployment:
    """Start instance_count instances of spec, scaled by scale_settings."""

    spec: DeploymentSpec
    instance_count: int
    scale_settings: ScaleSettings
    action: ClassVar[Action] = Action.CREATE_DEPLOYMENT


@dataclass(frozen=True, slots=True)
class ScaleDeployment:
    """The deployment runs instance_count instances (its version, spec, stays)."""

    spec: DeploymentSpec
    instance_count: int
    scale_settings: ScaleSettings
    action: ClassVar[Action] = Action.SCALE_DEPLOYMENT


@dataclass(frozen=True, slots=True)
class UpdateDeployment:
    """A rolling update (or a replacement, Step.replace) to spec."""

    spec: DeploymentSpec
    instance_count: int
    scale_settings: ScaleSettings
    action: ClassVar[Action] = Action.UPDATE_DEPLOYMENT


@dataclass(frozen=True, slots=True)
class RepairDeployment:
    """What runs of deployment `name` brought in line with its own record, as observed:
    spec (None when the target kept no record of it), count and scale settings of now."""

    name: str
    spec: DeploymentSpec | None
    instance_count: int
    scale_settings: ScaleSettings
    action: ClassVar[Action] = Action.REPAIR_DEPLOYMENT


@dataclass(frozen=True, slots=True)
class DeleteDeployment:
    """Deployment `name`'s instances go (its traffic and mirror traffic have left)."""

    name: str
    action: ClassVar[Action] = Action.DELETE_DEPLOYMENT


@dataclass(frozen=True, slots=True)
class SetTraffic:
    """The endpoint's live traffic becomes weights."""

    weights: Weights
    action: ClassVar[Action] = Action.SET_TRAFFIC


@dataclass(frozen=True, slots=True)
class SetMirrorTraffic:
    """The endpoint's mirror traffic becomes weights."""

    weights: Weights
    action: ClassVar[Action] = Action.SET_MIRROR_TRAFFIC


Payload = (
    CreateEndpoint
    | UpdateEndpoint
    | RepairEndpoint
    | DeleteEndpoint
    | CreateDeployment
    | ScaleDeployment
    | UpdateDeployment
    | RepairDeployment
    | DeleteDeployment
    | SetTraffic
    | SetMirrorTraffic
)
_ENDPOINT_PAYLOADS = (CreateEndpoint, UpdateEndpoint, RepairEndpoint)
_DEPLOYMENT_PAYLOADS = (CreateDeployment, ScaleDeployment, UpdateDeployment, RepairDeployment)
_SPEC_PAYLOADS = (CreateDeployment, ScaleDeployment, UpdateDeployment)


def _payload_deployment(payload: Payload) -> str | None:
    """The deployment a payload is about (a str for every deployment action, so that a
    handler never asserts the step's optional `deployment`); None for endpoint actions."""
    if isinstance(payload, _SPEC_PAYLOADS):
        return payload.spec.name
    if isinstance(payload, (RepairDeployment, DeleteDeployment)):
        return payload.name
    return None


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field that changes: a dotted path, its value before and after (None: absent)."""

    path: str
    before: JsonValue
    after: JsonValue

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "from": self.before, "to": self.after}


@dataclass(frozen=True, slots=True)
class Step:
    """One action on one endpoint or deployment, with its payload.

    The payload's type is the action. wait_healthy names the deployments that must be
    healthy before the step runs (the traffic gate: capacity first). depends_on holds the
    indexes of earlier steps in the plan that must have succeeded; a failed step skips its
    dependants.
    """

    payload: Payload
    endpoint: str
    deployment: str | None = None
    changes: tuple[FieldChange, ...] = ()
    reason: str = ""
    wait_healthy: tuple[str, ...] = ()
    replace: bool = False  # instances are replaced (a field that cannot change in place)
    prune: bool = False  # deleting something the repository no longer declares
    depends_on: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        named = _payload_deployment(self.payload)
        if named is not None and named != self.deployment:
            raise ValueError(
                f"a {self.payload.action} step on {self.deployment!r} names deployment {named}"
            )

    @property
    def action(self) -> Action:
        return self.payload.action

    # Read-only views of the payload under the names a step's fields had before payloads
    # were typed (tests and readers of plans); targets use the payload itself.

    @property
    def endpoint_spec(self) -> EndpointSpec | None:
        p = self.payload
        return p.spec if isinstance(p, _ENDPOINT_PAYLOADS) else None

    @property
    def deployment_spec(self) -> DeploymentSpec | None:
        p = self.payload
        return p.spec if isinstance(p, _DEPLOYMENT_PAYLOADS) else None

    @property
    def instance_count(self) -> int | None:
        p = self.payload
        return p.instance_count if isinstance(p, _DEPLOYMENT_PAYLOADS) else None

    @property
    def scale_settings(self) -> ScaleSettings | None:
        p = self.payload
        return p.scale_settings if isinstance(p, _DEPLOYMENT_PAYLOADS) else None

    @property
    def traffic(self) -> Weights | None:
        return self.payload.weights if isinstance(self.payload, SetTraffic) else None

    @property
    def mirror_traffic(self) -> Weights | None:
        return self.payload.weights if isinstance(self.payload, SetMirrorTraffic) else None

    @property
    def target_name(self) -> str:
        return self.endpoint if self.deployment is None else f"{self.endpoint}/{self.deployment}"

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "endpoint": self.endpoint,
            "deployment": self.deployment,
            "changes": [c.as_json() for c in self.changes],
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class EndpointSummary:
    """Traffic of one endpoint before and after the plan, for people reviewing it."""

    endpoint: str
    traffic_before: Weights = ()
    traffic_after: Weights = ()
    mirror_before: Weights = ()
    mirror_after: Weights = ()
    deployments: tuple[str, ...] = ()  # every deployment on either side, sorted
    created: bool = False
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps that bring a target to the desired state, with errors and warnings."""

    steps: tuple[Step, ...] = ()
    errors: tuple[Diagnostic, ...] = ()
    warnings: tuple[Diagnostic, ...] = ()
    endpoints: tuple[EndpointSummary, ...] = ()
    # Added after the first release: which revision the plan read (apply and --dry-run).
    revision: PlanRevision | None = None

    @property
    def empty(self) -> bool:
        return not self.steps

    def as_json(self) -> dict[str, Any]:
        return {
            "steps": [s.as_json() for s in self.steps],
            "errors": [e.as_json() for e in self.errors],
            "warnings": [w.as_json() for w in self.warnings],
            # Only when known: `reconcile diff` names its revisions on the command line.
            **({"revision": self.revision.as_json()} if self.revision is not None else {}),
        }
