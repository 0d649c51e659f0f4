"""Real servers for the router's tests: backends (aiohttp apps), the router as a process, load.

- `Backends`: aiohttp backend servers on 127.0.0.1 with ephemeral ports, all on one event
  loop in one background thread. Each records its hits and can be slowed, made to fail or
  killed (listening socket and open connections dropped, as a crashed container would).
- `RouterProcess`: `python -m reconciler.router --config FILE --port 0 --metrics-port 0`, a
  real process; its JSON log lines are collected (the port comes from the "listening" line).
- `load`: many requests through a real client (aiohttp), concurrency bounded, results kept.
- `RawConnection`: one plain socket to the router, for what HTTP clients hide (pipelining,
  100-continue, chunked uploads, malformed requests, the connection being closed).

No pytest-asyncio: tests are plain functions and drive async code with `asyncio.run`.
Test modules import the fixtures `backends_fixture` and `start_router_fixture` (named
`backends` and `start_router` for tests), since tests/conftest.py belongs to the project.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from reconciler.router.tokens import hash_key

REPO_ROOT = Path(__file__).resolve().parents[2]
PRIMARY_KEY = "primary-key-for-tests-0123456789abcdef"
SECONDARY_KEY = "secondary-key-for-tests-0123456789abcdef"
ADMIN_SECRET = "admin-secret-for-tests-0123456789"


# ---------------------------------------------------------------------------- backends
@dataclass
class Backend:
    """One backend instance; fields may be changed while it runs (read per request)."""

    name: str
    loop: asyncio.AbstractEventLoop
    delay: float = 0.0
    status: int = 200
    port: int = 0
    hits: int = 0
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    seen_targets: list[tuple[str, str]] = field(default_factory=list)  # (method, raw path)
    in_flight: int = 0
    max_in_flight: int = 0
    host: str = "127.0.0.1"
    # GET answers of probe paths (readiness, liveness routes): path -> status, and the
    # GETs each path received.
    probe_status: dict[str, int] = field(default_factory=dict)
    probe_hits: dict[str, int] = field(default_factory=dict)
    # The scoring answer's JSON body from the request's body; None: the default answer
    # (which names the deployment and the instance, so two backends never answer alike).
    answer: Callable[[bytes], Any] | None = None
    _server: asyncio.Server | None = None
    _http: web.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and request.path in self.probe_status:
            self.probe_hits[request.path] = self.probe_hits.get(request.path, 0) + 1
            return web.Response(status=self.probe_status[request.path], text=request.path)
        if request.path == "/":
            return web.Response(text="Healthy")
        if request.path == "/swagger.json":
            return web.json_response({"swagger": "2.0", "deployment": self.name})
        body = await request.read()
        self.hits += 1
        if len(self.seen_headers) < 50:
            self.seen_headers.append(dict(request.headers))
        if len(self.seen_targets) < 1000:
            self.seen_targets.append((request.method, request.raw_path))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.answer is not None:
            answer = self.answer(body)
        else:
            answer = {"deployment": self.name, "instance": self.address, "size": len(body)}
        return web.json_response(
            answer, status=self.status, headers={"x-backend": self.name, "x-model-note": "ok"}
        )

    async def _start(self) -> None:
        self._http = web.Server(self._handle, access_log=None)
        self._server = await self.loop.create_server(self._http, self.host, self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _kill(self) -> None:
        assert self._server is not None and self._http is not None
        self._server.close()
        for connection in list(self._http.connections):
            transport = connection.transport
            if transport is not None:
                transport.abort()
        await self._server.wait_closed()

    def kill(self) -> None:
        """Stop listening and reset every open connection, like a crashed container."""
        asyncio.run_coroutine_threadsafe(self._kill(), self.loop).result(10)

    def restart(self) -> None:
        """Listen again on the same port."""
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)


class Backends:
    """Backend servers on one loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.started: list[Backend] = []

    def start(
        self,
        name: str,
        *,
        delay: float = 0.0,
        status: int = 200,
        host: str = "127.0.0.1",
        port: int = 0,
        probes: Mapping[str, int] | None = None,
    ) -> Backend:
        """A backend on host:port (port 0: any free one); `probes` its probe paths."""
        backend = Backend(
            name=name,
            loop=self.loop,
            delay=delay,
            status=status,
            host=host,
            port=port,
            probe_status=dict(probes or {}),
        )
        asyncio.run_coroutine_threadsafe(backend._start(), self.loop).result(10)
        self.started.append(backend)
        return backend

    def close(self) -> None:
        async def stop_all() -> None:
            for backend in self.started:
                if backend._server is not None:
                    backend._server.close()
                if backend._http is not None:
                    await backend._http.shutdown(0.1)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(name="backends")
