"""The rollout state machine as pure planning: when a rollout starts, which step the
committed YAML is at, and the next commit (promotion, rollback, or none). PURE.

Git is the state. A rollout is (endpoint, stable, canary, policy); its step is read from the
endpoint's traffic and mirror_traffic as committed, never remembered:

    step 0      traffic {stable: 100}                 (the commit that starts the rollout)
    mirror p    traffic {stable: 100}, mirror {canary: p}
    traffic p   traffic {stable: 100 - p, canary: p}, no mirror
    rollback    traffic {stable: 100}, no mirror      (the same values as step 0: the commit's
                                                       trailer tells them apart)

Each commit the daemon makes carries trailers, so a daemon restarted at any moment finds the
rollout again in `git log` and its step in the file:

    Reconcile-Rollout: my-endpoint step 2/5          (or: rollback at step 2/5)
    Reconcile-Rollout-Stable: blue
    Reconcile-Rollout-Canary: green

A rollout starts (`rollout_starts`) when, from one revision to the next, an endpoint under a
policy gets a deployment that is new or whose model, code or environment changed, while one
other deployment, unchanged, holds all live traffic at the new revision. The daemon's own
commits change only traffic and mirror_traffic, so they never start one. What it does not
start (two deployments changed at once, the traffic holder changed in place) is said in a
note.

`decide` takes the rollout, the committed values and the verdict of the current step, and
returns one of Advance (commit the next step), Hold (wait), Complete (the last step passed:
nothing to commit), Rollback (commit traffic back to stable, mirror off) or Stop (a person
committed values that are no step of the rollout: their commit wins, the rollout ends).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

from reconciler.model.specs import Weights, version_changes, weight_of, weights
from reconciler.model.state import DesiredState
from reconciler.rollouts.policy import RolloutPolicies, RolloutPolicy, StepKind, format_duration

# The analysis (decide) and the YAML editor (edited_file) only where they run: the review
# of `reconcile diff` previews schedules with neither (issue 15: start-up).
if TYPE_CHECKING:
    from reconciler.rollouts.analysis import Verdict

TRAILER: Final = "Reconcile-Rollout"
STABLE_TRAILER: Final = "Reconcile-Rollout-Stable"
CANARY_TRAILER: Final = "Reconcile-Rollout-Canary"
BRANCH_PREFIX: Final = "reconcile/rollout"
_MARK: Final = re.compile(
    rf"(?im)^{TRAILER}:[ \t]*(?P<endpoint>\S+)[ \t]+(?P<action>step|rollback at step)"
    r"[ \t]+(?P<number>\d+)/(?P<total>\d+)[ \t]*$"
)
_NAMED: Final = re.compile(r"(?im)^(?P<trailer>Reconcile-Rollout-(?:Stable|Canary)):[ \t]*(\S+)")


# --------------------------------------------------------------------------------------
# When a rollout starts


@dataclass(frozen=True, slots=True)
class RolloutStart:
    """A rollout a change starts: the endpoint, its stable and canary deployments."""

    endpoint: str
    stable: str
    canary: str
    changed: tuple[str, ...]  # what of the canary is new: ("new",) or ("model", "code", ...)


@dataclass(frozen=True, slots=True)
class RolloutNote:
    """Why a change of an endpoint under a policy starts no rollout."""

    endpoint: str
    message: str


def rollout_starts(
    base: DesiredState, head: DesiredState, policies: RolloutPolicies
) -> tuple[tuple[RolloutStart, ...], tuple[RolloutNote, ...]]:
    """The rollouts the change from BASE to HEAD starts, and why others start none."""
    starts: list[RolloutStart] = []
    notes: list[RolloutNote] = []
    for endpoint in head.endpoints:
        if policies.for_endpoint(endpoint.name) is None or base.endpoint(endpoint.name) is None:
            continue
        old = {d.name: d for d in base.deployments_of(endpoint.name)}
        changed = {
            d.name: parts
            for d in head.deployments_of(endpoint.name)
            if (parts := version_changes(old.get(d.name), d))
        }
        if not changed:
            continue
        holders = [name for name, percent in endpoint.traffic if percent == 100]
        stable = holders[0] if holders else None
        if stable is None:
            shown = ", ".join(f"{n} {p}" for n, p in endpoint.traffic) or "none"
            message = (
                f"{', '.join(sorted(changed))} changes but no single deployment holds all live "
                f"traffic ({shown}): no rollout; move it to the stable deployment first"
            )
            notes.append(RolloutNote(endpoint.name, message))
            continue
        if stable in changed:
            message = (
                f"{stable} holds all live traffic and changes in place "
                f"({', '.join(changed[stable])}): no rollout; declare the new version as "
                "another deployment to roll it out"
            )
            notes.append(RolloutNote(endpoint.name, message))
            continue
        if len(changed) > 1:
            message = (
                f"{', '.join(sorted(changed))} change together: no rollout; roll out one "
                "deployment at a time"
            )
            notes.append(RolloutNote(endpoint.name, message))
            continue
        ((canary, parts),) = changed.items()
        starts.append(RolloutStart(endpoint.name, stable, canary, parts))
    return tuple(starts), tuple(notes)


# --------------------------------------------------------------------------------------
# A rollout and its steps


@dataclass(frozen=True, slots=True)
class WeightsEdit:
    """New traffic and mirror_traffic of one endpoint (0 entries: set to 0 where written)."""

    endpoint: str
    traffic: Weights
    mirror_traffic: Weights


@dataclass(frozen=True, slots=True)
class Rollout:
    """The rollout of one endpoint's canary under its policy."""

    endpoint: str
    stable: str
    canary: str
    policy: RolloutPolicy

    def values(self, step: int) -> WeightsEdit:
        """Traffic and mirror of step `step` (0: before the first; all to stable)."""
        if step == 0:
            return self.rollback_values()
        chosen = self.policy.step(step)
        if chosen.kind is StepKind.MIRROR:
            return WeightsEdit(
                self.endpoint,
                ((self.stable, 100), (self.canary, 0)),
                ((self.canary, chosen.percent),),
            )
        return WeightsEdit(
            self.endpoint,
            ((self.stable, 100 - chosen.percent), (self.canary, chosen.percent)),
            ((self.canary, 0),),
        )

    def rollback_values(self) -> WeightsEdit:
        return WeightsEdit(
            self.endpoint, ((self.stable, 100), (self.canary, 0)), ((self.canary, 0),)
        )

    def position(self, traffic: Weights, mirror_traffic: Weights) -> int | None:
        """The step the committed values are at (0: none yet), None when they are no step.

        Values compare as the endpoint's spec does: a 0 entry is the same as none. A mirror
        of another deployment at step 0 is the person's own and still reads as step 0.
        """
        live = weights(dict(traffic))
        mirror = weights(dict(mirror_traffic))
        for step in range(self.policy.total, 0, -1):
            wanted = self.values(step)
            if live == weights(dict(wanted.traffic)) and mirror == weights(
                dict(wanted.mirror_traffic)
            ):
                return step
        if live == ((self.stable, 100),) and weight_of(mirror, self.canary) == 0:
            return 0
        return None

    def mark(self, action: str, step: int) -> str:
        return "\n".join(
            (
                f"{TRAILER}: {self.endpoint} {action} {step}/{self.policy.total}",
                f"{STABLE_TRAILER}: {self.stable}",
                f"{CANARY_TRAILER}: {self.canary}",
            )
        )

    def schedule(self) -> str:
        """The steps and thresholds in one paragraph (commit messages, the review)."""
        steps = ", ".join(s.describe() for s in self.policy.steps)
        t = self.policy.thresholds
        limits = [
            f"{name} {value:g}"
            for name, value in (
                ("error_rate", t.error_rate),
                ("p99_ms", t.p99_ms),
                ("p99_ratio", t.p99_ratio),
                ("shadow_agreement", t.shadow_agreement),
            )
            if value is not None
        ]
        source = self.policy.metrics
        read = "" if source is None else f"; figures from Prometheus at {source.address}"
        return (
            f"Schedule: {steps}; judged every {format_duration(self.policy.interval_s)} on at "
            f"least {t.min_requests} requests; thresholds: {', '.join(limits) or 'none'}{read}."
        )


