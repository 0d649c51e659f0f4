"""The router's handlers: authentication, routing, mirroring, limits, admin and health paths.

Paths on the scoring port:

| path | what |
|---|---|
| `POST /score`, `POST /score/` | scored by a deployment (auth required) |
| `GET`, `POST` `/v2`, `/v2/...` | KServe v2 (Triton): passed to a deployment as sent (auth) |
| `GET /swagger.json` | the swagger of a deployment with traffic, or of the pinned one (auth) |
| `GET /-/healthy` | liveness: 200 while the event loop answers |
| `GET /-/ready` | readiness: 200 once a valid config is applied and until shutdown starts |
| `POST /-/config` | replace the whole config (`Authorization: Bearer ADMIN_SECRET`) |
| `GET /-/config` | the current config without secrets, and its digest (admin secret) |
| `GET /-/config-digest` | `{"digest": ...}` of the config it serves (no auth: reveals no secret) |
| `GET /-/instances` | each instance's probe record: ready, failed checks in a row (admin secret) |
| `GET /-/state-digest` | `{"digest": ...}` of the state files beside the config (admin secret) |

Answers (Azure ML's): 401 no valid credentials (one body for every cause); 404 no deployment
has traffic and none is pinned, or the pinned one does not exist; 408 request_timeout_ms
passed (counted from admission, so queue time is bounded separately by max_queue_wait_ms);
413 the body is over max_body_bytes; 429 the deployment is full and no slot came within
max_queue_wait_ms; 424 the backend answered with a non-2xx status, carried in
`ms-azureml-model-error-statuscode` (and the reason phrase in
`ms-azureml-model-error-reason`), its body and content type passed on; 502 no instance
could be reached (each instance is tried once) or the answer broke off; 503 the deployment
has no instance at all, or none ready (its readiness probe, probes.py). 2xx answers pass
through with their headers, except hop-by-hop ones. A `/v2` request (a Triton deployment's
`/v2/health/ready`, `/v2/models/NAME/infer`, ...) is routed as a scoring request is
(credentials, pin header or traffic split, limits, mirroring of POSTs) and forwarded with its
method, path and query as sent; its answers follow the same rules (a Triton 400 reaches the
caller as 424 carrying 400). Every answer but the health paths' carries `x-request-id` (the
caller's, or a new UUID-shaped id) and, once a deployment was chosen,
`azureml-model-deployment`. The checks run in that order: credentials, deployment, body
size. A request with `Expect: 100-continue` gets "100 Continue" only once its credentials
and deployment are good, so a refused caller never uploads its body. Malformed requests,
over-long heads and stalled
uploads are answered by the HTTP layer's rules (`http`: 400, 414, 431, 408).

Streaming (see README "Streaming"): an answer of unknown length (chunked, until close) or
over `STREAM_ANSWER_ABOVE` goes to the caller as the backend writes it (`_Relay`); a
request body over `http.STREAM_BODY_ABOVE` goes to the backend as the caller sends it. For
a streamed answer, request_timeout_ms bounds the wait for its head and then each wait
between pieces; the instance's and deployment's slots, the metrics (duration to the end)
and the shadow comparison wait for its end. One that breaks off after its head aborts the
caller's connection and counts as 502 (`stream_broken`) or 408 (`stream_timeout`).

Retry rule: a request goes to the next instance only when the previous one gave no byte of
an answer (refused, reset, closed), so an instance dying under load costs callers nothing
(a streamed body: only while none of it was sent, i.e. when no connection could be made);
a scoring call can therefore reach a model twice if an instance died after reading it.

Mirroring: a non-pinned live request is copied, with probability mirror percent / 100, to
the mirror deployment in a background task. The copy never delays or changes the caller's
answer: it is admitted only if the mirror deployment has a free slot (no queueing; else it
is dropped and counted as 429), it has its own timeout, and its answer is thrown away after
metrics and access log record it, and after it is compared with the live answer of the same
request (shadow comparison, `compare.py`: status code, and the body as JSON within the
config's `shadow_comparison` tolerance, counted in router_shadow_comparisons_total and
router_shadow_latency_delta_seconds). The comparison runs when both answers are in: in the
copy's task, or, when the live answer comes last, after it is written to the caller; large
bodies in a process of their own (`comparer`). Bodies are kept for it only up to
`shadow_comparison.max_body_bytes` each, and never stored or logged.

Reconfiguration: the config file's folder is watched (watchfiles; a Kubernetes Secret's
symlink swap is seen too), SIGHUP re-reads it, and `POST /-/config` takes a new document.
A bad document is refused and logged; the current config stays. Applying is one synchronous
swap (`Runtime.apply`), so no request sees half a config and none is dropped. The admin
call also writes the file (atomically, mode 0600) so that a restart keeps the change; with
several workers that file is how the others learn it, so there the call fails with 409 when
the file cannot be written.

Cost per request. The scoring path is the one hot path; everything in it is chosen for CPU
per request (a proxy's throughput on a busy host is its CPU per request): the HTTP layer is
`http` (httptools, one object a request, one write an answer), refusals are answered
without a task, the caller's headers are read in one pass into the bytes forwarded as they
are, header lines are built as bytes, the request id is a counter behind a random prefix
(not `uuid4`, which reads the OS's random source each time), the timeout is one timer on
the backend connection, and the access log line is formatted directly (`logs.AccessLog`).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import itertools
import json
import os
import random
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any
from urllib.parse import quote

import watchfiles
from prometheus_client import CONTENT_TYPE_LATEST as METRICS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, generate_latest

from reconciler.router import comparer, logs
from reconciler.router.admin import CONFIG_DIGEST_PATH, CONFIG_PATH
from reconciler.router.balancing import mirror_hit
from reconciler.router.compare import Answer, Failure, Pair, Result, judge
from reconciler.router.config import (
    ConfigError,
    RouterConfig,
    dump_config,
    load_config,
    parse_config,
    public_view,
)
from reconciler.router.http import (
    BodyError,
    BodySink,
    BodyStream,
    HttpRequest,
    HttpServer,
    Later,
    Reply,
    StreamSource,
    complete,
    handler_failed,
)
from reconciler.router.metrics import LIVE, MIRROR, SAMPLE_INTERVAL_S, RouterMetrics
from reconciler.router.probes import Prober, health_view
from reconciler.router.runtime import DOWN_FOR_S, Deployment, Instance, Runtime
from reconciler.router.served import digest_document, report_served
from reconciler.router.statefiles import ROUTER_CONFIG, read_state_folder, state_digest
from reconciler.router.tokens import (
    TokenCheck,
    check_token,
    hash_key,
    key_bytes_match,
    key_digests,
)
from reconciler.router.upstream import (
    BackendUnreachable,
    BadResponse,
    Deadlines,
    UpstreamResponse,
)

PIN_HEADER = "azureml-model-deployment"
REQUEST_ID_HEADER = "x-request-id"
ERROR_STATUS_HEADER = "ms-azureml-model-error-statuscode"
ERROR_REASON_HEADER = "ms-azureml-model-error-reason"
SCORE_PATHS = frozenset(("/score", "/score/"))
_ADMIN_PATHS = frozenset((CONFIG_PATH, "/-/instances", "/-/state-digest"))
# The KServe v2 protocol's paths (Triton Inference Server): `/v2` (server metadata) and
# everything under `/v2/`.
V2_PATH = "/v2"

# What each of the caller's headers (names come lowercased) means to the router. Not
# forwarded to a backend (_SKIP): hop-by-hop headers, those the router sets itself, and the
# caller's credentials (a model never sees the endpoint's key or token). An Upgrade offer
# (h2c, websocket) is ignored by the router, so none of its headers go on: a backend must
# not switch protocols on a request whose answer the router reads as HTTP/1.1.
_SKIP, _AUTHORIZATION, _REQUEST_ID, _PIN = 0, 1, 2, 3
_REQUEST_HEADERS: dict[bytes, int] = dict.fromkeys(
    b"connection keep-alive proxy-connection proxy-authorization te trailer transfer-encoding "
    b"upgrade http2-settings host content-length expect".split(),
    _SKIP,
)
_REQUEST_HEADERS.update({b"authorization": _AUTHORIZATION, b"x-request-id": _REQUEST_ID})
_REQUEST_HEADERS[PIN_HEADER.encode()] = _PIN  # read, and forwarded as well
# Not passed back to the caller: hop-by-hop, framing, and what the HTTP layer or we set.
_SKIP_RESPONSE_HEADERS = frozenset(
    b"connection keep-alive proxy-authenticate te trailer transfer-encoding upgrade "
    b"content-length date server x-request-id azureml-model-deployment".split()
)
# Whether a backend's header name (as sent) is passed back: a lookup of the name as it
# comes, instead of lowercasing it on every answer. Names come from backends: bounded.
_PASSED_RESPONSE_HEADERS: dict[bytes, bool] = {}


def _passed_response_header(name: bytes) -> bool:
    keep = name.lower() not in _SKIP_RESPONSE_HEADERS
    if len(_PASSED_RESPONSE_HEADERS) < 1024:
        _PASSED_RESPONSE_HEADERS[name] = keep
    return keep


_MAX_REQUEST_ID = 200
_DRAIN_TIMEOUT_S = 30.0
_METRICS_MAX_BODY = 64 * 1024
# Shadow comparison: bodies up to this much (both together) are judged on the event loop
# (well under a millisecond); larger ones in a process, this many at most at a time.
_INLINE_COMPARE_BYTES = 64 * 1024
_MAX_PENDING_COMPARISONS = 2
# A live answer whose length is unknown (chunked, until close) or over this streams to the
# caller as the backend writes it; smaller ones are read whole, then answered in one write.
STREAM_ANSWER_ABOVE = 64 * 1024
_BODY_ERRORS = {413: "body_too_large", 408: "client_timeout", 400: "bad_request"}

_JSON = b"Content-Type: application/json; charset=utf-8\r\n"
_TEXT = b"Content-Type: text/plain; charset=utf-8\r\n"
_HEALTHY = Reply(200, _TEXT, b"ok")
_READY = Reply(200, _TEXT, b"ready")
_DRAINING = Reply(503, _TEXT, b"draining")
_OUTCOME_MESSAGES = {
    400: "bad request",
    408: "request timed out (request_timeout_ms)",
    413: "request body too large",
    429: "too many requests for this deployment",
    502: "no instance of the deployment could be reached",
    503: "the deployment has no instance",
}
_REASON_MESSAGES = {"no_ready_instance": "no instance of the deployment is ready"}
_PROTOCOL_ERRORS = {
    400: ("bad request", "bad_request"),
    408: ("request not received in time", "client_timeout"),
    414: ("request target too long", "target_too_long"),
    431: ("request header fields too large", "head_too_large"),
}

# Request ids we make: unique, not secret (callers may send their own), so a random prefix
# per process and a counter, in UUID shape, instead of uuid4's OS random read per request.
_ID_PREFIX = str(uuid.uuid4())[:24].encode("ascii")
_id_counter = itertools.count(int.from_bytes(os.urandom(6), "big"))


def _new_request_id() -> bytes:
    return b"%s%012x" % (_ID_PREFIX, next(_id_counter) & 0xFFFFFFFFFFFF)


def _request_id(given: bytes | None) -> bytes:
    """The caller's id if it is short printable text (it goes into headers and logs)."""
    if given and len(given) <= 4 * _MAX_REQUEST_ID:
        text = given.decode("utf-8", "surrogateescape")
        if len(text) <= _MAX_REQUEST_ID and text.isprintable():
            return given
    return _new_request_id()


