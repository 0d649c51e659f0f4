"""A lean HTTP/1.1 client for the router's backends: keep-alive pools, one exchange at a time.

Why not aiohttp's ClientSession: measured on loopback, a proxy built on it spent most of its
time in the client (about 4,000 requests/s on one core, +1.4 ms at p50), while this client on
asyncio protocols with httptools' C parser does about twice that. It is small because the
router controls every request it sends: the request is built whole by the caller (request
line, headers, Content-Length, body), there is no redirect, cookie, proxy or TLS handling,
and small answers are read whole.

Streaming (see `stream_above` of `UpstreamPool.request`): an answer whose length is unknown
(chunked, or ending at close, as server-sent events and token streams are) or over
`stream_above` bytes is handed over as soon as its head is in: the `UpstreamResponse` then
has `stream` set, the connection itself, and its body goes to the `BodySink` attached to it
(`_Connection.attach`), piece by piece as the backend writes it; while the sink is paused
(its caller's socket is full) the backend's socket is not read. A request body can stream
the other way (`RequestBody`, given as `body`): the connection is then the body's sink.

Errors tell the caller whether another instance may be tried:
- `BackendUnreachable`: no connection could be made, or the connection died before a single
  byte of the answer came back. Nothing was answered, so the router tries the next instance.
  (A keep-alive connection the backend had closed while idle is retried here once, on a new
  connection, as every HTTP client does.)
- `BadResponse`: the answer broke off, was malformed or was larger than allowed (-> 502).
- `TimeoutError`: the caller's deadline (`loop.time()` based) passed, connecting or waiting.
  While a body streams (the request's up, the answer's down) the deadline moves on by
  `idle` seconds with each piece: what is bounded is a wait with nothing moving.
- The error a streamed request body failed with (the HTTP layer's `BodyError`: too large,
  stalled, broken off) is raised as it is.

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
from collections.abc import Callable
from typing import Protocol, cast

import httptools

# Connections kept idle per instance; more than the concurrency a backend sees in practice,
# so steady load never reconnects, and bounded so a burst does not pin sockets forever.
MAX_IDLE_PER_POOL = 512
# A streamed answer's body held while no sink takes it yet (the caller's answer has not
# started): past this, the backend's socket is not read.
_HOLD_BYTES = 256 * 1024
# A deadline closer than this after a sweep waits for the next sweep: bounds the sweeps'
# rate when deadlines come in a stream (requests with a timeout this short are late by it).
SWEEP_MIN_S = 0.005


class UpstreamError(Exception):
    """A backend exchange failed; see the subclasses."""


class BackendUnreachable(UpstreamError):
    """No answer started: safe to try another instance."""


class BadResponse(UpstreamError):
    """The answer started but is unusable (broken off, malformed, too large)."""


class BodySink(Protocol):
    """Where the pieces of a streamed body go, in order; then `end` or `fail`, once."""

    def data(self, piece: bytes) -> None: ...

    def end(self) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class RequestBody(Protocol):
    """A request body that streams from the caller (the HTTP layer's `BodyStream`)."""

    length: int  # Content-Length, or -1: chunked
    consumed: bool  # a piece went to a sink: it cannot be sent to another instance

    def attach(self, sink: BodySink) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class UpstreamResponse:
    """An answer. Not to be changed (a plain class: a frozen dataclass costs more).

    `stream` is None for a whole answer (`body`); else the answer's body streams from that
    connection (`attach` a sink) and `length` is its Content-Length, -1 when unknown."""

    __slots__ = ("body", "headers", "length", "reason", "status", "stream")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        stream: _Connection | None = None,
        length: int = -1,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.stream = stream
        self.length = length


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
        "_ended",
        "_error",
        "_framed",
        "_head_complete",
        "_headers",
        "_idle",
        "_keep_alive",
        "_length",
        "_loop",
        "_max_body",
        "_parser",
        "_pending",
        "_pool",
        "_reading",
        "_reason",
        "_received_any",
        "_sink",
        "_stream_above",
        "_streaming",
        "_transport",
        "_until_eof",
        "_upload",
        "_upload_chunked",
        "_waiter",
        "closed",
        "deadline",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | _Delivery | None = None
        # A `_Delivery` decided while the parser runs waits here for the end of the read.
        self._reading = False
        self._pending: _Delivery | None = None
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
        # Streaming the answer (see the module's docstring).
        self._stream_above = -1  # -1: never; else the Content-Length above which it streams
        self._length = -1
        self._streaming = False  # the answer's head went to the caller; its body streams
        self._sink: BodySink | None = None
        self._ended = False  # the streamed body ended before a sink was attached
        self._error: BaseException | None = None  # ... or failed
        self._idle = 0.0
        self._head_complete = False
        self._loop = asyncio.get_running_loop()  # made by create_connection, on the loop
        # Streaming the request's body: the caller's body this connection is the sink of.
        self._upload: RequestBody | None = None
        self._upload_chunked = False

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
        if self._streaming:
            self.deadline = self._loop.time() + self._idle
        self._reading = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(BadResponse(f"malformed response: {error}"))
            self.abort()
        else:
            if self._stream_above >= 0 and not self._streaming and self._waiter is not None:
                self._maybe_stream()
        finally:
            self._reading = False
        pending = self._pending
        if pending is not None:
            # Last: its callback may start the next exchange on this very connection.
            self._pending = None
            pending.deliver()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        waiter = self._waiter
        if self._streaming:
            if self._until_eof:
                self._stream_end()
            else:
                self._stream_fail(BadResponse("connection closed in the middle of the answer"))
            return
        # Of a streamed request body, parts may have gone: whether another instance may
        # be tried is the caller's to decide (RequestBody.consumed).
        self._upload = None
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
        self._length = -1
        self._head_complete = False

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        # Only the lengths of "content-length" and "transfer-encoding" need a closer look.
        if (len(name) == 14 or len(name) == 17) and name.lower() in _FRAMING:
            self._framed = True
            if len(name) == 14:
                with contextlib.suppress(ValueError):  # the parser refuses a bad one
                    self._length = int(value)

    def on_headers_complete(self) -> None:
        self._head_complete = True
        status = self._parser.get_status_code()
        if status < 200 or status in (204, 304):
            return
        self._until_eof = not self._framed

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            error = BadResponse("response body larger than max_body_bytes")
            if self._streaming:
                self._stream_fail(error)
            else:
                self._fail(error)
                self.abort()
            return
        sink = self._sink
        if sink is not None:
            sink.data(body)
            return
        self._body.append(body)
        if self._streaming and self._body_size > _HOLD_BYTES and self._transport is not None:
            # No sink yet (the caller's answer is not started): hold the backend back.
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue): the real one follows
        self._keep_alive = self._parser.should_keep_alive()
        if self._upload is not None:
            # Answered before the whole body went up: the rest is not sent.
            self._upload = None
            self._keep_alive = False
        if self._streaming:
            self._stream_end()
        else:
            self._finish()

    # streaming the answer
    def _maybe_stream(self) -> None:
        """After a read: hand the answer over now if its head is in and its body streams."""
        waiter = self._waiter
        if waiter is None or waiter.done() or not self._parser.get_status_code():
            return
        status = self._parser.get_status_code()
        if status < 200 or status in (204, 304):
            return
        if not self._until_eof and 0 <= self._length <= self._stream_above:
            return
        if self._length > self._max_body:
            self._fail(BadResponse("response body larger than max_body_bytes"))
            self.abort()
            return
        if self._head_complete:
            self._streaming = True
            self.deadline = self._loop.time() + self._idle
            waiter.set_result(
                UpstreamResponse(
                    status, self._reason, self._headers, b"", stream=self, length=self._length
                )
            )

    def attach(self, sink: BodySink) -> None:
        """The body's pieces go to `sink` from now on (those held so far first)."""
        held, self._body = self._body, []
        if self._error is None and not self._ended:
            self._sink = sink
            # Before the held pieces go: writing them may pause us again (a full socket).
            if self._transport is not None and not self.closed:
                self._transport.resume_reading()
        for piece in held:
            sink.data(piece)
        if self._error is not None:
            sink.fail(self._error)
        elif self._ended:
            # Kept out of the pool until now: another exchange must not take it while
            # pieces of this answer wait in it.
            self._ended = False
            self._pool.settle(self)
            sink.end()

    def pause(self) -> None:
        """The sink cannot take more for now (its caller does not read): stop reading the
        backend, and the idle clock with it (a slow reader is the HTTP layer's to judge)."""
        if self._streaming and self._transport is not None and not self.closed:
            self._transport.pause_reading()
            self.deadline = math.inf

    def resume(self) -> None:
        if self._streaming and self._transport is not None and not self.closed:
            self._transport.resume_reading()
            self.deadline = self._loop.time() + self._idle
            if self._deadlines is not None:
                self._deadlines.add(self)  # re-arms the timer if it had nothing left

    def cancel(self) -> None:
        """The caller went away: the rest of the answer is not wanted."""
        self._sink = None
        if self._streaming:
            self._streaming = False
            self.abort()
            self._pool.settle(self)
        elif self._ended:  # the whole answer had come: the connection is fine
            self._ended = False
            self._pool.settle(self)

    def _stream_end(self) -> None:
        self._streaming = False
        self._unwatch()
        if self._transport is not None and not self.closed:
            # A pause of the caller's may have come after the last read: the connection
            # must read again, for its next exchange.
            self._transport.resume_reading()
        sink, self._sink = self._sink, None
        if sink is None:
            self._ended = True  # settled when a sink comes for the pieces held (attach)
            return
        self._pool.settle(self)
        sink.end()

    def _stream_fail(self, error: BaseException) -> None:
        self._streaming = False
        self.abort()
        self._waiter = None
        self._pool.settle(self)
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.fail(error)
        else:
            self._error = error

    # streaming the request's body (this connection is the caller's body's sink)
    def data(self, piece: bytes) -> None:
        transport = self._transport
        if transport is None or self.closed:
            return
        self.deadline = self._loop.time() + self._idle
        if self._upload_chunked:
            transport.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
        else:
            transport.write(piece)

    def end(self) -> None:
        if self._upload is None:
            return
        self._upload = None
        if self._upload_chunked and self._transport is not None and not self.closed:
            self._transport.write(b"0\r\n\r\n")

    def fail(self, error: BaseException) -> None:
        """The caller's body failed: the backend must not take a cut body for a whole one."""
        if self._upload is None:
            return
        self._upload = None
        self._fail(error)
        self.abort()

    def pause_writing(self) -> None:
        if self._upload is not None:
            self._upload.pause()

    def resume_writing(self) -> None:
        if self._upload is not None:
            self._upload.resume()

    # exchange
    def _finish(self) -> None:
        self._stream_above = -1  # answered whole: nothing to look at after later reads
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
        if self._streaming:
            self._stream_fail(TimeoutError())
            return
        self._upload = None
        self._fail(TimeoutError())
        self.abort()

    def start(
        self,
        data: bytes,
        *,
        max_body: int,
        deadline: float,
        deadlines: Deadlines,
        stream_above: int = -1,
        idle: float = 0.0,
        body: RequestBody | None = None,
    ) -> asyncio.Future[UpstreamResponse]:
        """Send `data` (the head, and the body unless `body` streams it) and return the
        future of the answer (see `UpstreamPool.request`)."""
        waiter = deadlines.loop.create_future()
        self._send(data, waiter, max_body, deadline, deadlines, stream_above, idle, body)
        return waiter

    def _send(
        self,
        data: bytes,
        waiter: asyncio.Future[UpstreamResponse] | _Delivery,
        max_body: int,
        deadline: float,
        deadlines: Deadlines,
        stream_above: int,
        idle: float,
        body: RequestBody | None,
    ) -> None:
        assert self._transport is not None
        self._waiter = waiter
        self._max_body = max_body
        self._received_any = False
        self._stream_above = stream_above
        self._idle = idle
        self._sink = None
        self._ended = False
        self._error = None
        self.deadline = deadline
        self._deadlines = deadlines
        deadlines.add(self)
        self._transport.write(data)
        if body is not None:
            self._upload = body
            self._upload_chunked = body.length < 0
            body.attach(self)

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

