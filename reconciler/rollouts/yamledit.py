"""Edit the `traffic:` and `mirror_traffic:` of an endpoint file's text in place. PURE.

A rollout step is a commit a person reads in `git log -p`: it must change the numbers and
nothing else, so the file is edited line by line, not loaded and dumped (PyYAML would drop
every comment and reorder keys; ruamel is not a dependency). The forms edited:

    traffic:                 traffic: {blue: 90, green: 10}   # one-line flow mapping
      blue: 90   # v1        traffic: {}
      green: 10

at the top level of the document, keys plain or quoted, values whole numbers. A deployment
the new values leave out is set to 0 where the file names it (its line and comment stay;
0 is the same as absent); one the file does not name is added after the last entry, in the
mapping's own style and indentation. mirror_traffic holds one deployment at most, so there a
new one takes the place of one left out instead. A mapping the file lacks is added:
mirror_traffic right after traffic, in traffic's style; traffic at the end.

Anything else (a flow mapping over several lines, anchors, aliases, tags, a null, a JSON
document, a mapping the lines do not parse into the same values YAML reads) is refused with
WeightsEditError: a wrong edit of a production endpoint is worse than none, and so is a
mapping the lines do not find although YAML reads it (`? traffic`, an escape or a tag in the
key): adding one would write the key twice. Every edit is checked by loading the result with
the repository's own loader (libyaml, which also reads a tab before a comment that PyYAML's
Python reader refuses): the two mappings must read as intended, every other key of the
document as before, and no key may be written twice. A byte order mark stays where it is,
lines added take the file's line ending, and a deployment name YAML would read as no string
(`yes`, `off`, `null`) is written quoted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from reconciler.yamlsource import load_yaml_document

TRAFFIC: Final = "traffic"
MIRROR_TRAFFIC: Final = "mirror_traffic"
_TOP_KEY: Final = re.compile(
    r"^(?P<key>traffic|mirror_traffic|\"(?:traffic|mirror_traffic)\"|'(?:traffic|mirror_traffic)')"
    r"(?P<colon>[ \t]*:)(?P<rest>.*)$"
)
_ENTRY: Final = re.compile(
    r"^(?P<indent> +)(?P<key>\"[^\"\\]*\"|'[^']*'|[A-Za-z0-9_][-A-Za-z0-9_.]*)"
    r"(?P<sep>[ \t]*:[ \t]+)(?P<value>-?[0-9]+)(?P<rest>[ \t]*(?:#.*)?)$"
)
_FLOW_ITEM: Final = re.compile(
    r"^(?P<lead>\s*)(?P<key>\"[^\"\\]*\"|'[^']*'|[A-Za-z0-9_][-A-Za-z0-9_.]*)"
    r"(?P<sep>\s*:\s*)(?P<value>-?[0-9]+)(?P<trail>\s*)$"
)
_FLOW: Final = re.compile(r"^(?P<space>[ \t]*)\{(?P<body>[^{}\[\]#]*)\}(?P<rest>[ \t]*(?:#.*)?)$")
_PLAIN_NAME: Final = re.compile(r"^[A-Za-z][-A-Za-z0-9_]*$")
_UNSAFE: Final = re.compile(r"(^|[\s\[{,])[&*!]")  # anchors, aliases, tags
_BOM: Final = "\ufeff"


class WeightsEditError(ValueError):
    """The file's traffic or mirror_traffic cannot be edited safely; the message says why."""


@dataclass(frozen=True, slots=True)
class _Mapping:
    """Where one top-level mapping sits: its key line, entries, and its style."""

    key_line: int  # index of the `traffic:` line
    flow: bool
    last_line: int  # index of the last line that belongs to it (the key line if flow)
    entries: tuple[tuple[int, str, int], ...]  # (line index, deployment, percent); flow: -1
    indent: str  # block: the entries' indentation


