"""Virtual environments the tests make once per machine and keep in the user's cache.

Packages the reconciler does not need itself (MLflow, ONNX) but its tests use to make real
models live in venvs under ~/.cache/reconciler-tests. Test sessions run side by side on one
machine: the first to need a venv makes it under a lock while the others wait (two makers
would clear each other's half-made venv). A venv without its pyvenv.cfg is broken, whatever
its marker says.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reconciler-tests"


def cached_venv(venv: Path, packages: Sequence[str]) -> Path:
    """The Python of `venv` holding `packages`, made on first use (skips when PyPI cannot
    be reached: the message names the packages)."""
    python = venv / "bin" / "python"
    if set(packages) <= set(installed(venv) or ()):
        return python
    with locked(venv):
        found = installed(venv)
        if found is not None and set(packages) <= set(found):
            return python  # made while this session waited
        marker = venv / ".complete"
        try:
            if found is None:
                subprocess.run(
                    [sys.executable, "-m", "venv", "--clear", str(venv)],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
            # A venv of an earlier, shorter list keeps what it has: pip adds the rest.
            marker.unlink(missing_ok=True)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", *packages],
                check=True,
                capture_output=True,
                timeout=900,
            )
        except (subprocess.SubprocessError, OSError) as error:
            pytest.skip(f"cannot install {', '.join(packages)} into {venv}: {error}")
        marker.write_text(" ".join(packages) + "\n")
    return python


@contextlib.contextmanager
def locked(venv: Path) -> Iterator[None]:
    """The venv's lock, held while it (or what is made with it) is made."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def installed(venv: Path) -> list[str] | None:
    """The packages the venv was made with; None when it is absent or broken."""
    marker = venv / ".complete"
    if not marker.exists() or not (venv / "pyvenv.cfg").exists():
        return None
    return marker.read_text().split()
