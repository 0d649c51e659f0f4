"""Where the dashboard's data comes from: a StatusSource.

`reconcile ui` reads the status branch of a checkout (GitStatusSource): no target access,
so it works on a laptop or against a CI artefact. The daemon can mount the same pages by
handing build_app another StatusSource. Every git call goes through reconciler.gitsource.
Methods block (git subprocesses): the server runs them on one worker thread.
"""

from __future__ import annotations

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
            try:
                doc = yaml.safe_load(found.files[path])
            except yaml.YAMLError:
                problems.append(f"{path} is not valid YAML")
                continue
            if isinstance(doc, dict) and isinstance(doc.get("endpoint"), str):
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

    def history(self, endpoint: str, *, limit: int) -> list[StatusRevision]:
        snap = self.snapshot()
        if snap.status_commit is None:
            return []
        path = status_path(endpoint)
        commits = self.git.log(snap.status_commit, path=path, limit=limit)
        texts = self.git.read_files_at((c.commit, path) for c in commits)
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
    if text is None:
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else None
