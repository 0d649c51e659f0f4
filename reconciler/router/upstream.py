"""A lean HTTP/1.1 client for the router's backends: keep-alive pools, one exchange at a time.

Why not aiohttp's ClientSession: measured on loopback, a proxy built on it spent most of its
time in the client (about 4,000 requests/s on one core, +1.4 ms at p50), while this client on
asyncio protocols with httptools' C parser does about twice that. It is small because the
router controls every request it sends: the request is built whole by the caller (request
line, headers, Content-Length, body), there is no redirect, cookie, proxy or TLS handling,
and responses are read whole (the router turns non-2xx answers into 424 and must see them).

Errors tell the caller whether another instance may be tried:
- `BackendUnreachable`: no connection could be made, or the connection died before a single
  byte of the answer came back. Nothing was answered, so the router tries the next instance.
  (A keep-alive connection the backend had closed while idle is retried here once, on a new
  connection, as every HTTP client does.)
- `BadResponse`: the answer broke off, was malformed or was larger than allowed (-> 502).
- `TimeoutError`: the caller's deadline (`loop.time()` based) passed, connecting or waiting.

Deadlines are watched by `Deadlines`, one timer for all exchanges in flight (a timer per
request costs about 2 us on uvloop: a libuv timer made, started, stopped and closed). An
exchange past its deadline is failed and its connection aborted, as cancellation would: a
connection with an answer still owed can never be reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from typing import cast

import httptools

# Connections kept idle per instance; more than the concurrency a backend sees in practice,
# so steady load never reconnects, and bounded so a burst does not pin sockets forever.
MAX_IDLE_PER_POOL = 512
# A deadline closer than this after a sweep waits for the next sweep: bounds the sweeps'
# rate when deadlines come in a stream (requests with a timeout this short are late by it).
SWEEP_MIN_S = 0.005


class UpstreamError(Exception):
    """A backend exchange failed; see the subclasses."""


class BackendUnreachable(UpstreamError):
    """No answer started: safe to try another instance."""


class BadResponse(UpstreamError):
    """The answer started but is unusable (broken off, malformed, too large)."""


class UpstreamResponse:
    """A whole answer. Not to be changed (a plain class: a frozen dataclass costs more)."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Deadlines:
    """The deadlines of the exchanges in flight on one event loop, with one timer.

    The timer is armed for the earliest deadline. A new exchange re-arms it only when its
    deadline comes earlier, which for the usual stream of requests with the same timeout
    is never: adding and removing is a set operation. When the timer fires, exchanges past
    their deadline fail with TimeoutError and the timer is armed for the next deadline,
    at least `SWEEP_MIN_S` later.
    """

    __slots__ = ("_active", "_armed_for", "_timer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._active: set[_Connection] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def add(self, conn: _Connection) -> None:
        self._active.add(conn)
        if conn.deadline < self._armed_for:
            self._arm(conn.deadline)

    def discard(self, conn: _Connection) -> None:
        self._active.discard(conn)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        self._timer = self.loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        self._armed_for = math.inf
        now = self.loop.time()
        earliest = math.inf
        for conn in list(self._active):
            if conn.deadline <= now:
                self._active.discard(conn)
                conn.timed_out()
            elif conn.deadline < earliest:
                earliest = conn.deadline
        if earliest < math.inf:
            self._arm(max(earliest, now + SWEEP_MIN_S))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_for = math.inf


class _Connection(asyncio.Protocol):
    """One TCP connection to a backend; carries one request/response exchange at a time."""

    __slots__ = (
        "_body",
        "_body_size",
        "_deadlines",
        "_framed",
        "_headers",
        "_keep_alive",
        "_max_body",
        "_parser",
        "_pool",
        "_reason",
        "_received_any",
        "_transport",
        "_until_eof",
        "_waiter",
        "closed",
        "deadline",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._max_body = 0
        self._received_any = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._until_eof = False  # no Content-Length and not chunked: the body ends at close
        self._framed = False  # Content-Length or Transfer-Encoding seen
        self._keep_alive = True
        self._deadlines: Deadlines | None = None  # watching this exchange's deadline
        self.deadline = math.inf
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes while idle: the backend broke protocol; the connection cannot be trusted.
            self.abort()
            return
        self._received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(BadResponse(f"malformed response: {error}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if not self._received_any:
            self._fail(BackendUnreachable("connection closed before an answer"))
        elif self._until_eof:
            self._finish()
        else:
            self._fail(BadResponse("connection closed in the middle of the answer"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._until_eof = False
        self._framed = False

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        # Only the lengths of "content-length" and "transfer-encoding" need a closer look.
        if (len(name) == 14 or len(name) == 17) and name.lower() in _FRAMING:
            self._framed = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200 or status in (204, 304):
            return
        self._until_eof = not self._framed

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._fail(BadResponse("response body larger than max_body_bytes"))
            self.abort()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue): the real one follows
        self._keep_alive = self._parser.should_keep_alive()
        self._finish()

    # exchange
    def _finish(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            body = self._body
            waiter.set_result(
                UpstreamResponse(
                    self._parser.get_status_code(),
                    self._reason,
                    self._headers,
                    body[0] if len(body) == 1 else b"".join(body),
                )
            )
        self._unwatch()

    def _fail(self, error: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._unwatch()

    def _unwatch(self) -> None:
        if self._deadlines is not None:
            self._deadlines.discard(self)
            self._deadlines = None

    def timed_out(self) -> None:
        """The deadline passed (called by `Deadlines`)."""
        self._deadlines = None
        self._fail(TimeoutError())
        self.abort()

    def start(
        self, data: bytes, *, max_body: int, deadline: float, deadlines: Deadlines
    ) -> asyncio.Future[UpstreamResponse]:
        assert self._transport is not None
        self._waiter = waiter = deadlines.loop.create_future()
        self._max_body = max_body
        self._received_any = False
        self.deadline = deadline
        self._deadlines = deadlines
        deadlines.add(self)
        self._transport.write(data)
        return waiter

    def done(self) -> bool:
        """After an answer: whether the connection can carry another exchange."""
        self._waiter = None
        return self._keep_alive and not self.closed and not self._until_eof

    def abort(self) -> None:
        self._keep_alive = False
        self._unwatch()
        if self._transport is not None and not self.closed:
            self._transport.abort()
        self.closed = True


_FRAMING = frozenset((b"content-length", b"transfer-encoding"))


class UpstreamPool:
    """Keep-alive connections to one backend instance (`host:port`)."""

    def __init__(self, address: str, *, connect_timeout: float) -> None:
        self.address = address
        self._host, self._port = split_address(address)
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._closed = False

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def forget(self, conn: _Connection) -> None:
        """A connection closed: it must not be handed out again."""
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError()
        # The request's deadline bounds the connect too; only the connect timeout's own
        # expiry says that this instance is unreachable.
        limit = min(self.connect_timeout, remaining)
        try:
            async with asyncio.timeout(limit):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self), self._host, self._port
                )
        except TimeoutError:
            if limit < self.connect_timeout:
                raise
            raise BackendUnreachable("cannot connect: TimeoutError") from None
        except OSError as error:
            raise BackendUnreachable(f"cannot connect: {error.__class__.__name__}") from None
        transport = protocol._transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Small request/answer pairs: Nagle's algorithm would add up to 40 ms.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return protocol

    async def request(
        self, data: bytes, *, max_body: int, deadline: float, deadlines: Deadlines
    ) -> UpstreamResponse:
        """Send one whole request (head and body) and read the whole answer by `deadline`
        (`deadlines.loop.time()` based)."""
        idle = self._idle
        while idle:
            conn = idle.pop()  # LIFO: the warmest connection, the cold ones time out
            if conn.closed:
                continue
            try:
                response = await conn.start(
                    data, max_body=max_body, deadline=deadline, deadlines=deadlines
                )
            except BackendUnreachable:
                # The backend closed this idle connection as we sent: one more try below, on
                # a fresh connection, tells a stale connection from a dead backend.
                conn.abort()
                break
            except BaseException:
                # Timeout, cancellation, broken answer: the connection still owes bytes.
                conn.abort()
                raise
            self._settle(conn)
            return response
        if self._closed:
            raise BackendUnreachable("instance removed from the configuration")
        conn = await self._connect(deadlines.loop, deadline)
        try:
            response = await conn.start(
                data, max_body=max_body, deadline=deadline, deadlines=deadlines
            )
        except BaseException:
            conn.abort()
            raise
        self._settle(conn)
        return response

    def _settle(self, conn: _Connection) -> None:
        """After an answer: back to the idle list, or closed."""
        if conn.done() and not self._closed and len(self._idle) < MAX_IDLE_PER_POOL:
            self._idle.append(conn)
        else:
            conn.abort()

    def close(self) -> None:
        """Close idle connections now; busy ones are closed when their answer is in."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
