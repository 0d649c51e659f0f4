"""The Docker target: endpoints as containers on one Docker Engine.

Per endpoint: an internal network (deployments publish no port and reach nothing outside),
and a router container on a stable port of 127.0.0.1 (the scoring URI). Per deployment:
one container per instance, of an image built for it (environment layer cached by content,
thin code + model layer on top). Names of containers and networks start with
`rcl-TARGET-ENDPOINT`, so two targets on one engine never collide; the router reaches an
instance by a short alias on the endpoint's network (`DEPLOYMENT-DIGEST8-INDEX`), on the
inference server's port or on the port a custom container's inference_config names.

The target is its own record: observe() rebuilds the live state from container labels
(endpoint, deployment, digest, the applied spec, the instance's address), container
health, and the router's config. Outside Docker, in the state folder: the keys (a 0600
file), the router's config (key hashes, never keys), and per deployment a record of the
scale settings and the version applied last, which stands in for the labels of a
deployment scaled to zero.

Readiness: a container is ready when the inference server answers GET / inside it (a
custom container: when its readiness route answers the router's container, since its image
may have no Python). Docker's HEALTHCHECK (from readiness_probe) keeps watching it
afterwards; while a step waits for new instances it asks them directly (docker exec),
because Docker 20.10 runs the first health check only after a full probe period.

Failure: an instance that stopped, crash-loops or failed its liveness is failed; it does
not count, settle() clears it away at the start of the next pass (a liveness failure is
restarted in place instead), and the plan replaces it. An instance Docker restarted once
counts again as soon as it is healthy. A batch of new instances that cannot start is
stopped (kept for its logs until the next pass); the instances already serving stay.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker
import docker.errors
import structlog

from reconciler.model.codec import deployment_from_json, endpoint_from_json
from reconciler.model.instance_types import DEFAULT_INSTANCE_TYPES, InstanceType
from reconciler.model.keys import ResourceKey
from reconciler.model.plan import Step
from reconciler.model.specs import (
    DeploymentSpec,
    EndpointSpec,
    ScaleSettings,
    Weights,
    spec_digest,
    to_json,
    weight_of,
)
from reconciler.model.state import LiveDeployment, LiveEndpoint, LiveState, ProvisioningState
from reconciler.router.config import (
    ConfigError,
    DeploymentRoute,
    RouterConfig,
    config_to_dict,
    dump_config,
    parse_config,
)
from reconciler.router.tokens import hash_key, issue_token
from reconciler.targets.base import (
    ProgressCallback,
    TargetError,
    TargetUnavailable,
    dispatch,
)
from reconciler.targets.docker.autoscaler import DockerAutoscaler
from reconciler.targets.docker.baseimage import ImageBuildError, ensure_base_image
from reconciler.targets.docker.condamap import CondaMappingError
from reconciler.targets.docker.credentials import (
    CredentialStore,
    EndpointCredentials,
    new_credentials,
    write_private,
)
from reconciler.targets.docker.images import (
    SERVER_PORT,
    build_deployment_image,
    build_environment_image,
)
from reconciler.targets.docker.options import DockerOptions
from reconciler.targets.docker.routerimage import ensure_router_image

log = structlog.get_logger("reconciler.docker")

L = "reconciler."  # label prefix
MANAGED = f"{L}managed-by"
MANAGER = "ml-endpoint-reconciler"
ROUTER_CONFIG_DIR = "/etc/reconciler-router"
ROUTER_PORT, ROUTER_METRICS_PORT = 8080, 9090
LOG_TAIL = 30
# A probe is a GET that must answer 2xx within the timeout; run with the Python of the
# container it runs in (instances and the router both have /opt/venv).
_PROBE = (
    "import sys,urllib.request\n"
    "try:\n"
    "    urllib.request.urlopen({url!r}, timeout={timeout})\n"
    "except Exception:\n"
    "    sys.exit(1)\n"
)
# The inference server answers its liveness and readiness on GET / (SPEC-REFERENCE.md).
SERVER_READY_URL = f"http://127.0.0.1:{SERVER_PORT}/"


def _probe_command(url: str, timeout: int) -> list[str]:
    return ["/opt/venv/bin/python", "-c", _PROBE.format(url=url, timeout=timeout)]


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

    @property
    def name(self) -> str:
        return str(self.container.name)

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
    ) -> None:
        self.options = options
        self.name = options.name
        self.repo_root = repo_root
        self.instance_types = instance_types
        self.credentials = CredentialStore(options.state_dir)
        self._client = client
        self._router_image: str | None = None

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

    def _containers(self, **labels: str) -> list[Any]:
        filters = [f"{MANAGED}={MANAGER}", f"{L}target={self.name}"]
        filters += [f"{L}{k}={v}" for k, v in labels.items()]
        try:
            # ignore_removed: a container removed between the listing and its inspection
            # (by hand, by a step) is simply not there, rather than an engine error.
            return list(
                self.client.containers.list(
                    all=True, filters={"label": filters}, ignore_removed=True
                )
            )
        except docker.errors.DockerException as exc:
            raise TargetUnavailable(f"Docker Engine: {exc}") from None

    # --- observe ---------------------------------------------------------------------

    def observe(self) -> LiveState:
        routers = {c.labels[f"{L}endpoint"]: c for c in self._containers(role="router")}
        instances: dict[tuple[str, str], list[_Instance]] = defaultdict(list)
        for c in self._containers(role="instance"):
            inst = _instance(c)
            instances[(inst.endpoint, inst.deployment)].append(inst)
        endpoints = []
        for name in sorted(routers):
            live = self._observe_endpoint(name, routers[name])
            if live is not None:
                endpoints.append(live)
        deployments = [
            self._observe_deployment(endpoint, deployment, group)
            for (endpoint, deployment), group in sorted(instances.items())
        ]
        # A deployment scaled to zero has no container to read it back from: its record
        # in the state folder stands in.
        for endpoint, deployment, record in self._records():
            if (endpoint, deployment) not in instances:
                deployments.append(self._observe_empty(endpoint, deployment, record))
        deployments.sort(key=lambda d: (d.endpoint, d.name))
        return LiveState(
            endpoints=tuple(endpoints), deployments=tuple(deployments), target=self.name
        )

    def _observe_endpoint(self, name: str, router: Any) -> LiveEndpoint | None:
        folder = self.credentials.folder(name)
        try:
            spec = endpoint_from_json(json.loads((folder / "endpoint.json").read_text()))
        except FileNotFoundError:
            spec = EndpointSpec(name)
        config = self._read_router_config(name)
        if config is not None:
            spec = replace(
                spec,
                auth_mode=config.auth_mode,
                traffic=config.traffic,
                mirror_traffic=config.mirror_traffic,
            )
        creds = self.credentials.load(name)
        running = router.status == "running"
        state = ProvisioningState.SUCCEEDED if running and config else ProvisioningState.FAILED
        uri = f"http://127.0.0.1:{creds.port}" if creds else None
        return LiveEndpoint(
            spec=spec,
            provisioning_state=state,
            scoring_uri=f"{uri}/score" if uri else None,
            openapi_uri=f"{uri}/swagger.json" if uri else None,
        )

    def _observe_deployment(
        self, endpoint: str, deployment: str, group: list[_Instance]
    ) -> LiveDeployment:
        key = ResourceKey(endpoint, deployment)
        serving = [i for i in group if not i.failed]
        failed = [i for i in group if i.failed]
        # Failed instances (a rollout whose new instances did not start) say nothing of
        # what runs: the digest and spec are those of the serving ones.
        basis = serving or group
        digests = {i.digest for i in basis}
        newest = max(basis, key=lambda i: i.created)
        spec: DeploymentSpec | None = None
        digest = newest.digest
        if len(digests) == 1:
            with contextlib.suppress(ValueError, KeyError, TypeError, json.JSONDecodeError):
                spec = deployment_from_json(json.loads(newest.container.labels[f"{L}spec"]))
        else:
            # A rollout stopped half-way: report a digest no spec has, so the next plan
            # finishes the rollout.
            digest = spec_digest({"mixed": sorted(digests)})
        record = self._read_record(endpoint, deployment)
        scale = _scale_of(record.get("scale"))
        if "scale" not in record:
            # Containers carry the scale settings they were started with.
            with contextlib.suppress(ValueError, KeyError, TypeError, json.JSONDecodeError):
                scale = _scale_of(json.loads(newest.container.labels[f"{L}scale"]))
        routed = self._routed_instances(endpoint, deployment)
        ready = [i for i in serving if i.address in routed and self._ready(i)]
        if failed:
            state = ProvisioningState.FAILED
        elif len(ready) < len(serving):
            state = ProvisioningState.UPDATING
        else:
            state = ProvisioningState.SUCCEEDED
        last_error = None
        if failed:
            last_error = f"{failed[0].name}: {failed[0].state}/{failed[0].health}\n" + _tail(
                failed[0].container
            )
        return LiveDeployment(
            key=key,
            digest=digest,
            # Failed instances are not part of the count: the next pass replaces them.
            instance_count=len(serving),
            scale_settings=scale,
            spec=spec,
            ready_instances=len(ready),
            provisioning_state=state,
            last_error=last_error,
            instance_type=newest.container.labels.get(f"{L}instance-type") or None,
            autoscale=self._autoscale_note(endpoint, deployment),
        )

    def _autoscale_note(self, endpoint: str, deployment: str) -> str | None:
        """The autoscaler's last decision for the deployment, for status."""
        path = self.credentials.folder(endpoint) / "scale" / f"{deployment}.decision.json"
        try:
            return str(json.loads(path.read_text())["reason"])
        except (OSError, ValueError, KeyError):
            return None

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

    # --- records of deployments ---------------------------------------------------------

    def _record_path(self, endpoint: str, deployment: str) -> Path:
        return self.credentials.folder(endpoint) / "deployments" / f"{deployment}.json"

    def _read_record(self, endpoint: str, deployment: str) -> dict[str, Any]:
        try:
            data = json.loads(self._record_path(endpoint, deployment).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _records(self) -> list[tuple[str, str, dict[str, Any]]]:
        found = []
        for path in sorted(self.credentials.root.glob("*/deployments/*.json")):
            endpoint, deployment = path.parent.parent.name, path.stem
            record = self._read_record(endpoint, deployment)
            if record.get("spec") is not None:
                found.append((endpoint, deployment, record))
        return found

    def _record(
        self,
        endpoint: str,
        deployment: str,
        *,
        scale: ScaleSettings,
        version: _Version | None = None,
    ) -> None:
        """Record what a step applied: the scale settings (labels cannot change on a
        running container, and observe prefers this record), and the version, which
        observe needs for a deployment scaled to zero."""
        record = self._read_record(endpoint, deployment)
        record["scale"] = to_json(scale)
        if version is not None:
            record["digest"] = version.digest
            record["spec"] = json.loads(version.spec_label)
        write_private(self._record_path(endpoint, deployment), json.dumps(record, sort_keys=True))

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

    def _router_dir(self, endpoint: str) -> Path:
        return self.credentials.folder(endpoint) / "router"

    def _read_router_config(self, endpoint: str) -> RouterConfig | None:
        try:
            return parse_config((self._router_dir(endpoint) / "router.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _routed_instances(self, endpoint: str, deployment: str) -> set[str]:
        config = self._read_router_config(endpoint)
        route = config.deployment(deployment) if config else None
        return set(route.instances) if route else set()

    def _write_router_config(self, endpoint: str, config: RouterConfig) -> None:
        """Write the config (the router watches its folder) and push it through the admin
        call, so the change is live when this returns."""
        text = dump_config(config)
        try:
            # The router would refuse it, and a file it cannot read would leave the
            # endpoint without a config on its next start: check before writing.
            parse_config(text)
        except ConfigError as exc:
            raise TargetError(
                f"router config of {endpoint} would be invalid: {exc}", code="InvalidRouterConfig"
            ) from None
        write_private(self._router_dir(endpoint) / "router.json", text)
        creds = self.credentials.load(endpoint)
        if creds is None:
            return
        body = json.dumps(config_to_dict(config)).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{creds.port}/-/config",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {creds.admin_secret}",
                "Content-Type": "application/json",
            },
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10):
                    return
            except urllib.error.HTTPError as exc:
                # A refusal is an answer: asking again gets the same one.
                if exc.code < 500:
                    detail = exc.read().decode(errors="replace")[:300]
                    raise TargetError(
                        f"router of {endpoint} refused its new config: {exc.code} {detail}",
                        code="RouterUnavailable",
                    ) from None
                problem: Exception = exc
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                problem = exc
            if time.monotonic() > deadline:
                raise TargetError(
                    f"router of {endpoint} did not take its new config: {problem}",
                    code="RouterUnavailable",
                )
            time.sleep(0.2)

    def _router_config(self, endpoint: str) -> RouterConfig:
        config = self._read_router_config(endpoint)
        if config is None:
            raise TargetError(f"endpoint {endpoint} has no router config", code="NotFound")
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
            rs = spec.request_settings
            scoring_path, liveness_path = _routes_of(spec)
            current = DeploymentRoute(
                name=deployment,
                request_timeout_ms=rs.request_timeout_ms,
                max_concurrent_requests_per_instance=rs.max_concurrent_requests_per_instance,
                max_queue_wait_ms=rs.max_queue_wait_ms,
                scoring_path=scoring_path,
                liveness_path=liveness_path,
            )
        if current is None:
            current = DeploymentRoute(name=deployment)
        routes[deployment] = replace(current, instances=tuple(sorted(instances)))
        return replace(config, deployments=tuple(routes[n] for n in sorted(routes)))

    # --- apply -----------------------------------------------------------------------

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> None:
        try:
            dispatch(self, step, progress)
        except (ImageBuildError, CondaMappingError) as exc:
            tail = getattr(exc, "log_tail", "")
            raise TargetError(str(exc), code="ImageBuildFailure", log_tail=tail) from None
        except docker.errors.DockerException as exc:
            raise TargetError(f"Docker Engine: {exc}", code="DockerError") from None

    # endpoints

    def _prefix(self, endpoint: str) -> str:
        """Start of the names of an endpoint's containers and network.

        The target's name is part of it: two targets on one engine (a second state
        folder, a test run beside a user's endpoints) may both have an endpoint `main`.
        """
        return f"rcl-{_safe_name(self.name)}-{endpoint}"

    def _network(self, endpoint: str) -> str:
        """The endpoint's network: the one labelled for it (whatever its name), else the
        name a new one gets."""
        labels = [f"{MANAGED}={MANAGER}", f"{L}target={self.name}", f"{L}endpoint={endpoint}"]
        found = self.client.networks.list(filters={"label": labels})
        return str(found[0].name) if found else self._prefix(endpoint)

    def _create_endpoint(self, step: Step, say: ProgressCallback) -> None:
        spec = step.endpoint_spec
        assert spec is not None
        endpoint = spec.name
        creds = self.credentials.load(endpoint)
        if creds is None:
            port, metrics = self._free_ports()
            creds = new_credentials(port=port, metrics_port=metrics)
            self.credentials.save(endpoint, creds)
            say(f"keys generated for {endpoint} (kept in the state folder, mode 0600)")
        write_private(
            self.credentials.folder(endpoint) / "endpoint.json", json.dumps(to_json(spec))
        )
        self._ensure_network(endpoint)
        config = self._read_router_config(endpoint) or RouterConfig(endpoint=endpoint)
        config = self._credentials_config(replace(config, auth_mode=spec.auth_mode), creds)
        write_private(self._router_dir(endpoint) / "router.json", dump_config(config))
        self._ensure_router(endpoint, creds, say)

    def _credentials_config(self, config: RouterConfig, creds: EndpointCredentials) -> RouterConfig:
        return replace(
            config,
            key_hashes=(hash_key(creds.primary_key), hash_key(creds.secondary_key)),
            token_secret=creds.token_secret_bytes,
            admin_secret_hash=hash_key(creds.admin_secret),
            port=ROUTER_PORT,
            metrics_port=ROUTER_METRICS_PORT,
            host="0.0.0.0",
        )

    def _update_endpoint(self, step: Step, say: ProgressCallback) -> None:
        spec = step.endpoint_spec
        assert spec is not None
        write_private(
            self.credentials.folder(spec.name) / "endpoint.json", json.dumps(to_json(spec))
        )
        config = self._router_config(spec.name)
        if config.auth_mode != spec.auth_mode:
            self._write_router_config(spec.name, replace(config, auth_mode=spec.auth_mode))
            say(f"auth_mode of {spec.name} is now {spec.auth_mode}")

    def _delete_endpoint(self, step: Step, say: ProgressCallback) -> None:
        endpoint = step.endpoint
        for c in self._containers(endpoint=endpoint):
            c.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            self.client.networks.get(self._network(endpoint)).remove()
        self.credentials.delete(endpoint)
        say(f"endpoint {endpoint}: router, network and keys removed")

    def _ensure_network(self, endpoint: str) -> None:
        # Found by labels: Docker's name filter matches parts of names, so the network
        # of endpoint `a` would seem to exist once `a-b`'s does.
        labels = [f"{MANAGED}={MANAGER}", f"{L}target={self.name}", f"{L}endpoint={endpoint}"]
        if not self.client.networks.list(filters={"label": labels}):
            self.client.networks.create(
                self._prefix(endpoint),
                driver="bridge",
                internal=True,
                labels={MANAGED: MANAGER, f"{L}target": self.name, f"{L}endpoint": endpoint},
            )

    def _free_ports(self) -> tuple[int, int]:
        used = self.credentials.ports_in_use()
        low, high = self.options.router_port_range
        found = []
        for port in range(low, high + 1):
            if port in used:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            found.append(port)
            if len(found) == 2:
                return found[0], found[1]
        raise TargetError(f"no free port in {low}-{high} for a router", code="NoFreePort")

    def _ensure_router(
        self, endpoint: str, creds: EndpointCredentials, say: ProgressCallback
    ) -> None:
        existing = self._containers(role="router", endpoint=endpoint)
        if existing and existing[0].status == "running":
            return
        for c in existing:
            c.remove(force=True)
        image = self._router_image_tag(say)
        container = self.client.containers.create(
            image,
            name=f"{self._prefix(endpoint)}-router",
            labels={
                MANAGED: MANAGER,
                f"{L}target": self.name,
                f"{L}role": "router",
                f"{L}endpoint": endpoint,
            },
            # Writable: a change made through the router's admin call is saved there too,
            # so observe sees it (drift) and a restarted router keeps it.
            volumes={str(self._router_dir(endpoint)): {"bind": ROUTER_CONFIG_DIR, "mode": "rw"}},
            ports={
                f"{ROUTER_PORT}/tcp": ("127.0.0.1", creds.port),
                f"{ROUTER_METRICS_PORT}/tcp": ("127.0.0.1", creds.metrics_port),
            },
            user="root",  # reads the 0600 config of the state folder
            restart_policy={"Name": "unless-stopped"},
            detach=True,
        )
        self.client.networks.get(self._network(endpoint)).connect(container)
        container.start()
        say(f"router of {endpoint} on 127.0.0.1:{creds.port}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{creds.port}/-/ready", timeout=2
                ) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            container.reload()
            if container.status == "exited":
                break
            time.sleep(0.2)
        raise TargetError(
            f"router of {endpoint} did not become ready",
            code="RouterUnavailable",
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
            )
        return self._router_image

    def _base_image(self, say: ProgressCallback) -> str:
        return ensure_base_image(self.client, self.options.base_image, progress=_progress(say))

    # deployments

    def _build(self, spec: DeploymentSpec, say: ProgressCallback) -> str:
        base = self._base_image(say)
        env_image = build_environment_image(
            self.client,
            spec.environment,
            repo_root=self.repo_root,
            base_image=base,
            wheel_cache=self.options.wheel_cache,
            progress=_progress(say),
            image_map=self.options.image_map,
        )
        return build_deployment_image(
            self.client,
            spec,
            env_image=env_image,
            repo_root=self.repo_root,
            progress=_progress(say),
        )

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
    ) -> list[_Instance]:
        """Start `count` instances and return once all are ready.

        On failure the batch is stopped, not removed: it is routed nowhere, a crash loop
        would only burn CPU, and its logs stay readable (`reconcile logs`) until the next
        pass clears it away.
        """
        spec = version.spec
        network = self._network(spec.endpoint_name)
        port, probe_url, probe_from_router = _serving(spec)
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
                }
                container = self.client.containers.create(
                    version.image,
                    name=f"{self._prefix(spec.endpoint_name)}-{alias}",
                    labels=labels,
                    environment=_environment(spec),
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
            say(f"{count} instance(s) of {spec.key} started; waiting until ready")
            self._wait_ready(spec, started)
        except Exception:
            for inst in started:
                with contextlib.suppress(docker.errors.APIError):
                    inst.container.stop(timeout=1)
            raise
        return started

    def _limits(self, spec: DeploymentSpec) -> dict[str, Any]:
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

    def _wait_ready(self, spec: DeploymentSpec, instances: list[_Instance]) -> None:
        probe = spec.readiness_probe
        budget = min(
            self.options.ready_timeout_s,
            probe.initial_delay + probe.period * probe.failure_threshold + 30,
        )
        deadline = time.monotonic() + budget
        waiting = {i.name: i for i in instances}
        while waiting:
            for name, inst in list(waiting.items()):
                inst.container.reload()
                state = inst.container.attrs.get("State", {})
                if (
                    state.get("Status") in ("exited", "dead")
                    or int(inst.container.attrs.get("RestartCount", 0)) > 0
                    or state.get("Restarting")
                ):
                    raise TargetError(
                        f"instance {name} of {spec.key} stopped while starting "
                        "(init() failed or the server crashed)",
                        code="DeploymentNotReady",
                        log_tail=_tail(inst.container),
                    )
                if self._probe(inst):
                    del waiting[name]
            if not waiting:
                return
            if time.monotonic() > deadline:
                first = next(iter(waiting.values()))
                raise TargetError(
                    f"{len(waiting)} instance(s) of {spec.key} not ready after {budget:.0f} s",
                    code="Timeout",
                    log_tail=_tail(first.container),
                )
            time.sleep(0.05)  # a probe (docker exec) itself takes ~0.1-0.4 s

    def _route_instances(
        self,
        endpoint: str,
        deployment: str,
        instances: Iterable[_Instance],
        spec: DeploymentSpec | None,
        *,
        settings_if_new: bool = False,
    ) -> None:
        config = self._router_config(endpoint)
        addresses = [i.address for i in instances]
        routed = self._with_route(
            config, deployment, addresses, spec, settings_if_new=settings_if_new
        )
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
        settings_if_new: bool = False,
    ) -> None:
        """Route `keep` only, let requests in flight to `drop` finish, then remove them."""
        self._route_instances(endpoint, deployment, keep, spec, settings_if_new=settings_if_new)
        if drop:
            # The router sends nothing new to them from now on; what it sent already
            # has drain_s to finish.
            time.sleep(self.options.drain_s)
            self._remove(drop)

    def _create_deployment(self, step: Step, say: ProgressCallback) -> None:
        spec = step.deployment_spec
        assert spec is not None and step.instance_count is not None
        self._router_config(spec.endpoint_name)  # the endpoint must exist
        # Left-overs of an earlier failed attempt go first: they are not serving.
        self._remove(self._instances(spec.endpoint_name, spec.name))
        version = self._desired_version(spec, say)
        scale = step.scale_settings or spec.scale_settings
        started = self._start_instances(
            version, count=step.instance_count, first_index=0, scale=scale, say=say
        )
        self._route_instances(spec.endpoint_name, spec.name, started, spec)
        self._record(step.endpoint, spec.name, scale=scale, version=version)

    def _scale_deployment(self, step: Step, say: ProgressCallback) -> None:
        """Add or remove instances of what runs now.

        Scaling comes before an update of the same deployment (SPEC-REFERENCE.md), so
        instances added to a deployment whose running version is not the declared one are
        of the running version; the update that follows replaces them with the rest.
        """
        spec = step.deployment_spec
        assert spec is not None and step.instance_count is not None
        group = self._instances(step.endpoint, spec.name)
        failed = [i for i in group if i.failed]
        live = [i for i in group if not i.failed]
        want = step.instance_count
        scale = step.scale_settings or spec.scale_settings
        if want > len(live):
            running = [i for i in live if i.digest != spec.digest]
            version: _Version | None = None
            if running and len(running) == len(live):
                # Containers of an older reconciler may lack a readable spec label: then
                # the new instances are of the declared version (the update follows).
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    version = self._running_version(max(running, key=lambda i: i.created))
            if version is None:
                version = self._desired_version(spec, say)
            started = self._start_instances(
                version,
                count=want - len(live),
                # Past every index in use, failed ones included: names and aliases stay
                # unique while those are still there.
                first_index=max((i.index for i in group), default=-1) + 1,
                scale=scale,
                say=say,
            )
            self._retire(
                step.endpoint,
                spec.name,
                keep=live + started,
                drop=failed,
                spec=version.spec,
                settings_if_new=True,
            )
            say(f"{len(started)} instance(s) of {spec.key} added")
            self._record(step.endpoint, spec.name, scale=scale, version=version)
        else:
            # The declared version stays longest, then the oldest instances.
            order = sorted(live, key=lambda i: (i.digest != spec.digest, i.index))
            keep, drop = order[:want], order[want:]
            # One of an interrupted rollout may be kept that the router never had: it
            # is routed only once it answers.
            routed = self._routed_instances(step.endpoint, spec.name)
            self._wait_ready(spec, [i for i in keep if i.address not in routed])
            self._retire(step.endpoint, spec.name, keep=keep, drop=drop + failed, spec=None)
            if drop:
                say(f"{len(drop)} instance(s) of {spec.key} removed")
            self._record(step.endpoint, spec.name, scale=scale)

    def _update_deployment(self, step: Step, say: ProgressCallback) -> None:
        """Rolling update: new instances in batches of 20% of the count (at least one),
        each batch ready and routed before old ones leave the router, and old ones leave
        only as far as the new ones make up for them: the ready count never falls below
        the declared one (or below what ran, when fewer ran).
        """
        spec = step.deployment_spec
        assert spec is not None and step.instance_count is not None
        group = self._instances(step.endpoint, spec.name)
        # Failed instances serve nothing; the router already passes over them.
        self._remove([i for i in group if i.failed])
        live = [i for i in group if not i.failed]
        new = [i for i in live if i.digest == spec.digest]
        old = [i for i in live if i.digest != spec.digest]
        version = self._desired_version(spec, say)
        # New instances of an interrupted rollout, started but never routed, are routed
        # below with the rest: they must be ready too.
        routed = self._routed_instances(step.endpoint, spec.name)
        self._wait_ready(spec, [i for i in new if i.address not in routed])
        target = step.instance_count
        batch = max(1, int(target * 0.2))
        next_index = max((i.index for i in group), default=-1) + 1
        scale = step.scale_settings or spec.scale_settings
        while True:
            missing = target - len(new)
            if missing <= 0 and not old:
                break
            if missing > 0:
                count = min(batch, missing)
                new += self._start_instances(
                    version, count=count, first_index=next_index, scale=scale, say=say
                )
                next_index += count
            surplus = max(0, len(new) + len(old) - target)
            retire, old = old[:surplus], old[surplus:]
            self._retire(step.endpoint, spec.name, keep=new + old, drop=retire, spec=spec)
            say(f"{spec.key}: {min(len(new), target)}/{target} instances updated")
        if len(new) > target:
            # More of the new version than declared (a rollout that ran at a higher
            # count): the newest go.
            self._retire(step.endpoint, spec.name, keep=new[:target], drop=new[target:], spec=spec)
        self._record(step.endpoint, spec.name, scale=scale, version=version)

    def _delete_deployment(self, step: Step, say: ProgressCallback) -> None:
        assert step.deployment is not None
        config = self._read_router_config(step.endpoint)
        if config is not None:
            if weight_of(config.traffic, step.deployment) or weight_of(
                config.mirror_traffic, step.deployment
            ):
                # The plan moves traffic first (DESIGN.md rule 5); never drop requests
                # because a plan was made against a stale view.
                raise TargetError(
                    f"deployment {step.endpoint}/{step.deployment} still has traffic; "
                    "it is deleted once its traffic has moved",
                    code="DeploymentHasTraffic",
                )
            if config.deployment(step.deployment) is not None:
                routes = tuple(r for r in config.deployments if r.name != step.deployment)
                self._write_router_config(step.endpoint, replace(config, deployments=routes))
                time.sleep(self.options.drain_s)
        self._remove(self._instances(step.endpoint, step.deployment))
        self._record_path(step.endpoint, step.deployment).unlink(missing_ok=True)
        say(f"deployment {step.endpoint}/{step.deployment} removed")

    def _set_traffic(self, step: Step, say: ProgressCallback) -> None:
        assert step.traffic is not None
        config = self._router_config(step.endpoint)
        self._check_routes(config, step.traffic)
        self._write_router_config(step.endpoint, replace(config, traffic=step.traffic))
        say(f"traffic of {step.endpoint}: {dict(step.traffic)}")

    def _set_mirror_traffic(self, step: Step, say: ProgressCallback) -> None:
        assert step.mirror_traffic is not None
        config = self._router_config(step.endpoint)
        self._check_routes(config, step.mirror_traffic)
        self._write_router_config(
            step.endpoint, replace(config, mirror_traffic=step.mirror_traffic)
        )
        say(f"mirror traffic of {step.endpoint}: {dict(step.mirror_traffic)}")

    def _check_routes(self, config: RouterConfig, weights: Weights) -> None:
        for name, _ in weights:
            route = config.deployment(name)
            if route is None or not route.instances:
                raise TargetError(
                    f"deployment {config.endpoint}/{name} has no ready instance in the router",
                    code="DeploymentNotHealthy",
                )

    # --- operations beyond the plan ----------------------------------------------------

    def settle(self) -> None:
        """Bring the routers in line with what runs: ready instances in, gone ones out.

        Called at the start of a pass: heals a router whose instance list drifted (an
        instance removed by hand, a reconciler killed between starting instances and
        routing them), restarts instances whose liveness failed, and clears away stopped
        or crash-looping ones (the pass's plan then replaces them: they no longer count).
        """
        groups: dict[tuple[str, str], list[_Instance]] = defaultdict(list)
        for c in self._containers(role="instance"):
            inst = _instance(c)
            groups[(inst.endpoint, inst.deployment)].append(inst)
        for router in self._containers(role="router"):
            endpoint = router.labels[f"{L}endpoint"]
            try:
                self._settle_endpoint(endpoint, router, groups)
            except (TargetError, docker.errors.DockerException) as exc:
                # One endpoint's trouble must not stop the pass for the others: its own
                # steps fail, with the reason, if it matters to them.
                log.warning("settle_failed", endpoint=endpoint, error=str(exc))

    def _settle_endpoint(
        self, endpoint: str, router: Any, groups: Mapping[tuple[str, str], list[_Instance]]
    ) -> None:
        if router.status != "running":
            creds = self.credentials.load(endpoint)
            if creds is not None:
                router.remove(force=True)
                self._ensure_router(endpoint, creds, lambda _m: None)
        config = self._read_router_config(endpoint)
        if config is None:
            return
        changed = config
        names = {r.name for r in config.deployments} | {d for e, d in groups if e == endpoint}
        for name in sorted(names):
            group = groups.get((endpoint, name), [])
            route = config.deployment(name)
            before = list(route.instances) if route else []
            broken = []
            for inst in group:
                if inst.state == "running" and inst.health == "unhealthy":
                    # Liveness failed: restarted in place (as Kubernetes does), routed
                    # again by a later settle once it answers.
                    log.warning("instance_restarted", instance=inst.name, reason="liveness")
                    inst.container.restart(timeout=2)
                elif inst.failed:
                    broken.append(inst)
            if broken:
                log.warning(
                    "instances_removed",
                    instances=[i.name for i in broken],
                    reason="stopped or crash-looping",
                )
                self._remove(broken)
            alive = [i for i in group if not i.failed]
            alive_addresses = {i.address for i in alive}
            routed = [a for a in before if a in alive_addresses]
            digests = {i.digest for i in alive if i.address in routed}
            if not digests and alive:
                # Nothing of it is routed (a pass killed between starting a deployment's
                # instances and routing them): its newest version is.
                digests = {max(alive, key=lambda i: i.created).digest}
            # No step runs while a pass settles: an instance no router knows was left by
            # a pass that stopped half-way. Of the routed version and answering, it is
            # routed; answering but of another version, it is left to the update that
            # the plan will hold; not answering, it goes (the plan replaces it, and
            # waits for its replacement properly).
            unrouted = [i for i in alive if i.address not in routed]
            answering = [i for i in unrouted if self._ready(i)]
            orphans = [i for i in unrouted if i not in answering]
            if orphans:
                log.warning(
                    "instances_removed", instances=[i.name for i in orphans], reason="orphan"
                )
                self._remove(orphans)
            extra = [i for i in answering if i.digest in digests]
            addresses = sorted(routed + [i.address for i in extra])
            if addresses == before or (route is None and not addresses):
                continue
            spec = None
            if route is None:
                with contextlib.suppress(ValueError, KeyError, TypeError, json.JSONDecodeError):
                    spec = deployment_from_json(json.loads(extra[0].container.labels[f"{L}spec"]))
            changed = self._with_route(changed, name, addresses, spec)
        if changed != config:
            log.info("router_settled", endpoint=endpoint)
            self._write_router_config(endpoint, changed)

    def endpoint_credentials(self, endpoint: str) -> EndpointCredentials:
        creds = self.credentials.load(endpoint)
        if creds is None:
            raise TargetError(f"endpoint {endpoint} has no credentials on target {self.name}")
        return creds

    def token(self, endpoint: str, *, now: float, ttl_s: int = 3600) -> dict[str, Any]:
        creds = self.endpoint_credentials(endpoint)
        return issue_token(creds.token_secret_bytes, endpoint, now=now, ttl_s=ttl_s)

    def autoscaler(self, lock: threading.Lock) -> DockerAutoscaler:
        """The loop that scales target_utilization deployments (run by the daemon)."""
        return DockerAutoscaler(self, lock)

    def regenerate_key(self, endpoint: str, which: str) -> None:
        creds = self.endpoint_credentials(endpoint).regenerated(which)
        self.credentials.save(endpoint, creds)
        config = self._credentials_config(self._router_config(endpoint), creds)
        self._write_router_config(endpoint, config)

    def logs(
        self, endpoint: str, deployment: str, *, instance: int | None = None, lines: int = 100
    ) -> str:
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