@dataclass(frozen=True, slots=True)
class RolloutMark:
    """The trailers of a rollout commit, read back from `git log`."""

    endpoint: str
    rollback: bool
    step: int
    total: int
    stable: str | None
    canary: str | None


def read_mark(message: str, endpoint: str | None = None) -> RolloutMark | None:
    """The rollout trailers of a commit message (the first mark, or the first of
    `endpoint`), None when it has none."""
    return next((m for m in read_marks(message) if endpoint in (None, m.endpoint)), None)


def read_marks(message: str) -> tuple[RolloutMark, ...]:
    """Every rollout mark of a commit message, in its order.

    A message may hold several: a squash of pull-request branches, or of aborts of two
    endpoints. Each mark's Stable and Canary trailers are the ones after it, before the
    next mark (the order machine.Rollout.mark writes them in); a message of one mark has
    them anywhere, as before.
    """
    found = list(_MARK.finditer(message))
    marks: list[RolloutMark] = []
    for index, mark in enumerate(found):
        begin = mark.end() if len(found) > 1 else 0
        end = found[index + 1].start() if index + 1 < len(found) else len(message)
        named: dict[str, str] = {}
        for m in _NAMED.finditer(message, begin, end):
            named.setdefault(m["trailer"].lower(), m[2])
        marks.append(
            RolloutMark(
                endpoint=mark["endpoint"],
                rollback=mark["action"].lower() != "step",
                step=int(mark["number"]),
                total=int(mark["total"]),
                stable=named.get(STABLE_TRAILER.lower()),
                canary=named.get(CANARY_TRAILER.lower()),
            )
        )
    return tuple(marks)


def branch_name(rollout: Rollout, step: int, *, rollback: bool = False) -> str:
    """The branch pushed for a person to merge, in `mode: pull-request`."""
    what = "rollback" if rollback else f"step-{step}"
    return f"{BRANCH_PREFIX}/{rollout.endpoint}/{what}"


