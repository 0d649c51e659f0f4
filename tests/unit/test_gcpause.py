"""gcpause: the cyclic collector is paused inside the block and never left off."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from repo_builder import RepoBuilder

from reconciler.cli import main
from reconciler.gcpause import cyclic_gc_paused, freeze_what_lives_on


def test_the_collector_is_paused_inside_and_enabled_after_even_on_errors() -> None:
    assert gc.isenabled()
    try:
        with cyclic_gc_paused():
            assert not gc.isenabled()
            with cyclic_gc_paused():  # nested (or another thread's): the outer one enables
                assert not gc.isenabled()
            assert not gc.isenabled()
            raise ValueError("a failed load")
    except ValueError:
        pass
    assert gc.isenabled()


def test_diff_validate_and_status_leave_the_collector_enabled_in_the_calling_process(
    repo: RepoBuilder,
) -> None:
    repo.basics()
    repo.endpoint("alpha", traffic={"blue": 100})
    repo.deployment("alpha", "blue")
    repo.commit("base")
    repo.deployment("alpha", "blue", instance_count=2)
    repo.commit("scale")
    diff = CliRunner().invoke(main, ["diff", "--base", "HEAD~1", "--repo", str(repo.root)])
    assert diff.exit_code == 2, diff.output
    validate = CliRunner().invoke(main, ["validate", "--repo", str(repo.root)])
    assert validate.exit_code == 0, validate.output
    assert gc.isenabled()
    status = CliRunner().invoke(main, ["status", "--repo", str(repo.root)])
    assert status.exit_code == 1 and "no status found" in status.output, status.output
    assert gc.isenabled()


def test_a_validate_process_skips_the_collection_at_exit_and_says_all_it_said() -> None:
    root = Path(__file__).resolve().parents[2]
    script = (
        "import atexit, gc, sys\n"
        "from click.testing import CliRunner\n"
        "from reconciler.cli import main\n"
        # Handlers run last-registered first: this one runs after the command's freeze.
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "result = CliRunner().invoke(main, ['validate'])\n"
        "print(result.exit_code, gc.isenabled())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root / "example-repo",
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # The collector runs as usual after the command; only the exit's collection is skipped.
    assert run.stdout.splitlines() == ["0 True", "frozen True"]


def test_what_lives_on_is_out_of_the_collectors_reach_until_unfrozen() -> None:
    kept = [[i] for i in range(1000)]  # lists are tracked (dicts of plain values are not)
    before = gc.get_freeze_count()
    try:
        freeze_what_lives_on()
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()


def test_a_help_process_skips_the_collection_at_exit_and_prints_its_help() -> None:
    # `reconcile --help` and a sub-command's: the help, then an exit that walks none of
    # the imports' objects (issue 15: start-up); an ordinary run of the group registers
    # nothing at parse time (validate does from its callback, above).
    root = Path(__file__).resolve().parents[2]
    script = (
        "import atexit, gc, sys\n"
        "from click.testing import CliRunner\n"
        "from reconciler.cli import main\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "result = CliRunner().invoke(main, sys.argv[1:])\n"
        "print(result.exit_code, 'Usage:' in result.output)\n"
    )
    for args in (["--help"], ["credentials", "--help"], ["connection", "list", "-h"]):
        run = subprocess.run(
            [sys.executable, "-c", script, *args],
            cwd=root / "example-repo",
            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert run.stdout.splitlines() == ["0 True", "frozen True"], args
