"""metrics.py: one worker's requests, counted in plain numbers, scrape as if written through."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.router.metrics import RouterMetrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_buffered_requests_scrape_as_written_through_ones_with_each_bucket_edge() -> None:
    buffered, direct = CollectorRegistry(), CollectorRegistry()
    metrics = [RouterMetrics("e", buffered), RouterMetrics("e", direct, buffered=False)]
    # On a bucket's bound (counted in it), between bounds, zero, past the last bound.
    durations = [0.0, 0.001, 0.0011, 0.0025, 0.7, 180.0, 200.0]
    for round_ in range(2):  # a second scrape adds to the first
        for index, seconds in enumerate(durations):
            for each in metrics:
                each.observe("blue", "live", 200 if index % 2 else 424, seconds)
                each.observe("green", "mirror", 429, seconds)
        got, want = _samples(buffered), _samples(direct)
        assert got.keys() == want.keys()
        for key, value in want.items():
            # The sum is added in another order: equal up to rounding.
            assert math.isclose(got[key], value, rel_tol=1e-12), key
        total = ("router_requests_total", (("code", "424"), ("deployment", "blue")))
        assert got[(total[0], (*total[1], ("endpoint", "e"), ("kind", "live")))] == 4 * (round_ + 1)
