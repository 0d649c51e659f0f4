"""A small stateful Kubernetes API server for tests, on 127.0.0.1, in a thread; and the
Kubernetes target configured against it (make_target, apply_rev, plan_rev) at the end.

It speaks the part of the API the target uses, over real HTTP, so the real `kubernetes`
client runs unchanged against it, and it is as strict as a real API server where that
matters (a fake kinder than the server hides bugs):

- Server-side apply (`PATCH` with `application/apply-patch+yaml`, a fieldManager required)
  keeps `managedFields` per field manager and merges as the API server does (`kube_ssa`):
  a manager's apply replaces what it owns, a field it stops applying is removed only when
  nobody else owns it (then defaulted again: a Deployment's `replicas` falls back to 1), a
  changed field that another manager owns is a 409 conflict naming that manager unless
  `force=true`, which takes the field over. Merge patches, PUT, POST and the scale
  subresource are `Update` operations: their manager owns what they changed.
- resourceVersion on every write; generation moves only when spec changes; the controller
  stand-in writes observedGeneration, and it runs *after the next request*, as a real
  controller runs some time after the write: the first read after a change of a
  Deployment sees the old status.
- Label selectors are parsed as the API server does (`=`, `==`, `!=`, `in`, `notin`,
  `key`, `!key`) and a malformed one is a 400. `ignore_selectors=True` makes a hostile
  server that lists every object of the kind, whatever the selector says.
- Names and labels are validated (422), a Deployment's selector must match its template
  and cannot change, the namespace must exist for a write (404 `namespaces "x" not
  found`; a LIST in a missing namespace is empty, as on a real server).
- `forbidden` holds (resource, verb) pairs that RBAC refuses (403).

A stand-in for the deployment controller and the kubelet: after each change of a
Deployment it writes the status of a finished rollout and keeps its pods (by name: a pod
stays while its template does), unless the test holds that Deployment (`hold`) and writes
the status itself (`set_status`), or marks it broken (`break_deployment`: pods crash-loop,
the rollout never completes). Nothing is scheduled or run: pods are records.

The kubelet's Secret volumes: each pod mounts a copy of its Secrets taken when it starts,
refreshed only when the kubelet syncs the pod: on any change of the pod through the API
(an annotation, as a real kubelet does) or when a test calls `kubelet_sync()` (the periodic
sync); `stall_kubelet(pod)` stops that pod's refreshes. Router pods answer the API
server's pod proxy (`pods/NAME:PORT/proxy/PATH`) with what a router serving the mounted
config would say (`/-/config-digest`, `/-/ready`), or a real router process attached to
the pod (`attach_router`) answers, its config file written by the kubelet stand-in.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from kube_ssa import ApplyConflict, Ownership, path_text
from repo_builder import RepoBuilder

from reconciler.engine import PassResult, converge, run_pass
from reconciler.executor import Gate
from reconciler.gitsource import GitSource
from reconciler.model.results import Outcome
from reconciler.router.config import ConfigError, parse_config
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
_NO_GENERATION = {"Secret", "ConfigMap", "Pod", "Service"}
CONTROLLER = "kube-controller-manager"
ROUTER_MODULE = "reconciler.router"

_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class ApiError(Exception):
    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            doc["details"] = self.details
        return doc


# --- label selectors ----------------------------------------------------------------------


def _label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"prefix part of {key!r} must be a DNS subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return f"name part of {key!r} must be 63 characters or less, alphanumeric, '-', '_' or '.'"
    return None


def _label_value_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return f"label value {value!r} must be 63 characters or less, alphanumeric, '-', '_' or '.'"
    return None


Requirement = tuple[str, str, tuple[str, ...]]  # key, operator, values


def _terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return terms


def parse_selector(text: str) -> list[Requirement]:
    """A label selector as the API server parses it; ValueError when it is malformed."""
    if not text.strip():
        return []
    requirements: list[Requirement] = []
    for raw in _terms(text):
        term = raw.strip()
        if match := re.fullmatch(r"(\S+?)\s*(==|!=|=)\s*(\S*)", term):
            key, op, value = match.groups()
            requirements.append((key, "!=" if op == "!=" else "=", (value,)))
        elif match := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^()]*)\)", term):
            key, op, values = match.groups()
            items = tuple(v.strip() for v in values.split(","))
            if not all(items):
                raise ValueError(f"unable to parse requirement: {term!r}: empty value in a set")
            requirements.append((key, op, items))
        elif match := re.fullmatch(r"(!?)\s*([^\s!=(),]+)", term):
            negated, key = match.groups()
            requirements.append((key, "!" if negated else "exists", ()))
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    for key, _, values in requirements:
        problem = _label_key_problem(key) or next(
            (p for p in map(_label_value_problem, values) if p), None
        )
        if problem:
            raise ValueError(f"unable to parse requirement: {problem}")
    return requirements


def matches(object_labels: Mapping[str, str], requirements: list[Requirement]) -> bool:
    for key, op, values in requirements:
        present = key in object_labels
        value = object_labels.get(key)
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
        if op in ("=", "in") and (not present or value not in values):
            return False
        if op in ("!=", "notin") and present and value in values:
            return False
    return True


def matches_selector(object_labels: Mapping[str, str], selector: str) -> bool:
    return matches(object_labels, parse_selector(selector))


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


def _validate(kind: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
    """The API server's validation of what the target writes: 422 Invalid when wrong."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    problems = []
    if kind == "Service":
        if len(name) > 63 or not _DNS_1035.match(name):
            problems.append(f"metadata.name: Invalid value: {name!r}: a DNS-1035 label")
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"metadata.name: Invalid value: {name!r}: a DNS-1123 subdomain")
    for key, value in (meta.get("labels") or {}).items():
        problem = _label_key_problem(str(key)) or _label_value_problem(str(value))
        if problem:
            problems.append(f"metadata.labels: Invalid value: {problem}")
    if kind == "Deployment":
        spec = obj.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels")
        template = spec.get("template") or {}
        if not selector:
            problems.append("spec.selector: Required value")
        elif not matches(
            (template.get("metadata") or {}).get("labels") or {},
            [(k, "=", (v,)) for k, v in selector.items()],
        ):
            problems.append(
                "spec.template.metadata.labels: Invalid value: `selector` does not match "
                "template `labels`"
            )
        if not (template.get("spec") or {}).get("containers"):
            problems.append("spec.template.spec.containers: Required value")
        if old is not None and (old.get("spec") or {}).get("selector") != spec.get("selector"):
            problems.append("spec.selector: Invalid value: field is immutable")
        replicas = spec.get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            problems.append(f"spec.replicas: Invalid value: {replicas!r}")
    if kind == "Service" and old is not None:
        before = (old.get("spec") or {}).get("clusterIP")
        if (obj.get("spec") or {}).get("clusterIP") != before:
            problems.append("spec.clusterIP: Invalid value: field is immutable")
    if problems:
        raise ApiError(
            422,
            "Invalid",
            f'{kind} "{name}" is invalid: ' + "; ".join(problems),
            {"name": name, "kind": kind.lower() + "s"},
        )


