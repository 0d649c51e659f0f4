"""`reconcile watch`: the loop of DESIGN.md for as long as the process lives.

Triggers (a commit in the local checkout, a fetch interval, a webhook, the periodic drift
pass) only set a flag; one pass thread runs passes one at a time, and triggers that arrive
during a pass collapse into one next pass, which starts from the newest commit. Every pass
is level-based (newest commit + what the target shows now), so a newer commit supersedes a
failing one and a restart at any moment converges to the same end state: nothing of the
daemon's own state is needed after a restart. No pass waits for a rollout: while anything
is in progress (instances starting, a health gate not met yet) the next pass comes after
`progress_interval_s`, and any trigger brings it sooner, so a commit that fixes a broken
rollout is planned at once, from what runs. `reconciler.yaml` is read at the revision of
each pass: its prune setting and the options of the daemon's target take effect on the
pass of the commit that changes them.

One writer per target: a file lock; a second daemon waits (and says so in its log and on
its health endpoint) until the first one stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reconciler.engine import PassResult, run_pass
from reconciler.filetree import DirectoryTree, FileTree
from reconciler.gitsource import (
    DEFAULT_STATUS_BRANCH,
    GitSource,
    GitSourceError,
    PushRejected,
    RemoteCheckout,
)
from reconciler.logs import get_logger
from reconciler.model.diagnostics import DesiredStateInvalid
from reconciler.model.errors import ErrorCode, ErrorKind, error_kind
from reconciler.model.results import Outcome
from reconciler.repoconfig import RepoConfig, TargetConfig, load_repo_config
from reconciler.rollouter import Rollouter
from reconciler.status import render_status, status_path
from reconciler.targets.base import Target, TargetError, TargetUnavailable
from reconciler.targets.capabilities import Autoscaler, Autoscales, Builds
from reconciler.ui.live import DEFAULT_PLANS, DaemonFeatures, DaemonStatusSource, PassRecorder
from reconciler.ui.source import GitStatusSource
from reconciler.writerlock import Holder, WriterLock, describe, lock_path

log = get_logger("reconciler.daemon")

MAX_BACKOFF_S = 300.0


# --- sources ------------------------------------------------------------------------


class LocalSource:
    """A checkout on this machine. HEAD of its branch by default; the working tree (with
    uncommitted edits) when `worktree` is set, for local development."""

    def __init__(self, path: Path, *, worktree: bool, build_dir: Path) -> None:
        self.git = GitSource(path)
        self.path = path
        self.worktree = worktree
        self.build_dir = build_dir

    def refresh(self) -> None:
        """Nothing to fetch: the checkout is the source."""

    def current(self) -> tuple[FileTree, str | None, Path]:
        """The tree to reconcile, its commit, and the folder images are built from."""
        if self.worktree or not self.git.has_commits():
            return DirectoryTree(self.path), None, self.path.resolve()
        commit = self.git.resolve("HEAD")
        root = self.git.export(commit, self.build_dir)
        return self.git.tree(commit), commit, root

    def watch_paths(self) -> list[Path]:
        if self.worktree:
            return [self.path]
        return [Path(self.git.git_dir)]

    def is_trigger(self, path: str, status_branch: str) -> bool:
        """A change the daemon must react to; its own status commits are not one."""
        if self.worktree:
            return "/.git/" not in path and not path.endswith("/.git")
        name = Path(path).name
        if status_branch in path or "worktrees" in path or name.endswith(".lock"):
            return False
        return name in ("HEAD", "packed-refs", "ORIG_HEAD") or "/refs/heads/" in path

    def push_status(self, branch: str) -> None:
        """A local checkout keeps its status branch locally."""


class RemoteSource:
    """A remote repository: cloned into a cache folder, fetched on every refresh."""

    def __init__(self, url: str, *, branch: str, cache_dir: Path, subdir: str = "") -> None:
        self.git = RemoteCheckout(url, branch=branch, cache_dir=cache_dir, subdir=subdir)
        self.commit: str | None = None

    def refresh(self) -> None:
        self.commit = self.git.fetch()

    def current(self) -> tuple[FileTree, str | None, Path]:
        if self.commit is None:
            self.refresh()
        assert self.commit is not None
        self.git.checkout(self.commit)
        root = self.git.root / self.git.subdir if self.git.subdir else self.git.root
        return self.git.tree(self.commit), self.commit, root

    def watch_paths(self) -> list[Path]:
        return []

    def is_trigger(self, path: str, status_branch: str) -> bool:
        return False

    def push_status(self, branch: str) -> None:
        self.git.push_status(branch)


Source = LocalSource | RemoteSource


# --- metrics and health ---------------------------------------------------------------


@dataclass
class DaemonState:
    """What the health endpoint and the metrics report; written by the pass thread."""

    started: float = field(default_factory=time.time)
    phase: str = "starting"  # starting, waiting_for_lock, idle, reconciling, stopping
    last_success: float | None = None
    last_commit: str | None = None
    last_error: str | None = None
    target_reachable: bool = True
    pending_push: bool = False
    lock_holder: str | None = None  # who holds the target's lock while this one waits


class Metrics:
    def __init__(self, state: DaemonState) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.passes = Counter("reconciler_passes", "Passes run", ["result"], registry=r)
        self.duration = Histogram(
            "reconciler_pass_duration_seconds",
            "Duration of a pass",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.errors = Counter("reconciler_errors", "Errors of passes", ["kind"], registry=r)
        # Per error code (model/errors.py) and its kind: what failed, and whether the
        # next pass may succeed as it is.
        self.failures = Counter(
            "reconciler_step_failures",
            "Failed steps and passes by error code",
            ["code", "error_kind"],
            registry=r,
        )
        self.drift = Counter(
            "reconciler_drift_corrections", "Steps applied with no new commit", registry=r
        )
        self.info = Gauge(
            "reconciler_last_reconciled_commit_info",
            "The commit of the last successful pass",
            ["commit"],
            registry=r,
        )
        since = Gauge(
            "reconciler_seconds_since_last_success",
            "Seconds since the last successful pass (since start if none)",
            registry=r,
        )
        since.set_function(lambda: time.time() - (state.last_success or state.started))
        reachable = Gauge("reconciler_target_reachable", "1 when the target answers", registry=r)
        reachable.set_function(lambda: 1.0 if state.target_reachable else 0.0)


# --- the daemon ---------------------------------------------------------------------


@dataclass(frozen=True)
class WatchOptions:
    interval_s: float = 30.0
    # Passes come this often while something is in progress (a rollout, a health gate).
    progress_interval_s: float = 2.0
    prune: bool = False  # --prune; reconciler.yaml's `prune: true` (at each pass's revision) too
    status_branch: str = DEFAULT_STATUS_BRANCH
    lock_path: Path | None = None
    metrics_port: int | None = None
    webhook_port: int | None = None
    webhook_secret: str | None = None
    host: str = "127.0.0.1"
    # The dashboard (reconciler.ui) with the daemon's live parts: its port (None: off),
    # address, token (required beyond 127.0.0.1: the CLI checks), plans kept in memory,
    # and how often the routers' metrics are read for its charts.
    ui_port: int | None = None
    ui_host: str = "127.0.0.1"
    ui_token: str | None = None
    ui_plans: int = DEFAULT_PLANS
    ui_metrics_s: float = 5.0


class Daemon:
    def __init__(
        self,
        source: Source,
        target: Target,
        options: WatchOptions,
        *,
        on_pass: Callable[[PassResult], None] | None = None,
        target_for: Callable[[TargetConfig], Target] | None = None,
    ) -> None:
        self.source = source
        self.target = target
        # Opens the daemon's target from its entry of reconciler.yaml, read at each pass's
        # revision: a commit that changes the target's options takes effect on its pass.
        self.target_for = target_for
        self._target_config: TargetConfig | None = None
        self.options = options
        self.state = DaemonState()
        self.metrics = Metrics(self.state)
        self.on_pass = on_pass
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._fetch_wanted = threading.Event()
        # Held by a pass and by the autoscaler: one writer inside the process as well.
        self.apply_lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.trigger_times: list[tuple[str, float]] = []  # for the benchmark: (why, when)
        self.pass_starts: list[float] = []
        self._progressing = False  # the last pass left something in progress
        self._scaler: Autoscaler | None = None  # the target's autoscaler, when it has one
        self._fetched_at = -1e9
        # Rollouts (reconciler.rollouter): made at the first pass of a git revision.
        self.rollouter: Rollouter | None = None
        self._rollout_wake: float | None = None  # seconds to the next judgement of a step
        # What the passes do as they run, for the dashboard (kept whether or not it is on:
        # a few plans in memory).
        self.recorder = PassRecorder(keep=options.ui_plans)
        self._last_result: PassResult | None = None
        self._ui_loop: asyncio.AbstractEventLoop | None = None
        self.ui_url: str | None = None

    # triggers

    def trigger(self, why: str, *, fetch: bool = False) -> None:
        self.trigger_times.append((why, time.monotonic()))
        if fetch:
            self._fetch_wanted.set()
        self._wake.set()

    def stop(self) -> None:
        self.state.phase = "stopping"
        self._stop.set()
        self._wake.set()

    # running

    def run(self) -> None:
        """Run until stop(): serve, hold the lock, pass whenever triggered or due."""
        self._serve()
        try:
            self._serve_ui()
            self._watch_files()
            with self._leader_lock():
                if self._stop.is_set():
                    return
                self._autoscale()
                self._loop()
        finally:
            for server in self._servers:
                server.shutdown()
            self._stop_ui()
            self.state.phase = "stopped"

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            log.info("stop_requested", signal=signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @contextlib.contextmanager
    def _leader_lock(self) -> Iterator[None]:
        """The target's writer lock (writerlock.py), for the daemon's whole life."""
        path = self.options.lock_path
        if path is None:
            yield
            return
        lock = WriterLock(path, command="reconcile watch")

        def waiting(holder: Holder | None) -> None:
            self.state.phase = "waiting_for_lock"
            self.state.lock_holder = describe(holder)
            log.warning(
                "waiting_for_lock",
                lock=str(path),
                holder=describe(holder),
                reason=f"target {self.target.name} is being changed by {describe(holder)}",
            )

        if not lock.acquire(timeout_s=None, on_wait=waiting, should_stop=self._stop.is_set):
            yield  # stopped while waiting: run() returns at once
            return
        self.state.lock_holder = None
        log.info("lock_acquired", lock=str(path))
        try:
            yield
        finally:
            lock.release()

    def _loop(self) -> None:
        backoff = 0.0
        next_due = 0.0  # the first pass runs at once
        while not self._stop.is_set():
            wait = max(0.0, next_due - time.monotonic())
            self.state.phase = "idle"
            woke = self._wake.wait(timeout=wait)
            if self._stop.is_set():
                break
            self._wake.clear()
            reason = "trigger" if woke else "interval"
            # A fetch on a trigger that asks for it, and once an interval; the progress
            # timer's passes in between only look at the target again.
            due = time.monotonic() - self._fetched_at >= self.options.interval_s
            fetch = self._fetch_wanted.is_set() or (not woke and due)
            # Cleared before the pass: a fetch asked for during it (a webhook, the pass's
            # own rollout commit) is the next pass's.
            self._fetch_wanted.clear()
            if fetch:
                self._fetched_at = time.monotonic()
            outcome = self._one_pass(reason, fetch=fetch)
            self._progressing = outcome == "in_progress"
            if outcome == "in_progress":
                backoff = 0.0
                next_due = time.monotonic() + self.options.progress_interval_s
            elif outcome in ("ok", "failed_permanent"):
                # A permanent failure fails the same way until a commit changes something
                # (which triggers a pass at once): retrying sooner would only rebuild.
                backoff = 0.0
                next_due = time.monotonic() + self.options.interval_s
            else:
                # Transient or unreachable: retried with a growing pause, jittered so that
                # daemons of many repositories on one target do not retry in step.
                backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
                pause = min(backoff, self.options.interval_s) * random.uniform(0.5, 1.0)
                next_due = time.monotonic() + pause
                log.info("retry_scheduled", in_s=round(pause, 1))
            if outcome in ("ok", "in_progress") and self._rollout_wake is not None:
                # A rollout's step is judged every `interval` of its policy.
                next_due = min(next_due, time.monotonic() + self._rollout_wake)

    def _config_at(self, tree: FileTree) -> RepoConfig | None:
        """reconciler.yaml at the pass's revision; None when it is invalid (the pass's plan
        says why, with file and line)."""
        try:
            return load_repo_config(tree)
        except DesiredStateInvalid:
            return None

    def _target_at(self, config: RepoConfig | None) -> None:
        """The daemon's target as reconciler.yaml at this revision describes it: opened
        again when its entry changed (type or options)."""
        if self.target_for is None or config is None:
            return
        entry = config.target(self.target.name)
        if entry is None:
            raise TargetError(
                f"reconciler.yaml at this revision has no target {self.target.name!r}; "
                "the daemon keeps the target it was started with",
                code=ErrorCode.INVALID_TARGET_CONFIG,
            )
        if self._target_config is None:
            self._target_config = entry  # the one the daemon was started with
            return
        if entry != self._target_config:
            log.info("target_reconfigured", target=entry.name, type=entry.type)
            self.target = self.target_for(entry)
            self._target_config = entry
            if self._scaler is not None:
                # The autoscaler scales through the target as it is now configured.
                self._scaler.target = self.target

    def _one_pass(self, reason: str, *, fetch: bool) -> str:
        """One pass: "ok" (converged), "in_progress" (a rollout or gate to look at again
        soon), or "failed" (retried with a growing pause). The recorder hears it all."""
        self.recorder.pass_started(reason)
        self._last_result = None
        outcome = "failed"
        try:
            outcome = self._pass(reason, fetch=fetch)
        finally:
            self.recorder.pass_finished(
                outcome=outcome,
                result=self._last_result,
                error=None if outcome in ("ok", "in_progress") else self.state.last_error,
            )
        return outcome

    def _pass(self, reason: str, *, fetch: bool) -> str:
        started = time.monotonic()
        self.pass_starts.append(started)
        self.state.phase = "reconciling"
        log.info("pass_started", reason=reason)
        try:
            if fetch:
                self.source.refresh()
            tree, revision, root = self.source.current()
            config = self._config_at(tree)
            self._target_at(config)
            if (
                self.rollouter is None
                and revision is not None
                and config is not None
                and not config.rollouts.empty
            ):
                # Before the pass writes status: it reads the revision last reconciled.
                self.rollouter = self._new_rollouter()
            if isinstance(self.target, Builds):
                # A building target reads the commit's own files (a private checkout of
                # it), never the user's uncommitted edits.
                self.target.repo_root = root
            with self.apply_lock:
                result = run_pass(
                    tree,
                    self.target,
                    prune=self.options.prune or (config is not None and config.prune),
                    dry_run=False,
                    revision=revision,
                    write_status=self._write_status,
                    should_stop=self._stop.is_set,
                    watcher=self.recorder,
                )
            self._last_result = result
        except TargetUnavailable as exc:
            self._failed("target_unreachable", str(exc), started, error=exc)
            self.state.target_reachable = False
            return "failed"
        except (TargetError, GitSourceError) as exc:
            self._failed(
                "pass_error", str(exc), started, error=exc if isinstance(exc, TargetError) else None
            )
            return "failed"
        except Exception as exc:
            # Whatever a pass meets (a client error no target translated), the daemon lives
            # on: the pass failed, the next one (after the backoff) starts afresh.
            log.exception("pass_crashed")
            self._failed("pass_error", f"{type(exc).__name__}: {exc}", started)
            return "failed"
        self.state.target_reachable = True
        seconds = time.monotonic() - started
        self.metrics.duration.observe(seconds)
        applied = sum(
            1 for r in result.results if r.outcome in (Outcome.SUCCEEDED, Outcome.IN_PROGRESS)
        )
        if (
            revision is not None
            and revision == self.state.last_commit
            and applied
            and not self._progressing
        ):
            # Steps of a commit already applied, not the continuation of a rollout: drift.
            self.metrics.drift.inc(applied)
            log.info("drift_corrected", steps=applied, commit=revision)
        failed = result.failed
        self.metrics.passes.labels("failed" if failed else "succeeded").inc()
        for r in result.results:
            if r.outcome == Outcome.FAILED:
                code = r.error_code or ErrorCode.TARGET_ERROR.value
                kind = error_kind(code) or ErrorKind.TRANSIENT
                self.metrics.failures.labels(code, kind.value).inc()
        if result.plan.errors:
            self.metrics.errors.labels("invalid_desired_state").inc()
            self.state.last_error = f"{len(result.plan.errors)} error(s) in {revision}"
        elif failed:
            self.metrics.errors.labels("step_failed").inc()
            self.state.last_error = "a step failed"
        else:
            self.state.last_error = None
            self.state.last_success = time.time()
            self.metrics.info.clear()
            self.metrics.info.labels(revision or "working-tree").set(1)
        self.state.last_commit = revision
        in_progress = result.in_progress
        log.info(
            "pass_finished",
            commit=revision,
            steps=len(result.plan.steps),
            errors=len(result.plan.errors),
            failed=failed,
            in_progress=in_progress,
            seconds=round(seconds, 3),
        )
        if self.on_pass is not None:
            self.on_pass(result)
        self._rollouts(result, config)
        self._push_status()
        if in_progress and not result.plan.errors:
            return "in_progress"
        # An invalid commit is not retried sooner: only a new commit can fix it.
        if not failed or result.plan.errors:
            return "ok"
        kinds = {
            error_kind(r.error_code) or ErrorKind.TRANSIENT
            for r in result.results
            if r.outcome == Outcome.FAILED
        }
        return "failed_permanent" if kinds == {ErrorKind.PERMANENT} else "failed"

    def _rollouts(self, result: PassResult, config: RepoConfig | None) -> None:
        """After the pass: the rollouts' analysis and their commits (reconciler.rollouter).
        A commit moved the watched branch: the next pass fetches it at once."""
        self._rollout_wake = None
        if config is None or result.revision is None:
            return
        if self.rollouter is None:
            return
        try:
            after = self.rollouter.after_pass(result, config, self.target)
        except GitSourceError as exc:
            log.warning("rollout_failed", error=str(exc))
            return
        except Exception:
            # A rollout's trouble never ends the daemon: the next pass tries again.
            log.exception("rollout_crashed")
            return
        self._rollout_wake = after.wake_in_s
        if after.status_changed and result.status:
            files = {status_path(name): render_status(doc) for name, doc in result.status.items()}
            self._write_status(files, f"rollout status of {result.revision} on {self.target.name}")
        if after.committed:
            self.trigger("rollout", fetch=True)

    def _new_rollouter(self) -> Rollouter | None:
        git_source = self.source.git
        branch = (
            git_source.branch
            if isinstance(git_source, RemoteCheckout)
            else git_source.current_branch()
        )
        if branch is None:
            log.warning("rollouts_off", reason="the checkout is on no branch to commit steps to")
            return None
        try:
            found = git_source.find_status(self.options.status_branch).files
        except GitSourceError:
            found = {}
        return Rollouter(git_source, branch=branch, status=found)

    def _failed(
        self, kind: str, message: str, started: float, *, error: TargetError | None = None
    ) -> None:
        self.metrics.errors.labels(kind).inc()
        self.metrics.passes.labels("failed").inc()
        if error is not None:
            self.metrics.failures.labels(error.code.value, error.kind.value).inc()
        self.metrics.duration.observe(time.monotonic() - started)
        self.state.last_error = message
        # `kind` is the metric's label; error_kind says whether the next pass may succeed
        # as it is (transient), a commit is needed (permanent) or the platform is down.
        fields = {"code": error.code.value, "error_kind": error.kind.value} if error else {}
        log.warning("pass_failed", kind=kind, error=message, **fields)
        if kind == "target_unreachable":
            self._record_unreachable(message)

    def _record_unreachable(self, message: str) -> None:
        """Status says the target cannot be reached, keeping what was last observed."""
        git_source = self.source.git
        try:
            _, files = git_source.read_status(self.options.status_branch)
            updated = {}
            for path, text in files.items():
                doc = yaml.safe_load(text) or {}
                doc["target_reachable"] = False
                doc["last_error"] = f"TargetUnavailable: {message}"
                updated[path] = render_status(doc)
            if updated:
                self._write_status(updated, f"target {self.target.name} unreachable")
                self._push_status()
        except (GitSourceError, OSError) as exc:
            log.warning("status_not_written", error=str(exc))

    def _write_status(self, files: Mapping[str, str], message: str) -> None:
        if self.rollouter is not None:
            files = self.rollouter.annotate(files)
        commit = self.source.git.write_status(
            files, message=message, branch=self.options.status_branch
        )
        if commit.commit is not None:
            log.info("status_committed", commit=commit.commit, branch=commit.branch)
            self.state.pending_push = True

    def _push_status(self) -> None:
        if not self.state.pending_push:
            return
        try:
            self.source.push_status(self.options.status_branch)
            self.state.pending_push = False
        except (PushRejected, GitSourceError) as exc:
            # Kept locally; the next pass (soon, with backoff) tries again.
            log.warning("status_push_failed", error=str(exc))
            self._wake_after(2.0)

    def _wake_after(self, seconds: float) -> None:
        timer = threading.Timer(seconds, self._wake.set)
        timer.daemon = True
        timer.start()

    # autoscaling

    def _autoscale(self) -> None:
        """Targets that can autoscale (target_utilization) get a loop of their own."""
        if not isinstance(self.target, Autoscales):
            return
        # A scale step starts instances; the passes after it route them once ready.
        scaler = self.target.autoscaler(self.apply_lock, wake=lambda: self.trigger("autoscale"))
        self._scaler = scaler

        def loop() -> None:
            while not self._stop.is_set():
                scaler.tick()
                self._stop.wait(scaler.interval())

        thread = threading.Thread(target=loop, name="autoscaler", daemon=True)
        thread.start()
        self._threads.append(thread)

    # file watching

    def _watch_files(self) -> None:
        paths = self.source.watch_paths()
        if not paths:
            return
        import watchfiles

        def watch() -> None:
            for changes in watchfiles.watch(
                *paths,
                stop_event=self._stop,
                # watchfiles' default filter drops everything under .git: our own filter
                # (is_trigger) decides instead.
                watch_filter=None,
                debounce=50,
                step=20,
                yield_on_timeout=False,
                rust_timeout=1000,
                raise_interrupt=False,
            ):
                relevant = [
                    p for _, p in changes if self.source.is_trigger(p, self.options.status_branch)
                ]
                if relevant:
                    self.trigger(f"change:{Path(relevant[0]).name}")

        thread = threading.Thread(target=watch, name="watch", daemon=True)
        thread.start()
        self._threads.append(thread)

    # the dashboard

    def _serve_ui(self) -> None:
        """The dashboard on its own thread and event loop; raises OSError when its port
        cannot be bound (the daemon does not start half-served)."""
        if self.options.ui_port is None:
            return
        from reconciler.ui.server import UiOptions, start

        # A repository object of its own: the pages never share one with a running pass.
        root = self.source.path if isinstance(self.source, LocalSource) else self.source.git.root
        source = DaemonStatusSource(
            self.recorder,
            GitStatusSource(GitSource(root), branch=self.options.status_branch),
        )
        features = DaemonFeatures(
            self.recorder,
            target=lambda: self.target,
            daemon_status=lambda: {
                "phase": self.state.phase,
                "lock_holder": self.state.lock_holder,
                "target_reachable": self.state.target_reachable,
            },
            metrics_s=self.options.ui_metrics_s,
        )
        loop = asyncio.new_event_loop()
        started = threading.Event()
        box: dict[str, Any] = {}

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                runner, url = loop.run_until_complete(
                    start(
                        source,
                        host=self.options.ui_host,
                        port=self.options.ui_port or 0,
                        options=UiOptions(token=self.options.ui_token),
                        daemon=features,
                    )
                )
            except OSError as exc:
                box["error"] = exc
                started.set()
                loop.close()
                return
            box["url"] = url
            started.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        thread = threading.Thread(target=serve, name="ui", daemon=True)
        thread.start()
        started.wait(60)
        if "error" in box:
            raise box["error"]
        self._ui_loop = loop
        self._threads.append(thread)
        self.ui_url = box.get("url")
        log.info("ui_serving", url=self.ui_url)

    def _stop_ui(self) -> None:
        if self._ui_loop is not None and not self._ui_loop.is_closed():
            self._ui_loop.call_soon_threadsafe(self._ui_loop.stop)
        self._ui_loop = None

    # HTTP: health, readiness, metrics; webhooks

    def _serve(self) -> None:
        if self.options.metrics_port is not None:
            self._start_server(self.options.metrics_port, _ops_handler(self))
        if self.options.webhook_port is not None:
            self._start_server(self.options.webhook_port, _webhook_handler(self))

    def _start_server(self, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        server = ThreadingHTTPServer((self.options.host, port), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True)
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)

    @property
    def ports(self) -> list[int]:
        return [int(s.server_address[1]) for s in self._servers]


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Access logs of health checks would drown the daemon's own."""

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _ops_handler(daemon: Daemon) -> type[BaseHTTPRequestHandler]:
    class Ops(_Quiet):
        def do_GET(self) -> None:
            state = daemon.state
            if self.path == "/metrics":
                self._send(
                    200, generate_latest(daemon.metrics.registry), "text/plain; version=0.0.4"
                )
            elif self.path == "/healthz":
                body = {
                    "phase": state.phase,
                    "last_commit": state.last_commit,
                    "last_error": state.last_error,
                    "target_reachable": state.target_reachable,
                    "lock_holder": state.lock_holder,
                    "seconds_since_last_success": None
                    if state.last_success is None
                    else round(time.time() - state.last_success, 1),
                }
                self._send(200, json.dumps(body).encode())
            elif self.path == "/readyz":
                ready = state.phase in ("idle", "reconciling") and state.last_success is not None
                self._send(
                    200 if ready else 503,
                    json.dumps({"ready": ready, "phase": state.phase}).encode(),
                )
            else:
                self._send(404, b'{"error": "not found"}')

    return Ops


