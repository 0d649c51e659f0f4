"""planning: the order of steps for the situations the rules name, and the payloads."""

from __future__ import annotations

from dataclasses import replace

from specs_factory import deployment, endpoint

from reconciler.diffing import assume_applied
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.plan import Action
from reconciler.model.state import DesiredState, ResolvedConnection
from reconciler.planning import invalid_plan, make_plan


def plan_of(
    old: DesiredState, new: DesiredState, *, prune: bool = False
) -> list[tuple[str, str | None]]:
    plan = make_plan(new, assume_applied(old), prune=prune)
    return [(s.action.value, s.deployment) for s in plan.steps]


def test_create_endpoint_then_deployments_then_traffic() -> None:
    new = DesiredState((endpoint(traffic={"blue": 100}),), (deployment(),))
    plan = make_plan(new, assume_applied(DesiredState()), prune=False)
    assert [s.action for s in plan.steps] == [
        Action.CREATE_ENDPOINT,
        Action.CREATE_DEPLOYMENT,
        Action.SET_TRAFFIC,
    ]
    create, traffic = plan.steps[0], plan.steps[2]
    assert create.endpoint_spec is not None and create.endpoint_spec.traffic == ()
    assert traffic.traffic == (("blue", 100),) and traffic.wait_healthy == ("blue",)
    assert [s.depends_on for s in plan.steps] == [(), (0,), (1,)]


def test_steps_of_two_endpoints_do_not_depend_on_each_other() -> None:
    new = DesiredState(
        (endpoint("a", traffic={"blue": 100}), endpoint("b", traffic={"blue": 100})),
        (deployment(endpoint="a"), deployment(endpoint="b")),
    )
    plan = make_plan(new, assume_applied(DesiredState()), prune=False)
    first_of_b = next(i for i, s in enumerate(plan.steps) if s.endpoint == "b")
    assert plan.steps[first_of_b].depends_on == ()


def test_mirror_and_traffic_swapping_places_go_through_no_mirror() -> None:
    old = DesiredState(
        (endpoint(traffic={"blue": 100}, mirror={"green": 10}),),
        (deployment(), deployment("green")),
    )
    new = DesiredState(
        (endpoint(traffic={"green": 100}, mirror={"blue": 10}),),
        (deployment(), deployment("green")),
    )
    plan = make_plan(new, assume_applied(old), prune=False)
    assert [(s.action, s.traffic, s.mirror_traffic) for s in plan.steps] == [
        (Action.SET_MIRROR_TRAFFIC, None, ()),
        (Action.SET_TRAFFIC, (("green", 100),), None),
        (Action.SET_MIRROR_TRAFFIC, None, (("blue", 10),)),
    ]


def test_mirror_leaves_before_the_shadow_gets_live_traffic() -> None:
    old = DesiredState(
        (endpoint(traffic={"blue": 100}, mirror={"green": 10}),),
        (deployment(), deployment("green")),
    )
    new = DesiredState(
        (endpoint(traffic={"blue": 50, "green": 50}),), (deployment(), deployment("green"))
    )
    assert plan_of(old, new) == [("set_mirror_traffic", None), ("set_traffic", None)]


def test_scale_down_and_update_of_one_deployment_come_after_traffic() -> None:
    old = DesiredState(
        (endpoint(traffic={"blue": 100}),),
        (deployment(instance_count=3), deployment("green", instance_count=1)),
    )
    new = DesiredState(
        (endpoint(traffic={"blue": 20, "green": 80}),),
        (
            deployment(instance_count=1, instance_type="Standard_DS2_v2"),
            deployment("green", instance_count=3),
        ),
    )
    assert plan_of(old, new) == [
        ("scale_deployment", "green"),
        ("set_traffic", None),
        ("scale_deployment", "blue"),
        ("update_deployment", "blue"),
    ]


def test_prune_deletes_traffic_then_deployments_then_the_endpoint() -> None:
    old = DesiredState((endpoint(traffic={"blue": 100}),), (deployment(),))
    assert plan_of(old, DesiredState(), prune=True) == [
        ("set_traffic", None),
        ("delete_deployment", "blue"),
        ("delete_endpoint", None),
    ]
    assert plan_of(old, DesiredState(), prune=False) == []


def test_quota_figure_is_in_the_reason_of_scaling() -> None:
    old = DesiredState((endpoint(),), (deployment(),))
    new = DesiredState((endpoint(),), (deployment(instance_count=3),))
    (step,) = make_plan(new, assume_applied(old), prune=False).steps
    assert "ceil(1.2 x 3) x 4 cores = 16 cores" in step.reason


