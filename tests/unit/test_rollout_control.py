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
