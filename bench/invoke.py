"""Benchmark: `reconcile invoke` of one endpoint among many, beside the endpoint's own answer.

On the real Docker Engine, under a target name of its own (`bench-invoke-XXXX`): one
endpoint with one deployment (the tiny echo model of tests/repo_builder.py) and N-1
endpoints without deployments (a router each; default N = 20, `--short`: 5). Then, in turn:

- the endpoint's own answer: a POST with its key straight to its scoring URI (the reference);
- `reconcile invoke` as a user runs it: a new process, the target named in reconciler.yaml;
- in process, what invoke reads of the target: the one endpoint (observe_endpoint) against
  every endpoint (observe, what invoke read before).

Goal (issue 15): invoke within 0.3 s of the endpoint's own answer, however many endpoints
the target runs. Everything made is removed by its target label at the end (Ctrl-C and
SIGTERM too). Not a test: it gates nothing.

    .venv/bin/python bench/invoke.py [--endpoints 20] [--repeat 5] [--short]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pstats
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

import docker
import docker.errors
from docker_state import remove_target
from figures import compile_package, docker_available, emit, short_requested, skipped
from repo_builder import RepoBuilder

from reconciler.engine import converge
from reconciler.executor import Gate
from reconciler.gitsource import GitSource
from reconciler.targets.docker.options import DockerOptions
from reconciler.targets.docker.target import DockerTarget

BENCH = "invoke"
GOAL_S = 0.3
PORTS = (25000, 25999)  # no test or other benchmark uses these
ASKED = "inv-000"


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cpu_seconds(argv: list[str]) -> float:
    """User + system CPU seconds of one run of `argv` (its waited children included): on a
    machine shared with other work, wall time grows with the load and CPU time much less."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped above
    return usage.ru_utime + usage.ru_stime


def invoke_times(
    scoring_uri: str, key: str, body: bytes, argv: list[str], repeat: int
) -> tuple[list[float], list[float]]:
    """(the endpoint's own answers, `reconcile invoke` runs as `argv`), seconds each,
    interleaved so that a neighbour's load falls on both alike."""
    own: list[float] = []
    invoked: list[float] = []
    for _ in range(repeat):
        asked = urllib.request.Request(
            scoring_uri,
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            method="POST",
        )
        started = time.perf_counter()
        with urllib.request.urlopen(asked, timeout=60) as answer:
            answer.read()
        own.append(time.perf_counter() - started)
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        invoked.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"reconcile invoke failed: {done.stderr[-1000:]}")
    return own, invoked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--short", action="store_true", help="5 endpoints")
    args = parser.parse_args()
    n = 5 if short_requested() else max(2, args.endpoints)
    absent = docker_available()
    if absent is not None:
        skipped(BENCH, "reconcile invoke", absent)
        return
    print(compile_package())
    client = docker.from_env(timeout=300)
    name = f"bench-invoke-{secrets.token_hex(2)}"

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does

    signal.signal(signal.SIGTERM, terminated)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(name, n, args.repeat, Path(tmp))
    finally:
        print(f"removing everything labelled reconciler.target={name} ...", file=sys.stderr)
        remove_target(client, name)
        # Images it built, unless another container uses one (Docker refuses without force).
        for image in client.images.list(filters={"label": f"reconciler.target={name}"}):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id)


