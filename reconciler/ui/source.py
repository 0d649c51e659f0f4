"""Where the dashboard's data comes from: a StatusSource.

`reconcile ui` reads the status branch of a checkout (GitStatusSource): no target access,
so it works on a laptop or against a CI artefact. The daemon can mount the same pages by
handing build_app another StatusSource. Every git call goes through reconciler.gitsource.
Methods block (git subprocesses): the server runs them on one worker thread.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml

from reconciler.engine import load
from reconciler.gitsource import CommitInfo, GitSource, GitSourceError
from reconciler.model.diagnostics import DesiredStateInvalid
from reconciler.model.state import DesiredState
from reconciler.status import STATUS_DIR, status_path

# Desired states kept in memory (one per applied commit the pages asked about).
DESIRED_CACHE = 8
# Bounds of a status document read from the branch, which anyone who can push to it
# writes: a real one is a few kilobytes (tens with many deployments). Beyond these it is
# refused, not parsed or expanded (a 50 MB file, a billion laughs of aliases).
MAX_DOCUMENT_CHARS = 256 * 1024
MAX_DOCUMENT_NODES = 100_000
MAX_DOCUMENT_DEPTH = 64
# What an endpoint's history may be looked up by: a name that is a plain file name under
# status/ (not "../x", not a git pathspec wildcard).
_HISTORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# Sizes of status files at commits kept (history asks before it reads).
SIZE_CACHE = 4096
# libyaml when present: several times faster, and it bounds nesting itself.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """The status branch at one commit, as the pages show it.

    docs: the status documents by endpoint name (as written by reconciler.status);
    changed_at: per endpoint, when its status file last changed (commit time, seconds);
    branch_head: the commit the repository's branch is at (to compare with what is applied).
    problem: why the status could not be read in full, when it could not (shown on pages).
    """

    branch: str
    status_commit: str | None
    written_at: int | None
    branch_head: str | None
    docs: Mapping[str, Mapping[str, Any]]
    changed_at: Mapping[str, int] = field(default_factory=dict)
    problem: str = ""


@dataclass(frozen=True, slots=True)
class StatusRevision:
    """One commit of the status branch that changed an endpoint's file: the status commit,
    the document it wrote (None: the file was removed), and the commit of the repository
    that status records as applied (who made it, its subject), when the repository has it."""

    status: CommitInfo
    doc: Mapping[str, Any] | None
    applied: CommitInfo | None


class StatusSource(Protocol):
    """What the dashboard reads. Implementations block; the server calls them off-loop."""

    def fingerprint(self) -> str:
        """Changes whenever what the pages show may have changed (polled every few seconds)."""
        ...

    def snapshot(self) -> StatusSnapshot: ...

    def history(self, endpoint: str, *, limit: int) -> list[StatusRevision]:
        """The endpoint's status revisions, newest first."""
        ...

    def desired(self, commit: str) -> DesiredState | None:
        """The desired state the repository declares at a commit; None if unreadable."""
        ...


