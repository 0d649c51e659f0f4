"""Kubernetes manifests of endpoints and deployments. PURE: specs in, dicts out.

No I/O, no clock, no randomness: the same specs, keys and image names always give the same
manifests, so `reconcile render` output can be reviewed and diffed, and the target applies
exactly what render shows.

Per deployment: a Deployment (replicas, resources, probes, the runtime contract's
variables, rolling update 20% surge and none unavailable) and a Service; an HPA with
target_utilization; an egress NetworkPolicy with egress_public_network_access disabled.
Per endpoint: a Secret with the keys, a ConfigMap recording the endpoint's spec, and either
our router (Deployment + Service + its config in a Secret: it holds key hashes) or, with
`router: gateway-api`, HTTPRoutes; an ingress NetworkPolicy with public_network_access
disabled.

Everything carries `app.kubernetes.io/managed-by: ml-endpoint-reconciler` and the
`reconciler.dev/*` labels: the target observes and prunes by them and never touches an
object without them.

Service slots: the router balances over instances and admits at most
2 x max_concurrent_requests_per_instance x instances requests. Pods come and go without
the reconciler, so the router is not given pod addresses; each deployment's Service
instead exposes one port per instance slot (5001, 5002, ...), all onto the inference
server's port, and the router lists `service:port` per slot. kube-proxy spreads each
connection over the ready pods; the router's admission limit counts the right number of
instances.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from reconciler.diffing import target_count
from reconciler.endpoints.comparison import router_comparison
from reconciler.endpoints.credentials import EndpointCredentials
from reconciler.images.layout import SERVER_PORT, deployment_layout, route_of, serving
from reconciler.model.keys import ResourceKey
from reconciler.model.secrets import CREDENTIALS, METADATA, SecretRef
from reconciler.model.secrets import references as secret_references
from reconciler.model.secrets import variables as secret_variables
from reconciler.model.specs import (
    DeploymentSpec,
    EndpointSpec,
    ProbeSettings,
    Weights,
    spec_dict,
)
from reconciler.model.state import DesiredState
from reconciler.router.admin import CONFIG_DIGEST_PATH
from reconciler.router.config import DeploymentRoute, RouterConfig, dump_config
from reconciler.router.tokens import hash_key
from reconciler.targets.kubernetes.options import KubernetesOptions

Manifest = dict[str, Any]

MANAGER = "ml-endpoint-reconciler"
# Applies only a Deployment's replicas, to share the field before our manager drops it.
HANDOVER_MANAGER = f"{MANAGER}-handover"
MANAGED_BY = "app.kubernetes.io/managed-by"
PREFIX = "reconciler.dev/"
TARGET_LABEL = f"{PREFIX}target"
ENDPOINT_LABEL = f"{PREFIX}endpoint"
DEPLOYMENT_LABEL = f"{PREFIX}deployment"
ROLE_LABEL = f"{PREFIX}role"
# The repository that made the object (GitSource.identity: `github.com/org/repo` is no
# label value). Several repositories may keep one target name on one namespace.
REPOSITORY_ANNOTATION = f"{PREFIX}repository"
SPEC_ANNOTATION = f"{PREFIX}spec"
DIGEST_ANNOTATION = f"{PREFIX}digest"
# On router pods: the digest of the router config they should serve. Setting it makes the
# kubelet sync the pod, and so refresh its Secret volume at once (see target).
ROUTER_CONFIG_ANNOTATION = f"{PREFIX}router-config"
# On the router config Secret: the last write (JSON: digest, wall time, and the traffic
# and mirror the routers were known to serve before it), and the digest once every router
# was seen serving it. Observe reports the earlier traffic until the routers serve the
# new config, or config_propagation_s after the write where they cannot say (see target).
CONFIG_WRITE_ANNOTATION = f"{PREFIX}router-config-write"
CONFIG_SERVED_ANNOTATION = f"{PREFIX}router-config-served"
ROUTER_DIGEST_PATH = CONFIG_DIGEST_PATH
ENDPOINT_RECORD = "endpoint.json"
ROUTER_CONFIG_FILE = "router.json"
ROUTER_CONFIG_DIR = "/etc/reconciler-router"
ROUTER_PORT, ROUTER_METRICS_PORT = 8080, 9090
PIN_HEADER = "azureml-model-deployment"
GATEWAY_GROUP = "gateway.networking.k8s.io"
# Gateway API allows 16 rules per HTTPRoute: the weighted rule and 15 header pins.
PINS_PER_ROUTE = 15
MODEL_VOLUME = "model"
MODEL_STAGING = "/mnt/model"
IMAGE_RECIPE = "k8s-1"  # part of every image key: a new recipe means new tags

ROLE_INSTANCE, ROLE_ROUTER, ROLE_ENDPOINT = "instance", "router", "endpoint"


# --- names ------------------------------------------------------------------------------


def _short(text: str, size: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def dns_name(name: str) -> str:
    """A YAML name as a DNS label: lowercased; a hash keeps `My-Ep` apart from `my-ep`."""
    lower = name.lower()
    return lower if lower == name else f"{lower}-{_short(name, 5)}"


def deployment_object_name(endpoint: str, deployment: str) -> str:
    """Deployment, Service and HPA name of one deployment.

    `{endpoint}-{deployment}` alone is ambiguous (`a-b`/`cde` and `a`/`b-cde`), so a hash of
    the pair follows; the readable part is cut so that the name fits a DNS label.
    """
    readable = f"{endpoint}-{deployment}".lower()[:56].rstrip("-")
    return f"{readable}-{_short(f'{endpoint}/{deployment}')}"


def router_name(endpoint: str) -> str:
    return f"{dns_name(endpoint)}-router"


def keys_secret_name(endpoint: str) -> str:
    return f"{dns_name(endpoint)}-keys"


def router_config_name(endpoint: str) -> str:
    return f"{dns_name(endpoint)}-router-config"


def record_name(endpoint: str) -> str:
    return f"{dns_name(endpoint)}-endpoint"


def route_name(endpoint: str, part: int = 0) -> str:
    return dns_name(endpoint) if part == 0 else f"{dns_name(endpoint)}-pins-{part}"


def ingress_policy_name(endpoint: str) -> str:
    return f"{dns_name(endpoint)}-private"


def egress_policy_name(endpoint: str, deployment: str) -> str:
    return f"{deployment_object_name(endpoint, deployment)}-egress"


# --- context ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderContext:
    """What manifests need besides specs: where they go and which images exist."""

    namespace: str
    options: KubernetesOptions
    router_image: str
    # The repository that applies (GitSource.identity), recorded on every object it makes
    # (REPOSITORY_ANNOTATION); None: not recorded (render, the API).
    repository: str | None = None

    @property
    def target(self) -> str:
        return self.options.name


def labels(
    ctx: RenderContext, *, endpoint: str, role: str, deployment: str | None = None
) -> dict[str, str]:
    result = {
        MANAGED_BY: MANAGER,
        TARGET_LABEL: ctx.target,
        ENDPOINT_LABEL: endpoint,
        ROLE_LABEL: role,
    }
    if deployment is not None:
        result[DEPLOYMENT_LABEL] = deployment
    return result


def selector(ctx: RenderContext, *, endpoint: str, role: str, deployment: str | None = None) -> str:
    """The label selector of `labels(...)`, for list calls."""
    chosen = labels(ctx, endpoint=endpoint, role=role, deployment=deployment)
    return ",".join(f"{k}={v}" for k, v in chosen.items())


def managed_selector(ctx: RenderContext, **extra: str) -> str:
    parts = {MANAGED_BY: MANAGER, TARGET_LABEL: ctx.target, **extra}
    return ",".join(f"{k}={v}" for k, v in parts.items())


def _metadata(
    ctx: RenderContext,
    name: str,
    object_labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ctx.namespace, "labels": dict(object_labels)}
    every = dict(annotations or {})
    if ctx.repository is not None:
        every[REPOSITORY_ANNOTATION] = ctx.repository
    if every:
        meta["annotations"] = every
    return meta


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- images -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeploymentImage:
    """The images a deployment's pods run.

    image: the container's image. model_image: for a custom container (without code) with a
    model, an image holding the model files that an init container copies into the pod (the custom
    image itself runs as it is). built: made and pushed by us; False for a user's image.
    """

    image: str
    model_image: str | None = None
    built: bool = True


def image_name(options: KubernetesOptions, repository: str, tag: str) -> str:
    prefix = f"{options.registry}/" if options.registry else ""
    return f"{prefix}{repository}:{tag}"


def build_salt(options: KubernetesOptions) -> str:
    """Builder settings that change image content without changing a spec."""
    return canonical_json(
        {"base": options.base_image, "map": dict(options.image_map), "recipe": IMAGE_RECIPE}
    )


def image_key(spec: DeploymentSpec, *, salt: str) -> str:
    """Content address of a deployment's image: environment, code, model and where they go.

    Only what is in the image counts: a change of probes or instance count keeps the tag.
    """
    data = spec_dict(spec)
    wanted = {k: data.get(k) for k in ("environment", "code", "model", "model_mount_path")}
    return hashlib.sha256(canonical_json({"in": wanted, "salt": salt}).encode()).hexdigest()[:20]


def model_image_key(spec: DeploymentSpec, *, salt: str) -> str:
    data = spec_dict(spec)
    wanted = {k: data.get(k) for k in ("model", "model_mount_path")}
    return hashlib.sha256(canonical_json({"model": wanted, "salt": salt}).encode()).hexdigest()[:20]


def plan_image(spec: DeploymentSpec, options: KubernetesOptions) -> DeploymentImage:
    salt = build_salt(options)
    env = spec.environment
    # With code to add, a custom image gets the thin code layer like any other (the Docker
    # target's builder); without, it runs as it is.
    if env.custom_container and env.image and not env.build_context and spec.code is None:
        model_image = None
        if spec.model is not None:
            model_image = image_name(options, "reconciler-model", model_image_key(spec, salt=salt))
        return DeploymentImage(image=env.image, model_image=model_image, built=False)
    return DeploymentImage(image=image_name(options, "reconciler-app", image_key(spec, salt=salt)))


# --- deployments ------------------------------------------------------------------------


def slot_count(spec: DeploymentSpec, replicas: int, options: KubernetesOptions) -> int:
    """How many `service:port` instances the router lists for a deployment."""
    if options.gateway_api:
        return 1
    scale = spec.scale_settings
    if scale.autoscaled:
        # The autoscaler moves the count between passes: the router is sized for the most.
        return max(scale.max_instances or 1, scale.min_instances or 1, 1)
    return max(replicas, 1)


def _server_ports(spec: DeploymentSpec) -> tuple[int, str, int, str, int, str]:
    """(scoring port, path, liveness port, path, readiness port, path): the inference
    server's, Triton's (a no-code triton_model), or a custom container's."""
    routes = serving(spec)
    return (
        routes.scoring.port,
        routes.scoring.path,
        routes.liveness.port,
        routes.liveness.path,
        routes.readiness.port,
        routes.readiness.path,
    )


