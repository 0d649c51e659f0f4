"""Structured logs of the router: one JSON object a line on stdout (structlog).

Access log fields: event="request", request_id, method, path, status, deployment, kind
(live|mirror), instance (host:port), backend_status, duration_ms, bytes_in, bytes_out, and
`reason` for refusals. Never a key, a token, a header value or a body: the access log is
built from named fields only, and `_drop_secrets` removes any field whose name suggests a
credential, as a second line of defence against a future careless `log.info(..., **x)`.

Access lines come from `AccessLog`, which formats its fixed fields itself instead of going
through structlog: structlog's processors and renderer cost about 15 us a line, more than
the rest of the router's work on a request. The field names are fixed in code, and a test
holds them to `_drop_secrets`'s rule. They are written in batches (at most 0.2 s late);
other events (structlog) at once: "listening", "config.applied", "config.invalid",
"config.persist_failed", "mirror.failed", "shutdown".
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from json.encoder import encode_basestring_ascii as _quote  # C; escapes and quotes
from typing import Any, TextIO

import structlog

_SECRET_WORDS = ("authorization", "key", "token", "secret", "password", "body")


_suspect_names: dict[str, bool] = {}  # field name -> whether it must go; names are few


def _suspect(name: str) -> bool:
    suspect = _suspect_names.get(name)
    if suspect is None:
        suspect = any(word in name.lower() for word in _SECRET_WORDS)
        if len(_suspect_names) < 10_000:  # field names are code, not data: bounded anyway
            _suspect_names[name] = suspect
    return suspect


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in [k for k in event if _suspect(k)]:
        del event[name]
    return event


def _stamp(_: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Epoch seconds: cheaper than ISO formatting on every request; log shippers convert it.
    event["level"] = method
    event["ts"] = round(time.time(), 6)
    return event


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


class _LineLogger:
    """Writes each line at once (start, config, errors: rare and wanted without delay)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        self._stream.write(message + "\n")
        self._stream.flush()

    debug = info = warning = error = critical = exception = msg


class _BufferedLogger:
    """Access log lines: kept in memory and written in batches by `flush()`.

    One write() per request was a large share of the router's CPU per request (a syscall on
    a pipe or file). The server flushes with its metrics sampling (every 0.2 s) and at
    shutdown; a full batch, or a warning, flushes at once.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []

    def msg(self, message: str) -> None:
        self._lines.append(message)
        if len(self._lines) >= _BATCH_LINES:
            self.flush()

    debug = info = msg

    def warning(self, message: str) -> None:
        self.msg(message)
        self.flush()

    error = critical = exception = warning

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            lines.append("")
            self._stream.write("\n".join(lines))
            self._stream.flush()


_BATCH_LINES = 256
_loggers: dict[str, Any] = {}


class _Factory:
    def __init__(self, stream: TextIO) -> None:
        self._line = _LineLogger(stream)
        self._buffered = _BufferedLogger(stream)

    def __call__(self, *args: Any) -> Any:
        return self._buffered if args and args[0] == "access" else self._line


def configure(stream: TextIO | None = None, *, level: int = logging.INFO) -> None:
    """Send JSON lines to `stream` (stdout by default); call once per process."""
    factory = _Factory(stream or sys.stdout)
    _loggers["access"] = factory._buffered
    _level[0] = level
    structlog.configure(
        processors=[
            _stamp,
            _drop_secrets,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> Any:
    """Events written at once."""
    return structlog.get_logger("router", **context)


def get_access_logger(**context: Any) -> Any:
    """The access log: batched, see `flush`."""
    return structlog.get_logger("access", **context)


_level = [logging.INFO]
ACCESS_FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "deployment",
    "kind",
    "instance",
    "backend_status",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "reason",
)


# The JSON text of the access line's repeated values (method, path, deployment, kind,
# instance, reason): a dict lookup instead of a call of the encoder on each line. Paths come
# from callers, so the cache is bounded; past the bound, values are encoded each time.
_quoted: dict[str | bytes | None, str] = {None: "null"}
_MAX_QUOTED = 1024


def _json_text(value: str | bytes | None) -> str:
    """JSON of a field of the access line (None: null; bytes: a method, latin-1)."""
    if value is None:
        return "null"
    text = _quote(value.decode("latin-1") if isinstance(value, bytes) else value)
    if len(_quoted) < _MAX_QUOTED:
        _quoted[value] = text
    return text


class AccessLog:
    """The access log: one JSON line a request, batched with the other access lines.

    Same line as structlog would write for `get_access_logger(**context).info("request",
    ...)` (context, fields, "event", "level", "ts"), at a tenth of its cost.
    """

    __slots__ = ("_prefix",)

    def __init__(self, **context: Any) -> None:
        inner = _dumps({k: v for k, v in context.items() if not _suspect(k)})[1:-1]
        self._prefix = "{" + inner + ("," if inner else "")

    def request(
        self,
        request_id: bytes,
        method: bytes,
        path: str | None,
        status: int,
        deployment: str,
        kind: str,
        instance: str | None,
        backend_status: int | None,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
        reason: str,
    ) -> None:
        """One access line (fields in `ACCESS_FIELDS` order; empty texts are written null).

        Positional, and taking the request's bytes as they are: on the hot path a call
        with a dozen keywords costs as much as formatting the line.
        """
        if _level[0] > logging.INFO:
            return
        sink = _loggers.get("access")
        if sink is None:  # configure() not called: a test or an embedding; keep the lines
            sink = _loggers["access"] = _BufferedLogger(sys.stdout)
        q = _quoted
        # The time in whole microseconds, printed as integers: the same text as
        # f"{time.time():.6f}" without formatting a float (the costlier part of the line).
        seconds_now, us = divmod(time.time_ns() // 1000, 1_000_000)
        sink.msg(
            f'{self._prefix}"request_id":{_quote(request_id.decode("utf-8", "replace"))},'
            f'"method":{q.get(method) or _json_text(method)},'
            f'"path":{q.get(path) or _json_text(path)},"status":{status},'
            f'"deployment":{q.get(deployment) or _json_text(deployment) if deployment else "null"},'
            f'"kind":{q.get(kind) or _json_text(kind)},'
            f'"instance":{q.get(instance) or _json_text(instance)},'
            f'"backend_status":{"null" if backend_status is None else backend_status},'
            f'"duration_ms":{seconds * 1000.0:.3f},"bytes_in":{bytes_in},"bytes_out":{bytes_out},'
            f'"reason":{(q.get(reason) or _json_text(reason)) if reason else "null"},'
            f'"event":"request","level":"info","ts":{seconds_now}.{us:06d}}}'
        )


def flush() -> None:
    """Write out buffered access log lines."""
    access = _loggers.get("access")
    if access is not None:
        access.flush()
