"""Benchmark of the daemon: trigger latency, idle CPU and memory.

- commit -> pass start: a daemon (in-process, in-memory target) on a git repository in a
  temporary folder; each commit's `git commit` return time to the start of its pass.
- webhook -> pass start: the same through a bare remote and a signed GitHub-style webhook.
- idle: `reconcile watch` as its own process on a copy of example-repo with the Docker
  target (images cached by an earlier run), CPU over 60 s once idle, and resident memory.
Prints figures; goals: <= 300 ms for both latencies, < 1% of a core idle.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from figures import docker_available, emit, short_requested, skipped
from repo_builder import RepoBuilder

from reconciler import logs
from reconciler.daemon import Daemon, LocalSource, RemoteSource, WatchOptions
from reconciler.targets.memory import MemoryTarget

BENCH = "daemon"


def _repo(root: Path) -> RepoBuilder:
    r = RepoBuilder(root)
    r.basics()
    r.endpoint("bench-ep", traffic={"blue": 100})
    r.deployment("bench-ep", "blue")
    r.commit("base")
    return r


def _wait(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.002)
    raise SystemExit("timed out")


def commit_latency(tmp: Path, rounds: int) -> list[float]:
    repo = _repo(tmp / "local")
    daemon = Daemon(
        LocalSource(repo.root, worktree=False, build_dir=tmp / "build"),
        MemoryTarget(),
        WatchOptions(interval_s=3600),
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    _wait(lambda: daemon.state.last_success is not None)
    out = []
    for i in range(rounds):
        repo.deployment("bench-ep", "blue", instance_count=2 + i % 3)
        repo.git("add", "-A")
        before = len(daemon.pass_starts)
        repo.git("commit", "-q", "-m", f"change {i}")
        done = time.monotonic()
        _wait(lambda before=before: len(daemon.pass_starts) > before)
        out.append(daemon.pass_starts[before] - done)
        _wait(lambda: daemon.state.phase == "idle")
        time.sleep(0.2)
    daemon.stop()
    thread.join()
    return out


def webhook_latency(tmp: Path, rounds: int) -> list[float]:
    repo = _repo(tmp / "hooked")
    remote = tmp / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo.root), str(remote)], check=True)
    secret = "bench"
    daemon = Daemon(
        RemoteSource(str(remote), branch="main", cache_dir=tmp / "cache"),
        MemoryTarget(),
        WatchOptions(interval_s=3600, webhook_port=0, webhook_secret=secret),
    )
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    _wait(lambda: daemon.state.last_success is not None and daemon.ports)
    port = daemon.ports[0]
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    out = []
    for _ in range(rounds):
        before = len(daemon.pass_starts)
        sent = time.monotonic()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/",
            data=body,
            headers={"X-Hub-Signature-256": signature, "X-GitHub-Event": "push"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=5).read()
        _wait(lambda before=before: len(daemon.pass_starts) > before)
        out.append(daemon.pass_starts[before] - sent)
        _wait(lambda: daemon.state.phase == "idle")
        time.sleep(0.2)
    daemon.stop()
    thread.join()
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_cost(tmp: Path, seconds: int) -> tuple[float, float] | None:
    example = Path(__file__).resolve().parent.parent / "example-repo"
    repo = tmp / "idle"
    shutil.copytree(example, repo)
    # A target of its own: nothing the benchmark does touches another run's endpoints.
    (repo / "reconciler.yaml").write_text(
        "targets:\n  bench-idle:\n    type: docker\n    router_port_range: [18900, 18999]\n"
        "default_target: bench-idle\n"
    )
    for args in (["init", "-q", "-b", "main"], ["add", "-A"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-q", "-m", "x"],
        cwd=repo,
        check=True,
    )
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "--log-format",
            "json",
            "watch",
            "--repo",
            str(repo),
            "--interval",
            "30",
            "--metrics-port",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 900
        for line in process.stderr:
            if '"pass_finished"' in line:
                break
            if time.monotonic() > deadline or process.poll() is not None:
                print("the daemon did not finish its first pass; idle figures skipped")
                return None
        threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # type: ignore[union-attr]
        time.sleep(2)
        start_cpu, started = _cpu_seconds(process.pid), time.monotonic()
        time.sleep(seconds)
        cpu = _cpu_seconds(process.pid) - start_cpu
        share = cpu / (time.monotonic() - started)
        return share, _rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
        subprocess.run(
            [
                "docker",
                "rm",
                "-f",
                *subprocess.run(
                    [
                        "docker",
                        "ps",
                        "-aq",
                        "--filter",
                        "label=reconciler.target=bench-idle",
                        "--filter",
                        "label=reconciler.endpoint=my-endpoint",
                    ],
                    capture_output=True,
                    text=True,
                ).stdout.split(),
            ],
            capture_output=True,
        )
        subprocess.run(
            ["docker", "network", "prune", "-f", "--filter", "label=reconciler.target=bench-idle"],
            capture_output=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument("--short", action="store_true", help="5 rounds, 30 s idle")
    args = parser.parse_args()
    if short_requested():
        # 30 s: one whole pass interval of the idle daemon. A shorter window holds one
        # pass or none by chance, so its share of a core read 0% or several times the mean.
        args.rounds, args.idle_seconds = 5, 30
    logs.configure(fmt="json", level="warning")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        commits = commit_latency(tmp, args.rounds)
        hooks = webhook_latency(tmp, args.rounds)

        def line(label: str, values: list[float]) -> str:
            ms = sorted(v * 1000 for v in values)
            p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
            median = statistics.median(ms)
            return f"{label}: median {median:.0f} ms, p95 {p95:.0f} ms, max {ms[-1]:.0f} ms"

        print(line(f"commit -> pass start ({args.rounds} commits)", commits))
        print(line(f"webhook -> pass start ({args.rounds} webhooks)", hooks))
        for label, values in (("commit", commits), ("webhook", hooks)):
            emit(
                BENCH,
                f"{label} -> pass start, median of {args.rounds}",
                statistics.median(values) * 1000,
                "ms",
                goal="<= 300 ms",
            )
        why = docker_available()
        if not args.skip_idle and why is not None:
            print(f"idle figures need Docker: {why}")
            skipped(BENCH, "idle daemon (example-repo on Docker)", why)
        elif not args.skip_idle:
            idle = idle_cost(tmp, args.idle_seconds)
            if idle is not None:
                share, rss = idle
                cpu = f"{share * 100:.2f}% of a core"
                print(f"idle over {args.idle_seconds} s: {cpu}, RSS {rss:.0f} MB")
                emit(
                    BENCH,
                    f"idle CPU over {args.idle_seconds} s",
                    share * 100,
                    "% of a core",
                    goal="< 1%",
                )
                emit(BENCH, "idle resident memory", rss, "MB")


if __name__ == "__main__":
    main()