def _probe(settings: ProbeSettings, *, port: int, path: str, liveness: bool) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "initialDelaySeconds": settings.initial_delay,
        "periodSeconds": settings.period,
        "timeoutSeconds": settings.timeout,
        # The API server refuses a liveness probe with a success threshold other than 1.
        "successThreshold": 1 if liveness else settings.success_threshold,
        "failureThreshold": settings.failure_threshold,
    }


def _quantity_cpu(cores: float) -> str:
    return f"{max(round(cores * 1000), 100)}m"


def _quantity_memory(gigabytes: float) -> str:
    return f"{max(round(gigabytes * 1024), 256)}Mi"


def resources_of(spec: DeploymentSpec, options: KubernetesOptions) -> dict[str, Any]:
    """`resources` as written (Kubernetes deployments), else the instance type's, scaled.

    From an instance type, requests equal limits: a pod gets the whole instance, as a VM of
    that size would give it (and the Guaranteed QoS class keeps it from eviction first).
    """
    if spec.resources is not None and (spec.resources.requests or spec.resources.limits):
        result: dict[str, Any] = {}
        if spec.resources.requests:
            result["requests"] = dict(spec.resources.requests)
        if spec.resources.limits:
            result["limits"] = dict(spec.resources.limits)
        return result
    kind = options.instance_type(spec.instance_type)
    if kind is None:
        return {}
    scale = options.resource_scale
    amounts: dict[str, str] = {
        "cpu": _quantity_cpu(kind.cores * scale),
        "memory": _quantity_memory(kind.memory_gb * scale),
    }
    limits = dict(amounts)
    if kind.gpus:
        limits["nvidia.com/gpu"] = str(kind.gpus)
    return {"requests": amounts, "limits": limits}


