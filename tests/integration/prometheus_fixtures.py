"""A real Prometheus server for the tests of rollouts that read their figures there.

`/usr/bin/prometheus` (Debian's `prometheus` package, installed by `make setup` as an
optional package) runs on 127.0.0.1 on a free port, with its configuration and its TSDB in
the test's temporary folder and a scrape interval of SCRAPE_S, scraping the metrics ports
the test names. Tests that need it skip with the reason when the binary is absent. The
Debian service of the package (port 9090) is never used or touched.

Prometheus 2 sends discovered targets to its scrapers every 5 s, so a target's first scrape
comes about 5 s after the server starts: tests start the server first, on a metrics port
picked for the router (`free_port`), and the router after it, so that the wait runs
alongside the rest of their setup.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

SCRAPE_S = 0.5
BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"


def have_prometheus() -> bool:
    return Path(BINARY).is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """/usr/bin/prometheus scraping `targets` (host:port of /metrics) every SCRAPE_S."""

    def __init__(self, folder: Path, targets: Sequence[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        config = folder / "prometheus.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "global": {
                        "scrape_interval": f"{round(SCRAPE_S * 1000)}ms",
                        "scrape_timeout": "400ms",
                    },
                    "scrape_configs": [
                        {"job_name": "router", "static_configs": [{"targets": list(targets)}]}
                    ],
                }
            )
        )
        self.log = folder / "prometheus.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [
                    BINARY,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )
        try:
            self._wait_ready(30)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("prometheus exited:\n" + self.log.read_text()[-3000:])
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.address}/-/ready", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("prometheus not ready:\n" + self.log.read_text()[-3000:])

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The samples of an instant query (for the test's own waiting, not the code's)."""
        url = f"{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as answer:
            doc = json.load(answer)
        assert doc["status"] == "success", doc
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        samples = self.query(expr)
        return float(samples[0]["value"][1]) if samples else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(name="start_prometheus")
def start_prometheus_fixture(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    if not have_prometheus():
        pytest.skip("no prometheus binary (Debian package `prometheus`; `make setup` installs it)")
    started: list[PrometheusServer] = []

    def start(targets: Sequence[str]) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(started)}", targets)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
