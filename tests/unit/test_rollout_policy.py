"""Rollout policies of reconciler.yaml (reconciler.rollouts.policy), read through
load_repo_config as the CLI and the daemon read them: values, merging, and errors with file,
line and field."""

from __future__ import annotations

import pytest

from reconciler.filetree import MemoryTree
from reconciler.model.diagnostics import DesiredStateInvalid
from reconciler.repoconfig import RepoConfig, load_repo_config
from reconciler.rollouts.policy import (
    Comparison,
    Mode,
    PrometheusSource,
    RolloutPolicies,
    RolloutPolicy,
    Step,
    StepKind,
    Thresholds,
    format_duration,
    parse_duration,
)

EXAMPLE = """\
rollouts:
  default: {steps: [{mirror: 20, for: 10m}, {traffic: 10, for: 5m}, 25, 50, 100], interval: 1m,
            thresholds: {error_rate: 0.01, p99_ms: 500, p99_ratio: 1.5, min_requests: 50,
                         shadow_agreement: 0.99},
            mode: commit}
  endpoints:
    my-endpoint: {thresholds: {p99_ms: 800}, mode: pull-request}
    batch: {enabled: false}
"""


def config(text: str) -> RepoConfig:
    return load_repo_config(MemoryTree({"reconciler.yaml": text.encode()}))


def errors(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(DesiredStateInvalid) as raised:
        config(text)
    assert all(e.file == "reconciler.yaml" for e in raised.value.errors)
    return [(e.line, e.field, e.message) for e in raised.value.errors]


def test_the_example_policy_reads_into_frozen_values() -> None:
    rollouts = config(EXAMPLE).rollouts
    default = RolloutPolicy(
        steps=(
            Step(StepKind.MIRROR, 20, 600.0),
            Step(StepKind.TRAFFIC, 10, 300.0),
            Step(StepKind.TRAFFIC, 25, 60.0),
            Step(StepKind.TRAFFIC, 50, 60.0),
            Step(StepKind.TRAFFIC, 100, 60.0),
        ),
        interval_s=60.0,
        thresholds=Thresholds(
            error_rate=0.01, p99_ms=500, p99_ratio=1.5, min_requests=50, shadow_agreement=0.99
        ),
        mode=Mode.COMMIT,
        line=2,
    )
    assert rollouts.default == default
    assert rollouts.for_endpoint("elsewhere") == default
    assert rollouts.for_endpoint("batch") is None
    mine = rollouts.for_endpoint("my-endpoint")
    assert mine is not None and mine.line == 7
    assert mine.thresholds == Thresholds(
        error_rate=0.01, p99_ms=800, p99_ratio=1.5, min_requests=50, shadow_agreement=0.99
    )
    assert (mine.steps, mine.mode) == (default.steps, Mode.PULL_REQUEST)
    assert (mine.total, mine.step(1).describe()) == (5, "mirror 20% for 10m")


def test_no_rollouts_key_means_no_rollouts() -> None:
    rollouts = config("prune: false\n").rollouts
    assert rollouts == RolloutPolicies() and rollouts.empty
    assert rollouts.for_endpoint("my-endpoint") is None


def test_an_endpoint_policy_without_a_default_applies_to_that_endpoint_only() -> None:
    text = "rollouts:\n  endpoints:\n    e1: {steps: [50, 100], interval: 30s}\n"
    rollouts = config(text).rollouts
    policy = rollouts.for_endpoint("e1")
    assert policy is not None and policy.steps == (
        Step(StepKind.TRAFFIC, 50, 30.0),
        Step(StepKind.TRAFFIC, 100, 30.0),
    )
    assert policy.thresholds == Thresholds()  # error_rate 0.01, min_requests 20
    assert rollouts.for_endpoint("e2") is None


def test_a_null_threshold_turns_a_default_check_off() -> None:
    text = "rollouts:\n  default: {steps: [100], thresholds: {error_rate: null}}\n"
    policy = config(text).rollouts.default
    assert policy is not None and policy.thresholds.error_rate is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("10m", 600), ("1h", 3600), ("1h30m", 5400), (45, 45)],
)
def test_durations_read_as_people_write_them(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "10", "5x", "m", "-1s", True, 0, "0s"])
def test_what_is_not_a_duration(text: str | int | bool) -> None:
    assert parse_duration(text) is None


