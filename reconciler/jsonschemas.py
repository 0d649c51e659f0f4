"""JSON Schemas of the repository's files (schemas/*.json): validators and readable errors.

jsonschema is the authority; a compiled check (fastjsonschema) only decides whether it must
run, so a valid document costs microseconds. Errors become (field path, message) pairs a
person can act on. Used by loading (the four kinds) and repoconfig (reconciler.yaml).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import marshal
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from reconciler.codecache import CACHE_ENV as CACHE_ENV
from reconciler.codecache import cache_dir, read_trusted, write_private
from reconciler.yamlsource import FieldLines, FieldPath

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

__all__ = ["Check", "schema", "schema_problems", "shown", "validators"]


# The package ships them beside this module (a plain path: importlib.resources' readers
# cost each command a few milliseconds of imports).
SCHEMAS: Final = Path(__file__).resolve().parent / "schemas"


@functools.cache
def _schema_text(file_name: str) -> str:
    return (SCHEMAS / file_name).read_text(encoding="utf-8")


@functools.cache
def schema(file_name: str) -> dict[str, Any]:
    """One of schemas/*.json, parsed (the package ships them as reconciler/schemas)."""
    loaded: dict[str, Any] = json.loads(_schema_text(file_name))
    return loaded


Check = Callable[[Any], bool]


class FullValidator:
    """jsonschema's Draft 2020-12 validator of one schema, built when an error is first
    looked for: a valid repository never needs it, and importing jsonschema (with its
    referencing and format machinery) costs a short command about 0.1 s."""

    def __init__(self, loaded: dict[str, Any]) -> None:
        self._schema = loaded
        self._validator: Any = None

    def _built(self) -> Any:
        if self._validator is None:
            from jsonschema import Draft202012Validator

            self._validator = Draft202012Validator(self._schema)
        return self._validator

    def iter_errors(self, instance: Any) -> Iterator[ValidationError]:
        errors: Iterator[ValidationError] = self._built().iter_errors(instance)
        return errors

    def is_valid(self, instance: Any) -> bool:
        return bool(self._built().is_valid(instance))


# The compiled checks are kept between processes (issue 15: generating and compiling the
# code of five schemas costs each `reconcile` command about 0.08 s of CPU) in the cache
# folder of reconciler.codecache (CACHE_ENV), beside the dataclasses' compiled methods.
_ROOT_FUNCTION = re.compile(r"^def (\w+)\(", re.MULTILINE)
# The generated code's import of fastjsonschema's exceptions, which loads the whole package
# (its generators and drafts) into every command: its names are bound to CheckFailed.
_EXCEPTIONS_IMPORT = re.compile(
    r"^from fastjsonschema import (\w+Exception(?:, \w+Exception)*)$", re.M
)


# Its import of decimal.Decimal (which only isinstance checks use, and the multipleOf of a
# schema, none of ours, builds): _decimal's library costs a command ~2 ms; LazyDecimal is
# bound in its place.
_DECIMAL_IMPORT = re.compile(r"^from decimal import Decimal$", re.M)


class _DecimalType(type):
    """decimal.Decimal to isinstance and to a call, the module imported only when one may
    be at stake: no Decimal exists before a module of decimal was imported."""

    def __instancecheck__(cls, instance: Any) -> bool:
        if not _DECIMAL_MODULES & sys.modules.keys():
            return False
        import decimal

        return isinstance(instance, decimal.Decimal)

    def __subclasscheck__(cls, subclass: type) -> bool:
        if not _DECIMAL_MODULES & sys.modules.keys():
            return False
        import decimal

        return issubclass(subclass, decimal.Decimal)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        import decimal

        return decimal.Decimal(*args, **kwargs)


_DECIMAL_MODULES: Final = frozenset({"decimal", "_decimal", "_pydecimal"})


class LazyDecimal(metaclass=_DecimalType):
    """What the compiled checks call Decimal (see _DecimalType)."""


class CheckFailed(ValueError):
    """What a compiled check raises for a document its schema refuses (in place of
    fastjsonschema's JsonSchemaValueException; only whether it is raised counts)."""

    def __init__(self, message: str = "", *args: Any, **kwargs: Any) -> None:
        super().__init__(message)


@functools.cache
def _fastjsonschema_version() -> str:
    """fastjsonschema's version file, read without importing the package (a cache hit,
    the common case, needs nothing else of it)."""
    found = importlib.util.find_spec("fastjsonschema")
    folders = found.submodule_search_locations if found is not None else None
    if not folders:
        return "absent"
    try:
        return (Path(next(iter(folders))) / "version.py").read_text(encoding="utf-8")
    except OSError:
        return "unknown"


def _compiled_check(file_name: str, loaded: dict[str, Any]) -> Callable[[Any], Any]:
    """fastjsonschema's validator of a schema, its bytecode cached on disk by content.

    The cache key holds the schema, fastjsonschema's version and Python's, so a changed
    schema or an upgrade compiles afresh; an unreadable or unwritable cache only costs the
    compilation, never an error. use_default=False: fastjsonschema would otherwise write the
    defaults into the document.
    """
    # The shipped schema's own text (its parsed form is `loaded`); any other: its JSON.
    try:
        shipped = loaded is schema(file_name)
    except OSError:  # no such file shipped
        shipped = False
    text = _schema_text(file_name) if shipped else json.dumps(loaded, sort_keys=True)
    key = hashlib.sha256(
        f"{_fastjsonschema_version()}|{sys.version}|{_GENERATOR}|{text}".encode()
    ).hexdigest()[:32]
    folder = cache_dir()  # None: no home directory, no cache
    path = None if folder is None else folder / "validators" / f"{key}.marshal"
    # Only a file this user alone can have written (it is run: codecache.read_trusted).
    data = None if path is None else read_trusted(path)
    try:
        kept = marshal.loads(data) if data is not None else None
    except Exception:  # truncated, or from another Python: compiled below
        kept = None
    # Anything but code (a damaged first byte reads as another type) is compiled afresh.
    code = kept if type(kept) is types.CodeType else None
    if code is None:
        import fastjsonschema

        # A deep copy: fastjsonschema rewrites the $refs of the schema it is given, and
        # `loaded` is the cached schema others read.
        source = fastjsonschema.compile_to_code(copy.deepcopy(loaded), use_default=False)
        source = _EXCEPTIONS_IMPORT.sub(
            lambda m: " = ".join([*m.group(1).split(", "), "CheckFailed"]), source
        )
        source = _DECIMAL_IMPORT.sub("", source)
        found = _ROOT_FUNCTION.search(source)  # the schema's own function comes first
        assert found is not None, file_name
        source += f"\n__root__ = {found.group(1)!r}\n"
        code = compile(source, f"<compiled schema {file_name}>", "exec")
        if path is not None:
            with contextlib.suppress(OSError):
                write_private(path, marshal.dumps(code))
    namespace: dict[str, Any] = {"CheckFailed": CheckFailed, "Decimal": LazyDecimal}
    exec(code, namespace)
    check: Callable[[Any], Any] = namespace[namespace["__root__"]]
    return check


# Bumped when what _compiled_check generates changes (its options, the __root__ line, the
# exceptions bound to CheckFailed, Decimal bound to LazyDecimal).
_GENERATOR: Final = 3


@functools.cache
def validators(file_name: str) -> tuple[Check, FullValidator]:
    """(fast check, jsonschema validator) of one schema, built once per process.

    The fast check is fastjsonschema's compiled validator (about 10 microseconds on a
    deployment, where jsonschema takes ~300): it only decides whether jsonschema must run,
    and every error reported comes from jsonschema itself, with its paths and messages.
    tests/unit/test_schemas.py holds the two to the same answers.
    """
    loaded = schema(file_name)
    # No check_schema here: it costs more than all the rest of a CLI start-up's loading work,
    # and tests/unit/test_schemas.py holds every shipped schema to Draft 2020-12.
    full = FullValidator(loaded)
    compiled = _compiled_check(file_name, loaded)

    def fast(value: Any) -> bool:
        try:
            compiled(value)
        except ValueError:  # CheckFailed, or fastjsonschema's own if it named others
            return False
        return True

    return fast, full


_TYPE_WORDS: Final = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "empty",
}
_PATTERN_HINTS: Final = {
    "^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$": (
        "must start with a letter and hold only letters, digits and '-', not ending with '-'"
    ),
    "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$": "must hold only letters, digits, '_', '.' and '-'",
    "^[A-Za-z_][A-Za-z0-9_]*$": (
        "must be the name of an environment variable: letters, digits and '_', not starting "
        "with a digit"
    ),
    "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$": (
        "must be a duration such as 500ms, 30s, 10m, 1h or 1h30m, or a number of seconds"
    ),
    "^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$": "must be an IPv4 network such as 10.213.0.0/16",
}


def shown(value: Any, source: str | None) -> str:
    """A value as a person wrote it: the YAML text when known (1.10 stays 1.10)."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return source if source is not None else str(value)


def schema_problems(error: ValidationError, lines: FieldLines) -> list[tuple[FieldPath, str]]:
    """A jsonschema error as (field path, message) pairs that a person can act on."""
    path: FieldPath = tuple(error.absolute_path)
    keyword, value, instance = error.validator, error.validator_value, error.instance
    schema_of = error.schema if isinstance(error.schema, dict) else {}
    got = shown(instance, lines.source_text(path))
    custom = schema_of.get("x-message")
    if isinstance(custom, str) and keyword in ("type", "enum"):
        # A rule the schema explains itself (a value Azure reads as text, say).
        return [(path, f"{custom}, got {got}")]
    if "propertyNames" in error.relative_schema_path and isinstance(instance, str):
        # The instance is a key of the mapping at `path`; its own line is the one to show.
        if path[-1:] == ("environment_variables",):
            if instance == "":
                return [((*path, instance), "an environment variable needs a name")]
            return [
                (
                    (*path, instance),
                    f"{instance!r} is not a valid environment variable name: it must start "
                    "with a letter, '_', '-' or '.' and hold only letters, digits, '_', '-' "
                    "and '.' (no '=')",
                )
            ]
        return [((*path, instance), f"{instance!r} is not a valid key here: {error.message}")]
    if keyword == "additionalProperties" and isinstance(instance, dict):
        known = sorted(error.schema.get("properties", {}))
        out = []
        for key in instance:
            if key in known:
                continue
            message = f"unknown field '{key}'"
            close = _close_matches(str(key), known, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean '{close[0]}'?)"
            elif path == () and key == "resources":
                message += " (resources are for Kubernetes deployments: add type: kubernetes)"
            out.append(((*path, key), message))
        return out
    if keyword == "required" and isinstance(instance, dict):
        return [((*path, k), f"missing required field '{k}'") for k in value if k not in instance]
    if keyword == "type":
        wanted = [value] if isinstance(value, str) else list(value)
        words = " or ".join(_TYPE_WORDS.get(w, w) for w in wanted)
        quote = (
            f" (quote it: '{got}')" if isinstance(instance, float) and "string" in wanted else ""
        )
        return [(path, f"must be {words}, got {got}{quote}")]
    if keyword == "enum":
        message = f"must be one of {', '.join(map(str, value))}; got {got}"
        if isinstance(instance, str):
            close = _close_matches(instance, [str(v) for v in value], n=1, cutoff=0.6)
            message += f" (did you mean '{close[0]}'?)" if close else ""
        return [(path, message)]
    if keyword == "const":
        return [(path, f"must be {value!r} in this kind of file, got {got}")]
    if keyword in ("minimum", "maximum"):
        bound = "at least" if keyword == "minimum" else "at most"
        return [(path, f"must be {bound} {value}, got {got}")]
    if keyword in ("exclusiveMinimum", "exclusiveMaximum"):
        bound = "more than" if keyword == "exclusiveMinimum" else "less than"
        return [(path, f"must be {bound} {value}, got {got}")]
    if keyword in ("minItems", "maxItems") and isinstance(instance, list):
        if schema_of.get("minItems") == schema_of.get("maxItems"):
            return [(path, f"must hold {value} items, got {len(instance)}")]
        bound = "at least" if keyword == "minItems" else "at most"
        return [(path, f"must hold {bound} {value} items, got {len(instance)}")]
    if keyword in ("minLength", "maxLength") and isinstance(instance, str):
        bound = "at least" if keyword == "minLength" else "at most"
        return [(path, f"must be {bound} {value} characters long, got {got} ({len(instance)})")]
    if keyword == "pattern":
        hint = _PATTERN_HINTS.get(value)
        if hint is None:
            local = "a local path, " if path[-1:] == ("model",) else ""
            hint = f"must be {local}azureml:NAME:VERSION or azureml:NAME@latest"
        return [(path, f"{hint}, got {got}")]
    if keyword == "maxProperties" and isinstance(instance, dict):
        names = ", ".join(map(str, instance))
        return [(path, f"at most {value} deployment may get mirrored traffic, got {names}")]
    return [(path, error.message)]


def _close_matches(
    word: str, possibilities: Iterable[str], *, n: int = 3, cutoff: float = 0.6
) -> list[str]:
    """difflib's close matches, imported only for an error's suggestion (start-up)."""
    import difflib

    return difflib.get_close_matches(word, list(possibilities), n=n, cutoff=cutoff)
