"""Benchmark of the daemon's dashboard: page load times for many endpoints, and the memory
the dashboard adds to the daemon.

A git repository in a temporary folder declares N endpoints (two deployments each); the
daemon runs on the in-memory target in a process of its own, once without the dashboard
and once with it (`ui_port`), and its resident memory is read after its first pass (and,
with the dashboard, after the pages were loaded): the difference is the memory the
dashboard adds, the daemon without it its reference. With the dashboard, the GETs' times
and each page's load in headless Chromium (navigation to load event; bench/pageload.py).
Prints figures (FIGURE lines too); not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pageload
from figures import emit, short_requested, skipped
from repo_builder import RepoBuilder

from reconciler import logs
from reconciler.daemon import Daemon, LocalSource, WatchOptions
from reconciler.targets.memory import MemoryTarget

BENCH = "ui_daemon"
PAGES = ("/", "/api/endpoints", "/endpoints/endpoint-000", "/api/live")
BROWSER_PAGES = ("/", "/endpoints/endpoint-000")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _timed(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def run_daemon(repo: Path, *, ui: bool, repeat: int) -> None:
    """In this process: the daemon, its first pass, the pages (HTTP, then a browser's load
    of each); prints figures for people and one RESULT line for main()."""
    logs.configure(fmt="json", level="warning")  # the pass's lines would drown the figures
    daemon = Daemon(
        LocalSource(repo, worktree=False, build_dir=repo.parent / "build"),
        MemoryTarget(),
        WatchOptions(interval_s=3600.0, ui_port=0 if ui else None),
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    while daemon.recorder.finished_at() is None:
        time.sleep(0.05)
    result: dict[str, object] = {"ui": ui, "pages": {}, "browser": {}}
    if ui:
        assert daemon.ui_url is not None
        base = daemon.ui_url.rstrip("/")
        for path in PAGES:
            cold = _timed(base + path)
            warm = [_timed(base + path) for _ in range(repeat)]
            result["pages"][path] = (cold * 1000, statistics.median(warm) * 1000)  # type: ignore[index]
            print(
                f"daemon dashboard GET {path}: cold {cold * 1000:.0f} ms, "
                f"warm median {statistics.median(warm) * 1000:.0f} ms",
                flush=True,
            )
        why = pageload.missing()
        if why is None:
            urls = [base + path for path in BROWSER_PAGES]
            for url, (first, later) in pageload.load_times(urls, repeat).items():
                path = url[len(base) :]
                result["browser"][path] = (first, statistics.median(later))  # type: ignore[index]
                print(
                    f"daemon dashboard {path} in Chromium, navigation to load event: first "
                    f"{first:.0f} ms, then median {statistics.median(later):.0f} ms",
                    flush=True,
                )
        else:
            result["browser_missing"] = why
            print(f"no browser load times: {why}", flush=True)
    result["rss_mib"] = _rss_mib()
    print(f"daemon {'with' if ui else 'without'} dashboard: {_rss_mib():.0f} MiB resident")
    print("RESULT " + json.dumps(result), flush=True)
    daemon.stop()
    thread.join(30)


def _child(repo: Path, mode: str, repeat: int) -> dict[str, Any]:
    """run_daemon in a process of its own (resident memory is per process)."""
    run = subprocess.run(
        [sys.executable, __file__, "--run", mode, "--repo", str(repo), "--repeat", str(repeat)],
        check=True,
        capture_output=True,
        text=True,
    )
    found: dict[str, Any] = {}
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            found = json.loads(line[len("RESULT ") :])
        elif not line.startswith("{"):  # a warning the daemon logged, as JSON
            print(line, flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--short", action="store_true", help="3 warm requests per page")
    parser.add_argument("--run", choices=["ui", "plain"], default=None)
    parser.add_argument("--repo", default=None)
    args = parser.parse_args()
    if args.run:
        run_daemon(Path(args.repo), ui=args.run == "ui", repeat=args.repeat)
        return
    if short_requested():
        args.repeat = 3
    with tempfile.TemporaryDirectory() as tmp:
        repo = RepoBuilder(Path(tmp) / "repo")
        repo.basics()
        for i in range(args.endpoints):
            name = f"endpoint-{i:03d}"
            repo.endpoint(name, traffic={"blue": 90, "green": 10}, description=f"{name} scores")
            repo.deployment(name, "blue")
            repo.deployment(name, "green")
        repo.commit("endpoints")
        print(f"{args.endpoints} endpoints", flush=True)
        plain = _child(repo.root, "plain", args.repeat)
        ui = _child(repo.root, "ui", args.repeat)
    n = args.endpoints
    added = ui["rss_mib"] - plain["rss_mib"]
    print(f"the dashboard adds {added:.0f} MiB to the daemon ({plain['rss_mib']:.0f} MiB without)")
    emit(
        BENCH,
        f"resident memory the dashboard adds to the daemon, {n} endpoints",
        added,
        "MiB",
        reference="the daemon without the dashboard (same run)",
        reference_value=plain["rss_mib"],
    )
    for path, (cold, warm) in ui["pages"].items():
        emit(
            BENCH,
            f"daemon dashboard GET {path.replace('endpoint-000', 'ENDPOINT')}, {n} endpoints, warm",
            warm,
            "ms",
            reference="the same GET cold (first)",
            reference_value=cold,
            goal="< 1000 ms" if path == "/" else "",
        )
    for path, (first, later) in ui["browser"].items():
        emit(
            BENCH,
            f"daemon dashboard {path.replace('endpoint-000', 'ENDPOINT')} in Chromium, "
            f"{n} endpoints, navigation to load event",
            later,
            "ms",
            reference="the same page's first load in that browser",
            reference_value=first,
            goal="< 1000 ms",
        )
    if not ui["browser"]:
        skipped(BENCH, "daemon dashboard load in Chromium", str(ui.get("browser_missing")))


if __name__ == "__main__":
    main()
