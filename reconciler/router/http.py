"""The router's HTTP/1.1 server: asyncio protocols and httptools' C parser, and nothing else.

Why not aiohttp's server: measured on loopback, its request and response objects, header
multidicts, stream readers and per-request tasks cost the router more CPU than everything
else it does per request. This server does only what a reverse proxy in front of models
needs, with one small object per request and one write per answer.

Contract (what `server` relies on; the tests in tests/integration/test_router_http.py):

- A request reaches the handler whole, as an `HttpRequest`: method, path (percent-decoded),
  raw query (with its "?"), headers (names lowercased, values as sent), and the body
  (Content-Length or chunked, de-chunked). `handler(request)` returns a `Reply` (answered
  at once, without a task), a `Later` (answered when the handler calls its `done(reply)`,
  without a task: the proxy's hot path, see `Later`) or a coroutine that returns a `Reply`
  (run in a task).
- Answers leave in the order the requests came: a connection handles one request at a time,
  and requests pipelined behind it wait, parsed, in a queue; reading pauses while
  `MAX_PIPELINED` wait, or while the client does not read its answers (write buffer full).
- Keep-alive: HTTP/1.1 unless `Connection: close`; HTTP/1.0 with `Connection: keep-alive`
  (echoed). An answer that ends a connection carries `Connection: close`.
- `Expect: 100-continue`: once the request is next to be answered (never ahead of an earlier
  answer), `expect(request)` (if given) sees its head: None sends "100 Continue" and the
  body is read; a `Reply` is the final answer, sent without reading the body, and the
  connection closes after it (so a caller with a wrong key never uploads its body). A
  Content-Length over the limit gets no "100 Continue" either (see the next point).
- A body over `max_body` bytes (announced or received) is not read further: the request
  reaches the handler at once with `too_large` set and an empty body (so the handler's own
  checks, such as authentication, still come first), and the connection closes after the
  answer, the rest of the body unread.
- Malformed request: 400; request line over `MAX_URL_BYTES`: 414; more than `MAX_HEAD_BYTES`
  of head or `MAX_HEADERS` fields: 431. These reach the handler with `error` set (it adds
  its own headers) once the earlier answers are out, and the connection closes.
- Timeouts, checked every second: an idle keep-alive connection is closed after
  `KEEPALIVE_S`; a request whose head is not in `HEAD_TIMEOUT_S` after its first byte, or
  whose body stalls for `BODY_STALL_S`, is answered 408 (`error`) and the connection closed;
  a client that reads none of its answers for `SEND_STALL_S` (while they fill the send
  buffer) is cut off (abort: closing would wait for it to read).
- An offer to switch protocols (`Connection: Upgrade`, `Upgrade: h2c` or `websocket`) is
  ignored: the request, body included, is handled as any other and answered over HTTP/1.1,
  and the connection goes on (see `_ignore_upgrade`). CONNECT is answered, then closed.
- HEAD: the headers of the answer (with the Content-Length of its body), without the body.
- Streaming answers: a `Reply` with `stream` set (a `StreamSource`) is written head first
  (with `Content-Length: length`, or `Transfer-Encoding: chunked` when `length` is -1), then
  its body piece by piece as the source gives it (`attach`), each piece written at once; the
  source is paused while the client does not read (send buffer full), and cancelled when
  the client goes away. A source that fails after the head aborts the connection: the client
  sees a cut answer, never a short one taken for whole.
- Streaming request bodies: a body over `STREAM_BODY_ABOVE` bytes (announced, or chunked and
  received so far) is not gathered: once its head is in and it is the request's turn, the
  request reaches the handler with `stream` set (a `BodyStream`, `body` empty) and its body
  goes on arriving there; at most `BODY_HOLD` bytes of it are held while nothing takes them
  (reading pauses). Over `max_body` as it comes, or stalled for `BODY_STALL_S`, the stream
  fails (`BodyError` 413, 408; a malformed chunk or a client gone: 400), and the connection
  closes after the answer. An answer given before the whole body came closes the connection.
- `shutdown(timeout)`: stop accepting, close idle connections, answer the requests already
  received (with `Connection: close`), wait for them up to `timeout`, then abort the rest.
  A handler is never cancelled because its client went away: its answer is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any, Protocol, cast
from urllib.parse import unquote

import httptools

KEEPALIVE_S = 75.0  # above common client and load-balancer idle timeouts (as aiohttp's was)
HEAD_TIMEOUT_S = 30.0
BODY_STALL_S = 30.0
SEND_STALL_S = 30.0
MAX_URL_BYTES = 8192
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
MAX_PIPELINED = 16
_LARGE_BODY = 64 * 1024  # written apart from the head rather than copied into one buffer
# A request body larger than this streams to the handler (see the module's docstring):
# smaller ones come whole, so a handler may send them again elsewhere.
STREAM_BODY_ABOVE = 64 * 1024
BODY_HOLD = 256 * 1024

_log = logging.getLogger(__name__)


class BodyError(Exception):
    """A streamed request body failed; `status` is the answer it calls for."""

    def __init__(self, status: int) -> None:
        super().__init__(f"request body failed ({status})")
        self.status = status


class BodySink(Protocol):
    """Where the pieces of a streamed body go, in order; then `end` or `fail`, once."""

    def data(self, piece: bytes) -> None: ...

    def end(self) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class StreamSource(Protocol):
    """The body of a streamed answer (`Reply.stream`)."""

    def attach(self, sink: BodySink) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def cancel(self) -> None: ...


class BodyStream:
    """A request body that streams from the client to the handler's sink (`attach`).

    `consumed` says that a piece went to a sink (so the body cannot be sent elsewhere
    again). `keep_copy` gathers a copy of the whole body, up to a limit, for `on_copy`."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_copy",
        "_copy_limit",
        "_copy_size",
        "_held",
        "_on_copy",
        "_sink",
        "consumed",
        "done",
        "error",
        "length",
    )

    def __init__(self, conn: HttpConnection, length: int, chunks: list[bytes]) -> None:
        self._conn = conn
        self.length = length  # Content-Length, or -1: chunked
        self._chunks = chunks
        self._held = sum(len(chunk) for chunk in chunks)
        self._sink: BodySink | None = None
        self._copy: list[bytes] | None = None
        self._copy_limit = 0
        self._copy_size = 0
        self._on_copy: Callable[[bytes | None], None] | None = None
        self.consumed = False
        self.done = False
        self.error: BodyError | None = None

    def keep_copy(self, limit: int, on_copy: Callable[[bytes | None], None]) -> None:
        """Once the body is in: `on_copy(body)`, or `on_copy(None)` if it went over `limit`
        or failed."""
        self._copy = list(self._chunks)
        self._copy_size = self._held
        self._copy_limit = limit
        self._on_copy = on_copy
        if self._copy_size > limit:
            self._copy = None

    def feed(self, piece: bytes) -> None:
        if self._copy is not None:
            self._copy_size += len(piece)
            if self._copy_size > self._copy_limit:
                self._copy = None
            else:
                self._copy.append(piece)
        sink = self._sink
        if sink is not None:
            self.consumed = True
            sink.data(piece)
            return
        self._chunks.append(piece)
        self._held += len(piece)
        if self._held > BODY_HOLD:
            self._conn.hold_body(True)

    def finish(self) -> None:
        self.done = True
        # The whole body is in: it holds reading back no more. Its sink may have paused it
        # in this very read (the last piece filled the backend's socket) and will not
        # resume it, since it takes nothing more: left held, the connection would never
        # read its next request.
        self._conn.hold_body(False)
        self._copied(b"".join(self._copy) if self._copy is not None else None)
        if self._sink is not None:
            self._sink.end()

    def fail(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        self.error = error = BodyError(status)
        self._copied(None)
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.fail(error)

    def _copied(self, body: bytes | None) -> None:
        on_copy, self._on_copy = self._on_copy, None
        self._copy = None
        if on_copy is not None:
            on_copy(body)

    def attach(self, sink: BodySink) -> None:
        """Send the body to `sink`: what came so far, then the rest as it comes."""
        chunks, self._chunks = self._chunks, []
        self._held = 0
        if self.error is None and not self.done:
            self._sink = sink
            self._conn.hold_body(False)
        if chunks:
            self.consumed = True
            for chunk in chunks:
                sink.data(chunk)
        if self.error is not None:
            sink.fail(self.error)
        elif self.done:
            sink.end()

    def pause(self) -> None:
        """The sink cannot take more for now: stop reading the client."""
        if not self.done:  # once the body is in, what follows is the next request's
            self._conn.hold_body(True)

    def resume(self) -> None:
        if not self.done:  # a late resume must not release the next request's hold
            self._conn.hold_body(False)


class HttpRequest:
    """One request as the handler sees it. Mutable only while it is being parsed."""

    __slots__ = (
        "_chunks",
        "_started",
        "body",
        "content_length",
        "early",
        "echo_keep_alive",
        "error",
        "expect_continue",
        "headers",
        "http10",
        "is_head",
        "keep_alive",
        "method",
        "path",
        "query",
        "received",
        "stream",
        "target",
        "too_large",
    )

    def __init__(self, started: float) -> None:
        self.method = b""
        self.target = b""  # the request target as sent, until parsed into path and query
        self.path = ""
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self._chunks: list[bytes] = []
        self.received = 0
        self.content_length = -1
        self.keep_alive = False
        self.echo_keep_alive = False
        self.expect_continue = False
        self.is_head = False
        self.http10 = False  # an HTTP/1.0 client: knows no chunked answer
        self.too_large = False
        self.error = 0  # a status the server decided on (400, 408, 414, 431), else 0
        self.early: Reply | None = None  # the answer `expect` gave instead of 100 Continue
        self.stream: BodyStream | None = None  # the body, when it streams (then body is b"")
        self._started = started

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (`name` lowercase); for rare paths, not the hot one."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Reply:
    """An answer: status, header lines (each ending CRLF, no framing headers), body; or,
    with `stream`, a body that streams (`length` bytes, -1: unknown, sent chunked)."""

    __slots__ = ("body", "close", "headers", "length", "status", "stream")

    def __init__(
        self,
        status: int,
        headers: bytes = b"",
        body: bytes = b"",
        *,
        close: bool = False,
        stream: StreamSource | None = None,
        length: int = -1,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.close = close
        self.stream = stream
        self.length = length


class _StreamWriter:
    """The sink of a streamed answer: writes its pieces to the client as they come."""

    __slots__ = ("_chunked", "_conn", "body", "keep")

    def __init__(
        self, conn: HttpConnection, chunked: bool, keep: bool, body: BodyStream | None
    ) -> None:
        self._conn = conn
        self._chunked = chunked
        self.keep = keep
        self.body = body  # the request's streamed body, if it had one

    def data(self, piece: bytes) -> None:
        transport = self._conn._transport
        if transport is None or not piece:
            return
        if self._chunked:
            transport.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
        else:
            transport.write(piece)

    def end(self) -> None:
        transport = self._conn._transport
        if self._chunked and transport is not None:
            transport.write(b"0\r\n\r\n")
        self._conn._streamed(self, ok=True)

    def fail(self, error: BaseException) -> None:
        self._conn._streamed(self, ok=False)


class Later:
    """An answer to come: the handler returns it, then calls `done(reply)` once, from a
    callback of the event loop (not from inside a callback of this request's connection).

    What a coroutine handler gives, without its costs: a task made and stepped twice, and a
    frame per level resumed; for a request that waits only for one backend answer, those
    were a sizeable part of the router's CPU per request. Nothing is cancelled when the
    client goes away (as with a task): the answer is dropped."""

    __slots__ = ("_conn", "_reply", "_request")

    def __init__(self) -> None:
        self._conn: HttpConnection | None = None
        self._request: HttpRequest | None = None
        self._reply: Reply | None = None

    def done(self, reply: Reply) -> None:
        conn, request = self._conn, self._request
        if conn is None or request is None:
            self._reply = reply  # before the connection took it: answered when it does
            return
        self._conn = self._request = None
        conn._later_done(request, reply)


def handler_failed() -> Reply:
    """In an `except` block: log the handler's failure; the answer it gets (500, close)."""
    _log.exception("handler failed")
    return Reply(500, close=True)


async def complete(later: Later, work: Coroutine[Any, Any, Reply]) -> None:
    """Answer `later` with what `work` gives: for a handler whose `Later` turns out to need
    a coroutine after all (a 500 if it fails, as for a coroutine handler)."""
    try:
        reply = await work
    except Exception:
        reply = handler_failed()
    later.done(reply)


Handler = Callable[[HttpRequest], Reply | Later | Coroutine[Any, Any, Reply]]
ExpectHook = Callable[[HttpRequest], Reply | None]


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))


