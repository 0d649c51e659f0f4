"""Benchmark: `reconcile diff` on a large repository, beside a parse-only baseline.

Generates a git repository of N endpoints with 3 deployments each (4N YAML files, one code
folder per endpoint), changes 10% of the YAML files in a second commit, packs the objects
as a clone has them, then times in the same run:
  - `reconcile diff --base HEAD~1 --head HEAD` as a user runs it (a new process), and the
    same command in-process (no interpreter start-up);
  - the reference: parsing the YAML files of one revision with PyYAML's C loader and
    nothing else.
Wall-clock medians, and the CPU time beside them (on a shared machine the CPU ratio moves
less). Goal (issue 15): the new process within 2.5x the reference, at 1,000 and 10,000
endpoints. Not a test: it gates nothing.

    .venv/bin/python bench/plan_scale.py [--endpoints 1000,10000] [--repeat 3] [--short]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from click.testing import CliRunner
from figures import compile_package, emit, short_requested

from reconciler.cli import main

BENCH = "plan_scale"

ENDPOINT = """\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json
name: {name}
auth_mode: key
description: endpoint {i} of the benchmark
tags:
  team: team-{team}
traffic:
  blue: {blue}
  green: {green}
  red: 0
"""

DEPLOYMENT = """\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json
name: {dep}
endpoint_name: {name}
model: azureml:bench-model:{model}
code_configuration:
  code: ./src
  scoring_script: score.py
environment: azureml:bench-env:1
instance_type: Standard_DS3_v2
instance_count: {count}
request_settings:
  request_timeout_ms: 3000
  max_concurrent_requests_per_instance: 2
liveness_probe:
  initial_delay: 5
  period: 10
readiness_probe:
  initial_delay: 5
environment_variables:
  LOG_LEVEL: info
  ENDPOINT_INDEX: "{i}"
