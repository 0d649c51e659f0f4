"""One poll-until-true helper for the integration tests (it was written in 13 modules)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T],
    timeout: float = 30.0,
    what: str = "condition",
    *,
    interval: float = 0.1,
) -> T:
    """Call `check` every `interval` seconds (0.1) until it returns something true, and return that.

    Fails the test naming `what` and the timeout when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
