"""The Docker target's wait for its router to serve a config it wrote, against a real HTTP
server on the loopback standing for the router's `/-/config-digest` (no Docker needed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reconciler.model.results import Waiting
from reconciler.targets.docker.target import _await_served

Answer = Callable[[int], tuple[int, object]]  # the n-th request -> status, document


@pytest.fixture
def router() -> Iterator[Callable[[Answer], int]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> int:
        asked = [0]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                assert self.path == "/-/config-digest"
                asked[0] += 1
                status, doc = answer(asked[0])
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_step_is_done_once_every_worker_serves_the_new_digest(router) -> None:
    # Two answers while the workers differ, then the new digest from all of them.
    port = router(lambda n: (200, {"digest": None if n < 3 else "new", "workers": ["old", "new"]}))
    assert _await_served("ep", port, "new", patience_s=5) is None


def test_a_router_that_keeps_serving_another_config_leaves_the_step_in_progress(router) -> None:
    port = router(lambda n: (200, {"digest": "old0123456789ab"}))
    waiting = _await_served("ep", port, "new0123456789ab", patience_s=0.3)
    assert isinstance(waiting, Waiting)
    assert waiting.what == (
        "the router of ep to serve config new012345678 (it serves old012345678)"
    )


def test_a_router_too_old_to_say_what_it_serves_is_taken_at_its_admin_calls_word(
    router,
) -> None:
    port = router(lambda n: (404, {"error": "not found"}))
    assert _await_served("ep", port, "new", patience_s=5) is None