def environment_of(spec: DeploymentSpec) -> list[dict[str, Any]]:
    """The runtime contract's variables, then the user's (which override ours).

    A secret reference becomes a `secretKeyRef` to the connection's Secret, which the
    target never writes (connection_secret_name, connection_secret_key)."""
    layout = deployment_layout(spec)
    values: dict[str, str] = dict(layout.environment())
    if not spec.environment.custom_container:
        values["WORKER_COUNT"] = str(spec.request_settings.max_concurrent_requests_per_instance)
    values.update(dict(spec.environment_variables))
    refs = dict(secret_variables(spec))
    env: list[dict[str, Any]] = []
    for name, value in values.items():
        ref = refs.get(name)
        if ref is None:
            env.append({"name": name, "value": value})
            continue
        key_ref = {
            "name": connection_secret_name(ref.connection),
            "key": connection_secret_key(ref),
        }
        env.append({"name": name, "valueFrom": {"secretKeyRef": key_ref}})
    return env


def connection_secret_name(connection: str) -> str:
    """The Secret holding a connection: `conn-NAME`, lowercased, '_' and '.' as '-'; a
    hash of the name follows when that changed it (so `OpenAI` and `openai` stay apart)
    or when it ends with '-'."""
    readable = re.sub(r"[^a-z0-9-]", "-", connection.lower())
    if readable == connection and not readable.endswith("-"):
        return f"conn-{readable}"
    return f"conn-{readable[:200]}".rstrip("-") + f"-{_short(connection, 8)}"


