"""The JSON Schemas of schemas/: valid Draft 2020-12, strict, and in step with the specs.

Loading skips jsonschema for documents that its compiled check finds valid; the last tests
hold that check to jsonschema's answers, on generated documents and on every fixture.
"""

from __future__ import annotations

import copy
import decimal
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from reconciler import jsonschemas, loading
from reconciler.model.specs import ProbeSettings, RequestSettings

SCHEMAS = Path(__file__).parent.parent.parent / "schemas"
FILES = sorted(p.name for p in SCHEMAS.glob("*.json"))
BASE = "https://ml-endpoint-reconciler.dev/schemas/"
NAME_PATTERN = "^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"

MINIMAL: dict[str, dict[str, Any]] = {
    "managedOnlineEndpoint.schema.json": {"name": "my-endpoint"},
    "kubernetesOnlineEndpoint.schema.json": {"name": "my-endpoint", "compute": "azureml:k8s"},
    "managedOnlineDeployment.schema.json": {
        "name": "blue",
        "endpoint_name": "my-endpoint",
        "environment": "azureml:env:1",
        "instance_type": "Standard_DS2_v2",
    },
    "kubernetesOnlineDeployment.schema.json": {
        "name": "blue",
        "endpoint_name": "my-endpoint",
        "type": "kubernetes",
        "environment": {"image": "python:3.11-slim"},
    },
    "model.schema.json": {"name": "sk", "path": "model.pkl"},
    "environment.schema.json": {"name": "env", "image": "python:3.11-slim"},
    "reconciler.schema.json": {"targets": {"local": {"type": "docker"}}},
}


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return loaded


def objects(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema, with where it sits."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from objects(value, f"{where}/{index}")


def test_the_seven_schemas_are_there() -> None:
    assert sorted(MINIMAL) == FILES


@pytest.mark.parametrize("name", FILES)
def test_each_schema_is_valid_draft_2020_12(name: str) -> None:
    loaded = schema(name)
    assert loaded["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(loaded)


def test_ids_are_stable_and_unique() -> None:
    ids = [schema(name)["$id"] for name in FILES]
    assert ids == [BASE + name for name in FILES]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("name", FILES)
def test_the_package_ships_each_schema(name: str) -> None:
    assert loading.schema(name) == schema(name)


@pytest.mark.parametrize("name", FILES)
def test_a_minimal_document_is_valid_and_an_unknown_key_is_refused(name: str) -> None:
    validator = Draft202012Validator(schema(name))
    document = dict(MINIMAL[name], **{"$schema": "https://example.com/" + name})
    assert list(validator.iter_errors(document)) == []
    (error,) = validator.iter_errors(dict(document, instance_cout=3))
    assert error.validator == "additionalProperties"


@pytest.mark.parametrize("name", FILES)
def test_every_object_with_properties_refuses_other_keys(name: str) -> None:
    for where, node in objects(schema(name)):
        # An `if` is a condition on some keys, not the definition of an object.
        if "properties" in node and not where.endswith(("/properties", "/if")):
            assert node.get("additionalProperties") is False, where


def test_shared_definitions_are_the_same_in_every_file() -> None:
    seen: dict[str, tuple[str, Any]] = {}
    for name in FILES:
        for key, definition in schema(name).get("$defs", {}).items():
            first = seen.setdefault(key, (name, definition))
            assert definition == first[1], f"$defs/{key} differs in {name} and {first[0]}"


def test_rules_of_the_spec_reference() -> None:
    managed = schema("managedOnlineDeployment.schema.json")
    kubernetes = schema("kubernetesOnlineDeployment.schema.json")
    endpoint = schema("managedOnlineEndpoint.schema.json")
    assert managed["$defs"]["name"]["pattern"] == NAME_PATTERN
    assert (managed["$defs"]["name"]["minLength"], managed["$defs"]["name"]["maxLength"]) == (3, 32)
    assert endpoint["properties"]["traffic"]["additionalProperties"]["maximum"] == 100
    assert endpoint["properties"]["mirror_traffic"]["additionalProperties"]["maximum"] == 50
    assert endpoint["properties"]["mirror_traffic"]["maxProperties"] == 1
    assert endpoint["properties"]["auth_mode"]["enum"] == ["key", "aml_token", "aad_token"]
    assert managed["properties"]["instance_count"]["maximum"] == 50
    assert "maximum" not in kubernetes["properties"]["instance_count"]
    assert "resources" in kubernetes["properties"]
    assert "resources" not in managed["properties"]
    assert "instance_type" in managed["required"]
    assert "instance_type" not in kubernetes["required"]
    timeout = managed["$defs"]["request_settings"]["properties"]["request_timeout_ms"]
    assert timeout["maximum"] == 180000


def test_documented_defaults_are_the_defaults_of_the_specs() -> None:
    defs = schema("managedOnlineDeployment.schema.json")["$defs"]

    def defaults(definition: dict[str, Any]) -> dict[str, Any]:
        return {k: v["default"] for k, v in definition["properties"].items() if "default" in v}

    assert defaults(defs["request_settings"]) == vars_of(RequestSettings())
    assert defaults(defs["probe"]) == vars_of(ProbeSettings())
    assert defaults(defs["scale_settings"]) == {
        "type": "default",
        "min_instances": 1,
        "max_instances": 1,
        "target_utilization_percentage": 70,
        "polling_interval": 1,
    }


def vars_of(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


# --- the compiled check gives jsonschema's answers ---------------------------------------

_WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 200_001),
    st.floats(allow_nan=False),
    st.sampled_from([1.0, 2.5, "", "ab", "a_b", "x" * 33, "azureml://r", "/abs", "Kubernetes"]),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["instance_cout", "blue", 7]), st.integers(), max_size=2),
)
_TEXTS = ["blue", "my-endpoint", "a1b", "azureml:a:1", "azureml:a@latest", "m.pkl", "x" * 32, "abc"]
# Durations of rollout steps (reconciler.schema.json).
_TEXTS += ["10m", "1h30m", "1.5s"]


