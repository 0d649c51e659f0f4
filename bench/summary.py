"""`make bench`: every benchmark with short settings, then one table of their figures.

Runs each benchmark of bench/ as its own process with --short (and BENCH_SHORT=1), each
appending its figures to bench/out/figures.jsonl (bench/figures.py), then writes
bench/out/summary.md and prints it: each figure, its reference measured in the same run,
and the ratio. Benchmarks needing Docker note themselves skipped when Docker is absent;
one that fails is a row saying so, and the others still run.

    .venv/bin/python bench/summary.py [--only startup,plan_scale] [--collect-only]

BENCH_NO_DOCKER=1 skips every figure that needs Docker, even where an engine answers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
FIGURES = OUT / "figures.jsonl"
SUMMARY = OUT / "summary.md"
# In this order: the quick ones first; the Docker ones last.
BENCHMARKS = (
    "startup",
    "plan_scale",
    "ui",
    "ui_daemon",
    "daemon",
    "router",
    "push_to_serving",
    "fix_during_rollout",
    "faults",
    "invoke",
    "many_endpoints",
)


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("s", "s CPU"):
        return f"{value:.3f} {unit}"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.2f} {unit}"


def table(figures: list[dict[str, Any]], runs: dict[str, str]) -> str:
    lines = [
        "| benchmark | figure | value | reference (same run) | reference value | ratio | goal "
        "| note |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    seen = set()
    for f in figures:
        seen.add(f["bench"])
        ref = f.get("reference_value")
        value = f.get("value")
        ratio = f"{value / ref:.2f}x" if value is not None and ref else "-"
        lines.append(
            f"| {f['bench']} | {f['name']} | {_number(value, f['unit'])} | "
            f"{f.get('reference') or '-'} | {_number(ref, f['unit']) if ref is not None else '-'} "
            f"| {ratio} | {f.get('goal') or '-'} | {f.get('note') or ''} |"
        )
    for bench, outcome in runs.items():
        if bench not in seen or outcome != "ok":
            lines.append(f"| {bench} | - | - | - | - | - | - | {outcome} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument(
        "--collect-only", action="store_true", help="write the table from figures.jsonl"
    )
    args = parser.parse_args()
    chosen = [b for b in args.only.split(",") if b] or list(BENCHMARKS)
    OUT.mkdir(parents=True, exist_ok=True)
    runs: dict[str, str] = {}
    if not args.collect_only:
        FIGURES.unlink(missing_ok=True)
        env = dict(
            os.environ,
            BENCH_SHORT="1",
            BENCH_FIGURES=str(FIGURES),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        for bench in chosen:
            print(f"== bench/{bench}.py --short", flush=True)
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, str(HERE / f"{bench}.py"), "--short"], env=env, cwd=ROOT
            )
            took = time.monotonic() - started
            runs[bench] = "ok" if done.returncode == 0 else f"exited {done.returncode}"
            print(f"== {bench}: {runs[bench]} in {took:.0f} s", flush=True)
    figures = []
    if FIGURES.exists():
        figures = [json.loads(line) for line in FIGURES.read_text().splitlines() if line]
    text = (
        "# Benchmarks (make bench: short settings)\n\n"
        "Each figure beside its reference measured in the same run; only the ratios "
        "compare across machines.\n\n" + table(figures, runs)
    )
    SUMMARY.write_text(text)
    print()
    print(text)
    print(f"written: {SUMMARY.relative_to(ROOT)}")
    return 0 if all(outcome == "ok" for outcome in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
