"""The router's HTTP layer in process: timeouts, backpressure, deadlines, the access line.

A fake transport records what the connection writes; time is driven by calling
`check_timeouts` with chosen clock values, so no test waits for a timeout.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time

from reconciler.router import http, logs
from reconciler.router.upstream import Deadlines, UpstreamPool, _Connection


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _connection(
    handler: http.Handler,
) -> tuple[http.HttpServer, http.HttpConnection, FakeTransport]:
    server = http.HttpServer(handler, max_body=1024)
    connection = http.HttpConnection(server)
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return server, connection, transport


def _ok(request: http.HttpRequest) -> http.Reply:
    if request.error:
        return http.Reply(request.error, b"", b"error")
    return http.Reply(200, b"", b"ok")


def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    async def scenario() -> None:
        server, connection, transport = _connection(_ok)
        connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
        start = server.now
        connection.check_timeouts(start + http.KEEPALIVE_S - 1)
        assert not transport.closed
        connection.check_timeouts(start + http.KEEPALIVE_S + 1)
        assert transport.closed

    asyncio.run(scenario())


def test_slow_head_and_stalled_body_are_408() -> None:
    async def scenario() -> None:
        server, connection, transport = _connection(_ok)
        connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # head unfinished
        connection.check_timeouts(server.now + http.HEAD_TIMEOUT_S + 1)
        assert transport.written.startswith(b"HTTP/1.1 408 ")
        assert b"Connection: close\r\n" in transport.written and transport.closed

        server, connection, transport = _connection(_ok)
        connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        connection.check_timeouts(server.now + http.BODY_STALL_S - 1)
        assert transport.written == b""
        connection.check_timeouts(server.now + http.BODY_STALL_S + 1)
        assert transport.written.startswith(b"HTTP/1.1 408 ") and transport.closed

    asyncio.run(scenario())


def test_a_client_that_reads_no_answers_is_cut_off() -> None:
    async def scenario() -> None:
        server, connection, transport = _connection(_ok)
        connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.pause_writing()  # the transport's buffer is full: the client reads nothing
        connection.check_timeouts(server.now + http.SEND_STALL_S - 1)
        assert not transport.closed
        connection.check_timeouts(server.now + http.SEND_STALL_S + 1)
        assert transport.closed

    asyncio.run(scenario())


def test_upgrade_request_is_answered_then_the_connection_closed() -> None:
    async def scenario() -> None:
        _, connection, transport = _connection(_ok)
        connection.data_received(
            b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"\x81\x05hello"  # already the other protocol's bytes
        )
        assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close\r\n" in transport.written and transport.closed

    asyncio.run(scenario())


def test_head_over_the_limit_is_431_however_it_is_split() -> None:
    async def scenario() -> None:
        half = b"a" * (http.MAX_HEAD_BYTES // 2 + 100)
        for reads in (
            [b"GET / HTTP/1.1\r\nX-A: " + half + b"\r\nX-B: " + half + b"\r\n\r\n"],
            [b"GET / HTTP/1.1\r\nX-A: " + half, b"\r\nX-B: " + half + b"\r\n\r\n"],
            [b"GET / HTTP/1.1\r\n"] + [b"X-%d: y\r\n" % i for i in range(200)] + [b"\r\n"],
        ):
            _, connection, transport = _connection(_ok)
            for data in reads:
                connection.data_received(data)
            assert transport.written.startswith(b"HTTP/1.1 431 "), reads[0][:40]
            assert transport.closed

    asyncio.run(scenario())


def test_a_client_waiting_for_its_answer_is_not_timed_out() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(request: http.HttpRequest) -> http.Reply:
            await release.wait()
            return http.Reply(200, b"", b"late")

        server, connection, transport = _connection(slow)
        connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.check_timeouts(server.now + http.KEEPALIVE_S * 10)
        assert not transport.closed
        release.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert transport.written.endswith(b"late") and not transport.closed

    asyncio.run(scenario())


def test_reading_pauses_while_too_many_requests_wait_behind_a_slow_one() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(request: http.HttpRequest) -> http.Reply:
            await release.wait()
            return http.Reply(200, b"", request.path.encode())

        _, connection, transport = _connection(slow)
        pipelined = b"".join(
            b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(http.MAX_PIPELINED + 2)
        )
        connection.data_received(pipelined)
        assert not transport.reading
        release.set()
        for _ in range(5 * http.MAX_PIPELINED):
            await asyncio.sleep(0)
        assert transport.reading
        bodies = [
            part.rpartition(b"\r\n\r\n")[2] for part in transport.written.split(b"HTTP/1.1")[1:]
        ]
        assert bodies == [b"/%d" % i for i in range(http.MAX_PIPELINED + 2)]

    asyncio.run(scenario())


def test_percent_encoded_path_and_query() -> None:
    async def scenario() -> None:
        seen: list[http.HttpRequest] = []

        def keep(request: http.HttpRequest) -> http.Reply:
            seen.append(request)
            return http.Reply(204)

        _, connection, transport = _connection(keep)
        connection.data_received(b"GET /sc%6Fre?x=%20y HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.data_received(
            b"GET http://router:8080/-/healthy?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert [(r.path, r.query) for r in seen] == [
            ("/score", b"?x=%20y"),
            ("/-/healthy", b"?a=1"),
        ]
        assert b"Content-Length" not in transport.written  # 204: no body, no length

    asyncio.run(scenario())


def test_deadlines_time_out_late_exchanges_with_one_timer() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        pool = UpstreamPool("127.0.0.1:1", connect_timeout=1.0)
        quick, late, later = (_Connection(pool) for _ in range(3))
        for conn in (quick, late, later):
            conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        now = loop.time()
        late_answer = late.start(b"", max_body=10, deadline=now + 0.05, deadlines=deadlines)
        armed = deadlines._timer
        later_answer = later.start(b"", max_body=10, deadline=now + 0.5, deadlines=deadlines)
        assert deadlines._timer is armed  # a later deadline does not re-arm the timer
        quick_answer = quick.start(b"", max_body=10, deadline=now + 0.02, deadlines=deadlines)
        assert deadlines._timer is not armed  # an earlier one does
        quick.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert (await quick_answer).body == b"ok"
        await asyncio.sleep(0.1)
        assert isinstance(late_answer.exception(), TimeoutError) and late.closed
        assert not later_answer.done()
        deadlines.close()
        assert deadlines._armed_for == math.inf
        later.abort()

    asyncio.run(scenario())


def test_access_line_is_json_with_the_documented_fields_and_no_secret_names() -> None:
    stream = io.StringIO()
    logs.configure(stream)
    access = logs.AccessLog(endpoint="ep", pid=7, api_key="dropped")
    access.request(
        b'id-"1"', b"POST", "/score", 424, "blue", "live", "10.0.0.5:5001", 500, 0.0123, 10, 20, ""
    )
    access.request(b"id-2", b"GET", None, 401, "", "live", None, None, 0.0, 0, 0, "missing")
    logs.flush()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == 'id-"1"' and first["duration_ms"] == 12.3
    assert first["backend_status"] == 500 and first["reason"] is None
    assert (second["deployment"], second["instance"], second["reason"]) == (None, None, "missing")
    assert "api_key" not in first  # a suspicious context field is dropped, as structlog's is
    assert set(logs.ACCESS_FIELDS) | {"endpoint", "pid", "event", "level", "ts"} == set(first)
    assert not any(logs._suspect(name) for name in logs.ACCESS_FIELDS)


def test_access_line_escapes_what_callers_send_and_stamps_microseconds() -> None:
    # The repeated fields' JSON is cached by value: a caller's path with quotes, a percent
    # sign or non-ASCII text, an empty method and the same values twice come out as JSON.
    stream = io.StringIO()
    logs.configure(stream)
    access = logs.AccessLog(endpoint="ep", pid=7)
    odd = 'r\u00e9sum\u00e9 "%s" \\ 100%'
    for _ in range(2):
        access.request(b"id%1", b"", odd, 400, "", "live", None, None, 0.0004, 0, 0, "bad")
        access.request(b"id", b"G\xe9T", "", 200, "d", "mirror", "[::1]:80", 204, 1.5, 1, 2, "")
    logs.flush()
    lines = stream.getvalue().splitlines()
    first, second, third, fourth = (json.loads(line) for line in lines)
    assert first == third | {"ts": first["ts"]} and second == fourth | {"ts": second["ts"]}
    assert (first["request_id"], first["method"], first["path"]) == ("id%1", "", odd)
    assert (first["deployment"], first["instance"], first["reason"]) == (None, None, "bad")
    assert (second["method"], second["path"], second["reason"]) == ("G\u00e9T", "", None)
    assert first["duration_ms"] == 0.4 and second["duration_ms"] == 1500.0
    stamp = lines[0].rpartition('"ts":')[2].rstrip("}")
    seconds, _, micros = stamp.partition(".")
    assert len(micros) == 6 and abs(int(seconds) + int(micros) / 1e6 - time.time()) < 60


def test_send_idle_answers_through_its_callback_and_takes_the_connection_back() -> None:
    # The kept-alive path without a future: the callback gets the answer at the end of the
    # read, the connection already back in the pool (so the callback may reuse it); a
    # timeout reaches it too, the connection then closed.
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        pool = UpstreamPool("127.0.0.1:1", connect_timeout=1.0)
        conn = _Connection(pool)
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        pool._idle.append(conn)
        seen: list[tuple[object, object, int]] = []

        def answered(response: object, error: object) -> None:
            seen.append((response, error, pool.idle_connections))

        sent = pool.send_idle(
            b"GET / HTTP/1.1\r\n\r\n",
            answered,
            max_body=100,
            deadline=loop.time() + 10,
            deadlines=deadlines,
        )
        assert sent and pool.idle_connections == 0
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        ((response, error, idle),) = seen
        assert getattr(response, "body", None) == b"ok" and error is None and idle == 1
        assert pool.send_idle(
            b"GET / HTTP/1.1\r\n\r\n",
            answered,
            max_body=100,
            deadline=loop.time() + 0.01,
            deadlines=deadlines,
        )
        await asyncio.sleep(0.1)
        assert len(seen) == 2 and isinstance(seen[1][1], TimeoutError) and conn.closed
        assert not pool.send_idle(
            b"", answered, max_body=100, deadline=loop.time() + 1, deadlines=deadlines
        )  # the closed connection is not handed out again
        deadlines.close()

    asyncio.run(scenario())


class _FullSocket(FakeTransport):
    """An upstream socket whose send buffer fills past `limit` bytes until `drain`ed."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.protocol: _Connection | None = None
        self.full = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.written) > self.limit and not self.full and self.protocol is not None:
            self.full = True
            self.protocol.pause_writing()

    def writelines(self, pieces: tuple[bytes, ...]) -> None:
        self.write(b"".join(pieces))

    def drain(self) -> None:
        self.written = b""
        if self.full and self.protocol is not None:
            self.full = False
            self.protocol.resume_writing()