def connection_secret_key(ref: SecretRef) -> str:
    """The key in the connection's Secret: KEY for a credential, `target` for the target,
    `metadata.KEY` for a metadata value."""
    if ref.kind == CREDENTIALS:
        return str(ref.key)
    if ref.kind == METADATA:
        return f"metadata.{ref.key}"
    return "target"


def connection_secrets(desired: DesiredState) -> list[tuple[str, tuple[str, ...]]]:
    """(Secret name, keys) of every connection Secret the deployments reference."""
    keys: dict[str, set[str]] = {}
    for spec in desired.deployments:
        for ref in secret_references(spec):
            keys.setdefault(connection_secret_name(ref.connection), set()).add(
                connection_secret_key(ref)
            )
    return [(name, tuple(sorted(found))) for name, found in sorted(keys.items())]


def _progress_deadline(spec: DeploymentSpec) -> int:
    probe = spec.readiness_probe
    # A pod may take its whole readiness budget; the rollout gets that plus image pulls.
    return max(600, probe.initial_delay + probe.period * probe.failure_threshold + 300)


def deployment_manifest(
    ctx: RenderContext, spec: DeploymentSpec, *, replicas: int, image: DeploymentImage
) -> Manifest:
    name = deployment_object_name(spec.endpoint_name, spec.name)
    own = labels(ctx, endpoint=spec.endpoint_name, role=ROLE_INSTANCE, deployment=spec.name)
    scoring_port, _, live_port, live_path, ready_port, ready_path = _server_ports(spec)
    container: dict[str, Any] = {
        "name": "inference",
        "image": image.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": scoring_port, "protocol": "TCP"}],
        "env": environment_of(spec),
        "livenessProbe": _probe(spec.liveness_probe, port=live_port, path=live_path, liveness=True),
        "readinessProbe": _probe(
            spec.readiness_probe, port=ready_port, path=ready_path, liveness=False
        ),
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    resources = resources_of(spec, ctx.options)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        # Scoring code needs no Kubernetes API, and service variables would crowd the
        # user's environment.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # Requests in flight finish before the pod goes: the longest request plus a margin.
        "terminationGracePeriodSeconds": spec.request_settings.request_timeout_ms // 1000 + 10,
        "containers": [container],
    }
    if image.model_image is not None:
        model_dir = deployment_layout(spec).model_dir
        pod["initContainers"] = [
            {
                "name": "model",
                "image": image.model_image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", f"cp -a {model_dir}/. {MODEL_STAGING}/"],
                "volumeMounts": [{"name": MODEL_VOLUME, "mountPath": MODEL_STAGING}],
            }
        ]
        container["volumeMounts"] = [
            {"name": MODEL_VOLUME, "mountPath": model_dir, "readOnly": True}
        ]
        pod["volumes"] = [{"name": MODEL_VOLUME, "emptyDir": {}}]
    if ctx.options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in ctx.options.image_pull_secrets]
    spec_body: dict[str, Any] = {
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": _progress_deadline(spec),
        "selector": {"matchLabels": own},
        "strategy": {
            "type": "RollingUpdate",
            # SPEC-REFERENCE: 20% of the instances at a time, a new one ready before an old
            # one goes.
            "rollingUpdate": {"maxSurge": "20%", "maxUnavailable": 0},
        },
        "template": {
            "metadata": {"labels": own, "annotations": {DIGEST_ANNOTATION: spec.digest}},
            "spec": pod,
        },
    }
    if not spec.scale_settings.autoscaled:
        # With an HPA the count is the autoscaler's: an applied replicas field would fight
        # it on every pass. The target sets the start count through the scale subresource.
        spec_body = {"replicas": replicas, **spec_body}
    recorded = replace(spec, instance_count=replicas)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            ctx,
            name,
            own,
            {SPEC_ANNOTATION: canonical_json(spec_dict(recorded)), DIGEST_ANNOTATION: spec.digest},
        ),
        "spec": spec_body,
    }


