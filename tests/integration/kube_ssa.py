"""Server-side apply's field ownership, as the API server keeps it, for the fake API server.

What a real API server does (structured-merge-diff, as `kube-apiserver` runs it), for the
part of the schema the Kubernetes target writes:

- Each object carries `metadata.managedFields`: per field manager (and operation: `Apply`,
  or `Update` for every other write, and the subresource it came through, such as `scale`)
  the set of fields it owns, as a `fieldsV1` tree.
- An apply by a manager *replaces* that manager's set with the fields of the applied
  document. A field the manager owned before and no longer applies is removed from the
  object, unless another manager owns it too; a field the server defaults (a Deployment's
  `replicas`) then comes back with its default.
- An apply that gives a field a value other than the live one, while another manager owns
  that field, is refused (409, one cause per conflicting field) unless `force=true`, which
  takes the field away from the other managers. Applying the value the field already has
  shares its ownership.
- Any other write (a merge patch, a PUT, the scale subresource) makes its manager own the
  fields it changed, and takes them from the others; it never conflicts.

Lists: a list whose items are identified by keys (containers by `name`, Service ports by
`port` and `protocol`, ...) is merged item by item and each item is owned on its own; any
other list is atomic (one field, replaced whole), as the OpenAPI schema says for the kinds
used here. Status is left out: only the controller stand-in writes it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# A path element: ("f", field name) or ("k", ((key field, value), ...)) for a keyed item.
Element = tuple[str, Any]
Path = tuple[Element, ...]

MISSING: Any = object()

# Associative lists of the kinds the target writes: list field -> its item keys.
_ITEM_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "imagePullSecrets": ("name",),
    "ownerReferences": ("uid",),
}
# Key fields the server defaults when an item leaves them out.
_KEY_DEFAULTS = {"protocol": "TCP"}
# Metadata fields that are owned; name, namespace, uid, resourceVersion... are not.
_OWNED_METADATA = ("labels", "annotations", "ownerReferences", "finalizers")
_UNOWNED_TOP = ("apiVersion", "kind", "status")


def item_keys(kind: str, names: tuple[str, ...]) -> tuple[str, ...] | None:
    """The keys of the list at `names` (field names from the root), None when atomic."""
    last = names[-1]
    if last == "ports":
        if kind == "Service" and names == ("spec", "ports"):
            return ("port", "protocol")
        if len(names) >= 2 and names[-2] in ("containers", "initContainers"):
            return ("containerPort", "protocol")
        return None
    return _ITEM_KEYS.get(last)


def _key_of(item: Any, keys: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    if not isinstance(item, Mapping):
        raise ValueError(f"an item of a keyed list is not an object: {item!r}")
    result = []
    for key in keys:
        value = item.get(key, _KEY_DEFAULTS.get(key, MISSING))
        if value is MISSING:
            raise ValueError(f"an item of a keyed list has no {key!r}")
        result.append((key, value))
    return tuple(result)


def field_set(obj: Mapping[str, Any], kind: str) -> set[Path]:
    """Every owned field of an object (its members in fieldsV1 terms)."""
    members: set[Path] = set()

    def walk(value: Any, path: Path, names: tuple[str, ...]) -> None:
        if isinstance(value, Mapping):
            if not value:
                members.add(path)
            for name, child in value.items():
                walk(child, (*path, ("f", name)), (*names, name))
        elif isinstance(value, list) and names and item_keys(kind, names) is not None:
            keys = item_keys(kind, names)
            assert keys is not None
            for item in value:
                item_path = (*path, ("k", _key_of(item, keys)))
                members.add(item_path)
                for name, child in item.items():
                    walk(child, (*item_path, ("f", name)), (*names, name))
        else:
            members.add(path)

    for top, value in obj.items():
        if top in _UNOWNED_TOP:
            continue
        if top == "metadata":
            for name in _OWNED_METADATA:
                if name in (value or {}):
                    walk(value[name], (("f", "metadata"), ("f", name)), ("metadata", name))
            continue
        walk(value, (("f", top),), (top,))
    return members


def _has_key(item: Any, key: tuple[tuple[str, Any], ...]) -> bool:
    if not isinstance(item, Mapping):
        return False
    return all(item.get(k, _KEY_DEFAULTS.get(k, MISSING)) == v for k, v in key)


def get_at(obj: Any, path: Path) -> Any:
    node = obj
    for kind, value in path:
        if kind == "f":
            if not isinstance(node, Mapping) or value not in node:
                return MISSING
            node = node[value]
        else:
            if not isinstance(node, list):
                return MISSING
            node = next((i for i in node if _has_key(i, value)), MISSING)
            if node is MISSING:
                return MISSING
    return node


def delete_at(obj: Any, path: Path) -> None:
    """Remove the field or item at `path` (nothing when it is not there)."""
    parent = get_at(obj, path[:-1])
    kind, value = path[-1]
    if kind == "f":
        if isinstance(parent, dict):
            parent.pop(value, None)
    elif isinstance(parent, list):
        parent[:] = [i for i in parent if not _has_key(i, value)]


def merge(kind: str, live: Any, applied: Any, names: tuple[str, ...] = ()) -> Any:
    """The applied document laid over the live object: maps field by field, keyed lists
    item by item, anything else replaced."""
    if isinstance(applied, Mapping) and isinstance(live, Mapping):
        result = dict(copy.deepcopy(live))
        for name, value in applied.items():
            result[name] = merge(kind, live.get(name, MISSING), value, (*names, name))
        return result
    keys = item_keys(kind, names) if names else None
    if isinstance(applied, list) and isinstance(live, list) and keys is not None:
        result_list = copy.deepcopy(live)
        index = {_key_of(item, keys): n for n, item in enumerate(result_list)}
        for item in applied:
            at = index.get(_key_of(item, keys))
            if at is None:
                result_list.append(copy.deepcopy(item))
            else:
                result_list[at] = merge(kind, result_list[at], item, names)
        return result_list
    return copy.deepcopy(applied)


def _same(a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return a is b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def path_text(path: Path) -> str:
    """A field path as the API server writes it in conflict messages: `.spec.replicas`,
    `.spec.template.spec.containers[name="inference"].image`."""
    parts = []
    for kind, value in path:
        if kind == "f":
            parts.append(f".{value}")
        else:
            parts.append("[" + ",".join(f"{k}={json.dumps(v)}" for k, v in value) + "]")
    return "".join(parts)


@dataclass
class Manager:
    """One entry of managedFields."""

    name: str
    operation: str  # "Apply" or "Update"
    api_version: str
    subresource: str = ""
    fields: set[Path] = field(default_factory=set)

    def entry(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "manager": self.name,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": "2026-01-01T00:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(self.fields),
        }
        if self.subresource:
            result["subresource"] = self.subresource
        return result


def _element_text(element: Element) -> str:
    kind, value = element
    if kind == "f":
        return f"f:{value}"
    return "k:" + json.dumps(dict(value), sort_keys=True, separators=(",", ":"))


def fields_v1(members: Iterable[Path]) -> dict[str, Any]:
    """The fieldsV1 tree of a set of fields: `{"f:spec": {"f:replicas": {}}}`; a member
    with members below it also holds `".": {}`."""
    tree: dict[str, Any] = {}
    member_nodes = []
    for path in sorted(members, key=lambda p: [_element_text(e) for e in p]):
        node = tree
        for element in path:
            node = node.setdefault(_element_text(element), {})
        member_nodes.append(node)
    for node in member_nodes:
        if node and "." not in node:
            node["."] = {}
    return tree


def owns(entry: Mapping[str, Any], *names: str) -> bool:
    """Whether a managedFields entry owns the field at `names`, e.g. ("spec", "replicas")."""
    node = entry.get("fieldsV1") or {}
    for name in names:
        node = node.get(f"f:{name}")
        if node is None:
            return False
    return True


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[tuple[str, str, Path]]) -> None:
        self.conflicts = conflicts  # (manager, its apiVersion, field)
        count = len(conflicts)
        lines = [f'conflict with "{m}" using {v}: {path_text(p)}' for m, v, p in conflicts]
        head = f"Apply failed with {count} conflict{'s' if count > 1 else ''}: "
        super().__init__(head + ("\n".join(lines) if count > 1 else lines[0]))


class Ownership:
    """managedFields of one object, and the writes that change them."""

    def __init__(self, kind: str, managers: list[Manager] | None = None) -> None:
        self.kind = kind
        self.managers: list[Manager] = managers or []

    def _entry(self, name: str, operation: str, api_version: str, subresource: str) -> Manager:
        for manager in self.managers:
            if (manager.name, manager.operation, manager.subresource) == (
                name,
                operation,
                subresource,
            ):
                manager.api_version = api_version
                return manager
        manager = Manager(name, operation, api_version, subresource)
        self.managers.append(manager)
        return manager

    def owners(self, path: Path, *, but: Manager | None = None) -> list[Manager]:
        return [m for m in self.managers if m is not but and path in m.fields]

    def apply(
        self,
        live: Mapping[str, Any] | None,
        applied: Mapping[str, Any],
        *,
        manager: str,
        api_version: str,
        force: bool,
    ) -> dict[str, Any]:
        """The object after `manager` applies `applied` (live None: a create); raises
        ApplyConflict without force when the apply changes another manager's field."""
        applier = self._entry(manager, "Apply", api_version, "")
        before = set(applier.fields)
        wanted = field_set(applied, self.kind)
        base: Mapping[str, Any] = live or {}
        conflicts: list[tuple[Manager, Path]] = []
        for path in sorted(wanted, key=path_text):
            if path[-1][0] == "k":
                continue  # an item's presence; its fields are compared one by one
            if _same(get_at(applied, path), get_at(base, path)):
                continue
            for other in self.owners(path, but=applier):
                conflicts.append((other, path))
        if conflicts and not force:
            if not before:
                self.managers.remove(applier)
            raise ApplyConflict([(m.name, m.api_version, p) for m, p in conflicts])
        for other, path in conflicts:
            other.fields.discard(path)
        result = merge(self.kind, dict(base), applied)
        applier.fields = wanted
        # Fields this manager stops applying go, unless someone else owns them (or
        # something below them). An item that goes takes its fields with it.
        for path in sorted(before - wanted, key=len):
            if any(
                other is not applier and any(p[: len(path)] == path for p in other.fields)
                for other in self.managers
            ):
                continue
            delete_at(result, path)
        self._drop_empty()
        return result

    def update(
        self,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any],
        *,
        manager: str,
        api_version: str,
        subresource: str = "",
    ) -> None:
        """Ownership after a write that is not an apply: the writer owns what it changed,
        nobody owns what it removed."""
        before = field_set(old or {}, self.kind)
        after = field_set(new, self.kind)
        changed = {p for p in after if not _same(get_at(old or {}, p), get_at(new, p))}
        removed = before - after
        if changed:
            writer = self._entry(manager, "Update", api_version, subresource)
            for other in self.managers:
                if other is not writer:
                    other.fields -= changed
            writer.fields |= changed
        for m in self.managers:
            m.fields -= removed
        self._drop_empty()

    def _drop_empty(self) -> None:
        self.managers = [m for m in self.managers if m.fields]

    def entries(self) -> list[dict[str, Any]]:
        return [m.entry() for m in self.managers]
