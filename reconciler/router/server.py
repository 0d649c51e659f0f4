"""The router's HTTP server: authentication, routing, mirroring, limits, admin and health paths.

Paths on the scoring port:

| path | what |
|---|---|
| `POST /score`, `POST /score/` | scored by a deployment (auth required) |
| `GET /swagger.json` | the swagger of a deployment with traffic, or of the pinned one (auth) |
| `GET /-/healthy` | liveness: 200 while the event loop answers |
| `GET /-/ready` | readiness: 200 once a valid config is applied and until shutdown starts |
| `POST /-/config` | replace the whole config (`Authorization: Bearer ADMIN_SECRET`) |
| `GET /-/config` | the current config without secrets, and its digest (admin secret) |

Answers (Azure ML's): 401 no valid credentials (one body for every cause); 404 no deployment
has traffic and none is pinned, or the pinned one does not exist; 408 request_timeout_ms
passed (counted from admission, so queue time is bounded separately by max_queue_wait_ms);
429 the deployment is full and no slot came within max_queue_wait_ms; 424 the backend
answered with a non-2xx status, carried in `ms-azureml-model-error-statuscode` (and the
reason phrase in `ms-azureml-model-error-reason`), its body and content type passed on; 502
no instance could be reached (each instance is tried once) or the answer broke off; 503 the
deployment has no instance at all. 2xx answers pass through with their headers, except
hop-by-hop ones. Every answer carries `x-request-id` (the caller's, or a new UUID) and, once
a deployment was chosen, `azureml-model-deployment`.

Retry rule: a request goes to the next instance only when the previous one gave no byte of
an answer (refused, reset, closed), so an instance dying under load costs callers nothing;
a scoring call can therefore reach a model twice if an instance died after reading it.

Mirroring: a non-pinned live request is copied, with probability mirror percent / 100, to
the mirror deployment in a background task. The copy never delays or changes the caller's
answer: it is admitted only if the mirror deployment has a free slot (no queueing; else it
is dropped and counted as 429), it has its own timeout, and its answer is thrown away after
metrics and access log record it.

Reconfiguration: the config file's folder is watched (watchfiles; a Kubernetes Secret's
symlink swap is seen too), SIGHUP re-reads it, and `POST /-/config` takes a new document.
A bad document is refused and logged; the current config stays. Applying is one synchronous
swap (`Runtime.apply`), so no request sees half a config and none is dropped. The admin
call also writes the file (atomically, mode 0600) so that a restart keeps the change; with
several workers that file is how the others learn it, so there the call fails with 409 when
the file cannot be written.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import random
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import watchfiles
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST as METRICS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, generate_latest

from reconciler.router import logs
from reconciler.router.balancing import mirror_hit
from reconciler.router.config import (
    ConfigError,
    RouterConfig,
    dump_config,
    load_config,
    parse_config,
    public_view,
)
from reconciler.router.metrics import LIVE, MIRROR, SAMPLE_INTERVAL_S, RouterMetrics
from reconciler.router.runtime import DOWN_FOR_S, Deployment, Instance, Runtime
from reconciler.router.tokens import TokenCheck, check_token, hash_key, key_matches
from reconciler.router.upstream import BackendUnreachable, BadResponse, UpstreamResponse

PIN_HEADER = "azureml-model-deployment"
REQUEST_ID_HEADER = "x-request-id"
ERROR_STATUS_HEADER = "ms-azureml-model-error-statuscode"
ERROR_REASON_HEADER = "ms-azureml-model-error-reason"
SCORE_PATHS = frozenset(("/score", "/score/"))

# Not forwarded to a backend: hop-by-hop headers, those the router sets itself, and the
# caller's credentials (a model never sees the endpoint's key or token).
_SKIP_REQUEST_HEADERS = frozenset(
    b"connection keep-alive proxy-connection proxy-authorization te trailer transfer-encoding "
    b"upgrade host content-length expect authorization x-request-id".split()
)
# Not passed back to the caller: hop-by-hop, framing, and what aiohttp or the router set.
_SKIP_RESPONSE_HEADERS = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
        "x-request-id",
        "azureml-model-deployment",
    )
)
_MAX_REQUEST_ID = 200
_DRAIN_TIMEOUT_S = 30.0


def _json_error(status: int, message: str, request_id: str, deployment: str = "") -> web.Response:
    headers = {REQUEST_ID_HEADER: request_id}
    if deployment:
        headers[PIN_HEADER] = deployment
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response({"message": message}, status=status, headers=headers)


def _request_id(request: web.BaseRequest) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if given and len(given) <= _MAX_REQUEST_ID and given.isprintable():
        return given
    return str(uuid.uuid4())


def _bearer(request: web.BaseRequest) -> str | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


class _Outcome:
    """What one forwarded request came to: an answer or the router's own status."""

    __slots__ = ("instance", "reason", "response", "status")

    def __init__(
        self,
        status: int,
        *,
        response: UpstreamResponse | None = None,
        instance: Instance | None = None,
        reason: str = "",
    ) -> None:
        self.status = status
        self.response = response
        self.instance = instance
        self.reason = reason


