"""Settings of a Kubernetes target, from its entry in reconciler.yaml.

```yaml
targets:
  cluster:
    type: kubernetes
    namespace: ml-endpoints       # default: the context's namespace, in a pod its own
    context: prod-aks             # default: the kubeconfig's current context
    kubeconfig: ~/.kube/config    # default: $KUBECONFIG, then ~/.kube/config, then in-cluster
    registry: 127.0.0.1:5000/ml   # where images are pushed and pulled from
    router: builtin               # builtin (our router per endpoint) or gateway-api
    gateway: {name: ml-gateway, namespace: gateway-system}   # gateway-api only
    resource_scale: 1.0           # instance types' cores and memory scaled by this
    instance_types: {Custom_4c: {cores: 4, memory_gb: 16, gpus: 0}}
    build_images: true            # false: the daemon only checks that CI pushed the images
    router_replicas: 2
    scoring_url: "http://{service}.{namespace}.svc.cluster.local"
```
Every key is optional; unknown keys are errors (a typo must not pass silently).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.model.errors import ErrorCode
from reconciler.model.instance_types import DEFAULT_INSTANCE_TYPES, InstanceType
from reconciler.targets.errors import TargetError

ROUTER_MODES = ("builtin", "gateway-api")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_KNOWN = (
    "namespace",
    "context",
    "kubeconfig",
    "registry",
    "router",
    "gateway",
    "resource_scale",
    "instance_types",
    "build_images",
    "base_image",
    "image_map",
    "wheel_cache",
    "router_image",
    "router_replicas",
    "scoring_url",
    "ready_timeout_s",
    "poll_s",
    "config_propagation_s",
    "image_pull_secrets",
)


@dataclass(frozen=True, slots=True)
class GatewayRef:
    """The Gateway that HTTPRoutes attach to (router: gateway-api)."""

    name: str
    namespace: str | None = None


@dataclass(frozen=True)
class KubernetesOptions:
    name: str = "kubernetes"
    namespace: str | None = None  # None: the context's, or the pod's own namespace
    context: str | None = None
    kubeconfig: Path | None = None
    registry: str | None = None  # None: images keep local names (kind/minikube image load)
    router: str = "builtin"
    gateway: GatewayRef | None = None
    resource_scale: float = 1.0
    instance_types: Mapping[str, InstanceType] = field(
        default_factory=lambda: dict(DEFAULT_INSTANCE_TYPES)
    )
    build_images: bool = True
    base_image: str | None = None  # None: the Docker target's local base image
    image_map: Mapping[str, str] = field(default_factory=dict)
    wheel_cache: Path = field(
        default_factory=lambda: Path.home() / ".cache" / "ml-endpoint-reconciler" / "wheels"
    )
    router_image: str | None = None  # None: reconciler-router:<code digest> in the registry
    router_replicas: int = 2
    scoring_url: str = "http://{service}.{namespace}.svc.cluster.local"
    ready_timeout_s: float = 900.0
    poll_s: float = 2.0
    # How long after a router config write every router pod must serve it (they say
    # which they serve; the target hurries their kubelets), after which the step fails.
    # Where routers cannot be asked (no pods/proxy right, an older router image), the
    # time after which the config counts as served: the kubelet's periodic refresh of the
    # mounted Secret (its sync period plus its cache TTL, about a minute by default), so
    # a later step (a deletion) never races it. No step sleeps for it: until then the
    # step is in progress and a later pass completes it.
    config_propagation_s: float = 90.0
    image_pull_secrets: tuple[str, ...] = ()

    @property
    def gateway_api(self) -> bool:
        return self.router == "gateway-api"

    def instance_type(self, name: str | None) -> InstanceType | None:
        return self.instance_types.get(name or "")

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> KubernetesOptions:
        where = f"reconciler.yaml: targets.{name}"

        def invalid(message: str) -> TargetError:
            return TargetError(f"{where}: {message}", code=ErrorCode.INVALID_TARGET_CONFIG)

        unknown = sorted(set(options) - set(_KNOWN))
        if unknown:
            raise invalid(
                f"unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})"
            )
        if not _LABEL_VALUE.match(name) or len(name) > 63:
            raise invalid("a Kubernetes target's name must be a valid label value")
        values: dict[str, Any] = {"name": name}
        for key in ("namespace", "context", "registry", "router_image", "scoring_url"):
            if options.get(key) is not None:
                values[key] = str(options[key])
        namespace = values.get("namespace")
        if namespace is not None and not _DNS_LABEL.match(namespace):
            raise invalid(f"namespace {namespace!r} is not a valid namespace name")
        if values.get("registry"):
            values["registry"] = values["registry"].rstrip("/")
        for key in ("kubeconfig", "wheel_cache"):
            if options.get(key) is not None:
                values[key] = Path(os.path.expanduser(str(options[key])))
        router = str(options.get("router", "builtin"))
        if router not in ROUTER_MODES:
            raise invalid(f"router must be one of {', '.join(ROUTER_MODES)}, got {router!r}")
        values["router"] = router
        gateway = options.get("gateway")
        if gateway is not None:
            if not isinstance(gateway, Mapping) or not gateway.get("name"):
                raise invalid("gateway must be a mapping with name (and namespace)")
            ns = gateway.get("namespace")
            values["gateway"] = GatewayRef(str(gateway["name"]), str(ns) if ns else None)
        if router == "gateway-api" and "gateway" not in values:
            raise invalid("router: gateway-api needs gateway: {name, namespace}")
        try:
            for key in ("resource_scale", "ready_timeout_s", "poll_s", "config_propagation_s"):
                if key in options:
                    values[key] = float(options[key])
            if "router_replicas" in options:
                values["router_replicas"] = int(options["router_replicas"])
        except (TypeError, ValueError) as exc:
            raise invalid(str(exc)) from None
        if "build_images" in options:
            if not isinstance(options["build_images"], bool):
                raise invalid("build_images must be true or false")
            values["build_images"] = options["build_images"]
        if options.get("base_image"):
            values["base_image"] = str(options["base_image"])
        if options.get("image_map"):
            values["image_map"] = {str(k): str(v) for k, v in dict(options["image_map"]).items()}
        if options.get("image_pull_secrets"):
            values["image_pull_secrets"] = tuple(str(s) for s in options["image_pull_secrets"])
        if options.get("instance_types"):
            table = dict(DEFAULT_INSTANCE_TYPES)
            for type_name, row in dict(options["instance_types"]).items():
                try:
                    table[str(type_name)] = InstanceType(
                        str(type_name),
                        int(row["cores"]),
                        float(row["memory_gb"]),
                        int(row.get("gpus", 0)),
                    )
                except (TypeError, KeyError, ValueError):
                    raise invalid(
                        f"instance_types.{type_name} needs cores and memory_gb (and gpus)"
                    ) from None
            values["instance_types"] = table
        return cls(**values)
