"""Benchmark of the dashboard: page load times and memory for many endpoints.

A git repository in a temporary folder declares N endpoints (two deployments each, 90/10
traffic); one pass on the in-memory target writes their status, a second moves traffic
(so each endpoint has a history of two). Then `reconcile ui` runs as its own process and
serves it: the time of the first (cold) and later (warm) GETs of the overview, the JSON
API and an endpoint page, the load of the overview and an endpoint page in headless
Chromium (navigation to load event; bench/pageload.py), and the process's resident memory
after them.
Prints figures; goal: the overview of 100 endpoints in under 1 s warm.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

import pageload
from figures import emit, short_requested, skipped
from repo_builder import RepoBuilder
from status_fixtures import apply_head

from reconciler import logs
from reconciler.targets.memory import MemoryTarget

BENCH = "ui"


def _timed(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--short", action="store_true", help="3 warm requests per page")
    args = parser.parse_args()
    if short_requested():
        args.repeat = 3
    logs.configure(fmt="json", level="warning")  # the passes' lines would drown the figures
    with tempfile.TemporaryDirectory() as tmp:
        repo = RepoBuilder(Path(tmp) / "repo")
        repo.basics()
        names = [f"endpoint-{i:03d}" for i in range(args.endpoints)]
        for name in names:
            repo.endpoint(name, traffic={"blue": 90, "green": 10}, description=f"{name} scores")
            repo.deployment(name, "blue")
            repo.deployment(name, "green")
        repo.commit("endpoints")
        target = MemoryTarget()
        apply_head(repo, target, must_succeed=False)
        for name in names:
            repo.endpoint(name, traffic={"blue": 50, "green": 50}, description=f"{name} scores")
        repo.commit("half and half")
        apply_head(repo, target, must_succeed=False)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from reconciler.cli import main; main()",
                "ui",
                "--repo",
                str(repo.root),
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert process.stdout is not None
            found = re.search(r"at (http://\S+)", process.stdout.readline())
            assert found
            base = found.group(1).rstrip("/")
            for path in ("/", "/api/endpoints", f"/endpoints/{names[0]}"):
                cold = _timed(base + path)
                warm = [_timed(base + path) for _ in range(args.repeat)]
                print(
                    f"{args.endpoints} endpoints GET {path}: cold {cold * 1000:.0f} ms, "
                    f"warm median {statistics.median(warm) * 1000:.0f} ms"
                )
                emit(
                    BENCH,
                    f"GET {path.replace(names[0], 'ENDPOINT')}, {args.endpoints} endpoints, warm",
                    statistics.median(warm) * 1000,
                    "ms",
                    reference="the same GET cold (first)",
                    reference_value=cold * 1000,
                    goal="< 1000 ms" if path == "/" else "",
                )
            why = pageload.missing()
            if why is None:
                urls = [base + "/", base + f"/endpoints/{names[0]}"]
                for url, (first, later) in pageload.load_times(urls, args.repeat).items():
                    path = url[len(base) :]
                    print(
                        f"{args.endpoints} endpoints {path} in Chromium, navigation to load "
                        f"event: first {first:.0f} ms, then median "
                        f"{statistics.median(later):.0f} ms"
                    )
                    emit(
                        BENCH,
                        f"{path.replace(names[0], 'ENDPOINT')} in Chromium, {args.endpoints} "
                        "endpoints, navigation to load event",
                        statistics.median(later),
                        "ms",
                        reference="the same page's first load in that browser",
                        reference_value=first,
                        goal="< 1000 ms",
                    )
            else:
                skipped(BENCH, "page load in Chromium", why)
            rss_kb = next(
                int(line.split()[1])
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
            print(f"reconcile ui resident memory: {rss_kb / 1024:.0f} MiB")
            emit(BENCH, "reconcile ui resident memory", rss_kb / 1024, "MiB")
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
