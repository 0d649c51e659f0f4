"""Shared fixtures: real git repositories in temporary folders."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import hypothesis  # noqa: F401  (imported early: see below)
import pytest

sys.path.insert(0, str(Path(__file__).parent))

# hypothesis's pytest plugin imports hypothesis at the end of a run if no test did, and
# pytest's assertion rewriting then parses its modules while threads that tests left
# (servers' handlers) may format a traceback, which in CPython 3.11 also parses Python:
# the AST recursion counter both share gives a SystemError that fails the whole run
# (python/cpython#106905). Imported here, hypothesis is parsed before any test starts.

# The CLI's code caches (reconciler/codecache.py) of the commands tests run, in process and
# in the processes they start, go to a folder of this run, not the user's ~/.cache: a test
# run neither reads what an earlier version of the code left there nor leaves its own.
if "RECONCILER_CACHE_DIR" not in os.environ:
    _CODE_CACHE = tempfile.mkdtemp(prefix="reconciler-test-codecache-")
    os.environ["RECONCILER_CACHE_DIR"] = _CODE_CACHE
    atexit.register(shutil.rmtree, _CODE_CACHE, True)

from repo_builder import RepoBuilder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Docker tests run once more when they fail.

    They share one engine and two cores with everything else the machine does, and the
    engine's own races (a container listed then gone, a port proxy slow to bind) are not
    ours to pin. A retried test is printed as R and counted in the summary line, so a
    flaky test stays visible; a test that fails twice fails the run.
    """
    for item in items:
        if item.get_closest_marker("docker") is not None:
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))


@pytest.fixture
def repo(tmp_path: Path) -> RepoBuilder:
    return RepoBuilder(tmp_path / "repo")
