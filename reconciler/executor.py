"""Runs a plan's steps in order on a target; a pass never blocks on a rollout.

It reads only the plan: each step says what to do and which deployments must be healthy
first. A step ends one of three ways (plus skipped):
- done (SUCCEEDED): the target made the change;
- in progress (IN_PROGRESS): the target started a change that completes on its own
  (instances starting, a rolling update with batches to go: the target's apply returned
  `Waiting`), or the step's health gate is not met yet ("waiting for blue healthy (2/3
  ready)"). Nothing sleeps: the rest of that endpoint's chain waits for the next pass,
  which starts again from what the target shows (DESIGN.md: level-based), so a newer
  commit is planned as soon as it arrives;
- failed: the target refused or could not, or a gated deployment can never become healthy
  (the target reports it failed: crash loop, readiness never met); traffic never moves to
  it, and the failure carries the deployment's last log lines.
Steps chain per endpoint (depends_on), so one endpoint's failure or wait never holds up
another's. A stop request (SIGTERM) lets the running step finish and skips the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.health import Health, deployment_health
from reconciler.logs import get_logger
from reconciler.model.errors import ErrorCode, error_kind
from reconciler.model.plan import Plan, Step
from reconciler.model.results import Outcome, StepResult, Waiting
from reconciler.model.state import LiveDeployment, LiveState
from reconciler.targets.base import Target, TargetError

log = get_logger("reconciler.executor")

STOPPING = "skipped: the reconciler is stopping"


@dataclass(frozen=True, slots=True)
class Gate:
    """How long a one-shot run (`reconcile`, engine.converge) keeps running passes while
    steps are in progress, and the pause between those passes. A single pass never waits."""

    timeout_s: float = 900.0
    poll_s: float = 1.0


DEFAULT_GATE = Gate()

ResultCallback = Callable[[StepResult], None]
StepCallback = Callable[[int, Step], None]
# What a running step says (a phase, or a line of build output: targets.base.OutputLine).
StepProgressCallback = Callable[[int, str], None]


def execute(
    plan: Plan,
    target: Target,
    *,
    live: LiveState | None = None,
    clock: Callable[[], float] = time.monotonic,
    should_stop: Callable[[], bool] = lambda: False,
    on_step: StepCallback | None = None,
    on_result: ResultCallback | None = None,
    on_progress: StepProgressCallback | None = None,
) -> tuple[StepResult, ...]:
    """Run the plan once. `live` is what the plan was made from: health gates read it until
    a step has changed the target, then observe afresh. on_step is called before a step
    changes the target, on_progress with what it says while it runs, on_result with each
    result as it comes."""
    if plan.errors:
        # Rule 7: an invalid desired state changes nothing.
        return ()
    results: list[StepResult] = []
    # For each step skipped while an earlier one is in progress: that step's index.
    waits_on: dict[int, int] = {}
    view = _View(target, live)
    for index, step in enumerate(plan.steps):
        result = _blocked(index, step, results, waits_on)
        if result is None and should_stop():
            result = StepResult(index, Outcome.SKIPPED, STOPPING)
        if result is None:
            result = _run_step(
                index,
                step,
                target,
                view=view,
                clock=clock,
                on_step=on_step,
                on_progress=on_progress,
            )
        else:
            log.info(
                "step_skipped",
                step=index + 1,
                action=str(step.action),
                on=step.target_name,
                why=result.message,
            )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return tuple(results)


def _blocked(
    index: int, step: Step, results: list[StepResult], waits_on: dict[int, int]
) -> StepResult | None:
    """A skip when a step this one depends on did not end done."""
    for dep in step.depends_on:
        before = results[dep]
        if before.outcome == Outcome.SUCCEEDED:
            continue
        root = dep if before.outcome == Outcome.IN_PROGRESS else waits_on.get(dep)
        if root is not None:
            waits_on[index] = root
            return StepResult(index, Outcome.SKIPPED, f"waiting: step {root + 1} is in progress")
        if before.message == STOPPING:
            return StepResult(index, Outcome.SKIPPED, STOPPING)
        return StepResult(index, Outcome.SKIPPED, f"skipped: step {dep + 1} did not succeed")
    return None


class _View:
    """What the health gates look at: the pass's observation until a step changed the
    target, then a fresh one (taken once per change, not once per gate)."""

    def __init__(self, target: Target, live: LiveState | None) -> None:
        self.target = target
        self.live = live

    def changed(self) -> None:
        self.live = None

    def now(self) -> LiveState:
        if self.live is None:
            self.live = self.target.observe()
        return self.live


def _run_step(
    index: int,
    step: Step,
    target: Target,
    *,
    view: _View,
    clock: Callable[[], float],
    on_step: StepCallback | None,
    on_progress: StepProgressCallback | None = None,
) -> StepResult:
    started = clock()
    bound = log.bind(step=index + 1, action=str(step.action), on=step.target_name)

    def progress(message: str) -> None:
        bound.info("step_progress", detail=message)
        if on_progress is not None:
            on_progress(index, message)

    try:
        if step.wait_healthy:
            gate = _gate(step, view.now())
            if gate is not None:
                outcome = gate.outcome
                bound.info(
                    "step_gated",
                    outcome=str(outcome),
                    detail=gate.message,
                    **_error_fields(gate.error_code),
                )
                return StepResult(
                    index,
                    outcome,
                    gate.message,
                    error_code=gate.error_code,
                    log_tail=gate.log_tail,
                    seconds=clock() - started,
                )
        bound.info("step_started", reason=step.reason)
        if on_step is not None:
            on_step(index, step)
        view.changed()
        waiting = target.apply(step, progress=progress)
    except TargetError as exc:
        seconds = clock() - started
        # error_kind: whether the next pass may succeed as it is (transient), a commit is
        # needed (permanent) or the platform is down (unavailable).
        bound.warning(
            "step_failed",
            error=str(exc),
            code=exc.code.value,
            error_kind=exc.kind.value,
            seconds=round(seconds, 3),
        )
        return StepResult(
            index,
            Outcome.FAILED,
            str(exc),
            error_code=exc.code.value,  # the plain string that status and JSON carry
            log_tail=exc.log_tail,
            seconds=seconds,
        )
    seconds = clock() - started
    if isinstance(waiting, Waiting):
        bound.info("step_in_progress", waiting_for=waiting.what, seconds=round(seconds, 3))
        return StepResult(
            index, Outcome.IN_PROGRESS, f"waiting for {waiting.what}", seconds=seconds
        )
    bound.info("step_succeeded", seconds=round(seconds, 3))
    return StepResult(index, Outcome.SUCCEEDED, seconds=seconds)


def _error_fields(code: str | None) -> dict[str, str]:
    """Log fields of a failure's code and its kind (model.errors); none without a code."""
    kind = error_kind(code)
    if code is None:
        return {}
    return {"code": code, "error_kind": kind.value} if kind is not None else {"code": code}


