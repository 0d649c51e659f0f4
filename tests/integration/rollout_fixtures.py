"""A router's metrics the test controls, served over a real socket, and the memory target
that reads them (HasRouterMetrics): for tests of rollouts where the platform is not what is
being tested."""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest

from reconciler.router.metrics import RouterMetrics
from reconciler.targets.capabilities import HasRouterMetrics
from reconciler.targets.memory import MemoryTarget

ENDPOINT = "my-endpoint"


class MetricsServer:
    """A router's /metrics on 127.0.0.1, written by the router's own metrics code
    (reconciler.router.metrics.RouterMetrics). Every scrape first serves `per_scrape` more
    requests to each deployment (live and mirrored copies), `errors[deployment]` of them
    answered 500, and compares as many mirrored copies of green with blue's live answers,
    `disagree` of them differing."""

    def __init__(self, per_scrape: int = 10) -> None:
        self.per_scrape = per_scrape
        self.errors: dict[str, float] = {}
        self.disagree = 0.0
        self.registry = CollectorRegistry()
        self.metrics = RouterMetrics(ENDPOINT, self.registry)
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.scrape()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll: shutdown() waits for the next one (0.5 s by default).
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def scrape(self) -> bytes:
        with self.lock:
            for deployment in ("blue", "green"):
                failed = round(self.per_scrape * self.errors.get(deployment, 0.0))
                for kind in ("live", "mirror"):
                    for n in range(self.per_scrape):
                        code = 500 if n < failed else 200
                        self.metrics.observe(deployment, kind, code, 0.02)
            differ = round(self.per_scrape * self.disagree)
            for n in range(self.per_scrape):
                result = "disagree_body" if n < differ else "agree"
                self.metrics.shadow_compared("blue", "green", result, 0.001)
            return generate_latest(self.registry)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class MetricsTarget(MemoryTarget):
    """The memory target whose router's metrics are the MetricsServer's."""

    metrics_url: str = ""
    scrapes: list[float] = field(default_factory=list)

    def router_metrics(self, endpoint: str) -> str:
        self.scrapes.append(time.monotonic())
        with urllib.request.urlopen(self.metrics_url, timeout=5) as answer:
            return str(answer.read().decode())


_CLAIMS: type[HasRouterMetrics] = MetricsTarget