def service_manifest(ctx: RenderContext, spec: DeploymentSpec, *, slots: int) -> Manifest:
    name = deployment_object_name(spec.endpoint_name, spec.name)
    own = labels(ctx, endpoint=spec.endpoint_name, role=ROLE_INSTANCE, deployment=spec.name)
    ports = [
        {"name": f"slot-{i}", "port": SERVER_PORT + i, "targetPort": "http", "protocol": "TCP"}
        for i in range(slots)
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ctx, name, own),
        "spec": {"type": "ClusterIP", "selector": own, "ports": ports},
    }


def hpa_manifest(ctx: RenderContext, spec: DeploymentSpec) -> Manifest:
    scale = spec.scale_settings
    name = deployment_object_name(spec.endpoint_name, spec.name)
    own = labels(ctx, endpoint=spec.endpoint_name, role=ROLE_INSTANCE, deployment=spec.name)
    low = scale.min_instances if scale.min_instances is not None else 1
    high = max(scale.max_instances if scale.max_instances is not None else 1, low)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(ctx, name, own),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": max(low, 1),
            "maxReplicas": max(high, 1),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scale.target_utilization_percentage or 70,
                        },
                    },
                }
            ],
        },
    }


def egress_policy_manifest(ctx: RenderContext, spec: DeploymentSpec) -> Manifest:
    """egress_public_network_access disabled: pods reach the namespace and DNS only."""
    own = labels(ctx, endpoint=spec.endpoint_name, role=ROLE_INSTANCE, deployment=spec.name)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(ctx, egress_policy_name(spec.endpoint_name, spec.name), own),
        "spec": {
            "podSelector": {"matchLabels": own},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"podSelector": {}}]},
                {
                    "to": [{"namespaceSelector": {}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
            ],
        },
    }


def deployment_manifests(
    ctx: RenderContext, spec: DeploymentSpec, *, replicas: int, image: DeploymentImage
) -> list[Manifest]:
    """Every object of one deployment, in the order they are applied."""
    result = [
        deployment_manifest(ctx, spec, replicas=replicas, image=image),
        service_manifest(ctx, spec, slots=slot_count(spec, replicas, ctx.options)),
    ]
    if spec.scale_settings.autoscaled:
        result.append(hpa_manifest(ctx, spec))
    if spec.egress_public_network_access == "disabled":
        result.append(egress_policy_manifest(ctx, spec))
    return result


