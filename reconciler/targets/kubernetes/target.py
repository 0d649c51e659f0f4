"""The Kubernetes target: endpoints as objects of one namespace of a cluster.

It applies the manifests of `manifests` with server-side apply under our field manager and
reads everything back by our labels: the cluster is the record. A deployment's applied
spec and digest are annotations of its Deployment; an endpoint's declared settings are a
ConfigMap; traffic is what the router's config (builtin) or the HTTPRoute (gateway-api)
says; health is the Deployment's status (`rollout`). Objects without our labels are never
changed or deleted.

Steps that start instances never wait for the rollout (a pass never blocks): they apply
the Deployment and return `Waiting`; observe reports the rollout (ready replicas, and
Failed with the failing pod's last log lines when a pod cannot start), and the executor's
health gates read that. With the builtin router, a deployment's Service slots and its route
follow once its rollout is complete: observe names a deployment rolled out but not routed
as it should be (LiveDeployment.repair), and the plan's repair_deployment step routes it.

Router config changes (traffic, mirror, routes, keys) are written to the router's Secret,
and a step is done once every ready router pod says (through the API server's pod proxy)
that it serves the new config's digest. Pods that lag are annotated with that digest, which
makes their kubelet refresh the mounted Secret at once instead of at its next periodic
sync; when the reconciler runs in the cluster it also posts the new config to each router
pod's admin path, which makes it live at once (see _await_config_served). A step never
waits long for it: after a few seconds (or at once, where the routers cannot say what they
serve) it ends in progress. The Secret records the write (when, and the traffic known
served before it); until the routers serve it, or config_propagation_s after the write
where they cannot say, observe reports that earlier traffic, so the next pass plans the
traffic step again (it finds the config written and waits no longer than it did) and a
deletion of the deployment traffic moved off waits behind it. Past that time a ready
router pod that says it serves another config (one the record knows: it keeps those a
router may still serve) keeps that config's traffic the endpoint's, and holds a deletion.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reconciler.endpoints.comparison import router_comparison, spec_tolerance
from reconciler.endpoints.credentials import EndpointCredentials, new_credentials
from reconciler.logs import get_logger
from reconciler.model.codec import deployment_from_json, endpoint_from_json
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.errors import ErrorCode
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
from reconciler.model.specs import DeploymentSpec, EndpointSpec, ScaleSettings, Weights, weight_of
from reconciler.model.state import (
    DesiredState,
    LiveDeployment,
    LiveEndpoint,
    LiveState,
    ProvisioningState,
)
from reconciler.router.admin import config_post
from reconciler.router.config import ConfigError, RouterConfig, parse_config
from reconciler.router.tokens import issue_token
from reconciler.targets.base import (
    ProgressCallback,
    StepHandlers,
    Target,
    TargetError,
    Waiting,
    dispatch,
)
from reconciler.targets.capabilities import (
    Builds,
    ChecksDesired,
    HasCredentials,
    HasLogs,
    HasPreviousLogs,
    HasRouterMetrics,
    HasRouterMetricsEach,
)
from reconciler.targets.kubernetes import manifests as m
from reconciler.targets.kubernetes.client import KubeClient, NotFound, connect
from reconciler.targets.kubernetes.connections import missing_keys, missing_warnings
from reconciler.targets.kubernetes.images import ImageSource, RegistryImages, router_reference
from reconciler.targets.kubernetes.options import KubernetesOptions
from reconciler.targets.kubernetes.rollout import Rollout, rollout
from reconciler.targets.ownership import made_here
from reconciler.tracebacks import last_exception

log = get_logger("reconciler.kubernetes")

INSTANCE_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "NetworkPolicy")
LOG_TAIL = 30
# Log lines read to find the exception an init() raised (near the end of a short log).
EXCEPTION_SCAN_LINES = 400


class KubernetesTarget:
    """Target protocol on one namespace of a Kubernetes cluster."""

    def __init__(
        self,
        options: KubernetesOptions,
        *,
        repo_root: Path,
        client: KubeClient | None = None,
        images: ImageSource | None = None,
        in_cluster: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        repository: str | None = None,
    ) -> None:
        self.options = options
        self.name = options.name
        self.repo_root = repo_root
        # The repository that applies (GitSource.identity): repositories that kept one
        # target name on one namespace each manage only the endpoints they made (the
        # REPOSITORY_ANNOTATION of their objects). None: every endpoint of the target is
        # this one's (tests, the API).
        self.repository = repository
        # The checkout's own folder: what it made before it had a remote (`path:FOLDER`)
        # stays its own once a remote is added.
        self._checkout = Path(repo_root).resolve()
        # Endpoints found this repository's and this target's (_check_owned) since the last
        # observe: the steps of a pass and the reads after it (credentials, logs, metrics)
        # ask the three lists once. A refusal is never kept: it is asked again.
        self._owned: set[str] = set()
        self._client = client
        self.images: ImageSource = images or RegistryImages(options, repo_root=repo_root)
        self.in_cluster = in_cluster
        self.router_admin_port = m.ROUTER_PORT
        self.sleep = sleep
        # Wall time: the deadline of a router config write is kept in the cluster (an
        # annotation), so another reconciler process reads it too.
        self.clock = clock
        # Per endpoint, the router config write (digest, time) found served past its
        # deadline: no ready router pod said it serves another. Observe asks them no more.
        self._settled: dict[str, tuple[str, float]] = {}

    # --- connection --------------------------------------------------------------------

    @property
    def client(self) -> KubeClient:
        if self._client is None:
            connection = connect(self.options)
            self._client = KubeClient(connection.api_client, connection.namespace)
            self.in_cluster = connection.in_cluster
        return self._client

    def context(self, router_image: str | None = None) -> m.RenderContext:
        return m.RenderContext(
            namespace=self.client.namespace,
            options=self.options,
            router_image=router_image or router_reference(self.options),
            repository=self.repository,
        )

    # --- ownership ---------------------------------------------------------------------

    def _check_names_free(self, manifests: Iterable[Mapping[str, Any]]) -> None:
        """TargetError when an object of a name this creation would write is someone
        else's (no managed-by label of ours): applied with force it would be taken over,
        and deleted with the endpoint later."""
        for manifest in manifests:
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            found = self.client.get(kind, name)
            if found is not None and not _ours(found):
                raise TargetError(
                    f"{kind} {name} on namespace {self.client.namespace} exists and is not "
                    f"the reconciler's (no {m.MANAGED_BY}={m.MANAGER} label): it is not "
                    "taken over; rename the endpoint or deployment, or remove that object",
                    code=ErrorCode.OWNED_ELSEWHERE,
                )

    def _made_here(self, obj: Mapping[str, Any]) -> bool:
        """Whether this repository made the object (none recorded: made before
        repositories were recorded, or through the API; anyone's, as before)."""
        owner = _annotation(obj, m.REPOSITORY_ANNOTATION) or None
        return made_here(owner, repository=self.repository, checkout=self._checkout)

    def _check_owned(self, endpoint: str) -> None:
        """TargetError when the endpoint's objects on the namespace are another's: another
        target's (object names are the endpoint's alone, so this target would write over
        them), or another repository's. Read by name, not by what observe lists: an
        endpoint whose record and keys are gone is known by its router and instances.
        Once found this one's, not asked again until the next observe."""
        if endpoint in self._owned:
            return
        selector = f"{m.MANAGED_BY}={m.MANAGER},{m.ENDPOINT_LABEL}={endpoint}"
        for kind in ("ConfigMap", "Secret", "Deployment"):
            for obj in self.client.list(kind, selector):
                if not _carries(obj, {m.ENDPOINT_LABEL: endpoint}):
                    continue  # a server that ignored the selector
                other = _label(obj, m.TARGET_LABEL)
                if other != self.name:
                    raise TargetError(
                        f"endpoint {endpoint} on namespace {self.client.namespace} is managed "
                        f"by target {other} (its objects are named after the endpoint alone); "
                        f"give the endpoint another name, or target {self.name} another "
                        "namespace",
                        code=ErrorCode.OWNED_ELSEWHERE,
                    )
                if not self._made_here(obj):
                    owner = _annotation(obj, m.REPOSITORY_ANNOTATION)
                    raise TargetError(
                        f"endpoint {endpoint} on target {self.name} is managed by another "
                        f"repository ({owner}); give this repository's target another name "
                        "or namespace in reconciler.yaml",
                        code=ErrorCode.OWNED_ELSEWHERE,
                    )
        self._owned.add(endpoint)

    def _list(self, kind: str, **labels: str) -> list[dict[str, Any]]:
        selector = m.managed_selector(self.context(), **labels)
        try:
            return self.client.list(kind, selector)
        except NotFound:
            if kind == "HTTPRoute":
                raise TargetError(
                    "router: gateway-api, but the cluster has no HTTPRoute API "
                    "(install the Gateway API CRDs)",
                    code=ErrorCode.GATEWAY_API_MISSING,
                ) from None
            raise

    # --- observe -----------------------------------------------------------------------

    def observe(self) -> LiveState:
        self._owned.clear()  # a new pass: whose each endpoint is is asked again
        role = m.ROLE_LABEL
        records = {
            _label(o, m.ENDPOINT_LABEL): o
            for o in self._list("ConfigMap", **{role: m.ROLE_ENDPOINT})
        }
        routers: dict[str, dict[str, Any]] = {}
        instances: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for d in self._list("Deployment"):
            if _label(d, role) == m.ROLE_ROUTER:
                routers[_label(d, m.ENDPOINT_LABEL)] = d
            elif _label(d, role) == m.ROLE_INSTANCE:
                instances[_label(d, m.ENDPOINT_LABEL)].append(d)
        pods: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for pod in self._list("Pod", **{role: m.ROLE_INSTANCE}):
            pods[(_label(pod, m.ENDPOINT_LABEL), _label(pod, m.DEPLOYMENT_LABEL))].append(pod)
        configs: dict[str, RouterConfig | None] = {}
        pending: dict[str, _ConfigWrite] = {}
        routes: dict[str, dict[str, Any]] = {}
        router_secrets: list[dict[str, Any]] = []
        # Endpoints whose keys Secret is there and readable (a repair issues new keys).
        keyed: set[str] = set()
        if self.options.gateway_api:
            for route in self._list("HTTPRoute", **{role: m.ROLE_ROUTER}):
                if route["metadata"]["name"] == m.route_name(_label(route, m.ENDPOINT_LABEL)):
                    routes[_label(route, m.ENDPOINT_LABEL)] = route
            secrets = self._list("Secret", **{role: m.ROLE_ENDPOINT})
        else:
            # The keys and the router config Secrets, in one list.
            secrets = self._list("Secret")
            router_secrets = [s for s in secrets if _label(s, role) == m.ROLE_ROUTER]
            for secret in router_secrets:
                endpoint = _label(secret, m.ENDPOINT_LABEL)
                configs[endpoint] = _parse_router_secret(secret)
                write = self._pending_write(secret, configs[endpoint])
                if write is not None:
                    pending[endpoint] = write
        for secret in secrets:
            endpoint = _label(secret, m.ENDPOINT_LABEL)
            if _label(secret, role) == m.ROLE_ENDPOINT and secret["metadata"]["name"] == (
                m.keys_secret_name(endpoint)
            ):
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    m.credentials_from_secret(secret.get("data") or {})
                    keyed.add(endpoint)
        names = set(records) | set(routers) | set(configs) | set(routes)
        # Endpoints another repository made (any of their objects says so): neither shown,
        # planned for nor pruned, whatever is left of them.
        made = [*records.values(), *routers.values(), *routes.values(), *router_secrets]
        made += [d for found in instances.values() for d in found]
        foreign = {_label(o, m.ENDPOINT_LABEL) for o in made if not self._made_here(o)}
        names -= foreign
        deployments: list[LiveDeployment] = []
        for endpoint in sorted(set(instances) - foreign):
            for d in instances[endpoint]:
                name = _label(d, m.DEPLOYMENT_LABEL)
                deployments.append(
                    self._observe_deployment(
                        d, pods.get((endpoint, name), []), config=configs.get(endpoint)
                    )
                )
        endpoints = []
        for endpoint in sorted(names):
            services = {
                m.deployment_object_name(endpoint, _label(d, m.DEPLOYMENT_LABEL)): _label(
                    d, m.DEPLOYMENT_LABEL
                )
                for d in instances.get(endpoint, [])
            }
            endpoints.append(
                self._observe_endpoint(
                    endpoint,
                    record=records.get(endpoint),
                    router=routers.get(endpoint),
                    config=configs.get(endpoint),
                    route=routes.get(endpoint),
                    pending=pending.get(endpoint),
                    services=services,
                    running=set(services.values()),
                    keyed=endpoint in keyed,
                )
            )
        deployments.sort(key=lambda d: d.key)
        return LiveState(
            endpoints=tuple(endpoints), deployments=tuple(deployments), target=self.name
        )

    def _observe_endpoint(
        self,
        name: str,
        *,
        record: Mapping[str, Any] | None,
        router: Mapping[str, Any] | None,
        config: RouterConfig | None,
        route: Mapping[str, Any] | None,
        pending: _ConfigWrite | None = None,
        services: Mapping[str, str],
        running: set[str],
        keyed: bool = True,
    ) -> LiveEndpoint:
        spec, known = EndpointSpec(name), False
        if record is not None:
            try:
                text = (record.get("data") or {})[m.ENDPOINT_RECORD]
                spec, known = endpoint_from_json(json.loads(text)), True
            except (KeyError, ValueError, TypeError):
                pass
        state = ProvisioningState.SUCCEEDED
        notes: tuple[str, ...] = ()
        if self.options.gateway_api:
            if route is None:
                state = ProvisioningState.FAILED
            else:
                traffic, mirror = m.route_traffic(route, services)
                spec = replace(spec, traffic=traffic, mirror_traffic=mirror)
                if _route_refused(route):
                    state = ProvisioningState.FAILED
            service = m.route_name(name)
        else:
            if config is not None:
                spec = replace(
                    spec,
                    auth_mode=config.auth_mode,
                    traffic=config.traffic,
                    mirror_traffic=config.mirror_traffic,
                    shadow_comparison=spec_tolerance(config.shadow_comparison),
                )
            if pending is not None:
                # Written, not yet known served: the routers may serve the earlier
                # traffic, so that is what the endpoint has (the next pass's traffic
                # step finds the config written and completes once it is served).
                traffic, mirror = pending.traffic, pending.mirror
                if pending.served_now is not None:
                    # Past the deadline a ready router pod says it serves another
                    # config: it gets requests, so the endpoint has what each ready
                    # router serves (a deployment's largest weight among them).
                    traffic, mirror = pending.served_now
                    notes = tuple(_lag_note(name, pending, lag) for lag in pending.lagging)
                spec = replace(spec, traffic=traffic, mirror_traffic=mirror)
            if config is None or router is None:
                state = ProvisioningState.FAILED
            else:
                state = rollout(router).state
                if state == ProvisioningState.SCALING:
                    state = ProvisioningState.UPDATING  # endpoints have no Scaling state
            service = m.router_name(name)
        base = self.options.scoring_url.format(
            service=service, namespace=self.client.namespace, endpoint=name
        ).rstrip("/")
        repair = None
        # Its state deleted, or not what it should hold (truncated, another shape): a
        # repair writes it again, with new keys where theirs are gone.
        lost = [
            *(["its router config"] if not self.options.gateway_api and config is None else []),
            *([] if keyed else ["its keys"]),
            *([] if known else ["its record"]),
        ]
        if lost:
            renewed = "" if keyed else " (new keys are issued)"
            verb = "are" if len(lost) > 1 else "is"
            repair = f"{' and '.join(lost)} {verb} gone or unreadable: written again{renewed}"
        elif config is not None:
            busy = {n for n, _ in config.traffic} | {n for n, _ in config.mirror_traffic}
            stale = sorted(r.name for r in config.deployments if r.name not in running | busy)
            if stale:
                repair = f"its router routes deployments that are gone ({', '.join(stale)})"
        return LiveEndpoint(
            spec=spec,
            provisioning_state=state,
            scoring_uri=f"{base}/score",
            openapi_uri=f"{base}/swagger.json",
            spec_known=known,
            repair=repair,
            notes=notes,
        )

    def _observe_deployment(
        self,
        obj: Mapping[str, Any],
        pods: Sequence[Mapping[str, Any]],
        *,
        config: RouterConfig | None,
    ) -> LiveDeployment:
        key = ResourceKey(_label(obj, m.ENDPOINT_LABEL), _label(obj, m.DEPLOYMENT_LABEL))
        annotations = obj["metadata"].get("annotations") or {}
        digest = str(annotations.get(m.DIGEST_ANNOTATION, ""))
        spec = _recorded_spec(obj)
        current = [p for p in pods if _annotation(p, m.DIGEST_ANNOTATION) == digest]
        status = rollout(obj, current)
        if spec is not None and spec.digest != digest:
            spec = None  # written by another version of the recipe: trust the digest only
        error = status.error
        if error is not None and status.failing_pod is not None:
            # Failed: the pod's last lines say why (no step waits to fetch them any more),
            # and the exception of its attempt before the last restart (a crash loop's
            # current attempt may have written nothing yet).
            error += self._failure_note(status.failing_pod, key)
            tail = self._log_tail(status.failing_pod)
            error = f"{error}\n{tail}" if tail else error
        return LiveDeployment(
            key=key,
            digest=digest,
            instance_count=status.replicas,
            scale_settings=spec.scale_settings if spec is not None else ScaleSettings(),
            spec=spec,
            ready_instances=status.ready,
            provisioning_state=status.state,
            last_error=error,
            instance_type=spec.instance_type if spec is not None else None,
            repair=self._route_repair(spec, status, config),
        )

    def _route_repair(
        self, spec: DeploymentSpec | None, status: Rollout, config: RouterConfig | None
    ) -> str | None:
        """With the builtin router, a deployment whose rollout is complete is routed with
        as many slots as it has replicas (autoscaled: its route's settings), and its
        Service has those slots: what a repair does when the router's route differs."""
        if self.options.gateway_api or config is None or spec is None or not status.complete:
            return None
        wanted = m.deployment_route(self.context(), spec, replicas=status.replicas)
        route = config.deployment(spec.name)
        if route is None:
            return f"rolled out with {status.replicas} replica(s), not routed yet"
        if spec.scale_settings.autoscaled:
            route, wanted = replace(route, instances=()), replace(wanted, instances=())
        if route != wanted:
            return (
                f"rolled out with {status.replicas} replica(s); the router's route "
                f"({len(route.instances)} slot(s)) is routed again"
            )
        return None

    # --- apply -------------------------------------------------------------------------

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> Waiting | None:
        self._check_owned(step.endpoint)
        return dispatch(self, step, progress)

    def _apply_all(self, manifests: Iterable[Mapping[str, Any]]) -> None:
        for manifest in manifests:
            self.client.apply(manifest)

    def _prune(
        self, keep: Iterable[Mapping[str, Any]], kinds: Sequence[str], **labels: str
    ) -> None:
        """Delete objects with our labels (and these) that are not in `keep`."""
        wanted = {m.object_key(k) for k in keep}
        for kind in kinds:
            try:
                found = self._list(kind, **labels)
            except (NotFound, TargetError) as exc:
                # Without the Gateway API there are no HTTPRoutes to prune.
                if kind == "HTTPRoute" and exc.code in (
                    ErrorCode.NOT_FOUND,
                    ErrorCode.GATEWAY_API_MISSING,
                ):
                    continue
                raise
            for obj in found:
                # The list was asked for our labels; they are checked again on the object
                # itself before it goes, whatever the server answered.
                if not _carries(obj, {m.TARGET_LABEL: self.name, **labels}):
                    continue
                if (kind, obj["metadata"]["name"]) not in wanted:
                    self.client.delete(kind, obj["metadata"]["name"])

    # endpoints

    def _credentials(self, endpoint: str) -> EndpointCredentials | None:
        secret = self.client.get("Secret", m.keys_secret_name(endpoint))
        if secret is None or not _carries(secret, {m.TARGET_LABEL: self.name}):
            return None
        try:
            return m.credentials_from_secret(secret.get("data") or {})
        except (KeyError, ValueError):
            return None

    def _endpoint_objects(
        self,
        spec: EndpointSpec,
        creds: EndpointCredentials,
        config: RouterConfig | None,
        ctx: m.RenderContext,
    ) -> list[dict[str, Any]]:
        names = self._deployment_names(spec.name)
        traffic, mirror = self._route_weights(spec.name)
        return m.endpoint_manifests(
            ctx,
            replace(spec, traffic=traffic, mirror_traffic=mirror),
            creds=creds,
            config=config,
            deployments=names,
        )

    def _create_endpoint(self, step: Step, do: CreateEndpoint, say: ProgressCallback) -> None:
        spec = do.spec
        creds = self._credentials(spec.name)
        if creds is None:
            creds = new_credentials(port=m.ROUTER_PORT, metrics_port=m.ROUTER_METRICS_PORT)
            say(f"keys generated for {spec.name} (Secret {m.keys_secret_name(spec.name)})")
        self._write_endpoint(spec, creds, say, new=True)

    def _write_endpoint(
        self,
        spec: EndpointSpec,
        creds: EndpointCredentials,
        say: ProgressCallback,
        *,
        new: bool = False,
    ) -> None:
        config: RouterConfig | None = None
        router_image = None
        before: dict[str, Any] | None = None
        current: RouterConfig | None = None
        if not self.options.gateway_api:
            before = self._router_secret(spec.name)
            current = _parse_router_secret(before) if before is not None else None
            base = current or m.router_config(spec, creds)
            config = replace(
                m.with_credentials(base, creds),
                auth_mode=spec.auth_mode,
                shadow_comparison=router_comparison(spec.shadow_comparison),
            )
            router_image = self.images.router_image(say)
        ctx = self.context(router_image)
        objects = self._endpoint_objects(spec, creds, config, ctx)
        if new:
            self._check_names_free(objects)
        changed = config is not None and config != current
        if config is not None and changed:
            self._record_write(config, before, current, applied=False)
        self._apply_all(objects)
        if config is not None and changed:
            self._record_write(config, before, current, applied=True)
        role = m.ROLE_LABEL
        for own_role in (m.ROLE_ENDPOINT, m.ROLE_ROUTER):
            self._prune(
                objects,
                ("Secret", "ConfigMap", "Deployment", "Service", "NetworkPolicy", "HTTPRoute"),
                **{m.ENDPOINT_LABEL: spec.name, role: own_role},
            )
        if not self.options.gateway_api and config is not None:
            # The router reads its config from the Secret when it starts; one that runs
            # already takes it now. No wait for its rollout (the endpoint's state says how
            # far it got), nor for its routers to serve the config: keys and settings
            # carry no later step, and a traffic change in it is reported as not yet
            # moved until they do (the write's record).
            self._push_config(spec.name, config, creds)
            waiting = self._await_config_served(config, say)
            if waiting is not None:
                say(f"not waiting for {waiting.what}")

    def _update_endpoint(self, step: Step, do: UpdateEndpoint, say: ProgressCallback) -> None:
        spec = do.spec
        creds = self._credentials(spec.name)
        if creds is None:
            raise TargetError(f"endpoint {spec.name} has no keys Secret", code=ErrorCode.NOT_FOUND)
        self._write_endpoint(spec, creds, say)

    def _repair_endpoint(self, step: Step, do: RepairEndpoint, say: ProgressCallback) -> None:
        """The endpoint's objects written again, and (builtin router) routes of deployments
        that are gone and have no traffic dropped, and of those that run and have none (a
        router config that was lost) added."""
        # A router config lost (deleted, unreadable): the one written anew routes nothing.
        config_lost = not self.options.gateway_api and self._router_config(step.endpoint) is None
        if self._credentials(step.endpoint) is None:
            # Its keys Secret deleted or unreadable: new keys, as for a new endpoint.
            self._create_endpoint(step, CreateEndpoint(do.spec), say)
        else:
            self._update_endpoint(step, UpdateEndpoint(do.spec), say)
        if self.options.gateway_api:
            return
        config = self._required_config(step.endpoint)
        running = set(self._deployment_names(step.endpoint))
        busy = {n for n, _ in config.traffic} | {n for n, _ in config.mirror_traffic}
        routes = tuple(r for r in config.deployments if r.name in running | busy)
        for name in sorted(running - {r.name for r in routes} if config_lost else ()):
            # Running, its route lost with the config: the route of what runs (a deployment
            # not routed yet for its rollout keeps waiting for its repair_deployment).
            obj, spec = self._running(step.endpoint, name)
            replicas = int(obj["spec"].get("replicas", 1))
            routes += (m.deployment_route(self.context(), spec, replicas=replicas),)
        if routes != config.deployments:
            # Routes of deployments that are gone: no request goes there either way.
            self._write_router_config(replace(config, deployments=routes), say)

    def _delete_endpoint(self, step: Step, do: DeleteEndpoint, say: ProgressCallback) -> None:
        kinds = (*INSTANCE_KINDS, "HTTPRoute", "Secret", "ConfigMap")
        self._prune((), kinds, **{m.ENDPOINT_LABEL: step.endpoint})
        say(f"endpoint {step.endpoint}: every object with its labels deleted")

    # router configuration and routes

    def _router_secret(self, endpoint: str) -> dict[str, Any] | None:
        secret = self.client.get("Secret", m.router_config_name(endpoint))
        return (
            secret if secret is not None and _carries(secret, {m.TARGET_LABEL: self.name}) else None
        )

    def _router_config(self, endpoint: str) -> RouterConfig | None:
        secret = self._router_secret(endpoint)
        return _parse_router_secret(secret) if secret is not None else None

    def _required_config(self, endpoint: str) -> RouterConfig:
        config = self._router_config(endpoint)
        if config is None:
            raise TargetError(f"endpoint {endpoint} has no router config", code=ErrorCode.NOT_FOUND)
        return config

    def _write_router_config(self, config: RouterConfig, say: ProgressCallback) -> Waiting | None:
        """Write the router's config; None once every router pod serves it, Waiting while
        they do not (yet) or cannot say (see _await_config_served).

        Also when the Secret already holds it: a pass that ended in progress after the
        write (or a step that failed waiting) is not taken for done until it is served.
        """
        before = self._router_secret(config.endpoint)
        current = _parse_router_secret(before) if before is not None else None
        if current != config:
            self._record_write(config, before, current, applied=False)
            self.client.apply(m.router_config_manifest(self.context(), config))
            self._record_write(config, before, current, applied=True)
            creds = self._credentials(config.endpoint)
            if creds is not None:
                self._push_config(config.endpoint, config, creds)
        return self._await_config_served(config, say)

    def _record_write(
        self,
        config: RouterConfig,
        before: Mapping[str, Any] | None,
        current: RouterConfig | None,
        *,
        applied: bool,
    ) -> None:
        """Record on the Secret, written with `config`, when it was written and the
        traffic the routers were known to serve before: what observe reports until they
        serve the new config. A write while an earlier one is still pending keeps the
        traffic known served before that one (the routers may serve either).

        Called before and after the write (`applied`): the record goes on a Secret that
        exists before it is written (a reconciler stopped in between leaves no config
        without its record: the record names the new digest, so it counts only once the
        config is there), and on a new one after."""
        if applied == (before is not None):
            return
        earlier = self._pending_write(before, current) if before is not None else None
        served: tuple[_Served, ...] = ()
        if current is not None:
            served = (_Served(current.digest(), current.traffic, current.mirror_traffic),)
        if earlier is not None:
            traffic, mirror = earlier.traffic, earlier.mirror
            served = (*earlier.before, *served)  # a router may still serve any of them
        elif current is not None:
            traffic, mirror = current.traffic, current.mirror_traffic
        else:
            traffic, mirror = (), ()  # a new router: it served nothing before
        record = _ConfigWrite(
            config.digest(),
            self.clock(),
            traffic,
            mirror,
            before=_served_before(served, written=config.digest()),
        )
        # The mark of an earlier write seen served goes: it may name this digest (a
        # config written again) while a router serves one written since.
        self.client.annotate(
            "Secret",
            m.router_config_name(config.endpoint),
            {m.CONFIG_WRITE_ANNOTATION: record.text(), m.CONFIG_SERVED_ANNOTATION: None},
        )

    def _pending_write(
        self, secret: Mapping[str, Any], config: RouterConfig | None
    ) -> _ConfigWrite | None:
        """The Secret's last write while its routers are not known to serve it: not seen
        serving it, and config_propagation_s not over; past that, while a ready router
        pod says it serves another config (the write's `lagging`; pods that cannot say or
        do not answer count as serving it, a pod that is not ready gets no request from
        its Service)."""
        write = _ConfigWrite.parse(_annotation(secret, m.CONFIG_WRITE_ANNOTATION))
        if write is None or config is None or write.digest != config.digest():
            return None  # no record (written before records), or written since without
        if _annotation(secret, m.CONFIG_SERVED_ANNOTATION) == write.digest:
            return None
        if self.clock() < write.at + self.options.config_propagation_s:
            return write
        settled = (write.digest, write.at)
        if self.options.config_propagation_s <= 0 or self._settled.get(config.endpoint) == settled:
            return None  # 0: no wait and no check at all
        lagging, others, silent = self._lagging_pods(config.endpoint, write)
        if not lagging:
            if not silent:  # a pod that did not answer is asked again next time
                self._settled[config.endpoint] = settled
            return None
        served = [(lag.traffic, lag.mirror) for lag in lagging]
        if others:
            served.append((config.traffic, config.mirror_traffic))
        union = (_union(t for t, _ in served), _union(w for _, w in served))
        return replace(write, lagging=lagging, served_now=union)

    def _lagging_pods(
        self, endpoint: str, write: _ConfigWrite
    ) -> tuple[tuple[_Lag, ...], bool, bool]:
        """The ready router pods of the endpoint that say they serve a config other than
        `write`'s, with the traffic of the config each serves: known from the write's
        record, else (an older record) the traffic known served before the write; whether
        other ready pods serve `write`'s config (or cannot say, and so count as serving
        it); and whether one of them did not answer (the API server could not reach it:
        it is not known to serve another config, but may say so later)."""
        known = {s.digest: s for s in write.before}
        lagging: list[_Lag] = []
        others = silent = False
        for pod in self._list("Pod", **{m.ENDPOINT_LABEL: endpoint, m.ROLE_LABEL: m.ROLE_ROUTER}):
            name = str(pod["metadata"]["name"])
            if (pod.get("metadata") or {}).get("deletionTimestamp") or not _pod_ready(pod):
                continue  # its Service sends it no new request
            served = self._served_digest(name)
            if served is None or served in (_UNREPORTED, write.digest):
                others = True
                silent = silent or served is None
                continue
            entry = known.get(served)
            traffic, mirror = (
                (entry.traffic, entry.mirror)
                if entry is not None
                else (write.traffic, write.mirror)
            )
            lagging.append(_Lag(name, served, traffic, mirror))
        return tuple(sorted(lagging, key=lambda lag: lag.pod)), others, silent

    def _pending(self, endpoint: str) -> _ConfigWrite | None:
        secret = self._router_secret(endpoint)
        if secret is None:
            return None
        return self._pending_write(secret, _parse_router_secret(secret))

    def _still_served(self, endpoint: str, name: str) -> str | None:
        """Why the routers may still send the deployment requests although the config
        gives it none (builtin router): its write is pending and the traffic before it
        gave it some, or past the deadline a ready router pod serves a config that does.
        None when they do not."""
        pending = None if self.options.gateway_api else self._pending(endpoint)
        if pending is None:
            return None
        if pending.lagging:
            for lag in pending.lagging:
                if weight_of(lag.traffic, name) or weight_of(lag.mirror, name):
                    return _lag_note(endpoint, pending, lag)
            return None
        if weight_of(pending.traffic, name) or weight_of(pending.mirror, name):
            return (
                f"the routers may still serve the traffic before router config "
                f"{pending.digest[:12]}, written at {_clock_text(pending.at)}"
            )
        return None

    def _await_config_served(self, config: RouterConfig, say: ProgressCallback) -> Waiting | None:
        """None once every ready router pod of the endpoint says (`/-/config-digest`,
        read through the API server's pod proxy) that it serves `config`; Waiting when
        some do not within a few seconds (the next pass asks again); a TargetError
        (RouterConfigNotServed) naming the pods that still do not `config_propagation_s`
        after the write.

        A router reloads its config file when the file changes, and the kubelet refreshes
        a mounted Secret when it syncs the pod: about once a minute, or at once when the
        pod changes. So a router pod still serving an older config gets an annotation
        with the new digest, which makes its kubelet sync it now: the change is live in
        about a second instead of a minute or more. Where the pods cannot say what they
        serve (RBAC refuses the pod proxy, or routers of an older image), the config is
        taken as served `config_propagation_s` after its write: Waiting until then (no
        sleep), whichever pass asks. Pods that can say are asked all the same: one of
        them on another config is waited for (and fails the step past the deadline).
        """
        endpoint, digest = config.endpoint, config.digest()
        secret = self._router_secret(endpoint)
        write = self._pending_write(secret, config) if secret is not None else None
        if write is None and secret is not None:
            recorded = _ConfigWrite.parse(_annotation(secret, m.CONFIG_WRITE_ANNOTATION))
            if recorded is not None and recorded.digest == digest:
                if _annotation(secret, m.CONFIG_SERVED_ANNOTATION) == digest:
                    return None  # seen served already
                write = recorded  # its time is over: lagging pods now fail the step
        written_at = write.at if write is not None else self.clock()
        deadline = written_at + self.options.config_propagation_s
        patience = self.clock() + min(self.options.config_propagation_s, SERVED_PATIENCE_S)
        announced = False
        while True:
            lagging: list[str] = []
            blind = False
            for pod in self._list(
                "Pod", **{m.ENDPOINT_LABEL: endpoint, m.ROLE_LABEL: m.ROLE_ROUTER}
            ):
                name = str(pod["metadata"]["name"])
                if (pod.get("metadata") or {}).get("deletionTimestamp"):
                    continue  # leaving: it gets no new request
                nudged = _annotation(pod, m.ROUTER_CONFIG_ANNOTATION) == digest
                if not _pod_ready(pod):
                    # Gets no request yet; refreshed before it does.
                    if not nudged:
                        self._nudge_kubelet(name, digest)
                    continue
                served = self._served_digest(name)
                if served == _UNREPORTED:
                    blind = True  # cannot say; the others can
                    continue
                if served == digest:
                    continue
                lagging.append(f"{name} ({'serves ' + served[:12] if served else 'no answer'})")
                if not nudged:
                    self._nudge_kubelet(name, digest)
            if blind and not lagging:
                return self._wait_blind(endpoint, write, say)
            if not lagging:
                if write is not None:
                    self.client.annotate(
                        "Secret",
                        m.router_config_name(endpoint),
                        {m.CONFIG_SERVED_ANNOTATION: digest},
                    )
                return None
            if self.options.config_propagation_s <= 0:
                return None  # 0: no wait at all (the lagging pods are hurried all the same)
            if not announced:
                say(f"router config of {endpoint} written; waiting until its routers serve it")
                announced = True
            now = self.clock()
            if now >= deadline:
                raise TargetError(
                    f"router config {digest[:12]} of {endpoint} not served after "
                    f"{self.options.config_propagation_s:.0f} s by: {', '.join(lagging)}",
                    code=ErrorCode.ROUTER_CONFIG_NOT_SERVED,
                )
            if now >= patience:
                return Waiting(
                    f"router config {digest[:12]} of {endpoint} (written at "
                    f"{_clock_text(written_at)}) to be served by {', '.join(lagging)}; "
                    f"the kubelet has until {_clock_text(deadline)}"
                )
            self.sleep(min(self.options.poll_s, 0.25))

    def router_metrics(self, endpoint: str) -> str:
        """The /metrics of every ready router pod of the endpoint, joined (the dashboard's
        charts add them up). A TargetError when none answers."""
        return "\n".join(self.router_metrics_each(endpoint).values())

    def router_metrics_each(self, endpoint: str) -> dict[str, str]:
        """The /metrics of every ready router pod of the endpoint by pod name, read
        through the API server's pod proxy: a rollout's analysis follows each pod's
        counters on their own. A TargetError when none answers (no router pod ready, the
        pod proxy forbidden)."""
        self._check_owned(endpoint)
        texts: dict[str, str] = {}
        problems: list[str] = []
        for pod in self._list("Pod", **{m.ENDPOINT_LABEL: endpoint, m.ROLE_LABEL: m.ROLE_ROUTER}):
            name = str(pod["metadata"]["name"])
            if (pod.get("metadata") or {}).get("deletionTimestamp") or not _pod_ready(pod):
                continue
            status, text = self.client.pod_proxy_text(name, m.ROUTER_METRICS_PORT, "/metrics")
            if status == 200:
                texts[name] = text
            else:
                problems.append(f"{name} answered {status}")
        if not texts:
            why = "; ".join(problems) or "no router pod is ready"
            raise TargetError(f"the routers of {endpoint} gave no metrics: {why}")
        return texts

    def _served_digest(self, pod: str) -> str | None:
        """The digest a router pod says it serves; None when it does not answer (yet);
        _UNREPORTED when it cannot be asked (pod proxy forbidden) or cannot say (a router
        image older than /-/config-digest answers 404 itself)."""
        try:
            status, doc = self.client.pod_proxy_get(pod, m.ROUTER_PORT, m.ROUTER_DIGEST_PATH)
        except TargetError as exc:
            if exc.code == ErrorCode.FORBIDDEN:
                return _UNREPORTED
            raise
        if not isinstance(doc, dict):
            return None
        if doc.get("kind") == "Status":
            return None  # the API server's: the pod is not reachable, or gone
        if status == 404:
            return _UNREPORTED
        digest = doc.get("digest")
        return str(digest) if status == 200 and digest else None

    def _nudge_kubelet(self, pod: str, digest: str) -> None:
        try:
            self.client.annotate("Pod", pod, {m.ROUTER_CONFIG_ANNOTATION: digest})
        except NotFound:
            pass  # gone meanwhile
        except TargetError as exc:
            if exc.code != ErrorCode.FORBIDDEN:
                raise
            log.warning("router_pod_annotate_forbidden", pod=pod)

    def _wait_blind(
        self, endpoint: str, write: _ConfigWrite | None, say: ProgressCallback
    ) -> Waiting | None:
        """Routers that cannot say what they serve: the config is taken as served once the
        kubelet's refresh period (config_propagation_s) has passed since its write; until
        then the step is in progress (no sleep: a later pass finds it done). A config with
        no pending write (seen served, its time over, or written before writes were
        recorded) is served."""
        if write is None:
            return None
        deadline = write.at + self.options.config_propagation_s
        if self.clock() >= deadline:
            return None
        what = (
            f"the kubelet to refresh the router config of {endpoint}, written at "
            f"{_clock_text(write.at)}: its routers cannot say what they serve (pod proxy "
            f"forbidden, or an older router image), so it counts as served at "
            f"{_clock_text(deadline)} (+{self.options.config_propagation_s:.0f} s)"
        )
        say(f"waiting for {what}")
        return Waiting(what)

    def _push_config(self, endpoint: str, config: RouterConfig, creds: EndpointCredentials) -> bool:
        """Post the config to every ready router pod; True when each took it.

        Only from inside the cluster: pod addresses are not reachable from elsewhere.
        """
        if not self.in_cluster:
            return False
        pods = self._list("Pod", **{m.ENDPOINT_LABEL: endpoint, m.ROLE_LABEL: m.ROLE_ROUTER})
        all_took = True
        for pod in pods:
            address = (pod.get("status") or {}).get("podIP")
            if not address or not _pod_ready(pod):
                continue
            url, body, headers = config_post(
                f"http://{address}:{self.router_admin_port}", config, creds.admin_secret
            )
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    all_took = all_took and answer.status == 200
            except (urllib.error.URLError, OSError) as exc:
                log.warning("router_push_failed", pod=pod["metadata"]["name"], error=str(exc))
                all_took = False
        return all_took

    def _route_weights(self, endpoint: str) -> tuple[Weights, Weights]:
        """Traffic and mirror as the data plane has them now."""
        if self.options.gateway_api:
            route = self.client.get("HTTPRoute", m.route_name(endpoint))
            if route is None or not _ours(route):
                return (), ()
            services = {
                m.deployment_object_name(endpoint, n): n for n in self._deployment_names(endpoint)
            }
            return m.route_traffic(route, services)
        config = self._router_config(endpoint)
        return (config.traffic, config.mirror_traffic) if config is not None else ((), ())

    def _deployment_names(self, endpoint: str) -> list[str]:
        found = self._list(
            "Deployment", **{m.ENDPOINT_LABEL: endpoint, m.ROLE_LABEL: m.ROLE_INSTANCE}
        )
        return sorted(_label(d, m.DEPLOYMENT_LABEL) for d in found)

    def _write_routes(
        self,
        endpoint: str,
        *,
        deployments: Sequence[str],
        traffic: Weights,
        mirror: Weights,
    ) -> None:
        ctx = self.context()
        routes = m.http_route_manifests(
            ctx, endpoint, deployments=deployments, traffic=traffic, mirror_traffic=mirror
        )
        self._apply_all(routes)
        self._prune(
            routes, ("HTTPRoute",), **{m.ENDPOINT_LABEL: endpoint, m.ROLE_LABEL: m.ROLE_ROUTER}
        )

    def _route_deployment(
        self, spec: DeploymentSpec, *, replicas: int, say: ProgressCallback
    ) -> Waiting | None:
        """Make a deployment reachable through the endpoint: its route in the router's
        config, or its pin rule in the HTTPRoute."""
        endpoint = spec.endpoint_name
        if self.options.gateway_api:
            traffic, mirror = self._route_weights(endpoint)
            names = sorted(set(self._deployment_names(endpoint)) | {spec.name})
            self._write_routes(endpoint, deployments=names, traffic=traffic, mirror=mirror)
            return None
        config = self._required_config(endpoint)
        route = m.deployment_route(self.context(), spec, replicas=replicas)
        others = [r for r in config.deployments if r.name != spec.name]
        return self._write_router_config(replace(config, deployments=tuple([*others, route])), say)

    # deployments

    def _endpoint_exists(self, endpoint: str) -> None:
        if self.client.get("ConfigMap", m.record_name(endpoint)) is None:
            raise TargetError(f"endpoint {endpoint} does not exist", code=ErrorCode.NOT_FOUND)

    def desired_warnings(self, desired: DesiredState) -> tuple[Diagnostic, ...]:
        """Connection Secrets (or keys) the deployments reference and the namespace lacks."""
        return missing_warnings(
            desired.deployments,
            lambda name: self.client.get("Secret", name),
            self.client.namespace,
        )

    def _instance_labels(self, endpoint: str, deployment: str) -> dict[str, str]:
        return {
            m.ENDPOINT_LABEL: endpoint,
            m.DEPLOYMENT_LABEL: deployment,
            m.ROLE_LABEL: m.ROLE_INSTANCE,
        }

    def _apply_deployment(
        self,
        spec: DeploymentSpec,
        *,
        replicas: int,
        image: m.DeploymentImage,
        service_first: bool,
    ) -> Waiting | None:
        """Apply a deployment's objects and prune the ones it no longer has; never wait
        for the rollout. service_first: the Service (its slots) and the route before the
        Deployment, when the count falls (done at once); else the Deployment alone, and
        the Service and route follow once it is rolled out (a slot is only listed once
        pods serve it: a repair_deployment of a later pass), or at once with the Gateway
        API, whose Service sends only to ready pods."""
        missing = missing_keys(spec, lambda name: self.client.get("Secret", name))
        if missing:
            variable, what = missing[0]
            raise TargetError(
                f"{spec.key}: environment variable {variable} needs {what}",
                code=ErrorCode.MISSING_CONNECTION,
            )
        ctx = self.context()
        objects = m.deployment_manifests(ctx, spec, replicas=replicas, image=image)
        deployment = objects[0]
        rest = objects[1:]
        name = m.deployment_object_name(spec.endpoint_name, spec.name)
        labels = self._instance_labels(spec.endpoint_name, spec.name)
        autoscaled = spec.scale_settings.autoscaled
        if not autoscaled:
            # The autoscaler stops before replicas is ours again, not after.
            self._prune(objects, ("HorizontalPodAutoscaler",), **labels)
        if service_first or self.options.gateway_api:
            self._apply_all(rest)
        if autoscaled:
            live = self.client.get("Deployment", name)
            if live is None:
                # Created at its start count; the field is handed over on a later apply.
                deployment = {**deployment, "spec": {"replicas": replicas, **deployment["spec"]}}
            elif _sole_owner_of_replicas(live):
                self._hand_over_replicas(live)
        applied = self.client.apply(deployment)
        if autoscaled and int(applied["spec"].get("replicas", 1)) != replicas:
            self.client.scale("Deployment", name, replicas)
        if not (service_first or self.options.gateway_api):
            # Only the Service (its slots) waits for the rollout; the autoscaler and the
            # network policy belong to the Deployment from the start.
            self._apply_all([o for o in rest if o.get("kind") != "Service"])
        # What the deployment no longer has goes now (an HPA, a NetworkPolicy); its
        # Service, made later, is kept.
        self._prune(objects, INSTANCE_KINDS, **labels)
        if service_first:
            return None
        return Waiting(f"{spec.key} rolled out ({replicas} replica(s))")

    def _hand_over_replicas(self, live: Mapping[str, Any]) -> None:
        """Make `spec.replicas` shared before our manifests stop carrying it.

        Server-side apply removes a field its last owner stops applying, and the
        Deployment's default then sets replicas to 1 until the next scale: every pod but
        one would go. So a second field manager applies the current count first (the
        "transferring ownership" recipe of the Kubernetes docs); dropping the field from
        our apply then leaves the count as it is, and the autoscaler (or our scale
        subresource calls) moves it from there. A conflict means another manager already
        changed the count, and so owns it: nothing to hand over.
        """
        handover = {
            "apiVersion": live["apiVersion"],
            "kind": live["kind"],
            "metadata": {"name": live["metadata"]["name"], "namespace": self.client.namespace},
            "spec": {"replicas": int(live["spec"].get("replicas", 1))},
        }
        try:
            self.client.apply(handover, manager=m.HANDOVER_MANAGER, force=False)
        except TargetError as exc:
            if exc.code != ErrorCode.CONFLICT:
                raise

    def _create_deployment(
        self, step: Step, do: CreateDeployment, say: ProgressCallback
    ) -> Waiting | None:
        spec = do.spec
        self._endpoint_exists(spec.endpoint_name)
        spec = replace(spec, scale_settings=do.scale_settings)
        image = self.images.deployment_image(spec, say)
        say(f"{spec.key}: {do.instance_count} instance(s) of {image.image}")
        self._check_names_free(
            m.deployment_manifests(self.context(), spec, replicas=do.instance_count, image=image)
        )
        waiting = self._apply_deployment(
            spec, replicas=do.instance_count, image=image, service_first=False
        )
        if self.options.gateway_api:
            self._route_deployment(spec, replicas=do.instance_count, say=say)
        return waiting

    def _running(self, endpoint: str, deployment: str) -> tuple[dict[str, Any], DeploymentSpec]:
        obj = self.client.get("Deployment", m.deployment_object_name(endpoint, deployment))
        if obj is None or not _ours(obj):
            raise TargetError(
                f"deployment {endpoint}/{deployment} does not exist", code=ErrorCode.NOT_FOUND
            )
        spec = _recorded_spec(obj)
        if spec is None:
            raise TargetError(
                f"deployment {endpoint}/{deployment} has no readable spec annotation",
                code=ErrorCode.INVALID_STATE,
            )
        return obj, spec

    def _scale_deployment(
        self, step: Step, do: ScaleDeployment, say: ProgressCallback
    ) -> Waiting | None:
        """Change the count of what runs now; scaling comes before an update (rule 3), so
        the template stays the running one and no rollout starts."""
        obj, running = self._running(step.endpoint, do.spec.name)
        scale = do.scale_settings
        spec = replace(running, instance_count=do.instance_count, scale_settings=scale)
        image = _image_of(obj)
        growing = do.instance_count >= int(obj["spec"].get("replicas", 1))
        if not growing:
            # Fewer slots in the router before pods go. Not waited for past the short
            # poll: ending in progress here would leave the route below the running count,
            # which the next pass's repair_deployment routes back (they would take turns).
            routing = self._route_deployment(spec, replicas=do.instance_count, say=say)
            if routing is not None:
                say(f"not waiting for {routing.what}")
        say(f"{spec.key}: {do.instance_count} instance(s)")
        waiting = self._apply_deployment(
            spec, replicas=do.instance_count, image=image, service_first=not growing
        )
        if growing and self.options.gateway_api:
            self._route_deployment(spec, replicas=do.instance_count, say=say)
        return waiting

    def _update_deployment(
        self, step: Step, do: UpdateDeployment, say: ProgressCallback
    ) -> Waiting | None:
        """A rolling update by the deployment controller: maxSurge 20%, none unavailable.
        Its route (settings, slots) follows once it is rolled out (a repair)."""
        spec = do.spec
        self._running(spec.endpoint_name, spec.name)
        spec = replace(spec, scale_settings=do.scale_settings)
        image = self.images.deployment_image(spec, say)
        say(f"{spec.key}: rolling update to {image.image}")
        waiting = self._apply_deployment(
            spec, replicas=do.instance_count, image=image, service_first=False
        )
        if self.options.gateway_api:
            self._route_deployment(spec, replicas=do.instance_count, say=say)
        return waiting

    def _repair_deployment(
        self, step: Step, do: RepairDeployment, say: ProgressCallback
    ) -> Waiting | None:
        """A deployment rolled out: its Service gets its slots and the router its route,
        for the spec and replica count that run."""
        obj, running = self._running(step.endpoint, do.name)
        replicas = int(obj["spec"].get("replicas", 1))
        spec = replace(running, instance_count=replicas)
        objects = m.deployment_manifests(
            self.context(), spec, replicas=replicas, image=_image_of(obj)
        )
        self._apply_all(objects[1:])
        waiting = self._route_deployment(spec, replicas=replicas, say=say)
        say(f"{spec.key}: routed with {replicas} replica(s)")
        return waiting

    def _delete_deployment(
        self, step: Step, do: DeleteDeployment, say: ProgressCallback
    ) -> Waiting | None:
        name = do.name
        traffic, mirror = self._route_weights(step.endpoint)
        # And what the routers may still serve: traffic moved off it is not taken as
        # moved until they serve the config that moved it (a stale plan must not delete).
        if any(weight_of(w, name) for w in (traffic, mirror)):
            raise TargetError(
                f"deployment {step.endpoint}/{name} still has traffic",
                code=ErrorCode.HAS_TRAFFIC,
            )
        served = self._still_served(step.endpoint, name)
        if served is not None:
            raise TargetError(
                f"deployment {step.endpoint}/{name} still has traffic: {served}",
                code=ErrorCode.HAS_TRAFFIC,
            )
        if self.options.gateway_api:
            names = [n for n in self._deployment_names(step.endpoint) if n != name]
            self._write_routes(step.endpoint, deployments=names, traffic=traffic, mirror=mirror)
        else:
            config = self._router_config(step.endpoint)
            waiting: Waiting | None = None
            if config is not None and config.deployment(name) is not None:
                routes = tuple(r for r in config.deployments if r.name != name)
                waiting = self._write_router_config(replace(config, deployments=routes), say)
            elif config is not None and self._pending(step.endpoint) is not None:
                # Its route dropped by an earlier pass, not yet known served (a request
                # pinned to it would still go there): until it is.
                waiting = self._await_config_served(config, say)
            if waiting is not None:
                return waiting  # its objects go once no router routes to it
        self._prune((), INSTANCE_KINDS, **self._instance_labels(step.endpoint, name))
        say(f"deployment {step.endpoint}/{name} deleted")
        return None

    # traffic

    def _check_serving(self, endpoint: str, weights: Weights) -> None:
        for name, _ in weights:
            obj = self.client.get("Deployment", m.deployment_object_name(endpoint, name))
            routed = obj is not None and _ours(obj)
            if routed and not self.options.gateway_api:
                config = self._required_config(endpoint)
                route = config.deployment(name)
                routed = route is not None and bool(route.instances)
            if not routed:
                raise TargetError(
                    f"deployment {endpoint}/{name} is not routed by the endpoint",
                    code=ErrorCode.DEPLOYMENT_NOT_HEALTHY,
                )

    def _set_weights(
        self, endpoint: str, *, traffic: Weights, mirror: Weights, say: ProgressCallback
    ) -> Waiting | None:
        """Write the weights; Waiting until the routers serve them (builtin router)."""
        if self.options.gateway_api:
            self._write_routes(
                endpoint,
                deployments=self._deployment_names(endpoint),
                traffic=traffic,
                mirror=mirror,
            )
            return None
        config = self._required_config(endpoint)
        return self._write_router_config(
            replace(config, traffic=traffic, mirror_traffic=mirror), say
        )

    def _set_traffic(self, step: Step, do: SetTraffic, say: ProgressCallback) -> Waiting | None:
        self._check_serving(step.endpoint, do.weights)
        _, mirror = self._route_weights(step.endpoint)
        waiting = self._set_weights(step.endpoint, traffic=do.weights, mirror=mirror, say=say)
        say(f"traffic of {step.endpoint}: {dict(do.weights)}")
        return waiting

    def _set_mirror_traffic(
        self, step: Step, do: SetMirrorTraffic, say: ProgressCallback
    ) -> Waiting | None:
        self._check_serving(step.endpoint, do.weights)
        traffic, _ = self._route_weights(step.endpoint)
        waiting = self._set_weights(step.endpoint, traffic=traffic, mirror=do.weights, say=say)
        say(f"mirror traffic of {step.endpoint}: {dict(do.weights)}")
        return waiting

    def _pods_of(self, deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
        match = deployment["spec"]["selector"]["matchLabels"]
        selector = ",".join(f"{k}={v}" for k, v in match.items())
        return self.client.list("Pod", selector)

    def _failure_note(self, pod: str, key: ResourceKey) -> str:
        """`; the scoring script raised ...; whole log: ...` for a failing pod."""
        try:
            previous = self.client.previous_pod_log(pod, lines=EXCEPTION_SCAN_LINES)
        except TargetError:
            previous = None
        found = last_exception(previous or self._log_tail(pod, EXCEPTION_SCAN_LINES))
        command = f"reconcile logs {key.endpoint} {key.deployment}" + (
            " --previous" if previous else ""
        )
        if found is None:
            return f"; whole log: `{command}`"
        who = "the scoring script" if found.in_user_code else "the server"
        return f"; {who} raised {found.describe()}; whole log: `{command}`"

    def _log_tail(self, pod: str, lines: int = LOG_TAIL) -> str:
        try:
            return self.client.pod_log(pod, lines=lines)
        except TargetError:
            return ""

    # --- operations beyond the plan ----------------------------------------------------

    def endpoint_credentials(self, endpoint: str) -> EndpointCredentials:
        self._check_owned(endpoint)
        creds = self._credentials(endpoint)
        if creds is None:
            raise TargetError(f"endpoint {endpoint} has no keys on target {self.name}")
        return creds

    def token(self, endpoint: str, *, now: float, ttl_s: int = 3600) -> dict[str, Any]:
        creds = self.endpoint_credentials(endpoint)
        return issue_token(creds.token_secret_bytes, endpoint, now=now, ttl_s=ttl_s)

    def regenerate_key(self, endpoint: str, which: str) -> None:
        creds = self.endpoint_credentials(endpoint).regenerated(which)
        self.client.apply(m.keys_secret_manifest(self.context(), endpoint, creds))
        if not self.options.gateway_api:
            config = self._required_config(endpoint)
            # Not waited for: the routers take the new keys when the kubelet refreshes
            # their Secret (at once where they say what they serve: see the write).
            self._write_router_config(m.with_credentials(config, creds), lambda _m: None)

    def _instance_pods(
        self, endpoint: str, deployment: str, instance: int | None
    ) -> list[dict[str, Any]]:
        """The deployment's pods (only the `instance`-th when given); a TargetError when none
        (and when the endpoint is another target's or repository's)."""
        self._check_owned(endpoint)
        selector = m.managed_selector(self.context(), **self._instance_labels(endpoint, deployment))
        pods = self.client.list("Pod", selector)
        if instance is not None:
            pods = pods[instance : instance + 1]
        if not pods:
            raise TargetError(f"no pod of {endpoint}/{deployment} on target {self.name}")
        return pods

    def logs(
        self, endpoint: str, deployment: str, *, instance: int | None = None, lines: int = 100
    ) -> str:
        pods = self._instance_pods(endpoint, deployment, instance)
        chunks = []
        for pod in pods:
            name = pod["metadata"]["name"]
            chunks.append(f"==> {name} <==\n{self.client.pod_log(name, lines=lines)}")
        return "\n".join(chunks)

    def previous_logs(
        self, endpoint: str, deployment: str, *, instance: int | None = None, lines: int = 100
    ) -> str:
        """What each pod's container wrote before its last restart: Kubernetes keeps the
        attempt before the current one (a pod in CrashLoopBackOff: where init() raised)."""
        pods = self._instance_pods(endpoint, deployment, instance)
        chunks = []
        for pod in pods:
            name = pod["metadata"]["name"]
            text = self.client.previous_pod_log(name, lines=lines)
            if text is None:
                text = "(not restarted: its log holds one attempt; `reconcile logs` shows it)\n"
            chunks.append(f"==> {name} (before its last restart) <==\n{text}")
        return "\n".join(chunks)

    def render(
        self,
        desired: DesiredState,
        *,
        credentials: Mapping[str, EndpointCredentials] | None,
    ) -> list[dict[str, Any]]:
        """Manifests of a desired state with this target's namespace and images."""
        # No repository recorded: what is rendered is anyone's to apply.
        ctx = replace(self.context(), repository=None)
        return m.render_desired(ctx, desired, credentials=credentials)


# --- helpers --------------------------------------------------------------------------


def _label(obj: Mapping[str, Any], key: str) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(key, ""))


def _annotation(obj: Mapping[str, Any], key: str) -> str:
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(key, ""))


