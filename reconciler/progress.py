"""How a one-shot `reconcile` shows its passes while it waits for rollouts: on a terminal,
the plan first and then one line per step as it ends, with its time, under a live line
saying what the running step waits for (StepDisplay); plain lines otherwise (CI logs,
files), beside the JSON logs. Both go to stderr, so the plan on stdout (`--output json`)
stays a clean document.

A pass never blocks (DESIGN.md): `reconcile` runs passes until nothing is in progress, and
after each one says which steps were done, which failed, and what the others wait for
("set_traffic my-endpoint: waiting for blue healthy (1/2 ready)"). A build's own output
(pip, docker build: targets.base.OutputLine) is shown only with `-v`, or its tail when the
step fails.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import IO, Protocol

from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.text import Text

from reconciler.engine import PassResult
from reconciler.health import Health, deployment_health
from reconciler.model.plan import Action, Plan, Step
from reconciler.model.results import Outcome, StepResult
from reconciler.model.state import DesiredState
from reconciler.targets.base import OutputLine

# Lines of a build's output shown under a step that failed (without -v).
OUTPUT_TAIL_LINES = 30


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


def failure_lines(result: PassResult, *, log_lines: int, on_a_terminal: bool = False) -> list[str]:
    """What a one-shot `reconcile` says at its end of what failed in its last pass: each
    failed step with its message and the end of its log, then each declared deployment the
    target shows failed whose step did not fail (no traffic moves to it: nothing else says
    so). A deployment is named once, not again as "... is Failed" after its step's line.
    On a terminal the StepDisplay's ✗ line said the message: only the log follows, under
    the step's name (its number is of the last pass's plan, not of the plan shown)."""
    lines: list[str] = []
    said: set[str] = set()
    for r in result.results:
        if r.outcome != Outcome.FAILED:
            continue
        step = result.plan.steps[r.index]
        said.add(step.target_name)
        tail = [f"    {line}" for line in r.log_tail.splitlines()[-log_lines:]]
        if on_a_terminal:
            if tail:
                lines += [f"the end of the log of {step.action} {step.target_name}:", *tail]
            continue
        lines.append(f"step {r.index + 1} ({step.action} {step.target_name}) failed: {r.message}")
        lines += tail
    for d in result.degraded:
        if str(d.key) in said:
            continue
        reason = "".join((d.last_error or "").splitlines()[:1])
        lines.append(f"{d.key} is {d.provisioning_state}: {reason}")
    return lines


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


def elapsed(seconds: float) -> str:
    """4.2 s, 48 s, 1m 04s."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s"


def _name(step: Step) -> str:
    return f"{step.action} {step.target_name}"


class _Waits:
    """The live line's text, rendered afresh at each refresh so its times tick."""

    def __init__(self, display: StepDisplay) -> None:
        self.display = display

    def __rich__(self) -> Text:
        # One screen line per line: a wrapped one would leave its tail behind on redraws.
        return Text("\n".join(self.display.now_lines()), no_wrap=True, overflow="ellipsis")


