"""progress: what a one-shot `reconcile` shows after each pass, as plain lines and as a live
display on a terminal."""

from __future__ import annotations

import io
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from screen import visible_lines
from specs_factory import deployment, endpoint

from reconciler import logs as logging_setup
from reconciler.engine import PassResult, converge
from reconciler.executor import Gate, execute
from reconciler.filetree import DirectoryTree
from reconciler.model.errors import ErrorCode
from reconciler.model.keys import ResourceKey
from reconciler.model.plan import (
    CreateDeployment,
    Plan,
    RepairDeployment,
    Step,
    UpdateDeployment,
)
from reconciler.model.results import Outcome, StepResult, Waiting
from reconciler.model.state import DesiredState, ProvisioningState
from reconciler.planning import make_plan
from reconciler.presentation import plan_text
from reconciler.progress import (
    OUTPUT_TAIL_LINES,
    ConsoleStream,
    LiveDisplay,
    PlainLines,
    StepDisplay,
    display_for,
    failure_lines,
    terminal_logging,
)
from reconciler.targets.base import OutputLine, ProgressCallback, TargetError
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


# --- the terminal's view of an apply: plan first, a line per step ------------------------

EXAMPLE_REPO = Path(__file__).resolve().parents[2] / "example-repo"
BUILD_OUTPUT_LINES = 275  # what pip and the image build printed in the first apply


class BuildingTarget(MemoryTarget):
    """The in-memory platform, saying what a Docker build says while it creates a deployment
    (phases, then pip's and the build's own output); `fail_build` ends that output with a
    build error."""

    fail_build: bool = False

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> Waiting | None:
        if isinstance(step.payload, CreateDeployment) and progress is not None:
            progress("building environment sklearn-iris:1, first build, about a minute or more")
            for n in range(BUILD_OUTPUT_LINES):
                progress(OutputLine(f"pip output line {n}"))
            if self.fail_build:
                raise TargetError("image build failed", code=ErrorCode.IMAGE_BUILD_FAILURE)
            progress("starting 1 instance")
        return super().apply(step, progress=progress)


def apply_on_a_terminal(
    target: MemoryTarget, *, verbose: bool = False, repo: Path = EXAMPLE_REPO
) -> list[str]:
    logging_setup.configure(fmt="json", level="warning")  # as `reconcile` on a terminal
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    display = StepDisplay(
        console,
        show_plan=lambda plan, desired: console.print(plan_text(plan), end="", highlight=False),
        verbose=verbose,
    )
    try:
        converge(
            DirectoryTree(repo),
            target,
            prune=False,
            gate=Gate(timeout_s=30, poll_s=0),
            on_pass=display.pass_done,
            watcher=display,
        )
    finally:
        display.close()
    return visible_lines(screen.getvalue())


def test_a_terminal_shows_the_plan_first_then_one_line_per_step_and_no_build_output() -> None:
    target = BuildingTarget(warmup=2)
    lines = apply_on_a_terminal(target)
    steps = [line for line in lines if line.startswith("✓ ")]
    # Every step the plan listed ends with one line, after the whole plan.
    planned = [line for line in lines if re.match(r" *\d+\. ", line)]
    assert len(steps) == len(planned) == len(target.applied) > 3
    assert lines.index(planned[-1]) < lines.index(steps[0])
    assert not [line for line in lines if "pip output" in line]
    assert all(re.search(r"  \d+\.\d s$", line) for line in steps)  # each with its time
    # The first apply of the example repository: the plan and a line per step, nothing
    # else (the issue counted 314 lines, 275 of them pip's).
    summary = next(i for i, line in enumerate(lines) if line.startswith("Plan: "))
    assert lines[summary + 1 :] == steps, "\n".join(lines)
    assert len(lines) == summary + 1 + len(steps) == 32


