"""Prometheus metrics of the router, served on their own port (`--metrics-port`, `GET /metrics`).

Names and labels (a stable contract: dashboards and the autoscaler read them):

| metric | type | labels |
|---|---|---|
| router_requests_total | counter | endpoint, deployment, kind, code |
| router_request_duration_seconds | histogram | endpoint, deployment, kind |
| router_in_flight_requests | gauge | endpoint, deployment |
| router_queued_requests | gauge | endpoint, deployment |
| router_busy_instances | gauge | endpoint, deployment |
| router_instances | gauge | endpoint, deployment |
| router_deployment_utilization | gauge | endpoint, deployment |
| router_auth_failures_total | counter | endpoint, reason |
| router_config_reloads_total | counter | endpoint, source, result |
| router_shadow_comparisons_total | counter | endpoint, live, shadow, result |
| router_shadow_latency_delta_seconds | histogram | endpoint, live, shadow |

`kind` is `live` (the caller's request) or `mirror` (the background copy); `code` is the
status the router gave (for mirror copies: the status the caller *would* have had, e.g. 200,
424, 408, or 429 when the copy was dropped because the mirror deployment was full).
Requests refused before a deployment was chosen (401, 404) carry `deployment=""`.

Shadow comparison (compare.py): each mirrored copy whose live request and copy have both
ended counts once in router_shadow_comparisons_total, `live` the deployment that answered
the caller, `shadow` the mirror deployment, `result` one of `agree`, `disagree_status`,
`disagree_body`, `shadow_error`, `shadow_timeout`, `not_compared`. When both deployments
answered, router_shadow_latency_delta_seconds records the moment the shadow's answer came
minus the moment the live answer came (both requests leave together, so this is the
shadow's extra time; negative when the shadow was faster). Live requests that queued for
admission count their queueing, the copy never queues. Its buckets run from -10 s to 10 s;
having buckets below zero, it has no `_sum` with one worker (prometheus_client leaves it
out, as OpenMetrics asks; its multiprocess mode, with several workers, shows one): read it
with histogram_quantile or the bucket counts.

    router_deployment_utilization = in_flight / (instances x max_concurrent_requests_per_instance)

where in_flight counts the live and mirrored requests admitted to the deployment (waiting for
or being served by an instance; not the queued ones). 1.0 means every instance is working at
its configured concurrency; the admission limit sits at 2.0, so values above 1.0 mean that
requests queue inside the instances. The autoscaler compares it with
`target_utilization_percentage / 100`. 0 when the deployment has no instance.

Gauges are sampled every `SAMPLE_INTERVAL_S` by the router (not on each request: that keeps
the hot path to one counter and one histogram update).

Cost per request. With one worker the request counter and the duration histogram are not
updated on each request: `observe` adds to plain numbers (a count, a sum and one bucket of
the request's (deployment, kind, code)), and they go into prometheus_client's metrics when
the registry is collected (a scrape of /metrics, or any `generate_latest`), by a collector
registered before the metrics so that it runs first. A scrape therefore sees every request
answered before it, as before; what it saves is prometheus_client's per-call work (a lock
per value, the bucket search in Python), a few microseconds a request. With several workers
(multiprocess mode: the supervisor reads the workers' files, no collection runs in the
worker) every request is written through at once, as before.

Several workers (`--workers N`). Metrics use prometheus_client's multiprocess mode: every
worker writes its values to files in PROMETHEUS_MULTIPROC_DIR and the supervising process
serves the sum. Gauges are `livesum` (a dead worker's values vanish), except
router_instances (`livemax`: every worker sees every instance) and router_busy_instances
(`livemax`: a lower bound; an instance busy in two workers counts once per worker).
Utilisation sums correctly: each worker reports its own in-flight over the full capacity.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

SAMPLE_INTERVAL_S = 0.2
LIVE = "live"
MIRROR = "mirror"
_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    180.0,
)
# Shadow minus live: symmetric around 0, fine near it (same-speed models differ by ms).
_DELTA_BUCKETS = (
    *(-b for b in reversed(_BUCKETS[:13])),
    0.0,
    *_BUCKETS[:13],
)


_BOUNDS = (*_BUCKETS, float("inf"))


class _Pending:
    """The requests of one (deployment, kind, code) observed since the last collection, and
    the prometheus_client children they go to."""

    __slots__ = ("buckets", "count", "counter", "histogram", "total")

    def __init__(self, counter: Counter, histogram: Histogram) -> None:
        self.counter = counter
        self.histogram = histogram
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * len(_BOUNDS)


class _FlushOnCollect:
    """A collector without metrics of its own: collecting it moves the pending requests into
    the metrics (registered before them, so a scrape sees them)."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        self._metrics.flush()
        return []


