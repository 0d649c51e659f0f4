"""deploy/monitoring: the Grafana dashboard and the Prometheus alerting rules load, and
every metric (and label) their queries name is one the product exports, read from the
real metric registries of the router and the daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from reconciler.daemon import DaemonState, Metrics
from reconciler.router.metrics import RouterMetrics

MONITORING = Path(__file__).parents[2] / "deploy" / "monitoring"
_METRIC = re.compile(r"\b((?:router|reconciler)_[a-z0-9_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Sample names the product exports, with their labels."""
    router_registry = CollectorRegistry()
    RouterMetrics("e", router_registry)
    names: dict[str, set[str]] = {}
    for registry in (router_registry, Metrics(DaemonState()).registry):
        for family in registry.collect():
            labels = set(_labels_of(registry, family.name))
            if family.type == "counter":
                names[f"{family.name}_total"] = labels
            elif family.type == "histogram":
                for suffix in ("_bucket", "_sum", "_count"):
                    names[family.name + suffix] = labels | (
                        {"le"} if suffix == "_bucket" else set()
                    )
            else:
                names[family.name] = labels
    return names


def _labels_of(registry: CollectorRegistry, name: str) -> tuple[str, ...]:
    # A labelled family has no sample until a child is used: its label names are read from
    # the collector itself (prometheus_client keeps them there).
    table = registry._names_to_collectors
    collector = table.get(name) or table.get(f"{name}_total")
    return tuple(getattr(collector, "_labelnames", ()))


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboard and the rules."""
    found: list[tuple[str, str]] = []
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            found.append((f"panel {panel['title']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']}", variable["definition"]))
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            found.append((f"alert {rule['alert']}", rule["expr"]))
    return found


def test_the_exported_names_are_read_from_the_real_registries() -> None:
    names = exported()
    assert "router_requests_total" in names
    assert names["router_request_duration_seconds_bucket"] >= {"endpoint", "deployment", "le"}
    assert "reconciler_drift_corrections_total" in names
    assert "reconciler_target_reachable" in names


def test_every_query_names_only_metrics_and_labels_the_product_exports() -> None:
    names = exported()
    assert len(queries()) > 15
    for where, expr in queries():
        used = _METRIC.findall(expr)
        assert used, f"{where}: names no metric of the product"
        labels_here: set[str] = set()
        for metric, matchers in used:
            assert metric in names, f"{where}: {metric} is not exported"
            labels_here |= names[metric]
            for label in _MATCHER.findall(matchers or ""):
                assert label in names[metric], f"{where}: {metric} has no label {label}"
        for group in _BY.findall(expr):
            for label in (x.strip() for x in group.split(",") if x.strip()):
                assert label in labels_here, f"{where}: no metric here has label {label}"


def test_the_alerting_rules_cover_the_issue_and_are_well_formed() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {
        "EndpointErrorRateHigh",
        "EndpointLatencyHigh",
        "ReconcilerRolloutFailed",
        "ReconcilerPassFailing",
        "ReconcilerDriftHealedRepeatedly",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_the_dashboard_is_grafana_json_with_unique_panel_ids() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "reconciler-endpoints"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (prometheus)")
def test_prometheus_parses_every_rule_and_every_dashboard_query(tmp_path: Path) -> None:
    """The regular expressions above see names, not syntax: Prometheus's own promtool
    checks the alerting rules as they ship, and each dashboard query (Grafana's
    variables given values) as a recording rule."""
    shipped = subprocess.run(
        ["promtool", "check", "rules", str(MONITORING / "alerts.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    grafana = {"$__rate_interval": "5m", "$__interval": "1m", "${endpoint}": ".*"}
    records = []
    for number, (where, expr) in enumerate(queries()):
        if where.startswith("variable "):
            continue  # label_values(...) is Grafana's, not PromQL
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        records.append(
            {"record": f"dashboard:query_{number}", "expr": expr.replace("$endpoint", ".*")}
        )
    rules = tmp_path / "dashboard-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(records)} rules found" in checked.stdout