_STATUS_LINES = {int(status): _status_line(int(status)) for status in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"
# Headers the connection itself reads; all are also passed on to the handler.
_CONTENT_LENGTH = b"content-length"
_EXPECT = b"expect"
_CONNECTION = b"connection"
_TRANSFER_ENCODING = b"transfer-encoding"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_FRAMING = frozenset((_CONTENT_LENGTH, _EXPECT, _CONNECTION))


def _date_line() -> bytes:
    return b"Date: %s\r\n" % email.utils.formatdate(usegmt=True).encode("ascii")


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, queue, hand to the handler in order, write answers."""

    __slots__ = (
        "_big_read",
        "_body_held",
        "_busy",
        "_closing",
        "_head_bytes",
        "_last_io",
        "_parser",
        "_paused_reading",
        "_paused_writing",
        "_queue",
        "_request",
        "_resumed",
        "_server",
        "_source",
        "_stopped",
        "_task",
        "_transport",
        "_writer",
    )

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._request: HttpRequest | None = None  # being parsed
        # A request whose Upgrade offer was ignored: its body comes next (_ignore_upgrade).
        self._resumed: HttpRequest | None = None
        self._queue: deque[HttpRequest] = deque()  # parsed, waiting for their turn
        self._busy = False  # a request is being handled; its answer is not written yet
        # The task of the request being handled: the loop keeps only weak references.
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # close once the answers owed are written
        self._stopped = False  # read no more: the stream cannot be parsed any further
        self._paused_reading = False
        self._paused_writing = False
        self._last_io = 0.0  # server.now at the last read, answer or drained send buffer
        self._head_bytes = 0
        self._big_read = False  # this read may hold a whole head over the limit
        self._body_held = False  # reading paused: a streamed request body is not taken
        self._source: StreamSource | None = None  # the body of the answer being streamed
        self._writer: _StreamWriter | None = None

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._last_io = self._server.now
        self._server.connections.add(self)
        if self._server.draining:
            # Accepted just before the listener closed: as if it had stayed in the backlog.
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._stopped = True
        self._queue.clear()
        request, self._request = self._request, None
        self._transport = None
        if request is not None and request.stream is not None:
            request.stream.fail(400)  # the client went away in the middle of its body
        source, self._source = self._source, None
        self._writer = None
        if source is not None:
            source.cancel()
        self._server.connection_closed()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._last_io = self._server.now
        request = self._request
        if request is not None and request._started >= 0:
            # The parser keeps a header it has not seen the end of: bound what it may hold
            # (to the limit and one read; the bytes of this read may end the head).
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(431)
                self._next()
                return
            self._head_bytes += len(data)
        self._big_read = len(data) > MAX_HEAD_BYTES
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._ignore_upgrade(data, upgrade)
        except httptools.HttpParserError:
            if not self._stopped:
                self._fail(400)
        request = self._request
        if (
            request is not None
            and request._started < 0
            and request.stream is None
            and (request.content_length > STREAM_BODY_ABOVE or request.received > STREAM_BODY_ABOVE)
        ):
            self._stream_body(request)
        if not self._busy and self._queue:
            self._next()

    def eof_received(self) -> bool:
        # The client will send no more; it may still wait for answers owed.
        self._stopped = True
        if self._busy or self._queue:
            self._closing = True
            return True
        return False

    def pause_writing(self) -> None:
        self._paused_writing = True
        if self._source is not None:
            self._source.pause()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._last_io = self._server.now
        if self._source is not None:
            self._source.resume()
        elif not self._busy:
            self._next()

    # ------------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        if self._stopped:
            return
        self._request = HttpRequest(self._server.now)
        self._head_bytes = 0  # bytes of later reads while the head is incomplete

    def on_url(self, url: bytes) -> None:
        request = self._request
        if request is None:
            return
        request.target += url
        if len(request.target) > MAX_URL_BYTES:
            self._fail(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called for every header of every request: as little as possible here. Limits are
        # checked once the head is complete (see on_headers_complete).
        request = self._request
        if request is not None:
            name = name.lower()
            request.headers.append((name, value))
            size = len(name)
            if size == 14 and name == _CONTENT_LENGTH:  # on almost every request: inline
                # try/except, not contextlib.suppress: no context manager made per request.
                try:  # noqa: SIM105
                    request.content_length = int(value)
                except ValueError:  # the parser refuses a bad one
                    pass
            elif (size == 10 or size == 6) and name in _FRAMING:
                self._framing(request, name, value)

    def _framing(self, request: HttpRequest, name: bytes, value: bytes) -> None:
        if name == _EXPECT:
            request.expect_continue = value.lower() == b"100-continue"
        elif b"keep-alive" in value.lower():
            request.echo_keep_alive = True

    def on_headers_complete(self) -> None:
        request = self._request
        if request is None:
            resumed = self._resumed
            if resumed is not None:
                # The end of the made-up head of _ignore_upgrade (read with _stopped set, so
                # no request was made for it): the body that follows is the resumed one's.
                self._request = resumed
                self._resumed = None
                self._stopped = False
            return
        headers = request.headers
        # A head that came in one ordinary read is smaller than the limit: only a head read
        # in several pieces (bounded meanwhile by data_received) or a big read is measured.
        if len(headers) > MAX_HEADERS or (
            (self._big_read or self._head_bytes)
            and sum(len(name) + len(value) for name, value in headers) > MAX_HEAD_BYTES
        ):
            self._fail(431)
            return
        parser = self._parser
        request._started = -1.0  # the head is in: from now on only body stalls count
        request.method = method = parser.get_method()
        request.is_head = method == b"HEAD"
        request.keep_alive = parser.should_keep_alive()
        if not request.keep_alive or request.echo_keep_alive:
            # HTTP/1.0 keeps alive only when asked to: only then is the version looked up.
            request.http10 = parser.get_http_version() == "1.0"
        request.echo_keep_alive = request.echo_keep_alive and request.keep_alive
        target = request.target
        mark = target.find(b"?")
        if mark >= 0:
            request.query = target[mark:]
            target = target[:mark]
        if target[:1] != b"/":
            # absolute-form ("http://host/path") or authority/asterisk form
            try:
                target = httptools.parse_url(request.target).path or b"/"
            except httptools.HttpParserInvalidURLError:
                target = b"/"
        path = target.decode("latin-1")
        request.path = unquote(path, errors="surrogateescape") if "%" in path else path
        if request.content_length > self._server.max_body:
            self._too_large(request)
        elif request.expect_continue and not self._busy and not self._queue:
            self._continue(request)

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is None:
            return
        request.received += len(body)
        stream = request.stream
        if request.received > self._server.max_body:
            if stream is not None:
                # Going over as it streams: the handler's exchange fails with 413.
                self._request = None
                self._stopped = True
                self._closing = True
                stream.fail(413)
            else:
                self._too_large(request)
            return
        if stream is not None:
            self._last_io = self._server.now
            stream.feed(body)
            return
        request._chunks.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        if request is None:
            return
        self._request = None
        if request.stream is not None:
            request.stream.finish()
            return
        chunks = request._chunks
        if chunks:
            request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            request._chunks = []
        self._enqueue(request)

    def _ignore_upgrade(self, data: bytes, upgrade: httptools.HttpParserUpgrade) -> None:
        """A request offered to switch protocols (`Connection: Upgrade` with `Upgrade: h2c`,
        as `curl --http2` sends, or `websocket`): the offer is ignored and the request,
        body included, is answered over HTTP/1.1, as RFC 9110 7.8 allows and RFC 7540 3.2
        asks of a server without h2c. (The Upgrade and Connection headers are hop-by-hop:
        the handler does not forward them, so no backend is asked to switch either.)

        httptools stops such a request at the end of its head: it hands it over with no
        body (on_message_complete) and raises HttpParserUpgrade with the offset where the
        other protocol would begin. So the request is taken back from the queue and a new
        parser is fed a made-up head carrying only the request's own framing headers
        (Content-Length or Transfer-Encoding, as sent, so the same rules apply to them),
        then the bytes from the offset on: its body reaches the request (on_headers_complete
        switches to it), and the requests pipelined behind it are parsed as usual. Only
        CONNECT keeps the old rule: answered, then the connection closes."""
        while True:
            offset = int(upgrade.args[0]) if upgrade.args else len(data)
            queue = self._queue
            # Stopped: the request was refused on its head (too large, an early answer to
            # Expect, a head over the limits): the body is not read, as without Upgrade.
            if self._stopped or not queue or queue[-1].method == b"CONNECT":
                self._stopped = True
                self._closing = True
                return
            request = queue.pop()
            framing = b"".join(
                b"%s: %s\r\n" % (name, value)
                for name, value in request.headers
                if name in (_CONTENT_LENGTH, _TRANSFER_ENCODING)
            )
            # While the made-up head is parsed, _stopped keeps the callbacks from making a
            # request of it; its on_headers_complete resumes this one. (So the hot path
            # pays nothing for this rare one.)
            self._request = None
            self._resumed = request
            self._stopped = True
            self._parser = httptools.HttpRequestParser(self)
            data = b"POST / HTTP/1.1\r\n%s\r\n%s" % (framing, data[offset:])
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as again:  # a pipelined offer behind it
                upgrade = again
            except httptools.HttpParserError:
                if self._resumed is not None:  # its framing headers were refused
                    self._resumed = None
                    self._request = request
                    self._stopped = False
                if not self._stopped:
                    self._fail(400)
                return

    # ------------------------------------------------------------------ requests in order
    def _enqueue(self, request: HttpRequest) -> None:
        self._queue.append(request)
        if len(self._queue) >= MAX_PIPELINED and not self._paused_reading:
            self._set_reading(False)

    def _too_large(self, request: HttpRequest) -> None:
        """Stop reading; the handler answers (413 after its own checks), then we close."""
        request.too_large = True
        request.body = b""
        request._chunks = []
        self._request = None
        self._stopped = True
        self._closing = True
        self._enqueue(request)

    def _stream_body(self, request: HttpRequest) -> None:
        """A large body: hand the request over now, its body to come (if it is its turn),
        else hold it back until it is."""
        if self._busy or self._queue or self._stopped:
            if request.received > STREAM_BODY_ABOVE:
                self.hold_body(True)
            return
        chunks, request._chunks = request._chunks, []
        request.stream = BodyStream(self, request.content_length, chunks)
        self._queue.append(request)

    def hold_body(self, on: bool) -> None:
        """Pause (or resume) reading for a streamed request body."""
        if on == self._body_held:
            return
        self._body_held = on
        if on:
            if not self._paused_reading:
                self._set_reading(False)
        elif self._paused_reading and len(self._queue) < MAX_PIPELINED and not self._stopped:
            self._set_reading(True)

    def _fail(self, status: int) -> None:
        """The stream cannot be parsed further: answer `status` in turn, then close."""
        streaming = self._request
        if streaming is not None and streaming.stream is not None:
            # Its handler runs already: its exchange fails, and it answers.
            self._request = None
            self._stopped = True
            self._closing = True
            streaming.stream.fail(status)
            return
        request = self._request or HttpRequest(self._server.now)
        request.error = status
        request.keep_alive = False
        self._request = None
        self._stopped = True
        self._closing = True
        self._enqueue(request)

    def _continue(self, request: HttpRequest) -> None:
        """The request being read is next in line and waits for 100 Continue, or not."""
        request.expect_continue = False
        expect = self._server.expect
        early = None
        if expect is not None:
            try:
                early = expect(request)
            except Exception:
                _log.exception("expect hook failed")
        if early is None:
            if self._transport is not None:
                self._transport.write(_CONTINUE)
            return
        # Answered on its head alone: the body that may follow is not ours to parse.
        request.early = early
        self._request = None
        self._stopped = True
        self._closing = True
        self._enqueue(request)

    def _next(self) -> None:
        """Start the requests waiting, in order, while their answers come without waiting."""
        queue = self._queue
        handler = self._server.handler
        while queue and not self._busy and not self._paused_writing:
            request = queue.popleft()
            self._busy = True
            if request.early is not None:
                self._answer(request, request.early)
                continue
            try:
                result = handler(request)
            except Exception:
                _log.exception("handler failed")
                result = Reply(500, close=True)
            if isinstance(result, Reply):
                self._answer(request, result)
            elif isinstance(result, Later):
                if result._reply is not None:
                    self._answer(request, result._reply)
                else:
                    result._conn = self
                    result._request = request
            else:
                self._task = self._server.loop.create_task(self._run(request, result))
        if (
            self._paused_reading
            and len(queue) < MAX_PIPELINED // 2
            and not self._stopped
            and not self._body_held
        ):
            self._set_reading(True)
        if not self._busy and not queue:
            pending = self._request
            if pending is not None and pending._started < 0 and pending.stream is None:
                if pending.expect_continue:
                    self._continue(pending)
                if not queue and (
                    pending.content_length > STREAM_BODY_ABOVE
                    or pending.received > STREAM_BODY_ABOVE
                ):
                    self._stream_body(pending)
                    self.hold_body(False)
                if queue:  # answered early, or its body streams
                    self._next()

    async def _run(self, request: HttpRequest, work: Coroutine[Any, Any, Reply]) -> None:
        try:
            reply = await work
        except Exception:
            _log.exception("handler failed")
            reply = Reply(500, close=True)
        self._task = None
        self._answer(request, reply)
        self._next()  # the next request, or the 100 Continue the one being read waits for

    def _later_done(self, request: HttpRequest, reply: Reply) -> None:
        """The answer of a `Later` came."""
        self._answer(request, reply)
        self._next()

    def _answer(self, request: HttpRequest, reply: Reply) -> None:
        self._busy = False
        transport = self._transport
        if transport is None:
            # The client went away; the answer has nobody to go to.
            if reply.stream is not None:
                reply.stream.cancel()
            return
        server = self._server
        self._last_io = server.now
        status = reply.status
        body = reply.body
        keep = request.keep_alive and not reply.close and not (self._closing and not self._queue)
        if request.stream is not None and not request.stream.done:
            # Answered before its whole body came: the rest of it is not read (a streamed
            # answer may go on while the body still goes up: it closes at its end).
            keep = False
            if reply.stream is None:
                self._end_body(request.stream)
        if reply.stream is not None:
            self._answer_stream(request, reply, keep)
            return
        if not keep:
            connection = _CLOSE
        elif request.echo_keep_alive:
            connection = _KEEP_ALIVE
        else:
            connection = b""
        if status == 204 or status == 304 or status < 200:
            length = b""
            body = b""
        else:
            length = b"Content-Length: %d\r\n" % len(body)
            if request.is_head:
                body = b""
        status_line = _STATUS_LINES.get(status) or _status_line(status)
        if len(body) < _LARGE_BODY:
            transport.write(
                b"".join(
                    (
                        status_line,
                        server.date_line,
                        reply.headers,
                        length,
                        connection,
                        b"\r\n",
                        body,
                    )
                )
            )
        else:
            transport.write(
                b"".join(
                    (status_line, server.date_line, reply.headers, length, connection, b"\r\n")
                )
            )
            transport.write(body)
        if not keep:
            self._stopped = True
            self._queue.clear()
            transport.close()  # after the buffer is written

    def _end_body(self, stream: BodyStream) -> None:
        """A streamed request body is no longer wanted: read no more of the connection."""
        if self._request is not None and self._request.stream is stream:
            self._request = None
        self._stopped = True
        self._closing = True
        stream.fail(400)

    def _answer_stream(self, request: HttpRequest, reply: Reply, keep: bool) -> None:
        transport = self._transport
        source = reply.stream
        assert transport is not None and source is not None
        self._busy = True  # until its body is out
        chunked = reply.length < 0
        if chunked and request.http10:
            # An HTTP/1.0 client knows no chunked answer: the body ends when we close.
            chunked = False
            keep = False
        if not keep:
            connection = _CLOSE
        elif request.echo_keep_alive:
            connection = _KEEP_ALIVE
        else:
            connection = b""
        if chunked:
            framing = _CHUNKED
        elif reply.length >= 0:
            framing = b"Content-Length: %d\r\n" % reply.length
        else:
            framing = b""
        status = reply.status
        transport.write(
            b"".join(
                (
                    _STATUS_LINES.get(status) or _status_line(status),
                    self._server.date_line,
                    reply.headers,
                    framing,
                    connection,
                    b"\r\n",
                )
            )
        )
        self._source = source
        self._writer = writer = _StreamWriter(self, chunked, keep, request.stream)
        if self._paused_writing:
            source.pause()
        source.attach(writer)

    def _streamed(self, writer: _StreamWriter, *, ok: bool) -> None:
        """The streamed answer's body ended (ok) or broke off."""
        if writer is not self._writer:
            return
        self._writer = None
        self._source = None
        self._busy = False
        if writer.body is not None and not writer.body.done:
            self._end_body(writer.body)
        transport = self._transport
        if transport is None:
            return
        self._last_io = self._server.now
        if not ok:
            # The client must not take a cut answer for a whole one.
            self.abort()
            return
        if not writer.keep or (self._closing and not self._queue):
            self._stopped = True
            self._queue.clear()
            transport.close()
            return
        self._next()

    def _set_reading(self, on: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        with contextlib.suppress(RuntimeError):  # already closing
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()
        self._paused_reading = not on

    # ------------------------------------------------------------------ housekeeping
    def check_timeouts(self, now: float) -> None:
        request = self._request
        if self._transport is None:
            return
        if self._paused_writing:
            if now - self._last_io > SEND_STALL_S:
                self.abort()
            return
        if (
            request is not None
            and request.stream is not None
            and not self._body_held
            and now - self._last_io > BODY_STALL_S
        ):
            self._fail(408)  # a streamed body stalled: its handler answers
            return
        if self._busy or self._queue:
            return  # the client waits for us, not we for it
        if request is None:
            if now - self._last_io > KEEPALIVE_S:
                self.close()
        elif request._started >= 0:
            if now - request._started > HEAD_TIMEOUT_S:
                self._fail(408)
                self._next()
        elif now - self._last_io > BODY_STALL_S:
            self._fail(408)
            self._next()

    def drain(self) -> None:
        """Shutdown: close now if nothing is owed, else after the answers owed."""
        self._closing = True
        if not self._busy and not self._queue and self._request is None:
            self.close()

    def close(self) -> None:
        self._stopped = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._stopped = True
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """Listening sockets, the open connections, their clock and timeouts, and shutdown."""

    def __init__(
        self, handler: Handler, *, max_body: int, expect: ExpectHook | None = None
    ) -> None:
        self.handler = handler
        self.expect = expect
        self.max_body = max_body  # may be changed while serving (a new config)
        self.connections: set[HttpConnection] = set()
        self.draining = False
        self.loop = asyncio.get_running_loop()
        self.now = time.monotonic()
        self.date_line = _date_line()
        self._servers: list[asyncio.AbstractServer] = []
        self._housekeeping: asyncio.Task[None] | None = None
        self._all_closed: asyncio.Event | None = None

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on host:port; returns the bound port (useful with port 0)."""
        server = await self.loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_port=reuse_port or None, backlog=1024
        )
        self._servers.append(server)
        if self._housekeeping is None:
            self._housekeeping = self.loop.create_task(self._tick())
        sockets = server.sockets
        bound: int = sockets[0].getsockname()[1]
        for sock in sockets:
            # Small requests and answers: Nagle's algorithm would hold them back.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return bound

    async def _tick(self) -> None:
        # One timer for all connections, not one per request: the clock, the Date header
        # and timeouts only need to be right to about a second.
        while True:
            await asyncio.sleep(1.0)
            self.now = now = time.monotonic()
            self.date_line = _date_line()
            for connection in list(self.connections):
                connection.check_timeouts(now)

    def connection_closed(self) -> None:
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; answer what was received; abort what is left after `timeout`."""
        self.draining = True
        for server in self._servers:
            server.close()
        self._all_closed = asyncio.Event()
        for connection in list(self.connections):
            connection.drain()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._all_closed.wait()
        for connection in list(self.connections):
            connection.abort()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
