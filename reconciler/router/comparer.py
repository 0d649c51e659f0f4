"""The process that compares large shadow answers, off the router's event loop.

json.loads holds the GIL for the whole parse (some 40 ms for 1 MB of JSON numbers), so a
thread would stall the event loop as long; a process of its own does not. One per router
worker, spawned at the first large comparison (not forked: the router runs threads).

It ends with its parent: a pool's worker waits on a queue whose pipe it holds both ends of,
so a router killed with SIGKILL would leave it waiting for ever (and a supervisor that
restarts killed workers would collect them). A thread in it checks, every second, that its
parent is still the process that started it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_PARENT_CHECK_S = 1.0


def new_pool() -> ProcessPoolExecutor:
    """One process, spawned, that exits within a second of its parent's end."""
    return ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_watch_parent,
        initargs=(os.getpid(),),
    )


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK_S)
        os._exit(0)  # no cleanup to do: nothing of it outlives the comparisons

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
