"""The Docker target: endpoints as containers on one Docker Engine.

Per endpoint: an internal network (deployments publish no port and reach nothing outside),
and a router container on a stable port of 127.0.0.1 (the scoring URI). Per deployment:
one container per instance, of an image built for it (environment layer cached by content,
thin code + model layer on top). Names of containers and networks start with
`rcl-TARGET-ENDPOINT`, so two targets on one engine never collide; the router reaches an
instance by a short alias on the endpoint's network (`DEPLOYMENT-DIGEST8-INDEX`), on the
inference server's port or on the port a custom container's inference_config names.

The target is its own record, and Docker holds all of it: observe() rebuilds the live
state from container labels (endpoint, deployment, digest, the applied spec, the instance's
address), container health, and each endpoint's state volume (state.py: keys, the router's
config, records of deployments, which stand in for the labels of one scaled to zero).
Nothing lives in a host folder; everything carries the target's label, so two targets on
one engine never see each other.

Observe also checks that each endpoint serves: a router that is missing, stopped or whose
published port does not answer, lost or unreadable keys or config, and an endpoint of an
earlier version's layout are named in LiveEndpoint.repair; the plan's repair_endpoint step
makes every missing or broken part again and keeps the rest (keys survive anything but the
loss of the volume; then new ones are issued and said so). A router sits on two networks:
its endpoint's internal one, and the target's edge bridge for its published port, where
containers cannot reach each other (not Docker's shared default bridge, where any
container reaches its admin and metrics ports). One edge network per target, not per
endpoint. Networks take small subnets of the target's own `network_pool` (subnets.py):
Docker's default address pools hold only about 30 networks.

Readiness: a container is ready when the inference server answers GET / inside it (Triton,
serving a no-code triton_model: GET /v2/health/ready; a custom container: when its
readiness route answers the router's container, since its image may have no Python).
Docker's HEALTHCHECK (from readiness_probe) keeps watching it afterwards; until Docker calls
an instance healthy, observe asks it directly (docker exec), because Docker 20.10 runs the
first health check only after a full probe period. A custom container is watched by the
router instead (router/probes.py), with its own routes and the deployment's probe settings:
its readiness route decides whether it gets traffic, and an instance whose liveness route
failed failure_threshold times in a row is named by observe (LiveDeployment.repair) and
restarted by the plan's repair_deployment step. A router too old to run these checks is
replaced by a repair_endpoint step.

No step waits (a pass never blocks): create, scale and update start instances and return
`Waiting`; an instance joins the router once ready, by a later pass. The update's rounds
(new ones ready and routed, old ones retired as far as those make up for them, the next
batch started) each run in a pass of their own while observe shows two versions. The record
of each deployment (its state) keeps the count it is asked for, so observe reports what is
out of line as LiveDeployment.repair and the plan's repair_deployment step fixes it:
instances ready but not routed, routed ones gone, instances missing or in surplus.

Failure: an instance that stopped, crash-loops or failed its readiness is failed. One that
served before (crashed) is replaced by a repair. One that never became ready (crashed while
starting, or not ready within its readiness probe's budget, at most ready_timeout_s) is a
failed start: the deployment is Failed with its last log lines, the instance is stopped and
kept for its logs, and it is not started again by itself (a version that cannot start would
loop); a change of the deployment (a commit) rolls a new version and clears it. Traffic never
moves to a failed deployment. An instance Docker restarted once counts again as soon as it
is healthy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from reconciler.endpoints.comparison import DEFAULT_COMPARISON, router_comparison, spec_tolerance
from reconciler.endpoints.credentials import (
    EndpointCredentials,
    credentials_from_json,
    credentials_to_json,
    new_credentials,
)
from reconciler.images.baseimage import ImageBuildError, ensure_base_image
from reconciler.images.condamap import CondaMappingError
from reconciler.images.layers import (
    build_deployment_image,
    build_environment_image,
    build_labels,
    remove_stale_build_containers,
)
from reconciler.images.layout import SERVER_PORT, route_of, serving
from reconciler.images.retention import Collected, built_for_labels
from reconciler.images.router import (
    PROBING_LEVEL,
    ROUTER_LEVEL_LABEL,
    SHADOW_TOLERANCE_LEVEL,
    STATE_DIGEST_LEVEL,
    ensure_router_image,
)
from reconciler.logs import get_logger
from reconciler.model.codec import deployment_from_json, endpoint_from_json
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.errors import ErrorCode
from reconciler.model.instance_types import DEFAULT_INSTANCE_TYPES, InstanceType
from reconciler.model.keys import ResourceKey
from reconciler.model.plan import (
    CreateDeployment,
    CreateEndpoint,
    DeleteDeployment,
    DeleteEndpoint,
    RepairDeployment,
    RepairEndpoint,
    ScaleDeployment,
    SetMirrorTraffic,
    SetTraffic,
    Step,
    UpdateDeployment,
    UpdateEndpoint,
)
from reconciler.model.results import Waiting
from reconciler.model.secrets import variables as secret_variables
from reconciler.model.specs import (
    DeploymentSpec,
    EndpointSpec,
    ScaleSettings,
    Weights,
    spec_digest,
    to_json,
    weight_of,
)
from reconciler.model.state import (
    DesiredState,
    LiveDeployment,
    LiveEndpoint,
    LiveState,
    ProvisioningState,
    ResolvedConnection,
)
from reconciler.nocode.triton import serves_triton
from reconciler.router.admin import CONFIG_DIGEST_PATH, config_post
from reconciler.router.config import (
    ConfigError,
    DeploymentRoute,
    Probe,
    RouterConfig,
    config_from_dict,
    dump_config,
    parse_config,
)
from reconciler.router.statefiles import state_digest
from reconciler.router.tokens import hash_key, issue_token
from reconciler.targets.base import (
    OutputLine,
    ProgressCallback,
    StepHandlers,
    Target,
    TargetError,
    TargetUnavailable,
    dispatch,
)
from reconciler.targets.capabilities import (
    Autoscales,
    Builds,
    ChecksDesired,
    CollectsImages,
    HasConnections,
    HasCredentials,
    HasLogs,
    HasPreviousLogs,
    HasRouterMetrics,
    ObservesEndpoint,
)
from reconciler.targets.docker.autoscaler import DockerAutoscaler
from reconciler.targets.docker.connections import DIGESTS_LABEL, ConnectionStore, shown
from reconciler.targets.docker.failures import failure_note, previous_run_log
from reconciler.targets.docker.imagegc import collect as collect_images
from reconciler.targets.docker.legacystore import LegacyStore
from reconciler.targets.docker.listing import Inspections, Listed, epoch
from reconciler.targets.docker.options import DockerOptions
from reconciler.targets.docker.preflight import resource_limits
from reconciler.targets.docker.routercheck import RouterCheck, check_router
from reconciler.targets.docker.state import AUTOSCALE as AUTOSCALE_FILE
from reconciler.targets.docker.state import CREDENTIALS as CREDENTIALS_FILE
from reconciler.targets.docker.state import DEPLOYMENTS as DEPLOYMENTS_FILE
from reconciler.targets.docker.state import ENDPOINT as ENDPOINT_FILE
from reconciler.targets.docker.state import MOUNT as STATE_MOUNT
from reconciler.targets.docker.state import NOTES as NOTES_FILE
from reconciler.targets.docker.state import ROUTER_CONFIG, StateUnreadable
from reconciler.targets.docker.state import read_files as read_state
from reconciler.targets.docker.state import write_files as write_state
from reconciler.targets.docker.subnets import create_network
from reconciler.targets.ownership import checkout_of, same_repository

log = get_logger("reconciler.docker")

L = "reconciler."  # label prefix
MANAGED = f"{L}managed-by"
MANAGER = "ml-endpoint-reconciler"
ROUTER_PORT, ROUTER_METRICS_PORT = 8080, 9090
LOG_TAIL = 30
# A router's /metrics is read from the host (the dashboard's charts): it answers at once.
ROUTER_METRICS_TIMEOUT_S = 3.0
STATE_READERS = 8  # endpoints' states read at once by a pass (engine archive calls)
# Where a router says which config it serves (every worker of it), and how long a config
# change waits for it to say the new one before the step is left in progress.
ROUTER_DIGEST_PATH = CONFIG_DIGEST_PATH
SERVED_PATIENCE_S = 5.0
SERVED_POLL_S = 0.05
# A probe is a GET that must answer 2xx or 3xx (as Kubernetes' httpGet probes) within the
# timeout; run with the Python of the container it runs in (instances and the router both
# have /opt/venv). On a bare socket, without site (-S): Docker runs it every period in every
# instance, and importing urllib.request costs about 60 ms of CPU against 15 ms so (measured
# on the 2-core bench host): with 100 instances, a core's worth of checks, which time out
# when the host is busy and then pile up (Docker 20.10 leaves a timed-out check running).
_PROBE = (
    "import socket,sys\n"
    "try:\n"
    "    s=socket.create_connection(({host!r},{port}),{timeout})\n"
    "    s.settimeout({timeout})\n"
    "    s.sendall({request!r})\n"
    "    line=s.makefile('rb').readline(256).split()\n"
    "except OSError:\n"
    "    sys.exit(1)\n"
    "sys.exit(0 if len(line)>1 and line[1][:1] in (b'2',b'3') else 1)\n"
)
# The inference server answers its liveness and readiness on GET / (SPEC-REFERENCE.md).
SERVER_READY_URL = f"http://127.0.0.1:{SERVER_PORT}/"


_POOL_LOCK = threading.Lock()
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (pid that made it, the pool)


def _pass_pool() -> ThreadPoolExecutor:
    """Threads shared by the passes of every target of the process, for what a pass asks
    at once (router checks, the engine's listings): made once, not per pass, since
    starting a thread waits until it runs, and on a busy host that took 0.1 s of a pass
    over 50 endpoints (10 threads at a load of 47 on 2 cores). A pass's tasks never wait
    for one another, so passes sharing them only take turns. A forked process makes its
    own (threads do not survive a fork)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (
                os.getpid(),
                ThreadPoolExecutor(max_workers=STATE_READERS, thread_name_prefix="docker-pass"),
            )
        return _POOL[1]


def _probe_command(url: str, timeout: int) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
    script = _PROBE.format(host=host, port=port, timeout=timeout, request=request.encode())
    return ["/opt/venv/bin/python", "-S", "-c", script]


def _safe_name(text: str) -> str:
    """Text usable in a container or network name."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)


@dataclass(frozen=True)
class _Instance:
    """One deployment container as observed.

    address is where the router sends requests (a network alias of the endpoint's
    network and the scoring port); probe_url is asked from inside the instance itself, or
    from the router's container when probe_from_router (a custom container's image may
    hold no Python to probe with).
    """

    container: Any
    endpoint: str
    deployment: str
    digest: str
    index: int
    state: str  # running, exited, restarting, created, ...
    health: str | None  # healthy, unhealthy, starting, None (no health check)
    restarts: int
    address: str
    probe_url: str
    probe_from_router: bool
    started_at: float | None = None  # epoch seconds of the container's last start
    ready_within: float | None = None  # seconds it has to become ready (a label)
    # Per connection, the keyed digest of the values the instance was started with.
    connections: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return str(self.container.name)

    def started_with(self, current: Mapping[str, str | None]) -> bool:
        """Whether it has the connections' values `current` gives (None: missing now,
        which no instance is replaced for)."""
        recorded = dict(self.connections)
        return all(recorded.get(n) == d for n, d in current.items() if d is not None)

    @property
    def created(self) -> str:
        return str(self.container.attrs.get("Created", ""))

    @property
    def failed(self) -> bool:
        """Not serving and not about to: stopped, crash-looping, or its liveness failed.

        A container the restart policy brought back once is failed only until it proves
        healthy again: one crash (an OOM kill) heals itself, a crash loop does not.
        """
        if self.state in ("exited", "dead", "restarting") or self.health == "unhealthy":
            return True
        return self.restarts > 0 and self.health == "starting"


@dataclass(frozen=True)
class _Group:
    """The instances of one deployment, sorted (DockerTarget._view)."""

    alive: list[_Instance]  # running or starting, within their readiness budget
    # Failed after the router had them, or never started: replaced by a repair.
    crashed: list[_Instance]
    dead: list[_Instance]  # failed before they ever served: kept, stopped, not retried
    routed: set[str]  # addresses in the router's config
    ready: set[str]  # names of alive instances that answer their readiness probe
    why: dict[str, str]  # name -> why a failed one failed
    # Custom containers whose liveness route failed failure_threshold times in a row (as
    # the router checks it): restarted in place by a repair, as a kubelet does.
    not_live: dict[str, int] = field(default_factory=dict)

    def serves(self, inst: _Instance) -> bool:
        """Routed, or ready to be: an instance the router should have."""
        return inst.address in self.routed or inst.name in self.ready


@dataclass(frozen=True)
class _Version:
    """What new instances of a deployment run: a spec, its digest and its image.

    The digest and spec label are carried as they were written, so that instances added to
    a running version (scaling before an update) carry exactly its labels, whatever a
    round trip of the spec through JSON would give.
    """

    spec: DeploymentSpec
    digest: str
    spec_label: str
    image: str


class DockerTarget:
    """Target protocol on the local Docker Engine."""

    def __init__(
        self,
        options: DockerOptions,
        *,
        repo_root: Path,
        client: docker.DockerClient | None = None,
        instance_types: Mapping[str, InstanceType] = DEFAULT_INSTANCE_TYPES,
        repository: str | None = None,
    ) -> None:
        self.options = options
        # Which repository applies (GitSource.identity): two repositories that name their
        # targets alike (`local`) share the target, and each manages only the endpoints it
        # made. None: every endpoint of the target is this one's (tests, the API).
        self.repository = repository
        # The checkout's own folder (repo_root may later name a private checkout of a
        # commit): what it made before its repository had a remote is recorded as
        # `path:FOLDER`, and stays its own once a remote is added.
        self._checkout = Path(repo_root).resolve()
        self.name = options.name
        self.repo_root = repo_root
        self.instance_types = instance_types
        self._client = client
        # The state files of endpoints, read once a pass (see _state).
        self._state_cache: dict[str, dict[str, bytes]] = {}
        # The same files as last read or written, kept from pass to pass: a pass reads an
        # endpoint's again (Docker's archive API, tens of ms each) only when its router's
        # `/-/state-digest` is not theirs (observe, _check_routers).
        self._state_known: dict[str, dict[str, bytes]] = {}
        self._router_image: str | None = None
        # Inspections of instances, reused by the next pass while the engine's listing
        # shows nothing happened to them (listing.py).
        self._inspections = Inspections()

    # --- connection ------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=120)
                self._client.ping()
            except docker.errors.DockerException as exc:
                self._client = None
                raise TargetUnavailable(f"Docker Engine not reachable: {exc}") from None
        return self._client

    def _label_filter(self, **labels: str) -> dict[str, list[str]]:
        """A listing filter for what this target made, with `labels` (reconciler.KEY)."""
        ours = [f"{MANAGED}={MANAGER}", f"{L}target={self.name}"]
        return {"label": ours + [f"{L}{k}={v}" for k, v in labels.items()]}

    def _containers(self, **labels: str) -> list[Any]:
        try:
            # ignore_removed: a container removed between the listing and its inspection
            # (by hand, by a step) is simply not there, rather than an engine error.
            return list(
                self.client.containers.list(
                    all=True, filters=self._label_filter(**labels), ignore_removed=True
                )
            )
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            # A client that worked loses its engine as a ConnectionError of requests.
            raise TargetUnavailable(f"Docker Engine: {exc}") from None

    # --- connections (secrets environment variables reference: connections.py) --------

    def connections(self) -> ConnectionStore:
        return ConnectionStore(self.client, self.name, lambda: self._base_image(lambda _: None))

    def desired_warnings(self, desired: DesiredState) -> tuple[Diagnostic, ...]:
        """References to connections or keys this target lacks (ChecksDesired)."""
        return self.connections().missing(desired.deployments)

    # --- observe ---------------------------------------------------------------------

    def _listing(self, endpoint: str | None = None) -> list[Any]:
        """The target's containers for observe (of `endpoint` alone, when named), as one
        listing shows them (listing.Listed): instances with their inspection (their health,
        start time and restart count are not in the listing), reused from an earlier pass
        while the listing shows nothing happened to them (listing.Inspections), every other
        one inspected only if asked for more. An idle pass over 50 endpoints asks the
        engine for one listing, not for 100 inspections besides."""
        scope = {} if endpoint is None else {"endpoint": endpoint}
        try:
            entries = self.client.api.containers(all=True, filters=self._label_filter(**scope))
            role = {e["Id"]: (e.get("Labels") or {}).get(f"{L}role") for e in entries}
            instances = [e for e in entries if role[e["Id"]] == "instance"]
            inspected = {
                c.id: c
                for c in self._inspections.listed(
                    self.client, instances, now=time.time(), complete=endpoint is None
                )
            }
            found: list[Any] = []
            for entry in entries:
                if role[entry["Id"]] != "instance":
                    found.append(Listed(self.client, entry))
                elif entry["Id"] in inspected:
                    found.append(inspected[entry["Id"]])
            return found
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            raise TargetUnavailable(f"Docker Engine: {exc}") from None

    def observe(self) -> LiveState:
        return self._observe(None)

    def observe_endpoint(self, name: str) -> LiveState:
        """The endpoint `name` and its deployments as observe() shows them, read from that
        endpoint's containers, volume and networks alone (label filters): `invoke` does not
        wait for every endpoint of the target to be read (ObservesEndpoint)."""
        return self._observe(name)

    def _observe(self, only: str | None) -> LiveState:
        """Every endpoint of the target, or only the one named `only`."""
        # Each pass reads the state afresh: the router's admin call may have changed it.
        self._state_cache.clear()
        # The engine's three listings at once: a pass waits for the slowest, not for the
        # sum (tens of ms each on a busy host).
        pool = _pass_pool()
        listed_volumes = pool.submit(self._state_volumes, only)
        listed_networks = pool.submit(self._networks_by_endpoint, only)
        containers = self._listing(only)
        volumes = listed_volumes.result()
        networks = listed_networks.result()
        routers: dict[str, Any] = {}
        holders: dict[str, Any] = {}
        instances: dict[tuple[str, str], list[_Instance]] = defaultdict(list)
        for c in containers:
            role = c.labels.get(f"{L}role")
            endpoint = c.labels.get(f"{L}endpoint", "")
            if role == "router":
                routers[endpoint] = c
            elif role == "state":
                holders[endpoint] = c
            elif role == "instance":
                inst = _instance(c)
                instances[(inst.endpoint, inst.deployment)].append(inst)
        names = set(routers) | set(holders) | set(volumes) | {e for e, _ in instances}
        foreign = self._foreign(volumes, containers)
        names -= set(foreign)
        # The container _state_handle would choose: the first holder listed, else router.
        handles: dict[str, Any] = {}
        for role in ("router", "state"):
            for c in reversed(containers):
                if c.labels.get(f"{L}role") == role:
                    handles[c.labels.get(f"{L}endpoint", "")] = c
        if only is None:  # one endpoint's look (invoke) keeps what is known of the others
            self._state_known = {k: v for k, v in self._state_known.items() if k in names}
        checks = self._check_routers(names, routers=routers, volumes=volumes)
        for name, check in checks.items():
            known = self._state_known.get(name)
            if known is not None and check.digest == state_digest(known):
                self._state_cache[name] = known
        self._read_states(
            {name: handles.get(name) for name in names if name not in self._state_cache}
        )
        instances = {k: v for k, v in instances.items() if k[0] not in foreign}
        endpoints = [
            self._observe_endpoint(
                name,
                router=routers.get(name),
                holder=holders.get(name),
                volume=volumes.get(name),
                instances=[i for (e, _), group in instances.items() if e == name for i in group],
                networks=networks.get(name) or networks.get("", {}),
                check=checks.get(name),
            )
            for name in sorted(names)
        ]
        broken = {e.name for e in endpoints if e.repair is not None}
        deployments = [
            self._observe_deployment(
                endpoint, deployment, group, endpoint_repair=endpoint in broken
            )
            for (endpoint, deployment), group in sorted(instances.items())
        ]
        # A deployment scaled to zero has no container to read it back from: its record
        # in the endpoint's state stands in.
        for name in sorted(names):
            for deployment, record in sorted(self._records_of(name).items()):
                if (name, deployment) not in instances and record.get("spec") is not None:
                    deployments.append(self._observe_empty(name, deployment, record))
        deployments.sort(key=lambda d: (d.endpoint, d.name))
        deployments = self._with_connections(deployments, instances)
        return LiveState(
            endpoints=tuple(endpoints),
            deployments=tuple(deployments),
            target=self.name,
            # Never changed, never pruned: another repository's. One that this repository
            # declares too is planned as new, and its creation fails naming the owner.
            warnings=tuple(
                Diagnostic(
                    file="reconciler.yaml",
                    line=None,
                    field=f"targets.{self.name}",
                    message=(
                        f"endpoint {name!r} on target {self.name!r} is managed by another "
                        f"repository ({owner}); this repository can neither change nor prune "
                        "it. To run an endpoint of that name from here, give this "
                        "repository's target another name"
                    ),
                )
                for name, owner in sorted(foreign.items())
            ),
        )

    def _observe_endpoint(
        self,
        name: str,
        *,
        router: Any | None,
        holder: Any | None,
        volume: Any | None,
        instances: list[_Instance],
        networks: Mapping[str, Any],
        check: RouterCheck | None = None,
    ) -> LiveEndpoint:
        """The endpoint as its state and router show it, with what needs repair, if any
        (check: what its router answered this pass on its published port, when asked).

        Every problem found is named, so that `--dry-run` and status say why the endpoint
        does not serve, and the plan's repair step fixes it.
        """
        problems: list[str] = []
        files: dict[str, bytes] = {}
        legacy = router is not None and _legacy_router(router)
        if volume is None and not legacy:
            problems.append(
                "its state (keys, router config) is gone: new keys will be issued"
                if router is None and holder is None
                else "its state volume is missing: new keys will be issued"
            )
        elif volume is not None and holder is None and router is None:
            problems.append(
                f"no container holds its state volume {volume.name} (its router and holder "
                "are gone): both are made again, keys kept"
            )
        else:
            try:
                files = self._state(name)
            except StateUnreadable as exc:
                problems.append(f"its state cannot be read ({exc})")
        if legacy:
            problems.append(
                "its router uses the layout of an earlier version (host state folder, shared "
                "bridge network): moved into a state volume and an isolated network"
            )
        elif volume is not None and holder is None and router is not None:
            problems.append("the container holding its state volume is missing")
        spec_known = True
        try:
            # The name is the labels', whatever the file says.
            spec = replace(endpoint_from_json(json.loads(files[ENDPOINT_FILE])), name=name)
        except (KeyError, ValueError, TypeError, RecursionError):
            spec, spec_known = EndpointSpec(name), False
        config: RouterConfig | None = None
        if ROUTER_CONFIG in files:
            try:
                config = _parsed_config(files[ROUTER_CONFIG])
            except ConfigError as exc:
                problems.append(f"its router config is unreadable ({exc})")
        elif files or legacy:
            problems.append("its router config is missing")
        # What the spec file asked of the router, for the check of its level below.
        asked = spec
        # Traffic is what the router's config says, or unknown (none): never the spec
        # file's, which says what was asked, not what serves.
        spec = replace(
            spec,
            auth_mode=config.auth_mode if config is not None else spec.auth_mode,
            traffic=config.traffic if config is not None else (),
            mirror_traffic=config.mirror_traffic if config is not None else (),
            shadow_comparison=(
                spec_tolerance(config.shadow_comparison)
                if config is not None
                else spec.shadow_comparison
            ),
        )
        if not legacy and files:
            problem = _credentials_problem(files)
            if problem is not None:
                problems.append(problem)
        problems += _network_problems(
            router=router if not legacy else None, instances=instances, networks=networks
        )
        ports = _volume_ports(volume) if volume is not None else _router_ports(router)
        if router is None:
            problems.append("its router container is missing")
        elif router.status != "running":
            problems.append(f"its router container is {router.status}")
        elif ports is not None and not legacy:
            dead = check.port_problem if check is not None else _port_problem(ports[0])
            if dead is not None:
                problems.append(dead)
        if router is not None and not legacy and _outdated_router(router, instances):
            problems.append(
                "its router predates the readiness and liveness checks of custom containers: "
                "replaced by the current router (keys and port kept)"
            )
        elif router is not None and not legacy and _untolerant_router(router, asked):
            problems.append(
                "its router predates the shadow comparison's tolerances of its rollout "
                "policy: replaced by the current router (keys and port kept)"
            )
        uri = f"http://127.0.0.1:{ports[0]}" if ports else None
        return LiveEndpoint(
            spec=spec,
            provisioning_state=(
                ProvisioningState.FAILED if problems else ProvisioningState.SUCCEEDED
            ),
            scoring_uri=f"{uri}/score" if uri else None,
            openapi_uri=f"{uri}/swagger.json" if uri else None,
            spec_known=spec_known,
            repair="; ".join(problems) or None,
            notes=tuple(str(v) for _, v in sorted(self._state_json(name, NOTES_FILE).items())),
        )

    def _observe_deployment(
        self, endpoint: str, deployment: str, group: list[_Instance], *, endpoint_repair: bool
    ) -> LiveDeployment:
        """The deployment as its instances, the router and its record show it: its count
        is the one the record keeps, ready instances are those routed that answer, and
        `repair` names what is out of line (endpoint_repair: the endpoint's own repair
        routes its instances again, so they are not named twice)."""
        key = ResourceKey(endpoint, deployment)
        view = self._view(endpoint, deployment, group)
        # Failed instances (a rollout whose new instances did not start) say nothing of
        # what runs: the spec is that of the serving ones. But instances of another
        # version that failed to start make the digest a mixed one: the plan then holds
        # the update (which clears them, or fails on them while that version is declared).
        basis = view.alive or group
        digests = {i.digest for i in basis} | {i.digest for i in view.dead}
        newest = max(basis, key=lambda i: i.created)
        spec: DeploymentSpec | None = None
        digest = newest.digest
        if len(digests) == 1:
            with contextlib.suppress(ValueError, KeyError, TypeError, json.JSONDecodeError):
                spec = _spec_of_label(newest.container.labels[f"{L}spec"])
        else:
            # A rollout under way (or stopped half-way, or failed): report a digest no spec
            # has, so the plan holds the update until it is done.
            digest = spec_digest({"mixed": sorted(digests)})
        record = self._read_record(endpoint, deployment)
        scale = _scale_of(record.get("scale"))
        if "scale" not in record:
            # Containers carry the scale settings they were started with.
            with contextlib.suppress(ValueError, KeyError, TypeError, json.JSONDecodeError):
                scale = _scale_of(json.loads(newest.container.labels[f"{L}scale"]))
        recorded = record.get("count")
        # What the deployment is asked to keep; instances that failed to start hold their
        # places (they are not started again by themselves). Without a record of it (a
        # deployment of an earlier version): what runs.
        count = recorded if isinstance(recorded, int) else len(view.alive) + len(view.dead)
        ready = [i for i in view.alive if i.address in view.routed and i.name in view.ready]
        failed = view.crashed + view.dead
        if failed:
            state = ProvisioningState.FAILED
        elif not view.routed and not ready and view.alive:
            state = ProvisioningState.CREATING
        elif len(ready) < count or len(ready) < len(view.alive):
            state = ProvisioningState.UPDATING
        else:
            state = ProvisioningState.SUCCEEDED
        last_error = None
        if failed:
            first = failed[0]
            fate = "replaced by a repair" if first in view.crashed else "it never became ready"
            note = failure_note(
                first.container, endpoint=endpoint, deployment=deployment, index=first.index
            )
            last_error = (
                f"{first.name}: {view.why.get(first.name, first.state)} ({fate}){note}\n"
                + _failure_tail(first.container)
            )
        return LiveDeployment(
            key=key,
            digest=digest,
            instance_count=count,
            scale_settings=scale,
            spec=spec,
            ready_instances=len(ready),
            provisioning_state=state,
            last_error=last_error,
            instance_type=newest.container.labels.get(f"{L}instance-type") or None,
            autoscale=self._autoscale_note(endpoint, deployment),
            repair=_deployment_repair(
                view,
                count=recorded if isinstance(recorded, int) else None,
                routes_known=not endpoint_repair,
            ),
        )

    def _with_connections(
        self,
        deployments: list[LiveDeployment],
        instances: Mapping[tuple[str, str], list[_Instance]],
    ) -> list[LiveDeployment]:
        """Deployments whose spec references connections, with what their instances were
        started with against what new ones would get now (one read of the connections).

        Unreadable connections change nothing here: the plan's warnings say so, and no
        deployment is rolled on values that cannot be read.
        """
        referencing = [d for d in deployments if d.spec is not None and secret_variables(d.spec)]
        if not referencing:
            return deployments
        try:
            now = self.connections().digests_now(d.spec for d in referencing if d.spec)
        except TargetUnavailable:
            raise
        except TargetError as exc:
            log.warning("connections_unreadable", error=str(exc))
            return deployments
        table = {d.key: current for d, current in zip(referencing, now, strict=True)}
        out = []
        for d in deployments:
            current = table.get(d.key)
            group = instances.get((d.endpoint, d.name), [])
            # Failed instances say nothing of what runs (as for the digest).
            basis = [i for i in group if not i.failed] or group
            if current is not None and basis:
                d = replace(d, connections=_resolved_connections(basis, current))
            out.append(d)
        return out

    def _autoscale_note(self, endpoint: str, deployment: str) -> str | None:
        """The autoscaler's last decision for the deployment, for status."""
        decision = self._state_json(endpoint, AUTOSCALE_FILE).get(deployment)
        return (
            str(decision["reason"]) if isinstance(decision, dict) and "reason" in decision else None
        )

    def record_autoscale(self, endpoint: str, deployment: str, decision: Mapping[str, Any]) -> None:
        """Keep the autoscaler's last decision with the endpoint's state (status shows it)."""
        decisions = self._state_json(endpoint, AUTOSCALE_FILE)
        decisions[deployment] = dict(decision)
        self._put(endpoint, {AUTOSCALE_FILE: _json_bytes(decisions)})

    def _observe_empty(
        self, endpoint: str, deployment: str, record: Mapping[str, Any]
    ) -> LiveDeployment:
        """A deployment with no instance, as its record says: nothing to wait for."""
        spec: DeploymentSpec | None = None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            spec = deployment_from_json(record["spec"])
        return LiveDeployment(
            key=ResourceKey(endpoint, deployment),
            digest=str(record.get("digest", "")),
            instance_count=0,
            scale_settings=_scale_of(record.get("scale")),
            spec=spec,
            ready_instances=0,
            provisioning_state=ProvisioningState.SUCCEEDED,
            instance_type=spec.instance_type if spec is not None else None,
        )

    # --- the endpoint's state (a volume: see state.py) ----------------------------------

    def _state_volumes(self, endpoint: str | None = None) -> dict[str, Any]:
        """The state volumes of the target's endpoints (of `endpoint` alone, when named)."""
        scope = {} if endpoint is None else {"endpoint": endpoint}
        try:
            found = self.client.volumes.list(filters=self._label_filter(role="state", **scope))
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            raise TargetUnavailable(f"Docker Engine: {exc}") from None
        return {v.attrs["Labels"][f"{L}endpoint"]: v for v in found}

    def _foreign(self, volumes: Mapping[str, Any], containers: Iterable[Any]) -> dict[str, str]:
        """Endpoints of this target that another repository made: name -> repository. The
        state volume says so; an endpoint whose volume is lost, its containers (a pass of
        the other repository would otherwise see it as its own, broken, and prune it), and
        so do they one whose volume an earlier version made with no label (Docker cannot
        add one): the containers its repository's changes made since carry it."""
        if self.repository is None:
            return {}
        owners = {name: _owner(volume) for name, volume in volumes.items()}
        by_containers: dict[str, set[str]] = defaultdict(set)
        for c in containers:
            name = c.labels.get(f"{L}endpoint", "")
            if owners.get(name) is None and (owner := c.labels.get(f"{L}repository")):
                by_containers[name].add(owner)
        for name, found in by_containers.items():
            if not any(self._ours(owner) for owner in found):
                owners[name] = min(found)
        return {
            name: owner
            for name, owner in owners.items()
            if owner is not None and not self._ours(owner)
        }

    def _check_owned(self, endpoint: str, volume: Any | None = None) -> None:
        """TargetError when another repository made the endpoint (its state volume says
        so, else its containers): its keys, logs and key rotation are that repository's."""
        if self.repository is None:
            return
        volumes = {endpoint: volume} if volume is not None else self._state_volumes(endpoint)
        recorded = endpoint in volumes and _owner(volumes[endpoint]) is not None
        containers = [] if recorded else self._containers(endpoint=endpoint)
        owner = self._foreign(volumes, containers).get(endpoint)
        if owner is not None:
            raise TargetError(
                f"endpoint {endpoint} on target {self.name} is managed by another repository "
                f"({owner}); give this repository's target another name in reconciler.yaml",
                code=ErrorCode.OWNED_ELSEWHERE,
            )

    def _ours(self, owner: str | None) -> bool:
        """Whether the repository recorded as an endpoint's maker is this one: the same
        identity, or this very checkout as it was named before it had a remote."""
        if owner is None or self.repository is None or same_repository(owner, self.repository):
            return True
        return checkout_of(owner) == self._checkout

    def _owned_labels(self, endpoint: str, role: str) -> dict[str, str]:
        """The labels of a container of the endpoint, with the repository that made it: the
        record of ownership that outlives the loss of the state volume."""
        labels = self._labels(endpoint, role)
        if self.repository is not None:
            labels[f"{L}repository"] = self.repository
        return labels

    def _check_routers(
        self, names: Iterable[str], *, routers: Mapping[str, Any], volumes: Mapping[str, Any]
    ) -> dict[str, RouterCheck]:
        """Ask each running router, on its published port, whether it answers (as callers
        reach it) and, when it can say and the keys of its endpoint are known, the digest
        of its endpoint's state files: all at once, over loopback HTTP, a few ms each."""
        asks: dict[str, tuple[int, str | None]] = {}
        for name in names:
            router, volume = routers.get(name), volumes.get(name)
            if router is None or router.status != "running" or volume is None:
                continue
            ports = _volume_ports(volume)
            if ports is None:
                continue
            if _legacy_router(router):
                continue
            mount = _mount_of(router) or {}
            secret = None
            if (
                _router_level(router) >= STATE_DIGEST_LEVEL
                and mount.get("Type") == "volume"
                and mount.get("Name") == volume.name
            ):
                # The admin secret of the files known: a router that takes it holds them,
                # unless its digest says otherwise.
                with contextlib.suppress(KeyError, ValueError):
                    known = self._state_known[name][CREDENTIALS_FILE]
                    secret = credentials_from_json(known).admin_secret
            asks[name] = (ports[0], secret)
        if not asks:
            return {}
        answers = _pass_pool().map(lambda ask: check_router(*ask), asks.values())
        return dict(zip(asks, answers, strict=True))

    def _state_handle(self, endpoint: str) -> Any | None:
        """A container that mounts the endpoint's state: its holder, else its router."""
        for role in ("state", "router"):
            for container in self._containers(role=role, endpoint=endpoint):
                return container
        return None

    def _state(self, endpoint: str) -> dict[str, bytes]:
        """The endpoint's state files (read once a pass; writes keep the copy current).

        Raises StateUnreadable when the engine cannot give them; {} when nothing holds them.
        """
        if endpoint not in self._state_cache:
            handle = self._state_handle(endpoint)
            try:
                files = read_state(handle) if handle is not None else {}
            except docker.errors.DockerException as exc:
                raise StateUnreadable(str(exc)) from None
            self._state_cache[endpoint] = self._state_known[endpoint] = files
        return self._state_cache[endpoint]

    def _read_states(self, handles: Mapping[str, Any | None]) -> None:
        """Read the state of every endpoint at once (a pass reads them all), each through
        the container the pass's listing found (its holder, else its router, as
        _state_handle chooses): no listing per endpoint, and the engine's archive reads,
        which cost tens of milliseconds each, overlap. A state that cannot be read this way
        is left out: _state reads it again on its own and says why."""
        wanted = {name: handle for name, handle in handles.items() if handle is not None}
        if not wanted:
            return

        def read(handle: Any) -> dict[str, bytes] | None:
            try:
                return read_state(handle)
            except (
                StateUnreadable,
                docker.errors.DockerException,
                requests.exceptions.ConnectionError,
            ):
                return None

        with ThreadPoolExecutor(max_workers=min(STATE_READERS, len(wanted))) as pool:
            for name, files in zip(wanted, pool.map(read, wanted.values()), strict=True):
                if files is not None:
                    self._state_cache[name] = self._state_known[name] = files

    def _state_json(self, endpoint: str, path: str) -> dict[str, Any]:
        """A JSON object of the state; {} when missing or unreadable."""
        try:
            data = json.loads(self._state(endpoint).get(path, b"{}"))
        except (StateUnreadable, ValueError, RecursionError):
            # RecursionError: nested deeper than json parses (spoiled by hand): as unreadable.
            return {}
        return data if isinstance(data, dict) else {}

    def _put(self, endpoint: str, files: Mapping[str, bytes]) -> None:
        handle = self._state_handle(endpoint)
        if handle is None:
            raise TargetError(
                f"endpoint {endpoint} has no state on target {self.name}", code=ErrorCode.NOT_FOUND
            )
        try:
            write_state(handle, files)
        except StateUnreadable as exc:
            raise TargetError(str(exc), code=ErrorCode.DOCKER_ERROR) from None
        cached = self._state_cache.get(endpoint)
        if cached is not None:
            cached.update(files)

    def _records_of(self, endpoint: str) -> dict[str, dict[str, Any]]:
        records = self._state_json(endpoint, DEPLOYMENTS_FILE)
        return {k: v for k, v in records.items() if isinstance(v, dict)}

    def _read_record(self, endpoint: str, deployment: str) -> dict[str, Any]:
        return self._records_of(endpoint).get(deployment, {})

    def _record(
        self,
        endpoint: str,
        deployment: str,
        *,
        scale: ScaleSettings,
        version: _Version | None = None,
        count: int | None = None,
    ) -> None:
        """Record what a step applied: the scale settings (labels cannot change on a
        running container, and observe prefers this record), the version, which observe
        needs for a deployment scaled to zero, and the count of instances the deployment
        keeps (observe reports it, and repairs what falls short of it)."""
        records = self._records_of(endpoint)
        before = json.dumps(records.get(deployment), sort_keys=True)
        record = records.setdefault(deployment, {})
        record["scale"] = to_json(scale)
        if count is not None:
            record["count"] = count
        if version is not None:
            record["digest"] = version.digest
            record["spec"] = json.loads(version.spec_label)
        if json.dumps(record, sort_keys=True) != before:
            # A rollout's rounds record the same each pass: written once.
            self._put(endpoint, {DEPLOYMENTS_FILE: _json_bytes(records)})

    def _forget(self, endpoint: str, deployment: str) -> None:
        records = self._records_of(endpoint)
        decisions = self._state_json(endpoint, AUTOSCALE_FILE)
        if records.pop(deployment, None) is not None or decisions.pop(deployment, None):
            self._put(
                endpoint,
                {DEPLOYMENTS_FILE: _json_bytes(records), AUTOSCALE_FILE: _json_bytes(decisions)},
            )

    def _credentials(self, endpoint: str) -> EndpointCredentials | None:
        """The endpoint's keys; None when it has none; TargetError when they are unreadable."""
        try:
            raw = self._state(endpoint).get(CREDENTIALS_FILE)
        except StateUnreadable as exc:
            raise TargetError(
                f"state of endpoint {endpoint} on target {self.name} cannot be read: {exc}",
                code=ErrorCode.STATE_UNREADABLE,
            ) from None
        if raw is None:
            return None
        try:
            return credentials_from_json(raw)
        except ValueError as exc:
            raise TargetError(
                f"keys of endpoint {endpoint} on target {self.name} are unreadable ({exc}); "
                "the next `reconcile` pass issues new ones",
                code=ErrorCode.STATE_UNREADABLE,
            ) from None

    def router_ports(self, endpoint: str) -> tuple[int, int] | None:
        """(scoring port, metrics port) on 127.0.0.1, from the state volume's labels (an
        endpoint another repository made: a TargetError, as for its keys and logs)."""
        volume = self._state_volumes(endpoint).get(endpoint)
        if volume is None:
            return None
        self._check_owned(endpoint, volume)
        return _volume_ports(volume)

    def router_metrics(self, endpoint: str) -> str:
        """The router's /metrics, read on the host port its container publishes on
        127.0.0.1 (as the autoscaler reads it)."""
        ports = self.router_ports(endpoint)
        if ports is None:
            raise TargetError(f"endpoint {endpoint} has no router on target {self.name}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{ports[1]}/metrics", timeout=ROUTER_METRICS_TIMEOUT_S
            ) as answer:
                return str(answer.read().decode(errors="replace"))
        except (urllib.error.URLError, OSError) as exc:
            raise TargetError(
                f"the router of endpoint {endpoint} did not answer on its metrics port: {exc}"
            ) from None

    def _ready(self, inst: _Instance) -> bool:
        if inst.state != "running" or inst.failed:
            return False
        if inst.health == "healthy":
            return True
        # Starting (Docker runs its first check only after a full period), or no health
        # check at all (a custom container): ask it directly.
        return self._probe(inst)

    def _probe(self, inst: _Instance) -> bool:
        where = inst.container
        if inst.probe_from_router:
            routers = self._containers(role="router", endpoint=inst.endpoint)
            if not routers:
                return False
            where = routers[0]
        try:
            result = where.exec_run(_probe_command(inst.probe_url, 2))
        except docker.errors.APIError:
            return False
        return int(result.exit_code) == 0

    # --- router configuration ----------------------------------------------------------

    def _read_router_config(self, endpoint: str) -> RouterConfig | None:
        try:
            raw = self._state(endpoint).get(ROUTER_CONFIG)
            return _parsed_config(raw) if raw is not None else None
        except (StateUnreadable, ConfigError):
            return None

    def _routed_instances(self, endpoint: str, deployment: str) -> set[str]:
        config = self._read_router_config(endpoint)
        route = config.deployment(deployment) if config else None
        return set(route.instances) if route else set()

    def _write_router_config(
        self, endpoint: str, config: RouterConfig, *, patience_s: float = 30
    ) -> Waiting | None:
        """Give the router its new config: through the admin call when it runs (it saves
        the config in its state volume itself), else into the volume, where it reads it
        when it starts. Through the admin call the change is live when this returns None:
        the router's `/-/config-digest` names the new config, which a router of several
        workers does only once every worker serves it; Waiting when it does not within
        SERVED_PATIENCE_S (the next pass sees the config in place and moves on)."""
        text = dump_config(config)
        try:
            # The router would refuse it, and a file it cannot read would leave the
            # endpoint without a config on its next start: check before writing.
            parse_config(text)
        except ConfigError as exc:
            raise TargetError(
                f"router config of {endpoint} would be invalid: {exc}",
                code=ErrorCode.INVALID_ROUTER_CONFIG,
            ) from None
        routers = self._containers(role="router", endpoint=endpoint)
        probed = any(r.readiness_probe or r.liveness_probe for r in config.deployments)
        if probed and routers and _router_level(routers[0]) < PROBING_LEVEL:
            # It would refuse the config (keys it does not know); its instances exist now,
            # so the next pass's observe sees the need and plans the repair.
            raise TargetError(
                f"the router of {endpoint} predates the readiness and liveness checks of "
                "custom containers; the next pass replaces it (repair_endpoint) and routes "
                "this deployment",
                code=ErrorCode.ROUTER_OUTDATED,
            )
        compared = config.shadow_comparison != DEFAULT_COMPARISON
        if compared and routers and _router_level(routers[0]) < SHADOW_TOLERANCE_LEVEL:
            # The same: the spec file asks for the tolerances, so the next pass repairs.
            raise TargetError(
                f"the router of {endpoint} predates the shadow comparison's tolerances; the "
                "next pass replaces it (repair_endpoint)",
                code=ErrorCode.ROUTER_OUTDATED,
            )
        creds = self._credentials(endpoint)
        if not routers or routers[0].status != "running" or creds is None:
            self._put(endpoint, {ROUTER_CONFIG: text.encode()})
            return None
        url, body, headers = config_post(
            f"http://127.0.0.1:{creds.port}", config, creds.admin_secret
        )
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        deadline = time.monotonic() + patience_s
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10):
                    break
            except urllib.error.HTTPError as exc:
                # A refusal is an answer: asking again gets the same one.
                if exc.code < 500:
                    detail = exc.read().decode(errors="replace")[:300]
                    raise TargetError(
                        f"router of {endpoint} refused its new config: {exc.code} {detail}",
                        code=ErrorCode.ROUTER_UNAVAILABLE,
                    ) from None
                problem: Exception = exc
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                problem = exc
            if time.monotonic() > deadline:
                raise TargetError(
                    f"router of {endpoint} did not take its new config: {problem}",
                    code=ErrorCode.ROUTER_UNAVAILABLE,
                )
            time.sleep(0.2)
        cached = self._state_cache.get(endpoint)
        if cached is not None:
            cached[ROUTER_CONFIG] = text.encode()
        return _await_served(endpoint, creds.port, config.digest())

    def _router_config(self, endpoint: str) -> RouterConfig:
        config = self._read_router_config(endpoint)
        if config is None:
            raise TargetError(
                f"endpoint {endpoint} has no readable router config on target {self.name}; "
                "the next pass repairs it",
                code=ErrorCode.NOT_FOUND,
            )
        return config

    def _with_route(
        self,
        config: RouterConfig,
        deployment: str,
        instances: Iterable[str],
        spec: DeploymentSpec | None,
        *,
        settings_if_new: bool = False,
    ) -> RouterConfig:
        """config with `deployment` routed to `instances`; with a spec, its request
        settings and paths too (settings_if_new: only for a route not there yet)."""
        routes = {r.name: r for r in config.deployments}
        current = routes.get(deployment)
        if spec is not None and not (settings_if_new and current is not None):
            readiness, liveness = _router_probes(spec)
            current = replace(
                route_of(spec), name=deployment, readiness_probe=readiness, liveness_probe=liveness
            )
        if current is None:
            current = DeploymentRoute(name=deployment)
        routes[deployment] = replace(current, instances=tuple(sorted(instances)))
        return replace(config, deployments=tuple(routes[n] for n in sorted(routes)))

    # --- apply -----------------------------------------------------------------------

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> Waiting | None:
        try:
            return dispatch(self, step, progress)
        except (ImageBuildError, CondaMappingError) as exc:
            tail = getattr(exc, "log_tail", "")
            raise TargetError(str(exc), code=ErrorCode.IMAGE_BUILD_FAILURE, log_tail=tail) from None
        except docker.errors.DockerException as exc:
            raise TargetError(f"Docker Engine: {exc}", code=ErrorCode.DOCKER_ERROR) from None
        except requests.exceptions.ConnectionError as exc:
            raise TargetUnavailable(f"Docker Engine: {exc}") from None

    # endpoints

    def _target_prefix(self) -> str:
        """Start of the names of everything of this target: its name, and a short digest
        of it, so that target `t` with endpoint `a-b` and target `t-a` with endpoint `b`
        never share a name (and `t` with endpoint `edge` not its edge network's)."""
        digest = hashlib.sha256(self.name.encode()).hexdigest()[:6]
        return f"rcl-{_safe_name(self.name)}-{digest}"

    def _prefix(self, endpoint: str) -> str:
        """Start of the names of an endpoint's containers, network and volume.

        Names only matter when a thing is made: everything is found again by its labels.
        """
        return f"{self._target_prefix()}-{endpoint}"

    def _labels(self, endpoint: str, role: str) -> dict[str, str]:
        return {
            MANAGED: MANAGER,
            f"{L}target": self.name,
            f"{L}endpoint": endpoint,
            f"{L}role": role,
        }

    def _endpoint_networks(self, endpoint: str) -> dict[str, Any]:
        """The endpoint's networks by role: `internal` (instances and router), and the
        target's `edge` network (routers only, for their published ports)."""
        networks = self._networks_by_endpoint(endpoint)
        return networks.get(endpoint) or networks.get("", {})

    def _networks_by_endpoint(self, only: str | None = None) -> dict[str, dict[str, Any]]:
        """Every endpoint's networks by role, the target's edge network in each (and alone
        under ""): one listing (two for `only` one endpoint: its own, and the edge). Found
        by labels: Docker's name filter matches parts of names, so the network of `a` would
        seem to exist once `a-b`'s does."""
        found: dict[str, dict[str, Any]] = defaultdict(dict)
        edge = None
        if only is None:
            listed = self.client.networks.list(filters=self._label_filter())
        else:
            listed = self.client.networks.list(
                filters=self._label_filter(endpoint=only)
            ) + self.client.networks.list(filters=self._label_filter(role="edge"))
        for network in listed:
            net_labels = network.attrs.get("Labels") or {}
            # Networks of earlier versions carry no role: they are the internal one.
            role = net_labels.get(f"{L}role", "internal")
            if role == "edge":
                edge = network
            elif f"{L}endpoint" in net_labels:
                found[net_labels[f"{L}endpoint"]].setdefault(role, network)
        if edge is not None:
            for roles in found.values():
                roles["edge"] = edge
            found[""] = {"edge": edge}
        return dict(found)

    def _reconnect_instances(self, endpoint: str) -> None:
        """Put the endpoint's instances back on its internal network, by their aliases
        (a network removed and made again by a repair has none of them on it)."""
        network = self._endpoint_networks(endpoint)["internal"]
        network.reload()
        attached = set(network.attrs.get("Containers") or {})
        for c in self._containers(role="instance", endpoint=endpoint):
            if c.id in attached:
                continue
            alias = c.labels.get(f"{L}address", "").rpartition(":")[0] or c.name
            with contextlib.suppress(docker.errors.APIError):
                network.connect(c, aliases=[alias])
                log.warning("instance_reconnected", instance=c.name, network=network.name)

    def _network(self, endpoint: str) -> str:
        """The endpoint's internal network, by id (a name may be ambiguous: Docker lets
        two networks share one)."""
        network = self._endpoint_networks(endpoint).get("internal")
        if network is None:
            raise TargetError(
                f"endpoint {endpoint} has no internal network on target {self.name}; "
                "the next pass repairs it",
                code=ErrorCode.NOT_FOUND,
            )
        return str(network.id)

    def _ensure_networks(self, endpoint: str) -> None:
        found = self._endpoint_networks(endpoint)
        if "internal" not in found:
            # Instances reach nothing outside, and nothing outside reaches them.
            self._create_network(
                self._prefix(endpoint), internal=True, labels=self._labels(endpoint, "internal")
            )
        if "edge" not in found:
            # The routers' bridge for their published ports. No traffic between the
            # containers on it (enable_icc false): a router reaches no other endpoint's.
            self._create_network(
                # `_` is in no endpoint name: no endpoint's network can be called so.
                f"{self._target_prefix()}_edge",
                options={"com.docker.network.bridge.enable_icc": "false"},
                labels={MANAGED: MANAGER, f"{L}target": self.name, f"{L}role": "edge"},
            )

    def _create_network(self, name: str, **kwargs: Any) -> Any:
        """A bridge network on a subnet of the target's network_pool (subnets.py)."""
        return create_network(
            self.client,
            name,
            pool=ipaddress.IPv4Network(self.options.network_pool),
            prefix=self.options.network_prefix,
            **kwargs,
        )

    def _create_endpoint(self, step: Step, do: CreateEndpoint, say: ProgressCallback) -> None:
        self._provision_endpoint(do.spec, say, repair=False)

    def _repair_endpoint(self, step: Step, do: RepairEndpoint, say: ProgressCallback) -> None:
        say(f"repairing endpoint {step.endpoint}: {step.reason.removeprefix('repair: ')}")
        self._provision_endpoint(do.spec, say, repair=True)

    def _provision_endpoint(
        self, spec: EndpointSpec, say: ProgressCallback, *, repair: bool
    ) -> None:
        """Make every part of the endpoint exist and work, keeping whatever still does.

        Creating and repairing are one routine: the state volume (with the router's
        ports), the container holding it, the networks, the keys, the router's config and
        the router itself are each made only when missing or broken. Keys survive anything
        but the loss of the volume; then new ones are issued, said in one line here, in the
        log and in the step's result.
        """
        endpoint = spec.name
        self._state_cache.pop(endpoint, None)
        self._state_known.pop(endpoint, None)
        legacy_router = next(
            (c for c in self._containers(role="router", endpoint=endpoint) if _legacy_router(c)),
            None,
        )
        # An endpoint of an earlier version: its keys, port and config move into the volume.
        legacy = _legacy_files(legacy_router) if legacy_router is not None else {}
        image = self._router_image_tag(say)
        volume = self._state_volumes(endpoint).get(endpoint)
        owner = _owner(volume) if volume is not None else None
        if owner is None:  # lost, never made, or unlabelled: the containers say who made them
            found = {endpoint: volume} if volume is not None else {}
            owner = self._foreign(found, self._containers(endpoint=endpoint)).get(endpoint)
        if not self._ours(owner):
            raise TargetError(
                f"endpoint {endpoint} on target {self.name} is managed by another repository "
                f"({owner}); give this repository's target another name in reconciler.yaml",
                code=ErrorCode.OWNED_ELSEWHERE,
            )
        # Keys made for an endpoint that had some (a repair, a volume or an old layout)
        # replace lost ones: that is said loudly. A new endpoint's are just generated.
        had_state = repair or volume is not None or bool(legacy)
        if volume is None:
            volume = self._create_state_volume(endpoint, legacy, legacy_router)
        ports = _volume_ports(volume)
        assert ports is not None
        self._ensure_holder(endpoint, image, volume)
        self._ensure_networks(endpoint)
        try:
            files = dict(self._state(endpoint))
        except StateUnreadable as exc:
            raise TargetError(str(exc), code=ErrorCode.STATE_UNREADABLE) from None
        for path, content in legacy.items():
            files.setdefault(path, content)
        try:
            creds: EndpointCredentials | None = credentials_from_json(files[CREDENTIALS_FILE])
            lost = None
        except KeyError:
            creds, lost = None, "its keys were lost"
        except ValueError as exc:
            creds, lost = None, f"its keys were unreadable ({exc})"
        if creds is None:
            creds = new_credentials(port=ports[0], metrics_port=ports[1])
            if had_state:
                log.warning("keys_reissued", endpoint=endpoint, target=self.name, reason=lost)
                notice = (
                    f"NEW KEYS issued for {endpoint}: {lost}; callers need the new ones "
                    f"(`reconcile credentials {endpoint}`)"
                )
                say(notice)
                notes = self._state_json(endpoint, NOTES_FILE)
                notes["keys"] = notice
                self._put(endpoint, {NOTES_FILE: _json_bytes(notes)})
            else:
                say(f"keys generated for {endpoint} (kept in its state volume, mode 0600)")
        creds = replace(creds, port=ports[0], metrics_port=ports[1])
        try:
            config = parse_config(files[ROUTER_CONFIG])
        except (KeyError, ConfigError):
            # Lost or spoiled in the volume: the router that serves still holds it.
            config = (
                self._config_served(creds, ports[0]) if lost is None else None
            ) or RouterConfig(endpoint=endpoint)
        config = self._credentials_config(_asked_of_router(config, spec), creds)
        router = next(iter(self._containers(role="router", endpoint=endpoint)), None)
        internal = self._endpoint_networks(endpoint)["internal"]
        old_layout = router is not None and _legacy_router(router)
        outdated = (
            router is not None
            and not old_layout
            and (
                _outdated_router(router, self._instances_of(endpoint))
                or _untolerant_router(router, spec)
            )
        )
        if router is not None and not old_layout and internal.name not in _attached(router):
            # Its internal network made again: the router joins it where it runs.
            internal.connect(router)
            router.reload()
        # A router that runs is kept (no request lost), unless its keys were issued anew:
        # it answers its admin call only to the admin secret that was lost, so it starts
        # again from its config, with the new keys' hashes.
        serving = (
            lost is None
            and router is not None
            and not outdated
            and not _legacy_router(router)
            and self._current_layout(router, volume)
            and router.status == "running"
            and _port_problem(ports[0]) is None
        )
        updates = {
            CREDENTIALS_FILE: credentials_to_json(creds),
            ENDPOINT_FILE: json.dumps(to_json(spec)).encode(),
        }
        for path in (DEPLOYMENTS_FILE, AUTOSCALE_FILE):
            if path in legacy and path not in self._state(endpoint):
                updates[path] = legacy[path]
        if not serving:
            updates[ROUTER_CONFIG] = dump_config(config).encode()
        self._put(endpoint, updates)
        if serving:
            if self._read_router_config(endpoint) != config:
                self._write_router_config(endpoint, config)
        elif (
            router is not None
            and not outdated
            and not _legacy_router(router)
            and self._current_layout(router, volume)
        ):
            # Stopped, or up behind a dead port proxy: a restart (a new proxy with it) is
            # quicker than a new container, and keeps everything else as it is.
            try:
                router.restart(timeout=1)
                self._await_router(router, endpoint, ports[0])
                say(f"router of {endpoint} restarted on 127.0.0.1:{ports[0]}")
            except (TargetError, docker.errors.APIError) as exc:
                log.warning("router_restart_failed", endpoint=endpoint, error=str(exc))
                self._start_router(endpoint, image, volume, ports, say)
        else:
            self._start_router(endpoint, image, volume, ports, say)
            if legacy_router is not None:
                say(f"endpoint {endpoint}: state moved into volume {volume.name}")
        self._reconnect_instances(endpoint)
        # Instances that run but that a lost or rebuilt config does not route are routed
        # again.
        self._route_ready(endpoint)

    def _config_served(self, creds: EndpointCredentials, port: int) -> RouterConfig | None:
        """The config a running router serves, asked through its admin call (which shows
        everything but the secrets, which come from the keys); None when it cannot say."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/-/config",
            headers={"Authorization": f"Bearer {creds.admin_secret}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                doc = json.loads(answer.read())
            doc.pop("digest", None)
            doc["key_hashes"] = [hash_key(creds.primary_key), hash_key(creds.secondary_key)]
            doc["token_secret"] = creds.token_secret
            return self._credentials_config(config_from_dict(doc), creds)
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            return None

    def _create_state_volume(
        self, endpoint: str, legacy: Mapping[str, bytes], legacy_router: Any | None
    ) -> Any:
        """A new state volume, labelled with the router's ports: those of the endpoint's
        earlier router when it had one (its scoring URI stays), else free ones."""
        ports: tuple[int, int] | None = None
        with contextlib.suppress(KeyError, ValueError):
            old = credentials_from_json(legacy[CREDENTIALS_FILE])
            ports = (old.port, old.metrics_port)
        if ports is None and legacy_router is not None:
            ports = _router_ports(legacy_router)
        if ports is None:
            ports = self._free_ports()
        labels = {
            **self._labels(endpoint, "state"),
            f"{L}port": str(ports[0]),
            f"{L}metrics-port": str(ports[1]),
        }
        if self.repository is not None:
            labels[f"{L}repository"] = self.repository
        name = f"{self._prefix(endpoint)}-state"
        # Docker hands back an existing volume of the name as if it made it.
        volume = self.client.volumes.create(name, labels=labels)
        found = volume.attrs.get("Labels") or {}
        if any(found.get(k) != v for k, v in self._labels(endpoint, "state").items()):
            raise TargetError(
                f"a volume named {name} exists that is not the state of endpoint {endpoint} "
                f"of target {self.name} (labels {found}); remove or rename it",
                code=ErrorCode.NAME_CONFLICT,
            )
        return volume

    def _ensure_holder(self, endpoint: str, image: str, volume: Any) -> None:
        if self._containers(role="state", endpoint=endpoint):
            return
        # Never started: a handle on the volume for Docker's archive API, whatever state
        # the router is in, and a user of the volume, so Docker will not remove it.
        self.client.containers.create(
            image,
            command=["true"],
            name=f"{self._prefix(endpoint)}-state",
            labels=self._owned_labels(endpoint, "state"),
            volumes={volume.name: {"bind": STATE_MOUNT, "mode": "rw"}},
            network_mode="none",
        )

    def _credentials_config(self, config: RouterConfig, creds: EndpointCredentials) -> RouterConfig:
        # The token secret is always part of the config (the router ignores it in key mode),
        # so switching auth_mode either way needs nothing but the mode.
        return replace(
            config,
            key_hashes=(hash_key(creds.primary_key), hash_key(creds.secondary_key)),
            token_secret=creds.token_secret_bytes,
            admin_secret_hash=hash_key(creds.admin_secret),
            port=ROUTER_PORT,
            metrics_port=ROUTER_METRICS_PORT,
            host="0.0.0.0",
        )

    def _update_endpoint(self, step: Step, do: UpdateEndpoint, say: ProgressCallback) -> None:
        spec = do.spec
        self._put(spec.name, {ENDPOINT_FILE: json.dumps(to_json(spec)).encode()})
        config = self._router_config(spec.name)
        creds = self._credentials(spec.name)
        if creds is None:
            raise TargetError(f"endpoint {spec.name} has no keys; the next pass repairs it")
        wanted = self._credentials_config(_asked_of_router(config, spec), creds)
        router = next(iter(self._containers(role="router", endpoint=spec.name)), None)
        if router is not None and not _legacy_router(router) and _untolerant_router(router, spec):
            # It would refuse the tolerances: replaced first (its keys and port kept), with
            # the config it is given in its state volume.
            say(
                f"router of {spec.name} predates the shadow comparison's tolerances: "
                "replaced by the current router"
            )
            self._provision_endpoint(spec, say, repair=True)
        elif wanted != config:
            self._write_router_config(spec.name, wanted)
        if config.auth_mode != spec.auth_mode:
            say(f"auth_mode of {spec.name} is now {spec.auth_mode}")

    def _delete_endpoint(self, step: Step, do: DeleteEndpoint, say: ProgressCallback) -> None:
        endpoint = step.endpoint
        for c in self._containers(endpoint=endpoint):
            c.remove(force=True)
        for role, network in self._endpoint_networks(endpoint).items():
            network.reload()
            if role == "edge" and network.attrs.get("Containers"):
                continue  # other endpoints' routers are still on it
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
        volume = self._state_volumes(endpoint).get(endpoint)
        if volume is not None:
            with contextlib.suppress(docker.errors.NotFound):
                volume.remove(force=True)
        self._state_cache.pop(endpoint, None)
        say(f"endpoint {endpoint}: router, networks, keys and state removed")

    def _free_ports(self) -> tuple[int, int]:
        """Two ports of the range that no container on the engine publishes, that no
        endpoint's state (of any target, running or not) holds, and that nothing listens on."""
        used: set[int] = set()
        for container in self.client.containers.list(all=True, ignore_removed=True):
            bindings = container.attrs.get("HostConfig", {}).get("PortBindings") or {}
            for binding in bindings.values():
                for entry in binding or []:
                    with contextlib.suppress(TypeError, ValueError):
                        used.add(int(entry.get("HostPort") or 0))
        for volume in self.client.volumes.list(filters={"label": f"{MANAGED}={MANAGER}"}):
            ports = _volume_ports(volume)
            if ports is not None:
                used.update(ports)
        low, high = self.options.router_port_range
        found = []
        for port in range(low, high + 1):
            if port in used:
                continue
            with socket.socket() as s:
                # As Docker binds: a port whose old connections linger in TIME_WAIT is free.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            found.append(port)
            if len(found) == 2:
                return found[0], found[1]
        raise TargetError(f"no free port in {low}-{high} for a router", code=ErrorCode.NO_FREE_PORT)

    def _start_router(
        self,
        endpoint: str,
        image: str,
        volume: Any,
        ports: tuple[int, int],
        say: ProgressCallback,
    ) -> None:
        """A new router container (any old one goes first: it holds the port)."""
        for c in self._containers(role="router", endpoint=endpoint):
            c.remove(force=True)
        networks = self._endpoint_networks(endpoint)
        container = self.client.containers.create(
            image,
            name=f"{self._prefix(endpoint)}-router",
            labels=self._owned_labels(endpoint, "router"),
            # Writable: a change made through the router's admin call is saved there too,
            # so observe sees it (drift) and a restarted router keeps it.
            volumes={volume.name: {"bind": STATE_MOUNT, "mode": "rw"}},
            ports={
                f"{ROUTER_PORT}/tcp": ("127.0.0.1", ports[0]),
                f"{ROUTER_METRICS_PORT}/tcp": ("127.0.0.1", ports[1]),
            },
            network=str(networks["edge"].id),
            user="root",  # reads the 0600 files of the state volume
            restart_policy={"Name": "unless-stopped"},
            detach=True,
        )
        networks["internal"].connect(container)
        container.start()
        say(f"router of {endpoint} on 127.0.0.1:{ports[0]}")
        self._await_router(container, endpoint, ports[0])

    def _current_layout(self, router: Any, volume: Any) -> bool:
        """Whether a router container is of this version's layout: the state volume
        mounted, on the endpoint's internal network and the target's edge network."""
        mount = _mount_of(router)
        if mount is None or mount.get("Type") != "volume" or mount.get("Name") != volume.name:
            return False
        attached = set((router.attrs.get("NetworkSettings") or {}).get("Networks") or {})
        endpoint = router.labels.get(f"{L}endpoint", "")
        return {str(n.name) for n in self._endpoint_networks(endpoint).values()} <= attached

    def _await_router(self, container: Any, endpoint: str, port: int) -> None:
        """Return once the router answers on its published port, as callers reach it."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _port_problem(port) is None:
                return
            container.reload()
            if container.status == "exited":
                break
            time.sleep(0.1)
        raise TargetError(
            f"router of {endpoint} did not become ready",
            code=ErrorCode.ROUTER_UNAVAILABLE,
            log_tail=_tail(container),
        )

    def _router_image_tag(self, say: ProgressCallback) -> str:
        if self._router_image is None:
            base = self._base_image(say)
            self._router_image = ensure_router_image(
                self.client,
                base_image=base,
                wheel_cache=self.options.wheel_cache,
                progress=_progress(say),
                labels=build_labels(self.name),
            )
        return self._router_image

    def _base_image(self, say: ProgressCallback) -> str:
        return ensure_base_image(self.client, self.options.base_image, progress=_progress(say))

    # deployments

    def _build(self, spec: DeploymentSpec, say: ProgressCallback) -> str:
        # A build killed half-way (SIGKILL) left its container: builds of this target run
        # only in a step under its writer lock, so every build container found is stale.
        remove_stale_build_containers(self.client, self.name)
        base = self._base_image(say)
        env_image = build_environment_image(
            self.client,
            spec.environment,
            repo_root=self.repo_root,
            base_image=base,
            wheel_cache=self.options.wheel_cache,
            progress=_progress(say),
            image_map=self.options.image_map,
            labels=build_labels(self.name),
            # Triton serves a no-code triton_model: no Azure ML inference server in its image.
            inference_server=not serves_triton(spec),
        )
        tag = build_deployment_image(
            self.client,
            spec,
            env_image=env_image,
            repo_root=self.repo_root,
            progress=_progress(say),
            labels={
                **build_labels(self.name),
                **built_for_labels(spec, repository=self.repository),
            },
        )
        # The image just built or reused stays, even an old one reused by a rollback.
        self._collect_images(say, protect=(tag,))
        return tag

    def collect_images(
        self, *, dry_run: bool = False, keep: int | None = None, protect: tuple[str, ...] = ()
    ) -> Collected:
        """Remove the images this target built that are out of retention (imagegc.py)."""
        try:
            return collect_images(
                self.client,
                target=self.name,
                repository=self.repository,
                checkout=self._checkout,
                keep=self.options.image_retention if keep is None else keep,
                dry_run=dry_run,
                protect=(self.options.base_image, *protect),
            )
        except requests.exceptions.ConnectionError as exc:
            raise TargetUnavailable(f"Docker Engine: {exc}") from None
        except docker.errors.DockerException as exc:
            raise TargetError(f"Docker Engine: {exc}", code=ErrorCode.DOCKER_ERROR) from None

    def _collect_images(self, say: ProgressCallback, *, protect: tuple[str, ...] = ()) -> None:
        # Best effort: a step never fails because an old image could not be removed.
        try:
            done = self.collect_images(protect=protect)
        except TargetError as exc:
            log.warning("images_not_collected", error=str(exc))
            return
        if done.removed:
            say(f"{len(done.removed)} unused image(s) removed ({done.freed_bytes / 1e6:.0f} MB)")

    def _instances(self, endpoint: str, deployment: str) -> list[_Instance]:
        return sorted(
            (
                _instance(c)
                for c in self._containers(endpoint=endpoint, deployment=deployment, role="instance")
            ),
            key=lambda i: i.index,
        )

    def _desired_version(self, spec: DeploymentSpec, say: ProgressCallback) -> _Version:
        return _Version(
            spec=spec,
            digest=spec.digest,
            spec_label=json.dumps(to_json(spec), sort_keys=True),
            image=self._build(spec, say),
        )

    @staticmethod
    def _running_version(inst: _Instance) -> _Version:
        """The version an instance runs, read back from its labels and image."""
        label = str(inst.container.labels[f"{L}spec"])
        return _Version(
            spec=deployment_from_json(json.loads(label)),
            digest=inst.digest,
            spec_label=label,
            image=str(inst.container.image.id),
        )

    def _start_instances(
        self,
        version: _Version,
        *,
        count: int,
        first_index: int,
        scale: ScaleSettings,
        say: ProgressCallback,
        resolution: tuple[dict[str, str], dict[str, str]] | None = None,
    ) -> list[_Instance]:
        """Start `count` instances and return at once: they join the router once ready
        (a later step, from what observe shows), or are found failed (crashed, or not ready
        within the readiness probe's budget: `reconciler.ready-within` on each)."""
        spec = version.spec
        network = self._network(spec.endpoint_name)
        port, probe_url, probe_from_router = _serving(spec)
        # Secret references resolved now (connections.py), unless the caller did:
        # MissingConnection fails this deployment only, before any container exists.
        resolved, digests = (
            resolution if resolution is not None else self.connections().resolve(spec)
        )
        budget = self._ready_budget(spec)
        started: list[_Instance] = []
        try:
            for index in range(first_index, first_index + count):
                # The router reaches an instance by a short alias on the endpoint's network:
                # a container name with the target and endpoint in it may exceed the 63
                # characters a DNS label can have.
                alias = _alias(spec.name, version.digest, index)
                labels = {
                    MANAGED: MANAGER,
                    f"{L}target": self.name,
                    f"{L}role": "instance",
                    f"{L}endpoint": spec.endpoint_name,
                    f"{L}deployment": spec.name,
                    f"{L}digest": version.digest,
                    f"{L}index": str(index),
                    f"{L}address": f"{alias}:{port}",
                    f"{L}probe": probe_url.replace("{alias}", alias),
                    f"{L}probe-from": "router" if probe_from_router else "instance",
                    f"{L}instance-type": spec.instance_type or "",
                    f"{L}scale": json.dumps(to_json(scale)),
                    f"{L}spec": version.spec_label,
                    f"{L}ready-within": str(int(budget)),
                }
                if self.repository is not None:
                    labels[f"{L}repository"] = self.repository
                if digests:
                    # Keyed digests of the values, never the values (connections.py).
                    labels[DIGESTS_LABEL] = json.dumps(digests, sort_keys=True)
                container = self.client.containers.create(
                    version.image,
                    name=f"{self._prefix(spec.endpoint_name)}-{alias}",
                    labels=labels,
                    environment=_environment(spec, resolved),
                    network=network,
                    networking_config={
                        network: self.client.api.create_endpoint_config(aliases=[alias])
                    },
                    healthcheck=_healthcheck(spec),
                    restart_policy={"Name": "unless-stopped"},
                    **self._limits(spec),
                )
                started.append(_instance(container))
                container.start()
        except Exception:
            # A batch half made serves nothing: what was made of it goes.
            self._remove(started)
            raise
        say(f"{count} instance(s) of {spec.key} started; routed once ready")
        return started

    def _ready_budget(self, spec: DeploymentSpec) -> float:
        """Seconds an instance has to become ready: the readiness probe's initial delay and
        failure threshold (as Azure ML counts them), at most the target's ready_timeout_s."""
        probe = spec.readiness_probe
        return min(
            self.options.ready_timeout_s,
            probe.initial_delay + probe.period * probe.failure_threshold + 30,
        )

    def _limits(self, spec: DeploymentSpec) -> dict[str, Any]:
        cores, memory = resource_limits(spec.resources)
        if cores is not None or memory is not None:
            # Kubernetes resources, written for this deployment: applied as they are.
            given: dict[str, Any] = {}
            if cores is not None:
                given["nano_cpus"] = max(int(cores * 1e9), int(0.01e9))
            if memory is not None:
                given["mem_limit"] = max(memory, 6 * 1024**2)
            return given
        kind = self.instance_types.get(spec.instance_type or "")
        if kind is None:
            return {}
        scale = self.options.resource_scale
        limits: dict[str, Any] = {
            "nano_cpus": max(int(kind.cores * scale * 1e9), int(0.1e9)),
            "mem_limit": max(int(kind.memory_gb * scale * 1024**3), 256 * 1024**2),
        }
        if kind.gpus:
            limits["device_requests"] = [
                docker.types.DeviceRequest(count=kind.gpus, capabilities=[["gpu"]])
            ]
        return limits

    def _route_instances(
        self,
        endpoint: str,
        deployment: str,
        instances: Iterable[_Instance],
        spec: DeploymentSpec | None,
    ) -> None:
        config = self._router_config(endpoint)
        addresses = [i.address for i in instances]
        routed = self._with_route(config, deployment, addresses, spec)
        if routed != config:
            self._write_router_config(endpoint, routed)

    def _remove(self, instances: Iterable[_Instance]) -> None:
        for inst in instances:
            with contextlib.suppress(docker.errors.NotFound):
                inst.container.remove(force=True)

    def _retire(
        self,
        endpoint: str,
        deployment: str,
        *,
        keep: list[_Instance],
        drop: list[_Instance],
        spec: DeploymentSpec | None,
        routed: set[str],
        spec_if_new: DeploymentSpec | None = None,
    ) -> None:
        """Route `keep` only, let requests in flight to `drop` finish, then remove them.

        spec: the request settings and paths of the route; spec_if_new: those for a route
        the router does not have yet (else its own stay)."""
        config = self._router_config(endpoint)
        if spec is None and config.deployment(deployment) is None:
            spec = spec_if_new
        changed = self._with_route(config, deployment, [i.address for i in keep], spec)
        if changed != config:
            self._write_router_config(endpoint, changed)
        if drop:
            if any(i.address in routed for i in drop):
                # The router sends nothing new to them from now on; what it sent already
                # has drain_s to finish.
                time.sleep(self.options.drain_s)
            self._remove(drop)

    # A deployment's instances as one view: what serves, what failed, what the router has.

    def _view(self, endpoint: str, deployment: str, group: list[_Instance]) -> _Group:
        """The instances of a deployment sorted into alive, crashed (failed after they
        served) and dead starts (failed before they ever served: crashed while starting,
        or not ready within their budget), with the router's addresses and readiness."""
        routed = self._routed_instances(endpoint, deployment)
        # Why instances a step stopped had failed (a stopped one only shows "exited").
        stopped = self._read_record(endpoint, deployment).get("stopped")
        known = stopped if isinstance(stopped, dict) else {}
        now = time.time()
        alive: list[_Instance] = []
        crashed: list[_Instance] = []
        dead: list[_Instance] = []
        ready: set[str] = set()
        why: dict[str, str] = {}
        for inst in group:
            was_routed = inst.address in routed
            if inst.state == "created":
                # Made and never started: its step was stopped in between (a reconciler
                # killed). Nothing can be known of it: it is replaced.
                why[inst.name] = "never started (its step was stopped half-way)"
                crashed.append(inst)
                continue
            if inst.failed:
                why[inst.name] = str(
                    known.get(inst.name)
                    or (
                        f"{inst.state}" + (f", {inst.restarts} restart(s)" if inst.restarts else "")
                        # Docker marks a stopped container unhealthy too: that it exited
                        # is what happened to it, not a failed probe.
                        if inst.health != "unhealthy" or inst.state != "running"
                        else "its readiness probe failed"
                    )
                )
                (crashed if was_routed else dead).append(inst)
                continue
            if self._ready(inst):
                ready.add(inst.name)
                alive.append(inst)
                continue
            late = inst.started_at is not None and inst.ready_within is not None
            if not was_routed and late and now - inst.started_at > inst.ready_within:  # type: ignore[operator]
                why[inst.name] = f"not ready after {inst.ready_within:.0f} s"
                dead.append(inst)
                continue
            alive.append(inst)
        not_live = self._liveness_failed(endpoint, alive)
        return _Group(alive, crashed, dead, routed, ready, why, not_live)

    def _version_of(self, insts: Iterable[_Instance]) -> _Version | None:
        """The version the newest of these instances runs (labels and image)."""
        for inst in sorted(insts, key=lambda i: i.created, reverse=True):
            with contextlib.suppress(KeyError, ValueError, TypeError):
                return self._running_version(inst)
        return None

    def _stop_dead(self, endpoint: str, deployment: str, view: _Group) -> None:
        """Instances that failed to start are stopped, not removed: a crash loop would only
        burn CPU, and their logs stay readable (`reconcile logs`). Why each failed is kept
        in the deployment's record: stopped, it only shows "exited"."""
        halted = [i for i in view.dead if i.state in ("running", "restarting")]
        if not halted:
            return
        for inst in halted:
            with contextlib.suppress(docker.errors.APIError):
                inst.container.stop(timeout=1)
        records = self._records_of(endpoint)
        record = records.setdefault(deployment, {})
        present = {i.name for i in view.alive + view.crashed + view.dead}
        reasons = {k: v for k, v in (record.get("stopped") or {}).items() if k in present}
        reasons.update({i.name: view.why.get(i.name, i.state) for i in halted})
        record["stopped"] = reasons
        self._put(endpoint, {DEPLOYMENTS_FILE: _json_bytes(records)})

    def _dead_start_error(self, spec: DeploymentSpec, group: _Group) -> TargetError:
        first = group.dead[0]
        reason = group.why.get(first.name, first.state)
        code = (
            ErrorCode.TIMEOUT
            if reason.startswith("not ready after")
            else ErrorCode.DEPLOYMENT_NOT_READY
        )
        note = failure_note(
            first.container, endpoint=spec.endpoint_name, deployment=spec.name, index=first.index
        )
        return TargetError(
            f"instance {first.name} of {spec.key} did not start ({reason}; init() failed, "
            f"the server crashed, or readiness was never met){note}; the instances that "
            "served keep serving. Commit a change of the deployment to try again",
            code=code,
            log_tail=_failure_tail(first.container),
        )

    def _create_deployment(
        self, step: Step, do: CreateDeployment, say: ProgressCallback
    ) -> Waiting | None:
        spec = do.spec
        self._router_config(spec.endpoint_name)  # the endpoint must exist
        # Left-overs of an earlier attempt go first: they are not serving.
        self._remove(self._instances(spec.endpoint_name, spec.name))
        version = self._desired_version(spec, say)
        scale = do.scale_settings
        # A missing connection fails the creation before anything of it exists.
        resolution = self.connections().resolve(spec)
        # Recorded before anything starts: a reconciler killed now leaves a deployment
        # whose missing instances the next pass sees, and starts (repair_deployment).
        self._record(
            step.endpoint, spec.name, scale=scale, version=version, count=do.instance_count
        )
        self._start_instances(
            version,
            count=do.instance_count,
            first_index=0,
            scale=scale,
            say=say,
            resolution=resolution,
        )
        # Its route exists from the start (request settings, paths); instances join it
        # once ready. Made after they started: a router too old for the route's checks
        # refuses it (RouterOutdated), and observe sees the need for its repair from the
        # instances that exist.
        self._route_instances(spec.endpoint_name, spec.name, [], spec)
        if not do.instance_count:
            return None
        return Waiting(f"{spec.key} healthy (0/{do.instance_count} ready)")

    def _scale_deployment(
        self, step: Step, do: ScaleDeployment, say: ProgressCallback
    ) -> Waiting | None:
        """Add or remove instances of what runs now; added ones join the router once ready.

        Scaling comes before an update of the same deployment (SPEC-REFERENCE.md), so
        instances added to a deployment whose running version is not the declared one are
        of the running version; the update that follows replaces them with the rest.
        Instances that failed to start hold their places (a version that cannot start is
        not started again and again): scaling counts them, and removes them first.
        """
        spec = do.spec
        group = self._instances(step.endpoint, spec.name)
        view = self._view(step.endpoint, spec.name, group)
        want = do.instance_count
        scale = do.scale_settings
        slots = view.alive + view.dead
        if want > len(slots):
            running = [i for i in view.alive if i.digest != spec.digest]
            version: _Version | None = None
            if running and len(running) == len(view.alive):
                # Containers of an older reconciler may lack a readable spec label: then
                # the new instances are of the declared version (the update follows).
                version = self._version_of(running)
            if version is None:
                version = self._desired_version(spec, say)
            if any(i.digest == version.digest for i in view.dead):
                raise self._dead_start_error(spec, view)
            self._record(step.endpoint, spec.name, scale=scale, version=version, count=want)
            self._start_instances(
                version,
                count=want - len(slots),
                # Past every index in use, failed ones included: names and aliases stay
                # unique while those are still there.
                first_index=max((i.index for i in group), default=-1) + 1,
                scale=scale,
                say=say,
            )
            return Waiting(f"{spec.key} healthy ({len(view.ready)}/{want} ready)")
        # The dead go first; of the rest, the declared version (with the connections'
        # values of now) stays longest, then the oldest instances.
        current = self._values_now(spec)
        ranked = sorted(
            view.alive,
            key=lambda i: (i.digest != spec.digest or not i.started_with(current), i.index),
        )
        keep = ranked[:want] + view.dead[: max(0, want - len(ranked))]
        drop = [i for i in slots if i not in keep]
        self._record(step.endpoint, spec.name, scale=scale, count=want)
        routed_keep = [i for i in keep if i in view.alive and view.serves(i)]
        self._retire(
            step.endpoint,
            spec.name,
            keep=routed_keep,
            drop=drop + view.crashed,
            spec=None,
            routed=view.routed,
        )
        if drop:
            say(f"{len(drop)} instance(s) of {spec.key} removed")
        starting = [i for i in keep if i in view.alive and i.name not in view.ready]
        if starting:
            return Waiting(f"{spec.key} healthy ({len(routed_keep)}/{want} ready)")
        return None

    def _update_deployment(
        self, step: Step, do: UpdateDeployment, say: ProgressCallback
    ) -> Waiting | None:
        """One round of a rolling update, from what runs: new instances that are ready join
        the router, old ones leave only as far as ready new ones make up for them (the
        ready count never falls below the declared one, or below what ran when fewer ran),
        and the next batch of 20% of the count (at least one) starts. Done when only ready,
        routed instances of the new version are left; else in progress, and the next pass
        (the plan still holds the update: the versions differ) does the next round.

        New instances that failed to start fail the step with their log (they are
        stopped and kept for `reconcile logs`); the old ones keep serving. Failed ones of
        another version (an earlier broken rollout) simply go.
        """
        spec = do.spec
        group = self._instances(step.endpoint, spec.name)
        view = self._view(step.endpoint, spec.name, group)
        # An instance is of the declared version when it runs the spec with the values
        # its connections hold now: a changed secret makes every running one old.
        current = self._values_now(spec)
        version = self._desired_version(spec, say)
        target = do.instance_count
        scale = do.scale_settings
        self._record(step.endpoint, spec.name, scale=scale, version=version, count=target)
        dead_new = [i for i in view.dead if i.digest == spec.digest]
        if dead_new:
            self._stop_dead(step.endpoint, spec.name, view)
            raise self._dead_start_error(spec, replace(view, dead=dead_new))
        gone = view.crashed + view.dead  # failed instances of other versions
        new = [i for i in view.alive if i.digest == spec.digest and i.started_with(current)]
        old = [i for i in view.alive if i not in new]
        ready_new = [i for i in new if i.name in view.ready]
        # More of the new version than declared (a rollout that ran at a higher count):
        # the ones not ready go first, then the newest.
        extra = sorted(new, key=lambda i: (i.name in view.ready, -i.index))[
            : max(0, len(new) - target)
        ]
        new = [i for i in new if i not in extra]
        ready_new = [i for i in ready_new if i not in extra]
        # Old instances leave as ready new ones make up for them: those not serving first.
        surplus = max(0, len(ready_new) + len(old) - target)
        old_order = sorted(old, key=lambda i: (i.name in view.ready, i.index))
        retire, old = old_order[:surplus], old_order[surplus:]
        serving = [i for i in old if view.serves(i)] + ready_new
        self._retire(
            step.endpoint,
            spec.name,
            keep=serving,
            drop=retire + extra + gone,
            spec=spec,
            routed=view.routed,
        )
        batch = max(1, int(target * 0.2))
        starting = len(new) - len(ready_new)
        count = min(target - len(new), max(0, batch - starting))
        if count > 0:
            self._start_instances(
                version,
                count=count,
                first_index=max((i.index for i in group), default=-1) + 1,
                scale=scale,
                say=say,
            )
        if not old and len(ready_new) == target:
            say(f"{spec.key}: {target}/{target} instances updated")
            return None
        say(f"{spec.key}: {len(ready_new)}/{target} instances of the new version ready")
        return Waiting(f"{spec.key}: {len(ready_new)}/{target} new instances ready")

    def _repair_deployment(
        self, step: Step, do: RepairDeployment, say: ProgressCallback
    ) -> Waiting | None:
        """Bring what runs in line with the deployment's record, as observe found it out of
        line: crashed instances are replaced (by instances of the version that serves),
        those that failed to start and still restart are stopped (their logs kept), the
        router drops what is gone and takes instances that became ready, missing
        instances start and surplus ones go. Never waits: new instances join the router
        by the next repair, once ready."""
        endpoint, name = step.endpoint, do.name
        group = self._instances(endpoint, name)
        view = self._view(endpoint, name, group)
        record = self._read_record(endpoint, name)
        count = record.get("count")
        self._stop_dead(endpoint, name, view)
        for inst in view.alive:
            if inst.name in view.not_live:
                # A custom container's liveness route failed: restarted in place (as
                # Kubernetes does); it serves again once its readiness route answers.
                log.warning(
                    "instance_restarted",
                    instance=inst.name,
                    reason="liveness",
                    failures=view.not_live[inst.name],
                )
                inst.container.restart(timeout=2)
        serving = self._version_of(view.alive) or self._version_of(group)
        # What the router has and still runs stays; with one version running, what
        # became ready joins it (two versions: the update's rounds decide).
        keep = [i for i in view.alive if i.address in view.routed]
        drop: list[_Instance] = list(view.crashed)
        if _versions(view.alive) <= 1:
            keep += [i for i in view.alive if view.serves(i) and i not in keep]
        started = 0
        if isinstance(count, int) and _versions(view.alive + view.dead) <= 1:
            slots = view.alive + view.dead
            if len(slots) > count:
                order = view.dead + sorted(
                    view.alive, key=lambda i: (i.name in view.ready, -i.index)
                )
                surplus = order[: len(slots) - count]
                drop += surplus
                keep = [i for i in keep if i not in surplus]
            elif len(slots) < count and serving is not None:
                started = count - len(slots)
        self._retire(
            endpoint,
            name,
            keep=keep,
            drop=drop,
            spec=None,
            routed=view.routed,
            spec_if_new=serving.spec if serving is not None else None,
        )
        if started and serving is not None:
            self._start_instances(
                serving,
                count=started,
                first_index=max((i.index for i in group), default=-1) + 1,
                scale=_scale_of(record.get("scale")),
                say=say,
            )
        if drop:
            say(f"{len(drop)} instance(s) of {endpoint}/{name} removed")
        waiting = started + len([i for i in view.alive if i.name not in view.ready])
        if waiting:
            total = count if isinstance(count, int) else len(view.alive)
            ready = len([i for i in keep if i.name in view.ready])
            return Waiting(f"{endpoint}/{name} healthy ({ready}/{total} ready)")
        return None

    def _values_now(self, spec: DeploymentSpec) -> dict[str, str | None]:
        """Per connection the spec references, the keyed digest of its values now (None
        for a missing one); empty when the connections cannot be read: then no instance
        counts as old for their sake (starting new ones fails, naming why)."""
        try:
            (current,) = self.connections().digests_now([spec])
        except TargetUnavailable:
            raise
        except TargetError:
            return {}
        return current

    def _delete_deployment(self, step: Step, do: DeleteDeployment, say: ProgressCallback) -> None:
        name = do.name
        config = self._read_router_config(step.endpoint)
        if config is not None:
            if weight_of(config.traffic, name) or weight_of(config.mirror_traffic, name):
                # The plan moves traffic first (DESIGN.md rule 5); never drop requests
                # because a plan was made against a stale view.
                raise TargetError(
                    f"deployment {step.endpoint}/{name} still has traffic; "
                    "it is deleted once its traffic has moved",
                    code=ErrorCode.DEPLOYMENT_HAS_TRAFFIC,
                )
            if config.deployment(name) is not None:
                routes = tuple(r for r in config.deployments if r.name != name)
                self._write_router_config(step.endpoint, replace(config, deployments=routes))
                time.sleep(self.options.drain_s)
        self._remove(self._instances(step.endpoint, name))
        self._forget(step.endpoint, name)
        say(f"deployment {step.endpoint}/{name} removed")
        self._collect_images(say)

    def _set_traffic(self, step: Step, do: SetTraffic, say: ProgressCallback) -> Waiting | None:
        config = self._router_config(step.endpoint)
        self._check_routes(config, do.weights)
        waiting = self._write_router_config(step.endpoint, replace(config, traffic=do.weights))
        say(f"traffic of {step.endpoint}: {dict(do.weights)}")
        return waiting

    def _set_mirror_traffic(
        self, step: Step, do: SetMirrorTraffic, say: ProgressCallback
    ) -> Waiting | None:
        config = self._router_config(step.endpoint)
        self._check_routes(config, do.weights)
        waiting = self._write_router_config(
            step.endpoint, replace(config, mirror_traffic=do.weights)
        )
        say(f"mirror traffic of {step.endpoint}: {dict(do.weights)}")
        return waiting

    def _check_routes(self, config: RouterConfig, weights: Weights) -> None:
        for name, _ in weights:
            route = config.deployment(name)
            if route is None or not route.instances:
                raise TargetError(
                    f"deployment {config.endpoint}/{name} has no ready instance in the router",
                    code=ErrorCode.DEPLOYMENT_NOT_HEALTHY,
                )

    # --- operations beyond the plan ----------------------------------------------------

    def _route_ready(self, endpoint: str) -> None:
        """Route what runs and answers, as a repaired endpoint's lost or rebuilt config may
        not: per deployment, the instances the config has, and (one version running) those
        ready. Nothing is removed here: what is out of line besides is a repair_deployment
        of a later pass, visibly."""
        groups: dict[str, list[_Instance]] = defaultdict(list)
        for c in self._containers(role="instance", endpoint=endpoint):
            inst = _instance(c)
            groups[inst.deployment].append(inst)
        config = self._router_config(endpoint)
        changed = config
        for name, group in sorted(groups.items()):
            view = self._view(endpoint, name, group)
            keep = [i for i in view.alive if i.address in view.routed]
            if _versions(view.alive) <= 1:
                keep += [i for i in view.alive if view.serves(i) and i not in keep]
            spec = None
            if config.deployment(name) is None:
                version = self._version_of(view.alive)
                spec = version.spec if version is not None else None
            if keep or config.deployment(name) is not None:
                changed = self._with_route(changed, name, [i.address for i in keep], spec)
        if changed != config:
            log.info("router_routes_restored", endpoint=endpoint)
            self._write_router_config(endpoint, changed)

    def _instances_of(self, endpoint: str) -> list[_Instance]:
        return [_instance(c) for c in self._containers(role="instance", endpoint=endpoint)]

    def _router_health(self, endpoint: str) -> dict[str, Mapping[str, Any]]:
        """Each routed instance's probe record as the router keeps it (address -> record,
        router/probes.py); empty when the router cannot say."""
        creds = self._credentials(endpoint)
        if creds is None:
            return {}
        request = urllib.request.Request(
            f"http://127.0.0.1:{creds.port}/-/instances",
            headers={"Authorization": f"Bearer {creds.admin_secret}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                doc = json.loads(answer.read())
            return {
                str(record["address"]): record
                for deployment in doc["deployments"].values()
                for record in deployment["instances"]
            }
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("router_health_unreadable", endpoint=endpoint, error=str(exc))
            return {}

    def _liveness_failed(self, endpoint: str, group: Iterable[_Instance]) -> dict[str, int]:
        """Custom-container instances to restart (name -> failed checks in a row): the
        router counted failure_threshold failures of the liveness route in a row, and the
        container has run long enough since it last started for that many to be its own
        (initial_delay + period x failure_threshold: a restart is not repeated before the
        restarted container had its chance, as Kubernetes' kubelet does)."""
        custom = [i for i in group if i.probe_from_router and i.state == "running"]
        if not custom:
            return {}
        health = self._router_health(endpoint)
        failed: dict[str, int] = {}
        now = time.time()
        for inst in custom:
            record = health.get(inst.address)
            if record is None:
                continue
            try:
                spec = deployment_from_json(json.loads(inst.container.labels[f"{L}spec"]))
            except (KeyError, ValueError, TypeError):
                continue
            probe = spec.liveness_probe
            failures = int(record.get("liveness_failures", 0))
            started = inst.started_at
            settled = probe.initial_delay + probe.period * probe.failure_threshold
            if (
                failures >= probe.failure_threshold
                and started is not None
                and now - started >= settled
            ):
                failed[inst.name] = failures
        return failed

    def endpoint_credentials(self, endpoint: str) -> EndpointCredentials:
        self._state_cache.pop(endpoint, None)  # asked from outside a pass: read afresh
        volume = self._state_volumes(endpoint).get(endpoint)
        self._check_owned(endpoint, volume)  # and so regenerate_key and token
        if volume is not None and self._state_handle(endpoint) is None:
            # Its router and holder are gone, its keys are not: a holder again to read them
            # (what the next pass's repair does anyway).
            try:
                self._ensure_holder(endpoint, self.options.base_image, volume)
            except docker.errors.ImageNotFound:
                raise TargetError(
                    f"endpoint {endpoint}: no container holds its state; `reconcile` repairs it",
                    code=ErrorCode.NOT_FOUND,
                ) from None
        creds = self._credentials(endpoint)
        if creds is None:
            raise TargetError(f"endpoint {endpoint} has no credentials on target {self.name}")
        return creds

    def token(self, endpoint: str, *, now: float, ttl_s: int = 3600) -> dict[str, Any]:
        creds = self.endpoint_credentials(endpoint)
        return issue_token(creds.token_secret_bytes, endpoint, now=now, ttl_s=ttl_s)

    def autoscaler(
        self, lock: threading.Lock, *, wake: Callable[[], None] | None = None
    ) -> DockerAutoscaler:
        """The loop that scales target_utilization deployments (run by the daemon); `wake`
        asks for a pass after a scale (it routes the new instances once they are ready)."""
        return DockerAutoscaler(self, lock, wake=wake)

    def regenerate_key(self, endpoint: str, which: str) -> None:
        creds = self.endpoint_credentials(endpoint).regenerated(which)
        notes = self._state_json(endpoint, NOTES_FILE)
        notes.pop("keys", None)  # a key chosen anew: the note on lost keys has had its day
        self._put(
            endpoint,
            {CREDENTIALS_FILE: credentials_to_json(creds), NOTES_FILE: _json_bytes(notes)},
        )
        config = self._credentials_config(self._router_config(endpoint), creds)
        self._write_router_config(endpoint, config)

    def logs(
        self, endpoint: str, deployment: str, *, instance: int | None = None, lines: int = 100
    ) -> str:
        self._check_owned(endpoint)
        group = self._instances(endpoint, deployment)
        if instance is not None:
            group = [i for i in group if i.index == instance]
        if not group:
            raise TargetError(f"no instance of {endpoint}/{deployment} on target {self.name}")
        chunks = []
        for inst in group:
            text = inst.container.logs(tail=lines).decode(errors="replace")
            chunks.append(f"==> {inst.name} <==\n{text}")
        return "\n".join(chunks)

    def previous_logs(
        self, endpoint: str, deployment: str, *, instance: int | None = None, lines: int = 100
    ) -> str:
        """The log of each instance's attempt before its last restart (failures.py)."""
        self._check_owned(endpoint)
        group = self._instances(endpoint, deployment)
        if instance is not None:
            group = [i for i in group if i.index == instance]
        if not group:
            raise TargetError(f"no instance of {endpoint}/{deployment} on target {self.name}")
        chunks = []
        for inst in group:
            text = previous_run_log(inst.container, lines=lines)
            if text is None:
                text = "(not restarted: its log holds one attempt; `reconcile logs` shows it)\n"
            chunks.append(f"==> {inst.name} (before its last restart) <==\n{text}")
        return "\n".join(chunks)


# --- helpers --------------------------------------------------------------------------


# A pass reads every deployment's spec label and every endpoint's router config, unchanged
# from pass to pass in an idle daemon: parsed once (both are frozen values).
@functools.lru_cache(maxsize=1024)
def _spec_of_label(text: str) -> DeploymentSpec:
    return deployment_from_json(json.loads(text))


@functools.lru_cache(maxsize=256)
def _parsed_config(raw: bytes) -> RouterConfig:
    return parse_config(raw)


def _instance(container: Any) -> _Instance:
    labels = container.labels
    state = container.attrs.get("State", {})
    health = (state.get("Health") or {}).get("Status")
    return _Instance(
        container=container,
        endpoint=labels[f"{L}endpoint"],
        deployment=labels[f"{L}deployment"],
        digest=labels.get(f"{L}digest", ""),
        index=int(labels.get(f"{L}index", "0")),
        state=str(state.get("Status", container.status)),
        health=health,
        restarts=int(container.attrs.get("RestartCount", 0)),
        # Containers started before these labels existed were reached by name, on the
        # inference server's port.
        address=labels.get(f"{L}address") or f"{container.name}:{SERVER_PORT}",
        probe_url=labels.get(f"{L}probe") or SERVER_READY_URL,
        probe_from_router=labels.get(f"{L}probe-from") == "router",
        started_at=epoch(str(state.get("StartedAt") or "")),
        ready_within=_float(labels.get(f"{L}ready-within")),
        connections=_recorded_digests(labels.get(DIGESTS_LABEL)),
    )


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _versions(instances: Iterable[_Instance]) -> int:
    """How many versions the instances run: a version is a spec and the values of its
    connections (a changed secret makes a rolling update, whose two versions a repair
    must not take for surplus instances of one)."""
    return len({(i.digest, i.connections) for i in instances})


def _deployment_repair(view: _Group, *, count: int | None, routes_known: bool) -> str | None:
    """What repair_deployment would do, said for the plan; None when nothing. It names
    exactly what the repair changes, so that once done, observe finds nothing more: ready
    instances join the router while one version runs; instances start or go to meet the
    count while one version runs and none of another failed (else the update's rounds
    decide)."""
    problems: list[str] = []
    if view.not_live:
        names = ", ".join(f"{n} ({c} failed checks)" for n, c in sorted(view.not_live.items()))
        problems.append(f"liveness route failed, to restart: {names}")
    one_running = _versions(view.alive) <= 1
    one_version = _versions(view.alive + view.dead) <= 1
    if view.crashed:
        names = ", ".join(f"{i.name} ({view.why.get(i.name, i.state)})" for i in view.crashed)
        problems.append(f"{len(view.crashed)} instance(s) to replace: {names}")
    restarting = [i for i in view.dead if i.state in ("running", "restarting")]
    if restarting:
        problems.append(
            f"{len(restarting)} instance(s) that never became ready still run or restart "
            "(stopped; their logs are kept)"
        )
    if routes_known:
        addresses = {i.address for i in view.alive}
        gone = sorted(a for a in view.routed if a not in addresses)
        crashed = {i.address for i in view.crashed}
        gone = [a for a in gone if a not in crashed]
        if gone:
            problems.append(f"the router lists {len(gone)} instance(s) that are gone")
        if one_running:
            joining = [
                i for i in view.alive if i.address not in view.routed and i.name in view.ready
            ]
            if joining:
                problems.append(
                    f"{len(joining)} instance(s) ready, not routed yet: "
                    + ", ".join(i.name for i in joining)
                )
    if count is not None and one_version:
        slots = len(view.alive) + len(view.dead)
        if slots < count:
            problems.append(f"{count - slots} of {count} instance(s) missing")
        elif slots > count:
            problems.append(f"{slots - count} instance(s) more than the {count} asked")
    return "; ".join(problems) or None


def _recorded_digests(label: str | None) -> tuple[tuple[str, str], ...]:
    """The label of the connections' digests, read; nothing when absent or unreadable."""
    try:
        data = json.loads(label) if label else {}
    except ValueError:
        return ()
    if not isinstance(data, dict):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in data.items() if isinstance(v, str)))


def _resolved_connections(
    instances: list[_Instance], current: Mapping[str, str | None]
) -> tuple[ResolvedConnection, ...]:
    """Per connection, what the instances were started with against `current` (shown
    digests: full ones stay in the labels)."""
    out = []
    for name, digest in sorted(current.items()):
        started = {dict(i.connections).get(name) for i in instances}
        if len(started) == 1:
            (one,) = started
            was = shown(one) if one else None
        else:
            # Instances of a rollout stopped half-way: the plan finishes it.
            was = f"mixed ({len(started)} values)"
        out.append(ResolvedConnection(name, was, shown(digest) if digest else None))
    return tuple(out)


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def _mount_of(container: Any) -> Mapping[str, Any] | None:
    for mount in container.attrs.get("Mounts") or []:
        if mount.get("Destination") == STATE_MOUNT:
            return dict(mount)
    return None


def _legacy_router(container: Any) -> bool:
    """A router of an earlier version: its config bind-mounted from a host folder."""
    mount = _mount_of(container)
    return mount is not None and mount.get("Type") == "bind"


def _legacy_files(router: Any) -> dict[str, bytes]:
    """The host folder an earlier version's router mounts (STATE/endpoints/NAME/router):
    its endpoint's keys, spec, records and router config, as state volume paths. Found
    through the router's own mount, never by endpoint name alone: another target's
    endpoint of the same name may have a folder of that name too."""
    mount = _mount_of(router)
    if mount is None or not mount.get("Source"):
        return {}
    return LegacyStore(Path(str(mount["Source"])).parent).files()


def _owner(volume: Any) -> str | None:
    """The repository that made the endpoint of this state volume, when recorded."""
    return (volume.attrs.get("Labels") or {}).get(f"{L}repository") or None


def _volume_ports(volume: Any) -> tuple[int, int] | None:
    labels = volume.attrs.get("Labels") or {}
    try:
        return int(labels[f"{L}port"]), int(labels[f"{L}metrics-port"])
    except (KeyError, TypeError, ValueError):
        return None


def _router_ports(router: Any | None) -> tuple[int, int] | None:
    """The host ports a router container publishes (running or not)."""
    if router is None:
        return None
    bindings = router.attrs.get("HostConfig", {}).get("PortBindings") or {}
    try:
        scoring = bindings[f"{ROUTER_PORT}/tcp"][0]["HostPort"]
        metrics = bindings[f"{ROUTER_METRICS_PORT}/tcp"][0]["HostPort"]
        return int(scoring), int(metrics)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _network_problems(
    *, router: Any | None, instances: list[_Instance], networks: Mapping[str, Any]
) -> list[str]:
    """What is missing of the endpoint's networks, or cut off from them."""
    problems = []
    for role, what in (("internal", "internal network"), ("edge", "target's edge network")):
        network = networks.get(role)
        if network is None:
            problems.append(f"its {what} is missing")
        elif router is not None and network.name not in _attached(router):
            problems.append(f"its router is not on its {what}")
    internal = networks.get("internal")
    if internal is not None:
        cut = [
            i
            for i in instances
            if i.state == "running" and internal.name not in _attached(i.container)
        ]
        if cut:
            problems.append(f"{len(cut)} instance(s) are cut off from its internal network")
    return problems


def _attached(container: Any) -> set[str]:
    return set((container.attrs.get("NetworkSettings") or {}).get("Networks") or {})


def _credentials_problem(files: Mapping[str, bytes]) -> str | None:
    if CREDENTIALS_FILE not in files:
        return "its keys are missing: new keys will be issued"
    try:
        credentials_from_json(files[CREDENTIALS_FILE])
    except ValueError as exc:
        return f"its keys are unreadable ({exc}): new keys will be issued"
    return None


def _port_problem(port: int) -> str | None:
    """None when the router answers on its published port, else what went wrong.

    Asked from the host, as callers do: a router container can be "Up" while Docker's port
    proxy in front of it has died (thousands of idle connections kill it).
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as answer:
            if answer.status == 200:
                return None
            status = f"status {answer.status}"
    except urllib.error.HTTPError as exc:
        status = f"status {exc.code}"
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        status = str(reason) or reason.__class__.__name__
    return f"its router does not answer on 127.0.0.1:{port} ({status})"


def _scale_of(data: Any) -> ScaleSettings:
    """Scale settings from their JSON form; the defaults for anything unreadable."""
    try:
        return ScaleSettings(**data) if isinstance(data, dict) else ScaleSettings()
    except TypeError:
        return ScaleSettings()


def _alias(deployment: str, digest: str, index: int) -> str:
    """An instance's name on its endpoint's network: unique there, at most 53 characters."""
    return f"{deployment}-{digest.removeprefix('sha256:')[:8]}-{index}"


def _serving(spec: DeploymentSpec) -> tuple[int, str, bool]:
    """Port the router sends requests to, the readiness URL ({alias} stands for the
    instance's alias), and whether the router's container asks it.

    The inference server (or Triton, for a no-code triton_model) listens on its port and
    is asked inside its own container. A custom container listens where its
    inference_config says, and is asked from the router, over the network the requests
    take: its image may have no Python.
    """
    routes = serving(spec)
    ready = routes.readiness
    if spec.environment.custom_container:
        return routes.scoring.port, f"http://{{alias}}:{ready.port}{ready.path}", True
    return routes.scoring.port, f"http://127.0.0.1:{ready.port}{ready.path}", False


# The inference server's first line at each start: a restarted instance's log holds runs.
_RUN_START = "azmlinfsrv - Loaded logging config"
_FAILURE_WORDS = ("Traceback", "Error", "Exception", "failed")
# Lines of a failure kept from where it starts (status keeps the last 20 of a log tail).
_FAILURE_LINES = 20


def _failure_tail(container: Any, lines: int = LOG_TAIL) -> str:
    """Why the instance's last failed run failed: its log from the first line that says
    so (a crash-looping instance may already be starting again, and the newest lines of its
    log then say nothing of why); the end of the log when no line says so."""
    text = _tail(container, lines=lines * 8)
    runs: list[list[str]] = [[]]
    for line in text.splitlines():
        if _RUN_START in line and runs[-1]:
            runs.append([])
        runs[-1].append(line)
    for run in reversed(runs):
        starts = [i for i, line in enumerate(run) if any(w in line for w in _FAILURE_WORDS)]
        if starts:
            return "\n".join(run[starts[0] : starts[0] + _FAILURE_LINES]) + "\n"
    return "\n".join(text.splitlines()[-lines:]) + "\n"


def _tail(container: Any, lines: int = LOG_TAIL) -> str:
    try:
        return bytes(container.logs(tail=lines)).decode(errors="replace")
    except docker.errors.APIError:
        return ""


def _router_probes(spec: DeploymentSpec) -> tuple[Probe | None, Probe | None]:
    """The checks the router runs on a custom container's instances: its readiness and
    liveness routes with the deployment's probe settings (Azure's). None for the
    inference server and Triton, which their containers' health checks watch."""
    if not spec.environment.custom_container:
        return None, None
    routes = serving(spec)

    def probe(route: Any, settings: Any) -> Probe:
        return Probe(
            port=route.port,
            path=route.path,
            period=settings.period,
            timeout=settings.timeout,
            success_threshold=settings.success_threshold,
            failure_threshold=settings.failure_threshold,
        )

    return (
        probe(routes.readiness, spec.readiness_probe),
        probe(routes.liveness, spec.liveness_probe),
    )


def _outdated_router(router: Any, instances: Iterable[_Instance]) -> bool:
    """A router that cannot check the custom containers of its endpoint."""
    return _router_level(router) < PROBING_LEVEL and any(i.probe_from_router for i in instances)


def _untolerant_router(router: Any, spec: EndpointSpec) -> bool:
    """A router that would refuse the shadow comparison's tolerances the spec asks for."""
    return spec.shadow_comparison is not None and _router_level(router) < SHADOW_TOLERANCE_LEVEL


def _asked_of_router(config: RouterConfig, spec: EndpointSpec) -> RouterConfig:
    """The router config with what the endpoint's spec sets of it."""
    return replace(
        config,
        auth_mode=spec.auth_mode,
        shadow_comparison=router_comparison(spec.shadow_comparison),
    )


def _router_level(router: Any) -> int:
    """What a router container's image can do (images.router.ROUTER_LEVEL); 1 before levels."""
    try:
        return int((router.labels or {}).get(ROUTER_LEVEL_LABEL, "1"))
    except ValueError:
        return 1


def _environment(spec: DeploymentSpec, variables: Mapping[str, str]) -> dict[str, str]:
    """variables: the spec's environment variables with secret references resolved."""
    env = {"WORKER_COUNT": str(spec.request_settings.max_concurrent_requests_per_instance)}
    # The user's variables come last: they override ours (SPEC-REFERENCE.md).
    env.update(variables)
    return env


def _healthcheck(spec: DeploymentSpec) -> dict[str, Any] | None:
    if spec.environment.custom_container:
        return None
    _, ready_url, _ = _serving(spec)
    probe = spec.readiness_probe
    second = 1_000_000_000
    return {
        "test": ["CMD", *_probe_command(ready_url, probe.timeout)],
        "interval": probe.period * second,
        "timeout": probe.timeout * second,
        "retries": probe.failure_threshold,
        "start_period": probe.initial_delay * second,
    }


def _served_digest(port: int) -> str | None:
    """What the router on `port` says it serves (`/-/config-digest`): a digest; None while
    it names none (its workers differ) or does not answer; "" from a router that cannot say
    (older than the call: it answers 404)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}{ROUTER_DIGEST_PATH}", timeout=2
        ) as answer:
            digest = json.loads(answer.read()).get("digest")
    except urllib.error.HTTPError as exc:
        return "" if exc.code == 404 else None
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return None
    return str(digest) if digest else None


def _await_served(
    endpoint: str, port: int, digest: str, *, patience_s: float = SERVED_PATIENCE_S
) -> Waiting | None:
    """None once the router of `endpoint` serves the config of `digest` (at once with one
    worker: the admin call applied it before answering); Waiting after `patience_s`."""
    deadline = time.monotonic() + patience_s
    while True:
        served = _served_digest(port)
        if served in (digest, ""):
            return None
        if time.monotonic() >= deadline:
            now = f"it serves {served[:12]}" if served else "its workers differ"
            return Waiting(f"the router of {endpoint} to serve config {digest[:12]} ({now})")
        time.sleep(SERVED_POLL_S)


def _progress(say: ProgressCallback) -> Any:
    def callback(event: str, message: str) -> None:
        # A build's own output lines (BuildLog's "..._step" events) are detail; the
        # phases ("..._build", "..._built") say where the step is.
        say(OutputLine(message) if event.endswith("_step") else message)

    return callback


# What this target claims to be, checked by mypy here: a runtime isinstance check
# (how callers ask for a capability) sees only the names of members.
_IS_TARGET: type[Target] = DockerTarget
_HANDLES_STEPS: type[StepHandlers] = DockerTarget
_HAS_CREDENTIALS: type[HasCredentials] = DockerTarget
_HAS_LOGS: type[HasLogs] = DockerTarget
_HAS_ROUTER_METRICS: type[HasRouterMetrics] = DockerTarget
_COLLECTS_IMAGES: type[CollectsImages] = DockerTarget
_HAS_PREVIOUS_LOGS: type[HasPreviousLogs] = DockerTarget
_HAS_CONNECTIONS: type[HasConnections] = DockerTarget
_OBSERVES_ENDPOINT: type[ObservesEndpoint] = DockerTarget
_AUTOSCALES: type[Autoscales] = DockerTarget
_BUILDS: type[Builds] = DockerTarget
_CHECKS_DESIRED: type[ChecksDesired] = DockerTarget
