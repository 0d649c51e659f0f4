"""The few API calls the target makes, over the `kubernetes` client's ApiClient.

One generic path per verb instead of a typed API class per kind: server-side apply
(`PATCH` with `application/apply-patch+yaml`, our field manager, force), GET, LIST by label
selector (the labels checked again on what comes back), DELETE, JSON merge patches (the
scale subresource, annotations), pod logs and GETs through the pod proxy. The ApiClient
still does what matters: configuration (kubeconfig, in-cluster), TLS, authentication,
connection pooling.

Connection settings come from the usual places: an explicit kubeconfig and context, else
$KUBECONFIG, else the pod's service account when the process runs in a cluster, else
~/.kube/config.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from reconciler.logs import get_logger
from reconciler.model.errors import ErrorCode
from reconciler.targets.base import TargetError, TargetUnavailable
from reconciler.targets.kubernetes.manifests import MANAGER
from reconciler.targets.kubernetes.options import KubernetesOptions

log = get_logger("reconciler.kubernetes")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_TIMEOUT = (5.0, 60.0)  # connect, read
# A router answers /-/config-digest and /metrics in milliseconds; one wedged pod must not
# hold a pass for the API's minute (the API server's proxy itself waits far longer).
POD_PROXY_TIMEOUT = (5.0, 5.0)


@dataclass(frozen=True, slots=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    def base(self, namespace: str) -> str:
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{root}/namespaces/{urllib.parse.quote(namespace)}/{self.plural}"


KINDS: Mapping[str, Kind] = {
    k.kind: k
    for k in (
        Kind("v1", "Pod", "pods"),
        Kind("v1", "Service", "services"),
        Kind("v1", "Secret", "secrets"),
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("apps/v1", "Deployment", "deployments"),
        Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
        Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
    )
}


class NotFound(TargetError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code=ErrorCode.NOT_FOUND)


@dataclass(frozen=True)
class Connection:
    api_client: kclient.ApiClient
    namespace: str
    in_cluster: bool


def connect(options: KubernetesOptions) -> Connection:
    """An ApiClient and the namespace, from the usual places (see the module docstring)."""
    configuration = kclient.Configuration()
    explicit = options.kubeconfig or (
        Path(os.environ["KUBECONFIG"].split(os.pathsep)[0])
        if os.environ.get("KUBECONFIG")
        else None
    )
    token = SERVICE_ACCOUNT_DIR / "token"
    in_cluster = explicit is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    in_cluster = in_cluster and token.exists()
    try:
        if in_cluster:
            kconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            namespace = options.namespace or _pod_namespace()
        else:
            path = explicit or Path.home() / ".kube" / "config"
            if not path.exists():
                raise TargetUnavailable(
                    f"no kubeconfig at {path} and not running in a cluster; set kubeconfig "
                    f"in reconciler.yaml (targets.{options.name}) or KUBECONFIG"
                )
            kconfig.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(path),
                context=options.context,
                client_configuration=configuration,
            )
            namespace = options.namespace or _context_namespace(path, options.context)
    except ConfigException as exc:
        raise TargetUnavailable(f"Kubernetes configuration: {exc}") from None
    # Bounded retries: an unreachable API server is reported, not waited on for minutes.
    configuration.retries = 1
    return Connection(kclient.ApiClient(configuration), namespace, in_cluster)


def _pod_namespace() -> str:
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or "default"
    except OSError:
        return "default"


def _context_namespace(path: Path, context: str | None) -> str:
    contexts, active = kconfig.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=str(path)
    )
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), active)
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


class KubeClient:
    """Verbs on namespaced objects of the kinds in KINDS."""

    def __init__(self, api_client: kclient.ApiClient, namespace: str) -> None:
        self.api = api_client
        self.namespace = namespace

    @classmethod
    def for_host(cls, host: str, namespace: str) -> KubeClient:
        """A client of an API server without authentication (tests, `kubectl proxy`)."""
        configuration = kclient.Configuration(host=host)
        configuration.retries = 1
        return cls(kclient.ApiClient(configuration), namespace)

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
        errors_returned: bool = False,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> tuple[int, bytes]:
        """(status, body); an error status raises, unless errors_returned (then only 401
        and 403 do, and a read timed out is 504 with no body, as a gateway's)."""
        headers = {"Accept": accept}
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            _method, url, header_params, serialized, _post = self.api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(
                method,
                url,
                header_params=header_params,
                body=serialized,
                _request_timeout=timeout,
            )
            data = response.read()  # type: ignore[no-untyped-call]
            status = int(response.status)
        except ApiException as exc:
            if exc.status == 0:
                raise TargetUnavailable(f"Kubernetes API: {exc.reason}") from None
            status, data = int(exc.status), (exc.body or b"")
            if isinstance(data, str):
                data = data.encode()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if errors_returned and _read_timed_out(exc):
                # The API server took the request but what it asked (a pod, through
                # its proxy) did not answer in time: that one's failure, not the API's.
                return 504, b""
            raise TargetUnavailable(
                f"Kubernetes API at {self.api.configuration.host} not reachable: {exc}"
            ) from None
        if status in (401, 403):
            raise TargetError(
                f"Kubernetes API refused {method} {path}: {_message(data)}",
                code=ErrorCode.FORBIDDEN,
            )
        if errors_returned:
            return status, data
        if status == 404:
            missing = _missing_namespace(data)
            if missing is not None:
                raise TargetError(
                    f"namespace {missing} does not exist on the cluster: create it "
                    f"(kubectl create namespace {missing}); the target does not create "
                    "namespaces",
                    code=ErrorCode.NAMESPACE_MISSING,
                )
            raise NotFound(f"{path}: {_message(data)}")
        if status == 409:
            raise TargetError(
                f"Kubernetes API: {method} {path}: {_message(data)}", code=ErrorCode.CONFLICT
            )
        if status >= 400:
            raise TargetError(
                f"Kubernetes API: {method} {path} failed ({status}): {_message(data)}",
                code=ErrorCode.KUBERNETES_API_ERROR,
            )
        return status, data

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        _, data = self._request(method, path, **kwargs)
        result = json.loads(data) if data else {}
        assert isinstance(result, dict)
        return result

    def _path(self, kind: str, name: str | None = None, sub: str | None = None) -> str:
        path = KINDS[kind].base(self.namespace)
        if name is not None:
            path += f"/{urllib.parse.quote(name)}"
        if sub is not None:
            path += f"/{sub}"
        return path

    # --- verbs -------------------------------------------------------------------------

    def apply(
        self, manifest: Mapping[str, Any], *, manager: str = MANAGER, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply; the object as the server has it after.

        By default under our field manager with force: we own what we render, and a field
        someone changed by hand (kubectl edit) is taken back, as Flux and Argo do. Without
        force, a field another manager owns with another value fails with code Conflict.
        """
        name = str(manifest["metadata"]["name"])
        return self._json(
            "PATCH",
            self._path(str(manifest["kind"]), name),
            query=[("fieldManager", manager), ("force", "true" if force else "false")],
            body=dict(manifest),
            content_type="application/apply-patch+yaml",
        )

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json("GET", self._path(kind, name))
        except NotFound:
            return None

    def list(self, kind: str, selector: str) -> list[dict[str, Any]]:
        """Objects of a kind matching a label selector (`k=v,...`); NotFound when the API
        has no such kind (a CRD that is not installed).

        The labels are checked here too: whatever a server (or a proxy, or a webhook, or a
        bug) returns, an object without them is never handed on, so nothing downstream
        (prune above all) acts on an object that is not ours.
        """
        wanted = _equality_terms(selector)
        doc = self._json("GET", self._path(kind), query=[("labelSelector", selector)])
        found = doc.get("items") or []
        items = [o for o in found if _has_labels(o, wanted)]
        if len(items) != len(found):
            log.warning(
                "kubernetes_list_ignored_selector",
                kind=kind,
                selector=selector,
                dropped=len(found) - len(items),
            )
        return sorted(items, key=lambda o: str(o["metadata"]["name"]))

    def delete(self, kind: str, name: str) -> bool:
        """Delete an object (dependants in the background); False when it was gone."""
        try:
            self._request(
                "DELETE",
                self._path(kind, name),
                body={"propagationPolicy": "Background"},
                content_type="application/json",
            )
        except NotFound:
            return False
        return True

    def scale(self, kind: str, name: str, replicas: int) -> None:
        """Set replicas through the scale subresource, as an Update of a manager of its
        own (`ml-endpoint-reconciler-scale`): our applies, which leave an autoscaled
        deployment's replicas out, never drop it, and the autoscaler's next scale (an
        Update too) takes the field over without a conflict."""
        self._json(
            "PATCH",
            self._path(kind, name, "scale"),
            query=[("fieldManager", f"{MANAGER}-scale")],
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )

    def annotate(self, kind: str, name: str, annotations: Mapping[str, str | None]) -> None:
        """Set annotations of an object with a merge patch under our field manager (an
        Update: we own those annotations, nothing else); None removes one."""
        self._json(
            "PATCH",
            self._path(kind, name),
            query=[("fieldManager", MANAGER)],
            body={"metadata": {"annotations": dict(annotations)}},
            content_type="application/merge-patch+json",
        )

    def pod_proxy_get(self, name: str, port: int, path: str) -> tuple[int, Any]:
        """GET `path` on a pod's port through the API server's pod proxy: reachable from
        wherever the API server is, inside the cluster or not. The API server strips our
        Authorization header before it forwards, so only unauthenticated paths answer.

        (status, JSON body or None): what the pod answered, or the API server's own
        Status when it could not ask the pod (the pod is gone: 404, not reachable: 503).
        Forbidden (RBAC) raises."""
        status, data = self._request(
            "GET",
            f"{self._path('Pod', name)}:{int(port)}/proxy{path}",
            accept="application/json, */*",
            errors_returned=True,
            timeout=POD_PROXY_TIMEOUT,
        )
        try:
            return status, json.loads(data)
        except (ValueError, RecursionError):  # not JSON, or nested past what Python parses
            return status, None

    def pod_proxy_text(self, name: str, port: int, path: str) -> tuple[int, str]:
        """GET `path` on a pod's port through the pod proxy, as text (a router's
        /metrics): (status, body). Forbidden (RBAC) raises, as pod_proxy_get."""
        status, data = self._request(
            "GET",
            f"{self._path('Pod', name)}:{int(port)}/proxy{path}",
            accept="text/plain, */*",
            errors_returned=True,
            timeout=POD_PROXY_TIMEOUT,
        )
        return status, data.decode(errors="replace")

    def pod_log(self, name: str, *, container: str | None = None, lines: int = 100) -> str:
        query: list[tuple[str, Any]] = [("tailLines", lines)]
        if container is not None:
            query.append(("container", container))
        _, data = self._request(
            "GET", self._path("Pod", name, "log"), query=query, accept="text/plain"
        )
        return data.decode(errors="replace")

    def previous_pod_log(self, name: str, *, lines: int = 100) -> str | None:
        """What the pod's container wrote before its last restart (`kubectl logs
        --previous`); None when it never restarted (the API server answers 400)."""
        query: list[tuple[str, Any]] = [("tailLines", lines), ("previous", "true")]
        status, data = self._request(
            "GET",
            self._path("Pod", name, "log"),
            query=query,
            accept="text/plain",
            errors_returned=True,
        )
        if status == 400:
            return None
        if status >= 400:
            raise TargetError(
                f"Kubernetes API: log of pod {name} before its restart ({status}): "
                f"{_message(data)}",
                code=ErrorCode.KUBERNETES_API_ERROR,
            )
        return data.decode(errors="replace")


def _equality_terms(selector: str) -> dict[str, str]:
    """`k=v,k2=v2` as a mapping; the only selectors this client sends."""
    terms: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, equals, value = term.partition("=")
        if not equals or not key or key.endswith("!") or value.startswith("="):
            raise ValueError(f"only k=v selectors are sent: {selector!r}")
        terms[key] = value
    return terms


def _has_labels(obj: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def _missing_namespace(data: bytes) -> str | None:
    """The namespace a 404 says is missing (a write into a namespace that does not exist)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    details = doc.get("details") if isinstance(doc, dict) else None
    if isinstance(details, dict) and details.get("kind") == "namespaces":
        return str(details.get("name"))
    return None


def _message(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except ValueError:
        return data.decode(errors="replace")[:300]
    if isinstance(doc, dict) and doc.get("message"):
        return str(doc["message"])
    return json.dumps(doc)[:300]


def _read_timed_out(exc: BaseException) -> bool:
    """A read that timed out, also once urllib3's retries are spent (MaxRetryError)."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return isinstance(exc.reason, urllib3.exceptions.ReadTimeoutError)
    return isinstance(exc, urllib3.exceptions.ReadTimeoutError)