def test_schema_errors_name_line_field_and_offer_the_near_name() -> None:
    text = (
        "rollouts:\n"
        "  default:\n"
        "    steps: [{mirorr: 20}, {traffic: 10, for: 5x}, 101]\n"
        "    intervall: 1m\n"
        "    mode: comit\n"
        "    thresholds: {error_rate: 2, p99: 3}\n"
    )
    assert errors(text) == [
        (3, "rollouts.default.steps[0].mirorr", "unknown field 'mirorr' (did you mean 'mirror'?)"),
        (
            3,
            "rollouts.default.steps[1].for",
            "must be a duration such as 500ms, 30s, 10m, 1h or 1h30m, or a number of seconds, "
            "got '5x'",
        ),
        (3, "rollouts.default.steps[2]", "must be at most 100, got 101"),
        (4, "rollouts.default.intervall", "unknown field 'intervall' (did you mean 'interval'?)"),
        (
            5,
            "rollouts.default.mode",
            "must be one of commit, pull-request; got 'comit' (did you mean 'commit'?)",
        ),
        (6, "rollouts.default.thresholds.error_rate", "must be at most 1, got 2"),
        (6, "rollouts.default.thresholds.p99", "unknown field 'p99' (did you mean 'p99_ms'?)"),
    ]


@pytest.mark.parametrize(
    ("steps", "field", "words"),
    [
        ("[{mirror: 20, traffic: 10}, 100]", "steps[0]", "a step names one of mirror or traffic"),
        ("[50, 25, 100]", "steps[1]", "traffic must rise from step to step: 25% after 50%"),
        ("[10, {mirror: 20}, 100]", "steps[1]", "a mirror step must come before every traffic"),
        ("[10, 50]", "steps[1]", "the last step must give the new deployment all live traffic"),
        ("[{mirror: 20}]", "steps[0]", "got mirror 20"),
        ("[{traffic: 50, for: 10s}, 100]", "steps[0].for", "is shorter than the interval (10s"),
        ("[{mirror: 60}, 100]", "steps[0].mirror", "must be at most 50, got 60"),
        ("[]", "steps", "must hold at least 1 items"),
    ],
)
def test_rules_the_schema_cannot_say_are_errors_with_their_line(
    steps: str, field: str, words: str
) -> None:
    text = f"rollouts:\n  default:\n    interval: 1m\n    steps: {steps}\n"
    ((line, found, message),) = errors(text)
    assert (line, found) == (4, f"rollouts.default.{field}")
    assert words in message


def test_an_error_in_default_is_said_once_not_again_for_each_endpoint() -> None:
    text = (
        "rollouts:\n"
        "  default: {steps: [50, 10]}\n"
        "  endpoints:\n"
        "    e1: {mode: pull-request}\n"
        "    e2: {steps: [{traffic: 100, for: 1s}]}\n"
    )
    assert errors(text) == [
        (2, "rollouts.default.steps[1]", "traffic must rise from step to step: 10% after 50%"),
        (
            5,
            "rollouts.endpoints.e2.steps[0].for",
            "is shorter than the interval (1s < 1m): the step would never be judged in time",
        ),
    ]


def test_an_endpoint_without_steps_anywhere_is_an_error() -> None:
    assert errors("rollouts:\n  endpoints:\n    e1: {interval: 1m}\n") == [
        (3, "rollouts.endpoints.e1", "names no steps, and rollouts.default gives none")
    ]


def test_steps_must_keep_the_traffic_shift_policy_by_construction() -> None:
    text = (
        "policies:\n"
        "  max_traffic_shift: {default: 50, endpoints: {careful: 20}}\n"
        "rollouts:\n"
        "  default: {steps: [10, 50, 100]}\n"
    )
    assert errors(text) == [
        (
            4,
            "rollouts.default.steps",
            "step 2 moves 40 points of live traffic (10 -> 50) where policies."
            "max_traffic_shift allows 20 for careful: add steps between",
        ),
        (
            4,
            "rollouts.default.steps",
            "step 3 moves 50 points of live traffic (50 -> 100) where policies."
            "max_traffic_shift allows 20 for careful: add steps between",
        ),
    ]