def _valid(node: Any, root: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    """Values a subschema accepts (most of the time; pattern and bounds are respected)."""
    if "$ref" in node:
        return _valid(root["$defs"][node["$ref"].rsplit("/", 1)[-1]], root, depth)
    if "enum" in node or "const" in node:
        return st.sampled_from(node.get("enum", [node.get("const")]))
    kinds = node.get("type", "object")
    options: list[st.SearchStrategy[Any]] = []
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        if kind == "object":
            fields = {k: shaped(v, root, depth + 1) for k, v in node.get("properties", {}).items()}
            required = {k: fields.pop(k) for k in node.get("required", [])}
            extra = node.get("additionalProperties", False)
            more: st.SearchStrategy[dict[str, Any]] = st.just({})
            if isinstance(extra, dict):
                names = st.sampled_from(["blue", "green", "red"])
                more = st.dictionaries(names, shaped(extra, root, depth + 1), max_size=2)
            known = st.fixed_dictionaries(required, optional=fields)
            options.append(st.builds(lambda a, b: {**b, **a}, known, more))
        elif kind == "array":
            options.append(st.lists(shaped(node.get("items", {}), root, depth + 1), max_size=2))
        elif kind == "string":
            low, high = node.get("minLength", 0), node.get("maxLength", 99)
            pattern = re.compile(node.get("pattern", ""))
            texts = [t for t in _TEXTS if low <= len(t) <= high and pattern.search(t)]
            options.append(st.sampled_from(texts))
        elif kind in ("integer", "number"):
            low, high = node.get("minimum", -5), node.get("maximum", 200_000)
            options.append(st.integers(low, high))
        elif kind == "boolean":
            options.append(st.booleans())
    return st.one_of(*options)


def shaped(node: Any, root: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Documents shaped by a schema, each value wrong once in eight draws."""
    if depth > 5:
        return _WRONG
    valid = _valid(node, root, depth)
    # An explicit draw: one_of would flatten _WRONG's many branches and outweigh `valid`.
    return st.integers(0, 7).flatmap(lambda draw: _WRONG if draw == 0 else valid)


@functools.cache
def documents_for(name: str) -> st.SearchStrategy[Any]:
    loaded = schema(name)
    return shaped(loaded, loaded)


@pytest.mark.parametrize("name", FILES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_compiled_check_agrees_with_jsonschema(name: str, data: st.DataObject) -> None:
    document = data.draw(documents_for(name))
    fast, full = loading._validators(name)
    assert fast(document) == full.is_valid(document), document


def _fixture_documents() -> list[Any]:
    root = Path(__file__).parent.parent
    found = []
    for path in sorted(
        [*root.glob("invalid/*/**/*.yml"), *root.parent.glob("example-repo/**/*.yml")]
    ):
        try:
            found.append(yaml.safe_load(path.read_bytes()))
        except yaml.YAMLError:
            continue
    return [doc for doc in found if isinstance(doc, dict)]


def test_the_compiled_check_agrees_on_every_fixture() -> None:
    documents = _fixture_documents()
    assert len(documents) > 50
    for name in FILES:
        fast, full = loading._validators(name)
        for document in documents:
            assert fast(document) == full.is_valid(document), (name, document)


def test_compiled_checks_cached_on_disk_answer_as_freshly_compiled_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(jsonschemas.CACHE_ENV, str(tmp_path))
    documents = _fixture_documents()
    for name in FILES:
        loaded = schema(name)
        fresh = jsonschemas._compiled_check(name, loaded)  # compiles, writes the cache
        cached = jsonschemas._compiled_check(name, loaded)  # read back
        for document in documents:
            assert _passes(fresh, document) == _passes(cached, document), (name, document)
    written = sorted((tmp_path / "validators").iterdir())
    assert len(written) == len(FILES)
    # A damaged file is compiled afresh (and replaced), never an error.
    written[0].write_bytes(b"not bytecode")
    for name in FILES:
        jsonschemas._compiled_check(name, schema(name))
    assert written[0].read_bytes() != b"not bytecode"


def _passes(check: Any, document: Any) -> bool:
    try:
        check(document)
    except jsonschemas.CheckFailed:
        return False
    return True


def _as_decimals(value: Any) -> Any:
    """The document with each number a decimal.Decimal (as json.loads(parse_float=...)
    would give some of them)."""
    if isinstance(value, dict):
        return {k: _as_decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_decimals(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return decimal.Decimal(repr(value))
    return value


def test_the_compiled_checks_take_decimals_as_fastjsonschemas_own_code_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checks bind Decimal to jsonschemas.LazyDecimal (decimal imported only when one may
    # be at stake): a Decimal where a number is wanted is one, as in fastjsonschema's code.
    monkeypatch.setenv(jsonschemas.CACHE_ENV, str(tmp_path))
    documents = [_as_decimals(d) for d in _fixture_documents()]
    assert any(isinstance(v, decimal.Decimal) for d in documents for v in d.values())
    answers = set()
    for name in FILES:
        ours = jsonschemas._compiled_check(name, schema(name))
        theirs = fastjsonschema.compile(copy.deepcopy(schema(name)), use_default=False)
        for document in documents:
            answer = _passes(ours, document)
            answers.add(answer)
            try:
                theirs(document)
                assert answer, (name, document)
            except fastjsonschema.JsonSchemaValueException:
                assert not answer, (name, document)
    assert answers == {True, False}
    assert isinstance(decimal.Decimal("1.5"), jsonschemas.LazyDecimal)
    assert not isinstance(1.5, jsonschemas.LazyDecimal)
    assert jsonschemas.LazyDecimal("1.5") == decimal.Decimal("1.5")


# In a new Python: numbers of every kind YAML gives (.nan, .inf, huge ints, booleans) checked
# by a compiled check read from the cache (decimal never imported), then by fastjsonschema's
# own code; prints whether decimal was loaded by then, and whether the answers differ.
_NUMBERS_SCRIPT = """
import sys, yaml
from reconciler import jsonschemas
SCHEMA = {"type": "object", "properties": {
    "n": {"type": "number", "minimum": -5, "maximum": 10 ** 500, "multipleOf": 1},
    "i": {"type": "integer", "exclusiveMinimum": 0},
    "e": {"enum": [1, 2.0]},
}}
VALUES = yaml.safe_load("[0, 1, -1, 2.5, 2.3, 0x10, 1e400, -1e400, .nan, .inf, -.inf, true, false,"
                        " '1', null, 1.0, 2, 99999999999999999999999999999999999999999]")
VALUES.append(10 ** 400)
check = jsonschemas._compiled_check("probe.schema.json", SCHEMA)
def passes(check, document):
    try:
        check(document)
    except Exception:
        return False
    return True
ours = [passes(check, {k: v}) for v in VALUES for k in ("n", "i", "e")]
print("decimal" in sys.modules)
import fastjsonschema
theirs_check = fastjsonschema.compile(SCHEMA, use_default=False)
theirs = [passes(theirs_check, {k: v}) for v in VALUES for k in ("n", "i", "e")]
print(ours == theirs, sum(ours), len(ours))
"""


def test_numbers_from_yaml_pass_a_cached_check_as_fastjsonschemas_own_code_without_decimal(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    env = {
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent.parent),
        "PATH": "/usr/bin:/bin",
        jsonschemas.CACHE_ENV: str(tmp_path),
    }
    lines = []
    for _ in range(2):  # compiled (fastjsonschema imports decimal), then read from the cache
        done = subprocess.run(
            [sys.executable, "-c", _NUMBERS_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lines.append(done.stdout.split())
    assert lines[0][0] == "True" and lines[1][0] == "False"  # the cached one: no decimal
    for line in lines:
        assert line[1] == "True"  # same answers as fastjsonschema's
        assert 0 < int(line[2]) < int(line[3])
