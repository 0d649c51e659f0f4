"""The exception a scoring script raised, found in an instance's log. PURE.

"stopped while starting" says what happened; the exception says why. A log holds the
server's own lines around a Python traceback; this finds the last traceback and gives its
final line (`FileNotFoundError: [Errno 2] No such file or directory: '.../model.pkl'`) and
the innermost frame of the user's code (score.py, line 7, in init: `model = load(...)`),
so a failed deployment's message can quote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)')
# Frames of the interpreter, installed packages and their entry points (a server's
# console script in a venv's bin/): the user's code is elsewhere.
_LIBRARY = ("/site-packages/", "/dist-packages/", "/lib/python3", "<frozen ", "/bin/")
_LONGEST = 300


@dataclass(frozen=True, slots=True)
class RaisedException:
    """The end of a traceback: the exception line, and the user's innermost frame."""

    exception: str  # "FileNotFoundError: ..."
    file: str | None = None  # the file's name (score.py), not its folder
    line: int | None = None
    function: str | None = None
    source: str | None = None  # the text of the line, when the traceback shows it
    # A frame of the traceback is the user's code (not the interpreter's or a package's):
    # else the exception is a server's own, and the frame shown is its innermost.
    in_user_code: bool = True

    def describe(self) -> str:
        """One line: the exception, then where in the user's code it was raised."""
        if self.file is None:
            return self.exception
        where = f"{self.file} line {self.line}"
        if self.function:
            where += f", in {self.function}"
        if self.source:
            where += f": {self.source}"
        return f"{self.exception} ({where})"


def _clip(text: str) -> str:
    return text if len(text) <= _LONGEST else text[: _LONGEST - 3] + "..."


def last_exception(log: str) -> RaisedException | None:
    """The exception of a log's last traceback that passes through the user's code (a
    server wraps the script's exception in one of its own, chained after it), else of its
    last traceback; None when the log holds no traceback.

    A logger's prefix before "Traceback" is taken off the lines that follow when they carry
    it too (a prefix on every line); a traceback logged as one message has none.
    """
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    found = [t for t in (_traceback(lines, i) for i in starts) if t is not None]
    if not found:
        return None
    in_user_code = [t for t in found if t.in_user_code]
    return in_user_code[-1] if in_user_code else found[-1]


def _traceback(lines: list[str], start: int) -> RaisedException | None:
    """The exception of the traceback starting at lines[start]."""
    prefix = lines[start][: lines[start].index("Traceback")]
    if not (prefix and start + 1 < len(lines) and lines[start + 1].startswith(prefix)):
        prefix = ""
    frame: dict[str, str] | None = None
    user_frame: dict[str, str] | None = None
    exception = ""
    for i in range(start + 1, len(lines)):
        body = lines[i].removeprefix(prefix)
        match = _FRAME.match(body)
        if match:
            frame = match.groupdict()
            following = lines[i + 1].removeprefix(prefix) if i + 1 < len(lines) else ""
            if following.startswith(" ") and not _FRAME.match(following) and following.strip():
                frame["source"] = following.strip()
            if not any(part in frame["file"] for part in _LIBRARY):
                user_frame = frame
            continue
        if body.strip() and body[:1] not in (" ", "\t"):
            exception = body.strip()  # the first unindented line after the frames
            break
    if not exception or frame is None:
        return None
    chosen = user_frame or frame
    return RaisedException(
        _clip(exception),
        file=chosen["file"].rsplit("/", 1)[-1],
        line=int(chosen["line"]),
        function=chosen["function"],
        source=_clip(chosen["source"]) if chosen.get("source") else None,
        in_user_code=user_frame is not None,
    )
