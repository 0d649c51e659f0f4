"""Applying a repository's HEAD in one pass with its status committed to the status branch,
as the daemon does: what the status, dashboard and `reconcile status` tests start from."""

from __future__ import annotations

from repo_builder import RepoBuilder

from reconciler.engine import run_pass
from reconciler.gitsource import GitSource
from reconciler.targets.base import Target


def apply_head(repo: RepoBuilder, target: Target, *, must_succeed: bool = True) -> GitSource:
    """One pass of HEAD onto `target`, status written; it must not fail unless told it
    may (a pass whose refusals the status records)."""
    source = GitSource(repo.root)
    commit = source.resolve("HEAD")
    result = run_pass(
        source.tree(commit),
        target,
        prune=False,
        dry_run=False,
        revision=commit,
        write_status=lambda files, message: source.write_status(files, message=message),
    )
    assert not (must_succeed and result.failed), result.results
    return source
