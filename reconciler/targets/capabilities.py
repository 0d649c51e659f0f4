"""What a target can do beyond observe and apply, as Protocols mypy checks.

Every target observes and applies (targets.base.Target). Some can do more: give an
endpoint's credentials, show logs, keep connections, autoscale, build from the repository,
warn about the desired state before a plan. Callers ask with `isinstance(target, HasLogs)`
(each Protocol is runtime checkable), and mypy knows the target's methods from then on; no
capability is looked up by name. Which target claims which capability is pinned at the end
of each target's module (`_: type[HasLogs] = DockerTarget`), so mypy says when a target
stops satisfying one it claims.

What a runtime check sees is the presence of the members, not their signatures: the
signatures are what mypy checks at those pins.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    # Types only: what a connection is, shared by the targets (endpoints.connections), and
    # the model's (annotations of the Protocols): `reconcile invoke` imports EndpointAccess
    # from here without the model's specs and states (issue 15: start-up).
    from reconciler.endpoints.connections import Connection
    from reconciler.endpoints.credentials import EndpointCredentials
    from reconciler.images.retention import Collected
    from reconciler.model.diagnostics import Diagnostic
    from reconciler.model.state import DesiredState, LiveState

__all__ = [
    "Autoscaler",
    "Autoscales",
    "Builds",
    "ChecksDesired",
    "CollectsImages",
    "ConnectionStore",
    "EndpointAccess",
    "EndpointKeys",
    "HasConnections",
    "HasCredentials",
    "HasLogs",
    "HasPreviousLogs",
    "HasRouterMetrics",
    "ObservesEndpoint",
]


@dataclass(frozen=True)
class EndpointAccess:
    """What `reconcile invoke` needs of one endpoint, as a target type reads it without
    opening the whole target (targets.registry.ENDPOINT_ACCESS). Its repr shows no key."""

    scoring_uri: str
    auth_mode: str
    deployments: tuple[str, ...]
    credentials: EndpointCredentials


class EndpointKeys(Protocol):
    """An endpoint's two keys, as `reconcile credentials` and `invoke` need them."""

    @property
    def primary_key(self) -> str: ...

    @property
    def secondary_key(self) -> str: ...


@runtime_checkable
class HasCredentials(Protocol):
    """A target that keeps an endpoint's keys and token secret: `credentials`, `invoke`,
    `regenerate-key`."""

    def endpoint_credentials(self, endpoint: str) -> EndpointKeys:
        """The endpoint's keys. Raises TargetError when it has none."""
        ...

    def token(self, endpoint: str, *, now: float, ttl_s: int = 3600) -> Mapping[str, object]:
        """A fresh token (aml_token mode), in Azure ML's shape (accessToken, ...)."""
        ...

    def regenerate_key(self, endpoint: str, which: str) -> None:
        """Replace the primary or secondary key; the other stays valid."""
        ...


@runtime_checkable
class ObservesEndpoint(Protocol):
    """A target that can observe one endpoint without reading the others: `invoke` answers
    in the time of the endpoint's own answer, however many endpoints the target runs."""

    def observe_endpoint(self, name: str) -> LiveState:
        """The endpoint and its deployments exactly as observe() shows them (nothing else;
        an empty state when the target has no such endpoint)."""
        ...


@runtime_checkable
class HasLogs(Protocol):
    """A target that shows the last lines of a deployment's instances' logs."""

    def logs(
        self, endpoint: str, deployment: str, *, instance: int | None = None, lines: int = 100
    ) -> str: ...


@runtime_checkable
class HasPreviousLogs(Protocol):
    """A target that keeps what an instance wrote before its last restart
    (`reconcile logs --previous`)."""

    def previous_logs(
        self, endpoint: str, deployment: str, *, instance: int | None = None, lines: int = 100
    ) -> str: ...


@runtime_checkable
class HasRouterMetrics(Protocol):
    """A target whose endpoints' routers can be scraped from here: the dashboard's charts
    and rollout analysis (reconciler.rollouts.analysis) read them. The router's metric
    names are in router/metrics.py."""

    def router_metrics(self, endpoint: str) -> str:
        """The Prometheus text exposition of the endpoint's router (of all its routers,
        joined). Raises TargetError when the endpoint has no router or it does not answer."""
        ...


@runtime_checkable
class HasRouterMetricsEach(Protocol):
    """A target whose endpoints may have several routers (Kubernetes router pods): their
    expositions one by one, so that the restart of one router is told from the others'
    counts (a sum that goes down would read as every router's reset)."""

    def router_metrics_each(self, endpoint: str) -> Mapping[str, str]:
        """Each answering router's exposition by the router's name. Raises TargetError when
        none answers."""
        ...


@runtime_checkable
class CollectsImages(Protocol):
    """A target that removes the images it built beyond their retention (`reconcile gc`)."""

    def collect_images(
        self, *, dry_run: bool = False, keep: int | None = None, protect: tuple[str, ...] = ()
    ) -> Collected: ...


class ConnectionStore(Protocol):
    """Where a target keeps the values of connections (never in git)."""

    @property
    def target_name(self) -> str: ...

    def read(self) -> dict[str, Connection]: ...

    def set(self, conn: Connection) -> Connection: ...

    def delete(self, name: str) -> bool: ...


@runtime_checkable
class HasConnections(Protocol):
    """A target that stores connections itself (`reconcile connection ...`)."""

    def connections(self) -> ConnectionStore: ...


class Autoscaler(Protocol):
    """A loop the daemon runs beside passes: tick() samples, decides and maybe scales."""

    # The target it scales through: the daemon sets it when reconciler.yaml changes it.
    target: object

    def tick(self, now: float | None = None) -> None: ...

    def interval(self) -> float: ...


@runtime_checkable
class Autoscales(Protocol):
    """A target that scales target_utilization deployments itself, between passes."""

    def autoscaler(
        self, lock: threading.Lock, *, wake: Callable[[], None] | None = None
    ) -> Autoscaler: ...


@runtime_checkable
class Builds(Protocol):
    """A target that builds images from the repository's files at repo_root: the daemon
    points it at each pass's own checkout."""

    repo_root: Path


@runtime_checkable
class ChecksDesired(Protocol):
    """A target that can say, before any step, what in the desired state it cannot do
    (references to connections it lacks): warnings for dry-run and apply's plan."""

    def desired_warnings(self, desired: DesiredState) -> tuple[Diagnostic, ...]: ...
