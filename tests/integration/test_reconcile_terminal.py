"""`reconcile` at a terminal (a real pseudo-terminal): the plan first, then one line per
step with its time, no log lines; with `--log-format json` the JSON logs as before. Against
the fake Kubernetes API server reached through a kubeconfig."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_fake import FakeKubernetes, apply_rev, failures, make_target, serve
from repo_builder import RepoBuilder
from screen import visible_lines
from terminal import run_on_a_terminal
from test_reconcile_passes import EP, kube_repo


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running


def rollout_repo(repo: RepoBuilder, fake: FakeKubernetes, tmp_path: Path) -> None:
    """blue serving, then a commit adding green with a tenth of the traffic."""
    kube_repo(repo, fake, tmp_path)
    repo.basics()
    repo.endpoint(EP, traffic={"blue": 100})
    repo.deployment(EP, "blue")
    repo.commit("blue")
    # The first rollout through the test's own target (its images are planned, not built).
    assert not failures(apply_rev(repo, make_target(fake)))
    repo.deployment(EP, "blue", instance_count=2)
    repo.endpoint(EP, traffic={"blue": 100})
    repo.commit("two instances")


def test_a_terminal_gets_the_plan_before_any_change_then_a_line_per_step(
    repo: RepoBuilder, fake: FakeKubernetes, tmp_path: Path
) -> None:
    rollout_repo(repo, fake, tmp_path)
    run = run_on_a_terminal(
        ["--repo", str(repo.root)], env={"XDG_STATE_HOME": str(tmp_path / "state")}
    )
    lines = visible_lines(run.raw)
    assert run.exit_code == 0, "\n".join(lines)
    summary = next(i for i, line in enumerate(lines) if line.startswith("Plan: "))
    done = [i for i, line in enumerate(lines) if line.startswith("✓ ")]
    assert done and summary < done[0]  # the whole plan, then the steps
    planned = [line.strip() for line in lines[:summary] if re.match(r" *\d+\. ", line)]
    steps = [lines[i] for i in done]
    for number, line in enumerate(planned, start=1):
        name = line.removeprefix(f"{number}. ").split(" (waits")[0]
        assert any(s.startswith(f"✓ {name}  ") for s in steps), (name, steps)
    assert all(re.search(r"  \d+(\.\d)? s$|  \d+m \d\ds$", line) for line in steps)
    # No log line reaches a person's terminal, and the plan is not printed twice.
    assert not [line for line in lines if "step_started" in line or line.startswith("{")]
    assert sum(line.startswith("Plan: ") for line in lines) == 1


def test_json_logs_stay_as_they_were_with_log_format_json_on_a_terminal(
    repo: RepoBuilder, fake: FakeKubernetes, tmp_path: Path
) -> None:
    rollout_repo(repo, fake, tmp_path)
    run = run_on_a_terminal(
        ["--repo", str(repo.root), "--log-format", "json"],
        env={"XDG_STATE_HOME": str(tmp_path / "state")},
    )
    lines = visible_lines(run.raw)
    assert run.exit_code == 0, "\n".join(lines)
    events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert "step_started" in events and "step_succeeded" in events
    assert any(line.startswith("pass 2: done: ") for line in lines)
    assert not [line for line in lines if line.startswith("✓ ")]
    # The plan after the work, as before.
    assert lines.index(next(line for line in lines if line.startswith("Plan: "))) > min(
        i for i, line in enumerate(lines) if line.startswith("{")
    )