def _applied_then_green_edited(target: MemoryTarget, tmp_path: Path) -> Path:
    """example-repo applied to `target`, and a copy of it whose green deployment changed
    (an update of green is the next plan)."""
    converge(DirectoryTree(EXAMPLE_REPO), target, prune=False, gate=Gate(timeout_s=30, poll_s=0))
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE_REPO, repo)
    green = repo / "endpoints" / "my-endpoint" / "green.yml"
    green.write_text(green.read_text().replace("MODEL_LOG_LEVEL: debug", "MODEL_LOG_LEVEL: info"))
    return repo


def test_an_update_whose_new_instances_fail_is_never_shown_done(tmp_path: Path) -> None:
    # A rolling update: the old instance keeps serving (1/1 ready) while the new one
    # starts and fails. Ready counts alone said "done" (a ✓, then the ✗ of the next pass).
    target = MemoryTarget()
    repo = _applied_then_green_edited(target, tmp_path)
    target.warmup = 6  # passes in which the new instance is still starting
    target.broken.add(ResourceKey("my-endpoint", "green"))
    lines = apply_on_a_terminal(target, repo=repo)
    shown = "\n".join(lines)
    assert not [line for line in lines if line.startswith("✓ update_deployment")], shown
    assert [line for line in lines if line.startswith("✗ update_deployment my-endpoint/green")]


def test_verbose_shows_the_build_output_as_it_comes() -> None:
    target = BuildingTarget()
    lines = apply_on_a_terminal(target, verbose=True)
    builds = [s for s in target.applied if isinstance(s.payload, CreateDeployment)]
    assert sum("pip output line" in line for line in lines) == BUILD_OUTPUT_LINES * len(builds)


def test_a_failed_build_shows_the_tail_of_its_output_under_the_step() -> None:
    target = BuildingTarget()
    target.fail_build = True
    lines = apply_on_a_terminal(target)
    failed = next(i for i, line in enumerate(lines) if line.startswith("✗ create_deployment"))
    assert "image build failed" in lines[failed]
    tail = [line.strip() for line in lines[failed + 1 : failed + 1 + OUTPUT_TAIL_LINES]]
    first_shown = BUILD_OUTPUT_LINES - OUTPUT_TAIL_LINES
    assert tail == [f"pip output line {n}" for n in range(first_shown, BUILD_OUTPUT_LINES)]
    assert not [line for line in lines if line.strip() == f"pip output line {first_shown - 1}"]


def test_a_step_waiting_for_health_says_so_on_the_live_line_and_ends_with_one_line() -> None:
    target = BuildingTarget(warmup=3)
    lines = apply_on_a_terminal(target)
    assert len([line for line in lines if "set_traffic" in line and "✓" in line]) == 1
    assert not [line for line in lines if "waiting for" in line and "✓" not in line]


def test_a_warning_logged_while_the_live_line_runs_gets_a_line_of_its_own() -> None:
    import structlog

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    display = StepDisplay(console, show_plan=lambda plan, desired: None)
    logging_setup.configure(fmt="auto", level="warning", stream=ConsoleStream(console))
    try:
        display.status.start()
        display.running = ("create_deployment ep/blue", "building")
        time.sleep(0.3)  # a few frames of the live line
        structlog.get_logger("test").warning("environment_image_mapped", image="python:3.11")
        structlog.get_logger("test").info("step_progress", detail="not shown")
        time.sleep(0.3)
    finally:
        display.status.stop()
        logging_setup.configure(fmt="json", level="warning")
    lines = visible_lines(screen.getvalue())
    (warning,) = [line for line in lines if "environment_image_mapped" in line]
    assert re.match(r"\d{4}-\d\d-\d\d", warning)  # the start of its own line
    assert not [line for line in lines if "not shown" in line or "building" in line]


def test_on_a_terminal_a_warning_shows_once_and_what_the_screen_says_not_at_all() -> None:
    # Each pass loads the repository again and logs its warnings again; the display's ✗
    # line already says what step_failed says, the plan's warnings an image_map's mapping.
    import structlog

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    terminal_logging(console)
    try:
        for _ in range(3):
            structlog.get_logger("test").warning("router_slow", port=18000)
        structlog.get_logger("test").warning("router_slow", port=18001)
        structlog.get_logger("test").warning("step_failed", error="init() failed")
        structlog.get_logger("test").warning("environment_image_mapped", image="python:3.11")
    finally:
        logging_setup.configure(fmt="json", level="warning")
    lines = visible_lines(screen.getvalue())
    assert len([line for line in lines if "port=18000" in line]) == 1, lines
    assert len([line for line in lines if "port=18001" in line]) == 1, lines
    assert not [line for line in lines if "step_failed" in line or "image_mapped" in line]