def _defaults(kind: str, obj: dict[str, Any]) -> None:
    """Fields the API server fills in when they are missing."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if kind == "Deployment":
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        for container in ((spec.get("template") or {}).get("spec") or {}).get("containers") or []:
            for port in container.get("ports") or []:
                port.setdefault("protocol", "TCP")
    if kind == "Service":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))


def _spec_of(obj: Mapping[str, Any]) -> Any:
    # Everything but metadata and status counts as spec for generation (data, rules...).
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str


@dataclass
class AttachedRouter:
    """A real router process standing in for a router pod: its URL and config file."""

    url: str
    config_path: Path


@dataclass
class FakeKubernetes:
    """The API server's state; `serve()` puts it on 127.0.0.1."""

    gateway_api: bool = True
    namespaces: set[str] = field(default_factory=lambda: {"ml"})
    ignore_selectors: bool = False  # hostile: LIST returns everything of the kind
    objects: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    ownership: dict[tuple[str, str, str, str], Ownership] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)
    # Deployment name -> what its crash-looping pods wrote before their last restart.
    crash_logs: dict[str, str] = field(default_factory=dict)
    pod_logs: dict[str, str] = field(default_factory=dict)
    # What a pod's container wrote before its last restart (GET .../log?previous=true).
    pod_previous_logs: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    fail_next: dict[str, int] = field(default_factory=dict)  # method -> HTTP code, once
    forbidden: set[tuple[str, str]] = field(default_factory=set)  # (resource, verb)
    # spec.replicas of each Deployment after every write that changed it, in order.
    replicas_history: dict[str, list[int]] = field(default_factory=dict)
    # The kubelet stand-in: each pod's copy of its Secrets, by volume name.
    mounted: dict[tuple[str, str], dict[str, dict[str, str]]] = field(default_factory=dict)
    stalled_kubelets: set[str] = field(default_factory=set)
    kubelet_syncs: list[str] = field(default_factory=list)
    attached: dict[str, AttachedRouter] = field(default_factory=dict)
    old_router_image: bool = False  # routers from before /-/config-digest (they answer 404)
    old_router_pods: set[str] = field(default_factory=set)  # those pods only (a mixed fleet)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _version: int = 0
    _dirty_now: set[tuple[str, str]] = field(default_factory=set)
    _dirty_due: set[tuple[str, str]] = field(default_factory=set)
    url: str = ""

    # --- bookkeeping -------------------------------------------------------------------

    def _resources(self) -> dict[tuple[str, str, str], str]:
        return {**RESOURCES, **(GATEWAY_RESOURCES if self.gateway_api else {})}

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _api_version(self, group: str, version: str) -> str:
        return f"{group}/{version}" if group else version

    def _own(self, key: tuple[str, str, str, str], kind: str) -> Ownership:
        if key not in self.ownership:
            self.ownership[key] = Ownership(kind)
        return self.ownership[key]

    def _store(self, key: tuple[str, str, str, str], kind: str, obj: dict[str, Any]) -> None:
        """Keep a written object: resourceVersion, managedFields, the controller's due."""
        obj["metadata"]["resourceVersion"] = self._next_version()
        obj["metadata"]["managedFields"] = self._own(key, kind).entries()
        before = self.objects.get(key)
        self.objects[key] = obj
        if kind == "Deployment":
            replicas = int(obj["spec"]["replicas"])
            old = None if before is None else before["spec"].get("replicas")
            if old != replicas:
                self.replicas_history.setdefault(key[3], []).append(replicas)
            self._dirty_now.add((key[1], key[3]))

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

    def managers(self, plural: str, name: str, namespace: str = "ml") -> list[dict[str, Any]]:
        """managedFields of an object."""
        obj = self.get(plural, name, namespace)
        assert obj is not None, name
        return list(obj["metadata"].get("managedFields") or [])

    def owners(self, plural: str, name: str, *names: str, namespace: str = "ml") -> list[str]:
        """'manager/Operation[/subresource]' of each manager owning the field at `names`."""
        from kube_ssa import owns

        return sorted(
            "/".join(filter(None, (e["manager"], e["operation"], e.get("subresource"))))
            for e in self.managers(plural, name, namespace)
            if owns(e, *names)
        )

    def hold(self, name: str) -> None:
        """The controller leaves this Deployment's status to the test."""
        with self.lock:
            self.held.add(name)

    def release(self, name: str, namespace: str = "ml") -> None:
        with self.lock:
            self.held.discard(name)
            self._control(namespace, name)

    def break_deployment(self, name: str, *, previous_log: str | None = None) -> None:
        """Its pods crash-loop; `previous_log` is what each pod's container wrote before
        its last restart (log?previous=true): where an init() raised."""
        with self.lock:
            self.broken.add(name)
            if previous_log is not None:
                self.crash_logs[name] = previous_log

    def settle(self) -> None:
        """The controller catches up with every change (as some time passing would)."""
        with self.lock:
            for namespace, name in sorted(self._dirty_due | self._dirty_now):
                self._control(namespace, name)
            self._dirty_due.clear()
            self._dirty_now.clear()

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

    def put(self, manifest: dict[str, Any], *, manager: str = "kubectl") -> None:
        """An object made by someone else (a user, another tool): no labels of ours."""
        group, _, _version = manifest["apiVersion"].rpartition("/")
        kind = manifest["kind"]
        plural = next(p for (g, v, p), k in self._resources().items() if k == kind)
        meta = manifest["metadata"]
        with self.lock:
            key = (group, meta["namespace"], plural, meta["name"])
            obj = copy.deepcopy(manifest)
            self._new_object(kind, obj)
            self._own(key, kind).update(
                self.objects.get(key), obj, manager=manager, api_version=manifest["apiVersion"]
            )
            self._store(key, kind, obj)

    def autoscale(self, name: str, replicas: int, namespace: str = "ml") -> None:
        """What the HorizontalPodAutoscaler does: replicas through the scale subresource,
        as the controller manager."""
        with self.lock:
            key = ("apps", namespace, "deployments", name)
            self._scale_to(key, replicas, manager=CONTROLLER)

    # --- the kubelet stand-in ----------------------------------------------------------

    def stall_kubelet(self, pod: str) -> None:
        """This pod's kubelet stops refreshing its Secret volumes."""
        with self.lock:
            self.stalled_kubelets.add(pod)

    def unstall_kubelet(self, pod: str) -> None:
        with self.lock:
            self.stalled_kubelets.discard(pod)

    def kubelet_sync(self, pod: str | None = None, namespace: str = "ml") -> None:
        """The kubelet's periodic sync: Secret volumes of a pod (or of every pod) refreshed."""
        with self.lock:
            for _g, ns, plural, name in list(self.objects):
                if plural == "pods" and ns == namespace and pod in (None, name):
                    self._sync_volumes(ns, name)

    def attach_router(self, pod: str, url: str, config_path: Path) -> None:
        """A real router process answers for this pod; the kubelet writes its config file."""
        with self.lock:
            self.attached[pod] = AttachedRouter(url, config_path)

    def _sync_volumes(self, namespace: str, pod_name: str) -> None:
        if pod_name in self.stalled_kubelets:
            return
        pod = self.objects.get(("", namespace, "pods", pod_name))
        if pod is None:
            return
        copies = {}
        for volume in pod["spec"].get("volumes") or []:
            secret_name = (volume.get("secret") or {}).get("secretName")
            if secret_name is None:
                continue
            secret = self.objects.get(("", namespace, "secrets", secret_name))
            copies[volume["name"]] = dict((secret or {}).get("data") or {})
        self.mounted[(namespace, pod_name)] = copies
        self.kubelet_syncs.append(pod_name)
        backend = self.attached.get(pod_name)
        if backend is not None:
            content = self._mounted_file(namespace, pod)
            if content is not None:
                # The kubelet swaps a symlink; an atomic replace is what the router sees.
                temporary = backend.config_path.with_name(f".{backend.config_path.name}.new")
                temporary.write_bytes(content)
                os.chmod(temporary, 0o600)
                os.replace(temporary, backend.config_path)

    def _router_config_path(self, pod: Mapping[str, Any]) -> str | None:
        container = pod["spec"]["containers"][0]
        if ROUTER_MODULE not in (container.get("command") or []):
            return None
        args = list(container.get("args") or [])
        return args[args.index("--config") + 1] if "--config" in args else None

    def _mounted_file(self, namespace: str, pod: Mapping[str, Any]) -> bytes | None:
        """The router's config file as the pod sees it (its kubelet's copy)."""
        path = self._router_config_path(pod)
        if path is None:
            return None
        folder, _, name = path.rpartition("/")
        container = pod["spec"]["containers"][0]
        mount = next(
            (v for v in container.get("volumeMounts") or [] if v["mountPath"] == folder), None
        )
        if mount is None:
            return None
        copies = self.mounted.get((namespace, pod["metadata"]["name"]), {})
        encoded = copies.get(mount["name"], {}).get(name)
        return None if encoded is None else base64.b64decode(encoded)

    def _proxy(self, namespace: str, target: str, path: str) -> tuple[int, Any]:
        """The API server's pod proxy: what the pod answers on that port and path."""
        name, _, port = target.partition(":")
        pod = self.objects.get(("", namespace, "pods", name))
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        refused = ApiError(
            503,
            "ServiceUnavailable",
            f"error trying to reach service: dial tcp 127.0.0.1:{port or 80}: "
            "connect: connection refused",
        )
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (pod.get("status") or {}).get("conditions") or []
        )
        ports = {
            str(p.get("containerPort"))
            for c in pod["spec"]["containers"]
            for p in c.get("ports") or []
        }
        if not ready or port not in ports:
            raise refused
        backend = self.attached.get(name)
        if backend is not None:
            try:
                # A real API server's proxy waits on a pod far longer than a client should.
                with urllib.request.urlopen(f"{backend.url}{path}", timeout=120) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            except OSError:
                raise refused from None
        content = self._mounted_file(namespace, pod)
        if self._router_config_path(pod) is None:
            raise refused
        if path == "/-/ready":
            return 200, "ready"
        if path == "/-/config-digest" and not (
            self.old_router_image or name in self.old_router_pods
        ):
            try:
                config = parse_config(content or b"")
            except ConfigError:
                raise refused from None  # a router without a valid config does not start
            return 200, json.dumps({"digest": config.digest()})
        return 404, json.dumps({"message": "not found"})  # the router's own 404

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
        obj["metadata"]["resourceVersion"] = self._next_version()
        self._sync_pods(namespace, obj, ready=replicas)

    def _sync_pods(
        self, namespace: str, deployment: dict[str, Any], *, ready: int, crash: bool = False
    ) -> None:
        """The Deployment's pods: one per replica of its template; a pod of the template
        stays (with its annotations and mounted Secrets), others go."""
        template = deployment["spec"]["template"]
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[
            :10
        ]
        name = deployment["metadata"]["name"]
        replicas = int(deployment["spec"].get("replicas", 1))
        wanted = [f"{name}-{template_hash}-{index}" for index in range(replicas)]
        for key in [
            k
            for k, o in self.objects.items()
            if k[1] == namespace
            and k[2] == "pods"
            and o["metadata"].get("labels", {}).get("fake/deployment") == name
            and k[3] not in wanted
        ]:
            del self.objects[key]
            self.mounted.pop((namespace, key[3]), None)
        for index, pod_name in enumerate(wanted):
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
            status = {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True" if is_ready else "False"}],
                "containerStatuses": [container_status],
            }
            key = ("", namespace, "pods", pod_name)
            existing = self.objects.get(key)
            if existing is not None:
                if existing["status"] != status:
                    existing["status"] = status
                    existing["metadata"]["resourceVersion"] = self._next_version()
                continue
            self.objects[key] = {
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
                "status": status,
            }
            # A starting pod mounts its Secrets as they are now (even a stalled kubelet).
            stalled = pod_name in self.stalled_kubelets
            self.stalled_kubelets.discard(pod_name)
            self._sync_volumes(namespace, pod_name)
            if stalled:
                self.stalled_kubelets.add(pod_name)

    # --- verbs -------------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: bytes,
        content_type: str,
        user_agent: str = "",
    ) -> tuple[int, Any]:
        with self.lock:
            self.requests.append(Request(method, path, query, content_type))
            try:
                return self._handle(method, path, query, body, content_type, user_agent)
            finally:
                # The controller acts on a change one request later, as a real one acts
                # some time after the write: the first read after a write sees old status.
                for namespace, name in sorted(self._dirty_due - self._dirty_now):
                    self._control(namespace, name)
                self._dirty_due = self._dirty_now
                self._dirty_now = set()

    def _handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: bytes,
        content_type: str,
        user_agent: str,
    ) -> tuple[int, Any]:
        failing = self.fail_next.pop(method, None)
        if failing is not None:
            raise ApiError(failing, "InternalError", "injected failure")
        if path == "/version":
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake"}
        group, version, namespace, plural, name, sub, rest = self._parse(path)
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update"}.get(
            method, method.lower()
        )
        resource = f"{plural}/{sub}" if sub else plural
        if (resource, verb) in self.forbidden:
            raise ApiError(
                403,
                "Forbidden",
                f'{plural} "{name or ""}" is forbidden: User "tester" cannot {verb} resource '
                f'"{resource}" in API group "{group}" in the namespace "{namespace}"',
            )
        kind = self._resources().get((group, version, plural))
        if kind is None:
            raise ApiError(404, "NotFound", f"the server could not find {path}")
        if plural == "pods" and sub == "proxy" and name is not None:
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} through the proxy")
            return self._proxy(namespace, name, "/" + rest)
        key = (group, namespace, plural, name or "")
        manager = query.get("fieldManager") or user_agent.split("/")[0] or "unknown"
        if name is None:
            if method == "GET":
                return 200, self._list(group, version, kind, namespace, plural, query)
            if method == "POST":
                doc = json.loads(body)
                meta = doc.get("metadata") or {}
                key = (group, namespace, plural, str(meta.get("name", "")))
                return self._create(key, group, version, kind, doc, manager)
            raise ApiError(405, "MethodNotAllowed", f"{method} on a collection")
        if method == "GET":
            return 200, self._get(key, kind, sub, query)
        if method == "PATCH":
            return self._patch(
                key, group, version, kind, sub, query, body, content_type, manager=manager
            )
        if method == "PUT":
            return self._put(key, group, version, kind, json.loads(body), manager)
        if method == "DELETE":
            return 200, self._delete(key, kind)
        raise ApiError(405, "MethodNotAllowed", method)

    def _parse(self, path: str) -> tuple[str, str, str, str, str | None, str | None, str]:
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
        tail = "/".join(rest[5:])
        if sub != "proxy" and tail:
            raise ApiError(404, "NotFound", f"no such path {path}")
        return group, version, namespace, plural, name, sub, tail

    def _namespace_exists(self, namespace: str) -> None:
        if namespace not in self.namespaces:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )

    def _list(
        self,
        group: str,
        version: str,
        kind: str,
        namespace: str,
        plural: str,
        query: dict[str, str],
    ) -> dict[str, Any]:
        try:
            requirements = parse_selector(query.get("labelSelector", ""))
        except ValueError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        if self.ignore_selectors:
            requirements = []
        items = [
            copy.deepcopy(obj)
            for (g, ns, p, _), obj in sorted(self.objects.items())
            if (g, ns, p) == (group, namespace, plural)
            and matches(obj["metadata"].get("labels") or {}, requirements)
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
            if query.get("previous") == "true":
                owner = obj["metadata"].get("labels", {}).get("fake/deployment")
                if key[3] not in self.pod_previous_logs and owner in self.crash_logs:
                    return self.crash_logs[owner]
                # As the API server answers for a container that never restarted.
                if key[3] not in self.pod_previous_logs:
                    raise ApiError(
                        400,
                        "BadRequest",
                        f'previous terminated container "server" in pod "{key[3]}" not found',
                    )
                text = self.pod_previous_logs[key[3]]
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

    def _scale_to(self, key: tuple[str, str, str, str], replicas: Any, *, manager: str) -> None:
        existing = self.objects.get(key)
        if existing is None:
            raise ApiError(404, "NotFound", f'deployments.apps "{key[3]}" not found')
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}")
        updated = copy.deepcopy(existing)
        updated["spec"]["replicas"] = replicas
        if replicas != existing["spec"].get("replicas"):
            updated["metadata"]["generation"] += 1
        self._own(key, "Deployment").update(
            existing, updated, manager=manager, api_version="apps/v1", subresource="scale"
        )
        self._store(key, "Deployment", updated)

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
        *,
        manager: str,
    ) -> tuple[int, Any]:
        media = content_type.split(";")[0].strip()
        existing = self.objects.get(key)
        if media == "application/apply-patch+yaml":
            if sub is not None:
                raise ApiError(400, "BadRequest", "apply on a subresource is not supported here")
            if not query.get("fieldManager"):
                raise ApiError(400, "BadRequest", "PATCH with apply-patch requires a fieldManager")
            force = query.get("force", "false")
            if force not in ("true", "false"):
                raise ApiError(400, "BadRequest", f"force: invalid value {force!r}")
            applied = yaml.safe_load(body)
            return self._apply(
                key,
                group,
                version,
                kind,
                applied,
                existing,
                manager=query["fieldManager"],
                force=force == "true",
            )
        if media in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            # A strategic merge patch of the fields the tests patch (maps, scalars) is a
            # merge patch; lists would merge by key on a real server.
            if existing is None:
                raise ApiError(404, "NotFound", f'{kind.lower()}s "{key[3]}" not found')
            patch = json.loads(body)
            if sub == "scale":
                self._scale_to(key, (patch.get("spec") or {}).get("replicas"), manager=manager)
                return 200, self._scale(self.objects[key])
            if sub == "status":
                existing["status"] = merge_patch(existing.get("status"), patch.get("status"))
                existing["metadata"]["resourceVersion"] = self._next_version()
                return 200, copy.deepcopy(existing)
            if sub is not None:
                raise ApiError(404, "NotFound", f"no subresource {sub}")
            patch.get("metadata", {}).pop("managedFields", None)
            updated = merge_patch(copy.deepcopy(existing), patch)
            return 200, self._update(key, group, version, kind, existing, updated, manager)
        raise ApiError(415, "UnsupportedMediaType", f"content type {content_type!r}")

    def _update(
        self,
        key: tuple[str, str, str, str],
        group: str,
        version: str,
        kind: str,
        existing: dict[str, Any],
        updated: dict[str, Any],
        manager: str,
    ) -> dict[str, Any]:
        for system in ("uid", "creationTimestamp", "generation", "name", "namespace"):
            if system in existing["metadata"]:
                updated["metadata"][system] = existing["metadata"][system]
        updated["status"] = existing.get("status")
        if updated["status"] is None:
            updated.pop("status")
        _defaults(kind, updated)
        _validate(kind, updated, existing)
        if kind not in _NO_GENERATION and _spec_of(updated) != _spec_of(existing):
            updated["metadata"]["generation"] = existing["metadata"]["generation"] + 1
        self._own(key, kind).update(
            existing, updated, manager=manager, api_version=self._api_version(group, version)
        )
        self._store(key, kind, updated)
        changed_meta = any(
            existing["metadata"].get(part) != updated["metadata"].get(part)
            for part in ("labels", "annotations")
        )
        if kind == "Pod" and changed_meta:
            # A changed pod is synced by its kubelet at once: its Secret volumes too.
            self._sync_volumes(key[1], key[3])
        return copy.deepcopy(updated)

    def _put(
        self,
        key: tuple[str, str, str, str],
        group: str,
        version: str,
        kind: str,
        doc: dict[str, Any],
        manager: str,
    ) -> tuple[int, Any]:
        existing = self.objects.get(key)
        if existing is None:
            raise ApiError(404, "NotFound", f'{kind.lower()}s "{key[3]}" not found')
        given = (doc.get("metadata") or {}).get("resourceVersion")
        if given != existing["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.lower()}s "{key[3]}": the object has '
                "been modified; please apply your changes to the latest version and try again",
            )
        doc.get("metadata", {}).pop("managedFields", None)
        return 200, self._update(key, group, version, kind, existing, doc, manager)

    def _create(
        self,
        key: tuple[str, str, str, str],
        group: str,
        version: str,
        kind: str,
        doc: dict[str, Any],
        manager: str,
    ) -> tuple[int, Any]:
        self._namespace_exists(key[1])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.lower()}s "{key[3]}" already exists')
        obj = copy.deepcopy(doc)
        obj.setdefault("metadata", {})["namespace"] = key[1]
        obj["metadata"].pop("managedFields", None)
        self._new_object(kind, obj)
        self._own(key, kind).update(
            None, obj, manager=manager, api_version=self._api_version(group, version)
        )
        self._store(key, kind, obj)
        return 201, copy.deepcopy(obj)

    def _new_object(self, kind: str, obj: dict[str, Any]) -> None:
        obj["metadata"]["uid"] = str(uuid.uuid4())
        obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        if kind not in _NO_GENERATION:
            obj["metadata"]["generation"] = 1
        if kind == "Service":
            obj["spec"].setdefault("clusterIP", "10.96.0." + str(1 + len(self.objects) % 250))
        _defaults(kind, obj)
        _validate(kind, obj, None)

    def _apply(
        self,
        key: tuple[str, str, str, str],
        group: str,
        version: str,
        kind: str,
        applied: Any,
        existing: dict[str, Any] | None,
        *,
        manager: str,
        force: bool,
    ) -> tuple[int, Any]:
        api_version = self._api_version(group, version)
        if not isinstance(applied, dict):
            raise ApiError(400, "BadRequest", "apply body must be an object")
        if applied.get("apiVersion") != api_version:
            raise ApiError(400, "BadRequest", f"apiVersion {applied.get('apiVersion')!r}")
        if applied.get("kind") != kind:
            raise ApiError(400, "BadRequest", f"kind {applied.get('kind')!r} on {kind} path")
        meta = applied.get("metadata") or {}
        if meta.get("name") != key[3]:
            raise ApiError(400, "BadRequest", "the name of the body differs from the path")
        if meta.get("namespace", key[1]) != key[1]:
            raise ApiError(400, "BadRequest", "the namespace of the body differs from the path")
        if meta.get("managedFields") is not None:
            raise ApiError(400, "BadRequest", "metadata.managedFields must be nil")
        self._namespace_exists(key[1])
        document = copy.deepcopy(applied)
        document.pop("status", None)  # the main resource ignores status
        document["metadata"]["namespace"] = key[1]
        if kind == "Secret" and "stringData" in document:
            data = document.setdefault("data", {})
            for k, v in document.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()
        ownership = self._own(key, kind)
        before = copy.deepcopy(ownership)
        try:
            obj = ownership.apply(
                existing, document, manager=manager, api_version=api_version, force=force
            )
        except ApplyConflict as conflict:
            self.ownership[key] = before
            if existing is None:
                self.ownership.pop(key, None)
            raise ApiError(
                409,
                "Conflict",
                str(conflict),
                {
                    "name": key[3],
                    "kind": f"{key[2]}" if not group else f"{key[2]}.{group}",
                    "causes": [
                        {
                            "reason": "FieldManagerConflict",
                            "message": f'conflict with "{m}" using {v}',
                            "field": path_text(p),
                        }
                        for m, v, p in conflict.conflicts
                    ],
                },
            ) from None
        except ValueError as exc:
            self.ownership[key] = before
            raise ApiError(422, "Invalid", str(exc)) from None
        try:
            if existing is None:
                self._new_object(kind, obj)
            else:
                _defaults(kind, obj)
                _validate(kind, obj, existing)
        except ApiError:
            # A refused write changes nothing, its field ownership neither.
            if existing is None:
                self.ownership.pop(key, None)
            else:
                self.ownership[key] = before
            raise
        if existing is None:
            code = 201
        else:
            if kind not in _NO_GENERATION and _spec_of(obj) != _spec_of(existing):
                obj["metadata"]["generation"] = existing["metadata"]["generation"] + 1
            code = 200
        self._store(key, kind, obj)
        return code, copy.deepcopy(obj)

    def _delete(self, key: tuple[str, str, str, str], kind: str) -> dict[str, Any]:
        if key not in self.objects:
            raise ApiError(404, "NotFound", f'{kind.lower()}s "{key[3]}" not found')
        del self.objects[key]
        self.ownership.pop(key, None)
        if kind == "Deployment":
            for pod_key in [
                k
                for k, o in self.objects.items()
                if k[2] == "pods" and o["metadata"]["labels"].get("fake/deployment") == key[3]
            ]:
                del self.objects[pod_key]
                self.mounted.pop((pod_key[1], pod_key[3]), None)
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
                    method,
                    parsed.path,
                    query,
                    body,
                    self.headers.get("Content-Type", ""),
                    self.headers.get("User-Agent", ""),
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (its read timed out, its test ended) is no error of the
        # API server's. And a traceback formatted in this thread while the main thread
        # parses Python (pytest rewriting a module it imports late) trips CPython 3.11's
        # AST recursion counter, shared by all threads: a SystemError in the main thread
        # (python/cpython#106905; 3.11's traceback carets call ast.parse).
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@contextmanager
def serve(fake: FakeKubernetes | None = None) -> Iterator[FakeKubernetes]:
    """The fake on a free port of 127.0.0.1 for the duration of the block."""
    fake = fake or FakeKubernetes()
    server = _Server(("127.0.0.1", 0), _handler(fake))
    # shutdown() waits for serve_forever's next poll: at its default 0.5 s that was half
    # of many tests' time.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
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
        config_propagation_s=10.0,
    )
    return replace(base, **overrides)


