"""The target's containers as one listing of the engine shows them, and the inspections a
pass reuses from the passes before it.

Docker's container listing (`GET /containers/json`, one call for all of a target's
containers) holds the id, name, labels, state, a status line (`Up 5 minutes (healthy)`),
mounts and networks; an inspection (`GET /containers/ID/json`, one call per container)
holds the rest: the health status, the restart count and the time of the last start, which
observe needs of each instance. On a busy host each call waits its turn for the engine and
costs the reconciler a few milliseconds of CPU: inspecting the 100 instances of 50 endpoints
in every pass took most of a second.

So an instance's inspection is kept from pass to pass and reused while the listing says
nothing has happened to it since (`Inspections`): it runs and is healthy now as then, and
its uptime in the status line is the one its recorded start gives. Anything else (stopped,
restarting, unhealthy or starting, no health check, an uptime shorter than the recorded
start gives: started again) inspects it afresh, and so does a container not seen before.
What a reused inspection cannot show stays harmless: a container restarted and healthy
again between two passes within the status line's rounding (a second under a minute, a
minute under an hour, an hour beyond) keeps its earlier restart count and start time,
which matter only while it is not healthy (a crash loop, a readiness budget, the liveness
restarts of custom containers, which have no Docker health check and are never reused).
The networks and mounts of every container are always the listing's own, fresh.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors

# What the engine's container listing shows as an inspection would (same keys, same shape).
_LISTED_KEYS = frozenset(("Id", "Mounts", "NetworkSettings"))
# Inspections made at once (the engine answers them in parallel; a pass waits for the
# slowest of a batch rather than for the sum of them).
INSPECTORS = 8
# Clock slack between the engine's status line and this process (same host: milliseconds;
# the line is computed a moment before it is read here).
SLACK_S = 2.0


class Listed:
    """A container as the engine's listing shows it: id, name, labels, status, mounts and
    networks, without an inspection (observe's routers and holders, 2 of 3 containers of
    an endpoint). Anything more (an attribute, a method such as get_archive) inspects it
    once and is the inspected container's (`inspected`, given when a reused inspection
    stands in)."""

    def __init__(
        self, client: docker.DockerClient, entry: Mapping[str, Any], inspected: Any = None
    ) -> None:
        self._client = client
        self.entry = entry
        self._inspected: Any | None = inspected

    @property
    def inspected(self) -> Any:
        if self._inspected is None:
            self._inspected = self._client.containers.get(self.entry["Id"])
        return self._inspected

    @property
    def id(self) -> str:
        return str(self.entry["Id"])

    @property
    def name(self) -> str:
        names = self.entry.get("Names") or []
        return str(names[0]).lstrip("/") if names else str(self.inspected.name)

    @property
    def labels(self) -> Mapping[str, str]:
        return dict(self.entry.get("Labels") or {})

    @property
    def status(self) -> str:
        return str(self.entry.get("State") or "")

    @property
    def attrs(self) -> Mapping[str, Any]:
        return ListedAttrs(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inspected, name)


class ListedAttrs(Mapping[str, Any]):
    """A listed container's attrs: those the listing holds, the rest from an inspection
    (none when it is gone: a missing key, as for a container removed meanwhile)."""

    def __init__(self, listed: Listed) -> None:
        self._listed = listed

    def _full(self) -> Mapping[str, Any]:
        try:
            # Read only, never copied: observe reads a few keys of each instance.
            attrs: Mapping[str, Any] = self._listed.inspected.attrs
            return attrs
        except docker.errors.NotFound:
            return {}

    def __getitem__(self, key: str) -> Any:
        if key in _LISTED_KEYS and key in self._listed.entry:
            return self._listed.entry[key]
        return self._full()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._full())

    def __len__(self) -> int:
        return len(self._full())


# The engine's words for a duration (go-units HumanDuration), as the status line says it.
_UPTIME = re.compile(
    r"^Up (?:(?P<less>Less than a second)|(?P<about>About an? (?:minute|hour))"
    r"|(?P<n>\d+) (?P<unit>second|minute|hour|day|week|month|year)s?)(?: |$)"
)
_UNIT_S = {
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "week": 7 * 86400.0,
    "month": 30 * 86400.0,
    "year": 365 * 86400.0,
}


def uptime_below(status: str) -> float | None:
    """Seconds the uptime in a running container's status line is below (`Up 5 minutes
    (healthy)`: under 6 minutes), as the engine rounds it down; None when the line shows
    none (not running, or words not known)."""
    found = _UPTIME.match(status)
    if found is None:
        return None
    if found["less"]:
        return 1.0
    if found["about"]:
        # "About a minute": 60-119 s; "About an hour": 60-89 minutes (hours round half up).
        return 120.0 if found["about"].endswith("minute") else 1.5 * 3600
    n, unit = int(found["n"]), found["unit"]
    if unit == "hour":
        return (n + 0.5) * 3600  # rounded to the nearest hour
    return (n + 1) * _UNIT_S[unit]


def _health_of(status: str) -> str | None:
    """The health a status line shows: healthy, unhealthy, starting, or None."""
    if status.endswith("(healthy)"):
        return "healthy"
    if status.endswith("(unhealthy)"):
        return "unhealthy"
    if status.endswith("(health: starting)"):
        return "starting"
    return None


def reusable(attrs: Mapping[str, Any], entry: Mapping[str, Any], now: float) -> bool:
    """Whether an inspection (`attrs`) still says what the container is, as its listing
    `entry` shows it at `now` (epoch seconds): running and healthy then and now, and not
    started again since (its uptime is not below the time since the recorded start)."""
    state = attrs.get("State") or {}
    if attrs.get("Id") != entry.get("Id"):
        return False
    if state.get("Status") != "running" or entry.get("State") != "running":
        return False
    status = str(entry.get("Status") or "")
    if (state.get("Health") or {}).get("Status") != "healthy" or _health_of(status) != "healthy":
        return False
    started = epoch(str(state.get("StartedAt") or ""))
    below = uptime_below(status)
    if started is None or below is None:
        return False
    return now - started < below + SLACK_S


@functools.lru_cache(maxsize=4096)
def epoch(text: str) -> float | None:
    """Epoch seconds of a Docker timestamp (RFC 3339, nanoseconds); None when unset.
    Cached: each pass reads the same start times of every instance twice (strptime is
    the slowest part of reading an instance)."""
    if not text or text.startswith("0001-"):
        return None
    head, _, rest = text.partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())[:6]
    try:
        moment = datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


class Inspections:
    """Inspections of containers kept from pass to pass, by container id (an id is never
    given to another container); those of containers no longer listed are dropped."""

    def __init__(self) -> None:
        self._known: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.made = 0  # inspections asked of the engine (the rest were reused)

    def listed(
        self,
        client: docker.DockerClient,
        entries: Iterable[Mapping[str, Any]],
        *,
        now: float,
        complete: bool,
    ) -> list[Listed]:
        """The containers of `entries`, each with its inspection: reused when `reusable`,
        else made now (at once, INSPECTORS at a time). A container removed between the
        listing and its inspection is left out. `complete`: the entries are all the target
        has (not one endpoint's), so inspections of containers not among them are dropped."""
        listing = list(entries)
        with self._lock:
            known = dict(self._known)
        ready: dict[str, Listed] = {}
        stale: list[Mapping[str, Any]] = []
        for entry in listing:
            old = known.get(str(entry["Id"]))
            if old is not None and reusable(old.attrs, entry, now):
                ready[str(entry["Id"])] = Listed(client, entry, old)
            else:
                stale.append(entry)

        def inspect(entry: Mapping[str, Any]) -> Listed | None:
            # Removed meanwhile (by hand, by a step): simply not there, as with
            # containers.list(ignore_removed).
            with contextlib.suppress(docker.errors.NotFound):
                return Listed(client, entry, client.containers.get(entry["Id"]))
            return None

        if len(stale) == 1:
            fresh = [inspect(stale[0])]
        elif stale:
            with ThreadPoolExecutor(max_workers=min(INSPECTORS, len(stale))) as pool:
                fresh = list(pool.map(inspect, stale))
        else:
            fresh = []
        for listed in fresh:
            if listed is not None:
                ready[listed.id] = listed
        with self._lock:
            self.made += len(stale)
            if complete:
                self._known = {i: c.inspected for i, c in ready.items()}
            else:
                self._known.update({i: c.inspected for i, c in ready.items()})
        # In the listing's order.
        return [ready[str(e["Id"])] for e in listing if str(e["Id"]) in ready]
