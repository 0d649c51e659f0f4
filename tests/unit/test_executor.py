"""executor: health gates with an injected clock, skipping dependants, stopping."""

from __future__ import annotations

from dataclasses import replace

from specs_factory import deployment, endpoint

from reconciler.diffing import assume_applied
from reconciler.executor import Gate, execute
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.plan import Action, Plan, Step
from reconciler.model.results import Outcome
from reconciler.model.state import DesiredState, ProvisioningState
from reconciler.planning import make_plan
from reconciler.targets.memory import MemoryTarget


class SlowStart(MemoryTarget):
    """Deployments become ready only after a number of observations."""

    def __init__(self, polls_until_ready: int) -> None:
        super().__init__()
        self.left = polls_until_ready

    def observe(self):  # type: ignore[no-untyped-def]
        state = super().observe()
        if self.left > 0:
            self.left -= 1
            return replace(
                state,
                deployments=tuple(
                    replace(d, ready_instances=0, provisioning_state=ProvisioningState.CREATING)
                    for d in state.deployments
                ),
            )
        return state


def _new() -> DesiredState:
    return DesiredState((endpoint(traffic={"blue": 100}),), (deployment(),))


def test_traffic_waits_until_the_deployment_is_healthy() -> None:
    target = SlowStart(polls_until_ready=3)
    sleeps: list[float] = []
    now = [0.0]

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    plan = make_plan(_new(), target.observe(), prune=False)
    target.left = 3
    results = execute(
        plan, target, gate=Gate(timeout_s=60, poll_s=2), clock=lambda: now[0], sleep=sleep
    )
    assert [r.outcome for r in results] == [Outcome.SUCCEEDED] * 3
    assert sleeps == [2, 2, 2]


def test_a_gate_that_never_opens_times_out_and_changes_no_traffic() -> None:
    target = SlowStart(polls_until_ready=10**6)
    now = [0.0]
    plan = make_plan(_new(), assume_applied(DesiredState()), prune=False)

    def sleep(s: float) -> None:
        now[0] += s

    results = execute(
        plan, target, gate=Gate(timeout_s=30, poll_s=5), clock=lambda: now[0], sleep=sleep
    )
    assert results[-1].outcome == Outcome.FAILED and results[-1].error_code == "Timeout"
    assert target.endpoints["ep"].spec.traffic == ()


def test_an_invalid_plan_runs_nothing() -> None:
    target = MemoryTarget()
    plan = Plan(
        steps=(Step(Action.CREATE_ENDPOINT, "ep", endpoint_spec=endpoint()),),
        errors=(Diagnostic("ep.yml", 1, "name", "bad"),),
    )
    assert execute(plan, target) == ()
    assert target.applied == []


def test_a_stop_request_skips_the_remaining_steps() -> None:
    target = MemoryTarget()
    plan = make_plan(_new(), target.observe(), prune=False)
    calls = iter([False, True, True])
    results = execute(plan, target, should_stop=lambda: next(calls))
    assert [r.outcome for r in results] == [Outcome.SUCCEEDED, Outcome.SKIPPED, Outcome.SKIPPED]
