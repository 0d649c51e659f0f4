"""How long the last build of each environment took, kept beside the wheel cache, so that a
build can say what to expect ("building environment sklearn-iris:2, about 50 s like its
last build") instead of leaving a person to wonder whether it hangs.

An estimate only: a lost or unreadable file means "first build" again, never an error.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

FILE_NAME = "build-times.json"
# What a first build of a typical environment takes (pip downloads, then installs).
FIRST_BUILD_GUESS = "about a minute or more"


def _read(cache: Path) -> dict[str, float]:
    try:
        doc = json.loads((cache / FILE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): float(v) for k, v in doc.items() if isinstance(v, int | float)}


def last_build_seconds(cache: Path, environment: str) -> float | None:
    """Seconds the last build of `environment` (its name, any version) took, if recorded."""
    return _read(cache).get(environment)


def record_build(cache: Path, environment: str, seconds: float) -> None:
    """Remember how long `environment` took to build (best effort)."""
    times = _read(cache)
    times[environment] = round(seconds, 1)
    temporary = cache / f".{FILE_NAME}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(times, sort_keys=True))
        os.replace(temporary, cache / FILE_NAME)


def announcement(cache: Path, name: str | None, version: str | None) -> str:
    """What a step says when an environment's build starts."""
    label = f"{name or 'environment'}:{version or '?'}"
    last = last_build_seconds(cache, name or "")
    if last is None:
        return f"building environment {label}, first build, {FIRST_BUILD_GUESS}"
    return f"building environment {label}, about {_duration(last)} like its last build"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{round(seconds / 60)} min"