def backends_fixture() -> Iterator[Backends]:
    pool = Backends()
    try:
        yield pool
    finally:
        pool.close()


def dead_address() -> str:
    """A loopback address where nothing listens (bound then closed, so refused at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# ---------------------------------------------------------------------------- config
def deployment(name: str, instances: Sequence[Backend | str], **settings: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "instances": [i if isinstance(i, str) else i.address for i in instances],
        "max_concurrent_requests_per_instance": 50,
    }
    doc.update(settings)
    return doc


def router_config(
    deployments: Sequence[Mapping[str, Any]],
    *,
    traffic: Mapping[str, int] | None = None,
    mirror: Mapping[str, int] | None = None,
    endpoint: str = "ep-test",
    keys: Sequence[str] = (PRIMARY_KEY, SECONDARY_KEY),
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "endpoint": endpoint,
        "auth_mode": "key",
        "key_hashes": [hash_key(k) for k in keys],
        "admin_secret_hash": hash_key(ADMIN_SECRET),
        "traffic": dict(traffic or {}),
        "mirror_traffic": dict(mirror or {}),
        "deployments": list(deployments),
    }
    doc.update(extra)
    return doc


def write_config(path: Path, doc: Mapping[str, Any]) -> None:
    """Atomically, mode 0600 (as the reconciler writes it)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------- router
class RouterProcess:
    """The router as a real process on ephemeral ports."""

    def __init__(
        self,
        config_path: Path,
        *,
        workers: int = 1,
        start_timeout: float = 20,
        metrics_port: int = 0,
    ) -> None:
        self.config_path = config_path
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.port = 0
        self.metrics_port = 0
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler.router",
                "--config",
                str(config_path),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-port",
                str(metrics_port),  # 0: any free one (a scraper started first names one)
                "--workers",
                str(workers),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(start_timeout):
            self.stop()
            raise RuntimeError("router did not start:\n" + "\n".join(self.lines[-30:]))
        if workers > 1:
            self.wait_for_workers(workers, start_timeout)
            self.wait_ready(start_timeout)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if not self._listening.is_set() and '"listening"' in line:
                event = json.loads(line)
                if event.get("port") and event.get("metrics_port"):
                    self.port = int(event["port"])
                    self.metrics_port = int(event["metrics_port"])
                    self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def wait_for_event(self, name: str, count: int = 1, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events(name)) < count:
            if time.monotonic() > deadline:
                others = [line for line in self.lines if '"event":"request"' not in line]
                raise AssertionError(
                    f"no {name} event (x{count}) in the router's log; its other lines:\n"
                    + "\n".join(others[-15:])
                )
            time.sleep(0.02)

    def wait_for_workers(self, workers: int, timeout: float = 20) -> None:
        """Until every worker process logged that it listens (spawned ones start late)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = {e["pid"] for e in self.events("listening") if e.get("role") != "supervisor"}
            if len(pids) >= workers:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pids)} of {workers} workers started")
            time.sleep(0.02)

    def wait_ready(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                status, _, _ = http_get(f"{self.url}/-/ready")
                if status == 200:
                    return
            time.sleep(0.05)
        raise AssertionError("router never became ready")

    def metrics(self) -> str:
        _, _, body = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        return body.decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        return self.process.returncode


@pytest.fixture(name="start_router")
def start_router_fixture(tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    started: list[RouterProcess] = []

    def start(doc: Mapping[str, Any], *, workers: int = 1, metrics_port: int = 0) -> RouterProcess:
        path = tmp_path / "router.json"
        write_config(path, doc)
        router = RouterProcess(path, workers=workers, metrics_port=metrics_port)
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


# ---------------------------------------------------------------------------- clients
def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, Any, bytes]:
    """A plain blocking GET (urllib): status, headers, body."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@dataclass
