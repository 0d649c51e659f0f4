"""presentation: the JSON contract, exit codes, and what people read."""

from __future__ import annotations

import json

from specs_factory import deployment, endpoint

from reconciler.diffing import assume_applied
from reconciler.model.diagnostics import Diagnostic
from reconciler.model.state import DesiredState
from reconciler.planning import invalid_plan, make_plan
from reconciler.presentation import exit_code, plan_json, plan_markdown, plan_text, show_value


def _switch() -> tuple[DesiredState, DesiredState]:
    old = DesiredState((endpoint(traffic={"blue": 100}),), (deployment(), deployment("green")))
    new = DesiredState((endpoint(traffic={"green": 100}),), (deployment(), deployment("green")))
    return old, new


def test_json_has_exactly_the_contract_keys() -> None:
    old, new = _switch()
    data = json.loads(plan_json(make_plan(new, assume_applied(old), prune=False)))
    assert set(data) == {"steps", "errors", "warnings"}
    (step,) = data["steps"]
    assert set(step) == {"action", "endpoint", "deployment", "changes", "reason"}
    assert step["action"] == "set_traffic" and step["deployment"] is None
    assert {"path": "traffic.green", "from": 0, "to": 100} in step["changes"]


def test_errors_are_file_line_field_message_in_json() -> None:
    plan = invalid_plan((Diagnostic("a.yml", 3, "traffic.blue", "must be at most 100"),))
    data = json.loads(plan_json(plan))
    assert data == {
        "steps": [],
        "errors": [
            {"file": "a.yml", "line": 3, "field": "traffic.blue", "message": "must be at most 100"}
        ],
        "warnings": [],
    }
    assert "a.yml:3: traffic.blue: must be at most 100" in plan_text(plan)


def test_exit_codes() -> None:
    old, new = _switch()
    assert exit_code(make_plan(new, assume_applied(old), prune=False)) == 2
    assert exit_code(make_plan(new, assume_applied(new), prune=False)) == 0
    assert exit_code(invalid_plan((Diagnostic("a", 1, "f", "m"),))) == 1


def test_markdown_shows_traffic_before_and_after() -> None:
    old, new = _switch()
    md = plan_markdown(make_plan(new, assume_applied(old), prune=False))
    assert "| **blue** | 100% `██████████` | 0% `░░░░░░░░░░` |" in md
    assert "1. `set_traffic` **ep**" in md


def test_digests_are_shortened_for_people_only() -> None:
    digest = "sha256:" + "a" * 64
    assert show_value(digest) == "sha256:" + "a" * 12
    assert show_value(None) == "-"
