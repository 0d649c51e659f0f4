"""Property: for any two valid desired states, the plan obeys the ordering rules and
applying it step by step to the old state (in memory) yields the new state; so do passes
that are interrupted after any step, or that end with steps in progress (instances still
starting), each planned again from what runs, through valid states only."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.diffing import assume_applied, diff
from reconciler.executor import execute
from reconciler.model.plan import Action, Plan, Step
from reconciler.model.results import Outcome
from reconciler.model.specs import (
    CodeSpec,
    DeploymentSpec,
    EndpointSpec,
    EnvironmentSpec,
    ScaleSettings,
    weight_of,
    weights,
)
from reconciler.model.state import DesiredState, LiveState
from reconciler.planning import make_plan
from reconciler.targets.memory import MemoryTarget

ENDPOINTS = ("ep-a", "ep-b", "ep-c")
DEPLOYMENTS = ("blue", "green", "red", "gold")
TYPES = ("Standard_DS2_v2", "Standard_DS3_v2")


@st.composite
def split(draw: st.DrawFn, names: list[str]) -> dict[str, int]:
    """Weights over some of the names summing to 0 or 100."""
    if not names or draw(st.integers(0, 7)) == 0:
        return {}
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    cuts = sorted(
        draw(st.lists(st.integers(0, 100), min_size=len(chosen) - 1, max_size=len(chosen) - 1))
    )
    bounds = [0, *cuts, 100]
    return {n: bounds[i + 1] - bounds[i] for i, n in enumerate(chosen)}


@st.composite
def desired_states(draw: st.DrawFn) -> DesiredState:
    endpoints, deployments = [], []
    for ep in draw(st.lists(st.sampled_from(ENDPOINTS), max_size=3, unique=True)):
        names = draw(st.lists(st.sampled_from(DEPLOYMENTS), max_size=4, unique=True))
        for name in names:
            autoscaled = draw(st.integers(0, 5)) == 0
            scale = (
                ScaleSettings("target_utilization", 1, 4, 70, 1) if autoscaled else ScaleSettings()
            )
            deployments.append(
                DeploymentSpec(
                    endpoint_name=ep,
                    name=name,
                    environment=EnvironmentSpec(
                        image="img", digest=f"env-{draw(st.integers(1, 2))}"
                    ),
                    code=CodeSpec("src", "score.py", digest=f"code-{draw(st.integers(1, 3))}"),
                    instance_type=draw(st.sampled_from(TYPES)),
                    instance_count=draw(st.integers(1 if autoscaled else 0, 4)),
                    scale_settings=scale,
                )
            )
        traffic = draw(split(names))
        idle = [n for n in names if not traffic.get(n)]
        mirror = {}
        if idle and draw(st.booleans()):
            mirror = {draw(st.sampled_from(idle)): draw(st.integers(1, 50))}
        endpoints.append(
            EndpointSpec(
                ep,
                auth_mode=draw(st.sampled_from(("key", "aml_token"))),
                traffic=weights(traffic),
                mirror_traffic=weights(mirror),
                description=draw(st.sampled_from((None, "first", "second"))),
            )
        )
    return DesiredState(tuple(endpoints), tuple(deployments))


def _index(plan: Plan, action: Action, endpoint: str, deployment: str | None) -> int | None:
    for i, s in enumerate(plan.steps):
        if s.action == action and s.endpoint == endpoint and s.deployment == deployment:
            return i
    return None


def _share_steps(plan: Plan, endpoint: str) -> list[tuple[int, Step]]:
    return [
        (i, s)
        for i, s in enumerate(plan.steps)
        if s.endpoint == endpoint and s.action in (Action.SET_TRAFFIC, Action.SET_MIRROR_TRAFFIC)
    ]


def check_rules(old: DesiredState, new: DesiredState, plan: Plan, *, prune: bool) -> None:
    for i, step in enumerate(plan.steps):
        # Rule 1: create_endpoint before any step of its deployments.
        created = _index(plan, Action.CREATE_ENDPOINT, step.endpoint, None)
        if created is not None and step.deployment is not None:
            assert created < i
        # Chains stay within an endpoint.
        for dep in step.depends_on:
            assert plan.steps[dep].endpoint == step.endpoint and dep < i
    for ep in {s.endpoint for s in plan.steps}:
        before = old.endpoint(ep)
        traffic_now = dict(before.traffic) if before else {}
        mirror_now = dict(before.mirror_traffic) if before else {}
        gains: dict[str, int] = {}  # deployment -> index of the step giving it a share
        losses: dict[str, int] = {}  # deployment -> index of the step taking its share
        for i, s in _share_steps(plan, ep):
            table = traffic_now if s.action == Action.SET_TRAFFIC else mirror_now
            after = dict(s.traffic if s.action == Action.SET_TRAFFIC else s.mirror_traffic or ())
            for name in set(table) | set(after):
                if after.get(name, 0) > table.get(name, 0):
                    gains.setdefault(name, i)
                    # Rule 2: the share step waits for the deployment to be healthy.
                    assert name in s.wait_healthy
                if after.get(name, 0) < table.get(name, 0):
                    losses[name] = i
            table.clear()
            table.update(after)
            # Every intermediate state keeps mirror and live traffic apart.
            assert not set(mirror_now) & {n for n, p in traffic_now.items() if p}
        for name, given_at in gains.items():
            c = _index(plan, Action.CREATE_DEPLOYMENT, ep, name)
            if c is not None:
                assert c < given_at  # rule 2
            up = _index(plan, Action.SCALE_DEPLOYMENT, ep, name)
            if up is not None and plan.steps[up].instance_count is not None:
                old_count = next(
                    (
                        d.instance_count
                        for d in old.deployments
                        if d.key == plan.steps[up].deployment_spec.key
                    ),  # type: ignore[union-attr]
                    0,
                )
                if plan.steps[up].instance_count > old_count:  # type: ignore[operator]
                    assert up < given_at  # rule 4, capacity first
        for name, taken_at in losses.items():
            down = _index(plan, Action.SCALE_DEPLOYMENT, ep, name)
            if down is not None:
                spec = plan.steps[down].deployment_spec
                old_dep = next((d for d in old.deployments if d.key == spec.key), None)  # type: ignore[union-attr]
                if old_dep and plan.steps[down].instance_count < old_dep.instance_count:  # type: ignore[operator]
                    assert taken_at < down  # rule 4, scale-down after traffic falls
            deleted = _index(plan, Action.DELETE_DEPLOYMENT, ep, name)
            if deleted is not None:
                assert taken_at < deleted  # rule 5
        for s in plan.steps:
            if s.endpoint == ep and s.action == Action.SCALE_DEPLOYMENT:
                upd = _index(plan, Action.UPDATE_DEPLOYMENT, ep, s.deployment)
                if upd is not None:
                    assert plan.steps.index(s) < upd  # rule 3
        dele = _index(plan, Action.DELETE_ENDPOINT, ep, None)
        if dele is not None:
            assert prune  # rule 6
            assert all(
                i < dele
                for i, s in enumerate(plan.steps)
                if s.endpoint == ep and s.action == Action.DELETE_DEPLOYMENT
            )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old=desired_states(), new=desired_states(), prune=st.booleans())
def test_plan_obeys_rules_and_applying_it_reaches_the_new_state(
    old: DesiredState, new: DesiredState, prune: bool
) -> None:
    target = MemoryTarget.from_state(assume_applied(old))
    plan = make_plan(new, target.observe(), prune=prune)
    check_rules(old, new, plan, prune=prune)

    results = execute(plan, target)
    assert all(r.outcome == Outcome.SUCCEEDED for r in results), [
        (plan.steps[r.index].action, r.message) for r in results if r.outcome != Outcome.SUCCEEDED
    ]
    # Applied: nothing is left to change, and the plan is the same when asked twice.
    again = make_plan(new, target.observe(), prune=prune)
    assert again.steps == (), [s.as_json() for s in again.steps]
    if prune:
        assert {e.name for e in target.observe().endpoints} == {e.name for e in new.endpoints}
    assert make_plan(new, assume_applied(old), prune=prune) == plan  # deterministic


def check_valid(live: LiveState, before: LiveState) -> None:
    """What must hold at every moment on the target: traffic sums to 0 or 100, goes only to
    deployments that exist, never to a mirrored one, and every deployment has its endpoint.
    A share never goes to a deployment without a ready instance unless it had that share
    with none ready already (a desired state may give traffic to zero instances)."""
    names = {e.name for e in live.endpoints}
    for d in live.deployments:
        assert d.endpoint in names, f"{d.key} without its endpoint"
    for e in live.endpoints:
        traffic = dict(e.spec.traffic)
        assert sum(traffic.values()) in (0, 100), (e.name, traffic)
        by_name = {d.name: d for d in live.deployments_of(e.name)}
        for share in (e.spec.traffic, e.spec.mirror_traffic):
            for name, pct in share:
                if not pct:
                    continue
                d = by_name.get(name)
                assert d is not None, f"{e.name}: share to {name}, which does not exist"
                if d.instance_count == 0 or d.ready_instances > 0:
                    continue
                old = before.endpoint(e.name)
                had = 0
                if old is not None:
                    had = max(
                        weight_of(old.spec.traffic, name), weight_of(old.spec.mirror_traffic, name)
                    )
                ready_before = {x.name: x.ready_instances for x in before.deployments_of(e.name)}
                assert had >= pct and not ready_before.get(name), (e.name, name, d)
        assert not {n for n, p in e.spec.mirror_traffic if p} & {n for n, p in traffic.items() if p}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    old=desired_states(),
    new=desired_states(),
    prune=st.booleans(),
    stops=st.lists(st.integers(0, 12), max_size=4),
    warmup=st.integers(0, 2),
)
def test_passes_stopped_after_any_step_or_in_progress_reach_the_new_state_through_valid_states(
    old: DesiredState, new: DesiredState, prune: bool, stops: list[int], warmup: int
) -> None:
    target = MemoryTarget.from_state(assume_applied(old))
    target.warmup = warmup
    seen = [target.snapshot()]

    def check(_result: object) -> None:
        now = target.snapshot()
        check_valid(now, seen[-1])
        seen.append(now)

    for number in range(30):
        live = target.observe()
        plan = make_plan(new, live, prune=prune)
        settled = all(d.ready_instances >= d.instance_count for d in live.deployments)
        if not plan.steps and settled:
            break
        # This pass is stopped after `stops[number]` steps (a SIGTERM), when it has one.
        budget = [stops[number]] if number < len(stops) else [10**6]

        def stop(budget: list[int] = budget) -> bool:
            budget[0] -= 1
            return budget[0] < 0

        results = execute(
            plan,
            target,
            live=live,
            should_stop=stop,
            on_result=check,
        )
        assert not [r for r in results if r.outcome == Outcome.FAILED], [
            (plan.steps[r.index].action, r.message) for r in results
        ]
    else:
        raise AssertionError("not converged in 30 passes")
    assert make_plan(new, target.observe(), prune=prune).steps == ()
    if prune:
        assert {e.name for e in target.snapshot().endpoints} == {e.name for e in new.endpoints}


def test_a_failed_new_deployment_keeps_traffic_where_it_was() -> None:
    env = EnvironmentSpec(image="img", digest="e")
    old = DesiredState(
        (EndpointSpec("ep-a", traffic=weights({"blue": 100})),),
        (DeploymentSpec("ep-a", "blue", env, instance_type=TYPES[0]),),
    )
    new = DesiredState(
        (EndpointSpec("ep-a", traffic=weights({"green": 100})),),
        (
            replace(old.deployments[0], instance_count=0),
            DeploymentSpec("ep-a", "green", env, instance_type=TYPES[0], instance_count=2),
        ),
    )
    target = MemoryTarget.from_state(assume_applied(old))
    target.broken.add(new.deployments[1].key)
    plan = make_plan(new, target.observe(), prune=False)
    results = execute(plan, target)
    outcomes = [(plan.steps[r.index].action, r.outcome) for r in results]
    assert outcomes[0] == (Action.CREATE_DEPLOYMENT, Outcome.SUCCEEDED)
    assert outcomes[1] == (Action.SET_TRAFFIC, Outcome.FAILED)
    assert all(o == Outcome.SKIPPED for _, o in outcomes[2:])
    live = target.observe()
    assert weight_of(live.traffic_of("ep-a"), "blue") == 100
    blue = next(d for d in live.deployments if d.name == "blue")
    assert blue.instance_count == 1  # not scaled down: its dependency failed


def test_diff_of_a_state_with_itself_is_empty() -> None:
    env = EnvironmentSpec(image="img", digest="e")
    state = DesiredState(
        (EndpointSpec("ep-a", traffic=weights({"blue": 100})),),
        (DeploymentSpec("ep-a", "blue", env, instance_type=TYPES[0]),),
    )
    diffs = diff(state, assume_applied(state), prune=True)
    assert all(not d.endpoint_changes for d in diffs)
    assert all(not dep.changed for d in diffs for dep in d.deployments)
