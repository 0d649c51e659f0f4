"""Read-only views of a repository's files: a folder on disk, or (in gitsource) a commit.

Loading reads the desired state through this interface only, so the same code loads the
working tree, HEAD, or any revision that `reconcile diff` compares. Content ids are git
blob ids (sha1 of "blob <size>\\0<bytes>") on both sides, so a folder and a commit with the
same files give the same digests, and a commit's ids come from git without reading blobs.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol


class FileTree(Protocol):
    """Files of one version of a repository, addressed by POSIX paths relative to its root."""

    def paths(self) -> Iterable[str]:
        """Every file (not folder), in no particular order."""
        ...

    def read(self, path: str) -> bytes: ...

    def blob_id(self, path: str) -> str:
        """The git blob id of a file's content."""
        ...

    def is_file(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...


def git_blob_id(data: bytes) -> str:
    h = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
    h.update(data)
    return h.hexdigest()


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
        self._dirs: set[str] = set()
        # (size, mtime_ns, inode) -> blob id: model weights are hashed once per process,
        # not on every pass.
        self._blob_cache: dict[str, tuple[tuple[int, int, int], str]] = {}

    def _scan(self) -> list[str]:
        if self._paths is None:
            found: list[str] = []
            dirs: set[str] = {""}
            for current, subdirs, files in os.walk(self.root):
                subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
                rel = Path(current).relative_to(self.root).as_posix()
                rel = "" if rel == "." else rel
                dirs.add(rel)
                for name in files:
                    found.append(f"{rel}/{name}" if rel else name)
            self._paths = sorted(found)
            self._dirs = dirs
        return self._paths

    def paths(self) -> Iterable[str]:
        return self._scan()

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def blob_id(self, path: str) -> str:
        full = self.root / path
        st = full.stat()
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._blob_cache.get(path)
        if cached and cached[0] == sig:
            return cached[1]
        blob = git_blob_id(full.read_bytes())
        self._blob_cache[path] = (sig, blob)
        return blob

    def is_file(self, path: str) -> bool:
        try:
            return stat.S_ISREG((self.root / path).stat().st_mode)
        except OSError:
            return False

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

    def is_file(self, path: str) -> bool:
        return path in self.files

    def is_dir(self, path: str) -> bool:
        return path.strip("/") in self._dirs
