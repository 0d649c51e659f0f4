"""YAML text with line marks: parse fast, and find where a field was written when needed.

Loading parses every file with libyaml's loader, which gives plain values and no positions.
Positions are needed only for a diagnostic, so FieldLines composes the file again (nodes
with marks) the first time a line is asked for: a valid repository never pays for them.
Nothing here raises on bad input: a broken file becomes a Diagnostic.

Limits (README "Limits"): a file of more than MAX_YAML_BYTES is not parsed (libyaml's
objects take some 30 times the text, and a data file of 50 MB cost 1.6 GB); nesting deeper
than MAX_NESTING is refused before libyaml composes it (its composer recurses on the C
stack); a document of ours may nest MAX_NESTING_OF_OURS levels and hold MAX_VALUES values
once aliases are expanded (document_limits). A key written twice in one mapping is recorded
with both lines (YamlDocument.duplicate_keys): PyYAML keeps the last silently, so a reviewer
reading the first would approve what is not applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import yaml

from reconciler.model.diagnostics import Diagnostic

try:
    from yaml import CSafeLoader as FastLoader
except ImportError:  # PyYAML built without libyaml: the same results, only slower
    from yaml import SafeLoader as FastLoader  # type: ignore[assignment]

__all__ = [
    "MAX_NESTING",
    "MAX_NESTING_OF_OURS",
    "MAX_VALUES",
    "MAX_YAML_BYTES",
    "DuplicateKey",
    "FastLoader",
    "FieldLines",
    "FieldPath",
    "YamlDocument",
    "document_limits",
    "duplicate_key_diagnostics",
    "field_name",
    "first_content_line",
    "load_yaml_document",
    "might_exceed_limits",
]

FieldPath = tuple[str | int, ...]

# libyaml's composer recurses on the C stack: a file of a few dozen kilobytes of "[" crashes
# the process (not an exception). No file of ours nests more than a dozen levels.
MAX_NESTING: Final = 500
# Ours nest 5 levels at most (a deployment's environment.build.path); a hundred leaves room
# for free-form blocks (tags, data_collector) and keeps validation's recursion shallow.
MAX_NESTING_OF_OURS: Final = 100
# A YAML alias can repeat a subtree any number of times ("billion laughs"); none of our
# documents holds this many values, so a bigger one is refused before it is validated.
MAX_VALUES: Final = 100_000
# Our files are a few kilobytes; parsing takes some 30 times a file's size in memory and
# about a second per megabyte, so a larger file (a data dump, a bundle of CRDs) is not
# parsed at all.
MAX_YAML_BYTES: Final = 1024 * 1024
# Every level of nesting opens with one of these characters, so their count bounds the depth.
_ALL_BUT_OPENERS = bytes(range(256)).translate(None, b"[{-?:")
# Tags of the keys _Loader builds itself (not `<<`, `=`, timestamps).
_KEY_TAGS: Final = frozenset(
    {
        "tag:yaml.org,2002:str",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
    }
)


def field_name(path: FieldPath) -> str:
    """A field path as people write it: `traffic.blue`, `dependencies[2]`, `env[""]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "":
            out += '[""]'
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True, slots=True)
class DuplicateKey:
    """A key written a second time in one mapping: where, and where it was first."""

    key: str
    index: int  # character offset of the second key in the text
    line: int  # 1-based, of the second key
    first_line: int

    @property
    def message(self) -> str:
        return f"duplicate key `{self.key}` (first at line {self.first_line})"


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A YAML file as read: its documents, or why it could not be read.

    documents holds each document of the stream ((None,) for an empty file). error is set when
    the file is not valid YAML; documents is then empty. unsupported_tag is set when the file
    uses a tag such as `!Ref`: it is then read as if the tag were not there, which is fine for
    files that are not ours and an error for files that are.
    """

    file: str
    documents: tuple[Any, ...] = ()
    error: Diagnostic | None = None
    unsupported_tag: Diagnostic | None = None
    duplicate_keys: tuple[DuplicateKey, ...] = ()

    @property
    def value(self) -> Any:
        """The single document of the file; None for an empty or a multi-document file."""
        return self.documents[0] if len(self.documents) == 1 else None


class _Slow(Exception):
    """The document needs PyYAML's own constructor (see _Loader.construct_document)."""


_STR: Final = "tag:yaml.org,2002:str"
_INT: Final = "tag:yaml.org,2002:int"
_FLOAT: Final = "tag:yaml.org,2002:float"
_BOOL: Final = "tag:yaml.org,2002:bool"
_NULL: Final = "tag:yaml.org,2002:null"
_MAP: Final = "tag:yaml.org,2002:map"
_SEQ: Final = "tag:yaml.org,2002:seq"
# Implicit tags of plain scalars by their text (Resolver.resolve, memoised): the same few
# hundred texts (keys, true, 1) make up most of a repository. Bounded; short texts only.
_RESOLVED: dict[str, str] = {}
_RESOLVED_KEPT: Final = 20_000
_RESOLVED_LONGEST: Final = 64


class _Loader(FastLoader):
    """libyaml's loader, recording keys written twice in a mapping (the last still wins).

    Two shortcuts keep it near the plain C loader's speed and change no result (issue 15):
    the implicit tag of a plain scalar is memoised by its text, and a document made only of
    maps, lists, strings, numbers, booleans and nulls, with no key written twice, no merge
    key, no alias of a collection and no other tag, is built by one tight walk of the
    nodes. Any other document (timestamps, anchors, `<<`, duplicates, unknown tags) is
    built by PyYAML's constructor as before, with all its checks and errors.
    """

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self.duplicates: list[DuplicateKey] = []

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        # Without path resolvers (none are registered), a plain scalar's tag depends on its
        # text alone.
        if kind is yaml.ScalarNode and implicit[0] and len(value) <= _RESOLVED_LONGEST:
            tag = _RESOLVED.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
                if len(_RESOLVED) < _RESOLVED_KEPT and not self.yaml_path_resolvers:
                    _RESOLVED[value] = tag
            return tag
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass  # only path resolvers use it, and none are registered

    def ascend_resolver(self) -> None:
        pass

    def construct_document(self, node: yaml.Node) -> Any:
        try:
            return self._plain(node, set())
        except _Slow:
            return super().construct_document(node)

    def _plain(self, node: yaml.Node, seen: set[int]) -> Any:
        """The value of a node of plain data; raises _Slow for anything else."""
        kind = node.__class__
        if kind is yaml.ScalarNode:
            tag = node.tag
            if tag == _STR:
                return node.value
            if tag == _INT:
                text = node.value
                # Decimal without a leading zero (YAML 1.1 reads 012 as octal): int() alone.
                if text.isdigit() and (text[0] != "0" or len(text) == 1):
                    return int(text)
                return self.construct_yaml_int(node)  # type: ignore[arg-type]
            if tag == _NULL:
                return None
            if tag == _BOOL:
                return self.bool_values[node.value.lower()]
            if tag == _FLOAT:
                return self.construct_yaml_float(node)  # type: ignore[arg-type]
            raise _Slow
        # An alias of a collection (shared, perhaps recursive) is PyYAML's to build.
        if id(node) in seen:
            raise _Slow
        seen.add(id(node))
        if kind is yaml.MappingNode and node.tag == _MAP:
            pairs = node.value
            mapping: dict[Any, Any] = {}
            for key_node, value_node in pairs:
                # A collection as key (unhashable), `<<` or `=`: PyYAML's rules apply.
                if key_node.__class__ is not yaml.ScalarNode or key_node.tag not in _KEY_TAGS:
                    raise _Slow
                mapping[self._plain(key_node, seen)] = self._plain(value_node, seen)
            if len(mapping) != len(pairs):
                raise _Slow  # a key written twice: recorded by construct_mapping
            return mapping
        if kind is yaml.SequenceNode and node.tag == _SEQ:
            return [self._plain(item, seen) for item in node.value]
        raise _Slow

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        # The mapping's own pairs: merging (`<<: *base`) deletes its keys from this very list
        # and puts the merged pairs in a new one, which may repeat a key of ours rightly.
        own = node.value if isinstance(node, yaml.MappingNode) else None
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]
        # A duplicate makes the mapping smaller than its pairs: that costs one comparison, and
        # the pairs are looked at only then, or when keys were merged in.
        if own is not None and (own is not node.value or len(mapping) < len(own)):
            self._record_duplicates(own)
        return mapping

    def _record_duplicates(self, pairs: list[tuple[yaml.Node, yaml.Node]]) -> None:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in pairs:
            key = self.construct_object(key_node)  # built already: a lookup
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: PyYAML reports it
            if earlier is not key_node:
                text = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key)
                self.duplicates.append(
                    DuplicateKey(
                        str(text),
                        key_node.start_mark.index,
                        key_node.start_mark.line + 1,
                        earlier.start_mark.line + 1,
                    )
                )


class _TagTolerantLoader(_Loader):
    """Reads YAML with unknown tags (CloudFormation's `!Ref`, GitLab's `!reference`)."""

    first_unknown_tag: tuple[str, int] | None = None


def _construct_untagged(loader: _TagTolerantLoader, suffix: str, node: yaml.Node) -> Any:
    if loader.first_unknown_tag is None:
        loader.first_unknown_tag = (node.tag, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


# The empty prefix catches every tag that has no constructor of its own.
_TagTolerantLoader.add_multi_constructor("", _construct_untagged)


def _construct(
    data: bytes, loader_class: type[_Loader], *, single: bool
) -> tuple[tuple[Any, ...], _Loader]:
    """The documents of a text, and the loader that read them (its findings)."""
    loader = loader_class(data)
    try:
        if single:
            return (loader.get_single_data(),), loader
        documents = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            documents.append(loader.get_data())
        return tuple(documents), loader
    finally:
        loader.dispose()


def _document(file: str, documents: tuple[Any, ...], loader: _Loader) -> YamlDocument:
    return YamlDocument(file, documents, duplicate_keys=tuple(loader.duplicates))


def load_yaml_document(data: bytes, file: str) -> YamlDocument:
    """Parse one file; never raises, whatever the bytes (binary junk included).

    A file with no content reads as one document, None.
    """
    if len(data) > MAX_YAML_BYTES:
        message = (
            f"not read: {len(data):,} bytes, more than the {MAX_YAML_BYTES:,} a YAML file may hold"
        )
        return YamlDocument(file, error=Diagnostic(file, None, "", message))
    if _too_deep(data):
        message = f"not readable: the YAML nests more than {MAX_NESTING} levels deep"
        return YamlDocument(file, error=Diagnostic(file, None, "", message))
    try:
        return _document(file, *_construct(data, _Loader, single=True))
    except yaml.composer.ComposerError as exc:
        if exc.problem != "but found another document":
            return YamlDocument(file, error=_yaml_error(exc, file))
        try:
            return _document(file, *_construct(data, _Loader, single=False))
        except Exception as inner:
            return YamlDocument(file, error=_yaml_error(inner, file))
    except yaml.constructor.ConstructorError as exc:
        if "could not determine a constructor" not in (exc.problem or ""):
            return YamlDocument(file, error=_yaml_error(exc, file))
        return _load_tolerant(data, file)
    except Exception as exc:  # ReaderError, ParserError, impossible dates, deep nesting...
        return YamlDocument(file, error=_yaml_error(exc, file))


def _too_deep(data: bytes) -> bool:
    if len(data.translate(None, _ALL_BUT_OPENERS)) <= MAX_NESTING:
        return False  # the usual case, at the cost of one pass in C
    depth = 0
    try:
        # Events come one by one, without recursion, so this is safe at any depth.
        for event in yaml.parse(data, Loader=FastLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_NESTING:
                    return True
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except Exception:
        return False  # not valid YAML: the load that follows says why
    return False


def _load_tolerant(data: bytes, file: str) -> YamlDocument:
    try:
        (value,), loader = _construct(data, _TagTolerantLoader, single=True)
    except Exception as exc:
        return YamlDocument(file, error=_yaml_error(exc, file))
    assert isinstance(loader, _TagTolerantLoader)
    tag = loader.first_unknown_tag
    problem = None
    if tag is not None:
        message = f"YAML tag '{tag[0]}' is not supported in endpoint and deployment files"
        problem = Diagnostic(file, tag[1], "", message)
    return YamlDocument(
        file, (value,), unsupported_tag=problem, duplicate_keys=tuple(loader.duplicates)
    )


def duplicate_key_diagnostics(data: bytes, document: YamlDocument) -> tuple[Diagnostic, ...]:
    """An error per duplicate key: the line of the second, its field path, the first line.

    The path is found by composing the text again (nodes keep their offsets): this is paid
    only by a file that has a duplicate.
    """
    if not document.duplicate_keys:
        return ()
    paths = _key_paths(data, {d.index for d in document.duplicate_keys})
    return tuple(
        Diagnostic(document.file, d.line, field_name(paths.get(d.index, (d.key,))), d.message)
        for d in document.duplicate_keys
    )


def _key_paths(data: bytes, wanted: set[int]) -> dict[int, FieldPath]:
    """Field paths of the mapping keys that start at the offsets `wanted`."""
    found: dict[int, FieldPath] = {}
    try:
        roots = list(yaml.compose_all(data, Loader=FastLoader))
    except Exception:
        return found
    stack: list[tuple[yaml.Node, FieldPath]] = [(root, ()) for root in roots if root is not None]
    seen: set[int] = set()
    while stack and len(found) < len(wanted):
        node, path = stack.pop()
        if id(node) in seen:
            continue  # an alias: visited where it was anchored
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name: str | int = key.value if isinstance(key, yaml.ScalarNode) else str(key.tag)
                if key.start_mark.index in wanted:
                    found[key.start_mark.index] = (*path, name)
                stack.append((value, (*path, name)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
    return found


# Every value after the first of a collection follows one of these (`- `, `key: `, `, `).
_ALL_BUT_MARKS = bytes(range(256)).translate(None, b"[{-?:,")


def might_exceed_limits(data: bytes) -> bool:
    """Whether document_limits must look at a text's document (one pass in C).

    Only an alias can expand a document; without one, a document nests at most as many
    levels as it has openers and holds about as many values as it has marks.
    """
    return b"&" in data or len(data.translate(None, _ALL_BUT_MARKS)) > MAX_NESTING_OF_OURS


def document_limits(value: Any) -> str | None:
    """Why a document of ours is refused for its size (depth or values), or None.

    Iterative, so any depth is safe to measure; aliases count once per use, as they are
    expanded in the document.
    """
    budget = MAX_VALUES
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        budget -= 1
        if budget < 0:
            return f"holds more than {MAX_VALUES:,} values once its YAML aliases are expanded"
        if isinstance(item, dict | list):
            if depth >= MAX_NESTING_OF_OURS:
                return f"nests deeper than {MAX_NESTING_OF_OURS} levels; a file of ours needs a few"
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _yaml_error(exc: BaseException, file: str) -> Diagnostic:
    if isinstance(exc, yaml.MarkedYAMLError):
        # "while parsing a flow sequence (line 2): did not find expected ',' or ']'": the
        # problem is often found at the end of the file, the context says where it began.
        context, problem = exc.context, exc.problem
        if context and exc.context_mark is not None and exc.context_mark != exc.problem_mark:
            context += f" (line {exc.context_mark.line + 1})"
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = ": ".join(p for p in (context, problem) if p)
        return Diagnostic(file, line, "", f"not valid YAML: {message}")
    if isinstance(exc, yaml.reader.ReaderError):
        return Diagnostic(file, None, "", f"not a YAML text file: {exc.reason}")
    if isinstance(exc, RecursionError):
        return Diagnostic(file, None, "", "not readable: the YAML is nested too deeply")
    return Diagnostic(file, None, "", f"not readable as YAML: {exc}")


def first_content_line(data: bytes) -> int:
    """Line where the document starts: past blank lines, comments and directives."""
    for number, raw in enumerate(data.splitlines()[:1000], start=1):
        text = raw.strip()
        if not text or text.startswith((b"#", b"%")) or text == b"---":
            continue
        return number
    return 1


class FieldLines:
    """Lines and source text of fields of one YAML text; composed only when first asked."""

    def __init__(self, data: bytes | None) -> None:
        self._data = data
        self._root: yaml.Node | None = None
        self._composed = False

    def _compose(self) -> yaml.Node | None:
        if not self._composed:
            self._composed = True
            try:
                if self._data is not None and not _too_deep(self._data):
                    self._root = yaml.compose(self._data, Loader=FastLoader)
            except Exception:  # several documents, or broken: no line, the message holds
                self._root = None
        return self._root

    def _walk(self, path: FieldPath) -> tuple[yaml.Node | None, yaml.Node | None, bool]:
        """(deepest node found, key node of the last step, whether the whole path was found)."""
        node = self._compose()
        key_node: yaml.Node | None = None
        for part in path:
            found: tuple[yaml.Node, yaml.Node] | None = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    # The last one wins, as it does when PyYAML builds the mapping.
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        found = (key, value)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                items = node.value
                found = (items[part], items[part]) if 0 <= part < len(items) else None
            if found is None:
                return node, key_node, False
            key_node, node = found
        return node, key_node, True

    def line(self, path: FieldPath) -> int | None:
        """1-based line of a field's key; of the nearest key above it when it is absent."""
        node, key_node, _ = self._walk(path)
        target = key_node if key_node is not None else node
        return None if target is None else target.start_mark.line + 1

    def source_text(self, path: FieldPath) -> str | None:
        """A scalar as written in the file (`1.10`, not the float 1.1)."""
        node, _, complete = self._walk(path)
        if complete and isinstance(node, yaml.ScalarNode):
            return str(node.value)
        return None
