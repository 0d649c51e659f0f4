"""Read-only views of a repository's files: a folder on disk, or (in gitsource) a commit.

Loading reads the desired state through this interface only, so the same code loads the
working tree, HEAD, or any revision that `reconcile diff` compares. Content ids are git
blob ids (sha1 of "blob <size>\\0<bytes>") on both sides, so a folder and a commit with the
same files give the same digests, and a commit's ids come from git without reading blobs.

Links and special files are read the same way in a folder and in a commit (README "Limits"):
a symbolic link is followed only when it names a file inside the repository (its target
taken as written, relative to the link's folder), and reads as that file; a link out of the
repository, to a folder, dangling, or in a loop, and a FIFO, socket or device, are listed
like files but raise TreeEntryError, naming the path, when read or digested. A special file
is never opened (opening a FIFO blocks until a writer comes), and a file is hashed in
chunks, so a model of gigabytes is never held in memory.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import posixpath
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol


class FileTree(Protocol):
    """Files of one version of a repository, addressed by POSIX paths relative to its root."""

    def paths(self) -> Iterable[str]:
        """Every file (not folder), links and special files included, in no particular order."""
        ...

    def read(self, path: str) -> bytes:
        """A file's content; raises TreeEntryError for what cannot be read as a file."""
        ...

    def blob_id(self, path: str) -> str:
        """The git blob id of a file's content; raises TreeEntryError like read."""
        ...

    def size(self, path: str) -> int:
        """A file's size in bytes, without reading it; raises TreeEntryError like read."""
        ...

    def is_file(self, path: str) -> bool:
        """Whether path is one of paths() (a link or a special file included)."""
        ...

    def is_dir(self, path: str) -> bool: ...