# --- router configuration ---------------------------------------------------------------


def deployment_route(ctx: RenderContext, spec: DeploymentSpec, *, replicas: int) -> DeploymentRoute:
    """The router's view of a deployment: one `service:port` per slot, and its settings."""
    service = deployment_object_name(spec.endpoint_name, spec.name)
    host = f"{service}.{ctx.namespace}.svc"
    slots = range(slot_count(spec, replicas, ctx.options))
    return route_of(spec, (f"{host}:{SERVER_PORT + i}" for i in slots))


def router_config(
    endpoint: EndpointSpec,
    creds: EndpointCredentials,
    *,
    routes: Iterable[DeploymentRoute] = (),
    traffic: Weights = (),
    mirror_traffic: Weights = (),
) -> RouterConfig:
    return RouterConfig(
        endpoint=endpoint.name,
        deployments=tuple(sorted(routes, key=lambda r: r.name)),
        auth_mode=endpoint.auth_mode,
        shadow_comparison=router_comparison(endpoint.shadow_comparison),
        key_hashes=(hash_key(creds.primary_key), hash_key(creds.secondary_key)),
        token_secret=creds.token_secret_bytes,
        admin_secret_hash=hash_key(creds.admin_secret),
        traffic=traffic,
        mirror_traffic=mirror_traffic,
        host="0.0.0.0",
        port=ROUTER_PORT,
        metrics_port=ROUTER_METRICS_PORT,
    )


def with_credentials(config: RouterConfig, creds: EndpointCredentials) -> RouterConfig:
    return replace(
        config,
        key_hashes=(hash_key(creds.primary_key), hash_key(creds.secondary_key)),
        token_secret=creds.token_secret_bytes,
        admin_secret_hash=hash_key(creds.admin_secret),
    )


# --- endpoints --------------------------------------------------------------------------


def keys_secret_manifest(ctx: RenderContext, endpoint: str, creds: EndpointCredentials) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(
            ctx, keys_secret_name(endpoint), labels(ctx, endpoint=endpoint, role=ROLE_ENDPOINT)
        ),
        "data": {
            "primaryKey": _b64(creds.primary_key),
            "secondaryKey": _b64(creds.secondary_key),
            "tokenSecret": _b64(creds.token_secret),
            "adminSecret": _b64(creds.admin_secret),
        },
    }


def credentials_from_secret(data: Mapping[str, str]) -> EndpointCredentials:
    """EndpointCredentials from a keys Secret's `data` (base64 values)."""

    def text(key: str) -> str:
        return base64.b64decode(data[key]).decode()

    return EndpointCredentials(
        primary_key=text("primaryKey"),
        secondary_key=text("secondaryKey"),
        token_secret=text("tokenSecret"),
        admin_secret=text("adminSecret"),
        port=ROUTER_PORT,
        metrics_port=ROUTER_METRICS_PORT,
    )


def endpoint_record(spec: EndpointSpec) -> str:
    """The endpoint's declared settings; traffic is left out: the router or route says it."""
    data = spec_dict(spec)
    data.pop("traffic", None)
    data.pop("mirror_traffic", None)
    return canonical_json(data)


def record_manifest(ctx: RenderContext, spec: EndpointSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            ctx, record_name(spec.name), labels(ctx, endpoint=spec.name, role=ROLE_ENDPOINT)
        ),
        "data": {ENDPOINT_RECORD: endpoint_record(spec)},
    }


def router_config_manifest(ctx: RenderContext, config: RouterConfig) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(
            ctx,
            router_config_name(config.endpoint),
            labels(ctx, endpoint=config.endpoint, role=ROLE_ROUTER),
        ),
        "data": {ROUTER_CONFIG_FILE: _b64(dump_config(config))},
    }


