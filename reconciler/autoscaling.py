"""Autoscaling decisions for `scale_settings.type: target_utilization`. PURE.

Like Kubernetes' HPA: the wanted count is ceil(current x utilisation / target), kept within
[min_instances, max_instances]. Up quickly, down slowly:
- up once the utilisation has stayed above target for `up_after_s` (about a second: a
  sustained excess, not one burst);
- down only to the highest count recommended over the last `down_after_s` (about a
  minute), so a short lull never removes capacity that the next burst needs.
Samples and time are passed in; the decision says why, for status and logs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.model.specs import ScaleSettings

UP_AFTER_S = 1.0
DOWN_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds, any monotonic clock
    utilization: float  # in flight / (instances x max concurrent requests per instance)
    instances: int


@dataclass(frozen=True, slots=True)
class Decision:
    instances: int  # the count wanted now (equal to the current one: no change)
    reason: str

    def changes(self, current: int) -> bool:
        return self.instances != current


def bounds(settings: ScaleSettings) -> tuple[int, int]:
    low = settings.min_instances if settings.min_instances is not None else 1
    high = settings.max_instances if settings.max_instances is not None else low
    return low, max(low, high)


def recommend(sample: Sample, settings: ScaleSettings) -> int:
    """HPA's formula, within bounds; a 10% tolerance band avoids flapping around target."""
    low, high = bounds(settings)
    target = (settings.target_utilization_percentage or 70) / 100
    ratio = sample.utilization / target
    if abs(ratio - 1.0) <= 0.1:
        wanted = sample.instances
    else:
        wanted = math.ceil(max(sample.instances, 1) * ratio)
    return min(max(wanted, low), high)


def decide(
    samples: Sequence[Sample],
    settings: ScaleSettings,
    *,
    current: int,
    now: float,
    up_after_s: float = UP_AFTER_S,
    down_after_s: float = DOWN_AFTER_S,
) -> Decision:
    low, high = bounds(settings)
    target_pct = settings.target_utilization_percentage or 70
    if current < low or current > high:
        wanted = min(max(current, low), high)
        return Decision(wanted, f"{current} instance(s) outside [{low}, {high}]")
    recent = [s for s in samples if now - s.at <= down_after_s]
    if not recent:
        return Decision(current, "no utilisation sample yet")
    latest = recent[-1]
    pct = round(latest.utilization * 100)
    # Up: every sample of the last up_after_s asks for more, and sampling has gone on that
    # long (one burst right after a start is not a sustained excess).
    window = [s for s in recent if now - s.at <= up_after_s]
    if window and recent[0].at <= now - up_after_s * 0.8:
        ups = [recommend(s, settings) for s in window]
        if min(ups) > current:
            wanted = min(ups)
            return Decision(
                wanted,
                f"utilisation {pct}% above target {target_pct}% for {up_after_s:.0f} s: "
                f"{current} -> {wanted}",
            )
    # Down: the highest recommendation over the whole window, and only once the window
    # is full: some sample is at least down_after_s old (samples come oldest first and
    # may be older than the window), whatever the spacing of the samples.
    spans = samples[0].at <= now - down_after_s
    highest = max(recommend(s, settings) for s in recent)
    if spans and highest < current:
        return Decision(
            highest,
            f"utilisation below target {target_pct}% for {down_after_s:.0f} s "
            f"(now {pct}%): {current} -> {highest}",
        )
    return Decision(current, f"utilisation {pct}% (target {target_pct}%): keep {current}")
