"""reconciler.codecache: the dataclasses' methods compiled by an earlier process are run
as compiled then, and behave as freshly compiled ones (each case a new Python)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# Loads the model's specs with the cache installed (or not), then prints how many method
# texts it compiled itself, and what the classes' methods do and declare.
_SCRIPT = """
import dataclasses, inspect, sys
from reconciler import codecache
if sys.argv[1] == "cached":
    codecache.install("test")
from reconciler.model.specs import EndpointSpec
spec = EndpointSpec("ep", traffic=(("blue", 100),))
try:
    spec.name = "other"
    frozen = False
except dataclasses.FrozenInstanceError:
    frozen = True
print(codecache._added)
print(repr(spec), spec == EndpointSpec("ep", traffic=(("blue", 100),)), hash(spec) == hash(
    EndpointSpec("ep", traffic=(("blue", 100),))), frozen)
print(inspect.signature(EndpointSpec.__init__))
print(EndpointSpec.__init__.__annotations__)
"""


def _run(mode: str, cache: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "RECONCILER_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.splitlines()


def test_a_second_process_runs_the_cached_code_and_its_classes_behave_the_same(
    tmp_path: Path,
) -> None:
    plain = _run("plain", tmp_path)
    first = _run("cached", tmp_path)  # compiles, writes the file at exit
    second = _run("cached", tmp_path)  # compiles nothing
    assert int(first[0]) > 10
    assert second[0] == "0"
    assert plain[0] == "0"  # not installed: nothing kept
    # Same repr, equality, hash, frozenness, signature and annotations (the cached code
    # is compiled without this package's `from __future__ import annotations`).
    assert first[1:] == second[1:] == plain[1:]
    assert plain[1].endswith("True True True")
    assert len(list((tmp_path / "dataclasses").iterdir())) == 1


def test_a_damaged_cache_file_is_compiled_afresh_and_replaced(tmp_path: Path) -> None:
    _run("cached", tmp_path)
    (written,) = (tmp_path / "dataclasses").iterdir()
    written.write_bytes(b"not marshal data")
    assert int(_run("cached", tmp_path)[0]) > 10
    assert _run("cached", tmp_path)[0] == "0"
