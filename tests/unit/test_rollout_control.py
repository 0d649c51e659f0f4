"""Pause, resume and abort trailers (reconciler.rollouts.control): read from messages, and
which commit pauses a rollout."""

from __future__ import annotations

from reconciler.rollouts.control import (
    Control,
    Verb,
    control_trailer,
    paused_by,
    read_controls,
)


def test_control_trailers_are_read_per_endpoint_in_any_case() -> None:
    message = (
        "rollout ep: pause\n\n"
        "Reconcile-Rollout-Control: ep pause\n"
        "reconcile-rollout-control: other RESUME\n"
    )
    assert read_controls(message) == (Control("ep", Verb.PAUSE), Control("other", Verb.RESUME))
    assert read_controls("no trailer\n\nReconcile-Rollout-Control: ep explode\n") == ()
    assert read_controls(control_trailer("ep", Verb.ABORT)) == (Control("ep", Verb.ABORT),)


def test_the_newest_pause_or_resume_of_the_endpoint_decides() -> None:
    pause = ("c1", control_trailer("ep", Verb.PAUSE))
    resume = ("c2", control_trailer("ep", Verb.RESUME))
    other = ("c3", control_trailer("other", Verb.PAUSE))
    plain = ("c4", "fix a typo")
    assert paused_by("ep", [plain, other, pause]) == "c1"
    assert paused_by("ep", [resume, pause]) is None
    assert paused_by("ep", [pause, resume]) == "c1"
    assert paused_by("ep", [plain, other]) is None


def test_a_pause_before_a_rollback_of_the_endpoint_belongs_to_the_rollout_that_ended() -> None:
    # Rollout 1 paused, then aborted while paused; rollout 2 runs. When the messages are read
    # past rollout 2's start (its start commit gone in a force-push), the old pause must not
    # hold rollout 2 paused forever.
    old_pause = ("c1", control_trailer("ep", Verb.PAUSE))
    abort = (
        "c2",
        "rollout ep: abort\n\nReconcile-Rollout: ep rollback at step 1/2\n"
        f"Reconcile-Rollout-Stable: blue\nReconcile-Rollout-Canary: green\n"
        f"{control_trailer('ep', Verb.ABORT)}\n",
    )
    step = ("c3", "rollout ep: step 1/2\n\nReconcile-Rollout: ep step 1/2\n")
    assert paused_by("ep", [step, abort, old_pause]) is None
    # Another endpoint's rollback ends nothing of this one's.
    other_abort = ("c4", "x\n\nReconcile-Rollout: other rollback at step 1/2\n")
    assert paused_by("ep", [step, other_abort, old_pause]) == "c1"
    # A newer pause still decides.
    new_pause = ("c5", control_trailer("ep", Verb.PAUSE))
    assert paused_by("ep", [new_pause, step, abort, old_pause]) == "c5"
