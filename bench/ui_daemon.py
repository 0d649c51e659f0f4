"""Benchmark of the daemon's dashboard: page load times for many endpoints, and the memory
the dashboard adds to the daemon.

A git repository in a temporary folder declares N endpoints (two deployments each); the
daemon runs on the in-memory target in a process of its own, once without the dashboard
and once with it (`ui_port`), and its resident memory is read after its first pass (and,
with the dashboard, after the pages were loaded). Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from repo_builder import RepoBuilder

from reconciler.daemon import Daemon, LocalSource, WatchOptions
from reconciler.targets.memory import MemoryTarget


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
    """In this process: the daemon, its first pass, the pages; prints figures."""
    daemon = Daemon(
        LocalSource(repo, worktree=False, build_dir=repo.parent / "build"),
        MemoryTarget(),
        WatchOptions(interval_s=3600.0, ui_port=0 if ui else None),
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    while daemon.recorder.finished_at() is None:
        time.sleep(0.05)
    if ui:
        assert daemon.ui_url is not None
        base = daemon.ui_url.rstrip("/")
        for path in ("/", "/api/endpoints", "/endpoints/endpoint-000", "/api/live"):
            cold = _timed(base + path)
            warm = [_timed(base + path) for _ in range(repeat)]
            print(
                f"daemon dashboard GET {path}: cold {cold * 1000:.0f} ms, "
                f"warm median {statistics.median(warm) * 1000:.0f} ms"
            )
    print(f"daemon {'with' if ui else 'without'} dashboard: {_rss_mib():.0f} MiB resident")
    daemon.stop()
    thread.join(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--run", choices=["ui", "plain"], default=None)
    parser.add_argument("--repo", default=None)
    args = parser.parse_args()
    if args.run:
        run_daemon(Path(args.repo), ui=args.run == "ui", repeat=args.repeat)
        return
    with tempfile.TemporaryDirectory() as tmp:
        repo = RepoBuilder(Path(tmp) / "repo")
        repo.basics()
        for i in range(args.endpoints):
            name = f"endpoint-{i:03d}"
            repo.endpoint(name, traffic={"blue": 90, "green": 10}, description=f"{name} scores")
            repo.deployment(name, "blue")
            repo.deployment(name, "green")
        repo.commit("endpoints")
        print(f"{args.endpoints} endpoints")
        for mode in ("plain", "ui"):
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--run",
                    mode,
                    "--repo",
                    str(repo.root),
                    "--repeat",
                    str(args.repeat),
                ],
                check=True,
            )


if __name__ == "__main__":
    main()
