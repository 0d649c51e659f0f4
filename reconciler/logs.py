"""Structured logging: JSON for machines, readable lines for people on a terminal.

structlog is imported on the first line logged, not at start-up: importing it (and the
rich tracebacks its console renderer loads) costs a short command such as `--help`,
`validate` or `diff`, which log nothing, a tenth of a second. `configure` is remembered
until then; modules take their loggers from `get_logger`, which defers the same way.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

_SECRET_WORDS = ("key", "token", "secret", "password", "authorization")
# The settings of the last configure() made before structlog was imported.
_pending: dict[str, Any] | None = None


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Belt and braces: a field named like a secret is never written out."""
    for name in list(event):
        lowered = name.lower()
        if any(word in lowered for word in _SECRET_WORDS) and name not in ("event",):
            event[name] = "[redacted]"
    return event


def configure(
    *,
    fmt: str = "auto",
    level: str = "info",
    stream: Any = None,
    for_people: frozenset[str] | None = None,
) -> None:
    """fmt: json, console or auto (console on a terminal, JSON otherwise).

    `for_people`: events a display shows in its own words, so dropped here; and each line
    written once (a warning every pass repeats). None: every event, as often as it comes.
    Applied at once when structlog is loaded already, else on the first line logged."""
    global _pending
    settings: dict[str, Any] = {
        "fmt": fmt,
        "level": level,
        "stream": stream or sys.stderr,
        "for_people": for_people,
    }
    if "structlog" in sys.modules:
        _pending = None
        _apply(**settings)
    else:
        _pending = settings


class _OncePerLine:
    """Drops the events a display says itself, and any event said before (its fields the
    same, whatever its time)."""

    def __init__(self, shown_elsewhere: frozenset[str]) -> None:
        self.shown_elsewhere = shown_elsewhere
        self.seen: set[str] = set()

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        import structlog

        if event.get("event") in self.shown_elsewhere:
            raise structlog.DropEvent
        said = repr(sorted((k, repr(v)) for k, v in event.items() if k != "timestamp"))
        if said in self.seen:
            raise structlog.DropEvent
        self.seen.add(said)
        return event


def _apply(*, fmt: str, level: str, stream: Any, for_people: frozenset[str] | None) -> None:
    import logging  # for its level names only: not worth its import before a line is logged

    import structlog

    out = stream
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    once: list[Any] = [] if for_people is None else [_OncePerLine(for_people)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *once,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _structlog_logger(name: str) -> Any:
    global _pending
    import structlog

    if _pending is not None:
        settings, _pending = _pending, None
        # Configured since by someone else (structlog.testing.capture_logs): theirs wins.
        if not structlog.is_configured():
            _apply(**settings)
    return structlog.get_logger(name)


class LazyLogger:
    """A structlog logger made on first use: `log.info(...)`, `log.bind(...)` as usual."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(_structlog_logger(self._name), attribute)


def get_logger(name: str) -> Any:
    """The logger of a module; structlog is imported when it first logs."""
    return LazyLogger(name)
