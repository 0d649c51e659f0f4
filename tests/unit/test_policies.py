"""policies: parsing the `policies:` mapping of reconciler.yaml, and each rule's verdict."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
from specs_factory import deployment, endpoint

from reconciler.filetree import MemoryTree
from reconciler.model.diagnostics import DesiredStateInvalid, Diagnostic
from reconciler.model.specs import ScaleSettings
from reconciler.model.state import DesiredState
from reconciler.policies import (
    ApprovalRule,
    Limit,
    MirrorHistory,
    MirrorRule,
    MirrorSince,
    Policies,
    approvals_from_messages,
    check_policies,
    is_violation,
    mirror_history_needed,
    parse_policies,
    traffic_newcomers,
)
from reconciler.repoconfig import load_repo_config

HOUR = 3600.0


def config(text: str) -> Policies:
    return load_repo_config(MemoryTree({"reconciler.yaml": text.encode()})).policies


def config_errors(text: str) -> tuple[Diagnostic, ...]:
    with pytest.raises(DesiredStateInvalid) as raised:
        load_repo_config(MemoryTree({"reconciler.yaml": text.encode()}))
    return raised.value.errors


def state(
    traffic: dict[str, int] | None = None,
    *,
    mirror: dict[str, int] | None = None,
    counts: dict[str, int] | None = None,
    names: tuple[str, ...] = ("blue", "green"),
) -> DesiredState:
    counts = counts or {}
    return DesiredState(
        (endpoint(traffic=traffic, mirror=mirror),),
        tuple(deployment(n, instance_count=counts.get(n, 3)) for n in names),
    )


# --- parsing ------------------------------------------------------------------------------


def test_every_rule_in_its_short_form() -> None:
    policies = config(
        "policies:\n"
        "  max_traffic_shift: 20\n"
        "  mirror_before_traffic: true\n"
        "  min_instances_with_traffic: 2\n"
        "  require_approval: [my-endpoint]\n"
    )
    assert policies.max_traffic_shift == Limit(20, line=2)
    assert policies.mirror_before_traffic == MirrorRule(0.0, line=3)
    assert policies.min_instances_with_traffic == Limit(2, line=4)
    assert policies.require_approval is not None
    assert policies.require_approval.endpoints == ("my-endpoint",)
    assert not policies.empty


def test_long_forms_with_per_endpoint_overrides() -> None:
    policies = config(
        "policies:\n"
        "  max_traffic_shift: {default: 20, endpoints: {canary-lab: 100}}\n"
        "  mirror_before_traffic: {min_hours: 24}\n"
        "  min_instances_with_traffic: {endpoints: {payments: 3}}\n"
        "  require_approval: '*'\n"
    )
    shift = policies.max_traffic_shift
    assert shift is not None
    assert (shift.for_endpoint("canary-lab"), shift.for_endpoint("other")) == (100, 20)
    assert policies.mirror_before_traffic == MirrorRule(24.0, line=3)
    minimum = policies.min_instances_with_traffic
    assert minimum is not None
    assert (minimum.for_endpoint("payments"), minimum.for_endpoint("other")) == (3, None)
    assert policies.require_approval is not None
    assert policies.require_approval.covers("anything")


def test_no_policies_and_rules_switched_off() -> None:
    assert config("prune: false\n").empty
    assert config("policies:\n  mirror_before_traffic: false\n").empty


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("policies:\n  max_trafic_shift: 20\n", 2, "policies.max_trafic_shift", "unknown policy"),
        ("policies:\n  max_traffic_shift: 0\n", 2, "policies.max_traffic_shift", "from 1 to 100"),
        ("policies:\n  max_traffic_shift: true\n", 2, "policies.max_traffic_shift", "a number"),
        (
            "policies:\n  max_traffic_shift:\n    default: 20\n    endpoints: {a: 120}\n",
            4,
            "policies.max_traffic_shift.endpoints.a",
            "from 1 to 100",
        ),
        (
            "policies:\n  mirror_before_traffic: {min_hour: 3}\n",
            2,
            "policies.mirror_before_traffic.min_hour",
            "unknown key",
        ),
        (
            "policies:\n  mirror_before_traffic:\n    min_hours: -1\n",
            3,
            "policies.mirror_before_traffic.min_hours",
            ">= 0",
        ),
        (
            "policies:\n  min_instances_with_traffic: 0\n",
            2,
            "policies.min_instances_with_traffic",
            "at least 1",
        ),
        ("policies:\n  require_approval: [1]\n", 2, "policies.require_approval", "names"),
        ("policies: [max_traffic_shift]\n", 1, "policies", "mapping"),
    ],
)
def test_syntax_errors_name_file_line_and_field(
    text: str, line: int, field: str, words: str
) -> None:
    (error,) = config_errors(text)
    assert (error.file, error.line, error.field) == ("reconciler.yaml", line, field)
    assert words in error.message
    assert not is_violation(error)


def test_parse_reports_every_error_at_once() -> None:
    raw = yaml.safe_load("max_traffic_shift: 500\nrequire_approval: 3\nwhat: 1\n")
    _, errors = parse_policies(raw, line_at=lambda path: None)
    assert sorted(e.field for e in errors) == [
        "policies.max_traffic_shift",
        "policies.require_approval",
        "policies.what",
    ]


def test_capacity_cores_is_taken_out_of_the_target_options() -> None:
    loaded = load_repo_config(
        MemoryTree({"reconciler.yaml": b"targets:\n  local: {type: docker, capacity_cores: 32}\n"})
    )
    (target,) = loaded.targets
    assert target.capacity_cores == 32
    assert "capacity_cores" not in target.options
    (error,) = config_errors("targets:\n  local:\n    type: docker\n    capacity_cores: -4\n")
    assert (error.line, error.field) == (4, "targets.local.capacity_cores")


# --- max_traffic_shift --------------------------------------------------------------------

SHIFT = Policies(max_traffic_shift=Limit(20, line=2))


def test_a_shift_within_the_limit_passes() -> None:
    base, head = state({"blue": 90, "green": 10}), state({"blue": 70, "green": 30})
    assert check_policies(base, head, policies=SHIFT) == ()


def test_a_larger_shift_names_the_rule_endpoint_and_numbers() -> None:
    (violation,) = check_policies(
        state({"blue": 90, "green": 10}), state({"blue": 50, "green": 50}), policies=SHIFT
    )
    assert is_violation(violation)
    assert (violation.file, violation.line, violation.field) == (
        "reconciler.yaml",
        2,
        "policies.max_traffic_shift",
    )
    assert violation.message.startswith(
        "policy max_traffic_shift: ep moves 40 points of traffic (blue 90 -> 50, green 10 -> 50)"
        " where 20 are allowed"
    )


def test_per_endpoint_overrides_and_new_endpoints_are_exempt() -> None:
    lab = Policies(max_traffic_shift=Limit(20, (("ep", 100),)))
    assert check_policies(state({"blue": 100}), state({"green": 100}), policies=lab) == ()
    # A new endpoint (or one that served nobody) gets its first split freely.
    assert check_policies(DesiredState(), state({"blue": 100}), policies=SHIFT) == ()
    assert check_policies(state(None), state({"blue": 100}), policies=SHIFT) == ()


# --- mirror_before_traffic ----------------------------------------------------------------

MIRROR = Policies(mirror_before_traffic=MirrorRule(line=3))
MIRROR_24H = Policies(mirror_before_traffic=MirrorRule(24.0, line=3))


def test_traffic_to_a_deployment_mirrored_at_the_base_passes() -> None:
    base = state({"blue": 100}, mirror={"green": 10})
    head = state({"blue": 90, "green": 10})
    assert traffic_newcomers(base, head) == (("ep", "green"),)
    assert check_policies(base, head, policies=MIRROR) == ()


def test_a_changed_version_whose_share_rises_is_judged_as_a_newcomer() -> None:
    """green's model changes in the same change that raises its share: what was mirrored
    (or served) before was the old version, so the new one gets traffic unmirrored."""
    base = state({"blue": 90, "green": 10}, mirror=None)
    green = deployment("green", instance_count=3)
    changed = deployment(
        "green", instance_count=3, model=replace(green.model, version="2", digest="sha256:m2")
    )
    head = DesiredState(
        (endpoint(traffic={"blue": 50, "green": 50}),),
        (deployment("blue", instance_count=3), changed),
    )
    assert traffic_newcomers(base, head) == (("ep", "green"),)
    (violation,) = check_policies(base, head, policies=MIRROR_24H)
    assert (
        "ep/green goes from 10% to 50% of live traffic with a new model that was never "
        "mirrored" in violation.message
    )
    # No history of the base branch is read for it: no mirroring makes up for it.
    assert mirror_history_needed(base, head, policies=MIRROR_24H) == ()
    # The same share with the new model, or a rise with the same version: no newcomer.
    same_share = replace(head, endpoints=(endpoint(traffic={"blue": 90, "green": 10}),))
    assert traffic_newcomers(base, same_share) == ()
    rise_only = state({"blue": 50, "green": 50})
    assert traffic_newcomers(base, rise_only) == ()


def test_traffic_to_an_unmirrored_deployment_is_a_violation() -> None:
    (violation,) = check_policies(
        state({"blue": 100}), state({"blue": 90, "green": 10}), policies=MIRROR
    )
    assert violation.field == "policies.mirror_before_traffic"
    assert "ep/green gets 10% of live traffic but had none and was not mirrored" in (
        violation.message
    )
    # A deployment new in the same change cannot have been mirrored either.
    (new,) = check_policies(
        state({"blue": 100}, names=("blue",)), state({"blue": 90, "green": 10}), policies=MIRROR
    )
    assert "is new" in new.message


def test_min_hours_compares_the_mirroring_start_with_now() -> None:
    base = state({"blue": 100}, mirror={"green": 10})
    head = state({"blue": 90, "green": 10})
    assert mirror_history_needed(base, head, policies=MIRROR_24H) == (("ep", "green"),)
    assert mirror_history_needed(base, head, policies=MIRROR) == ()
    long_ago = MirrorHistory(now=100 * HOUR, entries=(MirrorSince("ep", "green", 70 * HOUR),))
    assert check_policies(base, head, policies=MIRROR_24H, history=long_ago) == ()
    recent = MirrorHistory(now=100 * HOUR, entries=(MirrorSince("ep", "green", 96.5 * HOUR),))
    (violation,) = check_policies(base, head, policies=MIRROR_24H, history=recent)
    assert "ep/green gets 10% of live traffic after 3.5 hours of mirroring" in violation.message
    assert "where 24 are required" in violation.message
    cut = MirrorHistory(
        now=100 * HOUR, entries=(MirrorSince("ep", "green", 96.5 * HOUR, complete=False),)
    )
    (partial,) = check_policies(base, head, policies=MIRROR_24H, history=cut)
    assert "fetch more of the base branch" in partial.message


def test_an_endpoint_without_live_traffic_needs_no_mirror() -> None:
    assert check_policies(state(None), state({"blue": 100}), policies=MIRROR) == ()
    assert check_policies(DesiredState(), state({"blue": 100}), policies=MIRROR) == ()


# --- min_instances_with_traffic -----------------------------------------------------------

MINIMUM = Policies(min_instances_with_traffic=Limit(2, line=4))


def test_deployments_with_traffic_keep_the_minimum() -> None:
    head = state({"blue": 90, "green": 10}, counts={"blue": 3, "green": 1})
    (violation,) = check_policies(None, head, policies=MINIMUM)
    assert violation.message == (
        "policy min_instances_with_traffic: ep/green gets 10% of live traffic with "
        "instance_count 1 where at least 2 are required"
    )
    # Without traffic a single instance is fine; with enough instances, too.
    assert check_policies(None, state({"blue": 100}, counts={"green": 1}), policies=MINIMUM) == ()


def test_autoscaled_deployments_are_judged_by_min_instances() -> None:
    scaled = DesiredState(
        (endpoint(traffic={"blue": 100}),),
        (
            deployment(
                "blue",
                scale_settings=ScaleSettings(
                    "target_utilization", min_instances=1, max_instances=5
                ),
            ),
        ),
    )
    (violation,) = check_policies(None, scaled, policies=MINIMUM)
    assert "min_instances 1 where at least 2" in violation.message


def test_validate_checks_only_the_rules_that_need_no_base() -> None:
    everything = Policies(
        max_traffic_shift=Limit(1),
        mirror_before_traffic=MirrorRule(),
        min_instances_with_traffic=None,
    )
    assert check_policies(None, state({"blue": 50, "green": 50}), policies=everything) == ()


# --- require_approval ---------------------------------------------------------------------


def test_approval_markers_in_commit_messages() -> None:
    messages = [
        "Move traffic\n\nReconcile-Approved: my-endpoint\n",
        "squashed\n\n* fix\n  reconcile-approved: a, b\n",
        "no marker",
    ]
    assert approvals_from_messages(messages) == {"my-endpoint", "a", "b"}


def test_a_change_of_an_endpoint_that_needs_approval() -> None:
    rule = Policies(require_approval=ApprovalRule(("ep",), line=5))
    base, head = state({"blue": 100}), state({"blue": 50, "green": 50})
    (violation,) = check_policies(base, head, policies=rule)
    assert violation.message == (
        "policy require_approval: ep changes (traffic) and needs an explicit approval: a commit "
        "trailer 'Reconcile-Approved: ep' in this change, or --approve ep"
    )
    assert check_policies(base, head, policies=rule, approvals=frozenset({"ep"})) == ()
    assert check_policies(base, base, policies=rule) == ()  # nothing changes
    scaled = state({"blue": 100}, counts={"green": 5})
    (scaling,) = check_policies(base, scaled, policies=rule)
    assert "(green changed)" in scaling.message
