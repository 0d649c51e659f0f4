"""Specs back from their canonical JSON form (specs.to_json), for targets that store the
spec they applied (a container label, an annotation) and read it back when they observe."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from reconciler.model import specs
from reconciler.model.specs import MAPPING_FIELDS, DeploymentSpec, EndpointSpec

T = TypeVar("T")
_HINTS: dict[type, dict[str, Any]] = {}


def from_json(cls: type[T], data: Any) -> T:
    """The dataclass `cls` from `data`; unknown keys are ignored (an older or newer writer)."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls, vars(specs))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data or not f.init:
            continue
        raw = data[f.name]
        if f.name in MAPPING_FIELDS:
            values[f.name] = tuple(sorted((str(k), v) for k, v in (raw or {}).items()))
        else:
            values[f.name] = _value(hints[f.name], raw)
    return cls(**values)


def _value(hint: Any, raw: Any) -> Any:
    if raw is None:
        return None
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        return _value(options[0], raw) if len(options) == 1 else raw
    if origin is tuple:
        (item, *_rest) = get_args(hint)
        return tuple(_value(item, x) for x in raw)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, raw)
    return raw


def deployment_from_json(data: Any) -> DeploymentSpec:
    return from_json(DeploymentSpec, data)


def endpoint_from_json(data: Any) -> EndpointSpec:
    return from_json(EndpointSpec, data)
