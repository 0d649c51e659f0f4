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

What a cache file holds is run, as a .pyc is. A .pyc sits beside its module, writable by
whoever installed the package; the cache folder may be anywhere the environment says (a
CI's shared cache, a world-writable /tmp folder). So a file is read only when this user
alone can have written it (read_trusted: a regular file this user owns that neither its
group nor others may write, no symbolic link, no larger than MAX_FILE_BYTES), and files
are written 0600 through a new temporary file (write_private): anything else is compiled
afresh, as an absent file is.
"""

from __future__ import annotations

import atexit
import contextlib
import marshal
import os
import stat
import sys
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from types import CodeType
from typing import Any, Final

CACHE_ENV: Final = "RECONCILER_CACHE_DIR"
# Enough for every dataclass of the package many times over; a program that makes classes
# without end (make_dataclass in a loop) stops adding to the file there.
MAX_ENTRIES: Final = 4096
# Far more than the file of every class of the package (~0.3 MB): what is larger is no file
# of ours, and is not read whole into memory.
MAX_FILE_BYTES: Final = 64 * 1024 * 1024

_PACKAGE: Final = "reconciler."
_compiled: dict[str, CodeType] = {}
# The texts this process ran, in order: the file keeps them first, so that texts no class
# has any more (classes edited, older versions) never crowd out those of today's classes.
_used: dict[str, None] = {}
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
            if _added < MAX_ENTRIES:
                _compiled[source] = code
                _added += 1
        if len(_used) < MAX_ENTRIES:
            _used[source] = None
        source = code
    exec(source, globals, locals)


def read_trusted(path: Path) -> bytes | None:
    """The bytes of a cache file that only this user can have written (its code is run);
    None when it is absent, unreadable, or anyone else may have written it: another
    user's file, one its group or others may write, a symbolic link, not a regular file
    (a FIFO would hang the command), or larger than MAX_FILE_BYTES."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as opened:
        try:
            # The file opened is the one checked: a file swapped in after the check is not.
            info = os.fstat(opened.fileno())
            mine = not hasattr(os, "geteuid") or info.st_uid == os.geteuid()
            if not (
                stat.S_ISREG(info.st_mode)
                and mine
                and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                and info.st_size <= MAX_FILE_BYTES
            ):
                return None
            return opened.read(MAX_FILE_BYTES + 1)
        except OSError:
            return None


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, mode 0600, whole or not at all (read_trusted reads it):
    written to a new file beside it (never through a file or link found there), then
    renamed. Raises OSError."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()  # left by a process of this pid that was killed while writing
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        with os.fdopen(os.open(partial, flags, 0o600), "wb") as written:
            written.write(data)
        os.replace(partial, path)  # whole or absent, whoever else writes it
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _load(path: Path) -> dict[str, CodeType]:
    data = read_trusted(path)
    if data is None:
        return {}
    try:
        loaded = marshal.loads(data)
    except Exception:  # truncated or damaged: compiled afresh, then written
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
        # What another process wrote meanwhile is kept too, after what this one ran.
        merged = {**_load(path), **_compiled}
        kept = {**{text: merged[text] for text in _used if text in merged}, **merged}
        write_private(path, marshal.dumps(dict(list(kept.items())[:MAX_ENTRIES])))


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