# `send_idle`'s callback: (the answer, None) or (None, the error `request` would raise).
Answered = Callable[[UpstreamResponse | None, BaseException | None], None]


class _Delivery:
    """The answer of an exchange started by `send_idle`, in place of the future `request`
    awaits (the connection calls `done`, `set_result`, `set_exception` alike).

    A future costs the hot path its making, a done-callback (and a partial for it), one
    more pass of the event loop to run that callback, and the calls reading it back. This
    hands the outcome straight to the callback instead: when it comes from the parser, at
    the end of that read (`_Connection.data_received`; never from inside the parser, as
    the callback may start the next exchange on the same connection), else (timeouts, a
    closed connection) in a callback of its own, as the future's would have run."""

    __slots__ = ("_answered", "_conn", "_done", "_error", "_pool", "_response")

    def __init__(self, pool: UpstreamPool, conn: _Connection, answered: Answered) -> None:
        self._pool = pool
        self._conn = conn
        self._answered = answered
        self._done = False
        self._response: UpstreamResponse | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, response: UpstreamResponse) -> None:
        self._done = True
        self._response = response
        self._ready()

    def set_exception(self, error: BaseException) -> None:
        self._done = True
        self._error = error
        self._ready()

    def _ready(self) -> None:
        conn = self._conn
        if conn._reading:
            conn._pending = self
        else:
            conn._loop.call_soon(self.deliver)

    def deliver(self) -> None:
        conn = self._conn
        response = self._response
        if response is None:
            # Timeout, broken answer, stale connection: the connection still owes bytes.
            conn.abort()
        elif response.stream is None:
            self._pool._settle(conn)
        self._answered(response, self._error)


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
        self,
        data: bytes,
        *,
        max_body: int,
        deadline: float,
        deadlines: Deadlines,
        stream_above: int = -1,
        idle: float = 0.0,
        body: RequestBody | None = None,
        fresh: bool = False,
    ) -> UpstreamResponse:
        """Send one request and read its answer by `deadline` (`deadlines.loop.time()`
        based): the whole answer, or, with `stream_above` >= 0, its head once it is in when
        its body streams (chunked, until close, or a Content-Length over `stream_above`).
        `data` is the head and the body, or only the head when `body` streams the body
        (then `idle` bounds each wait with nothing moving, as it does for a streamed
        answer). A streamed body goes on a new connection: on an idle one that the backend
        had just closed, its first pieces would be lost and it could not be sent again.
        `fresh`: on a new connection (after `send_idle` found its connection stale)."""
        spare = self._idle
        while spare and body is None and not fresh:
            conn = spare.pop()  # LIFO: the warmest connection, the cold ones time out
            if conn.closed:
                continue
            try:
                response = await conn.start(
                    data,
                    max_body=max_body,
                    deadline=deadline,
                    deadlines=deadlines,
                    stream_above=stream_above,
                    idle=idle,
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
            if response.stream is None:
                self._settle(conn)
            return response
        if self._closed:
            raise BackendUnreachable("instance removed from the configuration")
        conn = await self._connect(deadlines.loop, deadline)
        try:
            response = await conn.start(
                data,
                max_body=max_body,
                deadline=deadline,
                deadlines=deadlines,
                stream_above=stream_above,
                idle=idle,
                body=body,
            )
        except BaseException:
            conn.abort()
            raise
        if response.stream is None:
            self._settle(conn)
        return response

    def send_idle(
        self,
        data: bytes,
        answered: Answered,
        *,
        max_body: int,
        deadline: float,
        deadlines: Deadlines,
        stream_above: int = -1,
        idle: float = 0.0,
    ) -> bool:
        """`request` on a kept-alive connection, without a coroutine: False when none is
        idle (then `request`); else `answered(response, None)` or `answered(None, error)`
        is called once the answer (or failure) is in, the connection already settled as
        `request` settles it: at the end of the read that completed the answer (no future,
        no extra pass of the loop), or from a callback of the loop (timeouts, a closed
        connection).

        A `BackendUnreachable` here only says that this connection was stale (the backend
        had closed it while idle): `request(fresh=True)` is the try that tells a dead
        backend from that, as `request` does itself."""
        spare = self._idle
        while spare:
            conn = spare.pop()  # LIFO, as in `request`
            if conn.closed:
                continue
            delivery = _Delivery(self, conn, answered)
            conn._send(data, delivery, max_body, deadline, deadlines, stream_above, idle, None)
            return True
        return False

    def settle(self, conn: _Connection) -> None:
        """A streamed answer ended (or failed): the connection is free again, or closed."""
        self._settle(conn)

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
