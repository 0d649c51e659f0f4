"""One pass of the loop: load -> observe -> diff -> plan -> execute -> status.

Level-based: a pass starts from the revision it is given and from what the target shows
now, never from memory of an earlier pass. A pass never blocks on a rollout: steps the
target completes on its own end in progress, and the next pass continues from what the
target then shows (`converge` runs passes until nothing is in progress: the one-shot
`reconcile`). An invalid desired state yields a plan with errors and no steps; the target
is not touched, and status still records the errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Re-exported: callers of the engine load revisions through it too.
from reconciler.desired import load as load
from reconciler.desired import load_desired as _load
from reconciler.desired import repository_instance_types as repository_instance_types
from reconciler.desired import targets_instance_types as targets_instance_types
from reconciler.desired import with_shadow_tolerances as with_shadow_tolerances
from reconciler.executor import DEFAULT_GATE, STOPPING, Gate, execute
from reconciler.filetree import FileTree
from reconciler.health import Health, deployment_health
from reconciler.logs import get_logger
from reconciler.model.instance_types import InstanceType
from reconciler.model.plan import Plan, Step
from reconciler.model.results import Outcome, StepResult
from reconciler.model.state import DesiredState, LiveDeployment, LiveState, ProvisioningState
from reconciler.planning import make_plan
from reconciler.status import build_status, render_status, status_path
from reconciler.targets.base import Target
from reconciler.targets.capabilities import ChecksDesired

log = get_logger("reconciler.engine")

StatusWriter = Callable[[Mapping[str, str], str], None]


class PassWatcher(Protocol):
    """Hears of a pass as it runs: its plan (before any change), each step as it starts,
    what it says of its progress, and its result: the one-shot apply's display
    (progress.py) and the daemon's dashboard (ui/live.py). Called on the pass's thread;
    must not raise."""

    def planned(self, plan: Plan, desired: DesiredState | None, revision: str | None) -> None: ...

    def step_started(self, index: int, step: Step) -> None: ...

    def step_progress(self, index: int, message: str) -> None: ...

    def step_ended(self, result: StepResult) -> None: ...


# A step running longer than this has its endpoint's status written as in progress.
STATUS_DELAY_S = 2.0


@dataclass(frozen=True, slots=True)
class PassResult:
    revision: str | None
    plan: Plan
    results: tuple[StepResult, ...]
    status: Mapping[str, Mapping[str, Any]]  # endpoint -> status document
    live_before: LiveState
    live_after: LiveState
    desired: DesiredState | None = None  # None when the revision was invalid

    @property
    def failed(self) -> bool:
        return bool(self.plan.errors) or any(r.outcome == Outcome.FAILED for r in self.results)

    @property
    def in_progress(self) -> bool:
        """Something of the pass completes on the target: a step in progress, or a
        declared deployment still starting or rolling out (ready < count) after it."""
        if any(r.outcome == Outcome.IN_PROGRESS for r in self.results):
            return True
        declared = {e.name for e in self.desired.endpoints} if self.desired else set()
        starting = (ProvisioningState.CREATING, ProvisioningState.UPDATING)
        return any(
            deployment_health(d) == Health.PROGRESSING
            for d in self.live_after.deployments
            if d.endpoint in declared
        ) or any(
            # An endpoint whose own parts still roll out (a Kubernetes router).
            e.provisioning_state in starting
            for e in self.live_after.endpoints
            if e.name in declared
        )

    @property
    def degraded(self) -> tuple[LiveDeployment, ...]:
        """Declared deployments the target shows failed after the pass (instances that
        cannot start), whether or not a step of the pass touched them."""
        declared = {e.name for e in self.desired.endpoints} if self.desired else set()
        return tuple(
            d
            for d in self.live_after.deployments
            if d.endpoint in declared and deployment_health(d) == Health.DEGRADED
        )

    @property
    def stopped(self) -> bool:
        """A stop request skipped steps of the pass."""
        return any(r.message == STOPPING for r in self.results)

    @property
    def converged(self) -> bool:
        """Every step done and nothing left to wait for."""
        return not self.failed and not self.in_progress and not self.stopped


def plan_pass(
    tree: FileTree,
    live: LiveState,
    *,
    prune: bool,
    revision: str | None = None,
    instance_types: Mapping[str, InstanceType] | None = None,
    target: object | None = None,
) -> tuple[Plan, DesiredState | None]:
    """Load and plan; a target that checks the desired state (ChecksDesired) adds its
    warnings (a deployment referencing a connection the target lacks)."""
    desired, failed, instance_types = _load(tree, revision, instance_types, strict=True)
    if desired is None:
        assert failed is not None
        return failed, None
    extra = target.desired_warnings(desired) if isinstance(target, ChecksDesired) else ()
    plan = make_plan(
        desired, live, prune=prune, instance_types=instance_types, extra_warnings=extra
    )
    return plan, desired


def run_pass(
    tree: FileTree,
    target: Target,
    *,
    prune: bool,
    dry_run: bool,
    revision: str | None = None,
    instance_types: Mapping[str, InstanceType] | None = None,
    write_status: StatusWriter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    status_delay_s: float = STATUS_DELAY_S,
    watcher: PassWatcher | None = None,
) -> PassResult:
    """One pass. It never waits for a rollout: a step the target completes on its own, or
    a health gate not met yet, ends in progress, and the next pass continues it.
    `watcher` hears of the plan, each step, its progress and its result as they come
    (the daemon's dashboard shows them live).

    Status is written at the end of the pass, and also while a step runs longer than
    `status_delay_s` (an image build): its endpoint is then Updating with that step in
    progress. The writer commits only what changed.
    """
    live = target.observe()
    plan, desired = plan_pass(
        tree, live, prune=prune, revision=revision, instance_types=instance_types, target=target
    )
    log.info(
        "pass_planned",
        revision=revision,
        steps=len(plan.steps),
        errors=len(plan.errors),
        dry_run=dry_run,
    )
    declared = tuple(e.name for e in desired.endpoints) if desired else ()
    if watcher is not None:
        watcher.planned(plan, desired, revision)

    def documents(state: LiveState, results: Sequence[StepResult]) -> dict[str, dict[str, Any]]:
        return build_status(
            revision=revision,
            target=target.name,
            live=state,
            plan=plan,
            results=results,
            declared=declared,
            desired=desired,
        )

    def write(docs: Mapping[str, Mapping[str, Any]]) -> None:
        if write_status is not None and not dry_run:
            files = {status_path(name): render_status(doc) for name, doc in docs.items()}
            write_status(files, f"status of {revision or 'working tree'} on {target.name}")

    results: tuple[StepResult, ...] = ()
    live_after = live
    if not dry_run and plan.steps:
        during = _StatusDuringPass(
            lambda results: write(documents(live, results)), delay_s=status_delay_s
        )

        def step_started(index: int, step: Step) -> None:
            during.step_started(index, step)
            if watcher is not None:
                watcher.step_started(index, step)

        def step_ended(result: StepResult) -> None:
            during.step_ended(result)
            if watcher is not None:
                watcher.step_ended(result)

        try:
            results = execute(
                plan,
                target,
                live=live,
                should_stop=should_stop,
                on_step=step_started,
                on_result=step_ended,
                on_progress=watcher.step_progress if watcher is not None else None,
            )
        finally:
            during.finish()
        live_after = target.observe()
    docs = documents(live_after, results)
    write(docs)
    return PassResult(revision, plan, results, docs, live, live_after, desired)


class _StatusDuringPass:
    """Writes status while a step runs longer than `delay_s`: the step as in progress
    (running), the results before it as they came. A short step writes nothing, so a pass
    that changes nothing commits nothing."""

    def __init__(self, write: Callable[[Sequence[StepResult]], None], *, delay_s: float) -> None:
        self.write = write
        self.delay_s = delay_s
        self.results: list[StepResult] = []
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None
        self.current = -1  # the step running now; a late timer of an earlier one writes nothing

    def step_started(self, index: int, step: Step) -> None:
        running = StepResult(index, Outcome.IN_PROGRESS, f"running: {step.reason}".rstrip(": "))
        snapshot = [*self.results, running]

        def fire() -> None:
            with self.lock:
                if self.current != index:
                    return
                try:
                    self.write(snapshot)
                except Exception as exc:  # status is best effort; the pass goes on
                    log.warning("status_not_written", error=str(exc))

        with self.lock:
            self.current = index
        self.timer = threading.Timer(self.delay_s, fire)
        self.timer.daemon = True
        self.timer.start()

    def step_ended(self, result: StepResult) -> None:
        self._cancel()
        self.results.append(result)

    def finish(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # A write under way finishes before the pass goes on (its final write comes later),
        # and a timer that fired too late to be cancelled writes nothing.
        with self.lock:
            self.current = -1


def _settled_since_planned(result: PassResult) -> bool:
    """A deployment that was still starting when the pass planned and has since become
    ready or failed: after a failed pass, the next one has something to act on (stop a
    start that failed and keep its log). A one-shot `reconcile` that stopped at the failed
    pass left a crash-looping instance behind, depending on how fast its passes ran."""
    before = {(d.endpoint, d.name): deployment_health(d) for d in result.live_before.deployments}
    return any(
        before.get((d.endpoint, d.name)) == Health.PROGRESSING
        and deployment_health(d) != Health.PROGRESSING
        for d in result.live_after.deployments
    )


def converge(
    tree: FileTree,
    target: Target,
    *,
    prune: bool,
    revision: str | None = None,
    instance_types: Mapping[str, InstanceType] | None = None,
    gate: Gate = DEFAULT_GATE,
    write_status: StatusWriter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_pass: Callable[[PassResult], None] | None = None,
    watcher: PassWatcher | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PassResult:
    """Passes of one revision until nothing is in progress (converged, or failed with
    nothing left to wait for), or `gate.timeout_s` has passed: what a one-shot `reconcile`
    runs. Each pass starts from what the target shows, as every pass does. The last
    pass's result; `in_progress` on it means the time ran out.
    """
    deadline = clock() + gate.timeout_s
    while True:
        result = run_pass(
            tree,
            target,
            prune=prune,
            dry_run=False,
            revision=revision,
            instance_types=instance_types,
            write_status=write_status,
            should_stop=should_stop,
            watcher=watcher,
        )
        if on_pass is not None:
            on_pass(result)
        if result.plan.errors or result.stopped or should_stop():
            return result
        if not result.in_progress and not (result.failed and _settled_since_planned(result)):
            return result
        if clock() >= deadline:
            return result
        sleep(gate.poll_s)
