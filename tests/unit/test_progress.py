"""progress: what a one-shot `reconcile` shows after each pass, as plain lines and as a live
display on a terminal."""

from __future__ import annotations

import io

from rich.console import Console
from specs_factory import deployment, endpoint

from reconciler.engine import PassResult
from reconciler.executor import execute
from reconciler.model.state import DesiredState
from reconciler.planning import make_plan
from reconciler.progress import LiveDisplay, PlainLines, display_for
from reconciler.targets.memory import MemoryTarget

DESIRED = DesiredState((endpoint(traffic={"blue": 100}),), (deployment(instance_count=2),))


def one_pass(target: MemoryTarget) -> PassResult:
    live = target.observe()
    plan = make_plan(DESIRED, live, prune=False)
    results = execute(plan, target, live=live)
    return PassResult(None, plan, results, {}, live, target.observe(), DESIRED)


def test_plain_lines_say_each_step_once_and_what_waits_when_it_changes() -> None:
    target = MemoryTarget(warmup=3)
    out = io.StringIO()
    display = PlainLines(out)
    first = one_pass(target)
    display.pass_done(first)
    display.pass_done(one_pass(target))  # the same wait: not said again
    display.pass_done(one_pass(target))
    assert out.getvalue().splitlines() == [
        "pass 1: done: create_endpoint ep",
        "pass 1: in progress: create_deployment ep/blue: waiting for ep/blue healthy (0/2 ready)",
        "pass 2: in progress: set_traffic ep: waiting for blue healthy (0/2 ready)",
        "pass 3: done: set_traffic ep",
    ]


def test_a_terminal_gets_the_live_display_and_a_file_plain_lines() -> None:
    assert isinstance(display_for(io.StringIO(), live=True), PlainLines)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    display = LiveDisplay(console)
    display.pass_done(one_pass(MemoryTarget(warmup=1)))
    display.close()
    shown = screen.getvalue()
    assert "✓" in shown and "create_endpoint ep" in shown
    assert "waiting for ep/blue healthy (0/2 ready)" in shown
