"""Which files a plan read: a commit's, or those on disk (PURE).

Apart from the plan's steps (model.plan re-exports it) so that `validate`, which says
which revision it checked, does not load the plan's model (issue 15: start-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PlanRevision:
    """Which files a plan was made from: a commit's, or those on disk.

    commit is HEAD (None before the first commit); dirty says the working tree differs
    from it; worktree says the plan read the working tree (--worktree, or no commit yet)
    rather than the commit.
    """

    commit: str | None
    dirty: bool
    worktree: bool = False

    @property
    def short(self) -> str:
        return (self.commit or "")[:12]

    def describe(self) -> str:
        """One line for people: what was read, and whether that is all there is."""
        if self.worktree:
            if self.commit is None:
                return "the working tree (no commit yet)"
            if self.dirty:
                return f"the working tree: commit {self.short} (HEAD) with uncommitted changes"
            return f"the working tree, the same as commit {self.short} (HEAD)"
        if self.dirty:
            return (
                f"commit {self.short} (HEAD); the working tree's uncommitted changes "
                "are not in this plan"
            )
        return f"commit {self.short} (HEAD)"

    def as_json(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "dirty": self.dirty,
            "source": "worktree" if self.worktree else "commit",
        }
