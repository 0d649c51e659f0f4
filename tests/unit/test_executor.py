"""executor: steps done, in progress or failed; gates that never sleep; skipping
dependants; stopping."""

from __future__ import annotations

from dataclasses import replace

from specs_factory import deployment, endpoint

from reconciler.diffing import assume_applied
from reconciler.executor import execute
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.plan import Action, CreateEndpoint, Plan, Step
from reconciler.model.results import Outcome
from reconciler.model.state import DesiredState, ProvisioningState
from reconciler.planning import make_plan
from reconciler.targets.memory import MemoryTarget


def _new() -> DesiredState:
    return DesiredState((endpoint(traffic={"blue": 100}),), (deployment(instance_count=2),))


def test_a_started_deployment_leaves_its_traffic_step_waiting_for_the_next_pass() -> None:
    target = MemoryTarget(warmup=2)
    plan = make_plan(_new(), target.observe(), prune=False)
    results = execute(plan, target)
    assert [r.outcome for r in results] == [
        Outcome.SUCCEEDED,
        Outcome.IN_PROGRESS,
        Outcome.SKIPPED,
    ]
    assert results[1].message == "waiting for ep/blue healthy (0/2 ready)"
    assert results[2].message == "waiting: step 2 is in progress"
    assert target.endpoints["ep"].spec.traffic == ()

    # The next passes plan from what runs: only the traffic step is left, gated.
    live = target.observe()
    again = make_plan(_new(), live, prune=False)
    assert [s.action for s in again.steps] == [Action.SET_TRAFFIC]
    [gated] = execute(again, target, live=live)
    assert (gated.outcome, gated.message) == (
        Outcome.IN_PROGRESS,
        "waiting for blue healthy (0/2 ready)",
    )
    live = target.observe()  # the second observation: the instances are ready
    [moved] = execute(make_plan(_new(), live, prune=False), target, live=live)
    assert moved.outcome == Outcome.SUCCEEDED
    assert dict(target.endpoints["ep"].spec.traffic) == {"blue": 100}


def test_a_gate_on_a_failed_deployment_fails_with_its_log_and_moves_no_traffic() -> None:
    target = MemoryTarget(warmup=1)
    target.broken.add(deployment().key)
    plan = make_plan(_new(), assume_applied(DesiredState()), prune=False)
    execute(plan, target)
    live = target.observe()  # warmup over: the instances failed
    [gated] = execute(make_plan(_new(), live, prune=False), target, live=live)
    assert gated.outcome == Outcome.FAILED
    assert gated.error_code == "DeploymentNotHealthy"
    assert gated.message == "traffic not moved: blue is not healthy (Degraded)"
    assert gated.log_tail == "init() failed"
    assert target.endpoints["ep"].spec.traffic == ()


def test_a_gate_reads_the_passes_observation_until_a_step_changed_the_target() -> None:
    class Counting(MemoryTarget):
        observed = 0

        def observe(self):  # type: ignore[no-untyped-def]
            self.observed += 1
            return super().observe()

    target = Counting()
    execute(make_plan(_new(), target.observe(), prune=False), target)
    target.endpoints["ep"] = replace(
        target.endpoints["ep"], spec=replace(target.endpoints["ep"].spec, traffic=())
    )
    live = target.observe()
    slow = replace(
        live,
        deployments=tuple(
            replace(d, ready_instances=1, provisioning_state=ProvisioningState.UPDATING)
            for d in live.deployments
        ),
    )
    observed = target.observed
    [gated] = execute(make_plan(_new(), slow, prune=False), target, live=slow)
    assert gated.message == "waiting for blue healthy (1/2 ready)"
    assert target.observed == observed  # no step before it: the pass's view stands


def test_an_invalid_plan_runs_nothing() -> None:
    target = MemoryTarget()
    plan = Plan(
        steps=(Step(CreateEndpoint(endpoint()), "ep"),),
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
    assert {r.message for r in results[1:]} == {"skipped: the reconciler is stopping"}


def test_results_are_reported_as_they_come_and_before_each_change() -> None:
    target = MemoryTarget()
    plan = make_plan(_new(), target.observe(), prune=False)
    events: list[str] = []
    execute(
        plan,
        target,
        on_step=lambda i, s: events.append(f"start {i} {s.action}"),
        on_result=lambda r: events.append(f"end {r.index} {r.outcome}"),
    )
    assert events == [
        "start 0 create_endpoint",
        "end 0 succeeded",
        "start 1 create_deployment",
        "end 1 succeeded",
        "start 2 set_traffic",
        "end 2 succeeded",
    ]