def edit_weights(
    text: str,
    *,
    traffic: Mapping[str, int] | None = None,
    mirror_traffic: Mapping[str, int] | None = None,
) -> str:
    """The text with traffic and mirror_traffic set to these values (None: left as it is).

    Raises WeightsEditError when the file's form cannot be edited safely.
    """
    # The mark is no part of the first key: it is taken off while lines are matched and put
    # back in front of the result.
    bom = _BOM if text.startswith(_BOM) else ""
    text = text[len(bom) :]
    original = _load(text, "the file")
    lines = text.splitlines(keepends=True)
    newline = _line_ending(lines[0]) if lines else "\n"
    expected = dict(original)
    for name, wanted in ((TRAFFIC, traffic), (MIRROR_TRAFFIC, mirror_traffic)):
        if wanted is None:
            continue
        for deployment, percent in wanted.items():
            if not _PLAIN_NAME.match(deployment) or isinstance(percent, bool) or percent < 0:
                raise WeightsEditError(f"cannot write {name}.{deployment}: {percent!r}")
        found = _locate(lines, name)
        reuse = name == MIRROR_TRAFFIC
        if found is None and name in original:
            raise WeightsEditError(
                f"{name} is written in a form this edit does not find (an explicit `?` key, "
                f"an escape or a tag in the key, an indented document); write it as a plain "
                f"`{name}:` at the start of a line"
            )
        if found is None:
            lines, written = _added(lines, name, wanted, newline=newline)
        else:
            _agrees(found, original.get(name), name)
            if found.flow:
                lines, written = _flow_edit(lines, found, wanted, reuse=reuse)
            else:
                lines, written = _block_edit(lines, found, wanted, newline=newline, reuse=reuse)
        if written is not None:
            expected[name] = written
    result = "".join(lines)
    if _load(result, "the edited file") != expected:
        raise WeightsEditError(
            "the edit would change more than traffic and mirror_traffic; edit the file by hand"
        )
    return bom + result


def _line_ending(line: str) -> str:
    """The ending of a line: `\r\n`, `\r` (old Mac) or `\n` (also for one without)."""
    ending = line[len(line.rstrip("\r\n")) :]
    return ending if ending in ("\r\n", "\r") else "\n"


def _load(text: str, what: str) -> dict[str, Any]:
    """The document as the repository's loader reads it (libyaml, duplicate keys found)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise WeightsEditError(f"{what} is not valid UTF-8 text") from None
    document = load_yaml_document(data, "endpoint file")
    if document.error is not None:
        raise WeightsEditError(f"{what}: {document.error.message}")
    if document.unsupported_tag is not None:
        raise WeightsEditError(f"{what} uses a tag: {document.unsupported_tag.message}")
    if document.duplicate_keys:
        keys = ", ".join(f"`{d.key}`" for d in document.duplicate_keys)
        raise WeightsEditError(f"{what} writes a key twice: {keys}")
    if len(document.documents) != 1 or not isinstance(document.documents[0], dict):
        raise WeightsEditError(f"{what} must hold one YAML mapping")
    loaded: dict[str, Any] = document.documents[0]
    return loaded


def _written(name: str) -> str:
    """A deployment's name as a key: quoted when YAML would read it plain as no string."""
    # name is a plain name already (_PLAIN_NAME): reading it alone is reading it as a key.
    return name if isinstance(yaml.safe_load(name), str) else f'"{name}"'


def _agrees(found: _Mapping, parsed: Any, name: str) -> None:
    """What the lines say must be what YAML reads, or the edit would be of something else."""
    read = {deployment: percent for _, deployment, percent in found.entries}
    if parsed is None and not found.flow and not read:
        return  # `traffic:` with nothing under it
    if parsed != read:
        line = found.key_line + 1
        raise WeightsEditError(
            f"line {line}: {name} is written in a form this edit does not know; write it as "
            f"`{name}: {{blue: 90, green: 10}}` or one `name: percent` per line"
        )


