"""The rollout state machine (reconciler.rollouts.machine): when a rollout starts, which step
committed values are at, and each decision with the commit it makes. A whole promotion and a
rollback are walked through an endpoint file's text, as the daemon will."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from specs_factory import deployment, endpoint

from reconciler.model.specs import CodeSpec, DeploymentSpec, ModelSpec, weights
from reconciler.model.state import DesiredState
from reconciler.rollouts.analysis import DeploymentFigures, Outcome, StepFigures, Verdict, judge
from reconciler.rollouts.machine import (
    Action,
    Rollout,
    RolloutMark,
    RolloutNote,
    RolloutStart,
    branch_name,
    decide,
    edited_file,
    read_mark,
    read_marks,
    rollout_starts,
    version_changes,
)
from reconciler.rollouts.policy import (
    PrometheusSource,
    RolloutPolicies,
    RolloutPolicy,
    Step,
    StepKind,
    Thresholds,
)

POLICY = RolloutPolicy(
    steps=(
        Step(StepKind.MIRROR, 20, 600.0),
        Step(StepKind.TRAFFIC, 10, 300.0),
        Step(StepKind.TRAFFIC, 50, 60.0),
        Step(StepKind.TRAFFIC, 100, 60.0),
    ),
    interval_s=60.0,
    thresholds=Thresholds(error_rate=0.01, p99_ms=500, p99_ratio=1.5, min_requests=50),
)
POLICIES = RolloutPolicies(default=POLICY)
ROLLOUT = Rollout("ep", "blue", "green", POLICY)
V2 = ModelSpec("m", "2", "models/m", digest="sha256:m2")
EXAMPLE = Path(__file__).parents[2] / "example-repo" / "endpoints" / "my-endpoint" / "endpoint.yml"


def state(traffic: dict[str, int], *deployments: DeploymentSpec) -> DesiredState:
    return DesiredState((endpoint("ep", traffic),), deployments)


BASE = state({"blue": 100}, deployment("blue"), deployment("green"))


def verdict(outcome: Outcome, *, kind: str = "live") -> Verdict:
    healthy = DeploymentFigures("green", kind, 500, 0, 0.020)
    broken = DeploymentFigures("green", kind, 500, 100, 0.020)
    stable = DeploymentFigures("blue", "live", 2000, 0, 0.020)
    canary = broken if outcome is Outcome.FAIL else healthy
    elapsed = 10.0 if outcome is Outcome.WAIT else 600.0
    found = judge(POLICY.thresholds, StepFigures(canary, stable, None, elapsed), step_for_s=300)
    assert found.outcome is outcome
    return found


# --------------------------------------------------------------------------------------
# Starts


def test_a_changed_model_beside_a_stable_holding_all_traffic_starts_a_rollout() -> None:
    head = state({"blue": 100}, deployment("blue"), deployment("green", model=V2))
    assert rollout_starts(BASE, head, POLICIES) == (
        (RolloutStart("ep", "blue", "green", ("model",)),),
        (),
    )


def test_a_new_deployment_starts_a_rollout_and_says_it_is_new() -> None:
    base = state({"blue": 100}, deployment("blue"))
    head = state({"blue": 100}, deployment("blue"), deployment("green", model=V2))
    ((start,), _) = rollout_starts(base, head, POLICIES)
    assert start.changed == ("new",)


def test_version_is_model_code_and_environment_not_scaling() -> None:
    blue = deployment("blue")
    assert version_changes(blue, deployment("blue", instance_count=5)) == ()
    changed = deployment("blue", model=V2, code=CodeSpec("src", "score.py", digest="sha256:c2"))
    assert version_changes(blue, changed) == ("model", "code")


@pytest.mark.parametrize(
    ("head", "policies"),
    [
        # The daemon's own step commit: traffic moves, no version changes.
        (state({"blue": 90, "green": 10}, deployment("blue"), deployment("green")), POLICIES),
        # A scale-out of the canary is no new version.
        (state({"blue": 100}, deployment("blue"), deployment("green", instance_count=3)), POLICIES),
        # No policy for the endpoint.
        (
            state({"blue": 100}, deployment("blue"), deployment("green", model=V2)),
            RolloutPolicies(),
        ),
    ],
)
def test_what_starts_no_rollout_silently(head: DesiredState, policies: RolloutPolicies) -> None:
    assert rollout_starts(BASE, head, policies) == ((), ())


def test_a_new_endpoint_has_no_stable_deployment_and_starts_nothing() -> None:
    head = state({"blue": 100}, deployment("blue", model=V2))
    assert rollout_starts(DesiredState(), head, POLICIES) == ((), ())


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (
            state({"blue": 100}, deployment("blue", model=V2), deployment("green")),
            "blue holds all live traffic and changes in place (model): no rollout",
        ),
        (
            state(
                {"blue": 100},
                deployment("blue"),
                deployment("green", model=V2),
                deployment("red", model=V2),
            ),
            "green, red change together: no rollout",
        ),
        (
            state({"blue": 50, "green": 50}, deployment("blue"), deployment("green", model=V2)),
            "green changes but no single deployment holds all live traffic (blue 50, green 50)",
        ),
    ],
)
def test_a_change_that_cannot_be_rolled_out_says_why(head: DesiredState, words: str) -> None:
    starts, notes = rollout_starts(BASE, head, POLICIES)
    assert starts == ()
    ((note,),) = (notes,)
    assert note == RolloutNote("ep", note.message) and note.message.startswith(words)


# --------------------------------------------------------------------------------------
# Steps and positions


def test_each_step_has_its_values_and_reads_back_to_its_number() -> None:
    expected = {
        0: ({"blue": 100}, {}),
        1: ({"blue": 100}, {"green": 20}),
        2: ({"blue": 90, "green": 10}, {}),
        3: ({"blue": 50, "green": 50}, {}),
        4: ({"green": 100}, {}),
    }
    for step, (traffic, mirror) in expected.items():
        edit = ROLLOUT.values(step)
        assert (weights(dict(edit.traffic)), weights(dict(edit.mirror_traffic))) == (
            weights(traffic),
            weights(mirror),
        )
        assert ROLLOUT.position(weights(traffic), weights(mirror)) == step


def test_values_that_are_no_step_read_as_none() -> None:
    assert ROLLOUT.position(weights({"blue": 60, "green": 40}), ()) is None
    assert ROLLOUT.position(weights({"blue": 100}), weights({"green": 30})) is None


# --------------------------------------------------------------------------------------
# Decisions


def test_step_zero_commits_the_first_step_at_once_with_the_schedule() -> None:
    start = RolloutStart("ep", "blue", "green", ("model",))
    decision = decide(
        ROLLOUT, traffic=weights({"blue": 100}), mirror_traffic=(), verdict=None, started_by=start
    )
    assert (decision.action, decision.step, decision.next_step) == (Action.ADVANCE, 0, 1)
    assert decision.message == (
        "rollout ep: step 1/4, green gets 20% of mirrored traffic\n"
        "\n"
        "Starts the rollout of green (model) on ep; blue is the stable deployment.\n"
        "Schedule: mirror 20% for 10m, traffic 10% for 5m, traffic 50% for 1m, traffic 100% "
        "for 1m; judged every 1m on at least 50 requests; thresholds: error_rate 0.01, "
        "p99_ms 500, p99_ratio 1.5.\n"
        "\n"
        "Reconcile-Rollout: ep step 1/4\n"
        "Reconcile-Rollout-Stable: blue\n"
        "Reconcile-Rollout-Canary: green\n"
    )


def test_the_schedule_says_when_the_figures_come_from_prometheus() -> None:
    source = PrometheusSource("http://prometheus.monitoring:9090", bearer_token_env="PROM_TOKEN")
    rollout = replace(ROLLOUT, policy=replace(ROLLOUT.policy, metrics=source))
    assert rollout.schedule().endswith(
        "thresholds: error_rate 0.01, p99_ms 500, p99_ratio 1.5; figures from Prometheus at "
        "http://prometheus.monitoring:9090."
    )
    assert "PROM_TOKEN" not in rollout.schedule()


def test_a_passed_step_advances_with_its_figures_in_the_message() -> None:
    decision = decide(
        ROLLOUT,
        traffic=weights({"blue": 90, "green": 10}),
        mirror_traffic=(),
        verdict=verdict(Outcome.PASS),
    )
    assert (decision.action, decision.step, decision.next_step) == (Action.ADVANCE, 2, 3)
    assert decision.edit is not None and dict(decision.edit.traffic) == {"blue": 50, "green": 50}
    assert decision.message is not None
    assert decision.message.splitlines()[:5] == [
        "rollout ep: step 3/4, green gets 50% of live traffic",
        "",
        "Step 2/4 (traffic 10% for 5m) passed: every threshold met.",
        "  green (live): 500 requests, 0 errors (0.00%), p99 20.0 ms",
        "  blue (live): 2000 requests, 0 errors (0.00%), p99 20.0 ms",
    ]
    assert read_mark(decision.message) == RolloutMark("ep", False, 3, 4, "blue", "green")


def test_a_waiting_step_holds_and_commits_nothing() -> None:
    decision = decide(
        ROLLOUT,
        traffic=weights({"blue": 90, "green": 10}),
        mirror_traffic=(),
        verdict=verdict(Outcome.WAIT),
    )
    assert (decision.action, decision.edit, decision.message) == (Action.HOLD, None, None)
    assert decision.reason == "step runs 5m, 4m50s left"


def test_no_verdict_after_step_zero_holds() -> None:
    decision = decide(
        ROLLOUT, traffic=weights({"blue": 100}), mirror_traffic=weights({"green": 20}), verdict=None
    )
    assert (decision.action, decision.step) == (Action.HOLD, 1)


def test_a_failed_step_rolls_back_to_stable_with_the_failing_figures() -> None:
    decision = decide(
        ROLLOUT,
        traffic=weights({"blue": 50, "green": 50}),
        mirror_traffic=(),
        verdict=verdict(Outcome.FAIL),
    )
    assert (decision.action, decision.step) == (Action.ROLLBACK, 3)
    assert decision.edit is not None
    assert (dict(decision.edit.traffic), dict(decision.edit.mirror_traffic)) == (
        {"blue": 100, "green": 0},
        {"green": 0},
    )
    assert decision.message is not None
    lines = decision.message.splitlines()
    assert lines[0] == "rollout ep: roll back green, all traffic to blue"
    assert lines[2] == (
        "Step 3/4 (traffic 50% for 1m) failed: error_rate 20.00% > 1.00% "
        "(100 errors of 500 requests)"
    )
    assert lines[-3:] == [
        "Reconcile-Rollout: ep rollback at step 3/4",
        "Reconcile-Rollout-Stable: blue",
        "Reconcile-Rollout-Canary: green",
    ]
    assert read_mark(decision.message) == RolloutMark("ep", True, 3, 4, "blue", "green")


def test_the_last_step_passed_completes_without_a_commit() -> None:
    decision = decide(
        ROLLOUT,
        traffic=weights({"green": 100}),
        mirror_traffic=(),
        verdict=verdict(Outcome.PASS),
    )
    assert (decision.action, decision.step, decision.edit) == (Action.COMPLETE, 4, None)


def test_a_person_committing_other_values_stops_the_rollout_and_wins() -> None:
    decision = decide(
        ROLLOUT,
        traffic=weights({"blue": 70, "green": 30}),
        mirror_traffic=(),
        verdict=verdict(Outcome.PASS),
    )
    assert (decision.action, decision.edit) == (Action.STOP, None)
    assert decision.reason == (
        "ep was set to traffic {blue: 70, green: 30} by a commit, which is no step of the "
        "rollout of green: that commit wins and the rollout stops"
    )


def test_a_person_committing_a_step_of_the_rollout_re_plans_from_that_step() -> None:
    # A person jumped from step 2 to step 3's values: the rollout goes on from step 3.
    decision = decide(
        ROLLOUT, traffic=weights({"blue": 50, "green": 50}), mirror_traffic=(), verdict=None
    )
    assert (decision.action, decision.step) == (Action.HOLD, 3)


def test_marks_are_read_back_from_commit_messages() -> None:
    assert read_mark("fix typo\n\nSigned-off-by: someone\n") is None
    message = "x\n\nreconcile-rollout: my-endpoint step 2/5\nReconcile-Rollout-Canary: green\n"
    assert read_mark(message) == RolloutMark("my-endpoint", False, 2, 5, None, "green")


def test_branch_names_for_pull_request_mode() -> None:
    assert branch_name(ROLLOUT, 2) == "reconcile/rollout/ep/step-2"
    assert branch_name(ROLLOUT, 3, rollback=True) == "reconcile/rollout/ep/rollback"


def test_a_promotion_and_a_rollback_walked_through_the_example_endpoint_file() -> None:
    """Each decision's edit applied to the file's text reads back as the next step."""
    rollout = Rollout("my-endpoint", "blue", "green", POLICY)
    text = EXAMPLE.read_text().replace("  blue: 90\n  green: 10\n", "  blue: 100\n  green: 0\n")
    seen: list[int] = []
    for _ in range(10):
        document = yaml.safe_load(text)
        traffic = weights(document.get("traffic"))
        mirror = weights(document.get("mirror_traffic"))
        step = rollout.position(traffic, mirror)
        passed = None if step == 0 else verdict(Outcome.PASS)
        decision = decide(rollout, traffic=traffic, mirror_traffic=mirror, verdict=passed)
        seen.append(decision.step)
        if decision.action is Action.COMPLETE:
            break
        assert decision.action is Action.ADVANCE and decision.edit is not None
        text = edited_file(text, decision.edit)
    assert seen == [0, 1, 2, 3, 4]
    assert yaml.safe_load(text)["traffic"] == {"blue": 0, "green": 100}
    assert "# Share of live requests per deployment" in text
    # A failure at 100% rolls everything back to blue, mirror off.
    failed = decide(
        rollout, traffic=weights({"green": 100}), mirror_traffic=(), verdict=verdict(Outcome.FAIL)
    )
    assert failed.edit is not None
    text = edited_file(text, failed.edit)
    document = yaml.safe_load(text)
    assert (document["traffic"], document["mirror_traffic"]) == (
        {"blue": 100, "green": 0},
        {"green": 0},
    )


def test_values_back_at_step_zero_after_a_step_was_committed_stop_the_rollout() -> None:
    # A person reverted the daemon's step-1 commit: committing step 1 again would fight them.
    decision = decide(
        ROLLOUT,
        traffic=weights({"blue": 100, "green": 0}),
        mirror_traffic=weights({"green": 0}),
        verdict=None,
        stepped=True,
    )
    assert (decision.action, decision.step, decision.edit) == (Action.STOP, 0, None)
    assert "set back to all traffic on blue by a commit" in decision.reason
    assert "that commit wins" in decision.reason
    # Before any step was committed, step 0 is the start: step 1 is committed at once.
    first = decide(ROLLOUT, traffic=weights({"blue": 100}), mirror_traffic=(), verdict=None)
    assert (first.action, first.next_step) == (Action.ADVANCE, 1)


def test_a_step_trailer_in_a_message_never_moves_the_step_the_values_are_at() -> None:
    # A forged `step 3/4` trailer is not read by decide: the values (step 2) are the state.
    decision = decide(
        ROLLOUT,
        traffic=weights({"blue": 90, "green": 10}),
        mirror_traffic=(),
        verdict=verdict(Outcome.WAIT),
        stepped=True,
    )
    assert (decision.action, decision.step) == (Action.HOLD, 2)


SQUASHED = """\
squash: abort two rollouts

