"""Desired state (from the repository) and live state (as a target shows it now)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.model.diagnostics import Diagnostic
from reconciler.model.keys import ResourceKey
from reconciler.model.specs import DeploymentSpec, EndpointSpec, ScaleSettings, Weights


class ProvisioningState(StrEnum):
    """Provisioning states of Azure ML endpoints and deployments (Scaling: deployments)."""

    CREATING = "Creating"
    UPDATING = "Updating"
    SCALING = "Scaling"
    DELETING = "Deleting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Every endpoint and deployment the repository declares, valid and normalised."""

    endpoints: tuple[EndpointSpec, ...] = ()
    deployments: tuple[DeploymentSpec, ...] = ()
    warnings: tuple[Diagnostic, ...] = ()
    revision: str | None = None  # the commit the state was read from, when known

    def endpoint(self, name: str) -> EndpointSpec | None:
        for spec in self.endpoints:
            if spec.name == name:
                return spec
        return None

    def deployments_of(self, endpoint: str) -> tuple[DeploymentSpec, ...]:
        return tuple(d for d in self.deployments if d.endpoint_name == endpoint)

    def by_key(self) -> dict[ResourceKey, EndpointSpec | DeploymentSpec]:
        table: dict[ResourceKey, EndpointSpec | DeploymentSpec] = {}
        for e in self.endpoints:
            table[e.key] = e
        for d in self.deployments:
            table[d.key] = d
        return table


@dataclass(frozen=True, slots=True)
class LiveEndpoint:
    """An endpoint as the target shows it; spec.traffic and mirror_traffic are observed."""

    spec: EndpointSpec
    provisioning_state: ProvisioningState = ProvisioningState.SUCCEEDED
    scoring_uri: str | None = None
    openapi_uri: str | None = None
    # The target only knows the observed fields (auth, traffic, mirror), not the rest of the
    # spec (description, tags): endpoint updates are then judged on what is known.
    spec_known: bool = True
    # Why the endpoint does not serve as it should although its settings match (its router
    # stopped, its port dead, its keys or router config lost): the plan repairs it.
    repair: str | None = None
    # What people must know of the endpoint's past that its settings do not show (keys
    # issued anew after the old ones were lost, ...); status shows them.
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> ResourceKey:
        return self.spec.key


@dataclass(frozen=True, slots=True)
class ResolvedConnection:
    """One connection a deployment references: what its instances were started with
    against what the target would give new instances now.

    Both are keyed digests of the referenced values (HMAC-SHA256 under a random key the
    target keeps with its own state, shortened for display): equal values give equal
    digests, and nobody without the key can test a guess of a value against one. Never a
    value, never a plain hash of one. started is None when the instances recorded nothing
    (started by an earlier version), or a text saying they disagree (a rollout stopped
    half-way); current is None when the connection or a referenced key is missing now.
    """

    name: str
    started: str | None
    current: str | None

    @property
    def changed(self) -> bool:
        """New instances would get other values than the running ones have.

        A connection missing now is no change: new instances could not start, and the
        running ones keep serving with what they have (the plan warns of it).
        """
        return self.current is not None and self.started != self.current


@dataclass(frozen=True, slots=True)
class LiveDeployment:
    """A deployment as the target shows it.

    digest is the template digest of the spec its instances run (DeploymentSpec.digest);
    spec is that spec when the target can give it back in full, None when only the digest is
    known (then a change shows as a digest change). With the spec given, digest may be left
    empty for the spec's own to be worked out when something compares it (spec_digest):
    diffing.assume_applied does, as `reconcile diff` compares only the specs that changed.
    instance_count is the count the target is asked to keep now (an autoscaler may have
    moved it); ready_instances those that pass their readiness probe. connections: per
    connection the spec references, the values its instances started with against those
    the target holds now (a Kubernetes pod template's secret-hash annotation, kept by the
    target: a change rolls the deployment).
    """

    key: ResourceKey
    digest: str
    instance_count: int
    scale_settings: ScaleSettings = ScaleSettings()
    spec: DeploymentSpec | None = None
    ready_instances: int = 0
    provisioning_state: ProvisioningState = ProvisioningState.SUCCEEDED
    last_error: str | None = None
    instance_type: str | None = None
    autoscale: str | None = None  # the autoscaler's last decision and its reason
    # Why what runs is out of line with what the deployment should run although its spec
    # and count match (instances ready but not routed yet, routed ones gone or crashed,
    # instances missing): the plan's repair_deployment step brings it in line.
    repair: str | None = None
    connections: tuple[ResolvedConnection, ...] = ()

    @property
    def endpoint(self) -> str:
        return self.key.endpoint

    @property
    def name(self) -> str:
        assert self.key.deployment is not None
        return self.key.deployment

    @property
    def spec_digest(self) -> str:
        """The template digest of what runs: digest, or the spec's when it was left empty."""
        if self.digest or self.spec is None:
            return self.digest
        return self.spec.digest


@dataclass(frozen=True, slots=True)
class LiveState:
    """What a target runs: its endpoints and deployments as observed."""

    endpoints: tuple[LiveEndpoint, ...] = ()
    deployments: tuple[LiveDeployment, ...] = ()
    target: str = ""
    # Endpoints the target could not read; they are left out of the plan, never pruned.
    unreadable: tuple[str, ...] = field(default=())
    # What the target wants said in every plan made against it (an endpoint of the same
    # name that another repository manages there, ...).
    warnings: tuple[Diagnostic, ...] = field(default=())

    def endpoint(self, name: str) -> LiveEndpoint | None:
        for e in self.endpoints:
            if e.name == name:
                return e
        return None

    def deployments_of(self, endpoint: str) -> tuple[LiveDeployment, ...]:
        return tuple(d for d in self.deployments if d.endpoint == endpoint)

    def traffic_of(self, endpoint: str) -> Weights:
        live = self.endpoint(endpoint)
        return live.spec.traffic if live else ()