class RouterServer:
    """One worker's router: the runtime state, the handlers and the config watcher."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        config_path: Path | None,
        registry: CollectorRegistry,
        workers: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = Runtime(config, workers=workers)
        self.config_path = config_path
        self.workers = workers
        self.metrics = RouterMetrics(config.endpoint, registry)
        self.registry = registry
        self.log = logs.get_logger(endpoint=config.endpoint, pid=os.getpid())
        self.access_log = logs.get_access_logger(endpoint=config.endpoint, pid=os.getpid())
        self._clock = clock
        self._draining = False
        self._mirror_tasks: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._servers: list[asyncio.Server] = []
        self._http: web.Server | None = None

    # ------------------------------------------------------------------ dispatch
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path in SCORE_PATHS:
            if request.method != "POST":
                return _json_error(405, "use POST", _request_id(request))
            return await self._score(request)
        if path == "/swagger.json":
            return await self._swagger(request)
        if path == "/-/healthy":
            return web.Response(text="ok")
        if path == "/-/ready":
            if self._draining:
                return web.Response(status=503, text="draining")
            return web.Response(text="ready")
        if path == "/-/config":
            return await self._admin(request)
        return _json_error(404, "not found", _request_id(request))

    # ------------------------------------------------------------------ auth
    def _auth_failure(self, request: web.BaseRequest) -> str | None:
        """None when the caller is allowed; else the reason, for logs and metrics only."""
        credential = _bearer(request)
        if credential is None:
            return "missing"
        config = self.runtime.config
        if config.auth_mode == "key":
            return None if key_matches(credential, config.key_hashes) else "wrong_key"
        check = check_token(
            config.token_secret, credential, endpoint=config.endpoint, now=self._clock()
        )
        return None if check is TokenCheck.VALID else check.value

    # ------------------------------------------------------------------ scoring
    async def _score(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _request_id(request)
        runtime = self.runtime
        deployment_name = ""
        outcome: _Outcome | None = None
        reason = ""
        bytes_in = 0
        try:
            failure = self._auth_failure(request)
            if failure is not None:
                self.metrics.auth_failed(failure)
                reason = failure
                outcome = _Outcome(401)
                return _json_error(401, "unauthorized", request_id)
            pinned = request.headers.get(PIN_HEADER)
            if pinned:
                deployment = runtime.deployments.get(pinned)
                if deployment is None:
                    reason = "unknown_deployment"
                    outcome = _Outcome(404)
                    return _json_error(404, "no such deployment", request_id)
            else:
                name = runtime.chooser.pick(random.random())
                if name is None:
                    reason = "no_traffic"
                    outcome = _Outcome(404)
                    return _json_error(404, "no deployment has traffic", request_id)
                deployment = runtime.deployments[name]
            deployment_name = deployment.name
            if request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                reason = "body_too_large"
                outcome = _Outcome(413)
                return _json_error(413, "request body too large", request_id, deployment_name)
            bytes_in = len(body)
            head_rest = _forward_headers(request, request_id, len(body))
            query = _query(request)
            if not pinned and runtime.mirror is not None:
                mirror, percent = runtime.mirror
                if mirror_hit(percent, random.random()):
                    self._spawn_mirror(mirror, query, head_rest, body, request_id)
            outcome = await self._admitted(
                deployment, b"POST", deployment.scoring_path + query, head_rest, body
            )
            reason = outcome.reason
            return _caller_response(outcome, deployment_name, request_id)
        finally:
            elapsed = time.perf_counter() - started
            status = outcome.status if outcome is not None else 500
            self.metrics.observe(deployment_name, LIVE, status, elapsed)
            if runtime.config.access_log:
                self._access(
                    request,
                    request_id=request_id,
                    status=status,
                    deployment=deployment_name,
                    kind=LIVE,
                    outcome=outcome,
                    elapsed=elapsed,
                    bytes_in=bytes_in,
                    reason=reason,
                )

    async def _admitted(
        self,
        deployment: Deployment,
        method: bytes,
        target: bytes,
        head_rest: bytes,
        body: bytes,
    ) -> _Outcome:
        """Admission, then the exchange with one instance (or the next ones)."""
        if not deployment.instances:
            return _Outcome(503, reason="no_instance")
        wait_s = deployment.route.max_queue_wait_ms / 1000.0
        if not await deployment.admit(wait_s):
            return _Outcome(429, reason="too_many_requests")
        try:
            return await self._exchange(deployment, method, target, head_rest, body)
        finally:
            deployment.release()

    async def _exchange(
        self,
        deployment: Deployment,
        method: bytes,
        target: bytes,
        head_rest: bytes,
        body: bytes,
    ) -> _Outcome:
        head = b"%s %s HTTP/1.1\r\nHost: " % (method, target)
        max_body = self.runtime.config.max_body_bytes
        tried: tuple[Instance, ...] = ()
        instance: Instance | None = None
        try:
            async with asyncio.timeout(deployment.timeout_s):
                while True:
                    instance = deployment.pick_instance(tried, time.monotonic())
                    if instance is None:
                        return _Outcome(
                            502, instance=tried[-1] if tried else None, reason="unreachable"
                        )
                    instance.busy += 1
                    try:
                        response = await instance.pool.request(
                            head + instance.host_header + head_rest + body, max_body=max_body
                        )
                        return _Outcome(response.status, response=response, instance=instance)
                    except BackendUnreachable:
                        instance.down_until = time.monotonic() + DOWN_FOR_S
                        tried += (instance,)
                    except BadResponse:
                        return _Outcome(502, instance=instance, reason="bad_response")
                    finally:
                        instance.finished()
        except TimeoutError:
            return _Outcome(408, instance=instance, reason="timeout")

    # ------------------------------------------------------------------ mirroring
    def _spawn_mirror(
        self, mirror: Deployment, query: bytes, head_rest: bytes, body: bytes, request_id: str
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._mirror(mirror, query, head_rest, body, request_id)
        )
        # The loop keeps only weak references to tasks: hold them until they end.
        self._mirror_tasks.add(task)
        task.add_done_callback(self._mirror_tasks.discard)

    async def _mirror(
        self, mirror: Deployment, query: bytes, head_rest: bytes, body: bytes, request_id: str
    ) -> None:
        started = time.perf_counter()
        outcome = _Outcome(429, reason="mirror_full")
        try:
            if mirror.instances and mirror.try_admit():
                try:
                    outcome = await self._exchange(
                        mirror, b"POST", mirror.scoring_path + query, head_rest, body
                    )
                finally:
                    mirror.release()
            elif not mirror.instances:
                outcome = _Outcome(503, reason="no_instance")
        except Exception as error:  # a copy must never take the router down
            outcome = _Outcome(502, reason="mirror_error")
            self.log.warning("mirror.failed", request_id=request_id, error=type(error).__name__)
        finally:
            elapsed = time.perf_counter() - started
            status = _caller_status(outcome)
            self.metrics.observe(mirror.name, MIRROR, status, elapsed)
            if self.runtime.config.access_log:
                self._access(
                    None,
                    request_id=request_id,
                    status=status,
                    deployment=mirror.name,
                    kind=MIRROR,
                    outcome=outcome,
                    elapsed=elapsed,
                    bytes_in=len(body),
                    reason=outcome.reason,
                )

    # ------------------------------------------------------------------ swagger
    async def _swagger(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = _request_id(request)
        if request.method != "GET":
            return _json_error(405, "use GET", request_id)
        failure = self._auth_failure(request)
        if failure is not None:
            self.metrics.auth_failed(failure)
            return _json_error(401, "unauthorized", request_id)
        runtime = self.runtime
        pinned = request.headers.get(PIN_HEADER)
        name = pinned or runtime.chooser.pick(random.random())
        deployment = runtime.deployments.get(name) if name else None
        if deployment is None:
            return _json_error(404, "no deployment has traffic", request_id)
        outcome = await self._admitted(
            deployment,
            b"GET",
            deployment.swagger_path + _query(request),
            _forward_headers(request, request_id, 0),
            b"",
        )
        return _caller_response(outcome, deployment.name, request_id)

    # ------------------------------------------------------------------ admin
    def _admin_allowed(self, request: web.BaseRequest) -> bool:
        expected = self.runtime.config.admin_secret_hash
        credential = _bearer(request)
        if expected is None or credential is None:
            return False
        return hmac.compare_digest(hash_key(credential).encode(), expected.encode())

    async def _admin(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = _request_id(request)
        if not self._admin_allowed(request):
            self.metrics.auth_failed("admin")
            return _json_error(401, "unauthorized", request_id)
        if request.method == "GET":
            return web.json_response(public_view(self.runtime.config))
        if request.method != "POST":
            return _json_error(405, "use GET or POST", request_id)
        try:
            config = parse_config(await request.read())
        except ConfigError as error:
            self.metrics.config_reloaded("admin", "invalid")
            self.log.warning("config.invalid", source="admin", error=str(error))
            return _json_error(400, str(error), request_id)
        except web.HTTPRequestEntityTooLarge:
            return _json_error(413, "config too large", request_id)
        if config.endpoint != self.runtime.config.endpoint:
            return _json_error(400, "endpoint: a router serves one endpoint", request_id)
        persisted = self._persist(config)
        if not persisted and self.workers > 1:
            # The file is how the other workers learn a change; applying here alone would
            # split the endpoint between two configs.
            return _json_error(
                409, "config file not writable; other workers not updated", request_id
            )
        self.apply(config, source="admin")
        return web.json_response({"applied": True, "digest": config.digest()})

    def _persist(self, config: RouterConfig) -> bool:
        path = self.config_path
        if path is None:
            return False
        try:
            fd, temporary = tempfile.mkstemp(prefix=".router-config-", dir=path.parent)
            try:
                # mkstemp creates the file 0600: the config holds secrets.
                with os.fdopen(fd, "w") as handle:
                    handle.write(dump_config(config))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as error:
            self.log.warning("config.persist_failed", path=str(path), error=error.strerror)
            return False
        return True

    # ------------------------------------------------------------------ config
    def apply(self, config: RouterConfig, *, source: str) -> bool:
        """Swap in `config` if it differs from the current one; True when it did."""
        current = self.runtime.config
        if config == current:
            return False
        self.runtime.apply(config)
        self.metrics.config_reloaded(source, "applied")
        self.log.info(
            "config.applied",
            source=source,
            digest=config.digest(),
            traffic=dict(config.traffic),
            mirror_traffic=dict(config.mirror_traffic),
            deployments={d.name: len(d.instances) for d in config.deployments},
        )
        if (config.host, config.port, config.metrics_port) != (
            current.host,
            current.port,
            current.metrics_port,
        ):
            self.log.warning("config.ports_need_restart")
        return True

    def reload_file(self, source: str) -> None:
        if self.config_path is None:
            return
        try:
            config = load_config(self.config_path)
        except ConfigError as error:
            self.metrics.config_reloaded(source, "invalid")
            self.log.error("config.invalid", source=source, error=str(error))
            return
        if config.endpoint != self.runtime.config.endpoint:
            self.metrics.config_reloaded(source, "invalid")
            self.log.error("config.invalid", source=source, error="endpoint changed")
            return
        self.apply(config, source=source)

    async def _watch_config(self) -> None:
        path = self.config_path
        if path is None:
            return
        # Watch the folder, not the file: an atomic replace (ours, an editor's, a Kubernetes
        # Secret's symlink swap) gives the path a new inode that a file watch would miss.
        # The watcher's thread takes the GIL each `step` to look for news: a short step
        # would stall requests (measured: p99 up to 100 ms at step=20 ms). 100 ms steps keep
        # that rare and still apply a change within a few tenths of a second.
        async for _ in watchfiles.awatch(
            path.parent, stop_event=self._stop, debounce=400, step=100, recursive=False
        ):
            self.reload_file("file")

    async def _sample_metrics(self) -> None:
        while not self._stop.is_set():
            deployments = self.runtime.deployments
            for name, deployment in deployments.items():
                self.metrics.set_deployment(
                    name,
                    in_flight=deployment.in_flight,
                    queued=deployment.queued,
                    busy_instances=deployment.busy_instances,
                    instances=len(deployment.instances),
                    capacity=deployment.capacity,
                )
            self.metrics.drop_deployments_except(set(deployments))
            logs.flush()
            try:
                async with asyncio.timeout(SAMPLE_INTERVAL_S):
                    await self._stop.wait()
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ logs
    def _access(
        self,
        request: web.BaseRequest | None,
        *,
        request_id: str,
        status: int,
        deployment: str,
        kind: str,
        outcome: _Outcome | None,
        elapsed: float,
        bytes_in: int,
        reason: str,
    ) -> None:
        response = outcome.response if outcome is not None else None
        instance = outcome.instance if outcome is not None else None
        self.access_log.info(
            "request",
            request_id=request_id,
            method=request.method if request is not None else "POST",
            path=request.path if request is not None else None,
            status=status,
            deployment=deployment or None,
            kind=kind,
            instance=instance.address if instance is not None else None,
            backend_status=response.status if response is not None else None,
            duration_ms=round(elapsed * 1000.0, 3),
            bytes_in=bytes_in,
            bytes_out=len(response.body) if response is not None else 0,
            reason=reason or None,
        )

    # ------------------------------------------------------------------ lifecycle
    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=self.runtime.config.max_body_bytes,
        )

    async def start(
        self, *, host: str, port: int, metrics_port: int | None, reuse_port: bool = False
    ) -> tuple[int, int | None]:
        """Listen; returns the bound ports (useful with port 0). No metrics port: None."""
        loop = asyncio.get_running_loop()
        self._http = web.Server(
            self.handle,
            request_factory=self._make_request,
            access_log=None,
            keepalive_timeout=75.0,  # above common client and load-balancer idle timeouts
        )
        server = await loop.create_server(
            self._http, host, port, reuse_port=reuse_port or None, backlog=1024
        )
        self._servers.append(server)
        bound = server.sockets[0].getsockname()[1]
        metrics_bound: int | None = None
        if metrics_port is not None:
            metrics_server = await loop.create_server(
                web.Server(self._metrics_handler, access_log=None), host, metrics_port
            )
            self._servers.append(metrics_server)
            metrics_bound = metrics_server.sockets[0].getsockname()[1]
        self._background = [
            loop.create_task(self._watch_config()),
            loop.create_task(self._sample_metrics()),
        ]
        return bound, metrics_bound

    async def _metrics_handler(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/metrics":
            return web.Response(status=404, text="metrics are at /metrics")
        response = web.Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response

    async def stop(self) -> None:
        """Drain: fail readiness, stop accepting, let requests in flight finish."""
        self._draining = True
        self._stop.set()
        for server in self._servers:
            server.close()
        if self._http is not None:
            await self._http.shutdown(_DRAIN_TIMEOUT_S)
        for task in self._background:
            task.cancel()
        for task in list(self._mirror_tasks):
            task.cancel()
        await asyncio.gather(*self._background, *self._mirror_tasks, return_exceptions=True)
        self.runtime.close()
        logs.flush()

    def begin_drain(self) -> None:
        self._draining = True


def _query(request: web.BaseRequest) -> bytes:
    raw = request.raw_path
    mark = raw.find("?")
    return raw[mark:].encode("latin-1") if mark >= 0 else b""


def _forward_headers(request: web.BaseRequest, request_id: str, body_size: int) -> bytes:
    """The header lines after Host, ending the head: the caller's, filtered, plus ours."""
    parts = [b"\r\n"]
    for name, value in request.raw_headers:
        if name.lower() in _SKIP_REQUEST_HEADERS:
            continue
        parts += (name, b": ", value, b"\r\n")
    parts += (b"x-request-id: ", request_id.encode("utf-8"), b"\r\n")
    parts.append(b"Content-Length: %d\r\n\r\n" % body_size)
    return b"".join(parts)


