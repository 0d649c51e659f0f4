"""What the rollout tests on the real Docker Engine share: the endpoint, its policy, the new
version of its model, and reading the rollout back from git (status and trailers).

`git` is a function running git on the repository that holds the branches read (a checkout
or a bare remote): `repo.git` of a RepoBuilder, or git_remote_fixtures.remote_git bound to
a remote."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import yaml

from reconciler.gitsource import DEFAULT_STATUS_BRANCH
from reconciler.rollouts.machine import read_mark

if TYPE_CHECKING:
    from docker_target_fixtures import DockerWorld

Git = Callable[..., str]

EP: Final = "rollout-ep"
ENDPOINT_FILE: Final = f"endpoints/{EP}/endpoint.yml"


def policy(steps: list[object], thresholds: dict[str, object], **extra: object) -> dict[str, Any]:
    """reconciler.yaml's `rollouts:` with one default policy judged every second."""
    rollout = {"steps": steps, "interval": "1s", "thresholds": thresholds, **extra}
    return {"rollouts": {"default": rollout}}


def new_version(world: DockerWorld, score_py: str | None = None) -> None:
    """Deployment green at 0 traffic with a new model (version 2, or `score_py`), written
    (not committed)."""
    if score_py is None:
        world.code("src2", "2")
    else:
        world.repo.write("src2/score.py", score_py)
    world.repo.deployment(EP, "green", code="../../src2")


def status_of(git: Git) -> dict[str, Any]:
    """The endpoint's status document on the status branch ({} before the first)."""
    try:
        text = git("show", f"{DEFAULT_STATUS_BRANCH}:status/{EP}.yaml")
    except Exception:
        return {}
    doc = yaml.safe_load(text)
    return doc if isinstance(doc, dict) else {}


def rollout_block(git: Git) -> dict[str, Any]:
    block = status_of(git).get("rollout")
    return block if isinstance(block, dict) else {}


def marks(git: Git, branch: str = "main") -> list[tuple[int, bool]]:
    """(step, rollback) of each rollout commit on the branch, oldest first."""
    log = git("log", "--format=%H%x1f%B%x1e", branch)
    found = [read_mark(entry) for entry in log.split("\x1e") if "Reconcile-Rollout:" in entry]
    return [(m.step, m.rollback) for m in reversed(found) if m]
