"""Benchmark: start-up of the CLI commands that touch no target, beside Python's own.

Each command runs as a new process, as a user runs it, several times; the medians are
printed beside those of `python -c pass` and `python -c "import yaml"` measured in the same
run (interleaved, so that a neighbour's burst of load falls on all alike). For commands
that do work (validate, status, diff), the work itself is measured in process (the second
run in one interpreter, loading caches cleared) and the start-up is the rest:

    start-up = new process - work;  goal (issue 15): start-up <= 2x `python -c pass`

Beside the wall-clock medians, the CPU time of each process (user + system, its git
children included, from wait4) is printed with the same reference: on a machine shared with
other work, wall time grows with the load and CPU time much less.

    .venv/bin/python bench/startup.py [--repeat 15] [--short] [--instructions]

--instructions (when valgrind is installed): each command and `python -c pass` run once
more under valgrind's cachegrind, which counts the instructions the process executed (its
git children not included): a figure the machine's load does not move, for comparing two
versions on a shared machine. It is the whole process (start-up and work).

The repository is a copy of example-repo committed to a temporary git repository.
Not a test: it gates nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from figures import compile_package, emit, short_requested

ROOT = Path(__file__).resolve().parent.parent
BENCH = "startup"

# The in-process run of one command, twice: the first pays the imports, the second is
# the work. Prints the second's wall seconds and CPU seconds (its git children included).
WORK = """
import resource, sys, time
from click.testing import CliRunner
from reconciler import loading
from reconciler.cli import main
def cpu():
    used = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in used)
args = sys.argv[1:]
CliRunner().invoke(main, args)
loading.clear_cache()
started, used = time.perf_counter(), cpu()
CliRunner().invoke(main, args)
print(time.perf_counter() - started, cpu() - used)
"""


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def make_repo(folder: Path) -> Path:
    repo = folder / "repo"
    shutil.copytree(ROOT / "example-repo", repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.email=b@example.com", "-c", "user.name=b", "add", "-A")
    git(repo, "-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-qm", "base")
    return repo


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its waited children)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped above
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def instructions(argv: list[str], cwd: Path) -> int | None:
    """Instructions the process executed (valgrind's cachegrind), None without valgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    counting = [valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    done = subprocess.run(
        [*counting, *argv],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    return int(found.group(1).replace(",", "")) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--short", action="store_true", help="5 runs each")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions (valgrind)"
    )
    args = parser.parse_args()
    repeat = 5 if short_requested() else args.repeat
    print(compile_package())
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp))
        r = str(repo)
        commands: dict[str, list[str]] = {
            "reconcile --help": ["--help"],
            "reconcile credentials --help": ["credentials", "--help"],
            "reconcile validate (example-repo)": ["validate", "--repo", r],
            "reconcile status (example-repo)": ["status", "--repo", r],
            "reconcile diff --base HEAD (example-repo)": ["diff", "--base", "HEAD", "--repo", r],
        }
        references = {
            "python -c pass": [py, "-c", "pass"],
            'python -c "import yaml"': [py, "-c", "import yaml"],
        }
        runs: dict[str, list[float]] = {name: [] for name in [*references, *commands]}
        cpu: dict[str, list[float]] = {name: [] for name in [*references, *commands]}

        def run(name: str, argv: list[str]) -> None:
            wall, used = timed(argv, repo)
            runs[name].append(wall)
            cpu[name].append(used)

        for _ in range(repeat):
            for name, argv in references.items():
                run(name, argv)
            for name, cli_args in commands.items():
                run(name, [py, "-m", "reconciler.cli", *cli_args])
        work: dict[str, float] = {}
        work_cpu: dict[str, float] = {}
        for name, cli_args in commands.items():
            if "--help" in cli_args:
                work[name] = work_cpu[name] = 0.0
                continue
            done = subprocess.run(
                [py, "-c", WORK, *cli_args], cwd=repo, capture_output=True, text=True, check=True
            )
            wall, used = done.stdout.strip().splitlines()[-1].split()
            work[name], work_cpu[name] = float(wall), float(used)
        counted: dict[str, int | None] = {}
        if args.instructions:
            counted["python -c pass"] = instructions([py, "-c", "pass"], repo)
            for name, cli_args in commands.items():
                counted[name] = instructions([py, "-m", "reconciler.cli", *cli_args], repo)
    median = {name: statistics.median(times) for name, times in runs.items()}
    median_cpu = {name: statistics.median(times) for name, times in cpu.items()}
    bare = median["python -c pass"]
    bare_cpu = median_cpu["python -c pass"]
    print(f"medians of {repeat} runs each, in seconds (same run, interleaved)")
    for name in references:
        print(f"  {name:<45} {median[name]:.3f}")
    for name in commands:
        startup = median[name] - work[name]
        print(
            f"  {name:<45} {median[name]:.3f}  work {work[name]:.3f}  "
            f"start-up {startup:.3f} = {startup / bare:.1f}x python -c pass"
        )
    print(f"CPU time (user + system), medians; python -c pass {bare_cpu:.3f}")
    for name in commands:
        startup = median_cpu[name] - work_cpu[name]
        print(
            f"  {name:<45} {median_cpu[name]:.3f}  work {work_cpu[name]:.3f}  "
            f"start-up {startup:.3f} = "
            f"{startup / bare_cpu:.1f}x python -c pass"
        )
    bare_count = counted.get("python -c pass")
    if args.instructions and bare_count is None:
        print("instructions: valgrind not found (or it failed): not counted")
    elif bare_count is not None:
        print(f"instructions of the process (valgrind), python -c pass {bare_count:,}")
        for name in commands:
            count = counted[name]
            if count is not None:
                print(f"  {name:<45} {count:>13,} = {count / bare_count:.1f}x python -c pass")
                emit(
                    BENCH,
                    f"{name}: instructions of the process (start-up and work)",
                    count,
                    "instructions",
                    reference="python -c pass, instructions",
                    reference_value=bare_count,
                )
    emit(
        BENCH,
        'python -c "import yaml"',
        median['python -c "import yaml"'],
        "s",
        reference="python -c pass",
        reference_value=bare,
    )
    for name in commands:
        emit(
            BENCH,
            f"{name}: new process",
            median[name],
            "s",
            reference="python -c pass",
            reference_value=bare,
        )
        emit(
            BENCH,
            f"{name}: start-up (process - work {work[name]:.3f} s)",
            median[name] - work[name],
            "s",
            reference="python -c pass",
            reference_value=bare,
            goal="<= 2x",
        )
        emit(
            BENCH,
            f"{name}: start-up, CPU time (process - work {work_cpu[name]:.3f} s)",
            median_cpu[name] - work_cpu[name],
            "s",
            reference="python -c pass, CPU time",
            reference_value=bare_cpu,
            goal="<= 2x",
        )


if __name__ == "__main__":
    main()
