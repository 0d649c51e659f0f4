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
Cancellation (the router's request timeout) aborts the connection: a connection with an
answer still owed can never be reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from typing import cast

import httptools

# Connections kept idle per instance; more than the concurrency a backend sees in practice,
# so steady load never reconnects, and bounded so a burst does not pin sockets forever.
MAX_IDLE_PER_POOL = 512


class UpstreamError(Exception):
    """A backend exchange failed; see the subclasses."""


class BackendUnreachable(UpstreamError):
    """No answer started: safe to try another instance."""


class BadResponse(UpstreamError):
    """The answer started but is unusable (broken off, malformed, too large)."""


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Connection(asyncio.Protocol):
    """One TCP connection to a backend; carries one request/response exchange at a time."""

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
        self._keep_alive = True
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

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200 or status in (204, 304):
            return
        names = {name.lower() for name, _ in self._headers}
        self._until_eof = b"content-length" not in names and b"transfer-encoding" not in names

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
            waiter.set_result(
                UpstreamResponse(
                    status=self._parser.get_status_code(),
                    reason=self._reason,
                    headers=self._headers,
                    body=b"".join(self._body),
                )
            )

    def _fail(self, error: UpstreamError) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def start(self, data: bytes, *, max_body: int) -> asyncio.Future[UpstreamResponse]:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._max_body = max_body
        self._received_any = False
        self._transport.write(data)
        return self._waiter

    def done(self) -> bool:
        """After an answer: whether the connection can carry another exchange."""
        self._waiter = None
        return self._keep_alive and not self.closed and not self._until_eof

    def abort(self) -> None:
        self._keep_alive = False
        if self._transport is not None and not self.closed:
            self._transport.abort()
        self.closed = True


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

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self), self._host, self._port
                )
        except (OSError, TimeoutError) as error:
            raise BackendUnreachable(f"cannot connect: {error.__class__.__name__}") from None
        transport = protocol._transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Small request/answer pairs: Nagle's algorithm would add up to 40 ms.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return protocol

    async def _exchange(self, conn: _Connection, data: bytes, max_body: int) -> UpstreamResponse:
        try:
            response = await conn.start(data, max_body=max_body)
        except BaseException:
            # Timeout (cancellation), broken answer: the connection still owes bytes.
            conn.abort()
            raise
        if conn.done() and not self._closed and len(self._idle) < MAX_IDLE_PER_POOL:
            self._idle.append(conn)
        else:
            conn.abort()
        return response

    async def request(self, data: bytes, *, max_body: int) -> UpstreamResponse:
        """Send one whole request (head and body) and read the whole answer."""
        while self._idle:
            conn = self._idle.pop()  # LIFO: the warmest connection, the cold ones time out
            if conn.closed:
                continue
            try:
                return await self._exchange(conn, data, max_body)
            except BackendUnreachable:
                # The backend closed this idle connection as we sent: one more try below, on
                # a fresh connection, tells a stale connection from a dead backend.
                break
        if self._closed:
            raise BackendUnreachable("instance removed from the configuration")
        conn = await self._connect()
        return await self._exchange(conn, data, max_body)

    def close(self) -> None:
        """Close idle connections now; busy ones are closed when their answer is in."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
