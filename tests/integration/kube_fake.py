"""A small stateful Kubernetes API server for tests, on 127.0.0.1, in a thread; and the
Kubernetes target configured against it (make_target, apply_rev, plan_rev) at the end.

It speaks the part of the API the target uses, over real HTTP, so the real `kubernetes`
client runs unchanged against it: GET and LIST with a labelSelector, PATCH with
`application/apply-patch+yaml` (server-side apply; a fieldManager is required), JSON merge
patches (the scale subresource), DELETE, and pod logs. It keeps resourceVersion and
generation as the API server does (generation moves only when spec changes).

A stand-in for the deployment controller and the kubelet: after each change of a
Deployment it writes the status of a finished rollout and makes its pods, unless the test
holds that Deployment (`hold`) and writes the status itself (`set_status`), or marks it
broken (`break_deployment`: pods crash-loop, the rollout never completes). Nothing is
scheduled or run: pods are records.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from repo_builder import RepoBuilder

from reconciler.engine import PassResult, run_pass
from reconciler.executor import Gate
from reconciler.gitsource import GitSource
from reconciler.model.results import Outcome
from reconciler.targets.kubernetes.client import KubeClient
from reconciler.targets.kubernetes.images import PlannedImages
from reconciler.targets.kubernetes.options import GatewayRef, KubernetesOptions

# (group, version, plural) -> kind; "" is the core group.
RESOURCES: dict[tuple[str, str, str], str] = {
    ("", "v1", "pods"): "Pod",
    ("", "v1", "services"): "Service",
    ("", "v1", "secrets"): "Secret",
    ("", "v1", "configmaps"): "ConfigMap",
    ("apps", "v1", "deployments"): "Deployment",
    ("autoscaling", "v2", "horizontalpodautoscalers"): "HorizontalPodAutoscaler",
    ("networking.k8s.io", "v1", "networkpolicies"): "NetworkPolicy",
}
GATEWAY_RESOURCES = {("gateway.networking.k8s.io", "v1", "httproutes"): "HTTPRoute"}
_NO_GENERATION = {"Secret", "ConfigMap", "Pod"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def matches_selector(object_labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if object_labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if object_labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in object_labels:
                return False
        elif term not in object_labels:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str


@dataclass
class FakeKubernetes:
    """The API server's state; `serve()` puts it on 127.0.0.1."""

    gateway_api: bool = True
    objects: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)
    pod_logs: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    fail_next: dict[str, int] = field(default_factory=dict)  # method -> HTTP code, once
    lock: threading.RLock = field(default_factory=threading.RLock)
    _version: int = 0
    url: str = ""

    # --- bookkeeping -------------------------------------------------------------------

    def _resources(self) -> dict[tuple[str, str, str], str]:
        return {**RESOURCES, **(GATEWAY_RESOURCES if self.gateway_api else {})}

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _api_version(self, group: str, version: str) -> str:
        return f"{group}/{version}" if group else version

    # --- the Python side, for tests ----------------------------------------------------

    def get(self, plural: str, name: str, namespace: str = "ml") -> dict[str, Any] | None:
        with self.lock:
            for (_, ns, p, n), obj in self.objects.items():
                if (ns, p, n) == (namespace, plural, name):
                    return copy.deepcopy(obj)
        return None

    def list(self, plural: str, selector: str = "", namespace: str = "ml") -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(obj)
                for (_, ns, p, _n), obj in sorted(self.objects.items())
                if ns == namespace
                and p == plural
                and matches_selector(obj["metadata"].get("labels") or {}, selector)
            ]

    def names(self, plural: str, selector: str = "", namespace: str = "ml") -> list[str]:
        return [o["metadata"]["name"] for o in self.list(plural, selector, namespace)]

    def hold(self, name: str) -> None:
        """The controller leaves this Deployment's status to the test."""
        with self.lock:
            self.held.add(name)

    def release(self, name: str, namespace: str = "ml") -> None:
        with self.lock:
            self.held.discard(name)
            self._control(namespace, name)

    def break_deployment(self, name: str) -> None:
        with self.lock:
            self.broken.add(name)

    def set_status(
        self, plural: str, name: str, status: dict[str, Any], namespace: str = "ml"
    ) -> None:
        with self.lock:
            for (_group, ns, p, n), obj in self.objects.items():
                if (ns, p, n) == (namespace, plural, name):
                    obj["status"] = copy.deepcopy(status)
                    obj["metadata"]["resourceVersion"] = self._next_version()
                    if plural == "deployments":
                        self._sync_pods(namespace, obj, ready=int(status.get("readyReplicas", 0)))
                    return
        raise KeyError(name)

    def put(self, manifest: dict[str, Any]) -> None:
        """An object made by someone else (a user, another tool): no labels of ours."""
        group, _, _version = manifest["apiVersion"].rpartition("/")
        plural = next(p for (g, v, p), k in self._resources().items() if k == manifest["kind"])
        meta = manifest["metadata"]
        with self.lock:
            obj = copy.deepcopy(manifest)
            obj["metadata"].setdefault("uid", str(uuid.uuid4()))
            obj["metadata"]["resourceVersion"] = self._next_version()
            self.objects[(group, meta["namespace"], plural, meta["name"])] = obj

    # --- the controller stand-in -------------------------------------------------------

    def _control(self, namespace: str, name: str) -> None:
        obj = self.objects.get(("apps", namespace, "deployments", name))
        if obj is None or name in self.held:
            return
        replicas = int(obj["spec"].get("replicas", 1))
        generation = obj["metadata"]["generation"]
        if name in self.broken:
            obj["status"] = {
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": 0,
                "availableReplicas": 0,
                "unavailableReplicas": replicas,
                "conditions": [
                    {
                        "type": "Available",
                        "status": "False",
                        "reason": "MinimumReplicasUnavailable",
                    },
                    {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
                ],
            }
            self._sync_pods(namespace, obj, ready=0, crash=True)
            return
        obj["status"] = {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        }
        self._sync_pods(namespace, obj, ready=replicas)

    def _sync_pods(
        self, namespace: str, deployment: dict[str, Any], *, ready: int, crash: bool = False
    ) -> None:
        template = deployment["spec"]["template"]
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[
            :10
        ]
        name = deployment["metadata"]["name"]
        replicas = int(deployment["spec"].get("replicas", 1))
        for key in [
            k
            for k, o in self.objects.items()
            if k[1] == namespace
            and k[2] == "pods"
            and o["metadata"].get("labels", {}).get("fake/deployment") == name
        ]:
            del self.objects[key]
        for index in range(replicas):
            pod_name = f"{name}-{template_hash}-{index}"
            is_ready = index < ready and not crash
            container_status: dict[str, Any] = {
                "name": template["spec"]["containers"][0]["name"],
                "ready": is_ready,
                "restartCount": 3 if crash else 0,
                "image": template["spec"]["containers"][0]["image"],
                "state": {"running": {}} if not crash else {},
            }
            if crash:
                container_status["state"] = {
                    "waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}
                }
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": self._next_version(),
                    "labels": {
                        **template["metadata"].get("labels", {}),
                        "pod-template-hash": template_hash,
                        "fake/deployment": name,
                    },
                    "annotations": dict(template["metadata"].get("annotations", {})),
                },
                "spec": copy.deepcopy(template["spec"]),
                "status": {
                    "phase": "Running",
                    "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True" if is_ready else "False"}],
                    "containerStatuses": [container_status],
                },
            }
            self.objects[("", namespace, "pods", pod_name)] = pod

    # --- verbs -------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], body: bytes, content_type: str
    ) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(Request(method, path, query, content_type))
            failing = self.fail_next.pop(method, None)
            if failing is not None:
                raise ApiError(failing, "InternalError", "injected failure")
            if path == "/version":
                return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake"}
            group, version, namespace, plural, name, sub = self._parse(path)
            kind = self._resources().get((group, version, plural))
            if kind is None:
                raise ApiError(404, "NotFound", f"the server could not find {path}")
            key = (group, namespace, plural, name or "")
            if name is None:
                if method != "GET":
                    raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
                return 200, self._list(group, version, kind, namespace, plural, query)
            if method == "GET":
                return 200, self._get(key, kind, sub, query)
            if method == "PATCH":
                return self._patch(key, group, version, kind, sub, query, body, content_type)
            if method == "DELETE":
                return 200, self._delete(key, kind)
            raise ApiError(405, "MethodNotAllowed", method)

    def _parse(self, path: str) -> tuple[str, str, str, str, str | None, str | None]:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"no such path {path}")
        if len(rest) < 3 or rest[0] != "namespaces":
            raise ApiError(404, "NotFound", f"only namespaced paths: {path}")
        namespace, plural = rest[1], rest[2]
        name = rest[3] if len(rest) > 3 else None
        sub = rest[4] if len(rest) > 4 else None
        return group, version, namespace, plural, name, sub

    def _list(
        self,
        group: str,
        version: str,
        kind: str,
        namespace: str,
        plural: str,
        query: dict[str, str],
    ) -> dict[str, Any]:
        selector = query.get("labelSelector", "")
        items = [
            copy.deepcopy(obj)
            for (g, ns, p, _), obj in sorted(self.objects.items())
            if (g, ns, p) == (group, namespace, plural)
            and matches_selector(obj["metadata"].get("labels") or {}, selector)
        ]
        return {
            "apiVersion": self._api_version(group, version),
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    def _get(
        self, key: tuple[str, str, str, str], kind: str, sub: str | None, query: dict[str, str]
    ) -> Any:
        obj = self.objects.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.lower()}s "{key[3]}" not found')
        if sub == "log":
            text = self.pod_logs.get(key[3], f"log of {key[3]}\n")
            tail = query.get("tailLines")
            if tail is not None:
                text = "".join(text.splitlines(keepends=True)[-int(tail) :])
            return text
        if sub == "scale":
            return self._scale(obj)
        if sub not in (None, "status"):
            raise ApiError(404, "NotFound", f"no subresource {sub}")
        return copy.deepcopy(obj)

    def _scale(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": obj["metadata"]["name"],
                "namespace": obj["metadata"]["namespace"],
                "resourceVersion": obj["metadata"]["resourceVersion"],
            },
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0)},
        }

    def _patch(
        self,
        key: tuple[str, str, str, str],
        group: str,
        version: str,
        kind: str,
        sub: str | None,
        query: dict[str, str],
        body: bytes,
        content_type: str,
    ) -> tuple[int, Any]:
        media = content_type.split(";")[0].strip()
        existing = self.objects.get(key)
        if media == "application/apply-patch+yaml":
            if sub is not None:
                raise ApiError(400, "BadRequest", "apply on a subresource is not supported here")
            if not query.get("fieldManager"):
                raise ApiError(400, "BadRequest", "PATCH with apply-patch requires a fieldManager")
            applied = yaml.safe_load(body)
            return self._apply(key, group, version, kind, applied, existing)
        if media in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if existing is None:
                raise ApiError(404, "NotFound", f'{kind.lower()}s "{key[3]}" not found')
            patch = json.loads(body)
            if sub == "scale":
                replicas = (patch.get("spec") or {}).get("replicas")
                if replicas is not None and replicas != existing["spec"].get("replicas"):
                    existing["spec"]["replicas"] = int(replicas)
                    existing["metadata"]["generation"] += 1
                existing["metadata"]["resourceVersion"] = self._next_version()
                self._control(key[1], key[3])
                return 200, self._scale(existing)
            if sub == "status":
                existing["status"] = merge_patch(existing.get("status"), patch.get("status"))
            else:
                updated = merge_patch(existing, patch)
                if updated.get("spec") != existing.get("spec"):
                    updated["metadata"]["generation"] = existing["metadata"]["generation"] + 1
                existing.clear()
                existing.update(updated)
            existing["metadata"]["resourceVersion"] = self._next_version()
            return 200, copy.deepcopy(existing)
        raise ApiError(415, "UnsupportedMediaType", f"content type {content_type!r}")

    def _apply(
        self,
        key: tuple[str, str, str, str],
        group: str,
        version: str,
        kind: str,
        applied: Any,
        existing: dict[str, Any] | None,
    ) -> tuple[int, Any]:
        if not isinstance(applied, dict):
            raise ApiError(400, "BadRequest", "apply body must be an object")
        if applied.get("apiVersion") != self._api_version(group, version):
            raise ApiError(400, "BadRequest", f"apiVersion {applied.get('apiVersion')!r}")
        if applied.get("kind") != kind:
            raise ApiError(400, "BadRequest", f"kind {applied.get('kind')!r} on {kind} path")
        meta = applied.get("metadata") or {}
        if meta.get("name") != key[3]:
            raise ApiError(400, "BadRequest", "the name of the body differs from the path")
        if meta.get("namespace", key[1]) != key[1]:
            raise ApiError(400, "BadRequest", "the namespace of the body differs from the path")
        obj = copy.deepcopy(applied)
        obj["metadata"]["namespace"] = key[1]
        if kind == "Secret" and "stringData" in obj:
            data = obj.setdefault("data", {})
            import base64

            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()
        if existing is None:
            obj["metadata"]["uid"] = str(uuid.uuid4())
            obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
            if kind not in _NO_GENERATION:
                obj["metadata"]["generation"] = 1
            if kind == "Deployment":
                obj["spec"].setdefault("replicas", 1)
            if kind == "Service":
                obj["spec"]["clusterIP"] = "127.0.0.1"
            code = 201
        else:
            for system in ("uid", "creationTimestamp", "generation"):
                if system in existing["metadata"]:
                    obj["metadata"][system] = existing["metadata"][system]
            if "status" in existing:
                obj["status"] = existing["status"]
            if kind == "Deployment" and "replicas" not in obj["spec"]:
                # Another manager (the autoscaler, the scale subresource) owns it.
                obj["spec"]["replicas"] = existing["spec"].get("replicas", 1)
            if kind == "Service":
                obj["spec"]["clusterIP"] = existing["spec"].get("clusterIP")
            if kind not in _NO_GENERATION and obj.get("spec") != existing.get("spec"):
                obj["metadata"]["generation"] = existing["metadata"]["generation"] + 1
            code = 200
        obj["metadata"]["resourceVersion"] = self._next_version()
        self.objects[key] = obj
        if kind == "Deployment":
            self._control(key[1], key[3])
        return code, copy.deepcopy(self.objects[key])

    def _delete(self, key: tuple[str, str, str, str], kind: str) -> dict[str, Any]:
        if key not in self.objects:
            raise ApiError(404, "NotFound", f'{kind.lower()}s "{key[3]}" not found')
        del self.objects[key]
        if kind == "Deployment":
            for pod_key in [
                k
                for k, o in self.objects.items()
                if k[2] == "pods" and o["metadata"]["labels"].get("fake/deployment") == key[3]
            ]:
                del self.objects[pod_key]
        return {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}