class ConsoleStream:
    """A file whose lines the console prints above its live line: where the logs that still
    show on a terminal (warnings) go while a StepDisplay runs, instead of through it."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def write(self, text: str) -> int:
        if text.strip():
            self.console.print(Text.from_ansi(text.rstrip("\n")), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        """Printed at once."""

    def isatty(self) -> bool:
        return True


# Log events the screen already says in its own words: a failed step (the display's ✗
# line carries its message), an environment image an image_map replaces (a warning of the
# plan, printed first: cli.target_warnings).
SHOWN_BY_THE_DISPLAY = frozenset({"step_failed", "environment_image_mapped"})


def terminal_logging(console: Console) -> None:
    """The logs that still reach a person's terminal while a StepDisplay runs: warnings,
    each once (every pass loads the repository again and would say them again), above the
    live line, and none the display says itself."""
    from reconciler import logs as logging_setup

    logging_setup.configure(
        fmt="auto", level="warning", stream=ConsoleStream(console), for_people=SHOWN_BY_THE_DISPLAY
    )


class StepDisplay:
    """The terminal's view of an apply: the plan before any change, then one line per step
    done or failed with the time it took (counted from its first start, across passes),
    under a live line with what the running step does or waits for. Build output only with
    `verbose`; without it the last OUTPUT_TAIL_LINES lines under a step that failed."""

    def __init__(
        self,
        console: Console,
        *,
        show_plan: Callable[[Plan, DesiredState | None], None],
        verbose: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.show_plan = show_plan
        self.verbose = verbose
        self.clock = clock
        self.plan: Plan | None = None
        self.plan_shown = False
        self.started: dict[str, float] = {}  # step name -> first start
        self.running: tuple[str, str] | None = None  # (step name, what it says now)
        self.waiting: dict[str, str] = {}  # step name -> what it waits for
        self.output: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
        self.status: Status = console.status(_Waits(self), spinner="dots")
        self.live_shown = False

    # engine.PassWatcher
    def planned(self, plan: Plan, desired: DesiredState | None, revision: str | None) -> None:
        self.plan = plan
        if not self.plan_shown:
            self.plan_shown = True
            self.show_plan(plan, desired)
            if plan.steps and not plan.errors:
                self.status.start()
                self.live_shown = True

    def step_started(self, index: int, step: Step) -> None:
        # Its health gate passed: the deployments it waited for are ready, so the steps
        # that started them are done.
        healthy = {f"{step.endpoint}/{d}" for d in step.wait_healthy}
        for waited in [n for n in self.waiting if n.rpartition(" ")[2] in healthy]:
            self._done(waited)
        name = self._name(step)
        self.started.setdefault(name, self.clock())
        self.waiting.pop(name, None)
        self.running = (name, step.reason or "started")
        self.output.clear()

    def _name(self, step: Step) -> str:
        """The line a step's progress goes to: its own, or for a repair of a deployment whose
        create, scale or update is in progress (routing its instances once ready, a
        target's next move of that rollout), the line of that step, which it completes."""
        name = _name(step)
        if step.action == Action.REPAIR_DEPLOYMENT:
            for waited in self.waiting:
                if waited.rpartition(" ")[2] == step.target_name:
                    return waited
        return name

    def step_progress(self, index: int, message: str) -> None:
        if isinstance(message, OutputLine):
            self.output.append(message)
            if self.verbose:
                self.console.print(Text(f"    {message}", style="dim"))
            return
        if self.running is not None:
            self.running = (self.running[0], message)

    def step_ended(self, result: StepResult) -> None:
        if self.plan is None:
            return
        step = self.plan.steps[result.index]
        if self.running is not None and self.running[0].rpartition(" ")[2] == step.target_name:
            name = self.running[0]  # the line the step's progress went to
            self.running = None
        else:
            name = self._name(step)
        if result.outcome == Outcome.IN_PROGRESS:
            self.started.setdefault(name, self.clock())
            self.waiting[name] = result.message
            return
        if result.outcome not in (Outcome.SUCCEEDED, Outcome.FAILED):
            return  # skipped: it waits for an earlier step, which the live line names
        if result.outcome == Outcome.SUCCEEDED:
            if name != _name(step):
                # A repair on the line of the create, scale or update it continues (routing
                # ready instances, stopping one that never became ready): that step is done
                # once its deployment is healthy (pass_done, or a later step's health gate).
                self.started.setdefault(name, self.clock())
                self.waiting[name] = f"waiting for {step.target_name} healthy"
                return
            self._done(name)
            return
        took = elapsed(self.clock() - self.started.pop(name, self.clock()))
        self.waiting.pop(name, None)
        self.console.print(
            f"[red]✗[/red] {escape(name)}  [dim]{took}[/dim]: {escape(result.message)}"
        )
        if self.output and not self.verbose and not result.log_tail:
            # The end of the build's output says why (a pip resolution error, ...).
            for line in self.output:
                self.console.print(Text(f"    {line}", style="dim"))
        self.output.clear()

    def pass_done(self, result: PassResult) -> None:
        _, _, waiting = step_lines(result)
        still = {w.partition(": ")[0]: w.partition(": ")[2] for w in waiting}
        # A step left in progress that no step of this pass waits for any more: done once
        # its deployment's instances are ready, failed when it degraded on the platform.
        degraded = {str(d.key) for d in result.degraded}
        live = {str(d.key): d for d in result.live_after.deployments}
        for name in [n for n in self.waiting if n not in still]:
            key = name.rpartition(" ")[2]
            deployment = live.get(key)
            if key in degraded and deployment is not None:
                took = elapsed(self.clock() - self.started.pop(name, self.clock()))
                del self.waiting[name]
                self.console.print(
                    f"[red]✗[/red] {escape(name)}  [dim]{took}[/dim]: "
                    f"{escape(str(deployment.provisioning_state))}"
                )
            elif deployment is not None and deployment.ready_instances < deployment.instance_count:
                ready = f"{deployment.ready_instances}/{deployment.instance_count} ready"
                self.waiting[name] = f"waiting for {key} healthy ({ready})"
            elif deployment is not None and deployment_health(deployment) == Health.PROGRESSING:
                # A rolling update whose old instances still serve: as many ready as asked
                # for, yet the new version is not (it may still fail to start).
                ready = f"{deployment.ready_instances}/{deployment.instance_count} ready"
                self.waiting[name] = f"waiting for {key}: {deployment.provisioning_state}, {ready}"
            else:
                self._done(name)
        covered = {n.rpartition(" ")[2] for n in self.waiting}
        for name, message in still.items():
            if name in covered:
                continue  # "ep/blue: Creating, 0/2 ready": its step's line says it
            self.waiting[name] = message
            self.started.setdefault(name, self.clock())

    def _done(self, name: str, *, took: str | None = None) -> None:
        now = self.clock()
        if took is None:
            took = elapsed(now - self.started.get(name, now))
        self.started.pop(name, None)
        self.waiting.pop(name, None)
        self.console.print(f"[green]✓[/green] {escape(name)}  [dim]{took}[/dim]")

    def now_lines(self) -> list[str]:
        now = self.clock()
        lines = []
        if self.running is not None:
            name, doing = self.running
            lines.append(f"{name}  {elapsed(now - self.started.get(name, now))}  {doing}")
        for name, message in list(self.waiting.items()):  # the step's thread may add one
            lines.append(f"{name}  {elapsed(now - self.started.get(name, now))}  {message}")
        return lines or ["applying"]

    def close(self) -> None:
        if self.live_shown:
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


def terminal_console(stream: IO[str]) -> Console | None:
    """A console on `stream` when it is a terminal, else None."""
    console = Console(file=stream)
    return console if console.is_terminal else None
