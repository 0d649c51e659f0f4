"""Errors and warnings about the desired state, each naming a file, a line and a field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True, slots=True)
class Diagnostic:
    """One problem found in the repository (or about it), for a person to act on.

    file is repository-relative (POSIX); line is 1-based or None when no single line is
    to blame; field is a dotted path into the document ("traffic.blue", "instance_count").
    """

    file: str
    line: int | None
    field: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [p for p in (where, self.field) if p]
        return ": ".join([*parts, self.message])


class DesiredStateInvalid(Exception):
    """The repository does not describe a valid desired state; nothing may be applied."""

    def __init__(self, errors: tuple[Diagnostic, ...]) -> None:
        super().__init__(f"{len(errors)} error(s) in the desired state")
        self.errors = errors
