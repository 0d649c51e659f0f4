"""How a one-shot `reconcile` shows its passes while it waits for rollouts: a live display
(rich) on a terminal, plain lines otherwise (CI logs, files). Both go to stderr, so the plan
on stdout (`--output json`) stays a clean document.

A pass never blocks (DESIGN.md): `reconcile` runs passes until nothing is in progress, and
after each one says which steps were done, which failed, and what the others wait for
("set_traffic my-endpoint: waiting for blue healthy (1/2 ready)").
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Protocol

from reconciler.engine import PassResult
from reconciler.model.results import Outcome

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status


class PassDisplay(Protocol):
    def pass_done(self, result: PassResult) -> None: ...

    def close(self) -> None: ...


def step_lines(result: PassResult) -> tuple[list[str], list[str], list[str]]:
    """(done, failed, in progress) lines of a pass, in plan order."""
    done: list[str] = []
    failed: list[str] = []
    waiting: list[str] = []
    for r in result.results:
        step = result.plan.steps[r.index]
        name = f"{step.action} {step.target_name}"
        if r.outcome == Outcome.SUCCEEDED:
            done.append(name)
        elif r.outcome == Outcome.FAILED:
            failed.append(f"{name}: {r.message}")
        elif r.outcome == Outcome.IN_PROGRESS:
            waiting.append(f"{name}: {r.message}")
    if not waiting and result.in_progress:
        # No step of this pass waits, but a deployment still starts (a repair routes it
        # once ready): say which.
        declared = {e.name for e in result.desired.endpoints} if result.desired else set()
        for d in result.live_after.deployments:
            if d.endpoint in declared and d.ready_instances < d.instance_count:
                waiting.append(
                    f"{d.key}: {d.provisioning_state}, {d.ready_instances}/{d.instance_count} ready"
                )
    return done, failed, waiting


class PlainLines:
    """One line per step done or failed, and the in-progress lines each time they change."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.passes = 0
        self.shown: list[str] = []

    def pass_done(self, result: PassResult) -> None:
        self.passes += 1
        done, failed, waiting = step_lines(result)
        lines = [f"done: {d}" for d in done] + [f"failed: {f}" for f in failed]
        if waiting != self.shown:
            lines += [f"in progress: {w}" for w in waiting]
            self.shown = waiting
        for line in lines:
            print(f"pass {self.passes}: {line}", file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing held open."""


class LiveDisplay:
    """A spinner with what the rollout waits for, and a line per step done or failed."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.passes = 0
        self.status: Status = console.status("reconciling: first pass", spinner="dots")
        self.status.start()

    def pass_done(self, result: PassResult) -> None:
        self.passes += 1
        done, failed, waiting = step_lines(result)
        for line in done:
            self.console.print(f"[green]✓[/green] {line}", highlight=False)
        for line in failed:
            self.console.print(f"[red]✗[/red] {line}", highlight=False)
        if waiting:
            text = "\n  ".join(waiting)
            self.status.update(f"pass {self.passes}, in progress:\n  {text}")

    def close(self) -> None:
        self.status.stop()


def display_for(stream: IO[str], *, live: bool) -> PassDisplay:
    """A live display on a terminal (when `live`), plain lines otherwise."""
    # rich is imported here: only an apply draws with it, and it costs every other
    # command's start-up (issue 15).
    from rich.console import Console

    console = Console(file=stream)
    if live and console.is_terminal:
        return LiveDisplay(console)
    return PlainLines(stream)