class TreeEntryError(Exception):
    """A path of a tree that cannot be read as a file; the message names it and says why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


# Links followed one after another before giving up (a loop, or a long chain).
MAX_LINK_HOPS = 16
_CHUNK = 1 << 20


def git_blob_id(data: bytes) -> str:
    h = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
    h.update(data)
    return h.hexdigest()


def link_destination(link: str, target: str) -> str | None:
    """The repository path a link at `link` names, or None when it leaves the repository.

    Lexical, like git's view of a link: an absolute target, or one with more `..` than the
    link has folders above it, is outside the repository wherever it is checked out.
    """
    if not target or target.startswith("/") or "\0" in target:
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
    if joined in (".", "..") or joined.startswith("../"):
        return None
    return joined


def resolve_links(
    path: str,
    *,
    link_target: Callable[[str], str | None],
    is_regular: Callable[[str], bool],
    is_dir: Callable[[str], bool],
) -> str:
    """The regular file that `path` is, or names through links inside the repository.

    Raises TreeEntryError naming `path` (and its target) when the chain leaves the
    repository, ends at a folder or at nothing, or is longer than MAX_LINK_HOPS.
    """
    current = path
    for _ in range(MAX_LINK_HOPS + 1):
        target = link_target(current)
        if target is None:
            if is_regular(current):
                return current
            raise TreeEntryError(path, f"{path!r} is not a regular file")
        destination = link_destination(current, target)
        if destination is None:
            raise TreeEntryError(
                path,
                f"{path!r} is a symbolic link to {target!r}, outside the repository: links "
                "are followed only inside it",
            )
        if is_dir(destination):
            raise TreeEntryError(
                path,
                f"{path!r} is a symbolic link to the folder {destination!r}: links to folders "
                "are not followed",
            )
        if link_target(destination) is None and not is_regular(destination):
            raise TreeEntryError(
                path, f"{path!r} is a symbolic link to {target!r}, which does not exist"
            )
        current = destination
    raise TreeEntryError(path, f"{path!r} is a symbolic link in a loop or a chain of links")


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special_kind(mode: int) -> str:
    return next((word for test, word in _SPECIAL_KINDS if test(mode)), "not a regular file")


def _special_file(path: str, mode: int) -> TreeEntryError:
    return TreeEntryError(
        path, f"{path!r} is {_special_kind(mode)}, not a regular file: it is never read"
    )


def _open_regular(full: Path, path: str) -> int:
    """A descriptor of a regular file; never blocks, whatever is at `full` now.

    O_NONBLOCK: should a FIFO have taken the file's place since the listing, opening it
    returns at once instead of waiting for a writer; it is then refused by its mode.
    O_NOFOLLOW: links are resolved by the tree, lexically, never by the system.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(full, flags)
    except OSError as exc:
        raise TreeEntryError(path, f"{path!r} cannot be read: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _special_file(path, mode)
    return fd


def file_blob_id(full: Path, path: str | None = None) -> tuple[str, os.stat_result]:
    """The git blob id of a file on disk, hashed in chunks (never read whole), and its stat."""
    name = path if path is not None else str(full)
    fd = _open_regular(full, name)
    with os.fdopen(fd, "rb", buffering=0) as handle:
        st = os.fstat(fd)
        h = hashlib.sha1(b"blob %d\0" % st.st_size, usedforsecurity=False)
        done = 0
        while chunk := handle.read(_CHUNK):
            h.update(chunk)
            done += len(chunk)
        if done != st.st_size:
            raise TreeEntryError(name, f"{name!r} changed while it was read")
    return h.hexdigest(), st


class Digester:
    """Content digests of files and folders of one tree.

    A digest covers names and contents of every file under a folder, so a change inside a
    referenced folder (a code file, model weights) changes the deployment even when no YAML
    changed. The sorted listing is made once, so a repository with thousands of folders
    costs a bisection per folder, not a scan.
    """

    def __init__(self, tree: FileTree) -> None:
        self.tree = tree
        self._sorted: list[str] | None = None
        self._cache: dict[str, str] = {}

    def under(self, folder: str) -> list[str]:
        """Files under a folder, sorted."""
        if self._sorted is None:
            self._sorted = sorted(self.tree.paths())
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        start = bisect.bisect_left(self._sorted, prefix)
        # "\uffff" sorts after any character a path can hold.
        end = bisect.bisect_left(self._sorted, prefix + "\uffff")
        return self._sorted[start:end]

    def digest(self, path: str) -> str:
        path = path.strip("/")
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        if self.tree.is_file(path):
            entries = [("", self.tree.blob_id(path))]
        else:
            cut = len(path) + 1 if path else 0
            entries = [(p[cut:], self.tree.blob_id(p)) for p in self.under(path)]
        h = hashlib.sha256()
        for name, blob in entries:
            h.update(f"{name}\0{blob}\n".encode())
        result = "sha256:" + h.hexdigest()
        self._cache[path] = result
        return result


# Folders never part of the desired state.
SKIPPED_DIRS = frozenset({".git", ".venv", "__pycache__", "node_modules", ".mypy_cache"})


class DirectoryTree:
    """A folder on disk (a working tree, uncommitted edits included)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self._paths: list[str] | None = None
        self._set: set[str] = set()
        self._dirs: set[str] = set()
        self._links: dict[str, str] = {}  # path -> target, as written
        self._special: dict[str, int] = {}  # path -> mode of a FIFO, socket or device
        # (size, mtime_ns, inode) -> blob id: model weights are hashed once per process,
        # not on every pass.
        self._blob_cache: dict[str, tuple[tuple[int, int, int], str]] = {}

    def _scan(self) -> list[str]:
        if self._paths is None:
            found: list[str] = []
            dirs: set[str] = {""}
            links: dict[str, str] = {}
            special: dict[str, int] = {}
            # scandir's entry types come with the listing: no stat per file, and a link
            # (to a folder too) is never descended into, as in git.
            pending = [""]
            while pending:
                rel = pending.pop()
                folder = self.root / rel if rel else self.root
                try:
                    entries = list(os.scandir(folder))
                except OSError:
                    continue  # unreadable folder: as if empty
                for entry in entries:
                    path = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_symlink():
                        try:
                            links[path] = os.readlink(entry.path)
                        except OSError:
                            links[path] = ""
                        found.append(path)
                    elif entry.is_dir(follow_symlinks=False):
                        if entry.name not in SKIPPED_DIRS:
                            dirs.add(path)
                            pending.append(path)
                    else:
                        if not entry.is_file(follow_symlinks=False):
                            special[path] = entry.stat(follow_symlinks=False).st_mode
                        found.append(path)
            self._paths = sorted(found)
            self._set = set(found)
            self._dirs = dirs
            self._links = links
            self._special = special
        return self._paths

    def paths(self) -> Iterable[str]:
        return self._scan()

    def _resolve(self, path: str) -> str:
        """The listed regular file `path` is or links to (links resolved as in git)."""
        self._scan()
        if path not in self._set:
            # Not listed: under a skipped folder, or created since the listing. Read as it is
            # on disk; _open_regular still refuses links and special files.
            return path
        special = self._special.get(path)
        if special is not None:
            raise _special_file(path, special)
        if path not in self._links:
            return path
        return resolve_links(
            path,
            link_target=self._links.get,
            is_regular=lambda p: p in self._set and p not in self._special,
            is_dir=lambda p: p in self._dirs,
        )

    def read(self, path: str) -> bytes:
        fd = _open_regular(self.root / self._resolve(path), path)
        with os.fdopen(fd, "rb") as handle:
            return handle.read()

    def size(self, path: str) -> int:
        resolved = self._resolve(path)
        try:
            st = (self.root / resolved).stat(follow_symlinks=False)
        except OSError as exc:
            raise TreeEntryError(path, f"{path!r} cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise _special_file(path, st.st_mode)
        return st.st_size

    def blob_id(self, path: str) -> str:
        resolved = self._resolve(path)
        full = self.root / resolved
        try:
            st = full.stat(follow_symlinks=False)
        except OSError as exc:
            raise TreeEntryError(path, f"{path!r} cannot be read: {exc.strerror}") from None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._blob_cache.get(resolved)
        if cached and cached[0] == sig:
            return cached[1]
        blob, st = file_blob_id(full, path)
        self._blob_cache[resolved] = ((st.st_size, st.st_mtime_ns, st.st_ino), blob)
        return blob

    def is_file(self, path: str) -> bool:
        self._scan()
        return path in self._set

    def is_dir(self, path: str) -> bool:
        self._scan()
        return path.strip("/") in self._dirs

    def refresh(self) -> None:
        """Forget the listing (files were added or removed); keep the blob cache."""
        self._paths = None


class MemoryTree:
    """Files held in memory: for tests and for composing trees."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self._dirs = {""}
        for p in self.files:
            parts = p.split("/")
            for i in range(1, len(parts)):
                self._dirs.add("/".join(parts[:i]))

    def paths(self) -> Iterable[str]:
        return self.files.keys()

    def read(self, path: str) -> bytes:
        return self.files[path]

    def blob_id(self, path: str) -> str:
        return git_blob_id(self.files[path])

    def size(self, path: str) -> int:
        return len(self.files[path])

    def is_file(self, path: str) -> bool:
        return path in self.files

    def is_dir(self, path: str) -> bool:
        return path.strip("/") in self._dirs