def _locate(lines: list[str], name: str) -> _Mapping | None:
    found: list[_Mapping] = []
    for index, line in enumerate(lines):
        body = line.rstrip("\r\n")
        if body.startswith(("{", "[")):
            raise WeightsEditError("a document written as a flow mapping (JSON) is not edited")
        match = _TOP_KEY.match(body)
        if match is None or match["key"].strip("\"'") != name:
            continue
        found.append(_mapping_at(lines, index, match["rest"], name))
    if len(found) > 1:
        raise WeightsEditError(f"{name} is written {len(found)} times")
    return found[0] if found else None


def _mapping_at(lines: list[str], index: int, rest: str, name: str) -> _Mapping:
    where = f"line {index + 1}"
    if _UNSAFE.search(rest.split("#", 1)[0]):
        raise WeightsEditError(f"{where}: anchors, aliases and tags are not edited")
    if rest.lstrip().startswith("{"):
        flow = _FLOW.match(rest)
        if flow is None:
            raise WeightsEditError(
                f"{where}: {name} is a flow mapping over several lines or with nested values; "
                f"write it on one line or one `name: percent` per line"
            )
        items = _flow_items(flow["body"], where)
        return _Mapping(index, True, index, tuple((-1, k, p) for k, p, _ in items), "")
    stripped = rest.split("#", 1)[0].strip()
    if stripped:
        raise WeightsEditError(
            f"{where}: {name} holds {stripped!r}; write it as a mapping of deployment to percent"
        )
    entries: list[tuple[int, str, int]] = []
    indent = ""
    last = index
    for at in range(index + 1, len(lines)):
        body = lines[at].rstrip("\r\n")
        if not body.strip() or body.lstrip().startswith("#"):
            continue
        if not body.startswith((" ", "\t")):
            break
        entry = _ENTRY.match(body)
        if entry is None or (indent and entry["indent"] != indent):
            raise WeightsEditError(
                f"line {at + 1}: this entry of {name} is not `name: percent` at the "
                "indentation of the others"
            )
        indent = entry["indent"]
        entries.append((at, _unquoted(entry["key"]), int(entry["value"])))
        last = at
    return _Mapping(index, False, last, tuple(entries), indent or "  ")


def _flow_items(body: str, where: str) -> list[tuple[str, int, re.Match[str]]]:
    if not body.strip():
        return []
    items: list[tuple[str, int, re.Match[str]]] = []
    for part in body.split(","):
        match = _FLOW_ITEM.match(part)
        if match is None:
            raise WeightsEditError(f"{where}: {part.strip()!r} is not `name: percent`")
        items.append((_unquoted(match["key"]), int(match["value"]), match))
    return items


def _unquoted(key: str) -> str:
    return key[1:-1] if key[:1] in ("'", '"') else key


