"""The daemon's own view for its dashboard: what its passes do as they run, kept in memory.

`reconcile watch --ui-port` serves the dashboard over a DaemonStatusSource: the status
documents of the daemon's last pass (in memory, newer than the status branch while its
commit is being written or pushed), the status branch for history and until a pass of
this process has reported, and a PassRecorder that hears each pass as it runs
(engine.PassWatcher): the plan, the step running and what it says of its progress, each
result, and the last N plans with their steps and results. Restarting the daemon loses
nothing the pages need: the status branch has the rest.

The recorder is written by the pass thread and read by the server's threads: one lock,
and readers get plain JSON values (copies), never the recorder's own objects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.engine import PassResult
from reconciler.model.plan import Plan, Step
from reconciler.model.results import StepResult
from reconciler.model.state import DesiredState, LiveState
from reconciler.ui.source import GitStatusSource, StatusRevision, StatusSnapshot

# Plans kept in memory by default (`reconcile watch --ui-plans`).
DEFAULT_PLANS = 20
# Progress messages kept per running step (an image build says many).
PROGRESS_LINES = 5


class PassRecorder:
    """What the daemon's passes do, as they run (an engine.PassWatcher), and the last
    plans that had steps or errors."""

    def __init__(self, *, keep: int = DEFAULT_PLANS, clock: Callable[[], float] = time.time):
        self._lock = threading.Lock()
        self._clock = clock
        self._version = 0
        self._plans: deque[dict[str, Any]] = deque(maxlen=max(1, keep))
        self._current: dict[str, Any] | None = None
        self._last_pass: dict[str, Any] | None = None
        self._docs: dict[str, Mapping[str, Any]] = {}
        self._reported = False  # a pass of this process has reported a status
        self._changed_at: dict[str, int] = {}
        self._live: LiveState | None = None
        self._desired: tuple[str | None, DesiredState] | None = None

    @property
    def version(self) -> int:
        """Grows with every change the pages may show."""
        with self._lock:
            return self._version

    # --- written by the daemon's pass thread ------------------------------------------

    def pass_started(self, reason: str) -> None:
        with self._lock:
            self._current = {
                "reason": reason,
                "started_at": self._clock(),
                "revision": None,
                "steps": [],
                "errors": [],
            }
            self._version += 1

    def planned(self, plan: Plan, desired: DesiredState | None, revision: str | None) -> None:
        with self._lock:
            if self._current is None:
                return
            self._current["revision"] = revision
            self._current["steps"] = [_step(i, s) for i, s in enumerate(plan.steps)]
            self._current["errors"] = [
                {"file": e.file, "line": e.line, "field": e.field, "message": e.message}
                for e in plan.errors
            ]
            self._version += 1

    def step_started(self, index: int, step: Step) -> None:
        self._set(index, outcome="running", started_at=self._clock())

    def step_progress(self, index: int, message: str) -> None:
        with self._lock:
            entry = self._entry(index)
            if entry is None:
                return
            lines = [*entry["progress"], message][-PROGRESS_LINES:]
            entry["progress"] = lines
            self._version += 1

    def step_ended(self, result: StepResult) -> None:
        self._set(
            result.index,
            outcome=str(result.outcome),
            message=result.message or None,
            error_code=result.error_code,
            seconds=round(result.seconds, 3),
        )

    def pass_finished(
        self, *, outcome: str, result: PassResult | None = None, error: str | None = None
    ) -> None:
        """The pass ended: `outcome` as the daemon judges it (ok, in_progress, failed,
        failed_permanent); `result` None when it ended before a plan (an unreachable
        target, a git error), with `error` saying why."""
        now = self._clock()
        with self._lock:
            current = self._current or {"reason": "", "started_at": now, "steps": [], "errors": []}
            self._current = None
            record = {
                **current,
                "finished_at": now,
                "seconds": round(now - float(current["started_at"]), 3),
                "outcome": outcome,
                "error": error,
            }
            if result is not None:
                record["revision"] = result.revision
                self._live = result.live_after
                if result.desired is not None:
                    self._desired = (result.revision, result.desired)
                # A pass's status is the whole set (the status branch holds exactly these
                # files afterwards): an endpoint pruned is gone from the pages too.
                for name, doc in result.status.items():
                    if self._docs.get(name) != doc:
                        self._changed_at[name] = int(now)
                self._docs = dict(result.status)
                self._changed_at = {n: t for n, t in self._changed_at.items() if n in result.status}
                self._reported = True
            self._last_pass = {k: v for k, v in record.items() if k != "steps"}
            self._last_pass["steps"] = len(record["steps"])
            if record["steps"] or record["errors"] or error:
                self._plans.appendleft(record)
            self._version += 1

    # --- read by the server ---------------------------------------------------------------

    def view(self, endpoint: str | None = None) -> dict[str, Any]:
        """`GET /api/live`: the pass running now (its steps), the last pass, the last plans.
        With `endpoint`: only the steps of that endpoint, and only plans that touched it."""
        with self._lock:
            current = _copy(self._current)
            last = _copy(self._last_pass)
            plans = [_copy(p) for p in self._plans]
        if endpoint is not None:
            if current is not None:
                current["steps"] = [s for s in current["steps"] if s["endpoint"] == endpoint]
            kept = []
            for plan in plans:
                plan["steps"] = [s for s in plan["steps"] if s["endpoint"] == endpoint]
                if plan["steps"]:
                    kept.append(plan)
            plans = kept
        return {"running": current, "last_pass": last, "plans": plans}

    def documents(self) -> tuple[dict[str, Mapping[str, Any]], dict[str, int]] | None:
        """The status of the last pass that reported one, and when each endpoint's last
        changed (seconds; absent: not since this process started); None before any."""
        with self._lock:
            if not self._reported:
                return None
            return dict(self._docs), dict(self._changed_at)

    def live_state(self) -> LiveState | None:
        """What the target showed at the end of the last pass."""
        with self._lock:
            return self._live

    def desired_at(self, commit: str) -> DesiredState | None:
        with self._lock:
            if self._desired is not None and self._desired[0] == commit:
                return self._desired[1]
        return None

    def finished_at(self) -> float | None:
        with self._lock:
            return None if self._last_pass is None else float(self._last_pass["finished_at"])

    # --- helpers ------------------------------------------------------------------------

    def _entry(self, index: int) -> dict[str, Any] | None:
        if self._current is None or index >= len(self._current["steps"]):
            return None
        entry: dict[str, Any] = self._current["steps"][index]
        return entry

    def _set(self, index: int, **values: Any) -> None:
        with self._lock:
            entry = self._entry(index)
            if entry is None:
                return
            entry.update(values)
            self._version += 1


def _step(index: int, step: Step) -> dict[str, Any]:
    return {
        "index": index,
        "action": str(step.action),
        "endpoint": step.endpoint,
        "deployment": step.deployment,
        "reason": step.reason,
        "outcome": "pending",
        "message": None,
        "error_code": None,
        "seconds": None,
        "progress": [],
    }


def _copy(value: Any) -> Any:
    """A deep copy of plain JSON values (dicts, lists, scalars)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class DaemonStatusSource:
    """A StatusSource over the daemon's memory, falling back to the status branch.

    `git` reads the status branch through a GitSource of its own (not the pass thread's),
    so the pages never share a repository object with a running pass."""

    recorder: PassRecorder
    git: GitStatusSource

    def fingerprint(self) -> str:
        return f"{self.git.fingerprint()}\n{self.recorder.version}"

    def snapshot(self) -> StatusSnapshot:
        base = self.git.snapshot()
        reported = self.recorder.documents()
        if reported is None:
            return base
        docs, changed = reported
        finished = self.recorder.finished_at()
        return StatusSnapshot(
            branch=base.branch,
            status_commit=base.status_commit,
            written_at=int(finished) if finished is not None else base.written_at,
            branch_head=base.branch_head,
            docs=docs,
            # An endpoint unchanged since this process started: when the branch says.
            changed_at={**{n: t for n, t in base.changed_at.items() if n in docs}, **changed},
            problem=base.problem,
        )

    def history(self, endpoint: str, *, limit: int) -> list[StatusRevision]:
        return self.git.history(endpoint, limit=limit)

    def desired(self, commit: str) -> DesiredState | None:
        return self.recorder.desired_at(commit) or self.git.desired(commit)


@dataclass(frozen=True, slots=True)
class DaemonFeatures:
    """What the daemon's dashboard has beyond the read-only one: the recorder, its target
        (a function: reconciler.yaml may replace the target between passes), the daemon's phase,
    how often each
        router's /metrics is read and how many readings are kept, the log lines shown."""

    recorder: PassRecorder
    target: Callable[[], object]
    # The daemon's phase and lock holder, as its /healthz says them.
    daemon_status: Callable[[], Mapping[str, Any]] = dict
    metrics_s: float = 5.0
    metrics_keep: int = 60
    log_lines: int = 50