class GitStatusSource:
    """A StatusSource over a checkout's status branch (local or a remote's, the newer)."""

    def __init__(self, git: GitSource, *, branch: str) -> None:
        self.git = git
        self.branch = branch
        self._lock = threading.Lock()
        self._snapshot: tuple[str, StatusSnapshot] | None = None
        self._desired: OrderedDict[str, DesiredState | None] = OrderedDict()
        # Sizes of status files at commits (they never change), for history.
        self._sizes: OrderedDict[tuple[str, str], int] = OrderedDict()

    def fingerprint(self) -> str:
        return self.git.status_fingerprint(self.branch)

    def snapshot(self) -> StatusSnapshot:
        with self._lock:
            mark = self.fingerprint()
            if self._snapshot is not None and self._snapshot[0] == mark:
                return self._snapshot[1]
            snap = self._read()
            self._snapshot = (mark, snap)
            return snap

    def _read(self) -> StatusSnapshot:
        # Fetched once when the checkout has no status at all (a CI clone), as `reconcile
        # status` does; later reads stay local.
        found = self.git.find_status(self.branch, fetch=self._snapshot is None)
        head = self.git.head_commit()
        if found.commit is None:
            return StatusSnapshot(self.branch, None, None, head, {}, {}, found.problem)
        docs: dict[str, Mapping[str, Any]] = {}
        problems = [found.problem] if found.problem else []
        for path in sorted(found.files):
            doc, why = load_document(found.files[path])
            if why:
                problems.append(f"{path} {why}")
            elif doc is not None and isinstance(doc.get("endpoint"), str):
                docs[doc["endpoint"]] = doc
            else:
                problems.append(f"{path} is not a status document")
        changed: dict[str, int] = {}
        for info in self.git.log(found.commit, path=STATUS_DIR, limit=200, paths=True):
            for name in docs:
                if status_path(name) in info.paths:
                    changed.setdefault(name, info.time)
            if len(changed) == len(docs):
                break
        status_info = self.git.commit_info(found.commit)
        return StatusSnapshot(
            branch=self.branch,
            status_commit=found.commit,
            written_at=status_info.time if status_info else None,
            branch_head=head,
            docs=docs,
            changed_at=changed,
            problem="; ".join(problems),
        )

    def _small_enough(self, commits: list[CommitInfo], path: str) -> list[CommitInfo]:
        """The commits whose file at `path` is small enough to read: sizes asked of git
        first, so a huge revision (a few kilobytes compressed) is never read whole."""
        unknown = [(c.commit, path) for c in commits if (c.commit, path) not in self._sizes]
        # A pair git lacks (the file removed at that commit) reads as nothing: size 0.
        found = self.git.file_sizes_at(unknown)
        with self._lock:
            for key in unknown:
                self._sizes[key] = found.get(key, 0)
            sizes = {(c.commit, path): self._sizes.get((c.commit, path), 0) for c in commits}
            while len(self._sizes) > SIZE_CACHE:
                self._sizes.popitem(last=False)
        # Bytes: at most four per character of the bound.
        return [c for c in commits if sizes[(c.commit, path)] <= 4 * MAX_DOCUMENT_CHARS]

    def history(self, endpoint: str, *, limit: int) -> list[StatusRevision]:
        snap = self.snapshot()
        if snap.status_commit is None:
            return []
        if not _HISTORY_NAME.fullmatch(endpoint) or ".." in endpoint:
            return []
        path = status_path(endpoint)
        commits = self.git.log(snap.status_commit, path=path, limit=limit)
        texts = self.git.read_files_at((c.commit, path) for c in self._small_enough(commits, path))
        revisions: list[StatusRevision] = []
        applied: dict[str, CommitInfo | None] = {}
        for info in commits:
            doc = _document(texts.get((info.commit, path)))
            applied_commit = doc.get("commit") if doc else None
            if isinstance(applied_commit, str) and applied_commit not in applied:
                applied[applied_commit] = self.git.commit_info(applied_commit)
            revisions.append(
                StatusRevision(
                    status=info,
                    doc=doc,
                    applied=applied.get(applied_commit)
                    if isinstance(applied_commit, str)
                    else None,
                )
            )
        return revisions

    def desired(self, commit: str) -> DesiredState | None:
        with self._lock:
            if commit in self._desired:
                self._desired.move_to_end(commit)
                return self._desired[commit]
        state: DesiredState | None = None
        try:
            state, _ = load(self.git.tree(commit), revision=commit)
        except (GitSourceError, DesiredStateInvalid, ValueError, KeyError):
            state = None
        with self._lock:
            self._desired[commit] = state
            while len(self._desired) > DESIRED_CACHE:
                self._desired.popitem(last=False)
        return state


def _document(text: str | None) -> Mapping[str, Any] | None:
    return None if text is None else load_document(text)[0]


def load_document(text: str) -> tuple[dict[str, Any] | None, str]:
    """A status document from the branch, as plain JSON values, or why it was refused.

    The branch is written by whoever can push to it, so the text is bounded (size, nodes
    with every alias expanded, depth) before anything is built from it, and what is
    built is plain JSON (string keys; dates, binary and non-finite numbers as text), so
    no page, sort or JSON answer can fail or hang on it. (None, "") when the document is
    not a mapping."""
    if len(text) > MAX_DOCUMENT_CHARS:
        return None, f"is larger than {MAX_DOCUMENT_CHARS} characters"
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, ""
        why = _too_big(node)
        if why:
            return None, why
        value = loader.construct_document(node)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        # ValueError: an integer of more digits than Python converts, a bad date.
        return None, "is not valid YAML"
    finally:
        loader.dispose()
    return (_plain(value), "") if isinstance(value, dict) else (None, "")


def _too_big(root: yaml.Node) -> str:
    """Why the document is beyond the bounds once its aliases are expanded, or ""."""
    seen = 0
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_DOCUMENT_NODES:
            return f"has more than {MAX_DOCUMENT_NODES} values (aliases expanded)"
        if depth > MAX_DOCUMENT_DEPTH:
            return f"is nested deeper than {MAX_DOCUMENT_DEPTH} levels"
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                stack.append((key, depth + 1))
                stack.append((child, depth + 1))
    return ""


def _plain(value: Any) -> Any:
    """JSON values only (the bounds above make this walk finite and small)."""
    if isinstance(value, dict):
        return {_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _key(key: Any) -> str:
    if key is None:
        return "null"
    plain = _plain(key)
    return plain if isinstance(plain, str) else json.dumps(plain)