def test_an_invalid_state_has_errors_and_no_steps() -> None:
    plan = invalid_plan((Diagnostic("b.yml", 2, "x", "bad"), Diagnostic("a.yml", 1, "y", "bad")))
    assert plan.steps == () and [e.file for e in plan.errors] == ["a.yml", "b.yml"]


def test_a_deployment_out_of_line_is_repaired_before_its_other_steps_and_traffic() -> None:
    old = DesiredState(
        (endpoint(traffic={"blue": 100}),), (deployment(), deployment("green", instance_count=2))
    )
    live = assume_applied(old)
    live = replace(
        live,
        deployments=tuple(
            replace(d, repair="1 instance(s) ready, not routed yet: green-0")
            if d.name == "green"
            else d
            for d in live.deployments
        ),
    )
    new = DesiredState(
        (endpoint(traffic={"blue": 50, "green": 50}),),
        (deployment(), deployment("green", instance_count=3)),
    )
    plan = make_plan(new, live, prune=False)
    assert [(s.action, s.deployment) for s in plan.steps] == [
        (Action.REPAIR_DEPLOYMENT, "green"),
        (Action.SCALE_DEPLOYMENT, "green"),
        (Action.SET_TRAFFIC, None),
    ]
    assert plan.steps[0].reason == "repair: 1 instance(s) ready, not routed yet: green-0"
    assert plan.steps[0].instance_count == 2  # what it keeps now, not the declared count
    # A deployment no file declares any more is deleted, not repaired.
    gone = make_plan(
        DesiredState((endpoint(traffic={"blue": 100}),), (deployment(),)), live, prune=False
    )
    assert Action.REPAIR_DEPLOYMENT not in {s.action for s in gone.steps}


def test_a_changed_connection_plans_a_rolling_update_naming_it() -> None:
    ref = "${{azureml://connections/openai/credentials/api-key}}"
    spec = deployment(environment_variables=(("API_KEY", ref),))
    desired = DesiredState((endpoint(traffic={"blue": 100}),), (spec,))
    applied = assume_applied(desired)
    changed = ResolvedConnection("openai", "hmac-sha256:aaaa", "hmac-sha256:bbbb")
    live = replace(applied, deployments=(replace(applied.deployments[0], connections=(changed,)),))
    (step,) = make_plan(desired, live, prune=False).steps
    assert (step.action, step.deployment, step.instance_count) == (
        Action.UPDATE_DEPLOYMENT,
        "blue",
        1,
    )
    assert step.reason.startswith("connection openai changed: rolling update")
    assert [(c.path, c.before, c.after) for c in step.changes] == [
        ("connections.openai", "hmac-sha256:aaaa", "hmac-sha256:bbbb")
    ]
    # Instances of an earlier version recorded nothing: said so, rolled once.
    unrecorded = replace(changed, started=None)
    live = replace(
        applied, deployments=(replace(applied.deployments[0], connections=(unrecorded,)),)
    )
    (step,) = make_plan(desired, live, prune=False).steps
    assert "of connection openai is not recorded" in step.reason


def test_traffic_that_keeps_a_deployment_whose_instances_are_starting_waits_for_it() -> None:
    """blue keeps its share, but its instances are starting (scaled up from zero by an
    earlier pass, 0 of 1 ready): the new split waits for blue as for the rising green,
    since no router can send blue's share anywhere."""
    old = DesiredState(
        (endpoint(traffic={"blue": 100}),),
        (deployment(), deployment(name="green")),
    )
    live = assume_applied(old)
    starting = tuple(
        replace(d, ready_instances=0) if d.name == "blue" else d for d in live.deployments
    )
    live = replace(live, deployments=starting)
    new = DesiredState(
        (endpoint(traffic={"blue": 50, "green": 50}),),
        (deployment(), deployment(name="green")),
    )
    (traffic,) = [s for s in make_plan(new, live, prune=False).steps if s.traffic is not None]
    assert traffic.wait_healthy == ("green", "blue")
    assert traffic.reason == "traffic moves once green, blue are healthy"
    # All ready: only the rising deployment is waited for.
    (traffic,) = [
        s for s in make_plan(new, assume_applied(old), prune=False).steps if s.traffic is not None
    ]
    assert traffic.wait_healthy == ("green",)
