"""`reconcile watch` in a process of its own, as an operator runs it: for tests that kill it
(SIGKILL), start it again, and read what it logged (JSON lines on stderr)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path


class WatchProcess:
    """`reconcile --log-format json watch ARGS` with XDG_STATE_HOME in `state`; its log in a
    file of `state`. `args` say where the repository is (`--repo PATH` or `--url URL`) and
    anything else the test wants (`--interval`, `--cache-dir`, ...)."""

    def __init__(self, state: Path, *args: str) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.log = state / f"daemon-{uuid.uuid4().hex[:6]}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "--log-format", "json", "watch", *args],
            env={**os.environ, "XDG_STATE_HOME": str(state)},
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self, name: str | None = None, **fields: object) -> list[dict[str, object]]:
        """The events it logged so far (those named `name` with these fields' values)."""
        out = []
        for line in self.log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is not None and event.get("event") != name:
                continue
            if all(event.get(k) == v for k, v in fields.items()):
                out.append(event)
        return out

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or released but by the kernel."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.kill()