class RouterMetrics:
    """The router's metric families, with label children cached for the hot path.

    `buffered` (one worker): requests are counted in plain numbers until the registry is
    collected (see the module's docstring); else written through on each request."""

    def __init__(
        self, endpoint: str, registry: CollectorRegistry, *, buffered: bool = True
    ) -> None:
        self.endpoint = endpoint
        self._pending: dict[tuple[str, str, int], _Pending] = {}
        self._buffered = buffered
        if buffered:
            registry.register(_FlushOnCollect(self))
        dep = ["endpoint", "deployment"]
        self.requests = Counter(
            "router_requests",
            "Requests answered by the router, by deployment, kind and status code.",
            [*dep, "kind", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "router_request_duration_seconds",
            "Time from the request's arrival to the router's answer.",
            [*dep, "kind"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "router_in_flight_requests",
            "Requests admitted to the deployment and not yet answered (live and mirror).",
            dep,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            "router_queued_requests",
            "Requests waiting for admission (at most max_queue_wait_ms).",
            dep,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.busy_instances = Gauge(
            "router_busy_instances",
            "Instances with at least one request in flight from the router.",
            dep,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.instances = Gauge(
            "router_instances",
            "Instances configured for the deployment.",
            dep,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.utilization = Gauge(
            "router_deployment_utilization",
            "in_flight / (instances x max_concurrent_requests_per_instance).",
            dep,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.auth_failures = Counter(
            "router_auth_failures",
            "Requests refused with 401, by reason (never shown to the caller).",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "router_config_reloads",
            "Configuration changes seen, by source (file, admin, signal) and result.",
            ["endpoint", "source", "result"],
            registry=registry,
        )
        self.shadow_comparisons = Counter(
            "router_shadow_comparisons",
            "Mirrored requests whose shadow answer was compared with the live answer, by result.",
            ["endpoint", "live", "shadow", "result"],
            registry=registry,
        )
        self.shadow_latency_delta = Histogram(
            "router_shadow_latency_delta_seconds",
            "Shadow's answer time minus the live deployment's, for the same request.",
            ["endpoint", "live", "shadow"],
            buckets=_DELTA_BUCKETS,
            registry=registry,
        )
        self._gauged: set[str] = set()

    def observe(self, deployment: str, kind: str, code: int, seconds: float) -> None:
        """One answered request (or mirrored copy): its count and its duration."""
        pending = self._pending.get((deployment, kind, code))
        if pending is None:
            pending = self._new_pending(deployment, kind, code)
        if self._buffered:
            pending.count += 1
            pending.total += seconds
            # prometheus_client's bucket: the first upper bound >= the value.
            pending.buckets[bisect.bisect_left(_BOUNDS, seconds)] += 1
        else:
            pending.counter.inc()
            pending.histogram.observe(seconds)

    def _new_pending(self, deployment: str, kind: str, code: int) -> _Pending:
        # The children are made at the first request, as before (their _created time).
        pending = _Pending(
            self.requests.labels(self.endpoint, deployment, kind, str(code)),
            self.duration.labels(self.endpoint, deployment, kind),
        )
        self._pending[(deployment, kind, code)] = pending
        return pending

    def flush(self) -> None:
        """Move the requests counted in plain numbers into the metrics."""
        for pending in self._pending.values():
            count = pending.count
            if not count:
                continue
            pending.count = 0
            pending.counter.inc(count)
            histogram = pending.histogram
            # prometheus_client keeps a histogram as a sum and per-bucket (not cumulative)
            # counts; observe() adds to one of each, as this does in bulk.
            histogram._sum.inc(pending.total)
            pending.total = 0.0
            buckets = pending.buckets
            for index, hits in enumerate(buckets):
                if hits:
                    histogram._buckets[index].inc(hits)
                    buckets[index] = 0

    def shadow_compared(
        self, live: str, shadow: str, result: str, delta_seconds: float | None
    ) -> None:
        """One comparison; `delta_seconds` None when either deployment gave no answer."""
        self.shadow_comparisons.labels(self.endpoint, live, shadow, result).inc()
        if delta_seconds is not None:
            self.shadow_latency_delta.labels(self.endpoint, live, shadow).observe(delta_seconds)

    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(self.endpoint, reason).inc()

    def config_reloaded(self, source: str, result: str) -> None:
        self.config_reloads.labels(self.endpoint, source, result).inc()

    def set_deployment(
        self,
        deployment: str,
        *,
        in_flight: int,
        queued: int,
        busy_instances: int,
        instances: int,
        capacity: int,
    ) -> None:
        labels = (self.endpoint, deployment)
        self._gauged.add(deployment)
        self.in_flight.labels(*labels).set(in_flight)
        self.queued.labels(*labels).set(queued)
        self.busy_instances.labels(*labels).set(busy_instances)
        self.instances.labels(*labels).set(instances)
        self.utilization.labels(*labels).set(in_flight / capacity if capacity else 0.0)

    def drop_deployments_except(self, names: set[str]) -> None:
        """A deployment left the config: its gauges go (counters stay, they are history)."""
        for gone in self._gauged - names:
            for gauge in (
                self.in_flight,
                self.queued,
                self.busy_instances,
                self.instances,
                self.utilization,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(self.endpoint, gone)
        self._gauged &= names
