"""The autoscaler of the Docker target: router utilisation in, scale steps out.

Every `polling_interval` it reads `router_deployment_utilization` from each endpoint's
router metrics (127.0.0.1), keeps a minute of samples per autoscaled deployment, asks
reconciler.autoscaling for a decision, and applies a scale step through the target itself
(holding the caller's lock, so it never applies while a pass does). Each decision that
changes the count is logged with its reason and kept for status.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from reconciler.autoscaling import DOWN_AFTER_S, Decision, Sample, decide
from reconciler.logs import get_logger
from reconciler.model.keys import ResourceKey
from reconciler.model.plan import ScaleDeployment, Step
from reconciler.model.state import LiveDeployment
from reconciler.targets.base import TargetError

log = get_logger("reconciler.autoscaler")

OBSERVE_EVERY_S = 5.0  # how often the list of autoscaled deployments is refreshed


class DockerAutoscaler:
    def __init__(
        self,
        target: Any,
        lock: threading.Lock,
        *,
        down_after_s: float = DOWN_AFTER_S,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self.lock = lock
        # Called after a scale step: instances it started are routed by the passes that
        # follow, once ready (a scale step never waits for them).
        self.wake = wake
        self.down_after_s = down_after_s
        self.samples: dict[ResourceKey, deque[Sample]] = defaultdict(lambda: deque(maxlen=2000))
        self.deployments: list[LiveDeployment] = []
        self._observed_at = -1e9
        self.decisions: list[tuple[ResourceKey, Decision]] = []
        self.last_error: str | None = None

    def tick(self, now: float | None = None) -> None:
        """One round: sample, decide, maybe scale. Never raises (it runs beside passes)."""
        now = time.monotonic() if now is None else now
        try:
            if now - self._observed_at >= OBSERVE_EVERY_S:
                with self.lock:
                    live = self.target.observe()
                self.deployments = [
                    d for d in live.deployments if d.scale_settings.autoscaled and d.spec
                ]
                self._observed_at = now
            for endpoint in sorted({d.endpoint for d in self.deployments}):
                self._sample(endpoint, now)
            for deployment in self.deployments:
                self._decide(deployment, now)
        except (TargetError, OSError) as exc:
            self.last_error = str(exc)
            log.warning("autoscaler_tick_failed", error=str(exc))
        except Exception as exc:
            self.last_error = repr(exc)
            log.exception("autoscaler_tick_crashed", error=repr(exc))

    def interval(self) -> float:
        """The shortest polling_interval of the autoscaled deployments (1 s by default)."""
        values = [d.scale_settings.polling_interval or 1 for d in self.deployments]
        return float(min(values, default=1))

    def _sample(self, endpoint: str, now: float) -> None:
        ports = self.target.router_ports(endpoint)
        if ports is None:
            return
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{ports[1]}/metrics", timeout=2
            ) as answer:
                text = answer.read().decode()
        except (urllib.error.URLError, OSError):
            return
        utilization: dict[str, float] = {}
        instances: dict[str, int] = {}
        # Imported here: only a running autoscaler parses metrics, and the import costs
        # every other command of the Docker target (invoke, logs) its start-up.
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.labels.get("deployment", "")
                if sample.name == "router_deployment_utilization":
                    utilization[name] = float(sample.value)
                elif sample.name == "router_instances":
                    instances[name] = int(sample.value)
        for d in self.deployments:
            if d.endpoint == endpoint and d.name in utilization:
                count = instances.get(d.name, d.instance_count)
                self.samples[d.key].append(Sample(now, utilization[d.name], count))

    def _decide(self, deployment: LiveDeployment, now: float) -> None:
        decision = decide(
            list(self.samples[deployment.key]),
            deployment.scale_settings,
            current=deployment.instance_count,
            now=now,
            down_after_s=self.down_after_s,
        )
        if not decision.changes(deployment.instance_count) or deployment.spec is None:
            return  # (only deployments with a spec are autoscaled: see tick)
        log.info(
            "autoscale",
            endpoint=deployment.endpoint,
            deployment=deployment.name,
            instances=decision.instances,
            reason=decision.reason,
        )
        step = Step(
            ScaleDeployment(deployment.spec, decision.instances, deployment.scale_settings),
            deployment.endpoint,
            deployment.name,
            reason=f"autoscale: {decision.reason}",
        )
        with self.lock:
            self.target.apply(step)
        if self.wake is not None:
            self.wake()
        self.decisions.append((deployment.key, decision))
        self._record(deployment, decision)
        self.samples[deployment.key].clear()  # a new count: judge it on fresh samples
        self._observed_at = -1e9  # observe the new count on the next tick

    def _record(self, deployment: LiveDeployment, decision: Decision) -> None:
        self.target.record_autoscale(
            deployment.endpoint,
            deployment.name,
            {"instances": decision.instances, "reason": decision.reason},
        )