def verify_webhook(headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    """GitHub (X-Hub-Signature-256: sha256=HMAC) or GitLab (X-Gitlab-Token) deliveries.

    Header names are case-insensitive (RFC 9110; HTTP/2 proxies forward them lower-cased),
    so `headers` may spell them in any case."""
    lowered = {name.lower(): value for name, value in headers.items()}
    signature = lowered.get("x-hub-signature-256")
    if signature is not None:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature.encode(), expected.encode())
    token = lowered.get("x-gitlab-token")
    if token is not None:
        return hmac.compare_digest(token.encode(), secret.encode())
    return False


def _webhook_handler(daemon: Daemon) -> type[BaseHTTPRequestHandler]:
    class Webhook(_Quiet):
        def do_POST(self) -> None:
            # self.headers (an email.message.Message) looks names up case-insensitively.
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:  # read(-1) would wait for the client to close
                self._send(400, b'{"error": "bad Content-Length"}')
                return
            if length > 25 * 1024 * 1024:
                self._send(413, b'{"error": "too large"}')
                return
            body = self.rfile.read(length)
            secret = daemon.options.webhook_secret
            headers = dict(self.headers.items())
            if not secret or not verify_webhook(headers, body, secret):
                log.warning("webhook_refused", client=self.client_address[0])
                self._send(401, b'{"error": "unauthorized"}')
                return
            event = self.headers.get("X-GitHub-Event") or self.headers.get("X-Gitlab-Event")
            daemon.trigger(f"webhook:{event}", fetch=True)
            self._send(202, b'{"accepted": true}')

    return Webhook


def default_lock_path(target_name: str) -> Path:
    """The writer lock of a target (writerlock.lock_path; kept for callers of this name)."""
    return lock_path(target_name)
