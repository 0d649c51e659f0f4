"""Rollouts in the daemon: the I/O around the pure reconciler.rollouts.

After a pass that converged, for each endpoint under a rollout policy:

1. A rollout starts when the change from the revision last reconciled (the previous pass's,
   or after a restart the commit the status branch records) to this one gives the endpoint
   a new version beside a stable deployment holding all traffic (machine.rollout_starts).
   The daemon's own commits change only traffic, so they never start one.
2. When the target shows the step's values applied, the router's metrics are read
   (targets.capabilities.HasRouterMetrics) and kept as the step's start; every `interval`
   they are read again and the increase judged (analysis.judge). The snapshot lives in
   memory only: after a restart the step's window begins again, so a step is never
   promoted early.
3. machine.decide says what to do; an advance or a rollback is a commit of the endpoint's
   YAML (yamledit: only the numbers change) to the watched branch, made with the daemon's
   identity and never forced (gitsource.commit_file re-reads a branch that moved), or with
   `mode: pull-request` a branch per step pushed for a person to merge (idempotent: decide
   says advance on every pass until it is merged).
4. Status gets a `rollout:` block per endpoint (state, step, reason, the analysis figures).

Git is the state: a restarted daemon finds its rollouts again in the status branch's
`rollout:` blocks and in the trailers of the watched branch (machine.read_mark, each
endpoint's own mark: a squash may hold several). A rollback trailer newer than the rollout's
start (the daemon's, or a person's `reconcile rollout abort`) on values back at step 0 ends
it, so a rolled-back rollout, whose values equal its step 0, never starts again: only a new
version does; one on values still split (a forged or copied message) rolls nothing back and
is not taken as the end. Once a step was committed (a step trailer newer than the start, or
a rollout found again from one), values back at step 0 are a person's (a revert) and win:
the rollout stops, step 1 is not committed again. pause/resume are commits too
(rollouts.control).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, Final

import yaml

from reconciler.engine import PassResult, load
from reconciler.gitsource import GitSource, GitSourceError
from reconciler.logs import get_logger
from reconciler.model.specs import weights
from reconciler.model.state import DesiredState
from reconciler.promapi import PrometheusClient, PrometheusError
from reconciler.repoconfig import RepoConfig
from reconciler.rollouts import promql
from reconciler.rollouts.analysis import (
    LIVE,
    MIRROR,
    Snapshot,
    StepFigures,
    Verdict,
    judge,
    parse_exposition,
    parse_expositions,
)
from reconciler.rollouts.analysis import step_figures as figures_of
from reconciler.rollouts.control import Verb, paused_by, read_controls
from reconciler.rollouts.machine import (
    Action,
    Decision,
    Rollout,
    RolloutStart,
    branch_name,
    decide,
    edited_file,
    read_mark,
    rollout_starts,
)
from reconciler.rollouts.policy import Mode, PrometheusSource, RolloutPolicies, StepKind
from reconciler.rollouts.yamledit import WeightsEditError
from reconciler.status import STATUS_DIR, render_status
from reconciler.targets.base import Target, TargetError
from reconciler.targets.capabilities import HasRouterMetrics, HasRouterMetricsEach

log = get_logger("reconciler.rollouter")

# How far back the watched branch's messages are read for trailers (marks, controls).
HISTORY: Final = 300
STATUS_KEY: Final = "rollout"
_SOON_S: Final = 0.05


class State(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"  # the daemon rolled back
    ABORTED = "Aborted"  # a person rolled back (reconcile rollout abort)
    STOPPED = "Stopped"  # a person's commit set other values; theirs won
    NOT_STARTED = "NotStarted"  # a change that starts no rollout, and why


ACTIVE: Final = frozenset({State.PROGRESSING, State.PAUSED})
ENDED: Final = frozenset({State.SUCCEEDED, State.FAILED, State.ABORTED, State.STOPPED})


@dataclass(frozen=True, slots=True)
class Window:
    """A step's analysis window: the metrics when the target showed the step applied."""

    step: int
    snapshot: Snapshot
    began: float  # monotonic
    judged: float  # when it was last judged (began, before the first judgement)
    # Where its figures come from (None: the router, through the target). A policy that
    # changes its source mid-step begins a new window: a router snapshot is no start for
    # Prometheus's figures, nor the reverse.
    source: PrometheusSource | None = None


