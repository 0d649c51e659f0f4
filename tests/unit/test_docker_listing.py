"""When a pass of the Docker target reuses an instance's inspection from an earlier pass
(targets/docker/listing.py): only while the engine's listing shows it running and healthy,
not started again since; the uptime words of the listing's status line as the engine
writes them (go-units HumanDuration)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.targets.docker.listing import epoch, reusable, uptime_below

STARTED = "2026-12-06T20:00:00.123456789Z"
T0 = 1796587200.123456  # STARTED in epoch seconds


def inspection(status: str = "running", health: str | None = "healthy") -> dict[str, Any]:
    state: dict[str, Any] = {"Status": status, "StartedAt": STARTED}
    if health is not None:
        state["Health"] = {"Status": health}
    return {"Id": "c1", "State": state, "RestartCount": 0}


def listed(status: str, state: str = "running", id_: str = "c1") -> dict[str, Any]:
    return {"Id": id_, "State": state, "Status": status}


def test_a_docker_timestamp_is_read_to_the_microsecond() -> None:
    assert epoch(STARTED) == pytest.approx(T0, abs=1e-6)
    assert epoch("0001-01-01T00:00:00Z") is None
    assert epoch("") is None


@pytest.mark.parametrize(
    ("status", "below"),
    [
        ("Up Less than a second (healthy)", 1),
        ("Up 1 second (healthy)", 2),
        ("Up 42 seconds (health: starting)", 43),
        ("Up About a minute (healthy)", 120),
        ("Up 5 minutes", 360),
        ("Up About an hour (unhealthy)", 5400),
        ("Up 3 hours (healthy)", 3.5 * 3600),
        ("Up 2 days (healthy)", 3 * 86400),
        ("Up 3 weeks (healthy)", 4 * 7 * 86400),
        ("Up 2 months (healthy)", 3 * 30 * 86400),
        ("Up 4 years (healthy)", 5 * 365 * 86400),
    ],
)
def test_the_uptime_of_a_status_line_is_read_as_a_bound(status: str, below: float) -> None:
    assert uptime_below(status) == below


@pytest.mark.parametrize(
    "status", ["Exited (0) 3 minutes ago", "Restarting (1) 2 seconds ago", "Created", ""]
)
def test_a_container_not_up_shows_no_uptime(status: str) -> None:
    assert uptime_below(status) is None


def test_an_inspection_is_reused_while_the_listing_shows_the_same_healthy_run() -> None:
    # Five minutes and a bit after its start, the engine says "Up 5 minutes".
    assert reusable(inspection(), listed("Up 5 minutes (healthy)"), now=T0 + 330)
    assert reusable(inspection(), listed("Up 7 seconds (healthy)"), now=T0 + 7.5)


def test_an_instance_started_again_since_its_inspection_is_inspected_afresh() -> None:
    # Inspected when it had run 5 minutes; 10 minutes later it says it has run 1 minute.
    assert not reusable(inspection(), listed("Up About a minute (healthy)"), now=T0 + 900)
    assert not reusable(inspection(), listed("Up 3 seconds (healthy)"), now=T0 + 60)


@pytest.mark.parametrize(
    ("before", "now"),
    [
        # Its health changed: unhealthy, starting again (after a restart), gone.
        (inspection(), listed("Up 6 minutes (unhealthy)")),
        (inspection(), listed("Up 6 minutes (health: starting)")),
        (inspection(), listed("Up 6 minutes")),
        # Stopped, restarting, paused.
        (inspection(), listed("Exited (137) 2 seconds ago", state="exited")),
        (inspection(), listed("Restarting (1) 1 second ago", state="restarting")),
        (inspection(), listed("Up 6 minutes (Paused)", state="paused")),
        # Not healthy when inspected: what changes next must be read (a crash loop, a
        # readiness budget), and a container without a health check says nothing.
        (inspection(health="starting"), listed("Up 6 minutes (healthy)")),
        (inspection(health=None), listed("Up 6 minutes")),
        (inspection(status="exited"), listed("Up 6 minutes (healthy)")),
        # Another container.
        (inspection(), listed("Up 6 minutes (healthy)", id_="c2")),
    ],
)
def test_any_other_change_inspects_afresh(before: dict[str, Any], now: dict[str, Any]) -> None:
    assert not reusable(before, now, now=T0 + 390)
