"""The dashboard's data and HTML from plain status documents: states, outcomes, history
changes, and escaping by default."""

from __future__ import annotations

from typing import Any

from reconciler.gitsource import CommitInfo
from reconciler.ui import data, render
from reconciler.ui.source import StatusRevision, StatusSnapshot


def _doc(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "endpoint": "shop",
        "commit": "a" * 40,
        "target": "docker",
        "provisioning_state": "Succeeded",
        "health": "Healthy",
        "scoring_uri": "http://127.0.0.1:8001/score",
        "openapi_uri": None,
        "auth_mode": "key",
        "traffic": {"blue": 70, "green": 30},
        "mirror_traffic": {},
        "deployments": {
            "blue": {
                "provisioning_state": "Succeeded",
                "health": "Healthy",
                "instance_type": "Standard_DS3_v2",
                "instance_count": 2,
                "ready_instances": 2,
                "scale_settings": {"type": "default"},
                "spec_digest": "sha256:1",
                "last_error": None,
            },
            "green": {
                "provisioning_state": "Succeeded",
                "health": "Healthy",
                "instance_type": "Standard_DS3_v2",
                "instance_count": 1,
                "ready_instances": 1,
                "scale_settings": {"type": "default"},
                "spec_digest": "sha256:2",
                "last_error": None,
            },
        },
        "last_error": None,
        "errors": [],
        "pending_steps": [],
    }
    doc.update(extra)
    return doc


def test_a_converged_endpoint_is_succeeded() -> None:
    assert data.endpoint_state(_doc()) == "Succeeded"
    assert data.pass_outcome(_doc()) == "converged"


def test_a_failed_deployment_makes_the_endpoint_failed() -> None:
    doc = _doc()
    doc["deployments"]["green"]["provisioning_state"] = "Failed"
    assert data.endpoint_state(doc) == "Failed"
    assert data.pass_outcome(doc) == "failed"


def test_steps_in_progress_make_the_endpoint_updating() -> None:
    doc = _doc(in_progress_steps=[{"action": "set_traffic", "deployment": None, "progress": "x"}])
    assert data.endpoint_state(doc) == "Updating"
    assert data.pass_outcome(doc) == "in progress"


def test_errors_of_the_desired_state_make_the_endpoint_degraded() -> None:
    doc = _doc(errors=[{"file": "e.yml", "line": 3, "field": "traffic", "message": "bad"}])
    assert data.endpoint_state(doc) == "Degraded"
    assert data.pass_outcome(doc) == "invalid desired state"
    summary = data.summary(doc, changed_at=None, branch_head=None)
    assert summary["errors"] == [{"file": "e.yml", "line": 3, "field": "traffic", "message": "bad"}]
    # The overview names the file and line of each error (issue 14's overview).
    snap = StatusSnapshot("reconcile-status", "c" * 40, 1, "a" * 40, {"shop": doc})
    page = render.overview_page(data.overview(snap), fingerprint="f")
    assert "<li><code>e.yml:3</code> traffic bad</li>" in page
    assert "invalid desired state" in page


def test_summary_compares_the_applied_commit_with_the_branch_head() -> None:
    behind = data.summary(_doc(), changed_at=5, branch_head="b" * 40)
    assert behind["up_to_date"] is False
    assert data.summary(_doc(), changed_at=5, branch_head="a" * 40)["up_to_date"] is True
    assert data.summary(_doc(), changed_at=5, branch_head=None)["up_to_date"] is None
    assert behind["instances"] == {"ready": 3, "desired": 3}


def test_traffic_percentages_are_clamped_for_the_bars() -> None:
    summary = data.summary(
        _doc(traffic={"a": 150, "b": -3, "c": "x"}), changed_at=None, branch_head=None
    )
    assert [s["percent"] for s in summary["traffic"]] == [100, 0, 0]


def test_history_entries_say_what_changed_since_the_one_before() -> None:
    older = _doc()
    newer = _doc(traffic={"blue": 40, "green": 60})
    newer["deployments"]["green"] = dict(newer["deployments"]["green"], instance_count=3)
    revisions = [
        StatusRevision(
            CommitInfo("s2", "reconciler", 20, "status"),
            newer,
            CommitInfo("c2", "Ann", 19, "shift"),
        ),
        StatusRevision(CommitInfo("s1", "reconciler", 10, "status"), older, None),
    ]
    timeline = data.history("shop", revisions)
    first, second = timeline["entries"]
    assert first["author"] == "Ann"
    assert first["subject"] == "shift"
    assert {"field": "traffic.blue", "from": 70, "to": 40} in first["changes"]
    assert {"field": "traffic.green", "from": 30, "to": 60} in first["changes"]
    assert {"field": "deployments.green.instance_count", "from": 1, "to": 3} in first["changes"]
    assert second["changes"] == []  # nothing before it in the window
    assert second["author"] is None


def test_fill_escapes_every_value_but_markup_made_here() -> None:
    out = render.fill("<p>$a $b</p>", a="<b>&\"'", b=render.Safe("<i>ok</i>"))
    assert out == "<p>&lt;b&gt;&amp;&quot;&#x27; <i>ok</i></p>"