# --------------------------------------------------------------------------------------
# The decision


class Action(StrEnum):
    ADVANCE = "advance"
    HOLD = "hold"
    COMPLETE = "complete"
    ROLLBACK = "rollback"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now. edit and message are set for ADVANCE and ROLLBACK (a commit)."""

    action: Action
    step: int  # the step the committed values are at (the failing one for ROLLBACK)
    reason: str
    edit: WeightsEdit | None = None
    message: str | None = None
    next_step: int | None = None  # ADVANCE: the step the commit moves to


def decide(
    rollout: Rollout,
    *,
    traffic: Weights,
    mirror_traffic: Weights,
    verdict: Verdict | None,
    started_by: RolloutStart | None = None,
    stepped: bool = False,
) -> Decision:
    """The next move of a rollout whose endpoint holds these committed values.

    verdict is the analysis of the step the values are at, since it began (None: none yet).
    Step 0 needs none: the first step is committed at once. started_by, at step 0, lets the
    first commit say what started the rollout. stepped says that a step of this rollout
    was committed already (a step trailer newer than its start): values back at step 0 were
    then put there by a person (a revert of the step commit, a hand edit), and their commit
    wins as any other values that undo the rollout do; committing step 1 again would fight
    them.
    """
    step = rollout.position(traffic, mirror_traffic)
    total = rollout.policy.total
    if step is None:
        shown = _shown(traffic, mirror_traffic)
        reason = (
            f"{rollout.endpoint} was set to {shown} by a commit, which is no step of the "
            f"rollout of {rollout.canary}: that commit wins and the rollout stops"
        )
        return Decision(Action.STOP, 0, reason)
    if step == 0 and stepped:
        reason = (
            f"{rollout.endpoint} was set back to all traffic on {rollout.stable} by a commit "
            f"after the rollout of {rollout.canary} began (a revert of its step?): that "
            "commit wins and the rollout stops"
        )
        return Decision(Action.STOP, 0, reason)
    if step == 0:
        what = (
            f"{rollout.canary} ({', '.join(started_by.changed)})" if started_by else rollout.canary
        )
        body = (
            f"Starts the rollout of {what} on {rollout.endpoint}; {rollout.stable} is the "
            f"stable deployment.\n{rollout.schedule()}"
        )
        return _advance(rollout, 0, body, "the rollout starts")
    if verdict is None:
        return Decision(Action.HOLD, step, "no analysis of the step yet")
    described = f"Step {step}/{total} ({rollout.policy.step(step).describe()})"
    from reconciler.rollouts.analysis import Outcome

    figures = "\n".join(f"  {line}" for line in verdict.lines())
    if verdict.outcome is Outcome.WAIT:
        return Decision(Action.HOLD, step, verdict.reason)
    if verdict.outcome is Outcome.FAIL:
        edit = rollout.rollback_values()
        subject = (
            f"rollout {rollout.endpoint}: roll back {rollout.canary}, all traffic to "
            f"{rollout.stable}"
        )
        message = (
            f"{subject}\n\n{described} failed: {verdict.reason}\n{figures}\n\n"
            f"{rollout.mark('rollback at step', step)}\n"
        )
        return Decision(Action.ROLLBACK, step, verdict.reason, edit, message)
    if step == total:
        reason = f"{described} passed: {rollout.canary} serves all live traffic"
        return Decision(Action.COMPLETE, step, reason)
    body = f"{described} passed: {verdict.reason}.\n{figures}"
    return _advance(rollout, step, body, verdict.reason)


def _advance(rollout: Rollout, step: int, body: str, reason: str) -> Decision:
    following = step + 1
    edit = rollout.values(following)
    chosen = rollout.policy.step(following)
    gets = "mirrored" if chosen.kind is StepKind.MIRROR else "live"
    subject = (
        f"rollout {rollout.endpoint}: step {following}/{rollout.policy.total}, "
        f"{rollout.canary} gets {chosen.percent}% of {gets} traffic"
    )
    message = f"{subject}\n\n{body}\n\n{rollout.mark('step', following)}\n"
    return Decision(Action.ADVANCE, step, reason, edit, message, following)


def edited_file(text: str, edit: WeightsEdit) -> str:
    """The endpoint file's text with the edit made (rollouts.yamledit; WeightsEditError when
    its form cannot be edited safely: the daemon then says so in status and commits nothing).
    """
    from reconciler.rollouts.yamledit import edit_weights

    return edit_weights(text, traffic=dict(edit.traffic), mirror_traffic=dict(edit.mirror_traffic))


def _shown(traffic: Weights, mirror_traffic: Weights) -> str:
    live = ", ".join(f"{n}: {p}" for n, p in weights(dict(traffic))) or "none"
    mirror = ", ".join(f"{n}: {p}" for n, p in weights(dict(mirror_traffic)))
    return f"traffic {{{live}}}" + (f", mirror_traffic {{{mirror}}}" if mirror else "")
