"""Compiled code kept between processes, for the command line's start-up (issue 15).

Creating a dataclass compiles the source text of each method it writes (`__init__`,
`__repr__`, `__eq__`, a frozen one's `__setattr__` and `__delattr__`...): about 0.4 ms a
class, 25 ms of the 90 ms of CPU that `reconcile validate` spends in Python, for 57 classes.
The text is the same from one process to the next, so install() gives the dataclasses
module an `exec` that runs the code compiled for the same text in an earlier process,
kept in one file of the cache folder (keyed by the text itself, and the file by the
interpreter's bytecode magic number, as a .pyc is). What runs is what `exec` of the text
would have compiled: the same code, compiled with the same (no) future flags. An unreadable,
stale or unwritable cache only costs the compilation, never an error.

The cache folder is $RECONCILER_CACHE_DIR, else $XDG_CACHE_HOME/reconciler, else
~/.cache/reconciler; the schema checks are kept there too (jsonschemas).
"""

from __future__ import annotations

import atexit
import contextlib
import marshal
import os
import sys
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from types import CodeType
from typing import Any, Final

CACHE_ENV: Final = "RECONCILER_CACHE_DIR"
# Enough for every dataclass of the package many times over; a program that makes classes
# without end (make_dataclass in a loop) stops adding to the file there.
MAX_ENTRIES: Final = 4096

_PACKAGE: Final = "reconciler."
_compiled: dict[str, CodeType] = {}
_added = 0
_installed = False
_command = "reconcile"


def cache_dir() -> Path:
    """$RECONCILER_CACHE_DIR, else $XDG_CACHE_HOME/reconciler, else ~/.cache/reconciler."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reconciler"


def _cache_file() -> Path:
    """One file per command: each reads only the code of the classes it loads."""
    tag = f"{sys.implementation.cache_tag}-{MAGIC_NUMBER.hex()}"
    return cache_dir() / "dataclasses" / f"{_command}-{tag}.marshal"


def _exec(source: Any, globals: Any = None, locals: Any = None, /) -> None:
    """exec, with the code of a source text compiled once across processes."""
    global _added
    # Only the package's own classes: their texts are few and the same in every process
    # (a test's or a library's classes would only grow the file every command reads).
    ours = isinstance(globals, dict) and str(globals.get("__name__", "")).startswith(_PACKAGE)
    if ours and type(source) is str:
        code = _compiled.get(source)
        if code is None:
            # dont_inherit: as exec compiles the text of dataclasses.py, which has no
            # future imports (this module's `annotations` must not reach the code).
            code = compile(source, "<string>", "exec", dont_inherit=True)
            if len(_compiled) < MAX_ENTRIES:
                _compiled[source] = code
                _added += 1
        source = code
    exec(source, globals, locals)


def _load(path: Path) -> dict[str, CodeType]:
    try:
        loaded = marshal.loads(path.read_bytes())
    except Exception:  # absent, truncated or damaged: compiled afresh, then written
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {k: v for k, v in loaded.items() if type(k) is str and type(v) is CodeType}


def _save() -> None:
    """Write the file again when this process compiled something new (at exit)."""
    if not _added:
        return
    path = _cache_file()
    with contextlib.suppress(OSError, ValueError):
        # What another process wrote meanwhile is kept too.
        merged = {**_load(path), **_compiled}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(marshal.dumps(dict(list(merged.items())[:MAX_ENTRIES])))
        os.replace(partial, path)  # whole or absent, whoever else writes it


def install(command: str) -> None:
    """Dataclasses created from now on run the code cached for `command` (a sub-command's
    name, or `reconcile`); once per process."""
    global _installed, _command
    if _installed:
        return
    _installed = True
    _command = "".join(c if c.isalnum() or c in "-_" else "_" for c in command) or "reconcile"
    import dataclasses

    _compiled.update(_load(_cache_file()))
    # dataclasses' own global `exec` shadows the builtin for that module alone.
    dataclasses.exec = _exec  # type: ignore[attr-defined]
    atexit.register(_save)
