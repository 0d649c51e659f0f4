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

Regular expressions the same way: compiling the patterns that the libraries and the package
compile as they load (PyYAML's reader and resolver, the schema checks, ...) costs a command
about 10 ms of CPU. install() keeps the program `re` compiled for each pattern whose text is
a constant of the code that asked for it (never one made from data: a file's glob, a
message), and a later process hands the same program to `_sre.compile`, as `re` itself
does. A program is kept only when the Pattern built from it equals the one `re` compiled
(same flags, groups and code), so an interpreter whose `re` works otherwise only keeps none.

The cache folder is $RECONCILER_CACHE_DIR, else $XDG_CACHE_HOME/reconciler, else
~/.cache/reconciler; the schema checks are kept there too (jsonschemas).

What a cache file holds is run, as a .pyc is. A .pyc sits beside its module, writable by
whoever installed the package; the cache folder may be anywhere the environment says (a
CI's shared cache, a world-writable /tmp folder). So a file is read only when this user
alone can have written it (read_trusted: a regular file this user owns that neither its
group nor others may write, no symbolic link, no larger than MAX_FILE_BYTES, in a folder
where no one else may rename files), and files
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
import threading
from importlib.util import MAGIC_NUMBER
from pathlib import Path
from types import CodeType, FrameType
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
# (is bytes, pattern, flags) -> the arguments after the pattern of the `_sre.compile` call
# that `re` made for it: (flags, code, groups - 1, groupindex, indexgroup). The type comes
# first, as in re's own cache: a str and a bytes of the same text hash alike, and comparing
# them is an error under `python -bb`.
_Key = tuple[bool, str | bytes, int]
_Program = tuple[int, list[int], int, dict[str, int], tuple[str | None, ...]]
_programs: dict[_Key, _Program] = {}
_programs_used: dict[_Key, None] = {}
_programs_added = 0
# The code `re._compiler._code` made last in this thread, with what it was made from.
_last_code = threading.local()


def cache_dir() -> Path | None:
    """$RECONCILER_CACHE_DIR, else $XDG_CACHE_HOME/reconciler, else ~/.cache/reconciler;
    None (no cache: everything compiled afresh) when none is set and this user has no home
    directory (no $HOME, a uid /etc/passwd does not name: Path.home() raises)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "reconciler"
    try:
        return Path.home() / ".cache" / "reconciler"
    except (RuntimeError, KeyError, OSError):
        return None


def _cache_file() -> Path | None:
    """One file per command: each reads only the code of the classes it loads."""
    folder = cache_dir()
    tag = f"{sys.implementation.cache_tag}-{MAGIC_NUMBER.hex()}"
    return None if folder is None else folder / "dataclasses" / f"{_command}-{tag}.marshal"


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


# What a cache file starts with, then the CRC-32 of the rest (write_private, read_trusted).
_HEADER: Final = b"reconciler-cache-1\n"


def read_trusted(path: Path) -> bytes | None:
    """The bytes of a cache file that only this user can have written (its code is run);
    None when it is absent, unreadable, or anyone else may have written it: another
    user's file, one its group or others may write, a symbolic link, not a regular file
    (a FIFO would hang the command), larger than MAX_FILE_BYTES, in a folder where
    others may rename files (_private_folder), or not whole as write_private wrote it
    (its header and checksum)."""
    if not _private_folder(path.parent):
        return None
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
            data = opened.read(MAX_FILE_BYTES + 1)
        except OSError:
            return None
    # Whole and as written: a bit flipped on disk in a regular expression's program can
    # pass _sre's checks and crash the process as it matches (so can damaged bytecode).
    import binascii  # ~0.1 ms; its crc32 ~0.2 ms a MB

    head, payload = data[: len(_HEADER)], data[len(_HEADER) + 4 :]
    checksum = data[len(_HEADER) : len(_HEADER) + 4]
    if head != _HEADER or checksum != binascii.crc32(payload).to_bytes(4, "little"):
        return None
    return payload


def _private_folder(folder: Path) -> bool:
    """Whether only this user (or root) can rename or replace the files of `folder`: its
    owner is either, and neither its group nor others may write it (unless its sticky bit
    keeps them off files not theirs). Elsewhere anyone may swap two files of this user,
    each 0600 and its own (one schema's check for another's, another Python's code)."""
    if not hasattr(os, "geteuid"):
        return True
    try:
        info = os.stat(folder)  # the folder a link leads to: the one the file is in
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid in (os.geteuid(), 0)
        and (not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or bool(info.st_mode & stat.S_ISVTX))
    )


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (after a header and its CRC-32), mode 0600, whole or not
    at all (read_trusted reads it back):
    written to a new file beside it (never through a file or link found there), then
    renamed. Raises OSError."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Named for no pid alone: processes of two containers sharing the folder may have the
    # same one, and each would remove the other's partial file as it wrote.
    partial = path.with_suffix(f".{os.getpid()}-{os.urandom(8).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    import binascii

    try:
        with os.fdopen(os.open(partial, flags, 0o600), "wb") as written:
            written.write(_HEADER + binascii.crc32(data).to_bytes(4, "little") + data)
        os.replace(partial, path)  # whole or absent, whoever else writes it
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _load_marshalled(path: Path | None) -> dict[Any, Any]:
    """The dict a trusted cache file holds; empty when there is none, or it is damaged
    (what it held is then compiled afresh, and written)."""
    data = None if path is None else read_trusted(path)
    if data is None:
        return {}
    try:
        loaded = marshal.loads(data)
    except Exception:  # truncated or damaged
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _load(path: Path | None) -> dict[str, CodeType]:
    loaded = _load_marshalled(path)
    return {k: v for k, v in loaded.items() if type(k) is str and type(v) is CodeType}


def _save() -> None:
    """Write the file again when this process compiled something new (at exit)."""
    path = _cache_file()
    if not _added or path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        # What another process wrote meanwhile is kept too, after what this one ran.
        merged = {**_load(path), **_compiled}
        kept = {**{text: merged[text] for text in _used if text in merged}, **merged}
        write_private(path, marshal.dumps(dict(list(kept.items())[:MAX_ENTRIES])))


def _re_compiler() -> Any:
    """re's compiler (re._compiler, private: typeshed declares neither it nor _sre)."""
    import importlib

    return importlib.import_module("re._compiler")


def _patterns_file() -> Path | None:
    """One file per command, as for the dataclasses; named for the interpreter's exact
    version and its regular expression engine (the programs are that engine's code)."""
    engine = _re_compiler()._sre
    tag = f"{sys.implementation.cache_tag}-{sys.hexversion:x}-{engine.MAGIC}-{engine.CODESIZE}"
    folder = cache_dir()
    return None if folder is None else folder / "patterns" / f"{_command}-{tag}.marshal"


def _load_programs(path: Path | None) -> dict[_Key, _Program]:
    loaded = _load_marshalled(path)
    return {k: v for k, v in loaded.items() if _well_formed(k, v)}


def _well_formed(key: Any, value: Any) -> bool:
    """What _sre.compile accepts (it checks the code itself: a damaged program raises)."""
    return (
        type(key) is tuple
        and len(key) == 3
        and type(key[0]) is bool
        and type(key[1]) is (bytes if key[0] else str)
        and type(key[2]) is int
        and type(value) is tuple
        and len(value) == 5
        and type(value[0]) is int
        and type(value[1]) is list  # of ints: _sre.compile refuses anything else
        and type(value[2]) is int
        and type(value[3]) is dict
        and type(value[4]) is tuple
    )


def _literal(pattern: str | bytes, frame: FrameType | None) -> bool:
    """Whether `pattern` is the text of a program, never data: a constant of the code that
    asked `re` for it (a module's or a class's regular expression), or one that the body of
    one of the package's modules assembles from its constants."""
    import re

    own = {re.__file__, _re_compiler().__file__}
    while frame is not None and frame.f_code.co_filename in own:
        frame = frame.f_back
    if frame is None:
        return False
    if any(type(c) is type(pattern) and c == pattern for c in frame.f_code.co_consts):
        return True  # (compared within a type: bytes == str warns under python -b)
    module = frame.f_globals.get("__name__")
    return frame.f_code.co_name == "<module>" and str(module).startswith(_PACKAGE)


def _install_patterns() -> None:
    """re compiles the patterns kept by an earlier process from their programs."""
    compiler = _re_compiler()
    engine = getattr(compiler, "_sre", None)
    compile_pattern = getattr(compiler, "compile", None)
    make_code = getattr(compiler, "_code", None)
    debug = getattr(compiler, "SRE_FLAG_DEBUG", 128)
    if engine is None or compile_pattern is None or make_code is None:
        return  # a `re` made otherwise (another Python): its patterns compile as ever
    _programs.update(_load_programs(_patterns_file()))

    def code(parsed: Any, flags: int) -> list[int]:
        made: list[int] = make_code(parsed, flags)
        _last_code.made = (parsed, made)
        return made

    def compiled(pattern: Any, flags: int = 0) -> Any:
        if flags & debug:  # re prints the program as it compiles it: as ever
            return compile_pattern(pattern, flags)
        key = (type(pattern) is bytes, pattern, int(flags))
        program = _programs.get(key) if type(pattern) in (str, bytes) else None
        if program is not None:
            with contextlib.suppress(Exception):  # a damaged program: compiled afresh
                done = engine.compile(pattern, *program)
                if len(_programs_used) < MAX_ENTRIES:
                    _programs_used[key] = None
                return done
        _last_code.made = None
        done = compile_pattern(pattern, flags)
        made = _last_code.made
        _last_code.made = None
        if (
            made is not None
            and type(pattern) in (str, bytes)
            and _programs_added < MAX_ENTRIES
            and _literal(pattern, sys._getframe(1))
        ):
            _keep(key, made, done)
        return done

    compiler._code = code
    compiler.compile = compiled
    atexit.register(_save_programs)


def _keep(key: _Key, made: tuple[Any, list[int]], done: Any) -> None:
    """Keep the program of a pattern just compiled, when it rebuilds the same Pattern."""
    global _programs_added
    parsed, code = made
    state = parsed.state
    indexgroup: list[str | None] = [None] * state.groups
    for name, index in state.groupdict.items():
        indexgroup[index] = name
    program: _Program = (
        key[2] | state.flags,
        [int(c) for c in code],  # plain ints: marshal keeps no int subclass
        state.groups - 1,
        dict(state.groupdict),
        tuple(indexgroup),
    )
    try:
        again = _re_compiler()._sre.compile(key[1], *program)
    except Exception:
        return
    if again == done and again.groupindex == done.groupindex and again.groups == done.groups:
        _programs[key] = program
        _programs_added += 1
        if len(_programs_used) < MAX_ENTRIES:
            _programs_used[key] = None


def _save_programs() -> None:
    """Write the file again when this process compiled a pattern it did not hold (at exit)."""
    path = _patterns_file()
    if not _programs_added or path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        merged = {**_load_programs(path), **_programs}
        kept = {**{k: merged[k] for k in _programs_used if k in merged}, **merged}
        write_private(path, marshal.dumps(dict(list(kept.items())[:MAX_ENTRIES])))


def install(command: str) -> None:
    """Dataclasses created from now on run the code cached for `command` (a sub-command's
    name, or `reconcile`), and the regular expressions compiled from now on the programs
    cached for it; once per process."""
    global _installed, _command
    if _installed:
        return
    _installed = True
    _command = "".join(c if c.isalnum() or c in "-_" else "_" for c in command) or "reconcile"
    _install_patterns()  # first: importing dataclasses compiles one
    import dataclasses

    _compiled.update(_load(_cache_file()))
    # dataclasses' own global `exec` shadows the builtin for that module alone.
    dataclasses.exec = _exec  # type: ignore[attr-defined]
    atexit.register(_save)