rollout other: abort, all traffic back to red

Reconcile-Rollout: other rollback at step 2/3
Reconcile-Rollout-Stable: red
Reconcile-Rollout-Canary: yellow
Reconcile-Rollout-Control: other abort

rollout ep: abort, all traffic back to blue

Reconcile-Rollout: ep rollback at step 1/4
Reconcile-Rollout-Stable: blue
Reconcile-Rollout-Canary: green
Reconcile-Rollout-Control: ep abort
"""


def test_a_message_with_marks_of_several_endpoints_gives_each_its_own() -> None:
    # A squash of two aborts (or of pull-request branches): the second endpoint's rollback
    # was unseen (only the first mark was read), so its rollout would start again.
    assert read_marks(SQUASHED) == (
        RolloutMark("other", True, 2, 3, "red", "yellow"),
        RolloutMark("ep", True, 1, 4, "blue", "green"),
    )
    assert read_mark(SQUASHED, endpoint="ep") == RolloutMark("ep", True, 1, 4, "blue", "green")
    assert read_mark(SQUASHED, endpoint="nobody") is None
    assert read_mark(SQUASHED) == RolloutMark("other", True, 2, 3, "red", "yellow")


def test_a_single_mark_takes_its_names_from_anywhere_in_the_message() -> None:
    message = "x\n\nReconcile-Rollout-Stable: blue\nReconcile-Rollout: ep step 1/2\n"
    assert read_mark(message) == RolloutMark("ep", False, 1, 2, "blue", None)