def test_the_overview_escapes_names_errors_and_uris() -> None:
    hostile = "<script>alert(1)</script>"
    doc = _doc(
        endpoint=hostile,
        scoring_uri=f"http://x/{hostile}",
        last_error=hostile,
        errors=[{"file": hostile, "line": 1, "field": hostile, "message": hostile}],
        traffic={hostile: 100},
    )
    snap = StatusSnapshot("reconcile-status", "c" * 40, 1, "a" * 40, {hostile: doc})
    page = render.overview_page(data.overview(snap), fingerprint=hostile)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="/endpoints/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in page


def test_bars_are_width_classes_with_the_numbers_in_text() -> None:
    bars = render.traffic_bars(
        [{"deployment": "blue", "percent": 70}, {"deployment": "green", "percent": 0}],
        [{"deployment": "green", "percent": 20}],
    )
    assert '<span class="seg w70 c0" title="blue 70%"></span>' in bars
    assert "w0 " not in bars  # a 0% share draws no segment, but is in the legend
    assert "green <b>0%</b>" in bars
    assert '<span class="seg mirror w20 c1" title="mirror green 20%"></span>' in bars
    assert "green <b>20%</b> mirrored" in bars


def test_a_hand_edited_rollout_block_is_coerced_not_fatal() -> None:
    doc = _doc(rollout={"state": "Paused", "step": "two", "analysis": {"checks": ["x"]}})
    snap = StatusSnapshot("reconcile-status", "c" * 40, 1, "a" * 40, {"shop": doc})
    detail = data.endpoint_detail(snap, "shop", None)
    assert detail is not None
    rollout = detail["rollout"]
    assert (rollout["state"], rollout["step"], rollout["canary"]) == ("Paused", None, None)
    assert rollout["analysis"]["checks"] == [{"threshold": None, "state": None, "text": None}]
    page = render.endpoint_page(detail, {"entries": []}, fingerprint="f", where="w")
    assert '<section class="rollout" data-state="Paused">' in page
    assert "no step" in page
    assert data.rollout("not a mapping") is None


def test_a_rollout_judged_from_prometheus_says_where_its_figures_come_from() -> None:
    block = {"state": "Progressing", "step": 1, "steps": 2, "metrics": "prometheus http://p:9090"}
    doc = _doc(rollout=block)
    snap = StatusSnapshot("reconcile-status", "c" * 40, 1, "a" * 40, {"shop": doc})
    detail = data.endpoint_detail(snap, "shop", None)
    assert detail is not None and detail["rollout"]["metrics"] == "prometheus http://p:9090"
    page = render.endpoint_page(detail, {"entries": []}, fingerprint="f", where="w")
    assert "<th>Figures from</th><td>prometheus http://p:9090</td>" in page
    assert data.rollout({"state": "Progressing"})["metrics"] is None  # type: ignore[index]


def test_an_autoscaled_deployment_shows_its_range_last_decision_and_model_digest() -> None:
    """The endpoint page of issue 14: autoscale range with the autoscaler's last decision
    (status carries it as the text the Docker target writes), model name:version and its
    digest, request settings, probes and the spec digest."""
    from dataclasses import replace

    from specs_factory import deployment

    from reconciler.model.specs import ProbeSettings, RequestSettings, ScaleSettings
    from reconciler.model.state import DesiredState

    decision = "utilisation 12% below target 70%: 3 -> 2 instances"
    doc = _doc()
    doc["deployments"]["blue"].update(
        scale_settings={"type": "target_utilization", "min_instances": 1, "max_instances": 3},
        autoscale=decision,
    )
    blue = deployment(
        "blue",
        "shop",
        scale_settings=ScaleSettings("target_utilization", 1, 3, 70, 1),
        request_settings=RequestSettings(request_timeout_ms=4000),
        readiness_probe=ProbeSettings(failure_threshold=7),
    )
    snap = StatusSnapshot("reconcile-status", "c" * 40, 1, "a" * 40, {"shop": doc})
    detail = data.endpoint_detail(snap, "shop", DesiredState((), (blue,)))
    assert detail is not None
    [shown] = [d for d in detail["deployments"] if d["name"] == "blue"]
    assert shown["autoscale"] == decision
    page = render.endpoint_page(detail, {"entries": []}, fingerprint="f", where="w")
    assert "<th>Scale</th><td>autoscale 1 to 3 instances at 70% utilisation</td>" in page
    assert "<th>Last autoscale decision</th><td>utilisation 12% below target 70%: 3 -&gt; 2" in page
    assert "<th>Model</th><td>m:1 (sha256:m1)</td>" in page
    long = replace(blue, model=replace(blue.model, digest="sha256:" + "ab" * 32))
    detail = data.endpoint_detail(snap, "shop", DesiredState((), (long,)))
    assert detail is not None
    page = render.endpoint_page(detail, {"entries": []}, fingerprint="f", where="w")
    assert "<th>Model</th><td>m:1 (sha256:abababababab…)</td>" in page
    assert "request_timeout_ms 4000" in page
    assert "failure_threshold 7" in page
    assert "<th>Spec digest</th><td>sha256:1</td>" in page
