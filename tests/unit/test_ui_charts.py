"""The live charts' figures (reconciler.ui.charts) from real exposition text of the
router's metric classes, and their SVG (reconciler.ui.livepages)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from reconciler.router.metrics import RouterMetrics
from reconciler.ui import charts
from reconciler.ui.livepages import chart, charts_block


def _router() -> tuple[RouterMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return RouterMetrics("ep", registry), registry


def _scrape(registry: CollectorRegistry, at: float) -> charts.Scrape:
    return charts.parse(generate_latest(registry).decode(), at=at)


def test_a_point_is_the_rate_latency_quantiles_errors_and_mirror_share_between_two_scrapes() -> (
    None
):
    metrics, registry = _router()
    metrics.observe("blue", "live", 200, 0.02)
    before = _scrape(registry, 100.0)
    for _ in range(18):
        metrics.observe("blue", "live", 200, 0.2)
    for _ in range(2):
        metrics.observe("blue", "live", 503, 0.2)
    for _ in range(5):
        metrics.observe("green", "mirror", 200, 0.3)
    metrics.observe("", "live", 401, 0.001)  # refused before a deployment was chosen
    after = _scrape(registry, 110.0)
    blue = charts.point(before, after, "blue")
    assert blue["rps"] == pytest.approx(2.0)
    assert blue["errors"] == {"503": pytest.approx(0.2)}
    assert blue["error_ratio"] == pytest.approx(0.1)
    # 20 requests in (0.1, 0.25]: rank 10 of 20 -> halfway; rank 19.8 -> 99% of the way.
    assert blue["p50_ms"] == pytest.approx(175.0)
    assert blue["p99_ms"] == pytest.approx(248.5)
    green = charts.point(before, after, "green")
    assert green["rps"] == 0 and green["p50_ms"] is None and green["error_ratio"] is None
    assert green["mirror_share"] == pytest.approx(5 / 20)
    assert charts.deployments(after) == ["blue", "green"]


def test_a_shadow_deployment_shows_the_share_of_its_compared_answers_that_agreed() -> None:
    metrics, registry = _router()
    metrics.shadow_compared("blue", "green", "agree", 0.001)
    before = _scrape(registry, 0.0)
    for _ in range(6):
        metrics.shadow_compared("blue", "green", "agree", 0.001)
    metrics.shadow_compared("blue", "green", "disagree_body", 0.001)
    metrics.shadow_compared("blue", "green", "shadow_timeout", None)  # counts against
    metrics.shadow_compared("blue", "green", "not_compared", None)  # counts for neither
    after = _scrape(registry, 5.0)
    green = charts.point(before, after, "green")
    assert green["shadow_compared"] == 8
    assert green["shadow_agreement"] == pytest.approx(6 / 8)
    # The live side compared nothing of its own.
    blue = charts.point(before, after, "blue")
    assert blue["shadow_compared"] == 0 and blue["shadow_agreement"] is None
    block = str(charts_block({"problem": None, "deployments": charts.series([before, after])}))
    sections = {part.split('"', 1)[0]: part for part in block.split('data-deployment="')[1:]}
    assert "Shadow agreement (%)" in sections["green"]
    assert "Shadow agreement (%)" not in sections.get("blue", "")


def test_a_router_restart_counts_from_zero_instead_of_a_negative_rate() -> None:
    metrics, registry = _router()
    for _ in range(50):
        metrics.observe("blue", "live", 200, 0.02)
    before = _scrape(registry, 0.0)
    metrics, registry = _router()  # a new process: counters start again
    for _ in range(4):
        metrics.observe("blue", "live", 200, 0.02)
    point = charts.point(before, _scrape(registry, 2.0), "blue")
    assert point["rps"] == pytest.approx(2.0)
    assert point["p50_ms"] is not None and 10 < point["p50_ms"] <= 25


def test_series_pairs_consecutive_scrapes_and_needs_two() -> None:
    metrics, registry = _router()
    metrics.observe("blue", "live", 200, 0.02)
    one = _scrape(registry, 1.0)
    assert charts.series([one]) == {}
    two = _scrape(registry, 2.0)
    metrics.observe("blue", "live", 200, 0.02)
    three = _scrape(registry, 3.0)
    points = charts.series([one, two, three])["blue"]
    assert [p["t"] for p in points] == [2.0, 3.0]
    assert [p["rps"] for p in points] == [0.0, 1.0]


def test_quantile_of_empty_and_overflowing_histograms() -> None:
    assert charts.quantile(0.5, []) is None
    assert charts.quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    # Everything beyond the last finite bound: that bound is all that is known.
    assert charts.quantile(0.99, [(0.1, 0.0), (1.0, 0.0), (float("inf"), 3.0)]) == 1.0


def test_not_a_router_exposition_is_an_error() -> None:
    with pytest.raises(ValueError):
        charts.parse("this is { not prometheus", at=0.0)


def test_a_chart_is_svg_with_a_polyline_and_a_dot_per_value_and_gaps_for_none() -> None:
    svg = chart(
        "Requests/s", [("live", 0, [(0.0, 1.0), (1.0, None), (2.0, 3.0), (3.0, 4.0)])], t0=0, t1=3
    )
    assert svg.count("<circle") == 3
    assert svg.count("<polyline") == 1  # the single point before the gap draws no line
    assert "style=" not in svg and 'role="img"' in svg
    # The top of the y axis is a round number at or above the largest value.
    assert ">5</text>" in svg


def test_names_in_charts_are_escaped() -> None:
    block = charts_block(
        {
            "problem": None,
            "deployments": {
                "<b>x</b>": [
                    {"t": 1.0, "rps": 1.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": {"<i>": 1.0}},
                    {"t": 2.0, "rps": 1.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": {}},
                ]
            },
        }
    )
    assert "<b>x</b>" not in block and "&lt;b&gt;x&lt;/b&gt;" in block
    assert "<i>" not in block