def _ours(obj: Mapping[str, Any]) -> bool:
    return _label(obj, m.MANAGED_BY) == m.MANAGER


def _carries(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Ours (managed-by) and every one of these labels."""
    return _ours(obj) and all(_label(obj, k) == v for k, v in labels.items())


def _sole_owner_of_replicas(deployment: Mapping[str, Any]) -> bool:
    """Whether our apply is the only owner of spec.replicas (managedFields)."""
    owners = [
        (entry.get("manager"), entry.get("operation"))
        for entry in (deployment.get("metadata") or {}).get("managedFields") or []
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    ]
    return owners == [(m.MANAGER, "Apply")]


def _recorded_spec(obj: Mapping[str, Any]) -> DeploymentSpec | None:
    text = _annotation(obj, m.SPEC_ANNOTATION)
    if not text:
        return None
    try:
        return deployment_from_json(json.loads(text))
    except (ValueError, TypeError, KeyError):
        return None


def _parse_router_secret(secret: Mapping[str, Any]) -> RouterConfig | None:
    import base64

    encoded = (secret.get("data") or {}).get(m.ROUTER_CONFIG_FILE)
    if not encoded:
        return None
    try:
        return parse_config(base64.b64decode(encoded))
    except (ConfigError, ValueError):
        return None


def _image_of(deployment: Mapping[str, Any]) -> m.DeploymentImage:
    """The images a live Deployment runs: a scale step keeps them exactly."""
    pod = deployment["spec"]["template"]["spec"]
    model = next(
        (c["image"] for c in pod.get("initContainers") or [] if c.get("name") == "model"), None
    )
    return m.DeploymentImage(image=str(pod["containers"][0]["image"]), model_image=model)


_UNREPORTED = "<unreported>"  # a router that cannot be asked what it serves
# How long a step polls for its routers to serve a config before it ends in progress
# (they usually do within a second: their kubelets are hurried).
SERVED_PATIENCE_S = 5.0


# Configs a write record keeps of those a router may still serve (the oldest go first:
# a pod serving one no longer kept counts as serving the traffic known served before).
SERVED_BEFORE_KEPT = 8


@dataclass(frozen=True, slots=True)
class _Served:
    """A router config a router pod may still serve: its digest and weights."""

    digest: str
    traffic: Weights
    mirror: Weights


@dataclass(frozen=True, slots=True)
class _Lag:
    """A ready router pod that, past its write's deadline, says it serves another config
    (`serves`, its digest), and the weights of that config."""

    pod: str
    serves: str
    traffic: Weights
    mirror: Weights


@dataclass(frozen=True, slots=True)
class _ConfigWrite:
    """A router config write as recorded on its Secret (CONFIG_WRITE_ANNOTATION)."""

    digest: str
    at: float  # wall time (the target's clock)
    traffic: Weights  # what the routers were known to serve before it
    mirror: Weights
    # The configs written before it that a router may still serve (the one known served
    # before it first, then those written while it was not known served yet).
    before: tuple[_Served, ...] = ()
    # Not recorded (observed): the pods found serving another config past the deadline,
    # and then the traffic and mirror of every config a ready router pod serves, joined.
    lagging: tuple[_Lag, ...] = ()
    served_now: tuple[Weights, Weights] | None = None

    def text(self) -> str:
        return json.dumps(
            {
                "digest": self.digest,
                "at": self.at,
                "traffic": [list(w) for w in self.traffic],
                "mirror": [list(w) for w in self.mirror],
                "before": [
                    {
                        "digest": s.digest,
                        "traffic": [list(w) for w in s.traffic],
                        "mirror": [list(w) for w in s.mirror],
                    }
                    for s in self.before
                ],
            },
            sort_keys=True,
        )

    @staticmethod
    def parse(text: str) -> _ConfigWrite | None:
        if not text:
            return None
        try:
            doc = json.loads(text)
            at = float(doc["at"])
            if not math.isfinite(at):
                return None  # a write whose time never comes would pend for ever
            return _ConfigWrite(
                digest=str(doc["digest"]),
                at=at,
                traffic=_weights(doc["traffic"]),
                mirror=_weights(doc["mirror"]),
                # Absent in records of earlier versions.
                before=tuple(
                    _Served(str(s["digest"]), _weights(s["traffic"]), _weights(s["mirror"]))
                    for s in doc.get("before") or ()
                ),
            )
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
            # Spoiled (an edit: an infinite weight, arrays nested past the recursion
            # limit...): no record (taken as served, as before records).
            return None


def _weights(doc: Any) -> Weights:
    return tuple((str(n), int(w)) for n, w in doc)


def _union(weights: Iterable[Weights]) -> Weights:
    """Each deployment with its largest weight among them (sorted by name)."""
    largest: dict[str, int] = {}
    for each in weights:
        for name, weight in each:
            largest[name] = max(weight, largest.get(name, 0))
    return tuple(sorted(largest.items()))


def _served_before(served: Sequence[_Served], *, written: str) -> tuple[_Served, ...]:
    """Each config once (its latest place), not the one written, the newest kept."""
    kept: list[_Served] = []
    for entry in reversed(served):
        if entry.digest != written and all(k.digest != entry.digest for k in kept):
            kept.append(entry)
    return tuple(reversed(kept[:SERVED_BEFORE_KEPT]))


def _lag_note(endpoint: str, write: _ConfigWrite, lag: _Lag) -> str:
    what = ", ".join(f"{n} {w}" for n, w in lag.traffic) or "none"
    return (
        f"router pod {lag.pod} of {endpoint} serves router config {lag.serves[:12]} "
        f"(traffic: {what}), not "
        f"{write.digest[:12]} written at {_clock_text(write.at)}: it gets requests while "
        f"it is ready, so that traffic stays the endpoint's until its kubelet refreshes "
        f"the config"
    )


def _clock_text(at: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _route_refused(route: Mapping[str, Any]) -> bool:
    """Whether a gateway said it does not accept the route."""
    for parent in (route.get("status") or {}).get("parents") or []:
        for condition in parent.get("conditions") or []:
            if condition.get("type") == "Accepted" and condition.get("status") == "False":
                return True
    return False


# What this target claims to be, checked by mypy here: a runtime isinstance check
# (how callers ask for a capability) sees only the names of members.
_IS_TARGET: type[Target] = KubernetesTarget
_HANDLES_STEPS: type[StepHandlers] = KubernetesTarget
_HAS_CREDENTIALS: type[HasCredentials] = KubernetesTarget
_HAS_LOGS: type[HasLogs] = KubernetesTarget
_HAS_PREVIOUS_LOGS: type[HasPreviousLogs] = KubernetesTarget
_BUILDS: type[Builds] = KubernetesTarget
_CHECKS_DESIRED: type[ChecksDesired] = KubernetesTarget
_HAS_ROUTER_METRICS: type[HasRouterMetrics] = KubernetesTarget
_HAS_ROUTER_METRICS_EACH: type[HasRouterMetricsEach] = KubernetesTarget
