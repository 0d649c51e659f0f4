"""status: stable documents that round-trip into live state and never hold a secret."""

from __future__ import annotations

import yaml
from specs_factory import deployment, endpoint

from reconciler.diffing import assume_applied
from reconciler.model.plan import Action, Plan, ScaleDeployment, SetTraffic, Step, UpdateDeployment
from reconciler.model.results import Outcome, StepResult
from reconciler.model.specs import DeploymentSpec
from reconciler.model.state import DesiredState
from reconciler.planning import make_plan
from reconciler.status import build_status, parse_status, render_status


def _live() -> DesiredState:
    return DesiredState(
        (endpoint(traffic={"blue": 90, "green": 10}),), (deployment(), deployment("green"))
    )


def _green() -> DeploymentSpec:
    return deployment("green")


def _update_green() -> Step:
    return Step(UpdateDeployment(_green(), 1, _green().scale_settings), "ep", "green")


def test_status_is_the_same_bytes_for_the_same_state() -> None:
    live = assume_applied(_live(), target="local")
    a = build_status(revision="abc", target="local", live=live, plan=Plan())
    b = build_status(revision="abc", target="local", live=live, plan=Plan())
    assert render_status(a["ep"]) == render_status(b["ep"])
    assert "time" not in render_status(a["ep"])


def test_status_round_trips_into_live_state() -> None:
    live = assume_applied(_live(), target="local")
    doc = build_status(revision="abc", target="local", live=live, plan=Plan())["ep"]
    read = parse_status(render_status(doc), file="status/ep.yaml")
    assert read.revision == "abc"
    assert read.endpoint.spec.traffic == (("blue", 90), ("green", 10))
    assert [d.digest for d in read.deployments] == [d.digest for d in live.deployments]
    # Nothing but the next plan's own steps: the same state plans nothing.
    assert make_plan(_live(), live, prune=False).steps == ()


def test_a_failed_step_marks_the_deployment_failed_with_the_log_tail() -> None:
    live = assume_applied(_live())
    plan = Plan(steps=(_update_green(),))
    result = StepResult(
        0, Outcome.FAILED, "init() raised", error_code="DeploymentNotHealthy", log_tail="a\nb\n"
    )
    doc = build_status(revision="abc", target="t", live=live, plan=plan, results=[result])["ep"]
    assert doc["provisioning_state"] == "Failed"
    green = doc["deployments"]["green"]
    assert green["provisioning_state"] == "Failed"
    assert green["last_error"].startswith("DeploymentNotHealthy: init() raised")
    assert green["last_error"].endswith("a\nb")
    assert doc["deployments"]["blue"]["provisioning_state"] == "Succeeded"


def test_declared_endpoints_not_yet_on_the_target_are_creating() -> None:
    doc = build_status(
        revision=None,
        target="t",
        live=assume_applied(DesiredState()),
        plan=Plan(),
        declared=["new"],
    )["new"]
    assert doc["provisioning_state"] == "Creating" and doc["health"] == "Missing"


def test_parse_status_names_the_file_on_bad_input() -> None:
    try:
        parse_status("just: text", file="status/x.yaml")
    except ValueError as exc:
        assert "status/x.yaml" in str(exc)
    else:
        raise AssertionError("accepted a document with no endpoint")
    assert yaml.safe_load(render_status({"endpoint": "x", "traffic": {}})) == {
        "endpoint": "x",
        "traffic": {},
    }


def test_steps_left_undone_are_pending_and_the_endpoint_is_not_succeeded() -> None:
    live = assume_applied(_live())
    plan = Plan(
        steps=(
            Step(ScaleDeployment(_green(), 2, _green().scale_settings), "ep", "green"),
            _update_green(),
            Step(SetTraffic((("green", 100),)), "ep"),
        )
    )
    stopping = "skipped: the reconciler is stopping"
    results = [
        StepResult(0, Outcome.SUCCEEDED),
        StepResult(1, Outcome.SKIPPED, stopping),
        StepResult(2, Outcome.SKIPPED, stopping),
    ]
    doc = build_status(revision="abc", target="t", live=live, plan=plan, results=results)["ep"]
    assert doc["provisioning_state"] == "Updating"
    assert doc["pending_steps"] == [
        {"action": "update_deployment", "deployment": "green", "why": stopping},
        {"action": "set_traffic", "deployment": None, "why": stopping},
    ]
    assert doc["deployments"]["green"]["provisioning_state"] == "Updating"
    assert doc["deployments"]["blue"]["provisioning_state"] == "Succeeded"
    assert parse_status(render_status(doc), file="status/ep.yaml").revision == "abc"
    done = build_status(revision="abc", target="t", live=live, plan=plan, results=results[:1])
    assert done["ep"]["provisioning_state"] == "Succeeded"
    assert done["ep"]["pending_steps"] == []


def test_a_step_in_progress_is_said_with_what_it_waits_for_and_only_then() -> None:
    old = DesiredState((endpoint(traffic={"blue": 100}),), (deployment(),))
    new = DesiredState(
        (endpoint(traffic={"blue": 50, "green": 50}),),
        (deployment(), deployment("green")),
    )
    live = assume_applied(old)
    plan = make_plan(new, live, prune=False)
    assert [s.action for s in plan.steps] == [Action.CREATE_DEPLOYMENT, Action.SET_TRAFFIC]
    results = [
        StepResult(0, Outcome.SUCCEEDED),
        StepResult(1, Outcome.IN_PROGRESS, "waiting for green healthy (0/1 ready)"),
    ]
    doc = build_status(revision="abc", target="t", live=live, plan=plan, results=results)["ep"]
    assert doc["provisioning_state"] == "Updating"
    assert doc["in_progress_steps"] == [
        {
            "action": "set_traffic",
            "deployment": None,
            "progress": "waiting for green healthy (0/1 ready)",
        }
    ]
    assert doc["pending_steps"] == []
    # At rest, the key is not there: status files of earlier versions stay the same bytes.
    rest = build_status(revision="abc", target="t", live=live, plan=plan, results=results[:1])
    assert "in_progress_steps" not in rest["ep"]
    assert rest["ep"]["provisioning_state"] == "Succeeded"
