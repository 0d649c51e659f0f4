"""Benchmark: `reconcile diff` on a large repository, beside a parse-only baseline.

Generates a git repository of 1,000 endpoints with 3 deployments each (4,000 YAML files,
one code folder per endpoint), changes 10% of the YAML files in a second commit, then times
in the same run:
  - `reconcile diff --base HEAD~1 --head HEAD` as a user runs it (a new process), and the
    same command in-process (no interpreter start-up);
  - parsing the same YAML files with PyYAML's C loader and nothing else.
Prints the figures; the goal is the diff within 2 s and within 3x the parse-only time.
Not a test: it gates nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from click.testing import CliRunner

from reconciler.cli import main

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


def time_parse_only(root: Path, paths: list[str]) -> float:
    """Parses the files of a revision with the C loader and nothing else (reads not timed)."""
    texts = [(root / p).read_bytes() for p in paths]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    started = time.perf_counter()
    for text in texts:
        yaml.load(text, Loader=loader)
    return time.perf_counter() - started


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = generate(root, endpoints=args.endpoints)
        parse_one = [time_parse_only(root, paths) for _ in range(args.repeat)]
        process = []
        for _ in range(args.repeat):
            started = time.perf_counter()
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
            process.append(time.perf_counter() - started)
            if done.returncode != 2:
                print(done.stdout[-2000:], done.stderr[-2000:])
                raise SystemExit(f"reconcile diff exited {done.returncode}, expected 2")
        in_process = []
        for _ in range(args.repeat):
            from reconciler import loading

            loading_cache_clear = getattr(loading, "clear_cache", None)
            if loading_cache_clear is not None:
                loading_cache_clear()
            started = time.perf_counter()
            result = CliRunner().invoke(
                main, ["diff", "--base", "HEAD~1", "--repo", str(root), "--output", "json"]
            )
            in_process.append(time.perf_counter() - started)
            assert result.exit_code == 2, result.output[-2000:]
        steps = result.output.count('"action"')
    p1 = statistics.median(parse_one)
    proc = statistics.median(process)
    inproc = statistics.median(in_process)
    print(f"plan: {steps} steps")
    print(f"parse only, C loader, {len(paths)} files of one revision:  {p1:.3f} s")
    print(f"parse only, both revisions ({2 * len(paths)} files):        {2 * p1:.3f} s")
    print(f"reconcile diff, new process (median of {args.repeat}):        {proc:.3f} s")
    print(f"reconcile diff, in process, cold caches (median):   {inproc:.3f} s")
    print(f"ratio in-process / parse of both revisions:          {inproc / (2 * p1):.2f}x")
    print(f"ratio in-process / parse of one revision:            {inproc / p1:.2f}x")
    print(f"goal: <= 2 s -> {'met' if proc <= 2 else 'NOT met'} (new process)")


if __name__ == "__main__":
    main_bench()