_error_bodies: dict[str, bytes] = {}


def _error_body(message: str) -> bytes:
    body = _error_bodies.get(message)
    if body is None:
        body = json.dumps({"message": message}).encode()
        if len(_error_bodies) < 256:  # the fixed messages; config errors vary, rarely
            _error_bodies[message] = body
    return body


def _json_error(
    status: int, message: str, request_id: bytes, deployment: str = "", *, allow: bytes = b""
) -> Reply:
    head = [_JSON, b"x-request-id: ", request_id, b"\r\n"]
    if deployment:
        head += (b"azureml-model-deployment: ", deployment.encode(), b"\r\n")
    if status == 401:
        head.append(b"WWW-Authenticate: Bearer\r\n")
    if allow:
        head += (b"Allow: ", allow, b"\r\n")
    return Reply(status, b"".join(head), _error_body(message))


def _json_reply(doc: Any, request_id: bytes) -> Reply:
    return Reply(200, _JSON + b"x-request-id: %s\r\n" % request_id, json.dumps(doc).encode())


def _digest_reply(config: RouterConfig) -> Reply:
    """The answer of `/-/config-digest`, made once per config (unauthenticated callers
    must not make the router serialise its config per request)."""
    return Reply(200, _JSON, json.dumps({"digest": config.digest()}).encode())