def router_manifests(ctx: RenderContext, endpoint: str) -> list[Manifest]:
    """The router's Deployment and Service; its config Secret is applied on its own."""
    own = labels(ctx, endpoint=endpoint, role=ROLE_ROUTER)
    name = router_name(endpoint)
    probe_base = {"periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": "router",
        "image": ctx.router_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/opt/venv/bin/python", "-m", "reconciler.router"],
        "args": ["--config", f"{ROUTER_CONFIG_DIR}/{ROUTER_CONFIG_FILE}"],
        "ports": [
            {"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ROUTER_METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "http"}, **probe_base},
        "livenessProbe": {"httpGet": {"path": "/-/healthy", "port": "http"}, **probe_base},
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "volumeMounts": [{"name": "config", "mountPath": ROUTER_CONFIG_DIR, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # The router drains on SIGTERM: requests in flight finish (the longest timeout).
        "terminationGracePeriodSeconds": 190,
        "containers": [container],
        "volumes": [
            {
                "name": "config",
                "secret": {"secretName": router_config_name(endpoint), "defaultMode": 0o400},
            }
        ],
    }
    if ctx.options.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in ctx.options.image_pull_secrets]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ctx, name, own),
        "spec": {
            "replicas": ctx.options.router_replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": own},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {"metadata": {"labels": own}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ctx, name, own),
        "spec": {
            "type": "ClusterIP",
            "selector": own,
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": ROUTER_METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }
    return [deployment, service]


def ingress_policy_manifest(ctx: RenderContext, endpoint: str) -> Manifest:
    """public_network_access disabled: only pods of the namespace (and the gateway's) reach
    the endpoint, as a private endpoint only is reachable from its virtual network."""
    sources: list[dict[str, Any]] = [{"podSelector": {}}]
    if ctx.options.gateway_api:
        pods = {ENDPOINT_LABEL: endpoint, ROLE_LABEL: ROLE_INSTANCE, TARGET_LABEL: ctx.target}
        gateway = ctx.options.gateway
        if gateway is not None and gateway.namespace:
            sources.append(
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": gateway.namespace}
                    }
                }
            )
    else:
        pods = labels(ctx, endpoint=endpoint, role=ROLE_ROUTER)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(
            ctx, ingress_policy_name(endpoint), labels(ctx, endpoint=endpoint, role=ROLE_ENDPOINT)
        ),
        "spec": {
            "podSelector": {"matchLabels": pods},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": sources}],
        },
    }


def _backend(name: str, *, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": name, "port": SERVER_PORT}
    if weight is not None:
        ref["weight"] = weight
    return ref


def http_route_manifests(
    ctx: RenderContext,
    endpoint: str,
    *,
    deployments: Sequence[str],
    traffic: Weights,
    mirror_traffic: Weights,
) -> list[Manifest]:
    """HTTPRoutes replacing our router: a weighted rule (with a RequestMirror filter for
    mirror_traffic) and one rule per deployment matching the pin header."""
    gateway = ctx.options.gateway
    assert gateway is not None, "gateway-api needs a gateway (options checks it)"
    parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    own = labels(ctx, endpoint=endpoint, role=ROLE_ROUTER)
    everything = {"path": {"type": "PathPrefix", "value": "/"}}
    weighted: dict[str, Any] = {
        "matches": [everything],
        "backendRefs": [
            _backend(deployment_object_name(endpoint, name), weight=percent)
            for name, percent in traffic
        ],
    }
    if mirror_traffic:
        (mirrored, percent), *_ = mirror_traffic
        weighted["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {
                    "backendRef": _backend(deployment_object_name(endpoint, mirrored)),
                    "percent": percent,
                },
            }
        ]
    pins = [
        {
            "matches": [
                {**everything, "headers": [{"type": "Exact", "name": PIN_HEADER, "value": name}]}
            ],
            "backendRefs": [_backend(deployment_object_name(endpoint, name))],
        }
        for name in sorted(deployments)
    ]
    chunks = [pins[i : i + PINS_PER_ROUTE] for i in range(0, len(pins), PINS_PER_ROUTE)] or [[]]
    result = []
    for part, chunk in enumerate(chunks):
        rules = ([weighted] if part == 0 else []) + chunk
        result.append(
            {
                "apiVersion": f"{GATEWAY_GROUP}/v1",
                "kind": "HTTPRoute",
                "metadata": _metadata(ctx, route_name(endpoint, part), own),
                "spec": {"parentRefs": [parent], "rules": rules},
            }
        )
    return result


