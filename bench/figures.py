"""Machine-readable figures of the benchmarks, for `make bench`'s summary table.

Each benchmark prints its figures for people as before, and also one line per figure:

    FIGURE {"bench": ..., "name": ..., "value": ..., "unit": ..., "reference": ...,
            "reference_value": ..., "goal": ..., "note": ...}

and appends the same JSON object to the file named by $BENCH_FIGURES when it is set
(bench/summary.py sets it). The reference is measured in the same run as the figure, so
that the ratio means something on a shared, noisy machine; `goal` says what the ratio (or
the value, when there is no reference) should be, in words. A figure that could not be
measured (no Docker) is emitted with value None and a note saying why.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

SHORT_ENV = "BENCH_SHORT"


def short_requested(argv: list[str] | None = None) -> bool:
    """--short on the command line, or BENCH_SHORT=1 in the environment."""
    args = sys.argv[1:] if argv is None else argv
    return "--short" in args or os.environ.get(SHORT_ENV, "") not in ("", "0")


def emit(
    bench: str,
    name: str,
    value: float | None,
    unit: str,
    *,
    reference: str = "",
    reference_value: float | None = None,
    goal: str = "",
    note: str = "",
) -> dict[str, Any]:
    figure: dict[str, Any] = {
        "bench": bench,
        "name": name,
        "value": value,
        "unit": unit,
        "reference": reference,
        "reference_value": reference_value,
        "goal": goal,
        "note": note,
    }
    line = json.dumps(figure)
    print(f"FIGURE {line}", flush=True)
    target = os.environ.get("BENCH_FIGURES")
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
    return figure


def skipped(bench: str, name: str, why: str) -> dict[str, Any]:
    """A figure not measured on this machine, and why (Docker absent, wrk missing)."""
    return emit(bench, name, None, "", note=f"skipped: {why}")


def docker_available() -> str | None:
    """None when the local Docker Engine answers, else why not (BENCH_NO_DOCKER=1: never
    use it, as on a machine whose engine is busy with tests)."""
    if os.environ.get("BENCH_NO_DOCKER", "") not in ("", "0"):
        return "BENCH_NO_DOCKER is set"
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:  # no SDK, no socket, no permission: all mean "skip"
        return f"Docker not available ({type(exc).__name__})"
    return None


def compile_package() -> str:
    """Writes the bytecode of the reconciler package, as `pip install` does for a user.

    An editable checkout run with PYTHONDONTWRITEBYTECODE=1 (our machines set it) has none,
    and every new process would then compile each module from source (some 0.13 s of CPU
    for `reconcile diff`): a cost no installed copy pays. Returns a note for the figures.
    """
    import compileall

    package = Path(__file__).resolve().parent.parent / "reconciler"
    compileall.compile_dir(str(package), quiet=1)
    return "bytecode of the package compiled first, as an installed copy has it"
