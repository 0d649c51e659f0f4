"""The analysis of a rollout step (reconciler.rollouts.analysis): expositions written by the
router's own metrics code (RouterMetrics, and the shadow comparison metrics by their names)
turned into figures, and the verdicts on them."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from reconciler.rollouts.analysis import (
    MIRROR,
    CheckState,
    DeploymentFigures,
    Outcome,
    ShadowFigures,
    Snapshot,
    StepFigures,
    histogram_quantile,
    judge,
    parse_exposition,
    parse_expositions,
    step_figures,
)
from reconciler.rollouts.policy import Thresholds
from reconciler.router.metrics import RouterMetrics

ENDPOINT = "my-endpoint"


class Router:
    """A router's metrics registry (RouterMetrics, shadow comparisons included), fed as the
    router feeds it, scraped as text; shadows=False scrapes it as a router older than the
    shadow comparison would show it (no router_shadow_* families)."""

    def __init__(self, *, shadows: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.metrics = RouterMetrics(ENDPOINT, self.registry)
        self.shadows = shadows

    def serve(self, deployment: str, kind: str, code: int, seconds: float, times: int) -> None:
        for _ in range(times):
            self.metrics.observe(deployment, kind, code, seconds)

    def compare(self, result: str, times: int, delta_s: float | None = 0.01) -> None:
        for _ in range(times):
            self.metrics.shadow_compared("blue", "green", result, delta_s)

    def scrape(self) -> Snapshot:
        text = generate_latest(self.registry).decode()
        if not self.shadows:
            text = "".join(
                line for line in text.splitlines(keepends=True) if "router_shadow_" not in line
            )
        return parse_exposition(text, ENDPOINT)


def figures(
    canary: DeploymentFigures,
    stable: DeploymentFigures | None = None,
    *,
    shadow: ShadowFigures | None = None,
    elapsed_s: float = 600,
) -> StepFigures:
    stable = stable or DeploymentFigures("blue", "live", 1000, 0, 0.020)
    return StepFigures(canary, stable, shadow, elapsed_s)


THRESHOLDS = Thresholds(
    error_rate=0.01, p99_ms=500, p99_ratio=1.5, min_requests=50, shadow_agreement=0.99
)


def test_figures_of_a_mirror_step_come_from_the_routers_own_exposition() -> None:
    router = Router()
    start = router.scrape()
    router.serve("blue", "live", 200, 0.02, 300)
    router.serve("green", "mirror", 200, 0.03, 54)
    for code in (503, 424, 408, 500):
        router.serve("green", "mirror", code, 0.03, 1)
    router.serve("green", "mirror", 429, 0.001, 10)  # dropped copies: load, not failure
    router.serve("green", "live", 500, 0.03, 7)  # not this step's kind of request
    router.compare("agree", 60)
    router.compare("disagree_body", 1)
    router.compare("disagree_status", 1)
    router.compare("shadow_timeout", 1, None)  # no answer of the shadow: no agreement
    router.compare("not_compared", 5, None)  # the live request failed: counts for neither
    found = step_figures(
        router.scrape().since(start),
        stable="blue",
        canary="green",
        canary_kind=MIRROR,
        elapsed_s=61,
    )
    assert found.canary == DeploymentFigures("green", "mirror", 68, 4, found.canary.p99_s)
    assert found.stable.requests == 300 and found.stable.errors == 0
    # The router's delta histogram has buckets below zero: no _sum, so no mean.
    assert found.shadow == ShadowFigures(60, 3, None)
    # 0.03 s falls in the (0.025, 0.05] bucket: p99 is interpolated inside it.
    assert found.canary.p99_s is not None and 0.025 < found.canary.p99_s <= 0.05
    assert found.stable.p99_s is not None and 0.01 < found.stable.p99_s <= 0.025


def test_samples_of_another_endpoint_are_left_out() -> None:
    registry = CollectorRegistry()
    RouterMetrics("other-endpoint", registry).observe("green", "mirror", 500, 9.0)
    text = generate_latest(registry).decode()
    assert "other-endpoint" in text
    assert parse_exposition(text, ENDPOINT).samples == ()


def test_the_increase_between_scrapes_is_what_counts() -> None:
    router = Router()
    router.serve("green", "live", 500, 0.02, 40)  # before the step began
    start = router.scrape()
    router.serve("green", "live", 200, 0.02, 60)
    found = step_figures(
        router.scrape().since(start), stable="blue", canary="green", canary_kind="live", elapsed_s=1
    )
    assert (found.canary.requests, found.canary.errors) == (60, 0)


def test_a_router_restart_counts_its_series_from_zero() -> None:
    before = Router()
    before.serve("green", "live", 200, 0.02, 500)
    earlier = before.scrape()
    restarted = Router()  # counters begin again at zero
    restarted.serve("green", "live", 200, 2.0, 30)
    found = step_figures(
        restarted.scrape().since(earlier),
        stable="blue",
        canary="green",
        canary_kind="live",
        elapsed_s=1,
    )
    assert found.canary.requests == 30
    # The histogram reset as a whole: its p99 is that of the 30 slow requests alone.
    assert found.canary.p99_s is not None and 1.0 < found.canary.p99_s <= 2.5


def test_scrapes_of_several_routers_add_up() -> None:
    one, two = Router(), Router()
    one.serve("green", "live", 200, 0.02, 10)
    two.serve("green", "live", 503, 0.02, 5)
    total = one.scrape() + two.scrape()
    found = step_figures(total, stable="blue", canary="green", canary_kind="live", elapsed_s=1)
    assert (found.canary.requests, found.canary.errors) == (15, 5)


def test_without_shadow_metrics_the_shadow_is_not_measured() -> None:
    router = Router(shadows=False)
    router.serve("blue", "live", 200, 0.02, 100)
    router.serve("green", "mirror", 200, 0.02, 100)
    snapshot = router.scrape()
    assert not snapshot.compares_shadows
    found = step_figures(snapshot, stable="blue", canary="green", canary_kind=MIRROR, elapsed_s=600)
    assert found.shadow is None
    verdict = judge(THRESHOLDS, found, step_for_s=60)
    assert verdict.outcome is Outcome.PASS
    (shadow,) = [c for c in verdict.checks if c.threshold == "shadow_agreement"]
    assert shadow.state is CheckState.NOT_MEASURED


def test_text_that_is_no_exposition_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_exposition("router_requests_total{oops 12\n", ENDPOINT)


@pytest.mark.parametrize(
    ("buckets", "expected"),
    [
        ([], None),
        ([(0.1, 0.0), (float("inf"), 0.0)], None),
        ([(0.1, 100.0), (float("inf"), 100.0)], 0.099),  # within the first bucket, from 0
        ([(0.1, 50.0), (0.5, 100.0), (float("inf"), 100.0)], 0.1 + 0.4 * 49 / 50),
        ([(0.1, 90.0), (float("inf"), 100.0)], 0.1),  # in +Inf: the highest known bound
    ],
)
def test_p99_is_interpolated_within_its_bucket_as_promql_does(
    buckets: list[tuple[float, float]], expected: float | None
) -> None:
    assert histogram_quantile(0.99, buckets) == (
        None if expected is None else pytest.approx(expected)
    )


def test_a_healthy_step_passes_once_its_time_is_over() -> None:
    canary = DeploymentFigures("green", "live", 500, 2, 0.025)
    assert judge(THRESHOLDS, figures(canary), step_for_s=300).outcome is Outcome.PASS
    early = judge(THRESHOLDS, figures(canary, elapsed_s=120), step_for_s=300)
    assert (early.outcome, early.reason) == (Outcome.WAIT, "step runs 5m, 3m left")


def test_too_little_traffic_waits_and_never_promotes_even_when_the_time_is_over() -> None:
    canary = DeploymentFigures("green", "live", 49, 30, 9.0)  # awful, but only 49 requests
    verdict = judge(THRESHOLDS, figures(canary, elapsed_s=3600), step_for_s=60)
    assert verdict.outcome is Outcome.WAIT
    assert verdict.reason.startswith("too few requests (min_requests: 49 of 50 requests")


def test_an_error_rate_above_the_threshold_fails_with_its_figures() -> None:
    canary = DeploymentFigures("green", "live", 250, 50, 0.020)
    verdict = judge(THRESHOLDS, figures(canary, elapsed_s=5), step_for_s=300)
    assert verdict.outcome is Outcome.FAIL  # at once: the step's time need not be over
    assert verdict.reason == "error_rate 20.00% > 1.00% (50 errors of 250 requests)"
    assert [c.threshold for c in verdict.failed] == ["error_rate"]


def test_a_slow_canary_fails_on_absolute_and_relative_p99() -> None:
    canary = DeploymentFigures("green", "live", 200, 0, 0.600)
    stable = DeploymentFigures("blue", "live", 1000, 0, 0.100)
    verdict = judge(THRESHOLDS, figures(canary, stable), step_for_s=60)
    assert verdict.outcome is Outcome.FAIL
    assert verdict.reason == (
        "p99_ms 600.0 ms > 500.0 ms; p99_ratio 6.00 > 1.5 (600.0 ms against 100.0 ms)"
    )


def test_five_times_slower_fails_on_the_ratio_alone_when_under_the_absolute_limit() -> None:
    canary = DeploymentFigures("green", "mirror", 200, 0, 0.100)
    stable = DeploymentFigures("blue", "live", 1000, 0, 0.020)
    verdict = judge(
        Thresholds(p99_ratio=1.5, min_requests=50), figures(canary, stable), step_for_s=60
    )
    assert [c.threshold for c in verdict.failed] == ["p99_ratio"]


def test_the_ratio_is_not_measured_when_the_stable_serves_nothing() -> None:
    canary = DeploymentFigures("green", "live", 200, 0, 0.030)
    stable = DeploymentFigures("blue", "live", 0, 0, None)  # the 100% step
    verdict = judge(THRESHOLDS, figures(canary, stable), step_for_s=60)
    assert verdict.outcome is Outcome.PASS
    (ratio,) = [c for c in verdict.checks if c.threshold == "p99_ratio"]
    assert (ratio.state, ratio.text) == (CheckState.NOT_MEASURED, "blue served 0 live requests")


def test_shadow_disagreement_fails_a_mirror_step() -> None:
    canary = DeploymentFigures("green", "mirror", 200, 0, 0.020)
    verdict = judge(THRESHOLDS, figures(canary, shadow=ShadowFigures(180, 20)), step_for_s=60)
    assert verdict.outcome is Outcome.FAIL
    assert verdict.reason == "shadow_agreement 90.00% < 99.00% (20 of 200 answers differ)"


def test_too_few_compared_answers_wait_in_a_mirror_step() -> None:
    canary = DeploymentFigures("green", "mirror", 200, 0, 0.020)
    verdict = judge(THRESHOLDS, figures(canary, shadow=ShadowFigures(10, 0)), step_for_s=60)
    assert verdict.outcome is Outcome.WAIT
    assert verdict.reason == "too few requests (shadow_agreement: 10 of 50 compared answers)"


def test_shadow_agreement_is_not_judged_in_a_traffic_step() -> None:
    canary = DeploymentFigures("green", "live", 200, 0, 0.020)
    verdict = judge(THRESHOLDS, figures(canary, shadow=ShadowFigures(0, 200)), step_for_s=60)
    assert verdict.outcome is Outcome.PASS
    assert "shadow_agreement" not in {c.threshold for c in verdict.checks}


def test_the_verdict_as_status_records_it() -> None:
    canary = DeploymentFigures("green", "mirror", 120, 1, 0.0295)
    verdict = judge(
        THRESHOLDS, figures(canary, shadow=ShadowFigures(119, 1), elapsed_s=61.5), step_for_s=60
    )
    assert verdict.as_json() == {
        "outcome": "pass",
        "reason": "every threshold met",
        "elapsed_s": 61.5,
        "canary": {
            "deployment": "green",
            "kind": "mirror",
            "requests": 120,
            "errors": 1,
            "p99_ms": 29.5,
        },
        "stable": {
            "deployment": "blue",
            "kind": "live",
            "requests": 1000,
            "errors": 0,
            "p99_ms": 20.0,
        },
        "shadow": {"agree": 119, "disagree": 1},
        "checks": [
            {"threshold": "min_requests", "state": "ok", "text": "120 >= 50"},
            {
                "threshold": "error_rate",
                "state": "ok",
                "text": "0.83% <= 1.00% (1 errors of 120 requests)",
            },
            {"threshold": "p99_ms", "state": "ok", "text": "29.5 ms <= 500.0 ms"},
            {
                "threshold": "p99_ratio",
                "state": "ok",
                "text": "1.47 <= 1.5 (29.5 ms against 20.0 ms)",
            },
            {
                "threshold": "shadow_agreement",
                "state": "ok",
                "text": "99.17% >= 99.00% (1 of 120 answers differ)",
            },
        ],
    }


# --------------------------------------------------------------------------------------
# Hostile figures


def exposition(requests: str, bucket: str = "100") -> str:
    """A router's exposition with the canary's live counters set to these texts."""
    labels = f'endpoint="{ENDPOINT}",deployment="green",kind="live"'
    return (
        "# TYPE router_requests_total counter\n"
        f'router_requests_total{{{labels},code="200"}} {requests}\n'
        "# TYPE router_request_duration_seconds histogram\n"
        f'router_request_duration_seconds_bucket{{{labels},le="0.1"}} {bucket}\n'
        f'router_request_duration_seconds_bucket{{{labels},le="+Inf"}} {bucket}\n'
        f"router_request_duration_seconds_count{{{labels}}} {bucket}\n"
        f"router_request_duration_seconds_sum{{{labels}}} 1\n"
    )


@pytest.mark.parametrize(
    ("requests", "bucket"),
    [("NaN", "100"), ("+Inf", "100"), ("-Inf", "100"), ("-5", "100"), ("100", "NaN")],
)
def test_a_counter_that_is_no_count_makes_the_metrics_unreadable_never_a_verdict(
    requests: str, bucket: str
) -> None:
    # NaN or Inf in a request counter raised from step_figures (round), outside the
    # rollouter's unreadable-metrics handling; a NaN bucket failed the step (rollback).
    with pytest.raises(ValueError, match="is not a count"):
        parse_exposition(exposition(requests, bucket), ENDPOINT)


def test_huge_counts_are_judged_as_numbers() -> None:
    start = parse_exposition(exposition("1e15", "1e15"), ENDPOINT)
    later = parse_exposition(exposition("1.0000000001e15", "1.0000000001e15"), ENDPOINT)
    found = step_figures(
        later.since(start), stable="blue", canary="green", canary_kind="live", elapsed_s=600
    )
    assert found.canary.requests == 100_000  # the increase, not the total
    assert judge(THRESHOLDS, found, step_for_s=60).outcome is Outcome.PASS


def test_a_canary_with_no_request_at_all_waits_even_with_every_threshold_off() -> None:
    off = Thresholds(error_rate=None, p99_ms=None, p99_ratio=None, min_requests=0)
    verdict = judge(off, figures(DeploymentFigures("green", "live", 0, 0, None)), step_for_s=60)
    assert verdict.outcome is Outcome.WAIT


def test_one_router_of_several_restarting_counts_only_its_own_series_from_zero() -> None:
    # Kubernetes: the routers' expositions add up. When one restarts, the sum goes down;
    # judged on the sum, every request the others ever served counted as this step's.
    one, two = Router(), Router()
    one.serve("green", "live", 500, 0.02, 1000)  # before the step: errors of an old window
    two.serve("green", "live", 200, 0.02, 100)
    start = parse_expositions({"router-a": _text(one), "router-b": _text(two)}, ENDPOINT)
    restarted = Router()
    restarted.serve("green", "live", 200, 0.02, 30)
    one.serve("green", "live", 200, 0.02, 20)
    later = parse_expositions({"router-a": _text(one), "router-b": _text(restarted)}, ENDPOINT)
    found = step_figures(
        later.since(start), stable="blue", canary="green", canary_kind="live", elapsed_s=60
    )
    assert (found.canary.requests, found.canary.errors) == (50, 0)
    # A router gone from the scrape (not ready) takes nothing away and adds nothing back.
    gone = step_figures(
        parse_expositions({"router-a": _text(one)}, ENDPOINT).since(start),
        stable="blue",
        canary="green",
        canary_kind="live",
        elapsed_s=60,
    )
    assert (gone.canary.requests, gone.canary.errors) == (20, 0)


def _text(router: Router) -> str:
    return generate_latest(router.registry).decode()


@pytest.mark.parametrize("elapsed_s", [-3600.0, -0.001, 0.0])
def test_a_window_whose_time_went_backwards_waits_never_passes(elapsed_s: float) -> None:
    healthy = figures(DeploymentFigures("green", "live", 1000, 0, 0.02), elapsed_s=elapsed_s)
    verdict = judge(THRESHOLDS, healthy, step_for_s=60)
    assert verdict.outcome is Outcome.WAIT
    assert verdict.reason.startswith("step runs 1m, ")