class Result:
    status: int
    headers: Mapping[str, str]
    body: bytes
    seconds: float
    sent: float = 0.0  # time.monotonic() when the request was sent

    @property
    def deployment(self) -> str | None:
        return self.headers.get("azureml-model-deployment")

    def json(self) -> Any:
        return json.loads(self.body)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _one(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
) -> Result:
    sent = time.monotonic()
    started = time.perf_counter()
    try:
        async with session.request(method, url, headers=headers, data=body) as response:
            data = await response.read()
            return Result(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                data,
                time.perf_counter() - started,
                sent,
            )
    except aiohttp.ClientError as error:
        return Result(0, {"error": repr(error)}, b"", time.perf_counter() - started, sent)


async def load_async(
    url: str,
    count: int,
    *,
    concurrency: int = 16,
    headers: Mapping[str, str] | None = None,
    body: bytes = b'{"data": [1, 2, 3]}',
    method: str = "POST",
    at: Mapping[int, Callable[[], None]] | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[Result]:
    """`count` requests, `concurrency` at a time. `at[i]` runs (in a thread, the other
    workers going on) when the i-th request is due: changes under load (reload, kill).
    Hooks run one after another, in order: one that comes due while an earlier one still
    runs waits for it (its worker with it), so that changes never overlap. `stop()` true:
    no further request is sent (a load that lasts as long as something else takes)."""
    results: list[Result] = []
    hooks = asyncio.Lock()
    sent = 0
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def worker() -> None:
            nonlocal sent
            while sent < count and not (stop is not None and stop()):
                index = sent
                sent += 1
                if at and index in at:
                    async with hooks:
                        await asyncio.to_thread(at[index])
                results.append(await _one(session, method, url, all_headers, body))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def load(url: str, count: int, **kwargs: Any) -> list[Result]:
    return asyncio.run(load_async(url, count, **kwargs))


def request(
    url: str,
    *,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = b'{"data": [1]}',
) -> Result:
    async def go() -> Result:
        async with aiohttp.ClientSession() as session:
            return await _one(session, method, url, dict(headers or {}), body)

    return asyncio.run(go())


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lowercased; a repeated header keeps its last value
    body: bytes


class RawConnection:
    """A socket to the router, written and read by hand (bytes in, parsed answers out)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self._buffer += chunk
        return bool(chunk)

    def read(self, *, head: bool = False) -> RawResponse | None:
        """The next answer (its head only for a HEAD request); None if the router closed."""
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                assert not self._buffer, f"connection closed mid-answer: {self._buffer!r}"
                return None
        raw_head, _, rest = self._buffer.partition(b"\r\n\r\n")
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head or status < 200 else int(headers.get("content-length", "0"))
        while len(rest) < length:
            assert self._fill(), "connection closed mid-body"
            rest = self._buffer.partition(b"\r\n\r\n")[2]
        self._buffer = rest[length:]
        return RawResponse(status, headers, rest[:length])

    def closed_by_peer(self) -> bool:
        """Whether the router closed the connection (waits up to the socket timeout)."""
        if self._buffer:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def post_score(
    body: bytes = b'{"data": [1]}',
    *,
    key: str = PRIMARY_KEY,
    headers: Mapping[str, str] | None = None,
    path: str = "/score",
) -> bytes:
    """A whole POST request as bytes, Content-Length framed."""
    lines = [f"POST {path} HTTP/1.1", "Host: router", f"Authorization: Bearer {key}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