# --- helpers --------------------------------------------------------------------------


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
    )


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

    The inference server listens on its port and is asked inside its own container. A
    custom container listens where its inference_config says, and is asked from the
    router, over the network the requests take.
    """
    config = spec.environment.inference_config
    if config is None:
        return SERVER_PORT, SERVER_READY_URL, False
    ready = config.readiness_route
    return config.scoring_route.port, f"http://{{alias}}:{ready.port}{ready.path}", True


def _tail(container: Any, lines: int = LOG_TAIL) -> str:
    try:
        return bytes(container.logs(tail=lines)).decode(errors="replace")
    except docker.errors.APIError:
        return ""


def _routes_of(spec: DeploymentSpec) -> tuple[str, str]:
    """Scoring and liveness paths: the inference server's, or a custom container's own."""
    config = spec.environment.inference_config
    if config is None:
        return "/score", "/"
    return config.scoring_route.path, config.liveness_route.path


def _environment(spec: DeploymentSpec) -> dict[str, str]:
    env = {"WORKER_COUNT": str(spec.request_settings.max_concurrent_requests_per_instance)}
    # The user's variables come last: they override ours (SPEC-REFERENCE.md).
    env.update(dict(spec.environment_variables))
    return env


def _healthcheck(spec: DeploymentSpec) -> dict[str, Any] | None:
    if spec.environment.custom_container:
        return None
    probe = spec.readiness_probe
    second = 1_000_000_000
    return {
        "test": ["CMD", *_probe_command(SERVER_READY_URL, probe.timeout)],
        "interval": probe.period * second,
        "timeout": probe.timeout * second,
        "retries": probe.failure_threshold,
        "start_period": probe.initial_delay * second,
    }


def _progress(say: ProgressCallback) -> Any:
    def callback(event: str, message: str) -> None:
        say(message)

    return callback
