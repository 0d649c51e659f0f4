"""Committed against on disk: what a plan read, and what of the working tree it left out.

Apply and `--dry-run` read a commit (HEAD), `validate` and `--worktree` the files on disk.
A file edited but not committed, or never `git add`ed, is then in one and not the other:
these warnings name each such file that a deployment needs (its model, code, conda file,
build context, or the file that declares it) and say how to bring the two together. PURE:
the working tree's differences are read by gitsource and passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from reconciler.model.diagnostics import Diagnostic
from reconciler.model.revision import PlanRevision
from reconciler.model.state import DesiredState

# Files named one by one in the warning about the rest of the working tree.
LISTED = 5


class Change(Protocol):
    """A file of the working tree that differs from HEAD (gitsource.WorktreeChange)."""

    @property
    def path(self) -> str: ...

    @property
    def change(self) -> str: ...


def declared_paths(states: Iterable[DesiredState | None]) -> dict[str, str]:
    """Repository-relative files and folders that the deployments of these desired states
    read, each with what it is to them ("model sklearn-iris:1 of iris/blue")."""
    found: dict[str, str] = {}
    for state in states:
        if state is None:
            continue
        for e in state.endpoints:
            if e.source is not None:
                found.setdefault(e.source.file, f"the file of endpoint {e.name}")
        for d in state.deployments:
            who = f"{d.endpoint_name}/{d.name}"
            if d.source is not None:
                found.setdefault(d.source.file, f"the file of deployment {who}")
            if d.model is not None and d.model.path:
                found.setdefault(d.model.path, f"model {d.model.name}:{d.model.version} of {who}")
            if d.code is not None and d.code.path:
                found.setdefault(d.code.path, f"the code of {who}")
            env = d.environment
            env_name = f"environment {env.name}:{env.version}" if env.name else "the environment"
            if env.conda_file:
                found.setdefault(env.conda_file, f"the conda file of {env_name} of {who}")
            if env.build_context:
                found.setdefault(env.build_context, f"the build context of {env_name} of {who}")
    return found


def _needed_by(path: str, declared: Mapping[str, str]) -> str | None:
    """What needs `path`: a declared file, or a file under a declared folder."""
    for where, what in declared.items():
        folder = where.strip("/")
        if folder in ("", ".") or path == folder or path.startswith(folder + "/"):
            return what
    return None


def needed_changes(
    changes: Sequence[Change], *, declared: Mapping[str, str], skipped: frozenset[str]
) -> list[Change]:
    """The changes a deployment needs: what an image built from the files on disk would
    take, and the commit lacks. Files in folders images leave out (`skipped`: caches such
    as __pycache__) are not."""
    return [
        c
        for c in changes
        if _needed_by(c.path, declared) is not None
        and not skipped.intersection(c.path.split("/")[:-1])
    ]


def revision_warnings(
    changes: Sequence[Change],
    *,
    declared: Mapping[str, str],
    revision: PlanRevision,
    command: str = "this plan",
) -> tuple[Diagnostic, ...]:
    """Warnings for a plan made from `revision` while the working tree has `changes`.

    Reading a commit: one warning per changed file a deployment needs (naming it and
    what needs it), then one for the rest of the changes. Reading the working tree
    before any commit: one saying so. Reading it with --worktree: nothing (asked for).
    """
    if revision.worktree:
        if revision.commit is None:
            return (
                Diagnostic(
                    "",
                    None,
                    "",
                    f"the repository has no commit yet: {command} reads the files on disk, "
                    "untracked ones included; `git add` and `git commit` them (applying "
                    "needs a commit, or --worktree)",
                ),
            )
        return ()
    if not changes:
        return ()
    found: list[Diagnostic] = []
    rest: list[str] = []
    short = revision.short
    for c in changes:
        what = _needed_by(c.path, declared)
        if what is None:
            rest.append(f"{c.path} ({c.change})")
            continue
        if c.change in ("untracked", "added"):
            state = "never committed" if c.change == "added" else "untracked (never `git add`ed)"
            missing = "which lacks it"
            fix = f"`git add {c.path}` and `git commit`"
        elif c.change == "deleted":
            state, missing = "deleted on disk, not in a commit", "which still has it"
            fix = f"`git rm {c.path}` and `git commit`"
        else:
            state = f"{c.change} and not committed"
            missing = "which has its old content"
            fix = f"`git add {c.path}` and `git commit`"
        found.append(
            Diagnostic(
                c.path,
                None,
                "",
                f"{state}; it is {what}: {command} reads commit {short}, {missing}; "
                f"{fix}, or pass --worktree to use the working tree",
            )
        )
    if rest:
        listed = ", ".join(rest[:LISTED])
        more = f" and {len(rest) - LISTED} more" if len(rest) > LISTED else ""
        found.append(
            Diagnostic(
                "",
                None,
                "",
                f"the working tree has uncommitted changes that {command} leaves out (it "
                f"reads commit {short}): {listed}{more}; commit them, or pass --worktree",
            )
        )
    return tuple(found)
