"""Many endpoints on one Docker host: apply time, memory per container, idle pass time.

On the real Docker Engine, under a target name of its own (`bench-many-XXXX`), a repository
of N endpoints (default 50; `--short`: 5) with two deployments each (blue 100 %, green 0 %,
one instance each, the tiny echo model of tests/repo_builder.py):

1. the first endpoint alone is applied (its images are built or found: the reference),
   then, once Docker calls its instances healthy (settled), idle passes over that one
   endpoint are timed (the reference of step 4), with their Docker API requests;
2. the other N-1 are committed at once and applied by `converge`, as `reconcile` does:
   the total and the time per endpoint;
3. memory of each router and each instance as `docker stats` shows it (usage less inactive
   file cache) and anonymous memory (what RSS counts), read with one-shot stats; beside
   them a bare `python -c` sleeping in the router's image;
4. the daemon's idle pass (observe + plan, nothing to change) with all N present and
   settled, run in process as `reconcile watch` runs it, with its Docker API requests and
   the host's load average: the median of `--passes` passes, one of them
   profiled with cProfile (the top functions go to bench/out/many_endpoints.profile.txt);
   beside it, the first pass of a reconciler started afresh (it knows no state yet, so it
   reads every endpoint's through Docker's archive API, as every pass did before routers
   answered `/-/state-digest`), and those reads one after another.
5. `reconcile invoke` of one endpoint as a user runs it (a new process, the target named in
   reconciler.yaml), beside a POST with the endpoint's key straight to its scoring URI.

Goals (issue 15): router memory <= 30 MB each, an idle pass over 50 endpoints < 1 s,
invoke within 0.3 s of the endpoint's own answer.
Prints a table, writes bench/out/many_endpoints.md, and one JSON line per figure
(name, value, unit, reference, reference_value) to stdout and bench/out/many_endpoints.json.
Everything made is removed by its target label at the end, on Ctrl-C and on SIGTERM too.
Not a test: figures vary with the machine and its neighbours.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import docker
import docker.errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from docker_state import remove_target
from figures import docker_available, emit, short_requested, skipped
from invoke import invoke_times
from repo_builder import RepoBuilder

from reconciler.engine import PassResult, converge, run_pass
from reconciler.executor import Gate
from reconciler.gitsource import GitSource
from reconciler.model.plan import Action
from reconciler.model.results import Outcome
from reconciler.targets.docker.options import DockerOptions
from reconciler.targets.docker.state import read_files
from reconciler.targets.docker.target import DockerTarget

ROUTER_GOAL_MB = 30.0
CPU_SECONDS: list[float] = []  # of the last timed_passes
API_CALLS: list[int] = []  # Docker API requests of each of the last timed_passes
_REQUESTS = [0]  # Docker API requests the target's client sent so far (counting_client)
IDLE_PASS_GOAL_S = 1.0
PORTS = (24000, 24999)  # no test or other benchmark uses these


def _endpoint(i: int) -> str:
    return f"many-{i:03d}"


def _add_endpoint(repo: RepoBuilder, name: str) -> None:
    repo.endpoint(name, traffic={"blue": 100, "green": 0})
    for deployment in ("blue", "green"):
        repo.deployment(name, deployment, instance_type="Standard_DS1_v2", instance_count=1)


def cleanup(client: docker.DockerClient, name: str) -> None:
    """Containers, networks, volumes, then images labelled with the target (unused ones:
    an image another container uses stays, as Docker refuses without force)."""
    remove_target(client, name)
    for image in client.images.list(filters={"label": f"reconciler.target={name}"}):
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(image.id)


def memory(container: Any) -> tuple[float, float]:
    """(usage less inactive file cache, as `docker stats` shows it; anonymous memory) in MB,
    from one-shot stats (no second sample waited for)."""
    stats = container.client.api.stats(container.id, stream=False, one_shot=True)
    mem = stats.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    usage = float(mem.get("usage") or 0)
    inactive = float(detail.get("inactive_file", detail.get("total_inactive_file", 0)))
    anon = float(detail.get("anon", detail.get("rss", detail.get("total_rss", 0))))
    return (usage - inactive) / 2**20, anon / 2**20


def counting_client() -> docker.DockerClient:
    """A Docker client that counts the requests it sends to the engine (_REQUESTS), for
    the target: what a pass asks of the engine, per endpoint."""
    client = docker.from_env(timeout=300)

    def counted(response: Any, *args: Any, **kwargs: Any) -> Any:
        _REQUESTS[0] += 1
        return response

    client.api.hooks["response"].append(counted)
    return client


def settled(client: docker.DockerClient, name: str, timeout: float = 300.0) -> float:
    """Wait until Docker calls every instance of the target healthy (an instance is ready
    and routed before that: observe asks one whose first health check has not run yet
    itself, through docker exec, which an idle pass of a settled target never does).
    Seconds waited."""
    started = time.perf_counter()
    label = [f"reconciler.target={name}", "reconciler.role=instance"]
    while time.perf_counter() - started < timeout:
        listed = client.api.containers(all=True, filters={"label": label})
        if listed and all(str(c.get("Status", "")).endswith("(healthy)") for c in listed):
            break
        time.sleep(1.0)
    return time.perf_counter() - started


def timed_passes(
    tree: Any, target: DockerTarget, count: int, *, profile: Path | None = None
) -> list[float]:
    """Seconds of `count` passes (observe, plan, nothing to do); one more profiled. The
    CPU seconds of this process in each go to CPU_SECONDS (the rest is waiting: on the
    engine, on routers, on a busy host)."""
    out = []
    CPU_SECONDS.clear()
    API_CALLS.clear()
    for _ in range(count):
        started, cpu, requests = time.perf_counter(), time.process_time(), _REQUESTS[0]
        result = run_pass(tree, target, prune=False, dry_run=False)
        out.append(time.perf_counter() - started)
        CPU_SECONDS.append(time.process_time() - cpu)
        API_CALLS.append(_REQUESTS[0] - requests)
        if result.plan.steps or result.plan.errors:
            steps = [f"{s.action} {s.reason}" for s in result.plan.steps]
            raise SystemExit(f"the idle pass is not idle: {steps} {result.plan.errors}")
    if profile is not None:
        profiler = cProfile.Profile()
        profiler.enable()
        run_pass(tree, target, prune=False, dry_run=False)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text).sort_stats("cumulative")
        stats.print_stats(45)
        text.write("\n--- by own time ---\n")
        stats.sort_stats("tottime").print_stats(25)
        profile.write_text(text.getvalue())
    return out


def python_startup() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


BENCH = "many_endpoints"
# Goal (issue 15): `reconcile invoke` within this of the endpoint's own answer time.
INVOKE_GOAL_S = 0.3
INVOKES = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=50, help="endpoints (at least 2)")
    parser.add_argument("--short", action="store_true", help="5 endpoints")
    parser.add_argument("--passes", type=int, default=5, help="idle passes timed (>= 3)")
    args = parser.parse_args()
    n = 5 if args.short or short_requested() else args.endpoints
    if n < 2:
        raise SystemExit("--endpoints: at least 2")
    absent = docker_available()
    if absent is not None:
        skipped(BENCH, "apply and idle pass of many endpoints", absent)
        return
    client = docker.from_env(timeout=300)
    name = f"bench-many-{secrets.token_hex(2)}"
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    figures: list[dict[str, Any]] = []

    def figure(
        key: str, value: float, unit: str, reference: str, reference_value: float | None
    ) -> None:
        line = {
            "name": key,
            "value": round(value, 4),
            "unit": unit,
            "reference": reference,
            "reference_value": None if reference_value is None else round(reference_value, 4),
        }
        figures.append(line)
        print(json.dumps(line), flush=True)
        # The table of `make bench` (bench/summary.py) gathers these too.
        emit(
            BENCH,
            key,
            line["value"],
            unit,
            reference=reference,
            reference_value=line["reference_value"],
        )

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does

    signal.signal(signal.SIGTERM, terminated)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(client, name, n, args.passes, Path(tmp), out, figure)
    finally:
        print(f"removing everything labelled reconciler.target={name} ...", file=sys.stderr)
        cleanup(client, name)
    (out / "many_endpoints.json").write_text("".join(json.dumps(f) + "\n" for f in figures))
    rows = [
        f"| {f['name']} | {f['value']} {f['unit']} | {f['reference']} | "
        f"{f['reference_value'] if f['reference_value'] is not None else ''} |"
        for f in figures
    ]
    table = "| figure | value | reference | reference value |\n|---|---:|---|---:|\n"
    table += "\n".join(rows) + "\n"
    (out / "many_endpoints.md").write_text(table)
    print(table, file=sys.stderr)


def time_invoke(
    repo: RepoBuilder, target: DockerTarget, options: DockerOptions, endpoint: str
) -> tuple[float, float]:
    """(the endpoint's own answer, `reconcile invoke` as a user runs it): medians, seconds.

    The target is named in reconciler.yaml of the working tree, which invoke reads."""
    repo.write_yaml(
        "reconciler.yaml",
        {
            "targets": {
                options.name: {
                    "type": "docker",
                    "state_dir": str(options.state_dir),
                    "router_port_range": list(options.router_port_range),
                    "drain_s": options.drain_s,
                }
            },
            "default_target": options.name,
        },
    )
    body = json.dumps({"data": [[1, 2]]}).encode()
    request_file = repo.root / "bench-request.json"
    request_file.write_bytes(body)
    live = target.observe().endpoint(endpoint)
    assert live is not None and live.scoring_uri is not None
    key = target.endpoint_credentials(endpoint).primary_key
    argv = [sys.executable, "-m", "reconciler.cli", "invoke", endpoint]
    argv += ["--repo", str(repo.root), "--request-file", str(request_file)]
    own, invoked = invoke_times(live.scoring_uri, key, body, argv, INVOKES)
    return statistics.median(own), statistics.median(invoked)


def run(
    client: docker.DockerClient,
    name: str,
    n: int,
    passes: int,
    tmp: Path,
    out: Path,
    figure: Callable[[str, float, str, str, float | None], None],
) -> None:
    options = DockerOptions(
        name=name, state_dir=tmp / "state", router_port_range=PORTS, drain_s=0.2
    )
    repo = RepoBuilder(tmp / "repo")
    repo.basics()
    repo.environment(packages=())
    repo.code()
    _add_endpoint(repo, _endpoint(0))
    repo.commit("one endpoint")
    target = DockerTarget(options, repo_root=repo.root, client=counting_client())
    source = GitSource(repo.root)

    def apply(*, tolerate: bool = False) -> tuple[float, dict[str, str]]:
        """Seconds of the apply, and the endpoints whose creation failed (tolerate): the
        target's network_pool full (NoFreeSubnet), or, before it, Docker's default address
        pools (~30 networks)."""
        tree = source.tree(source.resolve("HEAD"))
        started = time.perf_counter()
        failed: dict[str, str] = {}

        def on_pass(result: PassResult) -> None:
            for r in result.results:
                step = result.plan.steps[r.index]
                if r.outcome == Outcome.FAILED and step.action == Action.CREATE_ENDPOINT:
                    failed[str(step.endpoint)] = r.message

        result = converge(
            tree, target, prune=False, gate=Gate(timeout_s=3600, poll_s=0.5), on_pass=on_pass
        )
        seconds = time.perf_counter() - started
        if (
            (result.failed and not (tolerate and failed))
            or result.in_progress
            or result.plan.errors
        ):
            raise SystemExit(f"apply did not converge: {result.plan.errors or result.results}")
        return seconds, failed

    log = sys.stderr
    print(f"target {name}: applying 1 endpoint (images built or found) ...", file=log)
    first, _ = apply()
    tree = source.tree(source.resolve("HEAD"))
    print(f"  instances healthy after {settled(client, name):.1f} s more", file=log)
    one = timed_passes(tree, target, passes)
    calls_one = statistics.median(API_CALLS)
    load_one = os.getloadavg()[0]
    print(f"  {first:.1f} s; idle passes over 1: {[round(s, 3) for s in one]}", file=log)

    for i in range(1, n):
        _add_endpoint(repo, _endpoint(i))
    repo.commit(f"{n} endpoints")
    print(f"applying {n - 1} more endpoints at once ...", file=log)
    bulk, refused = apply(tolerate=True)
    print(f"  {bulk:.1f} s", file=log)
    if refused:
        reasons = sorted(set(refused.values()))
        print(f"{len(refused)} endpoint(s) not created: {reasons}", file=log)
        figure(
            "endpoints the engine could not create (their network)",
            len(refused),
            "endpoints",
            "endpoints asked for",
            n,
        )
        # The rest are measured: the failed ones leave the repository, so passes are idle.
        for endpoint in refused:
            shutil.rmtree(repo.root / "endpoints" / endpoint)
        repo.commit("without the endpoints the engine could not hold")
        apply()
        n -= len(refused)
        bulk_count = n - 1
    else:
        bulk_count = n - 1
    figure(
        f"apply of {n - 1 + len(refused)} endpoints (2 deployments each), total",
        bulk,
        "s",
        "apply of the first endpoint alone (with image builds or look-ups)",
        first,
    )
    figure(
        "apply time per endpoint created (bulk)",
        bulk / bulk_count,
        "s",
        "apply of the first endpoint alone (with image builds or look-ups)",
        first,
    )

    label = {"label": [f"reconciler.target={name}"]}
    routers = client.containers.list(filters={"label": [*label["label"], "reconciler.role=router"]})
    instances = client.containers.list(
        filters={"label": [*label["label"], "reconciler.role=instance"]}
    )
    if len(routers) != n or len(instances) != 2 * n:
        raise SystemExit(
            f"expected {n} routers, {2 * n} instances: {len(routers)}, {len(instances)}"
        )
    router_image = routers[0].image.id
    # A bare interpreter in the router's image: what any Python process there costs.
    bare = client.containers.run(
        router_image,
        detach=True,
        labels={"reconciler.target": name, "reconciler.role": "bench-reference"},
        entrypoint=["python3", "-c", "import time; time.sleep(600)"],
    )
    time.sleep(2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        router_mem = list(pool.map(memory, routers))
        instance_mem = list(pool.map(memory, instances))
    bare_mem = memory(bare)
    for role, mems in (("router", router_mem), ("instance", instance_mem)):
        usage = [u for u, _ in mems]
        anon = [a for _, a in mems]
        ref = "bare python3 sleeping in the router image"
        figure(
            f"{role} memory (docker stats), median",
            statistics.median(usage),
            "MB",
            ref,
            bare_mem[0],
        )
        figure(f"{role} memory (docker stats), max", max(usage), "MB", ref, bare_mem[0])
        figure(
            f"{role} anonymous memory (RSS), median",
            statistics.median(anon),
            "MB",
            ref,
            bare_mem[1],
        )
        figure(f"{role} anonymous memory (RSS), max", max(anon), "MB", ref, bare_mem[1])
    bare.remove(force=True)

    tree = source.tree(source.resolve("HEAD"))
    print(f"instances healthy after {settled(client, name):.1f} s more", file=log)
    many = timed_passes(tree, target, passes, profile=out / "many_endpoints.profile.txt")
    print(f"idle passes over {n}: {[round(s, 3) for s in many]}", file=log)
    # The host's load beside the timings (2 cores shared with other work: a pass waits
    # for the engine and the routers, which wait for CPU).
    figure(
        f"load average (1 min) after the idle passes over {n} endpoints ({os.cpu_count()} cores)",
        os.getloadavg()[0],
        "",
        "load average (1 min) after the idle passes over 1 endpoint",
        load_one,
    )
    cpu = list(CPU_SECONDS)
    figure(
        f"Docker API requests of an idle pass over {n} endpoints, median",
        statistics.median(API_CALLS),
        "requests",
        "Docker API requests of an idle pass over 1 endpoint, median",
        calls_one,
    )
    figure(
        f"idle pass over {n} endpoints, median of {passes}",
        statistics.median(many),
        "s",
        "idle pass over 1 endpoint, median",
        statistics.median(one),
    )
    figure(
        f"idle pass over {n} endpoints, fastest of {passes}",
        min(many),
        "s",
        "idle pass over 1 endpoint, fastest",
        min(one),
    )
    figure(
        f"idle pass over {n} endpoints: CPU of the reconciler process, median",
        statistics.median(cpu),
        "s CPU",
        f"idle pass over {n} endpoints, median (wall)",
        statistics.median(many),
    )
    figure(
        f"idle pass over {n} endpoints, per endpoint",
        statistics.median(many) / n,
        "s",
        "idle pass over 1 endpoint, median",
        statistics.median(one),
    )
    # The first pass of a reconciler started afresh: no state known, every one read.
    started = time.perf_counter()
    run_pass(tree, DockerTarget(options, repo_root=repo.root), prune=False, dry_run=False)
    figure(
        f"first pass over {n} endpoints of a reconciler started afresh (reads every state)",
        time.perf_counter() - started,
        "s",
        f"idle pass over {n} endpoints, median",
        statistics.median(many),
    )
    # What a pass paid before it read the states at once: per endpoint, a listing of its
    # holder and an archive read, one after another.
    started = time.perf_counter()
    for live in target.observe().endpoints:
        handle = target._state_handle(live.name)
        assert handle is not None
        read_files(handle)
    one_by_one = time.perf_counter() - started
    figure(
        f"state reads of {n} endpoints one after another (listing + archive read each)",
        one_by_one,
        "s",
        f"idle pass over {n} endpoints, median",
        statistics.median(many),
    )
    figure("python -c pass (process start)", python_startup(), "s", "", None)
    own, invoked = time_invoke(repo, target, options, _endpoint(n - 1))
    figure(
        f"reconcile invoke (a new process) of 1 of {n} endpoints, median",
        invoked,
        "s",
        "the endpoint's own answer (POST with its key), median",
        own,
    )
    print(
        f"goal: invoke within {INVOKE_GOAL_S} s of the endpoint's own answer: "
        f"{'met' if invoked - own <= INVOKE_GOAL_S else 'NOT met'} "
        f"({invoked:.3f} s against {own:.3f} s)",
        file=log,
    )
    worst_router = max(u for u, _ in router_mem)
    print(
        f"goals: router memory <= {ROUTER_GOAL_MB:.0f} MB each: "
        f"{'met' if worst_router <= ROUTER_GOAL_MB else 'NOT met'} (max {worst_router:.1f} MB); "
        f"idle pass over {n} < {IDLE_PASS_GOAL_S:.0f} s: "
        f"{'met' if statistics.median(many) < IDLE_PASS_GOAL_S else 'NOT met'} "
        f"(median {statistics.median(many):.2f} s)",
        file=log,
    )


if __name__ == "__main__":
    main()
