"""Runs a plan's steps in order on a target, gating traffic on health.

It reads only the plan: each step says what to do and which deployments must be healthy
first. A failed step marks its dependants skipped (they chain per endpoint), so one
endpoint's failure never blocks another's. A stop request (SIGTERM) lets the running step
finish and skips the rest: nothing is left half-applied by the executor itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from reconciler.health import Health, deployment_health
from reconciler.model.plan import Plan, Step
from reconciler.model.results import Outcome, StepResult
from reconciler.targets.base import Target, TargetError

log = structlog.get_logger("reconciler.executor")


@dataclass(frozen=True, slots=True)
class Gate:
    """How long a traffic step waits for its deployments to be healthy, and how often it looks."""

    timeout_s: float = 900.0
    poll_s: float = 1.0


DEFAULT_GATE = Gate()


def execute(
    plan: Plan,
    target: Target,
    *,
    gate: Gate = DEFAULT_GATE,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[StepResult, ...]:
    if plan.errors:
        # Rule 7: an invalid desired state changes nothing.
        return ()
    results: list[StepResult] = []
    for index, step in enumerate(plan.steps):
        blocked = [i for i in step.depends_on if results[i].outcome != Outcome.SUCCEEDED]
        if blocked or should_stop():
            why = (
                f"skipped: step {blocked[0] + 1} did not succeed"
                if blocked
                else "skipped: the reconciler is stopping"
            )
            results.append(StepResult(index, Outcome.SKIPPED, why))
            log.info("step_skipped", step=index + 1, action=str(step.action), on=step.target_name)
            continue
        results.append(_run_step(index, step, target, gate=gate, clock=clock, sleep=sleep))
    return tuple(results)


def _run_step(
    index: int,
    step: Step,
    target: Target,
    *,
    gate: Gate,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> StepResult:
    started = clock()
    bound = log.bind(step=index + 1, action=str(step.action), on=step.target_name)
    bound.info("step_started", reason=step.reason)
    try:
        if step.wait_healthy:
            _wait_healthy(step, target, gate=gate, clock=clock, sleep=sleep)
        target.apply(step, progress=lambda message: bound.info("step_progress", detail=message))
    except TargetError as exc:
        seconds = clock() - started
        bound.warning("step_failed", error=str(exc), code=exc.code, seconds=round(seconds, 3))
        return StepResult(
            index,
            Outcome.FAILED,
            str(exc),
            error_code=exc.code,
            log_tail=exc.log_tail,
            seconds=seconds,
        )
    seconds = clock() - started
    bound.info("step_succeeded", seconds=round(seconds, 3))
    return StepResult(index, Outcome.SUCCEEDED, seconds=seconds)


def _wait_healthy(
    step: Step,
    target: Target,
    *,
    gate: Gate,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    deadline = clock() + gate.timeout_s
    while True:
        live = target.observe()
        by_name = {d.name: d for d in live.deployments_of(step.endpoint)}
        healths = {n: deployment_health(by_name.get(n)) for n in step.wait_healthy}
        if all(h == Health.HEALTHY for h in healths.values()):
            return
        failed = sorted(n for n, h in healths.items() if h in (Health.DEGRADED, Health.MISSING))
        if failed:
            raise TargetError(
                f"traffic not moved: {', '.join(failed)} is not healthy "
                f"({', '.join(str(healths[n]) for n in failed)})",
                code="DeploymentNotHealthy",
            )
        if clock() >= deadline:
            raise TargetError(
                f"traffic not moved: {', '.join(sorted(healths))} not healthy "
                f"after {gate.timeout_s:.0f} s",
                code="Timeout",
            )
        sleep(gate.poll_s)