def _caller_status(outcome: _Outcome) -> int:
    if outcome.response is not None and not 200 <= outcome.status < 300:
        return 424
    return outcome.status


def _caller_response(outcome: _Outcome, deployment: str, request_id: str) -> web.Response:
    response = outcome.response
    if response is None:
        messages = {
            408: "request timed out (request_timeout_ms)",
            429: "too many requests for this deployment",
            502: "no instance of the deployment could be reached",
            503: "the deployment has no instance",
        }
        message = messages.get(outcome.status, "error")
        return _json_error(outcome.status, message, request_id, deployment)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in response.headers:
        text = name.decode("latin-1")
        if text.lower() not in _SKIP_RESPONSE_HEADERS:
            headers.add(text, value.decode("latin-1"))
    headers[PIN_HEADER] = deployment
    headers[REQUEST_ID_HEADER] = request_id
    status = response.status
    if not 200 <= status < 300:
        headers[ERROR_STATUS_HEADER] = str(status)
        headers[ERROR_REASON_HEADER] = response.reason.decode("latin-1").strip()
        status = 424
    return web.Response(status=status, body=response.body, headers=headers)


def run_single(
    config_path: Path,
    *,
    host: str | None,
    port: int | None,
    metrics_port: int | None,
) -> None:
    """Serve in this process (one worker): scoring port and metrics port on one loop."""
    from prometheus_client import REGISTRY

    config = load_config(config_path)
    server_loop(
        config,
        config_path=config_path,
        registry=REGISTRY,
        host=host or config.host,
        port=config.port if port is None else port,
        metrics_port=config.metrics_port if metrics_port is None else metrics_port,
        workers=1,
        reuse_port=False,
    )


def server_loop(
    config: RouterConfig,
    *,
    config_path: Path | None,
    registry: CollectorRegistry,
    host: str,
    port: int,
    metrics_port: int | None,
    workers: int,
    reuse_port: bool,
) -> None:
    """Run one router worker until SIGTERM or SIGINT, on uvloop when it is installed."""

    async def main() -> None:
        server = RouterServer(config, config_path=config_path, registry=registry, workers=workers)
        bound, metrics_bound = await server.start(
            host=host, port=port, metrics_port=metrics_port, reuse_port=reuse_port
        )
        server.log.info(
            "listening",
            host=host,
            port=bound,
            metrics_port=metrics_bound,
            workers=workers,
            digest=config.digest(),
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload_file, "signal")
        await stopping.wait()
        in_flight = sum(d.in_flight for d in server.runtime.deployments.values())
        server.log.info("shutdown", in_flight=in_flight)
        await server.stop()

    run_event_loop(main)


def run_event_loop(main: Callable[[], Any]) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is an accelerator, not a requirement
        asyncio.run(main())
    else:
        uvloop.run(main())