def _handler(fake: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as two writes: without this, delayed ACKs cost 40 ms
        # per request.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                code, data = fake.handle(
                    method, parsed.path, query, body, self.headers.get("Content-Type", "")
                )
            except ApiError as err:
                code, data = err.code, err.status()
            except Exception as exc:  # a bug of the fake: say so to the client
                code, data = 500, ApiError(500, "InternalError", repr(exc)).status()
            if isinstance(data, str):
                payload, media = data.encode(), "text/plain"
            else:
                payload, media = json.dumps(data).encode(), "application/json"
            self.send_response(code)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

    return Handler


@contextmanager
def serve(fake: FakeKubernetes | None = None) -> Iterator[FakeKubernetes]:
    """The fake on a free port of 127.0.0.1 for the duration of the block."""
    fake = fake or FakeKubernetes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- the target on the fake, for the tests of the Kubernetes target ----------------------


NAMESPACE = "ml"
FAST_GATE = Gate(timeout_s=20.0, poll_s=0.02)


def options(**overrides: Any) -> KubernetesOptions:
    base = KubernetesOptions(
        name="cluster",
        namespace=NAMESPACE,
        registry="127.0.0.1:5000/ml",
        poll_s=0.01,
        ready_timeout_s=20.0,
        config_propagation_s=0.0,
    )
    return replace(base, **overrides)


