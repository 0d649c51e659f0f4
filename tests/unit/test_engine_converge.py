"""engine.converge: when a one-shot `reconcile` stops running passes."""

from __future__ import annotations

from pathlib import Path

from reconciler.engine import PassResult, converge
from reconciler.executor import Gate
from reconciler.filetree import DirectoryTree
from reconciler.model.keys import ResourceKey
from reconciler.model.state import LiveDeployment, LiveState, ProvisioningState
from reconciler.targets.memory import MemoryTarget


def _green(ready: int, state: ProvisioningState) -> LiveDeployment:
    return LiveDeployment(
        ResourceKey("ep", "green"), "sha256:x", 1, ready_instances=ready, provisioning_state=state
    )


class ScriptedTarget(MemoryTarget):
    """The in-memory platform whose observations are given in turn (the last repeats):
    what a Docker host shows while an instance starts and then fails."""

    def __init__(self, seen: list[LiveState]) -> None:
        super().__init__()
        self.seen = seen

    def observe(self) -> LiveState:
        return self.seen.pop(0) if len(self.seen) > 1 else self.seen[0]


def _passes(target: MemoryTarget, root: Path) -> list[PassResult]:
    done: list[PassResult] = []
    converge(
        DirectoryTree(root),
        target,
        # Pruning plans a step (green is declared nowhere), so the pass observes again
        # at its end; the in-memory platform has no green to delete: the step fails.
        prune=True,
        gate=Gate(timeout_s=30, poll_s=0),
        on_pass=done.append,
    )
    return done


def test_a_deployment_that_stopped_starting_after_the_plan_gets_one_more_pass(
    tmp_path: Path,
) -> None:
    # Planned while green was starting; by the end of the pass its start had failed. The
    # next pass acts on it (a Docker target stops the crash-looping instance and keeps its
    # log); stopping here left it behind, depending on how fast passes ran.
    starting = LiveState(deployments=(_green(0, ProvisioningState.CREATING),))
    failed = LiveState(deployments=(_green(0, ProvisioningState.FAILED),))
    passes = _passes(ScriptedTarget([starting, failed]), tmp_path)
    assert len(passes) == 2 and passes[0].failed  # failed elsewhere, and went on
    assert passes[-1].live_before == passes[-1].live_after == failed


def test_nothing_changed_since_the_plan_ends_the_passes(tmp_path: Path) -> None:
    failed = LiveState(deployments=(_green(0, ProvisioningState.FAILED),))
    assert len(_passes(ScriptedTarget([failed]), tmp_path)) == 1