@dataclass(frozen=True, slots=True)
class _GateResult:
    outcome: Outcome
    message: str
    error_code: str | None = None
    log_tail: str = ""


def _gate(step: Step, live: LiveState) -> _GateResult | None:
    """None when every gated deployment is healthy; else in progress, or failed when one
    can never become healthy as it is (failed, or missing)."""
    by_name = {d.name: d for d in live.deployments_of(step.endpoint)}
    healths = {n: deployment_health(by_name.get(n)) for n in step.wait_healthy}
    bad = sorted(n for n, h in healths.items() if h in (Health.DEGRADED, Health.MISSING))
    if bad:
        first = by_name.get(bad[0])
        return _GateResult(
            Outcome.FAILED,
            f"traffic not moved: {', '.join(bad)} "
            f"{'is' if len(bad) == 1 else 'are'} not healthy "
            f"({', '.join(str(healths[n]) for n in bad)})",
            error_code=ErrorCode.DEPLOYMENT_NOT_HEALTHY.value,
            log_tail=(first.last_error or "") if first is not None else "",
        )
    waiting = sorted(n for n, h in healths.items() if h != Health.HEALTHY)
    if waiting:
        return _GateResult(
            Outcome.IN_PROGRESS,
            "waiting for " + ", ".join(_healthy_of(n, by_name[n]) for n in waiting),
        )
    return None


def _healthy_of(name: str, live: LiveDeployment) -> str:
    return f"{name} healthy ({live.ready_instances}/{live.instance_count} ready)"
