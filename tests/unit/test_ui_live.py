"""The daemon's in-memory record of its passes (reconciler.ui.live.PassRecorder), fed the
way engine.run_pass feeds it, with a plan made by the planner."""

from __future__ import annotations

from specs_factory import deployment, endpoint

from reconciler.model.plan import Plan
from reconciler.model.results import Outcome, StepResult
from reconciler.model.state import DesiredState, LiveState
from reconciler.planning import make_plan
from reconciler.ui.live import PROGRESS_LINES, PassRecorder


def _plan() -> Plan:
    desired = DesiredState(
        (endpoint(traffic={"blue": 100}), endpoint(name="other", traffic={"blue": 100})),
        (deployment(), deployment(endpoint="other")),
    )
    return make_plan(desired, LiveState(), prune=False)


def test_a_running_step_shows_its_last_progress_lines_then_its_result() -> None:
    recorder = PassRecorder(clock=lambda: 100.0)
    plan = _plan()
    recorder.pass_started("trigger")
    recorder.planned(plan, None, "abc")
    recorder.step_started(1, plan.steps[1])
    for i in range(PROGRESS_LINES + 3):
        recorder.step_progress(1, f"line {i}")
    running = recorder.view()["running"]
    assert running["revision"] == "abc" and running["reason"] == "trigger"
    step = running["steps"][1]
    assert step["outcome"] == "running"
    assert step["progress"] == [f"line {i}" for i in range(3, PROGRESS_LINES + 3)]
    recorder.step_ended(StepResult(1, Outcome.FAILED, "pip failed", error_code="ImageBuildFailure"))
    step = recorder.view()["running"]["steps"][1]
    assert (step["outcome"], step["message"], step["error_code"]) == (
        "failed",
        "pip failed",
        "ImageBuildFailure",
    )


def test_views_are_copies_and_filter_by_endpoint() -> None:
    recorder = PassRecorder()
    plan = _plan()
    recorder.pass_started("interval")
    recorder.planned(plan, None, "abc")
    recorder.view()["running"]["steps"].clear()  # a reader's change stays the reader's
    assert len(recorder.view()["running"]["steps"]) == len(plan.steps)
    mine = recorder.view("ep")["running"]["steps"]
    assert mine and {s["endpoint"] for s in mine} == {"ep"}
    recorder.pass_finished(outcome="ok")
    assert recorder.view()["running"] is None
    [record] = recorder.view("other")["plans"]
    assert {s["endpoint"] for s in record["steps"]} == {"other"}
    assert recorder.view("nobody")["plans"] == []


def test_only_the_last_plans_with_steps_are_kept_and_versions_grow() -> None:
    recorder = PassRecorder(keep=2)
    plan = _plan()
    before = recorder.version
    for revision in ("a", "b", "c"):
        recorder.pass_started("trigger")
        recorder.planned(plan, None, revision)
        recorder.pass_finished(outcome="ok")
    recorder.pass_started("interval")  # a pass with nothing to do is not a plan to keep
    recorder.pass_finished(outcome="ok")
    assert [p["revision"] for p in recorder.view()["plans"]] == ["c", "b"]
    assert recorder.view()["last_pass"]["steps"] == 0
    assert recorder.version > before
    # Before a pass reports a status, the pages fall back to the status branch.
    assert recorder.documents() is None