"""


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()


def generate(root: Path, *, endpoints: int) -> list[str]:
    """Writes the base commit and the changed commit; returns the YAML paths."""
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "bench@example.com")
    git(root, "config", "user.name", "bench")
    # No gc of its own in the background: the benchmark packs once, when it is done.
    git(root, "config", "gc.auto", "0")
    (root / "models/bench-model/v1").mkdir(parents=True)
    (root / "models/bench-model/v2").mkdir(parents=True)
    (root / "models/bench-model/v1/model.json").write_text('{"w": [1, 2, 3]}\n')
    (root / "models/bench-model/v2/model.json").write_text('{"w": [2, 3, 4]}\n')
    for v in (1, 2):
        (root / f"models/bench-model-{v}.yml").write_text(
            "$schema: https://azuremlschemas.azureedge.net/latest/model.schema.json\n"
            f"name: bench-model\nversion: {v}\npath: bench-model/v{v}\n"
        )
    (root / "environments").mkdir()
    (root / "environments/conda.yaml").write_text(
        "name: bench\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n    - numpy\n"
    )
    (root / "environments/bench-env.yml").write_text(
        "$schema: https://azuremlschemas.azureedge.net/latest/environment.schema.json\n"
        "name: bench-env\nversion: 1\nimage: python:3.11-slim\nconda_file: conda.yaml\n"
    )
    paths: list[str] = []
    for i in range(endpoints):
        name = f"endpoint-{i:04d}"
        folder = root / "endpoints" / name
        (folder / "src").mkdir(parents=True)
        (folder / "src/score.py").write_text(
            f"def init():\n    pass\n\n\ndef run(data):\n    return {i}\n"
        )
        (folder / "endpoint.yml").write_text(
            ENDPOINT.format(name=name, i=i, team=i % 7, blue=90, green=10)
        )
        paths.append(f"endpoints/{name}/endpoint.yml")
        for dep in ("blue", "green", "red"):
            (folder / f"{dep}.yml").write_text(
                DEPLOYMENT.format(name=name, dep=dep, i=i, model=1, count=1)
            )
            paths.append(f"endpoints/{name}/{dep}.yml")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    # Change 10% of the YAML files: traffic on some endpoints, scale or model on others.
    changed = 0
    for n, path in enumerate(paths):
        if n % 10 != 3:
            continue
        changed += 1
        file = root / path
        text = file.read_text()
        if path.endswith("endpoint.yml"):
            text = text.replace("blue: 90", "blue: 50").replace("green: 10", "green: 50")
        elif n % 20 == 3:
            text = text.replace("instance_count: 1", "instance_count: 3")
        else:
            text = text.replace("bench-model:1", "bench-model:2")
        file.write_text(text)
    git(root, "commit", "-q", "-am", "change 10%")
    print(f"repository: {endpoints} endpoints, {len(paths)} YAML files, {changed} changed")
    return paths


def time_parse_only(root: Path, paths: list[str]) -> tuple[float, float]:
    """Parses the files of a revision with the C loader and nothing else (reads not timed):
    (wall, CPU) seconds."""
    texts = [(root / p).read_bytes() for p in paths]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    started, cpu = time.perf_counter(), time.process_time()
    for text in texts:
        yaml.load(text, Loader=loader)
    return time.perf_counter() - started, time.process_time() - cpu


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def time_process(root: Path) -> tuple[float, float]:
    """`reconcile diff` as a new process: (wall, CPU of it and the git it runs)."""
    started, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "diff",
            "--base",
            "HEAD~1",
            "--repo",
            str(root),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - started, children_cpu() - cpu
    if done.returncode != 2:
        print(done.stdout[-2000:], done.stderr[-2000:])
        raise SystemExit(f"reconcile diff exited {done.returncode}, expected 2")
    return took


def time_in_process(root: Path) -> tuple[float, str]:
    from reconciler import loading

    loading.clear_cache()
    started = time.perf_counter()
    result = CliRunner().invoke(
        main, ["diff", "--base", "HEAD~1", "--repo", str(root), "--output", "json"]
    )
    took = time.perf_counter() - started
    assert result.exit_code == 2, result.output[-2000:]
    return took, result.output


def bench(endpoints: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = generate(root, endpoints=endpoints)
        git(root, "gc", "-q")  # packed, as a clone's objects are
        parse, process, in_process = [], [], []
        # Interleaved: a neighbour's burst of load falls on the figure and its reference alike.
        for _ in range(repeat):
            parse.append(time_parse_only(root, paths))
            process.append(time_process(root))
        for _ in range(repeat):
            took, output = time_in_process(root)
            in_process.append(took)
        steps = output.count('"action"')
    p_wall = statistics.median(p[0] for p in parse)
    p_cpu = statistics.median(p[1] for p in parse)
    d_wall = statistics.median(p[0] for p in process)
    d_cpu = statistics.median(p[1] for p in process)
    inproc = statistics.median(in_process)
    n = len(paths)
    print(f"plan: {steps} steps; medians of {repeat}")
    print(f"reference: parse only, C loader, {n} files of one revision: {p_wall:.3f} s")
    print(
        f"reconcile diff, new process: {d_wall:.3f} s = {d_wall / p_wall:.2f}x the reference "
        f"(goal <= 2.5x: {'met' if d_wall <= 2.5 * p_wall else 'NOT met'})"
    )
    print(
        f"  CPU: {d_cpu:.3f} s (with git's) vs the reference's {p_cpu:.3f} s = {d_cpu / p_cpu:.2f}x"
    )
    print(f"reconcile diff, in process, cold caches: {inproc:.3f} s = {inproc / p_wall:.2f}x")
    reference = f"C-loader parse of one revision ({n} files)"
    emit(
        BENCH,
        f"diff, new process, {endpoints} endpoints",
        d_wall,
        "s",
        reference=reference,
        reference_value=p_wall,
        goal="<= 2.5x",
    )
    emit(
        BENCH,
        f"diff, new process, CPU, {endpoints} endpoints",
        d_cpu,
        "s CPU",
        reference=reference + ", CPU",
        reference_value=p_cpu,
        goal="<= 2.5x",
    )
    emit(
        BENCH,
        f"diff, in process, {endpoints} endpoints",
        inproc,
        "s",
        reference=reference,
        reference_value=p_wall,
    )


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", default="1000,10000", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--short", action="store_true", help="1,000 endpoints, 2 runs")
    args = parser.parse_args()
    sizes = [int(n) for n in args.endpoints.split(",")]
    repeat = args.repeat
    if short_requested():
        sizes, repeat = [1000], 2
    print(compile_package())
    for endpoints in sizes:
        bench(endpoints, repeat)


if __name__ == "__main__":
    main_bench()