def gateway_options(**overrides: Any) -> KubernetesOptions:
    return options(
        router="gateway-api", gateway=GatewayRef("ml-gateway", "gateway-system"), **overrides
    )


def make_target(fake: FakeKubernetes, opts: KubernetesOptions | None = None) -> Any:
    from reconciler.targets.kubernetes.target import KubernetesTarget

    opts = opts or options()
    return KubernetesTarget(
        opts,
        repo_root=Path("."),
        client=KubeClient.for_host(fake.url, NAMESPACE),
        images=PlannedImages(opts),
    )


def apply_rev(
    repo: RepoBuilder, target: Any, rev: str = "HEAD", *, prune: bool = False
) -> PassResult:
    source = GitSource(repo.root)
    commit = source.resolve(rev)
    return run_pass(
        source.tree(commit), target, prune=prune, dry_run=False, revision=commit, gate=FAST_GATE
    )


def plan_rev(
    repo: RepoBuilder, target: Any, rev: str = "HEAD", *, prune: bool = False
) -> PassResult:
    source = GitSource(repo.root)
    commit = source.resolve(rev)
    return run_pass(
        source.tree(commit), target, prune=prune, dry_run=True, revision=commit, gate=FAST_GATE
    )


def failures(result: PassResult) -> list[str]:
    return [
        f"{result.plan.steps[r.index].action} {result.plan.steps[r.index].target_name}: {r.message}"
        for r in result.results
        if r.outcome != Outcome.SUCCEEDED
    ]