def gateway_options(**overrides: Any) -> KubernetesOptions:
    return options(
        router="gateway-api", gateway=GatewayRef("ml-gateway", "gateway-system"), **overrides
    )


def make_target(
    fake: FakeKubernetes,
    opts: KubernetesOptions | None = None,
    *,
    repository: str | None = None,
    repo_root: Path = Path("."),
) -> Any:
    """The target on the fake's namespace; `repository` (GitSource.identity) as `reconcile`
    gives it, None: every endpoint of the target is this one's."""
    from reconciler.targets.kubernetes.target import KubernetesTarget

    opts = opts or options()
    return KubernetesTarget(
        opts,
        repo_root=repo_root,
        client=KubeClient.for_host(fake.url, NAMESPACE),
        images=PlannedImages(opts),
        repository=repository,
    )


def apply_rev(
    repo: RepoBuilder, target: Any, rev: str = "HEAD", *, prune: bool = False
) -> PassResult:
    """Passes of `rev` until nothing is in progress, as `reconcile` runs them; the last."""
    source = GitSource(repo.root)
    commit = source.resolve(rev)
    return converge(source.tree(commit), target, prune=prune, revision=commit, gate=FAST_GATE)


def one_pass(
    repo: RepoBuilder, target: Any, rev: str = "HEAD", *, prune: bool = False
) -> PassResult:
    """A single pass of `rev`, as the daemon runs one: what ends in progress stays so."""
    source = GitSource(repo.root)
    commit = source.resolve(rev)
    return run_pass(source.tree(commit), target, prune=prune, dry_run=False, revision=commit)


def plan_rev(
    repo: RepoBuilder, target: Any, rev: str = "HEAD", *, prune: bool = False
) -> PassResult:
    source = GitSource(repo.root)
    commit = source.resolve(rev)
    return run_pass(source.tree(commit), target, prune=prune, dry_run=True, revision=commit)


def failures(result: PassResult) -> list[str]:
    return [
        f"{result.plan.steps[r.index].action} {result.plan.steps[r.index].target_name}: {r.message}"
        for r in result.results
        if r.outcome != Outcome.SUCCEEDED
    ]
