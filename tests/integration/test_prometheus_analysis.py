"""A rollout step's figures from a real Prometheus server scraping a real router process.

The router (`python -m reconciler.router`, real sockets) serves blue live and mirrors half
of the requests to green; /usr/bin/prometheus scrapes its metrics port every 0.5 s. The
figures reconciler.rollouts.promql reads through reconciler.promapi must be those the
router's own exposition gives (analysis.parse_exposition, since, step_figures) for the same
window, and judge the same. The HTTP client's failures (nothing listening, a refused query,
a server that scrapes no router) are real answers too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_fixtures import (  # noqa: F401  (fixture: start_prometheus)
    PrometheusServer,
    free_port,
    start_prometheus_fixture,
)
from router_fixtures import (  # noqa: F401  (fixtures: backends, start_router)
    PRIMARY_KEY,
    Backends,
    RouterProcess,
    backends_fixture,
    bearer,
    dead_address,
    deployment,
    load,
    router_config,
    start_router_fixture,
)

from reconciler.promapi import PrometheusClient, PrometheusError
from reconciler.rollouts import promql
from reconciler.rollouts.analysis import (
    MIRROR,
    Outcome,
    Snapshot,
    StepFigures,
    judge,
    parse_exposition,
    step_figures,
)
from reconciler.rollouts.policy import Thresholds

ENDPOINT = "ep-test"
AUTH = bearer(PRIMARY_KEY)
ALL = f'sum(router_requests_total{{endpoint="{ENDPOINT}"}})'


def settled(router: RouterProcess) -> Snapshot:
    """The router's exposition once its mirrored copies have all ended (two equal reads)."""
    before = parse_exposition(router.metrics(), ENDPOINT)
    while True:
        time.sleep(0.25)
        now = parse_exposition(router.metrics(), ENDPOINT)
        if now == before:
            return now
        before = now


def total(snapshot: Snapshot) -> float:
    return sum(value for _, value in snapshot.values("router_requests_total"))


