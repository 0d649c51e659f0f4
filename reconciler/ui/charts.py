"""The figures of the dashboard's live charts, from scrapes of a router's /metrics. PURE.

A scrape is the router's Prometheus text (router/metrics.py names the metrics) parsed with
prometheus_client's parser, stamped with the time it was read (passed in: no clock here).
Two scrapes in a row make one point per deployment, as Prometheus' rate() and
histogram_quantile() would: requests per second (live, the callers' requests), p50 and
p99 latency from the histogram's bucket increases, errors per second by status code, and
the mirror's share (mirrored copies sent to the deployment per live request of the
endpoint), and, for a shadow deployment whose answers the router compares with the live
ones, the share that agreed (the rollout analysis' rule: rollouts.analysis.shadow_agrees).
A counter that went down (the router restarted) counts from zero again.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from reconciler.rollouts.analysis import SHADOW, shadow_agrees

REQUESTS = "router_requests_total"
BUCKETS = "router_request_duration_seconds_bucket"
LIVE, MIRROR = "live", "mirror"


@dataclass(frozen=True, slots=True)
class Scrape:
    """One reading of a router: counters by (deployment, kind, code), cumulative histogram
    buckets by (deployment, kind) as (upper bound, count) sorted by bound, and shadow
    comparisons by (shadow deployment, live deployment, result)."""

    at: float
    requests: Mapping[tuple[str, str, str], float]
    buckets: Mapping[tuple[str, str], tuple[tuple[float, float], ...]]
    shadow: Mapping[tuple[str, str, str], float] = field(default_factory=dict)


def parse(text: str, *, at: float) -> Scrape:
    """A router's exposition text -> Scrape. Raises ValueError when it is not one."""
    requests: dict[tuple[str, str, str], float] = {}
    buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
    shadow: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            deployment = labels.get("deployment", "")
            if sample.name == REQUESTS:
                key = (deployment, labels.get("kind", LIVE), labels.get("code", ""))
                requests[key] = requests.get(key, 0.0) + float(sample.value)
            elif sample.name == BUCKETS:
                bound = float(labels.get("le", "+Inf"))
                buckets.setdefault((deployment, labels.get("kind", LIVE)), []).append(
                    (bound, float(sample.value))
                )
            elif sample.name == SHADOW:
                pair = (labels.get("shadow", ""), labels.get("live", ""), labels.get("result", ""))
                shadow[pair] = shadow.get(pair, 0.0) + float(sample.value)
    return Scrape(
        at=at,
        requests=requests,
        buckets={k: tuple(sorted(v)) for k, v in buckets.items()},
        shadow=shadow,
    )


def deployments(scrape: Scrape) -> list[str]:
    """Deployments the router has counted (not the refusals before one was chosen)."""
    names = {d for d, _, _ in scrape.requests} | {d for d, _ in scrape.buckets}
    names |= {shadow for shadow, _, _ in scrape.shadow}
    return sorted(n for n in names if n)


def point(before: Scrape, after: Scrape, deployment: str) -> dict[str, Any]:
    """One deployment's figures between two scrapes."""
    seconds = after.at - before.at
    if seconds <= 0:
        raise ValueError("the scrapes are not in time order")
    live = _increase_by_code(before, after, deployment, LIVE)
    mirror = _increase_by_code(before, after, deployment, MIRROR)
    total = sum(live.values())
    errors = {code: n / seconds for code, n in sorted(live.items()) if _is_error(code) and n}
    endpoint_live = sum(
        _increase(before.requests.get(k), v)
        for k, v in after.requests.items()
        if k[1] == LIVE and k[0]
    )
    mirrored = sum(mirror.values())
    increases = _bucket_increase(before, after, deployment, LIVE)
    agreed = disagreed = 0.0
    for (shadow, live_name, result), value in after.shadow.items():
        side = shadow_agrees(result) if shadow == deployment else None
        if side is None:
            continue
        n = _increase(before.shadow.get((shadow, live_name, result)), value)
        if side:
            agreed += n
        else:
            disagreed += n
    compared = agreed + disagreed
    return {
        "t": after.at,
        "rps": total / seconds,
        "p50_ms": _ms(quantile(0.5, increases)),
        "p99_ms": _ms(quantile(0.99, increases)),
        "errors": errors,
        "error_ratio": (sum(live[c] for c in live if _is_error(c)) / total) if total else None,
        "mirror_rps": mirrored / seconds,
        "mirror_share": (mirrored / endpoint_live) if endpoint_live else None,
        "shadow_compared": compared,
        "shadow_agreement": (agreed / compared) if compared else None,
    }


def series(scrapes: Sequence[Scrape]) -> dict[str, list[dict[str, Any]]]:
    """Points of every deployment over consecutive scrapes (oldest first)."""
    out: dict[str, list[dict[str, Any]]] = {}
    if len(scrapes) < 2:
        return out
    names = deployments(scrapes[-1])
    for before, after in itertools.pairwise(scrapes):
        if after.at <= before.at:
            continue
        for name in names:
            out.setdefault(name, []).append(point(before, after, name))
    return out


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """histogram_quantile over (upper bound, cumulative count) buckets, as Prometheus
    computes it (linear within a bucket); None when nothing was counted."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bound: its bound is all we know
            inside = count - lower_count
            if inside <= 0:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / inside
        lower_bound, lower_count = bound, count
    return lower_bound


def _increase(before: float | None, after: float) -> float:
    if before is None or after < before:
        return after  # new, or the router restarted: counted from zero
    return after - before


def _increase_by_code(
    before: Scrape, after: Scrape, deployment: str, kind: str
) -> dict[str, float]:
    out: dict[str, float] = {}
    for (dep, k, code), value in after.requests.items():
        if dep == deployment and k == kind:
            out[code] = out.get(code, 0.0) + _increase(before.requests.get((dep, k, code)), value)
    return out


def _bucket_increase(
    before: Scrape, after: Scrape, deployment: str, kind: str
) -> list[tuple[float, float]]:
    now = after.buckets.get((deployment, kind), ())
    then = dict(before.buckets.get((deployment, kind), ()))
    restarted = any(count < then.get(bound, 0.0) for bound, count in now)
    return [(bound, count if restarted else count - then.get(bound, 0.0)) for bound, count in now]


def _is_error(code: str) -> bool:
    return not code.startswith(("1", "2", "3"))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)