def test_steps_must_mirror_first_when_the_policy_asks_for_it() -> None:
    base = "policies:\n  mirror_before_traffic: {min_hours: 1}\nrollouts:\n  default:\n"
    ((_, field, message),) = errors(base + "    steps: [50, 100]\n")
    assert field == "rollouts.default.steps"
    assert "start with a mirror step" in message
    ((_, _, message),) = errors(base + "    steps: [{mirror: 10, for: 30m}, 50, 100]\n")
    assert message == (
        "the mirror steps last 30m where policies.mirror_before_traffic asks for 1h: "
        "lengthen their `for`"
    )
    assert config(base + "    steps: [{mirror: 10, for: 1h}, 50, 100]\n").rollouts.default


def test_the_example_repository_policy_is_valid() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "example-repo" / "reconciler.yaml").read_text()
    policy = config(text).rollouts.default  # raises on an error
    assert policy is not None
    # Its mirror steps last the day that its policies.mirror_before_traffic asks for.
    assert sum(s.for_s for s in policy.steps if s.kind is StepKind.MIRROR) >= 24 * 3600


PROMETHEUS = """\
rollouts:
  default:
    steps: [50, 100]
    metrics:
      prometheus:
        address: http://prometheus.monitoring:9090/
        timeout: 2s
        bearer_token_env: PROM_TOKEN
        labels: {namespace: ml, cluster: west}
  endpoints:
    from-router: {metrics: router}
    by-file: {metrics: {prometheus: {address: "https://prom.example:443/prefix",
                                     bearer_token_file: /run/secrets/prom}}}
    inherits: {mode: pull-request}
"""


def test_a_prometheus_source_reads_per_policy_and_router_takes_it_back() -> None:
    rollouts = config(PROMETHEUS).rollouts
    default = rollouts.default
    assert default is not None
    assert default.metrics == PrometheusSource(
        address="http://prometheus.monitoring:9090",  # no trailing slash: paths are added
        timeout_s=2.0,
        bearer_token_env="PROM_TOKEN",
        bearer_token_file=None,
        labels=(("cluster", "west"), ("namespace", "ml")),
    )
    inherited = rollouts.for_endpoint("inherits")
    assert inherited is not None and inherited.metrics == default.metrics
    back = rollouts.for_endpoint("from-router")
    assert back is not None and back.metrics is None
    by_file = rollouts.for_endpoint("by-file")
    assert by_file is not None
    assert by_file.metrics == PrometheusSource(
        "https://prom.example:443/prefix", 5.0, None, "/run/secrets/prom", ()
    )
    # Without `metrics`, the router's own (through the target), as before.
    plain = config("rollouts:\n  default: {steps: [100]}\n").rollouts.default
    assert plain is not None and plain.metrics is None


@pytest.mark.parametrize(
    ("prometheus", "field", "words"),
    [
        (
            "{address: http://p:9090, bearer_token_env: A, bearer_token_file: /t}",
            "rollouts.default.metrics.prometheus",
            "names bearer_token_env and bearer_token_file",
        ),
        (
            "{address: 'http://admin:s3cret@p:9090'}",
            "rollouts.default.metrics.prometheus.address",
            "holds a user or password",
        ),
        (
            "{address: 'ftp://p:9090'}",
            "rollouts.default.metrics.prometheus.address",
            "is not an http:// or https:// address",
        ),
        (
            "{address: http://p:9090, labels: {deployment: blue}}",
            "rollouts.default.metrics.prometheus.labels.deployment",
            "is a label the router sets itself",
        ),
        (
            "{address: http://p:9090, adress: x}",
            "rollouts.default.metrics.prometheus.adress",
            "unknown field 'adress'",
        ),
        (
            "{timeout: 5s}",
            "rollouts.default.metrics.prometheus.address",
            "missing required field 'address'",
        ),
        (
            "{address: http://p:9090, timeout: soon}",
            "rollouts.default.metrics.prometheus.timeout",
            "must be a duration",
        ),
        (
            "{address: http://p:9090, bearer_token_env: 'not a name'}",
            "rollouts.default.metrics.prometheus.bearer_token_env",
            "must be the name of an environment variable",
        ),
    ],
)
def test_a_wrong_prometheus_source_is_an_error_with_its_line_and_field(
    prometheus: str, field: str, words: str
) -> None:
    text = (
        f"rollouts:\n  default:\n    steps: [100]\n    metrics:\n      prometheus: {prometheus}\n"
    )
    found = errors(text)
    assert [(line, where) for line, where, _ in found] == [(5, field)]
    assert words in found[0][2]
    assert "s3cret" not in found[0][2]


