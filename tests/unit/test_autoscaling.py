"""autoscaling: up after a sustained second, down after a minute, never out of bounds."""

from __future__ import annotations

from reconciler.autoscaling import Sample, decide, recommend
from reconciler.model.specs import ScaleSettings

AUTO = ScaleSettings("target_utilization", 1, 5, 70, 1)


def samples(
    utilization: float, *, start: float, end: float, instances: int, step: float = 0.2
) -> list[Sample]:
    out, t = [], start
    while t <= end + 1e-9:
        out.append(Sample(t, utilization, instances))
        t += step
    return out


def test_recommendation_follows_the_hpa_formula_within_bounds() -> None:
    assert recommend(Sample(0, 1.4, 2), AUTO) == 4  # ceil(2 x 1.4 / 0.7)
    assert recommend(Sample(0, 0.72, 2), AUTO) == 2  # inside the tolerance band
    assert recommend(Sample(0, 5.0, 4), AUTO) == 5  # max_instances
    assert recommend(Sample(0, 0.0, 3), AUTO) == 1  # min_instances


def test_a_sustained_excess_scales_up_within_about_a_second() -> None:
    history = samples(0.3, start=0, end=10, instances=1) + samples(
        1.4, start=10.2, end=11.2, instances=1
    )
    decision = decide(history, AUTO, current=1, now=11.2)
    assert decision.instances == 2 and "above target" in decision.reason


def test_a_single_burst_does_not_scale_up() -> None:
    history = [*samples(0.3, start=0, end=10, instances=1), Sample(10.2, 3.0, 1)]
    assert decide(history, AUTO, current=1, now=10.2).instances == 1


def test_scale_down_waits_a_minute_below_target() -> None:
    busy = samples(1.4, start=0, end=10, instances=3)
    quiet_30s = busy + samples(0.1, start=10.2, end=40, instances=3)
    assert decide(quiet_30s, AUTO, current=3, now=40).instances == 3
    quiet_70s = busy + samples(0.1, start=10.2, end=80, instances=3)
    decision = decide(quiet_70s, AUTO, current=3, now=80)
    assert decision.instances == 1 and "below target" in decision.reason


def test_a_count_outside_the_bounds_is_pulled_back() -> None:
    assert decide([], AUTO, current=9, now=0).instances == 5
    assert decide([], AUTO, current=0, now=0).instances == 1


def test_scale_down_does_not_depend_on_the_spacing_of_samples() -> None:
    # Samples 0.505 s apart never span exactly the window; a minute of them still counts.
    quiet = [Sample(i * 0.505, 0.0, 3) for i in range(200)]
    decision = decide(quiet, AUTO, current=3, now=quiet[-1].at, down_after_s=60)
    assert decision.instances == 1