@dataclass(frozen=True, slots=True)
class Tracked:
    rollout: Rollout
    started_by: RolloutStart | None  # None: found again after a restart
    start_commit: str | None  # the revision at which the start was seen
    window: Window | None = None
    verdict: Verdict | None = None
    last_commit: str | None = None  # the daemon's newest rollout commit (or branch tip)
    # Found again after a restart from a step trailer (its start_commit is that commit, so
    # the step is older than `since`): a step of it was committed already.
    from_mark: bool = False


@dataclass(frozen=True, slots=True)
class AfterPass:
    committed: bool  # the watched branch moved: the daemon fetches and passes again
    wake_in_s: float | None  # the next judgement is due then
    status_changed: bool  # the rollout blocks differ: status is written again


class Rollouter:
    """Keeps the rollouts of one daemon; after_pass runs on the pass thread only."""

    def __init__(
        self,
        git: GitSource,
        *,
        branch: str,
        status: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.git = git
        self.branch = branch
        self.clock = clock
        self.tracked: dict[str, Tracked] = {}
        self.blocks: dict[str, dict[str, Any]] = {}
        self._base: tuple[str, DesiredState] | None = None
        self._recovered = False
        # After a restart: the rollout blocks and the revision the status branch records.
        self._status_blocks: dict[str, dict[str, Any]] = {}
        self._status_commit: str | None = None
        for text in (status or {}).values():
            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError:
                continue
            if not isinstance(doc, dict) or not isinstance(doc.get("endpoint"), str):
                continue
            if isinstance(doc.get("commit"), str):
                self._status_commit = doc["commit"]
            block = doc.get(STATUS_KEY)
            if isinstance(block, dict):
                self._status_blocks[doc["endpoint"]] = block
                self.blocks[doc["endpoint"]] = block

    # --- status --------------------------------------------------------------------------

    def annotate(self, files: Mapping[str, str]) -> dict[str, str]:
        """Status files with each endpoint's `rollout:` block added (at the end: a status
        file of an endpoint without a rollout stays byte for byte as it was)."""
        out = dict(files)
        for path, text in files.items():
            posix = PurePosixPath(path)
            block = self.blocks.get(posix.stem)
            if block is None or posix.parent.as_posix() != STATUS_DIR:
                continue
            doc = yaml.safe_load(text)
            if isinstance(doc, dict):
                doc[STATUS_KEY] = block
                out[path] = render_status(doc)
        return out

    # --- the pass ------------------------------------------------------------------------

    def after_pass(self, result: PassResult, config: RepoConfig, target: Target) -> AfterPass:
        revision, desired = result.revision, result.desired
        before = {k: dict(v) for k, v in self.blocks.items()}
        if revision is None or desired is None:
            return AfterPass(False, None, False)
        if not result.converged:
            # Judged once the target shows the values; the progress passes come meanwhile.
            return AfterPass(False, None, False)
        policies = config.rollouts
        messages = self.git.branch_messages(revision, limit=HISTORY)
        self._starts(revision, desired, policies)
        if not self._recovered:
            self._recover(desired, policies, messages)
            self._recovered = True
        self._base = (revision, desired)
        committed = False
        for endpoint in sorted(self.tracked):
            try:
                committed = self._step(endpoint, result, policies, messages, target) or committed
            except (GitSourceError, WeightsEditError) as exc:
                log.warning("rollout_commit_failed", endpoint=endpoint, error=str(exc))
                self._block(endpoint, State.PROGRESSING, f"cannot commit the step: {exc}")
        return AfterPass(committed, self._wake(), self.blocks != before)

    def _starts(self, revision: str, desired: DesiredState, policies: RolloutPolicies) -> None:
        base = self._base
        if base is None and self._status_commit not in (None, revision):
            base = self._desired_at(self._status_commit)
        elif base is None and self._status_commit is None:
            # No pass recorded at all (a daemon's first start): the commit before is the
            # best guess of what ran, so the commit that brings a new version starts it.
            base = self._desired_at(self.git.parent(revision))
        if base is None or base[0] == revision or policies.empty:
            return
        starts, notes = rollout_starts(base[1], desired, policies)
        for note in notes:
            log.info("rollout_not_started", endpoint=note.endpoint, reason=note.message)
            if note.endpoint not in self.tracked:
                # A rollout under way goes on (its next judgement is of what now runs).
                self.blocks[note.endpoint] = {
                    "state": str(State.NOT_STARTED),
                    "reason": note.message,
                }
        for start in starts:
            policy = policies.for_endpoint(start.endpoint)
            assert policy is not None  # rollout_starts only starts endpoints under one
            rollout = Rollout(start.endpoint, start.stable, start.canary, policy)
            log.info(
                "rollout_started",
                endpoint=start.endpoint,
                stable=start.stable,
                canary=start.canary,
                changed=list(start.changed),
                commit=revision,
            )
            self.tracked[start.endpoint] = Tracked(rollout, start, revision)

    def _desired_at(self, commit: str | None) -> tuple[str, DesiredState] | None:
        if commit is None:
            return None
        try:
            desired, _ = load(self.git.tree(commit), revision=commit)
        except (GitSourceError, OSError):
            return None
        return (commit, desired) if desired is not None else None

    def _recover(
        self,
        desired: DesiredState,
        policies: RolloutPolicies,
        messages: list[tuple[str, str]],
    ) -> None:
        """After a restart: the rollouts under way, from status or from the trailers."""
        for spec in desired.endpoints:
            name = spec.name
            policy = policies.for_endpoint(name)
            if policy is None or name in self.tracked:
                continue
            block = self._status_blocks.get(name, {})
            stable, canary = block.get("stable"), block.get("canary")
            start = block.get("start_commit")
            from_mark = False
            if block.get("state") not in ACTIVE or not (
                isinstance(stable, str) and isinstance(canary, str)
            ):
                stable = canary = start = None
                for index, (commit, message) in enumerate(messages):
                    # The endpoint's own mark: a squash may list another endpoint's first.
                    mark = read_mark(message, name)
                    if mark is None:
                        continue
                    # A step's trailer of a rollout that status says ended (a person's
                    # commit stopped it) is not one to resume: its values may read as a
                    # step again (all traffic back on stable: step 0) and the daemon would
                    # commit the rollout anew against that person's decision.
                    ended = _ended_since(block, messages[: index + 1])
                    if not mark.rollback and mark.step < mark.total and not ended:
                        stable, canary, start = mark.stable, mark.canary, commit
                        from_mark = True
                    break
            if stable is None or canary is None:
                continue
            log.info("rollout_resumed", endpoint=name, stable=stable, canary=canary)
            self.tracked[name] = Tracked(
                Rollout(name, stable, canary, policy),
                None,
                start if isinstance(start, str) else None,
                from_mark=from_mark,
            )

    def _step(
        self,
        endpoint: str,
        result: PassResult,
        policies: RolloutPolicies,
        messages: list[tuple[str, str]],
        target: Target,
    ) -> bool:
        """One rollout's move after the pass; True when a commit moved the watched branch."""
        tracked = self.tracked[endpoint]
        desired = result.desired
        assert desired is not None
        policy = policies.for_endpoint(endpoint)
        spec = desired.endpoint(endpoint)
        names = {d.name for d in desired.deployments_of(endpoint)}
        rollout = tracked.rollout
        if policy is None or spec is None or not {rollout.stable, rollout.canary} <= names:
            self._end(
                endpoint,
                State.STOPPED,
                "the endpoint, its deployments or its policy were removed by a commit",
            )
            return False
        rollout = replace(rollout, policy=policy)  # the policy at this revision
        tracked = replace(tracked, rollout=rollout)
        since = _since(messages, tracked.start_commit)
        position = rollout.position(spec.traffic, spec.mirror_traffic)
        # Whether a step of this rollout was committed: values back at step 0 were then put
        # there by a person (a revert, a hand edit) and win; step 1 is not committed again.
        stepped = tracked.from_mark
        for commit, message in since:
            # The endpoint's own mark: a squash may list another endpoint's first.
            mark = read_mark(message, endpoint)
            if mark is None:
                continue
            if mark.rollback:
                if position != 0:
                    # A rollback trailer on values that roll nothing back (a person's
                    # forged or copied message): traffic is still split, the rollout goes on.
                    continue
                aborted = any(
                    c.endpoint == endpoint and c.verb is Verb.ABORT for c in read_controls(message)
                )
                state = State.ABORTED if aborted else State.FAILED
                why = "aborted by" if aborted else "rolled back by"
                self._end(endpoint, state, f"{why} commit {commit[:12]}")
                return False
            stepped = True
            break  # the newest rollout commit is a step: still running
        pause = paused_by(endpoint, since)
        if pause is not None:
            self.tracked[endpoint] = replace(tracked, window=None, verdict=None)
            self._block(endpoint, State.PAUSED, f"paused by commit {pause[:12]}")
            return False
        live = result.live_after.endpoint(endpoint)
        shown = live is not None and (
            weights(dict(live.spec.traffic)) == weights(dict(spec.traffic))
            and weights(dict(live.spec.mirror_traffic)) == weights(dict(spec.mirror_traffic))
        )
        if not shown:
            self.tracked[endpoint] = tracked
            self._block(endpoint, State.PROGRESSING, "waiting for the target to show the step")
            return False
        if position:
            found = self._judged(endpoint, tracked, position, target)
            if found is None:
                return False
            tracked = found
        self.tracked[endpoint] = tracked
        decision = decide(
            rollout,
            traffic=spec.traffic,
            mirror_traffic=spec.mirror_traffic,
            verdict=tracked.verdict,
            started_by=tracked.started_by,
            stepped=stepped,
        )
        return self._act(endpoint, tracked, decision, spec.source.file if spec.source else None)

    def _judged(
        self, endpoint: str, tracked: Tracked, position: int, target: Target
    ) -> Tracked | None:
        """The tracked rollout with its window begun or judged when due; None when the
        router's metrics cannot be read (the step waits, never promotes)."""
        now = self.clock()
        rollout = tracked.rollout
        source = rollout.policy.metrics
        window = tracked.window
        if window is not None and (window.step != position or window.source != source):
            window = None
        due = window is None or now - window.judged >= rollout.policy.interval_s - _SOON_S
        if not due:
            return tracked
        step = rollout.policy.step(position)
        canary_kind = MIRROR if step.kind is StepKind.MIRROR else LIVE
        try:
            if source is not None:
                # The history is Prometheus's: a window needs only its start time, and a
                # first query says early whether the server answers and scrapes the router.
                figures = self._prometheus_figures(
                    endpoint,
                    source,
                    rollout,
                    canary_kind=canary_kind,
                    elapsed_s=now - window.began if window else 0.0,
                )
                snapshot = Snapshot()
            else:
                snapshot, figures = self._scrape(endpoint, target), None
        except (TargetError, ValueError, OSError, PrometheusError) as exc:
            self.tracked[endpoint] = tracked
            where = "the router's metrics" if source is None else "the metrics from Prometheus"
            # The step is known even without a window: status names it.
            reason = f"cannot read {where}: {exc}"
            log.warning(
                "rollout_metrics_unreadable", endpoint=endpoint, step=position, error=reason
            )
            self._block(endpoint, State.PROGRESSING, reason, step=position)
            return None
        if window is None:
            log.info("rollout_step_window", endpoint=endpoint, step=position)
            window = Window(position, snapshot, now, now, source)
            return replace(tracked, window=window, verdict=None)
        if figures is None:
            figures = figures_of(
                snapshot.since(window.snapshot),
                stable=rollout.stable,
                canary=rollout.canary,
                canary_kind=canary_kind,
                elapsed_s=now - window.began,
            )
        verdict = judge(rollout.policy.thresholds, figures, step_for_s=step.for_s)
        log.info(
            "rollout_judged",
            endpoint=endpoint,
            step=position,
            outcome=verdict.outcome.value,
            reason=verdict.reason,
        )
        return replace(tracked, window=replace(window, judged=now), verdict=verdict)

    def _scrape(self, endpoint: str, target: Target) -> Snapshot:
        if isinstance(target, HasRouterMetricsEach):  # several routers: each followed alone
            return parse_expositions(target.router_metrics_each(endpoint), endpoint)
        if not isinstance(target, HasRouterMetrics):
            raise TargetError(f"target {target.name} cannot report its router's metrics")
        return parse_exposition(target.router_metrics(endpoint), endpoint)

    def _prometheus_figures(
        self,
        endpoint: str,
        source: PrometheusSource,
        rollout: Rollout,
        *,
        canary_kind: str,
        elapsed_s: float,
    ) -> StepFigures | None:
        """The step's figures over its window so far, by PromQL (rollouts.promql); at the
        window's start (elapsed 0) only whether Prometheus scrapes the router: None."""
        client = PrometheusClient(
            source.address,
            timeout_s=source.timeout_s,
            bearer_token_env=source.bearer_token_env,
            bearer_token_file=source.bearer_token_file,
        )
        queries = promql.step_queries(
            endpoint=endpoint,
            stable=rollout.stable,
            canary=rollout.canary,
            canary_kind=canary_kind,
            window_s=elapsed_s,
            labels=source.labels,
        )
        at = time.time()  # one instant for every query: the figures agree with each other
        if elapsed_s <= 0:
            queries = tuple(q for q in queries if q.name == promql.SCRAPED)
        answers = {q.name: client.query(q.expr, at=at) for q in queries}
        if elapsed_s <= 0:
            promql.check_scraped(answers[promql.SCRAPED], endpoint=endpoint)
            return None
        return promql.step_figures(
            answers,
            endpoint=endpoint,
            stable=rollout.stable,
            canary=rollout.canary,
            canary_kind=canary_kind,
            elapsed_s=elapsed_s,
        )

    def _act(self, endpoint: str, tracked: Tracked, decision: Decision, file: str | None) -> bool:
        rollout = tracked.rollout
        if decision.action is Action.STOP:
            self._end(endpoint, State.STOPPED, decision.reason)
            return False
        if decision.action is Action.COMPLETE:
            self._end(endpoint, State.SUCCEEDED, decision.reason)
            return False
        if decision.action is Action.HOLD:
            self._block(endpoint, State.PROGRESSING, decision.reason)
            return False
        assert decision.edit is not None and decision.message is not None
        if file is None:
            self._block(endpoint, State.PROGRESSING, "the endpoint's file is not known")
            return False
        edit = decision.edit

        def change(text: str | None) -> str | None:
            # The values decide saw must still be there: a person's commit in between wins
            # (the next pass re-plans from it), only an unrelated one is built upon.
            if text is None or _position(text, rollout) != decision.step:
                return None
            return edited_file(text, edit)

        rollback = decision.action is Action.ROLLBACK
        if rollout.policy.mode is Mode.PULL_REQUEST:
            name = branch_name(rollout, decision.next_step or decision.step, rollback=rollback)
            made = self.git.propose_file(
                file, change, message=decision.message, base=self.branch, branch=name
            )
            if made.commit is not None:
                log.info("rollout_branch_pushed", endpoint=endpoint, branch=name)
            what = "roll back" if rollback else f"step {decision.next_step}"
            self.tracked[endpoint] = replace(
                tracked, last_commit=made.commit or tracked.last_commit
            )
            self._block(
                endpoint,
                State.PROGRESSING,
                f"{decision.reason}; {what} waits for a person to merge branch {name}",
                branch=name,
            )
            return False
        made = self.git.commit_file(file, change, message=decision.message, branch=self.branch)
        if made.commit is None:
            self._block(endpoint, State.PROGRESSING, "the branch changed meanwhile; re-planned")
            return False
        log.info(
            "rollout_committed",
            endpoint=endpoint,
            action=decision.action.value,
            commit=made.commit,
            attempts=made.attempts,
        )
        self.tracked[endpoint] = replace(tracked, last_commit=made.commit)
        if rollback:
            self._end(endpoint, State.FAILED, decision.reason, commit=made.commit)
        else:
            reason = f"step {decision.next_step}/{rollout.policy.total} committed"
            self._block(endpoint, State.PROGRESSING, reason, step=decision.next_step)
        return True

    # --- bookkeeping ---------------------------------------------------------------------

    def _block(
        self,
        endpoint: str,
        state: State,
        reason: str,
        *,
        step: int | None = None,
        branch: str | None = None,
        commit: str | None = None,
    ) -> None:
        tracked = self.tracked.get(endpoint)
        if tracked is None:
            return
        rollout = tracked.rollout
        window = tracked.window
        at = step if step is not None else (window.step if window else None)
        block: dict[str, Any] = {
            "state": str(state),
            "stable": rollout.stable,
            "canary": rollout.canary,
            "step": at,
            "steps": rollout.policy.total,
            "step_spec": rollout.policy.step(at).describe() if at else None,
            "mode": rollout.policy.mode.value,
            "reason": reason,
            "start_commit": tracked.start_commit,
            "last_commit": commit or tracked.last_commit,
        }
        if branch is not None:
            block["branch"] = branch
        if rollout.policy.metrics is not None:
            block["metrics"] = f"prometheus {rollout.policy.metrics.address}"
        if tracked.verdict is not None:
            block["analysis"] = tracked.verdict.as_json()
        self.blocks[endpoint] = block

    def _end(
        self,
        endpoint: str,
        state: State,
        reason: str,
        *,
        commit: str | None = None,
    ) -> None:
        log.info("rollout_ended", endpoint=endpoint, state=str(state), reason=reason)
        self._block(endpoint, state, reason, commit=commit)
        self.tracked.pop(endpoint, None)

    def _wake(self) -> float | None:
        """Seconds until the next judgement of a running rollout is due."""
        now = self.clock()
        # No window yet (metrics unreadable, paused): look again after an interval.
        waits = [
            max(_SOON_S, (t.window.judged if t.window else now) + t.rollout.policy.interval_s - now)
            for t in self.tracked.values()
        ]
        return min(waits, default=None)


def _ended_since(block: Mapping[str, Any], messages: list[tuple[str, str]]) -> bool:
    """Whether the status block says its rollout ended, and it is the rollout of the
    newest of these commits or a later one (a commit it records is among them)."""
    if block.get("state") not in ENDED:
        return False
    recorded = {block.get("start_commit"), block.get("last_commit")} - {None}
    return any(commit in recorded for commit, _ in messages)


def _since(messages: list[tuple[str, str]], start: str | None) -> list[tuple[str, str]]:
    """The messages newer than the rollout's start (all read, when it is not among them)."""
    for index, (commit, _) in enumerate(messages):
        if commit == start:
            return messages[:index]
    return messages


def _position(text: str, rollout: Rollout) -> int | None:
    """The step an endpoint file's text is at (machine.Rollout.position), None if none."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict):
        return None
    found = []
    for key in ("traffic", "mirror_traffic"):
        raw = doc.get(key)
        table = raw if isinstance(raw, dict) else {}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in table.values()):
            return None
        found.append(weights({str(k): v for k, v in table.items()}))
    return rollout.position(found[0], found[1])
