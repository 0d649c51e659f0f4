"""The daemon dashboard's test form: a JSON body sent to an endpoint through its router.

The key is typed by the person each time, sent once in the Authorization header and
forgotten: never stored, logged, echoed on a page or put in an error message. The form is
protected against cross-site requests by a per-session token (a random session cookie,
HttpOnly and SameSite=Strict, and an HMAC of it under the server's secret in a hidden field),
and the request is sent only to a router on this machine (a loopback scoring URI), so the
form cannot be turned into a way to reach other hosts.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

SESSION_COOKIE = "reconciler_ui_session"
# Bounds: what a person types into a form, and what is shown of an answer.
MAX_FORM_BYTES = 256 * 1024
MAX_ANSWER_BYTES = 64 * 1024
TIMEOUT_S = 60.0
PIN_HEADER = "azureml-model-deployment"


def csrf_token(secret: bytes, session: str) -> str:
    return hmac.new(secret, session.encode(), hashlib.sha256).hexdigest()


def csrf_valid(secret: bytes, session: str | None, offered: str | None) -> bool:
    if not session or not offered:
        return False
    return hmac.compare_digest(csrf_token(secret, session).encode(), offered.encode())


def header_safe(value: str) -> bool:
    """Whether an HTTP header can carry the value: no control character (a line break
    would split the request; the HTTP client refuses them with a ValueError)."""
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def loopback(uri: str | None) -> bool:
    """An http(s) URI whose host is this machine."""
    if not uri:
        return False
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    deployment: str | None  # the router's header: which deployment answered
    body: str
    seconds: float
    truncated: bool


async def send(uri: str, *, key: str, deployment: str | None, body: bytes) -> Answer:
    """POST the body to the scoring URI with the key; raises aiohttp.ClientError or
    TimeoutError when the router does not answer."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if deployment:
        headers[PIN_HEADER] = deployment
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(uri, data=body, headers=headers, allow_redirects=False) as response,
    ):
        data = await response.content.read(MAX_ANSWER_BYTES + 1)
        return Answer(
            status=response.status,
            deployment=response.headers.get(PIN_HEADER),
            body=data[:MAX_ANSWER_BYTES].decode(errors="replace"),
            seconds=time.monotonic() - started,
            truncated=len(data) > MAX_ANSWER_BYTES,
        )
