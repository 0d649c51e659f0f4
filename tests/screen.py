"""What a person sees on a terminal after a program wrote `raw` to it: the lines left on the
screen once carriage returns, line erasures and cursor moves up (a live display redrawing
itself) have done their work. Enough of a terminal for rich's output, no more."""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07]*\x07|\r|\n|[^\x1b\r\n]+")


def visible_lines(raw: str) -> list[str]:
    lines: list[str] = [""]
    row = 0
    column = 0
    for match in _ESCAPE.finditer(raw):
        text = match.group(0)
        if text == "\n":
            row += 1
            column = 0
            if row == len(lines):
                lines.append("")
        elif text == "\r":
            column = 0
        elif match.group(2) is not None:
            command, argument = match.group(2), match.group(1)
            if command == "A":
                row = max(0, row - int(argument or "1"))
            elif command == "B":
                row += int(argument or "1")
                while row >= len(lines):
                    lines.append("")
            elif command == "K":
                lines[row] = lines[row][:column] if argument in ("", "0") else ""
            # colours, cursor visibility: nothing on screen changes
        elif not text.startswith("\x1b"):
            line = lines[row]
            lines[row] = line[:column].ljust(column) + text + line[column + len(text) :]
            column += len(text)
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.rstrip() for line in lines]