class FailingUpdateTarget(MemoryTarget):
    """A rolling update whose new instance never starts, as Docker says it: the step fails
    (DeploymentNotReady) and the deployment is Failed, its old instance still serving."""

    def apply(self, step: Step, *, progress: ProgressCallback | None = None) -> Waiting | None:
        if isinstance(step.payload, UpdateDeployment):
            key = ResourceKey(step.endpoint, step.deployment)
            self.deployments[key] = replace(
                self.deployments[key],
                provisioning_state=ProvisioningState.FAILED,
                last_error="init() failed",
            )
            raise TargetError("the scoring script raised FileNotFoundError: model.pkl")
        return super().apply(step, progress=progress)


def test_the_end_of_a_failed_apply_names_a_failed_deployment_once(tmp_path: Path) -> None:
    target = FailingUpdateTarget()
    repo = _applied_then_green_edited(target, tmp_path)
    result = converge(DirectoryTree(repo), target, prune=False, gate=Gate(timeout_s=30, poll_s=0))
    lines = failure_lines(result, log_lines=20)
    assert [line for line in lines if "my-endpoint/green" in line] == [
        "step 1 (update_deployment my-endpoint/green) failed: "
        "the scoring script raised FileNotFoundError: model.pkl"
    ]


def test_a_repair_between_passes_of_an_update_does_not_end_the_updates_line() -> None:
    # Docker: a pass stops the new instance that never became ready (a repair of that
    # deployment), then the update's next round fails. The repair completed the update's
    # line: "✓ update_deployment" in front of its "✗".
    spec = deployment(instance_count=1)
    update = Step(UpdateDeployment(spec, 1, spec.scale_settings), "ep", "blue")
    repair = Step(RepairDeployment("blue", spec, 1, spec.scale_settings), "ep", "blue")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    display = StepDisplay(console, show_plan=lambda plan, desired: None)
    display.planned(Plan((update,)), None, None)
    display.step_started(0, update)
    waits = "waiting for ep/blue: 0/1 new instances ready"
    display.step_ended(StepResult(0, Outcome.IN_PROGRESS, waits))
    display.planned(Plan((repair, update)), None, None)
    display.step_started(0, repair)
    display.step_ended(StepResult(0, Outcome.SUCCEEDED))
    display.step_started(1, update)
    display.step_ended(StepResult(1, Outcome.FAILED, "init() failed"))
    display.close()
    lines = visible_lines(screen.getvalue())
    assert [line.split("  ")[0] for line in lines] == ["✗ update_deployment ep/blue"], lines


def test_on_a_terminal_the_end_of_a_failed_apply_adds_the_log_not_the_message_again(
    tmp_path: Path,
) -> None:
    # The ✗ line said the message; the end adds the log's tail under the step's name (the
    # step's number in the last pass's plan is not the one of the plan printed first).
    target = FailingUpdateTarget()
    repo = _applied_then_green_edited(target, tmp_path)
    result = converge(DirectoryTree(repo), target, prune=False, gate=Gate(timeout_s=30, poll_s=0))
    (index,) = [i for i, r in enumerate(result.results) if r.outcome == Outcome.FAILED]
    failed = replace(result.results[index], log_tail="line 1\nFileNotFoundError: model.pkl")
    result = replace(
        result, results=(*result.results[:index], failed, *result.results[index + 1 :])
    )
    assert failure_lines(result, log_lines=20, on_a_terminal=True) == [
        "the end of the log of update_deployment my-endpoint/green:",
        "    line 1",
        "    FileNotFoundError: model.pkl",
    ]