def _inspect(
    request: HttpRequest,
) -> tuple[bytes | None, bytes | None, bytes | None, list[bytes]]:
    """One pass over the caller's headers: (authorization, pin, request id, forwarded).

    The forwarded part starts the header lines after Host; the caller adds its own.
    """
    authorization = pin = given_id = None
    forward = [b"\r\n"]
    kinds = _REQUEST_HEADERS
    for name, value in request.headers:
        kind = kinds.get(name)
        if kind is None:
            forward += (name, b": ", value, b"\r\n")
        elif kind == _AUTHORIZATION:
            if authorization is None:
                authorization = value
        elif kind == _REQUEST_ID:
            if given_id is None:
                given_id = value
        elif kind == _PIN:
            if pin is None:
                pin = value
            forward += (name, b": ", value, b"\r\n")
    return authorization, pin, given_id, forward


def _credential(authorization: bytes | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, credential = authorization.partition(b" ")
    credential = credential.strip()
    if scheme.lower() != b"bearer" or not credential:
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
        # With several workers their metrics are files the supervisor reads: written through.
        self.metrics = RouterMetrics(config.endpoint, registry, buffered=workers == 1)
        self.registry = registry
        self.log = logs.get_logger(endpoint=config.endpoint, pid=os.getpid())
        self.access_log = logs.AccessLog(endpoint=config.endpoint, pid=os.getpid())
        self._clock = clock
        self._draining = False
        self._key_digests = key_digests(config.key_hashes)
        self._access_log = config.access_log
        self._digest_reply = _digest_reply(config)
        if workers > 1:
            report_served(config.digest())
        self._mirror_tasks: set[asyncio.Task[None]] = set()
        self._live_tasks: set[asyncio.Task[None]] = set()  # see _Sent._go_on
        self._compare_pool: ProcessPoolExecutor | None = None
        self._comparing = 0
        self._background: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._http: HttpServer | None = None
        self._metrics_http: HttpServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None

    # ------------------------------------------------------------------ dispatch
    def handle(self, request: HttpRequest) -> Reply | Later | Coroutine[Any, Any, Reply]:
        """The scoring port's handler (see `http.Handler`): a reply, or work to await."""
        if request.error:
            return self._protocol_error(request)
        path = request.path
        if path in SCORE_PATHS:
            if request.method != b"POST":
                return _json_error(405, "use POST", _given_id(request), allow=b"POST")
            return self._score(request)
        if _is_v2(path):
            return self._v2(request)
        if path == "/swagger.json":
            return self._swagger(request)
        if path == "/-/healthy":
            return _HEALTHY
        if path == "/-/ready":
            return _DRAINING if self._draining else _READY
        if path == CONFIG_PATH:
            return self._admin(request)
        if path == CONFIG_DIGEST_PATH:
            if self.workers > 1:
                # One worker's digest is not the router's: it answers for all (served.py).
                return Reply(200, _JSON, digest_document(self.workers))
            return self._digest_reply
        if path == "/-/instances":
            return self._instances(request)
        if path == "/-/state-digest":
            return self._state_digest(request)
        return _json_error(404, "not found", _given_id(request))

    def expect(self, request: HttpRequest) -> Reply | None:
        """`Expect: 100-continue`: None to let the body come, or the refusal to send instead."""
        if request.method == b"POST" and (request.path in SCORE_PATHS or _is_v2(request.path)):
            refused = self._route(request, time.perf_counter())
            return refused if isinstance(refused, Reply) else None
        if request.path in _ADMIN_PATHS and not self._admin_allowed(request):
            self.metrics.auth_failed("admin")
            return _json_error(401, "unauthorized", _given_id(request))
        return None

    def _protocol_error(self, request: HttpRequest) -> Reply:
        message, reason = _PROTOCOL_ERRORS.get(request.error, ("bad request", "bad_request"))
        request_id = _new_request_id()
        started = time.perf_counter()
        self._record(request, started, request_id, request.error, "", LIVE, None, 0, reason)
        return _json_error(request.error, message, request_id)

    # ------------------------------------------------------------------ auth
    def _auth_failure(self, authorization: bytes | None) -> str | None:
        """None when the caller is allowed; else the reason, for logs and metrics only."""
        credential = _credential(authorization)
        if credential is None:
            return "missing"
        config = self.runtime.config
        if config.auth_mode == "key":
            return None if key_bytes_match(credential, self._key_digests) else "wrong_key"
        check = check_token(
            config.token_secret,
            credential.decode("utf-8", "surrogateescape"),
            endpoint=config.endpoint,
            now=self._clock(),
        )
        return None if check is TokenCheck.VALID else check.value

    # ------------------------------------------------------------------ scoring
    def _route(
        self, request: HttpRequest, started: float
    ) -> Reply | tuple[Deployment, bytes, bool, list[bytes]]:
        """Credentials, then the deployment: (deployment, request id, pinned, forwarded
        header lines), or the refusal (401, 404), recorded."""
        authorization, pin, given_id, forward = _inspect(request)
        request_id = _new_request_id() if given_id is None else _request_id(given_id)
        failure = self._auth_failure(authorization)
        if failure is not None:
            self.metrics.auth_failed(failure)
            return self._refuse(request, started, request_id, 401, "unauthorized", failure)
        runtime = self.runtime
        if pin:
            asked = pin.decode("latin-1")
            deployment = runtime.deployments.get(asked)
            if deployment is None:
                self._record(
                    request, started, request_id, 404, "", LIVE, None, 0, "unknown_deployment"
                )
                # The caller's own header, named back (cut short), so a typo is seen at
                # once; the message is not cached: callers choose it.
                shown = asked if len(asked) <= 64 else asked[:64] + "..."
                body = json.dumps({"message": f"no deployment named '{shown}'"}).encode()
                return Reply(404, b"".join((_JSON, b"x-request-id: ", request_id, b"\r\n")), body)
        else:
            chooser = runtime.chooser
            name = chooser.only or chooser.pick(random.random())
            if name is None:
                return self._refuse(
                    request, started, request_id, 404, "no deployment has traffic", "no_traffic"
                )
            deployment = runtime.deployments[name]
        return deployment, request_id, bool(pin), forward

    def _admit(
        self, request: HttpRequest, started: float
    ) -> Reply | tuple[Deployment, bytes, bool, bytes]:
        """A scoring or v2 request routed and within the body limit: (deployment, request
        id, pinned, the forwarded head's end), or the refusal (401, 404, 413), recorded."""
        routed = self._route(request, started)
        if isinstance(routed, Reply):
            return routed
        deployment, request_id, pinned, forward = routed
        if request.too_large:
            return self._refuse(
                request,
                started,
                request_id,
                413,
                "request body too large",
                "body_too_large",
                deployment.name,
            )
        stream = request.stream
        if stream is None:
            framing = b"\r\nContent-Length: %d\r\n\r\n" % len(request.body)
        elif stream.length >= 0:
            framing = b"\r\nContent-Length: %d\r\n\r\n" % stream.length
        else:
            framing = b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        forward += (b"x-request-id: ", request_id, framing)
        return deployment, request_id, pinned, b"".join(forward)

    def _score(self, request: HttpRequest) -> Reply | Later | Coroutine[Any, Any, Reply]:
        started = time.perf_counter()
        admitted = self._admit(request, started)
        if isinstance(admitted, Reply):
            return admitted
        deployment, request_id, pinned, head_rest = admitted
        body = request.body
        query = request.query
        mirror = self.runtime.mirror
        pair = None
        if mirror is not None and not pinned and mirror_hit(mirror[1], random.random()):
            pair = self._spawn_mirror(
                deployment,
                mirror[0],
                b"POST",
                mirror[0].scoring_path + query,
                head_rest,
                body,
                request_id,
                request.stream,
            )
        target = deployment.scoring_path + query
        return self._dispatch(
            request, started, request_id, deployment, b"POST", target, head_rest, body, pair
        )

    def _v2(self, request: HttpRequest) -> Reply | Later | Coroutine[Any, Any, Reply]:
        """A KServe v2 request: routed as a scoring request, forwarded as it was sent."""
        method = request.method
        if method not in (b"GET", b"POST"):
            return _json_error(405, "use GET or POST", _given_id(request), allow=b"GET, POST")
        started = time.perf_counter()
        admitted = self._admit(request, started)
        if isinstance(admitted, Reply):
            return admitted
        deployment, request_id, pinned, head_rest = admitted
        body = request.body
        target = _forwarded_target(request)
        mirror = self.runtime.mirror
        pair = None
        # Inference is mirrored; a health or metadata GET would tell the mirror nothing.
        if (
            method == b"POST"
            and mirror is not None
            and not pinned
            and mirror_hit(mirror[1], random.random())
        ):
            pair = self._spawn_mirror(
                deployment, mirror[0], method, target, head_rest, body, request_id, request.stream
            )
        return self._dispatch(
            request, started, request_id, deployment, method, target, head_rest, body, pair
        )

    def _refuse(
        self,
        request: HttpRequest,
        started: float,
        request_id: bytes,
        status: int,
        message: str,
        reason: str,
        deployment: str = "",
    ) -> Reply:
        self._record(request, started, request_id, status, deployment, LIVE, None, 0, reason)
        return _json_error(status, message, request_id, deployment)

    def _dispatch(
        self,
        request: HttpRequest,
        started: float,
        request_id: bytes,
        deployment: Deployment,
        method: bytes,
        target: bytes,
        head_rest: bytes,
        body: bytes,
        pair: Pair | None,
    ) -> Later | Coroutine[Any, Any, Reply]:
        """The hot path: a request admitted at once, its body whole and a kept-alive
        connection idle goes out now, and its answer comes back through `_Sent.answered`
        (no task, no coroutine); any other goes through `_forward`."""
        if request.stream is None and deployment.instances and deployment.try_admit():
            deadlines = self._deadlines
            assert deadlines is not None, "start() first"
            now = deadlines.loop.time()
            instance = deployment.pick_instance((), now)
            if instance is not None:
                sent = _Sent(
                    self,
                    request,
                    started,
                    request_id,
                    deployment,
                    instance,
                    method,
                    target,
                    head_rest,
                    body,
                    pair,
                    now + deployment.timeout_s,
                )
                data = b"%s %s HTTP/1.1\r\nHost: %s%s%s" % (
                    method,
                    target,
                    instance.host_header,
                    head_rest,
                    body,
                )
                if instance.pool.send_idle(
                    data,
                    sent.answered,
                    max_body=self.runtime.config.max_body_bytes,
                    deadline=sent.deadline,
                    deadlines=deadlines,
                    stream_above=STREAM_ANSWER_ABOVE,
                    idle=deployment.timeout_s,
                ):
                    instance.busy += 1
                    return sent
            return self._forward(
                request,
                started,
                request_id,
                deployment,
                method,
                target,
                head_rest,
                body,
                pair,
                admitted=True,
            )
        return self._forward(
            request, started, request_id, deployment, method, target, head_rest, body, pair
        )

    async def _forward(
        self,
        request: HttpRequest,
        started: float,
        request_id: bytes,
        deployment: Deployment,
        method: bytes,
        target: bytes,
        head_rest: bytes,
        body: bytes,
        pair: Pair | None = None,
        *,
        admitted: bool = False,
        first: Instance | None = None,
        deadline: float | None = None,
    ) -> Reply:
        """`admitted`: the deployment's slot is taken already; `first`, `deadline`: go on
        from a `_Sent` whose kept-alive connection was stale (see `_exchange`)."""
        try:
            # `_admitted` inlined: one coroutine frame less.
            if not admitted and not deployment.instances:
                outcome = _no_instance(deployment)
            elif (
                admitted
                or deployment.try_admit()
                or await deployment.admit(deployment.route.max_queue_wait_ms / 1000.0)
            ):
                try:
                    outcome = await self._exchange(
                        deployment,
                        method,
                        target,
                        head_rest,
                        body,
                        STREAM_ANSWER_ABOVE,
                        request.stream,
                        first=first,
                        deadline=deadline,
                    )
                except BaseException:
                    deployment.release()
                    raise
                response = outcome.response
                if response is not None and response.stream is not None:
                    # The slot, metrics and the comparison wait for the stream's end.
                    relay = _Relay(self, request, started, request_id, deployment, outcome, pair)
                    return _caller_reply(outcome, deployment.name, request_id, relay)
                deployment.release()
            else:
                outcome = _Outcome(429, reason="too_many_requests")
            reply = _caller_reply(outcome, deployment.name, request_id)
        except BaseException:
            self._record(request, started, request_id, 500, deployment.name, LIVE, None, 0, "error")
            if pair is not None:
                pair.live_answered(Answer(None, failure=Failure.ERROR), time.perf_counter())
            raise
        # Metrics and the access line once the answer is written (call_soon runs after the
        # HTTP layer's write, in the same loop pass): off the caller's latency.
        assert self._loop is not None
        self._loop.call_soon(
            self._record,
            request,
            started,
            request_id,
            _caller_status(outcome),
            deployment.name,
            LIVE,
            outcome,
            _bytes_in(request),
        )
        if pair is not None:
            # Also after the write: the comparison may run in this call.
            self._loop.call_soon(
                pair.live_answered,
                self._answer(outcome),
                time.perf_counter(),
            )
        return reply

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
            return _no_instance(deployment)
        if not deployment.try_admit() and not await deployment.admit(
            deployment.route.max_queue_wait_ms / 1000.0
        ):
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
        stream_above: int = -1,
        stream: BodyStream | None = None,
        *,
        first: Instance | None = None,
        deadline: float | None = None,
    ) -> _Outcome:
        """The exchange with one instance, or the next ones while none answered and the
        body can still be sent again (whole, or streamed but nothing of it sent yet). With
        `stream_above` >= 0 an answer may come back streaming (`UpstreamResponse.stream`):
        its instance stays busy until the stream ends (`_Relay`). `first`: the instance
        to try first, on a new connection (its kept-alive one was stale), by `deadline`."""
        head = b"%s %s HTTP/1.1\r\nHost: " % (method, target)
        max_body = self.runtime.config.max_body_bytes
        deadlines = self._deadlines
        assert deadlines is not None, "start() first"
        loop = deadlines.loop
        # One deadline for the whole exchange, connects and retries included; a streamed
        # body (either way) moves it on by the timeout with each piece.
        timeout = deployment.timeout_s
        if deadline is None:
            deadline = loop.time() + timeout
        tried: tuple[Instance, ...] = ()
        instance: Instance | None = None
        while True:
            fresh = first is not None
            if first is not None:
                instance, first = first, None
            else:
                instance = deployment.pick_instance(tried, loop.time())
            if instance is None:
                return _Outcome(502, instance=tried[-1] if tried else None, reason="unreachable")
            instance.busy += 1
            streaming = False
            try:
                if stream is None:
                    data = head + instance.host_header + head_rest + body
                else:
                    data = head + instance.host_header + head_rest
                response = await instance.pool.request(
                    data,
                    max_body=max_body,
                    deadline=deadline,
                    deadlines=deadlines,
                    stream_above=stream_above,
                    idle=timeout,
                    body=stream,
                    fresh=fresh,
                )
                streaming = response.stream is not None
                return _Outcome(response.status, response=response, instance=instance)
            except BackendUnreachable:
                instance.down_until = loop.time() + DOWN_FOR_S
                tried += (instance,)
                if stream is not None and stream.consumed:
                    # Part of the body went to this instance: it cannot be sent again.
                    return _Outcome(502, instance=instance, reason="unreachable")
            except BadResponse:
                return _Outcome(502, instance=instance, reason="bad_response")
            except TimeoutError:
                return _Outcome(408, instance=instance, reason="timeout")
            except BodyError as error:
                return _Outcome(
                    error.status,
                    instance=instance,
                    reason=_BODY_ERRORS.get(error.status, "bad_request"),
                )
            finally:
                if not streaming:
                    instance.finished()

    # ------------------------------------------------------------------ mirroring
    def _spawn_mirror(
        self,
        live: Deployment,
        mirror: Deployment,
        method: bytes,
        target: bytes,
        head_rest: bytes,
        body: bytes,
        request_id: bytes,
        stream: BodyStream | None = None,
    ) -> Pair:
        """Start the copy; the pair meets the live answer for the shadow comparison.

        A streamed body is copied as it goes to the live deployment, and only up to
        shadow_comparison.max_body_bytes: the copy starts once it is in; a larger body is
        not mirrored (its comparison counts as not_compared)."""
        pair = Pair(live.name, mirror.name, self._compare)
        if stream is None:
            self._start_mirror(mirror, method, target, head_rest, body, request_id, pair)
            return pair
        limit = self.runtime.config.shadow_comparison.max_body_bytes

        def copied(whole: bytes | None) -> None:
            if whole is None:
                pair.shadow_answered(Answer(None, failure=Failure.DROPPED), time.perf_counter())
                return
            # The copy goes with a Content-Length (the caller's body may have come chunked).
            framed = head_rest.replace(
                b"\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"\r\nContent-Length: %d\r\n\r\n" % len(whole),
            )
            self._start_mirror(mirror, method, target, framed, whole, request_id, pair)

        if stream.length >= 0 and stream.length > limit:
            copied(None)
        else:
            stream.keep_copy(limit, copied)
        return pair

    def _start_mirror(
        self,
        mirror: Deployment,
        method: bytes,
        target: bytes,
        head_rest: bytes,
        body: bytes,
        request_id: bytes,
        pair: Pair,
    ) -> None:
        assert self._loop is not None
        task = self._loop.create_task(
            self._mirror(mirror, method, target, head_rest, body, request_id, pair)
        )
        # The loop keeps only weak references to tasks: hold them until they end.
        self._mirror_tasks.add(task)
        task.add_done_callback(self._mirror_tasks.discard)

    def _answer(self, outcome: _Outcome) -> Answer:
        """What the shadow comparison keeps of an outcome: the body only under the limit."""
        response = outcome.response
        if response is None:
            status = outcome.status
            failure = (
                Failure.TIMEOUT
                if status == 408
                else Failure.DROPPED
                if outcome.reason == "mirror_full"
                else Failure.ERROR
            )
            return Answer(None, failure=failure)
        body = response.body
        limit = self.runtime.config.shadow_comparison.max_body_bytes
        return Answer(response.status, body if len(body) <= limit else None)

    def _compare(self, pair: Pair) -> None:
        """Both answers are in: judge them and count (the bodies go with the pair).

        What needs no parsing, or only of small bodies, is judged here. Larger bodies go to
        a process of their own (`comparer`): parsing 1 MB of JSON numbers takes some 40 ms,
        and json.loads holds the GIL all along, so a thread would stall the event loop, and
        every caller it serves, as long. At most `_MAX_PENDING_COMPARISONS` go at a time
        (each holds two bodies); the others count as `not_compared`."""
        live, shadow = pair.live, pair.shadow
        assert live is not None and shadow is not None
        settings = self.runtime.config.shadow_comparison
        delta = pair.latency_delta()
        parses = (
            live.status is not None
            and live.status == shadow.status
            and live.body is not None
            and shadow.body is not None
            and len(live.body) + len(shadow.body) > _INLINE_COMPARE_BYTES
            and live.body != shadow.body
        )
        if not parses:
            try:
                result = judge(live, shadow, rtol=settings.rtol, atol=settings.atol)
            except Exception as error:  # a comparison must never take the router down
                self.log.warning("shadow.compare_failed", error=type(error).__name__)
                return
            self.metrics.shadow_compared(pair.live_name, pair.shadow_name, result, delta)
            return
        if self._comparing >= _MAX_PENDING_COMPARISONS:
            self.metrics.shadow_compared(
                pair.live_name, pair.shadow_name, Result.NOT_COMPARED, delta
            )
            return
        if self._compare_pool is None:
            self._compare_pool = comparer.new_pool()
        try:
            submitted = self._compare_pool.submit(
                judge, live, shadow, rtol=settings.rtol, atol=settings.atol
            )
        except BrokenProcessPool:
            self._compare_failed(BrokenProcessPool())
            return
        self._comparing += 1
        future = asyncio.wrap_future(submitted, loop=self._loop)
        future.add_done_callback(
            functools.partial(self._compared, pair.live_name, pair.shadow_name, delta)
        )

    def _compared(
        self, live: str, shadow: str, delta: float | None, future: asyncio.Future[Result]
    ) -> None:
        """A comparison from the comparing process is done (called on the loop)."""
        self._comparing -= 1
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            self._compare_failed(error)
            return
        self.metrics.shadow_compared(live, shadow, future.result(), delta)

    def _compare_failed(self, error: BaseException) -> None:
        self.log.warning("shadow.compare_failed", error=type(error).__name__)
        if isinstance(error, BrokenProcessPool) and self._compare_pool is not None:
            # The comparing process died (killed, out of memory): the next one starts anew.
            self._compare_pool.shutdown(wait=False, cancel_futures=True)
            self._compare_pool = None

    async def _mirror(
        self,
        mirror: Deployment,
        method: bytes,
        target: bytes,
        head_rest: bytes,
        body: bytes,
        request_id: bytes,
        pair: Pair,
    ) -> None:
        started = time.perf_counter()
        outcome = _Outcome(429, reason="mirror_full")
        try:
            if mirror.instances and mirror.try_admit():
                try:
                    outcome = await self._exchange(mirror, method, target, head_rest, body)
                finally:
                    mirror.release()
            elif not mirror.instances:
                outcome = _no_instance(mirror)
        except Exception as error:  # a copy must never take the router down
            outcome = _Outcome(502, reason="mirror_error")
            self.log.warning(
                "mirror.failed", request_id=request_id.decode(), error=type(error).__name__
            )
        finally:
            answered = time.perf_counter()
            status = _caller_status(outcome)
            self._record(None, started, request_id, status, mirror.name, MIRROR, outcome, len(body))
            pair.shadow_answered(self._answer(outcome), answered)

    # ------------------------------------------------------------------ swagger
    def _swagger(self, request: HttpRequest) -> Reply | Coroutine[Any, Any, Reply]:
        authorization, pin, given_id, forward = _inspect(request)
        request_id = _request_id(given_id)
        if request.method != b"GET":
            return _json_error(405, "use GET", request_id, allow=b"GET")
        failure = self._auth_failure(authorization)
        if failure is not None:
            self.metrics.auth_failed(failure)
            return _json_error(401, "unauthorized", request_id)
        runtime = self.runtime
        name = pin.decode("latin-1") if pin else runtime.chooser.pick(random.random())
        deployment = runtime.deployments.get(name) if name else None
        if deployment is None:
            return _json_error(404, "no deployment has traffic", request_id)
        forward += (b"x-request-id: ", request_id, b"\r\nContent-Length: 0\r\n\r\n")
        return self._fetch_swagger(deployment, request.query, b"".join(forward), request_id)

    async def _fetch_swagger(
        self, deployment: Deployment, query: bytes, head_rest: bytes, request_id: bytes
    ) -> Reply:
        outcome = await self._admitted(
            deployment, b"GET", deployment.swagger_path + query, head_rest, b""
        )
        return _caller_reply(outcome, deployment.name, request_id)

    # ------------------------------------------------------------------ admin
    def _admin_allowed(self, request: HttpRequest) -> bool:
        expected = self.runtime.config.admin_secret_hash
        credential = _credential(request.header(b"authorization"))
        if expected is None or credential is None:
            return False
        text = credential.decode("utf-8", "surrogateescape")
        return hmac.compare_digest(hash_key(text).encode(), expected.encode())

    def _admin(self, request: HttpRequest) -> Reply:
        request_id = _given_id(request)
        if not self._admin_allowed(request):
            self.metrics.auth_failed("admin")
            return _json_error(401, "unauthorized", request_id)
        if request.method == b"GET":
            return _json_reply(public_view(self.runtime.config), request_id)
        if request.method != b"POST":
            return _json_error(405, "use GET or POST", request_id, allow=b"GET, POST")
        if request.too_large:
            return _json_error(413, "config too large", request_id)
        try:
            config = parse_config(request.body)
        except ConfigError as error:
            self.metrics.config_reloaded("admin", "invalid")
            self.log.warning("config.invalid", source="admin", error=str(error))
            return _json_error(400, str(error), request_id)
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
        return _json_reply({"applied": True, "digest": config.digest()}, request_id)

    def _instances(self, request: HttpRequest) -> Reply:
        request_id = _given_id(request)
        if not self._admin_allowed(request):
            self.metrics.auth_failed("admin")
            return _json_error(401, "unauthorized", request_id)
        if request.method != b"GET":
            return _json_error(405, "use GET", request_id, allow=b"GET")
        return _json_reply(health_view(self.runtime), request_id)

    def _state_digest(self, request: HttpRequest) -> Reply:
        """The digest of the endpoint's state files as they are in the config's folder
        (the Docker target's state volume): the target reads them through Docker only when
        this is not the digest of the files it knows. Read from the folder at each call
        (a few small files), so a change by anyone is seen, not only the router's own."""
        request_id = _given_id(request)
        if not self._admin_allowed(request):
            self.metrics.auth_failed("admin")
            return _json_error(401, "unauthorized", request_id)
        if request.method != b"GET":
            return _json_error(405, "use GET", request_id, allow=b"GET")
        path = self.config_path
        if path is None or path.name != ROUTER_CONFIG:
            return _json_error(404, "no state folder", request_id)
        try:
            files = read_state_folder(path.parent)
        except OSError as error:
            return _json_error(503, f"state unreadable: {error.strerror}", request_id)
        return _json_reply({"digest": state_digest(files)}, request_id)

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
        self._digest_reply = _digest_reply(config)
        if self.workers > 1:
            report_served(config.digest())
        self._key_digests = key_digests(config.key_hashes)
        self._access_log = config.access_log
        if self._http is not None:
            self._http.max_body = config.max_body_bytes
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

    # ------------------------------------------------------------------ metrics and logs
    def _record(
        self,
        request: HttpRequest | None,
        started: float,
        request_id: bytes,
        status: int,
        deployment: str,
        kind: str,
        outcome: _Outcome | None,
        bytes_in: int,
        reason: str = "",
        bytes_streamed: int = -1,
    ) -> None:
        """Metrics and the access line of one answered request (or mirrored copy);
        `bytes_streamed` the size of a streamed answer's body."""
        elapsed = time.perf_counter() - started
        self.metrics.observe(deployment, kind, status, elapsed)
        if not self._access_log:
            return
        if outcome is None:
            address = backend_status = None
            bytes_out = 0
        else:
            reason = reason or outcome.reason
            instance = outcome.instance
            address = instance.address if instance is not None else None
            response = outcome.response
            if response is None:
                backend_status = None
                bytes_out = 0
            else:
                backend_status = response.status
                bytes_out = len(response.body) if bytes_streamed < 0 else bytes_streamed
        if request is None:
            method, path = b"POST", None
        else:
            method, path = request.method, request.path
        self.access_log.request(
            request_id,
            method,
            path,
            status,
            deployment,
            kind,
            address,
            backend_status,
            elapsed,
            bytes_in,
            bytes_out,
            reason,
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(
        self, *, host: str, port: int, metrics_port: int | None, reuse_port: bool = False
    ) -> tuple[int, int | None]:
        """Listen; returns the bound ports (useful with port 0). No metrics port: None."""
        # Kept rather than asked for: in Python 3.11 asyncio.get_running_loop() costs a
        # getpid() system call.
        self._loop = loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(loop)
        self._http = HttpServer(
            self.handle, max_body=self.runtime.config.max_body_bytes, expect=self.expect
        )
        bound = await self._http.listen(host, port, reuse_port=reuse_port)
        metrics_bound: int | None = None
        if metrics_port is not None:
            self._metrics_http = HttpServer(self._metrics_handler, max_body=_METRICS_MAX_BODY)
            metrics_bound = await self._metrics_http.listen(host, metrics_port)
        prober = Prober(self.runtime, log=self.log, clock=loop.time)
        self._background = [
            loop.create_task(self._watch_config()),
            loop.create_task(self._sample_metrics()),
            loop.create_task(prober.run(self._stop)),
        ]
        return bound, metrics_bound

    def _metrics_handler(self, request: HttpRequest) -> Reply:
        if request.error:
            return Reply(request.error, _TEXT, b"bad request")
        if request.path != "/metrics":
            return Reply(404, _TEXT, b"metrics are at /metrics")
        content_type = b"Content-Type: %s\r\n" % METRICS_CONTENT_TYPE.encode("ascii")
        return Reply(200, content_type, generate_latest(self.registry))

    async def stop(self) -> None:
        """Drain: fail readiness, stop accepting, let requests in flight finish."""
        self._draining = True
        self._stop.set()
        if self._http is not None:
            await self._http.shutdown(_DRAIN_TIMEOUT_S)
        if self._metrics_http is not None:
            await self._metrics_http.shutdown(1.0)
        for task in self._background:
            task.cancel()
        for task in list(self._mirror_tasks):
            task.cancel()
        await asyncio.gather(*self._background, *self._mirror_tasks, return_exceptions=True)
        if self._deadlines is not None:
            self._deadlines.close()
        if self._compare_pool is not None:
            # Waits for a comparison under way (tens of ms) and the process's exit.
            self._compare_pool.shutdown(wait=True, cancel_futures=True)
        self.runtime.close()
        logs.flush()

    def begin_drain(self) -> None:
        self._draining = True


def _is_v2(path: str) -> bool:
    return path == V2_PATH or path.startswith("/v2/")


def _forwarded_target(request: HttpRequest) -> bytes:
    """The request target a v2 request is forwarded with: as the caller sent it (its
    percent-encoding kept), or built from the path of an absolute-form target."""
    target = request.target
    if target[:1] == b"/":
        return target
    path = request.path.encode("utf-8", "surrogateescape")
    return quote(path, safe="/:@!$&'()*+,;=-._~").encode("ascii") + request.query


def _given_id(request: HttpRequest) -> bytes:
    """The request id of a request off the scoring path (no single pass over the headers)."""
    return _request_id(request.header(b"x-request-id"))


def _no_instance(deployment: Deployment) -> _Outcome:
    # Instances listed but none ready (their readiness route fails) is not the same news
    # as none at all: the caller's message says which.
    return _Outcome(503, reason="no_ready_instance" if deployment.members else "no_instance")


def _caller_status(outcome: _Outcome) -> int:
    if outcome.response is not None and not 200 <= outcome.status < 300:
        return 424
    return outcome.status


def _bytes_in(request: HttpRequest) -> int:
    stream = request.stream
    return len(request.body) if stream is None else request.received


def _caller_reply(
    outcome: _Outcome, deployment: str, request_id: bytes, relay: _Relay | None = None
) -> Reply:
    response = outcome.response
    if response is None:
        message = _REASON_MESSAGES.get(outcome.reason) or _OUTCOME_MESSAGES.get(
            outcome.status, "error"
        )
        return _json_error(outcome.status, message, request_id, deployment)
    parts: list[bytes] = []
    passed = _PASSED_RESPONSE_HEADERS
    for name, value in response.headers:
        keep = passed.get(name)
        if keep is None:
            keep = _passed_response_header(name)
        if keep:
            parts += (name, b": ", value, b"\r\n")
    parts += (
        b"azureml-model-deployment: ",
        deployment.encode(),
        b"\r\nx-request-id: ",
        request_id,
        b"\r\n",
    )
    status = response.status
    if not 200 <= status < 300:
        parts += (
            b"ms-azureml-model-error-statuscode: %d\r\n" % status,
            b"ms-azureml-model-error-reason: ",
            response.reason.strip(),
            b"\r\n",
        )
        status = 424
    if relay is not None:
        return Reply(status, b"".join(parts), stream=relay, length=response.length)
    return Reply(status, b"".join(parts), response.body)


class _Sent(Later):
    """A live request sent by `RouterServer._dispatch` on a kept-alive connection, without a
    task: `answered` (a callback of the loop) does what `_forward` does after the exchange:
    the outcome, the caller's answer (it is the `Later` the handler returned: one object
    less a request), then metrics, the access line and the comparison of a mirrored
    request. A stale connection (closed by the backend while idle) hands over to
    `_forward`, which tries the instance on a new connection, then the others, as
    `_exchange` does."""

    __slots__ = (
        "body",
        "deadline",
        "deployment",
        "head_rest",
        "instance",
        "method",
        "pair",
        "request",
        "request_id",
        "server",
        "started",
        "target",
    )

    def __init__(
        self,
        server: RouterServer,
        request: HttpRequest,
        started: float,
        request_id: bytes,
        deployment: Deployment,
        instance: Instance,
        method: bytes,
        target: bytes,
        head_rest: bytes,
        body: bytes,
        pair: Pair | None,
        deadline: float,
    ) -> None:
        self.server = server
        self.request = request
        self.started = started
        self.request_id = request_id
        self.deployment = deployment
        self.instance = instance
        self.method = method
        self.target = target
        self.head_rest = head_rest
        self.body = body
        self.pair = pair
        self.deadline = deadline
        # Later's own fields, set here rather than by a call of its __init__.
        self._conn = self._request = self._reply = None

    def answered(self, response: UpstreamResponse | None, error: BaseException | None) -> None:
        """`UpstreamPool.send_idle`'s callback: the answer, or the error of the exchange."""
        server = self.server
        deployment = self.deployment
        instance = self.instance
        request = self.request
        try:
            streaming = False
            if response is not None:
                streaming = response.stream is not None
                outcome = _Outcome(response.status, response=response, instance=instance)
            elif isinstance(error, BackendUnreachable):
                instance.finished()
                self._go_on()
                return
            elif isinstance(error, BadResponse):
                outcome = _Outcome(502, instance=instance, reason="bad_response")
            elif isinstance(error, TimeoutError):
                outcome = _Outcome(408, instance=instance, reason="timeout")
            else:
                instance.finished()
                deployment.release()
                raise error or AssertionError("an exchange ended without answer or error")
            if not streaming:
                instance.finished()
            name = deployment.name
            if streaming:
                # The slot, metrics and the comparison wait for the stream's end.
                relay = _Relay(
                    server, request, self.started, self.request_id, deployment, outcome, self.pair
                )
                self.done(_caller_reply(outcome, name, self.request_id, relay))
                return
            deployment.release()
            reply = _caller_reply(outcome, name, self.request_id)
        except Exception:
            failed = handler_failed()
            server._record(
                request, self.started, self.request_id, 500, deployment.name, LIVE, None, 0, "error"
            )
            if self.pair is not None:
                self.pair.live_answered(Answer(None, failure=Failure.ERROR), time.perf_counter())
            self.done(failed)
            return
        self.done(reply)
        # After the answer is written: off the caller's latency. (`_caller_status` and
        # `_bytes_in` inlined: the body came whole, as `send_idle` is only used for those.)
        status = outcome.status
        if outcome.response is not None and not 200 <= status < 300:
            status = 424
        server._record(
            request, self.started, self.request_id, status, name, LIVE, outcome, len(request.body)
        )
        if self.pair is not None:
            self.pair.live_answered(server._answer(outcome), time.perf_counter())

    def _go_on(self) -> None:
        """The kept-alive connection was stale: on with `_forward`, in a task."""
        server = self.server
        work = server._forward(
            self.request,
            self.started,
            self.request_id,
            self.deployment,
            self.method,
            self.target,
            self.head_rest,
            self.body,
            self.pair,
            admitted=True,
            first=self.instance,
            deadline=self.deadline,
        )
        assert server._loop is not None
        task = server._loop.create_task(complete(self, work))
        # The loop keeps only weak references to tasks: hold them until they end.
        server._live_tasks.add(task)
        task.add_done_callback(server._live_tasks.discard)


class _Relay:
    """A streamed live answer on its way: the caller's `Reply.stream`, and the sink of the
    backend's body. At its end (or break), the request is done: the instance's and the
    deployment's slots are freed, metrics and the access line recorded (the duration is to
    the stream's end) and, for a mirrored request, the live answer handed to the comparison,
    its body copied only up to shadow_comparison.max_body_bytes."""

    __slots__ = (
        "_copy",
        "_copy_limit",
        "_deployment",
        "_done",
        "_outcome",
        "_pair",
        "_request",
        "_request_id",
        "_server",
        "_sink",
        "_started",
        "sent",
    )

    def __init__(
        self,
        server: RouterServer,
        request: HttpRequest,
        started: float,
        request_id: bytes,
        deployment: Deployment,
        outcome: _Outcome,
        pair: Pair | None,
    ) -> None:
        self._server = server
        self._request = request
        self._started = started
        self._request_id = request_id
        self._deployment = deployment
        self._outcome = outcome
        self._pair = pair
        self._sink: BodySink | None = None
        self._done = False
        self.sent = 0
        self._copy_limit = server.runtime.config.shadow_comparison.max_body_bytes
        self._copy: list[bytes] | None = [] if pair is not None else None

    def _source(self) -> StreamSource:
        response = self._outcome.response
        assert response is not None and response.stream is not None
        return response.stream

    # http.StreamSource
    def attach(self, sink: BodySink) -> None:
        self._sink = sink
        self._source().attach(self)

    def pause(self) -> None:
        if not self._done:
            self._source().pause()

    def resume(self) -> None:
        if not self._done:
            self._source().resume()

    def cancel(self) -> None:
        if not self._done:
            self._source().cancel()
            self._finish(_caller_status(self._outcome), "client_gone", complete=False)

    # upstream.BodySink
    def data(self, piece: bytes) -> None:
        self.sent += len(piece)
        copy = self._copy
        if copy is not None:
            if self.sent > self._copy_limit:
                self._copy = None
            else:
                copy.append(piece)
        if self._sink is not None:
            self._sink.data(piece)

    def end(self) -> None:
        if self._sink is not None:
            self._sink.end()
        self._finish(_caller_status(self._outcome), "", complete=True)

    def fail(self, error: BaseException) -> None:
        if self._sink is not None:
            self._sink.fail(error)
        if isinstance(error, TimeoutError):
            self._finish(408, "stream_timeout", complete=False)
        else:
            self._finish(502, "stream_broken", complete=False)

    def _finish(self, status: int, reason: str, *, complete: bool) -> None:
        if self._done:
            return
        self._done = True
        server = self._server
        outcome = self._outcome
        if outcome.instance is not None:
            outcome.instance.finished()
        self._deployment.release()
        server._record(
            self._request,
            self._started,
            self._request_id,
            status,
            self._deployment.name,
            LIVE,
            outcome,
            _bytes_in(self._request),
            reason,
            self.sent,
        )
        pair = self._pair
        if pair is not None:
            response = outcome.response
            assert response is not None
            if complete:
                copy = self._copy
                answer = Answer(response.status, b"".join(copy) if copy is not None else None)
            else:
                failure = Failure.TIMEOUT if status == 408 else Failure.ERROR
                answer = Answer(None, failure=failure)
            pair.live_answered(answer, time.perf_counter())


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
        # Everything made so far (modules, config, metrics) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it (11 ms each,
        # every few thousand requests; seen at p99).
        gc.freeze()
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
