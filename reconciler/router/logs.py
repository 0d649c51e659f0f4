"""Structured logs of the router: one JSON object a line on stdout (structlog).

Access log fields: event="request", request_id, method, path, status, deployment, kind
(live|mirror), instance (host:port), backend_status, duration_ms, bytes_in, bytes_out, and
`reason` for refusals. Never a key, a token, a header value or a body: the access log is
built from named fields only, and `_drop_secrets` removes any field whose name suggests a
credential, as a second line of defence against a future careless `log.info(..., **x)`.

Other events: "listening", "config.applied", "config.invalid", "config.persist_failed",
"mirror.failed", "shutdown".
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
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


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Epoch seconds: cheaper than ISO formatting on every request; log shippers convert it.
    event["ts"] = round(time.time(), 6)
    return event


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def configure(stream: TextIO | None = None, *, level: int = logging.INFO) -> None:
    """Send JSON lines to `stream` (stdout by default); call once per process."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _timestamp,
            _drop_secrets,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("router", **context)