def _assigned(
    names: list[str], wanted: Mapping[str, int], *, reuse: bool
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(name and value for each written entry, in order; entries to add after them).

    reuse (mirror_traffic, which holds at most one deployment): an entry the new values
    leave out takes the name of one they add, in its place, so the mapping never holds two.
    """
    added = [(d, p) for d, p in wanted.items() if d not in names and p != 0]
    out: list[tuple[str, int]] = []
    for name in names:
        if reuse and added and wanted.get(name, 0) == 0:
            out.append(added.pop(0))
        else:
            out.append((name, wanted.get(name, 0)))
    return out, added


def _key_text(old_key: str, old_name: str, name: str) -> str:
    return old_key if name == old_name else _written(name)


def _block_edit(
    lines: list[str], found: _Mapping, wanted: Mapping[str, int], *, newline: str, reuse: bool
) -> tuple[list[str], dict[str, int] | None]:
    out = list(lines)
    written: dict[str, int] = {}
    assigned, added = _assigned([d for _, d, _ in found.entries], wanted, reuse=reuse)
    for (at, old_name, _), (deployment, percent) in zip(found.entries, assigned, strict=True):
        line = out[at]
        ending = line[len(line.rstrip("\r\n")) :]
        entry = _ENTRY.match(line.rstrip("\r\n"))
        assert entry is not None  # matched when located
        value, rest = str(percent), entry["rest"]
        if rest.strip() and "\t" not in rest[: len(rest) - len(rest.lstrip())]:
            # Keep a trailing comment in its column when the number's width changes (a tab
            # before it keeps it there already, and is a byte of the person's to keep).
            pad = len(entry["value"]) - len(value)
            rest = " " * max(1, len(rest) - len(rest.lstrip()) + pad) + rest.lstrip()
        key = _key_text(entry["key"], old_name, deployment)
        out[at] = f"{entry['indent']}{key}{entry['sep']}{value}{rest}{ending}"
        written[deployment] = percent
    if added:
        tail = out[found.last_line]
        if not tail.endswith(("\n", "\r")):
            out[found.last_line] = tail + newline
        new_lines = [f"{found.indent}{_written(d)}: {p}{newline}" for d, p in added]
        out[found.last_line + 1 : found.last_line + 1] = new_lines
        written.update(added)
    if not found.entries and not added:
        return out, None  # `traffic:` with nothing under it stays so: null, as before
    return out, written


def _flow_edit(
    lines: list[str], found: _Mapping, wanted: Mapping[str, int], *, reuse: bool
) -> tuple[list[str], dict[str, int]]:
    line = lines[found.key_line]
    body_text = line.rstrip("\r\n")
    ending = line[len(body_text) :]
    top = _TOP_KEY.match(body_text)
    assert top is not None
    flow = _FLOW.match(top["rest"])
    assert flow is not None
    items = _flow_items(flow["body"], f"line {found.key_line + 1}")
    written: dict[str, int] = {}
    parts: list[str] = []
    assigned, added = _assigned([d for d, _, _ in items], wanted, reuse=reuse)
    for number, ((old_name, _, match), (deployment, percent)) in enumerate(
        zip(items, assigned, strict=True)
    ):
        trail = match["trail"] if number < len(items) - 1 else ""
        key = _key_text(match["key"], old_name, deployment)
        parts.append(f"{match['lead']}{key}{match['sep']}{percent}{trail}")
        written[deployment] = percent
    # The file's own spacing: `{blue: 90, green: 10}` or `{ blue: 90 }`.
    gap = items[1][2]["lead"] if len(items) > 1 else " "
    inside = items[0][2]["lead"] if items else ""
    for deployment, percent in added:
        parts.append(f"{gap if parts else inside}{_written(deployment)}: {percent}")
    body = ",".join(parts) + (items[-1][2]["trail"] if items else "")
    written.update(added)
    edited = f"{top['key']}{top['colon']}{flow['space']}{{{body}}}{flow['rest']}{ending}"
    out = list(lines)
    out[found.key_line] = edited
    return out, written


def _added(
    lines: list[str], name: str, wanted: Mapping[str, int], *, newline: str
) -> tuple[list[str], dict[str, int] | None]:
    """A mapping the file lacks: mirror_traffic after traffic, in its style; else at the end."""
    values = {d: p for d, p in wanted.items() if p != 0}
    if not values:
        return lines, None  # nothing to say: absent is 0 everywhere
    out = list(lines)
    anchor = _locate(out, TRAFFIC) if name == MIRROR_TRAFFIC else None
    if anchor is not None and anchor.flow:
        shown = ", ".join(f"{_written(d)}: {p}" for d, p in values.items())
        text = [f"{name}: {{{shown}}}{newline}"]
    else:
        indent = anchor.indent if anchor is not None else "  "
        text = [
            f"{name}:{newline}",
            *(f"{indent}{_written(d)}: {p}{newline}" for d, p in values.items()),
        ]
    at = anchor.last_line + 1 if anchor is not None else len(out)
    if at > 0 and not out[at - 1].endswith(("\n", "\r")):
        out[at - 1] += newline
    out[at:at] = text
    return out, values
