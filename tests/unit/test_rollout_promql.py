"""PromQL of a rollout step and the reading of Prometheus's answers
(reconciler.rollouts.promql), with plain values: answers are written as /api/v1/query's
`data` is. The real server answering these queries is tests/integration/
test_prometheus_analysis.py."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.rollouts import promql
from reconciler.rollouts.analysis import LIVE, MIRROR, Outcome, judge
from reconciler.rollouts.policy import Thresholds


def vector(*samples: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {
        "resultType": "vector",
        "result": [{"metric": labels, "value": [1765000000.5, value]} for labels, value in samples],
    }


def queries(**overrides: Any) -> dict[str, str]:
    arguments: dict[str, Any] = {
        "endpoint": "my-endpoint",
        "stable": "blue",
        "canary": "green",
        "canary_kind": LIVE,
        "window_s": 90.5,
    }
    arguments.update(overrides)
    return {q.name: q.expr for q in promql.step_queries(**arguments)}


def test_the_window_is_the_steps_time_in_milliseconds() -> None:
    assert promql.window(90.5) == "90500ms"
    assert promql.window(0.0001) == "1ms"  # PromQL has no zero-length range


def test_an_increase_counts_a_series_born_in_the_window_from_zero_and_survives_resets() -> None:
    m = 'router_requests_total{endpoint="e"}'
    assert promql.increase(m, 60) == (
        f"((({m} - {m} offset 60000ms) >= 0)"
        f" or ({m} unless {m} offset 60000ms)"
        f" or increase({m}[60000ms]))"
    )


def test_label_values_are_quoted_as_promql_strings() -> None:
    assert promql.quote('a"b\\c') == '"a\\"b\\\\c"'
    assert (
        promql.selector("m", {"endpoint": "e"}, (("namespace", 'm"l'),))
        == 'm{endpoint="e",namespace="m\\"l"}'
    )


def test_the_queries_match_the_routers_labels_and_the_policys() -> None:
    found = queries(canary_kind=MIRROR, labels=(("namespace", "ml"),))
    assert set(found) == {
        promql.SCRAPED,
        promql.REQUESTS_Q,
        promql.P99_CANARY,
        promql.P99_STABLE,
        promql.SHADOW_SERIES,
        promql.SHADOW_Q,
        promql.SHADOW_DELTA,
    }
    assert found[promql.SCRAPED] == (
        'count(router_instances{endpoint="my-endpoint",namespace="ml"})'
    )
    requests = found[promql.REQUESTS_Q]
    assert requests.startswith("sum by (deployment, kind, code) (")
    for name in ("blue", "green"):
        series = (
            f'router_requests_total{{endpoint="my-endpoint",deployment="{name}",namespace="ml"}}'
        )
        assert promql.increase(series, 90.5) in requests
    # p99: the canary's mirrored copies in a mirror step, the stable's live requests.
    canary_buckets = (
        'router_request_duration_seconds_bucket{endpoint="my-endpoint",deployment="green",'
        'kind="mirror",namespace="ml"}'
    )
    assert found[promql.P99_CANARY] == (
        f"histogram_quantile(0.99, sum by (le) ({promql.increase(canary_buckets, 90.5)}))"
    )
    assert 'deployment="blue",kind="live"' in found[promql.P99_STABLE]
    pair = 'endpoint="my-endpoint",live="blue",shadow="green",namespace="ml"'
    assert found[promql.SHADOW_Q].startswith("sum by (result) (")
    assert f"router_shadow_comparisons_total{{{pair}}}" in found[promql.SHADOW_Q]
    assert found[promql.SHADOW_DELTA].startswith(
        f"sum({promql.increase(f'router_shadow_latency_delta_seconds_sum{{{pair}}}', 90.5)}) / sum("
    )


def answers(**changed: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        promql.SCRAPED: vector(({}, "2")),
        promql.REQUESTS_Q: vector(
            ({"deployment": "green", "kind": "live", "code": "200"}, "95.00000001"),
            ({"deployment": "green", "kind": "live", "code": "424"}, "3"),
            ({"deployment": "green", "kind": "live", "code": "408"}, "1"),
            ({"deployment": "green", "kind": "live", "code": "429"}, "1"),  # load shed
            ({"deployment": "green", "kind": "mirror", "code": "500"}, "7"),  # not this step
            ({"deployment": "blue", "kind": "live", "code": "200"}, "400"),
            ({"deployment": "blue", "kind": "live", "code": "503"}, "NaN"),
        ),
        promql.P99_CANARY: vector(({}, "0.2375")),
        promql.P99_STABLE: vector(({}, "0.05")),
        promql.SHADOW_SERIES: vector(),
        promql.SHADOW_Q: vector(),
        promql.SHADOW_DELTA: vector(),
    }
    base.update(changed)
    return base


def figures(data: dict[str, Any], kind: str = LIVE) -> Any:
    return promql.step_figures(
        data, endpoint="my-endpoint", stable="blue", canary="green", canary_kind=kind, elapsed_s=61
    )


def test_answers_become_the_same_figures_the_exposition_gives() -> None:
    found = figures(answers())
    canary, stable = found.canary, found.stable
    assert (canary.deployment, canary.kind, canary.requests, canary.errors) == (
        "green",
        "live",
        100,
        4,  # 424 and 408 count, 429 does not; the mirror's 500s belong to no live figure
    )
    assert canary.p99_s == 0.2375
    assert (stable.requests, stable.errors, stable.p99_s) == (400, 0, 0.05)
    assert found.shadow is None  # no comparison series of the pair: not measured
    assert found.elapsed_s == 61
    verdict = judge(Thresholds(error_rate=0.01, p99_ms=300), found, step_for_s=60)
    assert verdict.outcome is Outcome.FAIL
    assert verdict.reason == "error_rate 4.00% > 1.00% (4 errors of 100 requests)"


def test_no_request_of_the_canary_gives_no_p99_and_waits() -> None:
    found = figures(
        answers(
            **{
                promql.REQUESTS_Q: vector(),
                promql.P99_CANARY: vector(({}, "NaN")),
                promql.P99_STABLE: vector(),
            }
        )
    )
    assert (found.canary.requests, found.canary.p99_s, found.stable.p99_s) == (0, None, None)
    verdict = judge(Thresholds(), found, step_for_s=1)
    assert verdict.outcome is Outcome.WAIT
    assert verdict.reason.startswith("too few requests")


def test_shadow_comparisons_count_errors_and_timeouts_against_agreement() -> None:
    found = figures(
        answers(
            **{
                promql.SHADOW_SERIES: vector(({}, "6")),
                promql.SHADOW_Q: vector(
                    ({"result": "agree"}, "90"),
                    ({"result": "disagree_body"}, "4"),
                    ({"result": "disagree_status"}, "2"),
                    ({"result": "shadow_error"}, "1"),
                    ({"result": "shadow_timeout"}, "1"),
                    ({"result": "not_compared"}, "30"),
                ),
                promql.SHADOW_DELTA: vector(({}, "0.0125")),
            }
        ),
        MIRROR,
    )
    assert found.shadow is not None
    assert (found.shadow.agree, found.shadow.disagree) == (90, 8)
    assert found.shadow.latency_delta_s == 0.0125
    assert found.canary.requests == 7 and found.canary.errors == 7  # its mirrored copies


def test_a_shadow_pair_that_compared_nothing_in_the_window_is_too_few_not_unmeasured() -> None:
    found = figures(answers(**{promql.SHADOW_SERIES: vector(({}, "1"))}), MIRROR)
    assert found.shadow is not None and found.shadow.compared == 0
    assert found.shadow.latency_delta_s is None


def test_a_prometheus_that_does_not_scrape_the_router_cannot_judge() -> None:
    with pytest.raises(promql.PromQLAnswerError, match="holds no router_instances series"):
        figures(answers(**{promql.SCRAPED: vector()}))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"resultType": "matrix", "result": []}, "answered 'matrix', not a vector"),
        ({"resultType": "vector"}, "has no result list"),
        ({"resultType": "vector", "result": [{"metric": {}}]}, "is not {metric, value"),
        (vector(({}, "many")), "the value 'many' is no number"),
        (vector(({"a": "1"}, "1"), ({"a": "2"}, "1")), "2 samples where one was asked"),
        (None, "answered 'NoneType', not a vector"),
    ],
)
def test_a_malformed_answer_is_an_error_naming_the_query(data: Any, words: str) -> None:
    with pytest.raises(promql.PromQLAnswerError) as raised:
        figures(answers(**{promql.P99_CANARY: data}))
    assert str(raised.value).startswith("query p99_canary: ")
    assert words in str(raised.value)


def test_a_missing_answer_is_an_error() -> None:
    data = answers()
    del data[promql.REQUESTS_Q]
    with pytest.raises(promql.PromQLAnswerError, match="no answer to the queries requests"):
        figures(data)


def test_an_infinite_request_count_from_prometheus_is_unreadable_not_a_crash() -> None:
    infinite = vector(({"deployment": "green", "kind": "live", "code": "200"}, "+Inf"))
    # Refused (the rollouter then says the metrics are unreadable and the step waits).
    with pytest.raises(promql.PromQLAnswerError, match="query requests: a count of inf"):
        figures(answers(**{promql.REQUESTS_Q: infinite}))