def route_traffic(route: Mapping[str, Any], services: Mapping[str, str]) -> tuple[Weights, Weights]:
    """(traffic, mirror_traffic) of an HTTPRoute's weighted rule; services maps Service
    names back to deployment names."""
    traffic: dict[str, int] = {}
    mirror: dict[str, int] = {}
    for rule in (route.get("spec") or {}).get("rules") or []:
        matches = rule.get("matches") or []
        if any(m.get("headers") for m in matches):
            continue  # a pin rule: no share of the traffic
        for ref in rule.get("backendRefs") or []:
            name = services.get(str(ref.get("name")))
            weight = int(ref.get("weight", 1))
            if name is not None and weight:
                traffic[name] = weight
        for f in rule.get("filters") or []:
            if f.get("type") != "RequestMirror":
                continue
            body = f.get("requestMirror") or {}
            name = services.get(str((body.get("backendRef") or {}).get("name")))
            percent = body.get("percent")
            if percent is None and body.get("fraction"):
                fraction = body["fraction"]
                percent = round(100 * fraction["numerator"] / fraction.get("denominator", 100))
            if name is not None:
                mirror[name] = int(100 if percent is None else percent)
    return tuple(sorted(traffic.items())), tuple(sorted(mirror.items()))


def endpoint_manifests(
    ctx: RenderContext,
    spec: EndpointSpec,
    *,
    creds: EndpointCredentials | None,
    config: RouterConfig | None,
    deployments: Sequence[str],
) -> list[Manifest]:
    """Every object of one endpoint but its deployments'. Without creds (render, unless
    --include-secrets) the two Secrets are left out."""
    result: list[Manifest] = []
    if creds is not None:
        result.append(keys_secret_manifest(ctx, spec.name, creds))
    result.append(record_manifest(ctx, spec))
    if ctx.options.gateway_api:
        result += http_route_manifests(
            ctx,
            spec.name,
            deployments=deployments,
            traffic=spec.traffic,
            mirror_traffic=spec.mirror_traffic,
        )
    else:
        if config is not None:
            result.append(router_config_manifest(ctx, config))
        result += router_manifests(ctx, spec.name)
    if spec.public_network_access == "disabled":
        result.append(ingress_policy_manifest(ctx, spec.name))
    return result


def render_desired(
    ctx: RenderContext,
    desired: DesiredState,
    *,
    credentials: Mapping[str, EndpointCredentials] | None,
) -> list[Manifest]:
    """Every manifest of a desired state, fully applied: what `reconcile render` prints."""
    result: list[Manifest] = []
    for endpoint in sorted(desired.endpoints, key=lambda e: e.name):
        deployments = sorted(desired.deployments_of(endpoint.name), key=lambda d: d.name)
        creds = credentials.get(endpoint.name) if credentials is not None else None
        config = None
        if creds is not None:
            config = router_config(
                endpoint,
                creds,
                routes=[
                    deployment_route(ctx, d, replicas=target_count(d, None)) for d in deployments
                ],
                traffic=endpoint.traffic,
                mirror_traffic=endpoint.mirror_traffic,
            )
        result += endpoint_manifests(
            ctx, endpoint, creds=creds, config=config, deployments=[d.name for d in deployments]
        )
        for d in deployments:
            result += deployment_manifests(
                ctx, d, replicas=target_count(d, None), image=plan_image(d, ctx.options)
            )
    return result


def object_key(manifest: Mapping[str, Any]) -> tuple[str, str]:
    return str(manifest["kind"]), str(manifest["metadata"]["name"])


def deployment_key(manifest: Mapping[str, Any]) -> ResourceKey | None:
    meta_labels = (manifest.get("metadata") or {}).get("labels") or {}
    endpoint = meta_labels.get(ENDPOINT_LABEL)
    if not endpoint:
        return None
    return ResourceKey(str(endpoint), meta_labels.get(DEPLOYMENT_LABEL))
