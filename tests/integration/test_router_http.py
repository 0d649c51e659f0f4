"""Router over real sockets, written by hand: the HTTP/1.1 server's own rules (`http`).

Keep-alive reuse, pipelined requests answered in order, chunked uploads, Expect:
100-continue (granted only to callers that would be served), the body size limit (413, then
the connection closes), malformed and over-long requests (400, 431, then closed), HEAD,
HTTP/1.0, and offers to switch protocols (Upgrade: h2c or websocket), which are ignored: the
body is forwarded whole and the connection goes on.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    PRIMARY_KEY,
    Backend,
    Backends,
    RawConnection,
    backends_fixture,
    deployment,
    post_score,
    router_config,
    start_router_fixture,
)


def test_keep_alive_connection_is_reused(backends: Backends, start_router) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    with RawConnection(router.port) as conn:
        for index in range(5):
            conn.send(post_score(headers={"x-request-id": f"keep-{index}"}))
            answer = conn.read()
            assert answer is not None and answer.status == 200
            assert answer.headers["x-request-id"] == f"keep-{index}"
            assert "connection" not in answer.headers  # HTTP/1.1: open unless said
            assert answer.headers["azureml-model-deployment"] == "blue"
            assert json.loads(answer.body)["deployment"] == "blue"
            assert answer.headers["date"].endswith("GMT")
        # The client may end it: the answer says so and the router closes.
        conn.send(post_score(headers={"Connection": "close"}))
        last = conn.read()
        assert last is not None and last.status == 200
        assert last.headers["connection"] == "close"
        assert conn.closed_by_peer()
    assert blue.hits == 6


def test_pipelined_requests_are_answered_in_order(backends: Backends, start_router) -> None:
    slow, fast = backends.start("slow", delay=0.3), backends.start("fast")
    router = start_router(
        router_config(
            [deployment("slow", [slow]), deployment("fast", [fast])], traffic={"fast": 100}
        )
    )
    with RawConnection(router.port) as conn:
        # One write: a slow request, a fast one, one answered without a backend, and
        # another slow one. Each answer must wait for the ones before it.
        conn.send(
            post_score(headers={"azureml-model-deployment": "slow", "x-request-id": "one"})
            + post_score(headers={"azureml-model-deployment": "fast", "x-request-id": "two"})
            + b"GET /-/healthy HTTP/1.1\r\nHost: router\r\n\r\n"
            + post_score(headers={"azureml-model-deployment": "slow", "x-request-id": "four"})
        )
        answers = [conn.read() for _ in range(4)]
    assert all(a is not None and a.status == 200 for a in answers)
    ids = [a.headers.get("x-request-id") for a in answers if a is not None]
    assert ids == ["one", "two", None, "four"]
    assert [a.body for a in answers if a is not None][2] == b"ok"
    assert answers[0] is not None and json.loads(answers[0].body)["deployment"] == "slow"
    assert slow.hits == 2 and fast.hits == 1


def test_chunked_request_body_reaches_the_model_whole(backends: Backends, start_router) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    parts = [b'{"data": [', b"1, 2, 3" * 100, b"]}"]
    with RawConnection(router.port) as conn:
        conn.send(
            b"POST /score HTTP/1.1\r\nHost: router\r\n"
            + f"Authorization: Bearer {PRIMARY_KEY}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        )
        for part in parts:  # separate writes: the body arrives over several reads
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
            time.sleep(0.02)
        conn.send(b"0\r\n\r\n")
        answer = conn.read()
        assert answer is not None and answer.status == 200
        assert json.loads(answer.body)["size"] == sum(len(p) for p in parts)
        # The backend got a Content-Length framed body, not the caller's chunks.
        seen = {k.lower(): v for k, v in blue.seen_headers[0].items()}
        assert "transfer-encoding" not in seen
        assert seen["content-length"] == str(sum(len(p) for p in parts))
        # The connection goes on after a chunked request.
        conn.send(post_score())
        again = conn.read()
        assert again is not None and again.status == 200


def test_expect_100_continue_only_for_callers_that_would_be_served(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    body = b'{"data": [4, 5, 6]}'
    request = post_score(body, headers={"Expect": "100-continue"})
    head = request[: -len(body)]
    with RawConnection(router.port) as conn:
        conn.send(head)
        interim = conn.read()
        assert interim is not None and interim.status == 100
        conn.send(body)
        answer = conn.read()
        assert answer is not None and answer.status == 200
        assert json.loads(answer.body)["size"] == len(body)
    # A wrong key is refused on the head alone: no 100, no upload, connection closed.
    wrong = post_score(body, key="wrong-key", headers={"Expect": "100-continue"})
    with RawConnection(router.port) as conn:
        conn.send(wrong[: -len(body)])
        refused = conn.read()
        assert refused is not None and refused.status == 401
        assert refused.headers["connection"] == "close"
        assert conn.closed_by_peer()
    # So is a pin to a deployment that does not exist.
    unknown = post_score(
        body, headers={"Expect": "100-continue", "azureml-model-deployment": "purple"}
    )
    with RawConnection(router.port) as conn:
        conn.send(unknown[: -len(body)])
        missing = conn.read()
        assert missing is not None and missing.status == 404
    assert blue.hits == 1


def test_body_over_the_limit_is_413_and_the_connection_closes(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue")
    router = start_router(
        router_config([deployment("blue", [blue])], traffic={"blue": 100}, max_body_bytes=1024)
    )
    big = b"x" * 5000
    # Announced by Content-Length: answered without reading the body.
    with RawConnection(router.port) as conn:
        conn.send(post_score(big, headers={"x-request-id": "big"}))
        answer = conn.read()
        assert answer is not None and answer.status == 413
        assert answer.headers["azureml-model-deployment"] == "blue"
        assert answer.headers["x-request-id"] == "big"
        assert answer.headers["connection"] == "close"
        assert conn.closed_by_peer()
    # Credentials come first: a wrong key is 401 whatever the size.
    with RawConnection(router.port) as conn:
        conn.send(post_score(big, key="wrong-key"))
        answer = conn.read()
        assert answer is not None and answer.status == 401
    # Chunked: noticed as the chunks come.
    with RawConnection(router.port) as conn:
        conn.send(
            b"POST /score HTTP/1.1\r\nHost: router\r\n"
            + f"Authorization: Bearer {PRIMARY_KEY}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"200\r\n" + b"y" * 0x200 + b"\r\n" for _ in range(4))
        )
        answer = conn.read()
        assert answer is not None and answer.status == 413
        assert conn.closed_by_peer()
    # Expect: 100-continue with a body over the limit: 413 at once, no 100.
    with RawConnection(router.port) as conn:
        request = post_score(big, headers={"Expect": "100-continue"})
        conn.send(request[: -len(big)])
        answer = conn.read()
        assert answer is not None and answer.status == 413
    # A body at the limit passes.
    with RawConnection(router.port) as conn:
        conn.send(post_score(b"z" * 1024))
        answer = conn.read()
        assert answer is not None and answer.status == 200
    assert blue.hits == 1
    text = router.metrics()
    assert 'code="413"' in text


def test_malformed_requests_get_400_and_the_connection_closes(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    with RawConnection(router.port) as conn:
        conn.send(b"THIS IS NOT HTTP\r\n\r\n")
        answer = conn.read()
        assert answer is not None and answer.status == 400
        assert answer.headers["connection"] == "close"
        assert answer.headers["x-request-id"]
        assert conn.closed_by_peer()
    # A good request, then garbage, in one write: the good one is answered first.
    with RawConnection(router.port) as conn:
        conn.send(
            post_score(headers={"x-request-id": "good"}) + b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"
        )
        first, second = conn.read(), conn.read()
        assert first is not None and first.status == 200
        assert first.headers["x-request-id"] == "good"
        assert second is not None and second.status == 400
        assert conn.closed_by_peer()
    # Content-Length and Transfer-Encoding together (request smuggling): refused.
    with RawConnection(router.port) as conn:
        conn.send(
            b"POST /score HTTP/1.1\r\nHost: router\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        answer = conn.read()
        assert answer is not None and answer.status == 400
    # A head over the size limit: 431.
    with RawConnection(router.port) as conn:
        conn.send(
            b"GET /-/healthy HTTP/1.1\r\nHost: router\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        )
        answer = conn.read()
        assert answer is not None and answer.status == 431
        assert conn.closed_by_peer()
    # The router is unharmed.
    with RawConnection(router.port) as conn:
        conn.send(post_score())
        answer = conn.read()
        assert answer is not None and answer.status == 200


def test_head_http10_and_methods(backends: Backends, start_router) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    with RawConnection(router.port) as conn:
        conn.send(b"HEAD /-/healthy HTTP/1.1\r\nHost: router\r\n\r\n")
        head = conn.read(head=True)
        assert head is not None and head.status == 200
        assert head.headers["content-length"] == "2"  # the GET's length, no body sent
        # Nothing but the head was sent: the next answer parses right after it.
        conn.send(b"HEAD /score HTTP/1.1\r\nHost: router\r\n\r\n")
        refused = conn.read(head=True)
        assert refused is not None and refused.status == 405
        assert refused.headers["allow"] == "POST"
        conn.send(b"GET /-/ready HTTP/1.1\r\nHost: router\r\n\r\n")
        ready = conn.read()
        assert ready is not None and (ready.status, ready.body) == (200, b"ready")
    # HTTP/1.0: closed after the answer, unless keep-alive is asked for (and echoed).
    with RawConnection(router.port) as conn:
        conn.send(b"GET /-/healthy HTTP/1.0\r\n\r\n")
        answer = conn.read()
        assert answer is not None and answer.status == 200
        assert answer.headers["connection"] == "close"
        assert conn.closed_by_peer()
    with RawConnection(router.port) as conn:
        for _ in range(2):
            conn.send(b"GET /-/healthy HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            answer = conn.read()
            assert answer is not None and answer.status == 200
            assert answer.headers["connection"] == "keep-alive"


def test_shutdown_closes_idle_connections_and_answers_the_busy_ones(
    backends: Backends, start_router
) -> None:
    slow = backends.start("blue", delay=0.5)
    router = start_router(router_config([deployment("blue", [slow])], traffic={"blue": 100}))
    with RawConnection(router.port) as idle, RawConnection(router.port) as busy:
        idle.send(b"GET /-/healthy HTTP/1.1\r\nHost: router\r\n\r\n")
        assert idle.read() is not None  # now idle, kept alive
        busy.send(post_score())
        deadline = time.monotonic() + 5
        while slow.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        router.process.send_signal(signal.SIGTERM)
        assert idle.closed_by_peer()
        answer = busy.read()
        assert answer is not None and answer.status == 200
        assert answer.headers["connection"] == "close"
        assert busy.closed_by_peer()
    assert router.process.wait(10) == 0


# What `curl --http2` sends over plain HTTP (RFC 7540 3.2): an offer to switch to h2c.
H2C_OFFER = {
    "Connection": "Upgrade, HTTP2-Settings",
    "Upgrade": "h2c",
    "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA",
}
HOP_BY_HOP = ("upgrade", "http2-settings", "connection")


def _forwarded_headers(backend: Backend, index: int) -> dict[str, str]:
    return {k.lower(): v for k, v in backend.seen_headers[index].items()}


def test_an_h2c_upgrade_offer_is_ignored_and_the_whole_body_reaches_the_model(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    body = b'{"data": "' + b"x" * 8000 + b'"}'
    with RawConnection(router.port) as conn:
        # The offer, its body of some KB, and a request pipelined behind it, in one write.
        conn.send(
            post_score(body, headers={**H2C_OFFER, "x-request-id": "h2c"})
            + post_score(headers={"x-request-id": "after"})
        )
        first, second = conn.read(), conn.read()
        # Answered over HTTP/1.1 (no 101): the server does not take up the offer.
        assert first is not None and first.status == 200, first
        assert "upgrade" not in first.headers
        assert first.headers["x-request-id"] == "h2c"
        assert json.loads(first.body)["size"] == len(body)
        assert second is not None and second.status == 200
        assert second.headers["x-request-id"] == "after"
        # The connection stays open for more.
        conn.send(post_score(headers={"x-request-id": "third"}))
        third = conn.read()
        assert third is not None and third.status == 200
    assert blue.hits == 3
    # The backend is never asked to switch protocols itself.
    seen = _forwarded_headers(blue, 0)
    for name in HOP_BY_HOP:
        assert name not in seen or "upgrade" not in seen[name].lower(), seen
    assert "upgrade" not in seen and "http2-settings" not in seen


def test_an_upgrade_with_a_chunked_body_over_several_reads_is_forwarded_whole(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    parts = [b'{"data": [', b"1, 2, 3, " * 700, b"4]}"]
    with RawConnection(router.port) as conn:
        conn.send(
            b"POST /score HTTP/1.1\r\nHost: router\r\n"
            + f"Authorization: Bearer {PRIMARY_KEY}\r\n".encode()
            + b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            + b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(parts[0]), parts[0])  # the first chunk with the head
        )
        for part in parts[1:]:  # the rest in later reads
            time.sleep(0.02)
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
        time.sleep(0.02)
        # The last chunk and a pipelined request in one write.
        conn.send(b"0\r\n\r\n" + post_score(headers={"x-request-id": "after"}))
        answer, after = conn.read(), conn.read()
        assert answer is not None and answer.status == 200, answer
        assert json.loads(answer.body)["size"] == sum(len(p) for p in parts)
        assert after is not None and after.status == 200
        assert after.headers["x-request-id"] == "after"
    seen = _forwarded_headers(blue, 0)
    assert "upgrade" not in seen and "transfer-encoding" not in seen
    assert seen["content-length"] == str(sum(len(p) for p in parts))
    assert "upgrade" not in seen.get("connection", "").lower()


def test_upgrade_offers_with_a_late_body_without_body_and_with_100_continue(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    body = b'{"data": "' + b"y" * 3000 + b'"}'
    request = post_score(body, headers=H2C_OFFER)
    with RawConnection(router.port) as conn:
        # The head alone, then the body in a later read.
        conn.send(request[: -len(body)])
        time.sleep(0.05)
        conn.send(body)
        answer = conn.read()
        assert answer is not None and answer.status == 200
        assert json.loads(answer.body)["size"] == len(body)
        # No body at all (GET), a request pipelined behind it.
        conn.send(
            b"GET /-/healthy HTTP/1.1\r\nHost: router\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n" + post_score(headers={"x-request-id": "after-get"})
        )
        healthy, after = conn.read(), conn.read()
        assert healthy is not None and (healthy.status, healthy.body) == (200, b"ok")
        assert after is not None and after.headers["x-request-id"] == "after-get"
        # Expect: 100-continue with the offer: 100, then the body is read and forwarded.
        expecting = post_score(body, headers={**H2C_OFFER, "Expect": "100-continue"})
        conn.send(expecting[: -len(body)])
        interim = conn.read()
        assert interim is not None and interim.status == 100
        conn.send(body)
        final = conn.read()
        assert final is not None and final.status == 200
        assert json.loads(final.body)["size"] == len(body)
    assert blue.hits == 3


def test_upgrade_offers_pipelined_over_the_limit_malformed_and_connect(
    backends: Backends, start_router
) -> None:
    blue = backends.start("blue")
    router = start_router(
        router_config([deployment("blue", [blue])], traffic={"blue": 100}, max_body_bytes=4096)
    )
    with RawConnection(router.port) as conn:
        # Several offers pipelined in one write: each body goes to its own request.
        conn.send(
            b"".join(
                post_score(b"z" * size, headers={**H2C_OFFER, "x-request-id": f"n{size}"})
                for size in (100, 2000, 4000)
            )
        )
        answers = [conn.read() for _ in range(3)]
        assert [a.headers["x-request-id"] for a in answers if a is not None] == [
            "n100",
            "n2000",
            "n4000",
        ]
        assert [json.loads(a.body)["size"] for a in answers if a is not None] == [100, 2000, 4000]
    # A body over the limit is refused as without the offer: 413, then closed.
    with RawConnection(router.port) as conn:
        conn.send(post_score(b"z" * 5000, headers=H2C_OFFER))
        answer = conn.read()
        assert answer is not None and answer.status == 413
        assert conn.closed_by_peer()
    with RawConnection(router.port) as conn:
        conn.send(
            b"POST /score HTTP/1.1\r\nHost: router\r\n"
            + f"Authorization: Bearer {PRIMARY_KEY}\r\n".encode()
            + b"Connection: Upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"400\r\n" + b"w" * 0x400 + b"\r\n" for _ in range(5))
        )
        answer = conn.read()
        assert answer is not None and answer.status == 413
        assert conn.closed_by_peer()
    # Framing the router would refuse without the offer is refused with it: 400, closed.
    with RawConnection(router.port) as conn:
        conn.send(
            b"POST /score HTTP/1.1\r\nHost: router\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Transfer-Encoding: gzip\r\n\r\nabc"
        )
        answer = conn.read()
        assert answer is not None and answer.status == 400
        assert conn.closed_by_peer()
    # CONNECT (a tunnel, not an offer) is answered and the connection closed.
    with RawConnection(router.port) as conn:
        conn.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        answer = conn.read()
        assert answer is not None and answer.status >= 400
        assert conn.closed_by_peer()
    assert blue.hits == 3


def test_curl_http2_over_plain_http_reaches_the_model_with_its_body(
    backends: Backends, start_router, tmp_path: Path
) -> None:
    """The real client of the report: `curl --http2` offers h2c on a plain http:// URL."""
    curl = shutil.which("curl")
    if (
        curl is None
        or "HTTP2"
        not in subprocess.run(
            [curl, "--version"], capture_output=True, text=True, check=True
        ).stdout
    ):
        pytest.skip("no curl with HTTP/2 support")
    blue = backends.start("blue")
    router = start_router(router_config([deployment("blue", [blue])], traffic={"blue": 100}))
    body = tmp_path / "body.json"
    body.write_bytes(b'{"data": "' + b"c" * 5000 + b'"}')
    command = [curl, "-sS", "--http2", "--max-time", "20"]
    command += ["-w", "\\n%{http_version} %{http_code}", "--data-binary", f"@{body}"]
    command += ["-H", f"Authorization: Bearer {PRIMARY_KEY}", "-H", "Content-Type: text/json"]
    done = subprocess.run(
        [*command, f"{router.url}/score"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    answer, _, tail = done.stdout.rpartition("\n")
    assert tail == "1.1 200"  # the offer declined, answered over HTTP/1.1
    assert json.loads(answer)["size"] == body.stat().st_size
    seen = _forwarded_headers(blue, 0)
    assert "upgrade" not in seen and "http2-settings" not in seen
