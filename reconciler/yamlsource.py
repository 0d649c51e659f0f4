"""YAML text with line marks: parse fast, and find where a field was written when needed.

Loading parses every file with libyaml's loader, which gives plain values and no positions.
Positions are needed only for a diagnostic, so FieldLines composes the file again (nodes
with marks) the first time a line is asked for: a valid repository never pays for them.
Nothing here raises on bad input: a broken file becomes a Diagnostic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.model.diagnostics import Diagnostic

try:
    from yaml import CSafeLoader as FastLoader
except ImportError:  # PyYAML built without libyaml: the same results, only slower
    from yaml import SafeLoader as FastLoader  # type: ignore[assignment]

__all__ = [
    "FastLoader",
    "FieldLines",
    "FieldPath",
    "YamlDocument",
    "field_name",
    "first_content_line",
    "load_yaml_document",
]

FieldPath = tuple[str | int, ...]

# libyaml's composer recurses on the C stack: a file of a few dozen kilobytes of "[" crashes
# the process (not an exception). No file of ours nests more than a dozen levels.
MAX_NESTING = 500
# Every level of nesting opens with one of these characters, so their count bounds the depth.
_ALL_BUT_OPENERS = bytes(range(256)).translate(None, b"[{-?:")


def field_name(path: FieldPath) -> str:
    """A field path as people write it: `traffic.blue`, `dependencies[2]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


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

    @property
    def value(self) -> Any:
        """The single document of the file; None for an empty or a multi-document file."""
        return self.documents[0] if len(self.documents) == 1 else None


class _TagTolerantLoader(FastLoader):
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


def load_yaml_document(data: bytes, file: str) -> YamlDocument:
    """Parse one file; never raises, whatever the bytes (binary junk included).

    A file with no content reads as one document, None.
    """
    if _too_deep(data):
        message = f"not readable: the YAML nests more than {MAX_NESTING} levels deep"
        return YamlDocument(file, error=Diagnostic(file, None, "", message))
    try:
        return YamlDocument(file, (yaml.load(data, Loader=FastLoader),))
    except yaml.composer.ComposerError as exc:
        if exc.problem != "but found another document":
            return YamlDocument(file, error=_yaml_error(exc, file))
        try:
            return YamlDocument(file, tuple(yaml.load_all(data, Loader=FastLoader)))
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
    loader = _TagTolerantLoader(data)
    try:
        value = loader.get_single_data()
    except Exception as exc:
        return YamlDocument(file, error=_yaml_error(exc, file))
    finally:
        loader.dispose()
    tag = loader.first_unknown_tag
    problem = None
    if tag is not None:
        message = f"YAML tag '{tag[0]}' is not supported in endpoint and deployment files"
        problem = Diagnostic(file, tag[1], "", message)
    return YamlDocument(file, (value,), unsupported_tag=problem)


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