def test_metrics_is_router_or_a_prometheus_source() -> None:
    text = (
        "rollouts:\n  default: {steps: [100], metrics: datadog}\n  endpoints: {e1: {metrics: 5}}\n"
    )
    assert errors(text) == [
        (2, "rollouts.default.metrics", "must be one of router; got 'datadog'"),
        (
            3,
            "rollouts.endpoints.e1.metrics",
            "must be router or {prometheus: {address: ...}}, got 5",
        ),
    ]


def test_comparison_reads_and_is_merged_over_default_key_by_key() -> None:
    text = (
        "rollouts:\n"
        "  default:\n"
        "    steps: [{mirror: 20}, 100]\n"
        "    comparison: {rtol: 0.01, max_body_bytes: 65536}\n"
        "  endpoints:\n"
        "    loose: {comparison: {atol: 0.5}}\n"
        "    plain: {steps: [100], comparison: {rtol: null}}\n"
    )
    rollouts = config(text).rollouts
    assert rollouts.for_endpoint("other") is not None
    assert rollouts.for_endpoint("other").comparison == Comparison(  # type: ignore[union-attr]
        rtol=0.01, max_body_bytes=65536
    )
    assert rollouts.for_endpoint("loose").comparison == Comparison(  # type: ignore[union-attr]
        rtol=0.01, atol=0.5, max_body_bytes=65536
    )
    # null: the router's default again, whatever default said.
    assert rollouts.for_endpoint("plain").comparison == Comparison(  # type: ignore[union-attr]
        max_body_bytes=65536
    )
    assert config("rollouts:\n  default: {steps: [100]}\n").rollouts.default.comparison == (  # type: ignore[union-attr]
        Comparison()
    )


def test_comparison_errors_name_line_and_field() -> None:
    text = (
        "rollouts:\n"
        "  default:\n"
        "    steps: [{mirror: 20}, 100]\n"
        "    comparison:\n"
        "      rtol: -0.1\n"
        "      atoll: 0.1\n"
        "      max_body_bytes: 0\n"
    )
    assert errors(text) == [
        (5, "rollouts.default.comparison.rtol", "must be at least 0, got -0.1"),
        (6, "rollouts.default.comparison.atoll", "unknown field 'atoll' (did you mean 'atol'?)"),
        (7, "rollouts.default.comparison.max_body_bytes", "must be at least 1, got 0"),
    ]
    infinite = "rollouts:\n  default:\n    steps: [100]\n    comparison:\n      atol: .inf\n"
    assert errors(infinite) == [
        (5, "rollouts.default.comparison.atol", "must be a finite number, got inf")
    ]


@pytest.mark.parametrize(
    ("where", "value"),
    [("for", "0s"), ("for", "0ms"), ("for", ".nan"), ("interval", "0s"), ("interval", "0ms")],
)
def test_a_zero_or_nan_duration_with_a_unit_is_an_error_not_a_policy_dropped(
    where: str, value: str
) -> None:
    step = f"{{traffic: 20, for: {value}}}" if where == "for" else "20"
    interval = f"    interval: {value}\n" if where == "interval" else ""
    found = errors(f"rollouts:\n  default:\n{interval}    steps: [{step}, 100]\n")
    assert any(field.endswith(where) for _, field, _ in found), found


@pytest.mark.parametrize(
    "policy",
    [
        "    steps: [20, 100]\n    thresholds: {error_rate: .nan}\n",
        "    steps: [20, 100]\n    thresholds: {p99_ratio: .nan}\n",
        "    steps: [20, 100]\n    thresholds: {shadow_agreement: .nan}\n",
        "    steps: [{traffic: 20, for: .inf}, 100]\n",
    ],
)
def test_numbers_that_are_not_finite_are_errors(policy: str) -> None:
    assert errors(f"rollouts:\n  default:\n{policy}")