def run(name: str, n: int, repeat: int, tmp: Path) -> None:
    options = DockerOptions(
        name=name, state_dir=tmp / "state", router_port_range=PORTS, drain_s=0.2
    )
    repo = RepoBuilder(tmp / "repo")
    repo.basics()
    repo.environment(packages=())
    repo.code()
    repo.endpoint(ASKED, traffic={"blue": 100})
    repo.deployment(ASKED, "blue", instance_type="Standard_DS1_v2")
    for i in range(1, n):
        repo.endpoint(f"inv-{i:03d}")
    repo.write_yaml(
        "reconciler.yaml",
        {
            "targets": {
                name: {
                    "type": "docker",
                    "state_dir": str(options.state_dir),
                    "router_port_range": list(options.router_port_range),
                    "drain_s": options.drain_s,
                }
            },
            "default_target": name,
        },
    )
    repo.commit(f"{n} endpoints, one with a deployment")
    source = GitSource(repo.root)
    target = DockerTarget(options, repo_root=repo.root, repository=source.identity())
    print(f"target {name}: applying {n} endpoints ...", file=sys.stderr)
    result = converge(
        source.tree(source.resolve("HEAD")),
        target,
        prune=False,
        gate=Gate(timeout_s=1800, poll_s=0.5),
    )
    if result.failed or result.in_progress:
        raise SystemExit(f"apply did not converge: {result.plan.errors or result.results}")

    body = json.dumps({"data": [[1, 2]]}).encode()
    request_file = repo.root / "bench-request.json"
    request_file.write_bytes(body)
    live = target.observe_endpoint(ASKED).endpoint(ASKED)
    assert live is not None and live.scoring_uri is not None
    key = target.endpoint_credentials(ASKED).primary_key
    argv = [sys.executable, "-m", "reconciler.cli", "invoke", ASKED]
    argv += ["--repo", str(repo.root), "--request-file", str(request_file)]
    own, invoked = invoke_times(live.scoring_uri, key, body, argv, repeat)
    # One more, profiled: where a new process's time goes (bench/out/invoke.profile.txt).
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    profile = out / "invoke.profile"
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(profile), *argv[1:]],
        capture_output=True,
        check=False,
    )
    text = io.StringIO()
    stats = pstats.Stats(str(profile), stream=text).sort_stats("cumulative")
    stats.print_stats(40)
    (out / "invoke.profile.txt").write_text(text.getvalue())
    one = median_seconds(lambda: target.observe_endpoint(ASKED), repeat)
    every = median_seconds(target.observe, repeat)
    bare = median_seconds(
        lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), repeat
    )
    own_s, invoked_s = statistics.median(own), statistics.median(invoked)
    invoked_cpu = statistics.median(cpu_seconds(argv) for _ in range(repeat))
    bare_cpu = statistics.median(cpu_seconds([sys.executable, "-c", "pass"]) for _ in range(repeat))
    print(f"medians of {repeat}, {n} endpoints on the target")
    print(f"  the endpoint's own answer (POST with its key)   {own_s:.3f} s")
    print(
        f"  reconcile invoke (new process)                  {invoked_s:.3f} s "
        f"(+{invoked_s - own_s:.3f} s; goal <= +{GOAL_S} s: "
        f"{'met' if invoked_s - own_s <= GOAL_S else 'NOT met'})"
    )
    print(f"  python -c pass                                  {bare:.3f} s")
    print(
        f"  CPU time: reconcile invoke {invoked_cpu:.3f} s, python -c pass {bare_cpu:.3f} s "
        f"({invoked_cpu / bare_cpu:.1f}x)"
    )
    print(f"  in process: observe the one endpoint            {one:.3f} s")
    print(f"  in process: observe every endpoint (before)     {every:.3f} s")
    emit(
        BENCH,
        f"reconcile invoke (new process), 1 of {n} endpoints",
        invoked_s,
        "s",
        reference="the endpoint's own answer (POST with its key)",
        reference_value=own_s,
        goal=f"<= reference + {GOAL_S} s",
    )
    emit(
        BENCH,
        f"what invoke observes: the one endpoint, of {n}",
        one,
        "s",
        reference=f"observe of all {n} endpoints (what invoke read before)",
        reference_value=every,
    )
    emit(BENCH, "python -c pass", bare, "s")
    emit(
        BENCH,
        "reconcile invoke (new process), CPU time",
        invoked_cpu,
        "s",
        reference="python -c pass, CPU time",
        reference_value=bare_cpu,
    )


if __name__ == "__main__":
    main()