def scraped(router: RouterProcess, server: PrometheusServer, timeout: float = 20) -> Snapshot:
    """The router's settled exposition once Prometheus holds the same request count."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = settled(router)
        if server.value(ALL) == total(snapshot):
            return snapshot
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus never caught up with {total(snapshot)} requests")
        time.sleep(0.1)


def prometheus_figures(
    server: PrometheusServer, *, window_s: float, labels: tuple[tuple[str, str], ...] = ()
) -> StepFigures:
    client = PrometheusClient(server.address, timeout_s=5)
    queries = promql.step_queries(
        endpoint=ENDPOINT,
        stable="blue",
        canary="green",
        canary_kind=MIRROR,
        window_s=window_s,
        labels=labels,
    )
    at = time.time()
    answers = {q.name: client.query(q.expr, at=at) for q in queries}
    return promql.step_figures(
        answers,
        endpoint=ENDPOINT,
        stable="blue",
        canary="green",
        canary_kind=MIRROR,
        elapsed_s=window_s,
    )


@pytest.fixture
def mirrored(
    backends: Backends,
    start_router: Callable[..., RouterProcess],
    start_prometheus: Callable[..., PrometheusServer],
) -> Iterator[tuple[RouterProcess, PrometheusServer, Backends]]:
    metrics_port = free_port()
    server = start_prometheus([f"127.0.0.1:{metrics_port}"])  # first: see prometheus_fixtures
    blue = backends.start("blue")
    green = backends.start("green")
    router = start_router(
        router_config(
            [deployment("blue", [blue]), deployment("green", [green])],
            traffic={"blue": 100},
            mirror={"green": 50},
        ),
        metrics_port=metrics_port,
    )
    yield router, server, backends


def test_prometheus_figures_of_a_step_equal_the_routers_own_and_count_a_new_error_series(
    mirrored: tuple[RouterProcess, PrometheusServer, Backends],
) -> None:
    router, server, backends = mirrored
    green = next(b for b in backends.started if b.name == "green")
    # Traffic before the step: counted in neither figure.
    assert {r.status for r in load(f"{router.url}/score", 30, headers=AUTH)} == {200}
    start = scraped(router, server)
    began = time.monotonic()

    # The step: green starts failing, so its 424 series is born inside the window (its
    # whole value counts: increase() alone would lose the first scrape's errors).
    green.status = 500
    assert {r.status for r in load(f"{router.url}/score", 60, headers=AUTH)} == {200}
    end = scraped(router, server)
    window_s = time.monotonic() - began

    from_router = step_figures(
        end.since(start), stable="blue", canary="green", canary_kind=MIRROR, elapsed_s=window_s
    )
    from_prometheus = prometheus_figures(server, window_s=window_s)

    assert from_router.stable.requests == 60 and from_router.stable.errors == 0
    assert from_router.canary.requests > 10  # about half of 60 were mirrored
    assert from_router.canary.errors == from_router.canary.requests
    for ours, theirs in (
        (from_prometheus.canary, from_router.canary),
        (from_prometheus.stable, from_router.stable),
    ):
        assert (ours.deployment, ours.kind, ours.requests, ours.errors) == (
            theirs.deployment,
            theirs.kind,
            theirs.requests,
            theirs.errors,
        )
        assert ours.p99_s is not None and theirs.p99_s is not None
        assert ours.p99_s == pytest.approx(theirs.p99_s, rel=1e-6)
    assert from_router.shadow is not None and from_prometheus.shadow is not None
    assert (from_prometheus.shadow.agree, from_prometheus.shadow.disagree) == (
        from_router.shadow.agree,
        from_router.shadow.disagree,
    )
    assert from_prometheus.shadow.disagree == from_router.canary.requests
    # One judge for both: the same verdict, the same reason.
    thresholds = Thresholds(error_rate=0.05, min_requests=10, shadow_agreement=0.9)
    verdicts = [judge(thresholds, f, step_for_s=0.1) for f in (from_router, from_prometheus)]
    assert [v.outcome for v in verdicts] == [Outcome.FAIL, Outcome.FAIL]
    assert verdicts[0].reason == verdicts[1].reason
    assert "error_rate 100.00% > 5.00%" in verdicts[1].reason

    # Labels of the policy narrow every series: none of this job is another's.
    other = (("job", "another-cluster"),)
    with pytest.raises(promql.PromQLAnswerError, match="does not scrape this endpoint's router"):
        prometheus_figures(server, window_s=window_s, labels=other)
    mine = prometheus_figures(server, window_s=window_s, labels=(("job", "router"),))
    assert mine.canary.requests == from_router.canary.requests


def test_a_prometheus_that_scrapes_no_router_cannot_judge_and_says_so(
    start_prometheus: Callable[..., PrometheusServer],
) -> None:
    server = start_prometheus([dead_address()])
    with pytest.raises(promql.PromQLAnswerError, match="holds no router_instances series"):
        prometheus_figures(server, window_s=5)


def test_prometheus_down_or_refusing_a_query_is_an_error_that_names_the_server(
    start_prometheus: Callable[..., PrometheusServer],
) -> None:
    nowhere = f"http://{dead_address()}"
    with pytest.raises(PrometheusError, match=f"Prometheus at {nowhere} did not answer"):
        PrometheusClient(nowhere, timeout_s=2).query("up")
    server = start_prometheus([dead_address()])
    with pytest.raises(PrometheusError, match=r"refused the query \(bad_data: "):
        PrometheusClient(server.address).query("sum(")
    # An address with a wrong prefix: the server's 404, with its status line.
    with pytest.raises(PrometheusError, match=r"/prefix answered HTTP 404 Not Found"):
        PrometheusClient(server.address + "/prefix").query("up")
    # A range vector is an answer, not the instant vector the figures read.
    data = PrometheusClient(server.address).query("up[1m]")
    with pytest.raises(promql.PromQLAnswerError, match="answered 'matrix', not a vector"):
        promql.vector(data, "scraped")


class TokenServer:
    """A stand-in of a Prometheus behind an authenticating proxy: answers with an empty
    vector when the bearer token is right, 401 otherwise; keeps the headers it saw."""

    def __init__(self, token: str) -> None:
        seen: list[str | None] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append(self.headers.get("Authorization"))
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                ok = self.headers.get("Authorization") == f"Bearer {token}"
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": []}}
                    if ok
                    else {"status": "error", "errorType": "unauthorized", "error": "no"}
                ).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.address = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_bearer_token_comes_from_the_env_or_a_file_and_never_shows_in_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok-3f9c1d7e5a"
    server = TokenServer(token)
    try:
        monkeypatch.setenv("PROM_TOKEN_FOR_TEST", token)
        by_env = PrometheusClient(server.address, bearer_token_env="PROM_TOKEN_FOR_TEST")
        assert by_env.query("up") == {"resultType": "vector", "result": []}
        file = tmp_path / "token"
        file.write_text(token + "\n")
        by_file = PrometheusClient(server.address, bearer_token_file=str(file))
        assert by_file.query("up")["result"] == []
        assert server.seen == [f"Bearer {token}", f"Bearer {token}"]

        file.write_text("tok-wrong-88e1\n")
        with pytest.raises(PrometheusError) as refused:
            by_file.query("up")
        assert "refused the credentials (HTTP 401)" in str(refused.value)
        assert "tok-" not in str(refused.value)
        monkeypatch.delenv("PROM_TOKEN_FOR_TEST")
        with pytest.raises(PrometheusError, match=r"PROM_TOKEN_FOR_TEST .* is not set"):
            by_env.query("up")
        assert len(server.seen) == 3  # no request went out without its token
    finally:
        server.close()
