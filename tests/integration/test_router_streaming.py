"""Router over real sockets: answers and request bodies stream through it.

A backend (aiohttp, on the Backends loop) writes server-sent events with pauses, answers
10 MB, or reads a 10 MB upload piece by piece; the router is a real process, and its peak
memory (VmHWM of /proc/PID/status) is read before and after a large body goes through.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    PRIMARY_KEY,
    Backends,
    backends_fixture,
    dead_address,
    deployment,
    metric_value,
    router_config,
    start_router_fixture,
)

AUTH = {"Authorization": f"Bearer {PRIMARY_KEY}"}
MB = 1024 * 1024
PIECE = bytes(range(256)) * 256  # 64 KB


@dataclass
class StreamingBackend:
    """What the backend does is chosen by the request's `x-mode` header (forwarded)."""

    loop: asyncio.AbstractEventLoop
    port: int = 0
    pause: float = 1.5  # between the server-sent events
    second_event_at: float = 0.0  # time.monotonic() when the second event was written
    uploads: list[tuple[int, str]] = field(default_factory=list)  # (size, sha256) read whole
    _server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        mode = request.headers.get("x-mode", "")
        if mode == "sse":
            await request.read()
            answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await answer.prepare(request)
            await answer.write(b"data: one\n\n")
            await asyncio.sleep(self.pause)
            self.second_event_at = time.monotonic()
            await answer.write(b"data: two\n\n")
            await answer.write_eof()
            return answer
        if mode.startswith("chunked-"):
            # A chunked answer of that many KB (a JSON document, the same on every backend).
            await request.read()
            size = int(mode.removeprefix("chunked-")) * 1024
            answer = web.StreamResponse(headers={"Content-Type": "application/json"})
            answer.enable_chunked_encoding()
            await answer.prepare(request)
            await answer.write(b'{"pad": "')
            await asyncio.sleep(0.01)  # so the router sees the answer before its end
            await answer.write(b"x" * (size - 11) + b'"}')
            await answer.write_eof()
            return answer
        if mode == "big":
            await request.read()
            answer = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            answer.content_length = 10 * MB
            await answer.prepare(request)
            for _ in range(10 * MB // len(PIECE)):
                await answer.write(PIECE)
            await answer.write_eof()
            return answer
        # Read the upload piece by piece, never whole: the backend's memory is not the test's.
        digest = hashlib.sha256()
        size = 0
        async for piece in request.content.iter_any():
            digest.update(piece)
            size += len(piece)
        self.uploads.append((size, digest.hexdigest()))
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def _start(self) -> None:
        self._server = await self.loop.create_server(
            web.Server(self._handle, access_log=None), "127.0.0.1", 0
        )
        self.port = self._server.sockets[0].getsockname()[1]


def streaming_backend(backends: Backends) -> StreamingBackend:
    backend = StreamingBackend(loop=backends.loop)
    asyncio.run_coroutine_threadsafe(backend._start(), backends.loop).result(10)
    return backend


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def connect(port: int, timeout: float = 10) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def pieces(total: int) -> Iterator[bytes]:
    for _ in range(total // len(PIECE)):
        yield PIECE


def test_server_sent_events_reach_the_caller_as_the_backend_writes_them(
    backends: Backends, start_router
) -> None:
    backend = streaming_backend(backends)
    router = start_router(
        router_config(
            [deployment("blue", [backend.address], request_timeout_ms=5000)],
            traffic={"blue": 100},
        )
    )
    conn = connect(router.port)
    started = time.monotonic()
    conn.request("POST", "/score", body=b"{}", headers={**AUTH, "x-mode": "sse"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    assert response.getheader("Transfer-Encoding") == "chunked"
    first = response.readline()
    first_at = time.monotonic()
    assert first == b"data: one\n"
    # The backend still waits (1.5 s) before it writes the second event.
    assert first_at - started < 1.0, first_at - started
    assert backend.second_event_at == 0.0
    rest = response.read()
    assert rest == b"\ndata: two\n\n"
    assert time.monotonic() - started >= 1.4
    conn.close()
    # The duration is measured to the end of the stream, not to its head.
    text = router.metrics()
    seconds = metric_value(text, "router_request_duration_seconds_sum", deployment="blue")
    assert seconds >= 1.4, seconds


def test_request_timeout_bounds_each_wait_of_a_streamed_answer_not_its_whole(
    backends: Backends, start_router
) -> None:
    backend = streaming_backend(backends)
    backend.pause = 0.6
    router = start_router(
        router_config(
            [deployment("blue", [backend.address], request_timeout_ms=1000)],
            traffic={"blue": 100},
        )
    )
    # A gap of 0.6 s under a 1 s timeout: the answer comes whole (each wait is bounded,
    # not the whole answer's time).
    conn = connect(router.port)
    conn.request("POST", "/score", body=b"{}", headers={**AUTH, "x-mode": "sse"})
    assert conn.getresponse().read() == b"data: one\n\ndata: two\n\n"
    conn.close()
    # A gap longer than the timeout cuts the answer off: the caller sees it broken,
    # never a short answer taken for a whole one.
    backend.pause = 3.0
    conn = connect(router.port)
    started = time.monotonic()
    conn.request("POST", "/score", body=b"{}", headers={**AUTH, "x-mode": "sse"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline() == b"data: one\n"
    try:
        response.read()
        broken = False
    except http.client.IncompleteRead:
        broken = True
    assert broken
    assert 0.8 < time.monotonic() - started < 2.8
    conn.close()
    text = router.metrics()
    assert metric_value(text, "router_requests_total", deployment="blue", code="408") == 1


def test_ten_megabytes_up_and_down_pass_with_bounded_router_memory(
    backends: Backends, start_router
) -> None:
    backend = streaming_backend(backends)
    router = start_router(
        router_config(
            [deployment("blue", [backend.address], request_timeout_ms=20000)],
            traffic={"blue": 100},
        )
    )
    pid = router.process.pid
    conn = connect(router.port, timeout=30)
    conn.request("POST", "/score", body=b"warm", headers={**AUTH, "x-mode": "count"})
    assert conn.getresponse().read()
    before = peak_rss_mb(pid)

    # 10 MB up with a Content-Length, then chunked: each reaches the backend whole.
    expected = hashlib.sha256(PIECE * (10 * MB // len(PIECE))).hexdigest()
    headers = {**AUTH, "x-mode": "count", "Content-Length": str(10 * MB)}
    conn.request("POST", "/score", body=pieces(10 * MB), headers=headers)
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == f'{{"size": {10 * MB}, "sha256": "{expected}"}}'.encode()
    conn.request(
        "POST",
        "/score",
        body=pieces(10 * MB),
        headers={**AUTH, "x-mode": "count"},
        encode_chunked=True,
    )
    response = conn.getresponse()
    assert response.status == 200
    response.read()
    assert backend.uploads[-1] == (10 * MB, expected)

    # 10 MB down, read a piece at a time.
    conn.request("POST", "/score", body=b"{}", headers={**AUTH, "x-mode": "big"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Length") == str(10 * MB)
    got = hashlib.sha256()
    size = 0
    while piece := response.read(256 * 1024):
        got.update(piece)
        size += len(piece)
    assert size == 10 * MB and got.hexdigest() == expected
    # The connections on both sides carry on after a streamed answer.
    conn.request("POST", "/score", body=b"next", headers={**AUTH, "x-mode": "count"})
    response = conn.getresponse()
    assert response.status == 200 and b'"size": 4' in response.read()
    conn.close()
    grown = peak_rss_mb(pid) - before
    # Buffered whole, either body alone would add 10 MB or more (measured before streaming:
    # 29.5 MB for the three; streamed: 0.1 MB).
    assert grown < 8, f"router peak memory grew {grown:.1f} MB"


def test_a_chunked_upload_over_max_body_bytes_is_cut_off_with_413(
    backends: Backends, start_router
) -> None:
    backend = streaming_backend(backends)
    router = start_router(
        router_config(
            [deployment("blue", [backend.address])],
            traffic={"blue": 100},
            max_body_bytes=MB,
        )
    )
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    head = (
        "POST /score HTTP/1.1\r\nHost: x\r\nx-mode: count\r\n"
        f"Authorization: Bearer {PRIMARY_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    try:
        for _ in range(4 * MB // len(PIECE)):  # 4 MB: the router stops reading after 1
            sock.sendall(b"%x\r\n%s\r\n" % (len(PIECE), PIECE))
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    # The backend never took the cut body for a whole one.
    time.sleep(0.2)
    assert backend.uploads == []
    text = router.metrics()
    assert metric_value(text, "router_requests_total", deployment="blue", code="413") == 1


def upload(port: int, size: int, *, chunked: bool, mode: str = "count") -> tuple[int, bytes]:
    conn = connect(port)
    headers = {**AUTH, "x-mode": mode}
    if not chunked:
        headers["Content-Length"] = str(size)
    conn.request("POST", "/score", body=pieces(size), headers=headers, encode_chunked=chunked)
    response = conn.getresponse()
    answer = response.status, response.read()
    conn.close()
    return answer


def _comparisons(text: str, result: str) -> float:
    return metric_value(text, "router_shadow_comparisons_total", live="blue", result=result)


def test_streamed_bodies_are_mirrored_whole_and_compared(backends: Backends, start_router) -> None:
    blue, green = streaming_backend(backends), streaming_backend(backends)
    router = start_router(
        router_config(
            [deployment("blue", [blue.address]), deployment("green", [green.address])],
            traffic={"blue": 100},
            mirror={"green": 50},
            shadow_comparison={"max_body_bytes": 512 * 1024},
        )
    )
    size = 256 * 1024  # streams (over 64 KB), and is under the comparison's limit
    expected = (size, hashlib.sha256(PIECE * (size // len(PIECE))).hexdigest())
    for index in range(12):  # half of them chunked; 1 in 4096 that none is mirrored
        status, _ = upload(router.port, size, chunked=bool(index % 2))
        assert status == 200
    assert blue.uploads == [expected] * 12
    assert green.uploads, "no request was mirrored"
    assert set(green.uploads) == {expected}  # each copy whole, with its Content-Length
    deadline = time.monotonic() + 10
    while _comparisons(router.metrics(), "agree") < len(green.uploads):
        assert time.monotonic() < deadline, router.metrics()
        time.sleep(0.05)


def test_a_streamed_live_answer_is_compared_only_under_the_limit(
    backends: Backends, start_router
) -> None:
    blue, green = streaming_backend(backends), streaming_backend(backends)
    router = start_router(
        router_config(
            [deployment("blue", [blue.address]), deployment("green", [green.address])],
            traffic={"blue": 100},
            mirror={"green": 50},
            shadow_comparison={"max_body_bytes": 100 * 1024},
        )
    )
    modes = ("chunked-1", "chunked-300")
    conn = connect(router.port)
    for _ in range(12):
        for mode in modes:
            conn.request("POST", "/score", body=b"{}", headers={**AUTH, "x-mode": mode})
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Transfer-Encoding") == "chunked"  # it streamed
            assert len(response.read()) == int(mode.removeprefix("chunked-")) * 1024
    conn.close()
    deadline = time.monotonic() + 10
    while True:
        text = router.metrics()
        agree, not_compared = _comparisons(text, "agree"), _comparisons(text, "not_compared")
        mirrored = metric_value(text, "router_requests_total", kind="mirror")
        if mirrored and agree + not_compared == mirrored:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    # 1 KB answers are kept and agree; 300 KB ones are over the limit: not compared.
    assert agree >= 1 and not_compared >= 1
    assert _comparisons(text, "disagree_body") == 0


def test_a_streamed_body_is_sent_to_another_instance_when_one_cannot_be_reached(
    backends: Backends, start_router
) -> None:
    backend = streaming_backend(backends)
    router = start_router(
        router_config(
            [deployment("blue", [dead_address(), backend.address])], traffic={"blue": 100}
        )
    )
    size = 256 * 1024
    expected = (size, hashlib.sha256(PIECE * (size // len(PIECE))).hexdigest())
    # The instances take turns to be tried first: one of the two meets the dead one first.
    for chunked in (False, True):
        assert upload(router.port, size, chunked=chunked)[0] == 200
    assert backend.uploads == [expected, expected]


def test_an_http10_caller_gets_a_stream_of_unknown_length_ended_by_close(
    backends: Backends, start_router
) -> None:
    backend = streaming_backend(backends)
    backend.pause = 0.2
    router = start_router(
        router_config([deployment("blue", [backend.address])], traffic={"blue": 100})
    )
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    sock.sendall(
        b"POST /score HTTP/1.0\r\nx-mode: sse\r\nContent-Length: 2\r\n"
        b"Authorization: Bearer %s\r\n\r\n{}" % PRIMARY_KEY.encode()
    )
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()  # HTTP/1.0 knows no chunked answer
    assert b"Connection: close" in head
    assert body == b"data: one\n\ndata: two\n\n"
