"""Runs the `reconcile` command on a real pseudo-terminal (python's pty), as a person at a
terminal runs it: stdout and stderr are that terminal, so the command shows what it shows
people, not what it writes to pipes and files."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TerminalRun:
    exit_code: int
    raw: str  # what reached the terminal, escape sequences and all
    seconds: float


def run_on_a_terminal(
    args: Sequence[str], *, env: Mapping[str, str], timeout_s: float = 120, columns: int = 120
) -> TerminalRun:
    master, slave = pty.openpty()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", "from reconciler.cli import main; main()", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO_ROOT,
        env={**os.environ, **env, "COLUMNS": str(columns), "TERM": "xterm-256color"},
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while time.monotonic() - started < timeout_s:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            process.kill()
        code = process.wait(timeout=30)
    finally:
        os.close(master)
    return TerminalRun(code, b"".join(chunks).decode(errors="replace"), time.monotonic() - started)