def test_reading_resumes_after_a_streamed_body_whose_last_piece_filled_the_upstream() -> None:
    # The sequence of the intermittent stall of test_ten_megabytes_up_and_down...: the last
    # read of a streamed body fills the backend socket's buffer (the upstream pauses the
    # body: reading the client pauses), the body ends in that same read (the upstream drops
    # the body as its sink), and when the buffer drains nobody resumes the client: once
    # answered, the next request on the kept-alive connection is never read.
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        pool = UpstreamPool("127.0.0.1:1", connect_timeout=1.0)
        upstream = _Connection(pool)
        socket = _FullSocket(limit=64 * 1024)
        socket.protocol = upstream
        upstream.connection_made(socket)  # type: ignore[arg-type]
        seen: list[bytes] = []

        def handler(request: http.HttpRequest) -> http.Reply | http.Later:
            seen.append(request.method)
            if request.stream is None:
                return http.Reply(200, b"", b"small")
            later = http.Later()
            answer = upstream.start(
                b"POST / HTTP/1.1\r\n\r\n",
                max_body=1024,
                deadline=loop.time() + 10,
                deadlines=deadlines,
                body=request.stream,
            )
            answer.add_done_callback(lambda done: later.done(http.Reply(200, b"", b"counted")))
            return later

        server = http.HttpServer(handler, max_body=1 << 20)
        connection = http.HttpConnection(server)
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        size = 300 * 1024
        connection.data_received(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
            + b"a" * (200 * 1024)
        )
        assert not transport.reading  # the upstream's buffer is full: the body waits
        socket.drain()
        assert transport.reading
        connection.data_received(b"a" * (size - 200 * 1024))  # the rest: the buffer fills
        socket.drain()  # the backend reads the whole body, then answers
        upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await asyncio.sleep(0)
        assert transport.written.endswith(b"counted")
        assert transport.reading  # the next request on this connection is read
        connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert transport.written.endswith(b"small") and seen == [b"POST", b"GET"]
        deadlines.close()

    asyncio.run(scenario())
