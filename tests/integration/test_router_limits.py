"""Router over real sockets: timeout 408, overload 429, backend error 424, unreachable 502,
an instance dying under load."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    PRIMARY_KEY,
    Backends,
    backends_fixture,
    bearer,
    dead_address,
    deployment,
    load,
    metric_value,
    request,
    router_config,
    start_router_fixture,
)

AUTH = bearer(PRIMARY_KEY)


def test_request_timeout_is_408_and_the_next_request_works(
    backends: Backends, start_router
) -> None:
    slow = backends.start("blue", delay=2.0)
    router = start_router(
        router_config([deployment("blue", [slow], request_timeout_ms=300)], traffic={"blue": 100})
    )
    started = time.monotonic()
    timed_out = request(f"{router.url}/score", headers=AUTH)
    assert timed_out.status == 408
    assert timed_out.headers["azureml-model-deployment"] == "blue"
    assert time.monotonic() - started < 1.5
    slow.delay = 0.0
    assert request(f"{router.url}/score", headers=AUTH).status == 200
    # Again on the connection that answer left idle (the hot path, `_Sent`): the same rule.
    slow.delay = 2.0
    started = time.monotonic()
    assert request(f"{router.url}/score", headers=AUTH).status == 408
    assert time.monotonic() - started < 1.5


def test_overload_waits_max_queue_wait_then_429(backends: Backends, start_router) -> None:
    slow = backends.start("blue", delay=1.0)
    router = start_router(
        router_config(
            [
                deployment(
                    "blue",
                    [slow],
                    max_concurrent_requests_per_instance=1,
                    max_queue_wait_ms=150,
                )
            ],
            traffic={"blue": 100},
        )
    )
    # Limit: 2 x 1 x 1 instance = 2 in flight. Six at once: two are served, four wait
    # 150 ms for a slot that never comes (each takes 1 s) and are refused.
    started = time.monotonic()
    results = load(f"{router.url}/score", 6, concurrency=6, headers=AUTH)
    assert Counter(r.status for r in results) == {200: 2, 429: 4}
    refused = [r.seconds for r in results if r.status == 429]
    assert all(0.1 < s < 0.9 for s in refused), refused
    assert slow.max_in_flight == 2
    assert time.monotonic() - started < 3
    text = router.metrics()
    assert metric_value(text, "router_requests_total", kind="live", code="429") == 4


def test_queue_wait_admits_when_a_slot_frees(backends: Backends, start_router) -> None:
    quick = backends.start("blue", delay=0.15)
    router = start_router(
        router_config(
            [
                deployment(
                    "blue", [quick], max_concurrent_requests_per_instance=1, max_queue_wait_ms=2000
                )
            ],
            traffic={"blue": 100},
        )
    )
    results = load(f"{router.url}/score", 6, concurrency=6, headers=AUTH)
    assert Counter(r.status for r in results) == {200: 6}
    assert quick.max_in_flight == 2  # the limit held while the others queued


def test_backend_error_is_424_with_the_backend_status(backends: Backends, start_router) -> None:
    failing = backends.start("blue", status=500)
    router = start_router(router_config([deployment("blue", [failing])], traffic={"blue": 100}))
    answer = request(f"{router.url}/score", headers=AUTH)
    assert answer.status == 424
    assert answer.headers["ms-azureml-model-error-statuscode"] == "500"
    assert answer.headers["ms-azureml-model-error-reason"] == "Internal Server Error"
    assert answer.json()["deployment"] == "blue"  # the model's body, for the caller to debug
    assert answer.headers["content-type"].startswith("application/json")


def test_unreachable_instance_falls_over_then_502(backends: Backends, start_router) -> None:
    alive = backends.start("blue")
    router = start_router(
        router_config(
            [
                deployment("blue", [dead_address(), alive]),
                deployment("green", [dead_address(), dead_address()]),
            ],
            traffic={"blue": 100},
        )
    )
    results = load(f"{router.url}/score", 40, concurrency=4, headers=AUTH)
    assert Counter(r.status for r in results) == {200: 40}
    assert alive.hits == 40
    down = request(f"{router.url}/score", headers={**AUTH, "azureml-model-deployment": "green"})
    assert down.status == 502


def test_instance_going_down_mid_load_fails_no_request(backends: Backends, start_router) -> None:
    first = backends.start("blue", delay=0.005)
    second = backends.start("blue", delay=0.005)
    router = start_router(
        router_config([deployment("blue", [first, second])], traffic={"blue": 100})
    )
    n = 1200
    results = load(f"{router.url}/score", n, concurrency=16, headers=AUTH, at={n // 3: first.kill})
    assert Counter(r.status for r in results) == {200: n}
    assert first.hits > 50
    late = [r.json()["instance"] for r in results[-200:]]
    assert set(late) == {second.address}


class _ClosingBackend:
    """A backend that answers the first request of each connection (keeping it alive) and
    closes the connection on the second without a byte of answer: as a server that closed
    an idle connection just as the router sent on it."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece:
                return False
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += conn.recv(65536)
        self.requests += 1
        return True

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if not self._read_request(conn):
                    continue
                answer = b'{"answered": true}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                self._read_request(conn)  # the second one: closed unanswered


def test_a_kept_alive_connection_closed_unanswered_is_retried_on_a_new_connection(
    start_router,
) -> None:
    backend = _ClosingBackend()
    router = start_router(
        router_config([deployment("blue", [backend.address])], traffic={"blue": 100})
    )
    try:
        results = [request(f"{router.url}/score", headers=AUTH) for _ in range(3)]
    finally:
        backend.listener.close()
    assert [(r.status, r.json()) for r in results] == [(200, {"answered": True})] * 3
    # Each request after the first went out on the kept-alive connection first, then again
    # on a new one to the same instance: 5 requests received over 3 connections.
    assert (backend.requests, backend.connections) == (5, 3)
