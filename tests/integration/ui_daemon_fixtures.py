"""Shared by the daemon dashboard's tests: a router that is a real loopback HTTP server the
test controls (its /metrics is the exposition of the router's own metric classes, its /score
answers and records what it was sent), the in-memory target with that router, log lines
and a step that can be held running, and the daemon serving its dashboard in a thread."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from repo_builder import RepoBuilder
from ui_fixtures import XSS
from waiting import wait_for

from reconciler.daemon import Daemon, LocalSource, WatchOptions
from reconciler.model.plan import Step
from reconciler.model.results import Waiting
from reconciler.model.state import LiveState
from reconciler.router.metrics import RouterMetrics
from reconciler.targets.base import ProgressCallback, TargetError
from reconciler.targets.capabilities import HasLogs, HasRouterMetrics
from reconciler.targets.memory import MemoryTarget

KEY = "k3y-typed-by-a-person-0123456789"


class FakeRouter:
    """A router on 127.0.0.1: /metrics from RouterMetrics, /score answers and records."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = RouterMetrics("my-endpoint", self.registry)
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        router = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with router.lock:
                    body = generate_latest(router.registry)
                self._send(200, body, "text/plain; version=0.0.4")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                pinned = self.headers.get("azureml-model-deployment")
                router.received.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                        "pinned": pinned,
                        "body": body.decode(),
                    }
                )
                answer = json.dumps({"echo": json.loads(body), "note": XSS}).encode()
                self.send_response(200)
                self.send_header("azureml-model-deployment", pinned or "blue")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def traffic(self) -> None:
        """One burst, counted between two readings as a whole (the lock)."""
        with self.lock:
            for _ in range(100):
                self.metrics.observe("blue", "live", 200, 0.02)
            for _ in range(10):
                self.metrics.observe("blue", "live", 500, 0.02)
            for _ in range(30):
                self.metrics.observe("green", "mirror", 200, 0.05)


@dataclass
class RoutedMemoryTarget(MemoryTarget):
    """The in-memory target, its endpoints served by the fake router; logs of instances
    that print an XSS attempt. A step can be held running (`hold`) to see it live."""

    router: FakeRouter | None = None
    hold: threading.Event | None = None
    held: threading.Event = field(default_factory=threading.Event)

    def snapshot(self) -> LiveState:
        state = super().snapshot()
        assert self.router is not None
        return replace(
            state,
            endpoints=tuple(
                replace(e, scoring_uri=f"{self.router.url}/score") for e in state.endpoints
            ),
        )

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> Waiting | None:
        if self.hold is not None and step.action == "create_deployment":
            if progress is not None:
                progress(f"building image of {step.deployment}: layer 2/3")
            self.held.set()
            self.hold.wait(30)
        return super().apply(step, progress=progress)

    def router_metrics(self, endpoint: str) -> str:
        assert self.router is not None
        try:
            with urllib.request.urlopen(f"{self.router.url}/metrics", timeout=5) as answer:
                return str(answer.read().decode())
        except OSError as exc:
            raise TargetError(str(exc)) from None

    def logs(
        self, endpoint: str, deployment: str, *, instance: int | None = None, lines: int = 100
    ) -> str:
        return f"==> {endpoint}-{deployment}-0 <==\nscored a request {XSS}\n"


_CLAIMS_METRICS: type[HasRouterMetrics] = RoutedMemoryTarget
_CLAIMS_LOGS: type[HasLogs] = RoutedMemoryTarget


@dataclass
class Served:
    daemon: Daemon
    router: FakeRouter
    target: RoutedMemoryTarget
    base: str
    repo: RepoBuilder


def blue_green(repo: RepoBuilder) -> str:
    repo.basics()
    repo.model(version=2, weights="2")
    repo.endpoint("my-endpoint", traffic={"blue": 100}, mirror={"green": 20})
    repo.deployment("my-endpoint", "blue")
    repo.deployment("my-endpoint", "green", model="azureml:sklearn-regression:2")
    return repo.commit("blue serves, green mirrored")


@pytest.fixture(name="serve")
def serve_fixture(repo: RepoBuilder, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    made: list[tuple[Daemon, threading.Thread]] = []
    holds: list[threading.Event] = []

    def make(
        *, token: str | None = None, hold: threading.Event | None = None, prune: bool = False
    ) -> Served:
        router = FakeRouter()
        if hold is not None:
            holds.append(hold)
        target = RoutedMemoryTarget(router=router, hold=hold)
        daemon = Daemon(
            LocalSource(repo.root, worktree=False, build_dir=tmp_path / "build"),
            target,
            WatchOptions(interval_s=60.0, ui_port=0, ui_token=token, ui_metrics_s=0.2, prune=prune),
        )
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        made.append((daemon, thread))
        url = wait_for(lambda: daemon.ui_url, what="the dashboard")
        return Served(daemon, router, target, url.rstrip("/"), repo)

    yield make
    for hold in holds:
        hold.set()
    for daemon, thread in made:
        daemon.stop()
        thread.join(30)
        assert not thread.is_alive()
