"""Reads each endpoint's router /metrics every few seconds for the daemon's charts.

The daemon's target reads them (targets.capabilities.HasRouterMetrics: the Docker target
asks the router's metrics port on 127.0.0.1); the last readings of each endpoint are kept
in memory (reconciler.ui.charts turns two in a row into one point). `version` grows when
the newest points change, so the pages' event stream tells browsers to redraw only then.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from reconciler.logs import get_logger
from reconciler.targets.capabilities import HasRouterMetrics
from reconciler.ui import charts
from reconciler.ui.live import DaemonFeatures

log = get_logger("reconciler.ui")


class MetricsSampler:
    def __init__(
        self,
        features: DaemonFeatures,
        *,
        run_blocking: Callable[..., Awaitable[Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.features = features
        self.run_blocking = run_blocking
        self.clock = clock
        self.version = 0
        self._scrapes: dict[str, deque[charts.Scrape]] = {}
        self._problems: dict[str, str] = {}
        self._latest: dict[str, Any] = {}

    def endpoints(self) -> list[str]:
        """The endpoints the daemon's last pass saw on the target."""
        live = self.features.recorder.live_state()
        if live is not None:
            return [e.name for e in live.endpoints]
        reported = self.features.recorder.documents()
        return sorted(reported[0]) if reported is not None else []

    async def run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception as exc:  # a reading that fails must not end the charts
                log.warning("ui_metrics_failed", error=str(exc))
            await asyncio.sleep(self.features.metrics_s)

    async def sample_once(self) -> None:
        target = self.features.target()
        if not isinstance(target, HasRouterMetrics):
            return
        names = self.endpoints()
        for gone in set(self._scrapes) - set(names):
            del self._scrapes[gone]
        for name in names:
            try:
                text: str = await self.run_blocking(target.router_metrics, name)
                scrape = charts.parse(text, at=self.clock())
            except Exception as exc:  # TargetError, a router's garbage: shown on the page
                self._problems[name] = f"the router's metrics could not be read: {exc}"
                continue
            self._problems.pop(name, None)
            kept = self._scrapes.setdefault(name, deque(maxlen=self.features.metrics_keep + 1))
            kept.append(scrape)
            newest = {d: points[-1] for d, points in charts.series(list(kept)[-2:]).items()}
            # Time moves every reading; what is drawn changes only when a figure does.
            figures = {d: {k: v for k, v in p.items() if k != "t"} for d, p in newest.items()}
            if figures != self._latest.get(name):
                self._latest[name] = figures
                self.version += 1

    def data(self, endpoint: str) -> dict[str, Any]:
        """`GET /api/endpoints/NAME/metrics`: each deployment's points, oldest first."""
        target = self.features.target()
        problem = self._problems.get(endpoint)
        if not isinstance(target, HasRouterMetrics):
            problem = "this target does not expose its routers' metrics"
        return {
            "endpoint": endpoint,
            "interval_s": self.features.metrics_s,
            "problem": problem,
            "deployments": charts.series(list(self._scrapes.get(endpoint, ()))),
        }
