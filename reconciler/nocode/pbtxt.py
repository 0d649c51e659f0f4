"""Protocol Buffers text format, as Triton's `config.pbtxt` files are written: read without
a schema, with the place of every field, so that a configuration can be checked (errors name
the line) and edited in place (comments and layout kept).

The grammar is protobuf's text format: `name: value`, `name { ... }` (or `name: { ... }`,
`< ... >`), lists `name: [1, 2]` and `name [ { ... }, { ... } ]`, an optional `,` or `;`
after each field, `#` comments, adjacent strings concatenated. Values are kept as text:
without the schema (Triton's model_config.proto) a number, an enum and a bool look alike,
and nothing here needs to tell them apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["Field", "PbtxtError", "Scalar", "edit", "parse", "quote"]


class PbtxtError(ValueError):
    """Text that is not protobuf text format; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class Scalar:
    """One scalar value: a string's decoded content, or a number or identifier as written."""

    text: str
    quoted: bool
    start: int  # offsets in the document
    end: int


@dataclass(frozen=True, slots=True)
class Field:
    """One field as written; a list gives several scalars or several messages."""

    name: str
    line: int
    start: int  # offset of the name
    end: int  # offset past the value and its `,` or `;`
    scalars: tuple[Scalar, ...] = ()
    messages: tuple[tuple[Field, ...], ...] = ()

    def first(self) -> str | None:
        """The first scalar's text (a field written once), or None for a message."""
        return self.scalars[0].text if self.scalars else None


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # string, number, ident, punct
    text: str
    start: int
    end: int
    line: int


_TOKENS = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+|\#[^\n]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?[fF]?))
    |(?P<ident>-?[A-Za-z_][A-Za-z0-9_]*)
    |(?P<punct>[{}<>\[\]:,;/.])
    """,
    re.VERBOSE,
)
_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|[xX]([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|(.))", re.DOTALL)


def _tokens(text: str) -> Iterator[_Token]:
    line, position = 1, 0
    while position < len(text):
        match = _TOKENS.match(text, position)
        if match is None:
            if text[position] in "\"'":
                raise PbtxtError(line, "a string is not closed on its line")
            raise PbtxtError(line, f"unexpected character {text[position]!r}")
        kind = match.lastgroup or "space"
        value = match.group()
        if kind != "space":
            yield _Token(kind, value, match.start(), match.end(), line)
        line += value.count("\n")
        position = match.end()


def _unescape(body: str, line: int) -> str:
    def one(match: re.Match[str]) -> str:
        octal, hexa, unicode, char = match.groups()
        if octal:
            return chr(int(octal, 8))
        if hexa:
            return chr(int(hexa, 16))
        if unicode:
            return chr(int(unicode, 16))
        if char in _ESCAPES:
            return _ESCAPES[char]
        raise PbtxtError(line, f"unknown escape \\{char} in a string")

    return _ESCAPE.sub(one, body)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = list(_tokens(text))
        self.index = 0
        self.end_line = text.count("\n") + 1

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise PbtxtError(self.end_line, "the text ends in the middle of a field")
        self.index += 1
        return token

    def accept(self, text: str) -> _Token | None:
        token = self.peek()
        if token is not None and token.kind == "punct" and token.text == text:
            self.index += 1
            return token
        return None

    def message(self, closing: str | None, opened: _Token | None = None) -> tuple[Field, ...]:
        fields: list[Field] = []
        while True:
            token = self.peek()
            if token is None:
                if closing is not None:
                    assert opened is not None
                    raise PbtxtError(
                        opened.line, f"'{opened.text}' opened here is never closed by '{closing}'"
                    )
                return tuple(fields)
            if closing is not None and self.accept(closing):
                return tuple(fields)
            fields.append(self.field())

    def field(self) -> Field:
        token = self.take()
        if token.kind == "ident" and not token.text.startswith("-"):
            name = token.text
        elif token.kind == "punct" and token.text == "[":
            # An extension or Any type name: [com.example.ext]
            parts = []
            while not self.accept("]"):
                parts.append(self.take().text)
            name = "[" + "".join(parts) + "]"
        else:
            raise PbtxtError(token.line, f"expected a field name, found '{token.text}'")
        colon = self.accept(":") is not None
        following = self.peek()
        if following is None:
            raise PbtxtError(token.line, f"'{name}' has no value")
        scalars: list[Scalar] = []
        messages: list[tuple[Field, ...]] = []
        if following.kind == "punct" and following.text in "{<":
            messages.append(self.braced())
        elif following.kind == "punct" and following.text == "[":
            opened = self.take()
            if not self.accept("]"):
                while True:
                    item = self.peek()
                    if item is None:
                        raise PbtxtError(opened.line, "'[' opened here is never closed by ']'")
                    if item.kind == "punct" and item.text in "{<":
                        messages.append(self.braced())
                    else:
                        scalars.append(self.scalar(name, colon=colon, line=token.line))
                    if self.accept("]"):
                        break
                    if not self.accept(","):
                        found = self.peek()
                        if found is None:
                            raise PbtxtError(opened.line, "'[' opened here is never closed by ']'")
                        raise PbtxtError(
                            found.line, f"expected ',' or ']' in '{name}', found '{found.text}'"
                        )
            if scalars and messages:
                raise PbtxtError(token.line, f"'{name}' mixes values and messages in one list")
        else:
            scalars.append(self.scalar(name, colon=colon, line=token.line))
        end = self.tokens[self.index - 1].end
        separator = self.peek()
        if separator is not None and separator.kind == "punct" and separator.text in ",;":
            end = self.take().end
        return Field(
            name=name,
            line=token.line,
            start=token.start,
            end=end,
            scalars=tuple(scalars),
            messages=tuple(messages),
        )

    def braced(self) -> tuple[Field, ...]:
        opened = self.take()
        return self.message("}" if opened.text == "{" else ">", opened)

    def scalar(self, name: str, *, colon: bool, line: int) -> Scalar:
        if not colon:
            raise PbtxtError(line, f"expected ':' after '{name}'")
        token = self.take()
        if token.kind == "string":
            start, parts = token.start, [_unescape(token.text[1:-1], token.line)]
            end = token.end
            while (more := self.peek()) is not None and more.kind == "string":
                parts.append(_unescape(self.take().text[1:-1], more.line))
                end = more.end
            return Scalar("".join(parts), quoted=True, start=start, end=end)
        if token.kind in ("number", "ident"):
            return Scalar(token.text, quoted=False, start=token.start, end=token.end)
        raise PbtxtError(token.line, f"expected a value for '{name}', found '{token.text}'")


def parse(text: str) -> tuple[Field, ...]:
    """The top-level fields of a text-format document; PbtxtError naming the line."""
    return _Parser(text).message(None)


def quote(text: str) -> str:
    """`text` as a text-format string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def edit(text: str, changes: Iterable[tuple[int, int, str]]) -> str:
    """`text` with each (start, end, replacement) applied; the spans must not overlap."""
    ordered: Sequence[tuple[int, int, str]] = sorted(changes, reverse=True)
    for start, end, replacement in ordered:
        text = text[:start] + replacement + text[end:]
    return text
