"""The dashboard's web server (aiohttp): pages, JSON API, server-sent events.

    GET /                               overview of every endpoint (HTML)
    GET /endpoints/NAME                 one endpoint: deployments, history (HTML)
    GET /api/endpoints                  the overview's data (JSON)
    GET /api/endpoints/NAME             one endpoint's data (JSON)
    GET /api/endpoints/NAME/history     its status history, newest first (JSON)
    GET /api/events                     server-sent events: `status` when the data changes
    GET /static/style.css, /static/live.js

Served by the daemon (`reconcile watch --ui-port`, build_app with DaemonFeatures), also:

    GET /api/live                       the pass running now, the last pass, the last plans
    GET /api/endpoints/NAME/metrics     the charts' points per deployment (router metrics)
    GET /api/endpoints/NAME/logs        recent log lines of each deployment's instances
    POST /endpoints/NAME/test           the test form: a body sent through the router

Read-only apart from the test form (reconciler.ui.testform: CSRF token, bounded body, the
key used once). build_app takes any StatusSource, so the daemon mounts the same
application over its own state. Security: every response carries a strict
Content-Security-Policy (no inline script or style), nosniff and DENY framing; when a
token is configured (the CLI requires one when listening beyond 127.0.0.1), every request
must carry it as `Authorization: Bearer TOKEN` or in the cookie that `?token=TOKEN` sets,
compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import quote, unquote_plus, urlencode

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from reconciler.logs import get_logger
from reconciler.targets.base import TargetError
from reconciler.targets.capabilities import HasLogs
from reconciler.ui import data, livepages, render, testform
from reconciler.ui.live import DaemonFeatures
from reconciler.ui.sampler import MetricsSampler
from reconciler.ui.source import StatusSource

log = get_logger("reconciler.ui")

T = TypeVar("T")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
TOKEN_COOKIE = "reconciler_ui_token"
# Comment lines on an idle event stream, so proxies and browsers keep it open.
KEEPALIVE_S = 15.0
# How often a quiet event stream checks that its browser is still there.
STREAM_CHECK_S = 1.0
STATIC_TYPES = {"style.css": "text/css", "live.js": "text/javascript"}


@dataclass(frozen=True, slots=True)
class UiOptions:
    """token: required on every request when set (None: none, for 127.0.0.1 only);
    poll_s: how often the status branch is looked at for server-sent events;
    history_limit: status commits shown in an endpoint's timeline;
    max_streams: server-sent event streams open at once (beyond: 503, retry later)."""

    token: str | None = None
    poll_s: float = 2.0
    history_limit: int = 50
    # Event streams open at once: each holds a connection for as long as a page is open,
    # so without a bound a loop of requests exhausts the process's file descriptors.
    max_streams: int = 64


class _Hub:
    """Polls the source's fingerprint while anyone listens; tells every listener when it
    changes. One poller for all the browsers, so git is asked once per interval."""

    def __init__(
        self,
        source: StatusSource,
        call: Callable[..., Awaitable[Any]],
        poll_s: float,
        extra: Callable[[], str] = lambda: "",
    ):
        self.source = source
        self.call = call
        self.poll_s = poll_s
        # What else the pages draw that the source does not know of (the charts' version).
        self.extra = extra
        self.listeners: set[asyncio.Queue[str]] = set()
        self.current: str | None = None

    async def mark(self) -> str:
        """The data's fingerprint now. Pages and new listeners ask for it too, so it never
        touches `current`: only the poller's own readings decide what is a change (a page
        drawn at the moment of a change must not swallow the event every other listener
        needs)."""
        fingerprint: str = await self.call(self.source.fingerprint)
        return _digest(f"{fingerprint}\n{self.extra()}")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            if not self.listeners:
                continue
            before = self.current
            try:
                now = await self.mark()
            except Exception:  # a git hiccup must not end the streams: the next poll retries
                continue
            self.current = now
            if now != before:
                for queue in list(self.listeners):
                    queue.put_nowait(now)


def _digest(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


_SOURCE: web.AppKey[StatusSource] = web.AppKey("source", StatusSource)
_OPTIONS = web.AppKey("options", UiOptions)
_HUB = web.AppKey("hub", _Hub)
_CALL: web.AppKey[Callable[..., Awaitable[Any]]] = web.AppKey("call")
_TARGET_CALL: web.AppKey[Callable[..., Awaitable[Any]]] = web.AppKey("target_call")
_DAEMON = web.AppKey("daemon", DaemonFeatures)
_SAMPLER = web.AppKey("sampler", MetricsSampler)
_SECRET = web.AppKey("secret", bytes)


def build_app(
    source: StatusSource,
    *,
    options: UiOptions | None = None,
    daemon: DaemonFeatures | None = None,
) -> web.Application:
    """The dashboard as an aiohttp application, over any StatusSource; with `daemon`, the
    daemon's live parts too (charts, logs, plans, the test form)."""
    options = options or UiOptions()
    # git is not thread-safe in one repository object: one worker thread for all reads.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile-ui")
    # The target's calls (metrics, logs) on threads of their own: a slow router never
    # holds up a page's git reads.
    target_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="reconcile-ui-target")

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args, **kwargs))

    async def target_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            target_pool, partial(fn, *args, **kwargs)
        )

    # Bounds every request body: only the test form has one.
    app = web.Application(
        middlewares=[_auth_middleware(options.token)], client_max_size=testform.MAX_FORM_BYTES
    )
    app[_SOURCE] = source
    app[_OPTIONS] = options
    app[_CALL] = call
    app[_TARGET_CALL] = target_call
    sampler: MetricsSampler | None = None
    if daemon is not None:
        sampler = MetricsSampler(daemon, run_blocking=target_call)
        app[_DAEMON] = daemon
        app[_SAMPLER] = sampler
        # Signs the test form's session tokens; lives as long as the process.
        app[_SECRET] = secrets.token_bytes(32)
    app[_HUB] = _Hub(
        source, call, options.poll_s, extra=(lambda: str(sampler.version)) if sampler else str
    )
    app.on_response_prepare.append(_security_headers)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(app[_HUB].run())]
        if sampler is not None:
            tasks.append(asyncio.create_task(sampler.run()))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pool.shutdown(wait=False, cancel_futures=True)
        target_pool.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/", overview_page)
    app.router.add_get("/endpoints/{name}", endpoint_page)
    app.router.add_get("/api/endpoints", api_endpoints)
    app.router.add_get("/api/endpoints/{name}", api_endpoint)
    app.router.add_get("/api/endpoints/{name}/history", api_history)
    app.router.add_get("/api/events", events)
    app.router.add_get("/static/{file}", static_file)
    if daemon is not None:
        app.router.add_get("/api/live", api_live)
        app.router.add_get("/api/endpoints/{name}/metrics", api_metrics)
        app.router.add_get("/api/endpoints/{name}/logs", api_logs)
        app.router.add_post("/endpoints/{name}/test", test_request)
    return app


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value


def _auth_middleware(token: str | None) -> Any:
    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if token is None:
            # Without a token the dashboard listens on 127.0.0.1 only; a web page whose
            # host name an attacker points at 127.0.0.1 (DNS rebinding) would still be
            # same-origin with it, so only this machine's own names are answered.
            if not _loopback_host(request.host):
                return web.Response(
                    status=421,
                    text="this dashboard answers to localhost and 127.0.0.1 only; serve it "
                    "with a token to reach it by another name\n",
                )
            return await handler(request)
        offered = request.query.get("token")
        if offered is not None:
            if not _same(offered, token):
                return _refused()
            # The token leaves the address at once (history, logs, Referer): a cookie
            # carries it from here on.
            rest = {k: v for k, v in request.query.items() if k != "token"}
            target = _same_site_path(request.rel_url.raw_path) + (
                f"?{urlencode(rest)}" if rest else ""
            )
            response = web.Response(status=303, headers={"Location": target})
            response.set_cookie(
                TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/", secure=False
            )
            return response
        header = request.headers.get("Authorization", "")
        bearer = header[7:] if header.startswith("Bearer ") else None
        cookie = request.cookies.get(TOKEN_COOKIE)
        if (bearer is not None and _same(bearer, token)) or (
            cookie is not None and _same(cookie, token)
        ):
            return await handler(request)
        return _refused()

    return auth


def _same_site_path(raw_path: str) -> str:
    """The request's path as a Location on this site: kept percent-encoded as it came (a
    decoded %0d%0a would split the response, a decoded %2F%2F or %5C name another host),
    anything not plain ASCII encoded, and one leading slash only ("//host" and "/\\host"
    are other sites to a browser)."""
    return "/" + quote(raw_path, safe="/%:@!$&'()*+,;=-._~").lstrip("/")


def _loopback_host(host: str) -> bool:
    """Whether a Host header names this machine: localhost or a loopback address, with
    or without a port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _same(offered: str, token: str) -> bool:
    # surrogatepass: header bytes that are not UTF-8 arrive as lone surrogates, which
    # plain encode() refuses (a 500); each still encodes to bytes no token has.
    return hmac.compare_digest(
        offered.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass")
    )


def _refused() -> web.Response:
    return web.Response(
        status=401,
        text="a token is required: Authorization: Bearer TOKEN, or open the page with "
        "?token=TOKEN\n",
        headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
    )


async def _snapshot(request: web.Request) -> tuple[Any, str]:
    app = request.app
    # The mark first: the data read after it is at least as new, so a page never claims a
    # fingerprint newer than what it shows (it would never be refreshed again).
    mark = await app[_HUB].mark()
    snap = await app[_CALL](app[_SOURCE].snapshot)
    return snap, mark


async def overview_page(request: web.Request) -> web.Response:
    snap, mark = await _snapshot(request)
    daemon = request.app.get(_DAEMON)
    line = livepages.daemon_line(_live_view(daemon)) if daemon else render.EMPTY
    return _html(render.overview_page(data.overview(snap), fingerprint=mark, daemon=line))


async def endpoint_page(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    snap, mark = await _snapshot(request)
    detail, timeline = await _detail(request, snap, name)
    if detail is None:
        return _html(render.not_found_page(name, fingerprint=mark), status=404)
    where = f"status branch {snap.branch} at {render.short(snap.status_commit)}"
    daemon = request.app.get(_DAEMON)
    if daemon is None:
        return _html(render.endpoint_page(detail, timeline, fingerprint=mark, where=where))
    session = request.cookies.get(testform.SESSION_COOKIE) or secrets.token_urlsafe(32)
    deployments = [str(d["name"]) for d in detail.get("deployments") or []]
    live = render.join(
        [
            livepages.live_block(daemon.recorder.view(name)),
            livepages.charts_block(request.app[_SAMPLER].data(name)),
            livepages.logs_block(await _logs(request, name, deployments)),
        ]
    )
    form = livepages.test_form(
        name,
        deployments,
        csrf=testform.csrf_token(request.app[_SECRET], session),
        problem=_form_problem(daemon, name),
    )
    response = _html(
        render.endpoint_page(detail, timeline, fingerprint=mark, where=where, live=live, after=form)
    )
    if request.cookies.get(testform.SESSION_COOKIE) != session:
        response.set_cookie(
            testform.SESSION_COOKIE, session, httponly=True, samesite="Strict", path="/"
        )
    return response


async def _detail(
    request: web.Request, snap: Any, name: str
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    app = request.app
    doc = snap.docs.get(name)
    if doc is None:
        return None, {}
    commit = doc.get("commit")
    desired = await app[_CALL](app[_SOURCE].desired, commit) if isinstance(commit, str) else None
    revisions = await app[_CALL](app[_SOURCE].history, name, limit=app[_OPTIONS].history_limit)
    return data.endpoint_detail(snap, name, desired), data.history(name, revisions)


async def api_endpoints(request: web.Request) -> web.Response:
    snap, _ = await _snapshot(request)
    return _json(data.overview(snap))


async def api_endpoint(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    snap, _ = await _snapshot(request)
    detail, _timeline = await _detail(request, snap, name)
    if detail is None:
        return _json({"error": f"no endpoint {name} on the status branch"}, status=404)
    return _json(detail)


async def api_history(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    snap, _ = await _snapshot(request)
    if name not in snap.docs:
        return _json({"error": f"no endpoint {name} on the status branch"}, status=404)
    app = request.app
    revisions = await app[_CALL](app[_SOURCE].history, name, limit=app[_OPTIONS].history_limit)
    return _json(data.history(name, revisions))


async def events(request: web.Request) -> web.StreamResponse:
    """`status` events carrying the data's fingerprint: one at once, then one per change."""
    hub = request.app[_HUB]
    if len(hub.listeners) >= request.app[_OPTIONS].max_streams:
        # The pages work without their stream (live.js retries, as EventSource does).
        return web.Response(
            status=503,
            text="too many event streams open; retry later\n",
            headers={"Retry-After": "10"},
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    queue: asyncio.Queue[str] = asyncio.Queue()
    hub.listeners.add(queue)
    try:
        sent = await hub.mark()
        await response.write(_event(sent))
        quiet = 0.0
        while True:
            # A stream whose browser went away frees its place within a second, not at
            # the next keep-alive (the handler is not cancelled when a client leaves).
            if request.transport is None or request.transport.is_closing():
                break
            try:
                mark = await asyncio.wait_for(queue.get(), timeout=STREAM_CHECK_S)
            except TimeoutError:
                quiet += STREAM_CHECK_S
                if quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    await response.write(b": keep-alive\n\n")
                continue
            quiet = 0.0
            # The poller's first reading (or one this stream already carried) is no change.
            if mark != sent:
                sent = mark
                await response.write(_event(mark))
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        hub.listeners.discard(queue)
    return response


async def api_live(request: web.Request) -> web.Response:
    return _json(_live_view(request.app[_DAEMON]))


def _live_view(daemon: DaemonFeatures) -> dict[str, Any]:
    return {"daemon": dict(daemon.daemon_status()), **daemon.recorder.view()}


async def api_metrics(request: web.Request) -> web.Response:
    return _json(request.app[_SAMPLER].data(request.match_info["name"]))


async def api_logs(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    snap, _ = await _snapshot(request)
    doc = snap.docs.get(name)
    if doc is None:
        return _json({"error": f"no endpoint {name}"}, status=404)
    deployments = sorted(str(d) for d in (doc.get("deployments") or {}))
    return _json(await _logs(request, name, deployments))


async def _logs(request: web.Request, endpoint: str, deployments: list[str]) -> dict[str, Any]:
    """Recent lines of each deployment's instances, by the target's HasLogs."""
    daemon = request.app[_DAEMON]
    target = daemon.target()
    out: dict[str, Any] = {"endpoint": endpoint, "lines": daemon.log_lines, "deployments": {}}
    if not isinstance(target, HasLogs):
        return out
    for name in deployments:
        try:
            text: str = await request.app[_TARGET_CALL](
                target.logs, endpoint, name, lines=daemon.log_lines
            )
            out["deployments"][name] = {"text": text, "problem": None}
        except TargetError as exc:
            out["deployments"][name] = {"text": None, "problem": str(exc)}
    return out


def _scoring_uri(daemon: DaemonFeatures, endpoint: str) -> str | None:
    """The scoring URI the target showed at the daemon's last pass (not the status
    branch's copy: what the form reaches comes from the target itself)."""
    live = daemon.recorder.live_state()
    found = live.endpoint(endpoint) if live is not None else None
    return found.scoring_uri if found is not None else None


def _form_problem(daemon: DaemonFeatures, endpoint: str) -> str:
    uri = _scoring_uri(daemon, endpoint)
    if uri is None:
        return "The endpoint has no scoring URI on the target yet."
    if not testform.loopback(uri):
        return "The test form reaches only routers on this machine; use `reconcile invoke`."
    return ""


async def test_request(request: web.Request) -> web.Response:
    """The test form's POST: CSRF checked, the body bounded and JSON, the key used once."""
    name = request.match_info["name"]
    app = request.app
    daemon = app[_DAEMON]
    origin = request.headers.get("Origin")
    # Browsers send "null" under the pages' Referrer-Policy (no-referrer): the session
    # token below is what proves the form is ours; a named other origin is refused first.
    same = ("null", f"http://{request.host}", f"https://{request.host}")
    if origin is not None and origin not in same:
        log.warning("ui_test_refused", endpoint=name, why="cross-origin")
        return web.Response(status=403, text="refused: a request from another site\n")
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        return web.Response(
            status=413, text=f"refused: the form is larger than {testform.MAX_FORM_BYTES} bytes\n"
        )
    session = request.cookies.get(testform.SESSION_COOKIE)
    offered = form.get("csrf")
    if not testform.csrf_valid(
        app[_SECRET], session, offered if isinstance(offered, str) else None
    ):
        log.warning("ui_test_refused", endpoint=name, why="csrf")
        return web.Response(
            status=403, text="refused: the form's session token is missing or wrong; reload\n"
        )
    key, body, pin = form.get("key"), form.get("body"), form.get("deployment") or ""
    if not isinstance(key, str) or not key.strip() or not isinstance(body, str):
        return _test_page(name, status=400, problem="Give the key and a request body.")
    if not isinstance(pin, str):
        return _test_page(name, status=400, problem="The deployment is not a name.")
    if not testform.header_safe(key.strip()):
        # Said here, not left to the HTTP client's ValueError (a 500); the key not echoed.
        return _test_page(
            name,
            status=400,
            problem="The key holds a line break or another control character: an HTTP "
            "header cannot carry it.",
        )
    try:
        json.loads(body)
    except ValueError as exc:
        return _test_page(name, status=400, problem=f"The request body is not JSON: {exc}")
    snap, _ = await _snapshot(request)
    doc = snap.docs.get(name) or {}
    if pin and (pin not in (doc.get("deployments") or {}) or not testform.header_safe(pin)):
        return _test_page(name, status=400, problem=f"{name} has no deployment {pin!r}.")
    problem = _form_problem(daemon, name)
    uri = _scoring_uri(daemon, name)
    if problem or uri is None:
        return _test_page(name, status=409, problem=problem)
    try:
        answer = await testform.send(
            uri, key=key.strip(), deployment=pin or None, body=body.encode()
        )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        # The exception names the address, never the key (it is only in a header).
        log.warning(
            "ui_test_failed", endpoint=name, deployment=pin or None, error=type(exc).__name__
        )
        return _test_page(
            name, status=502, problem=f"The router did not answer: {type(exc).__name__}."
        )
    finally:
        del key
    log.info(
        "ui_test_sent",
        endpoint=name,
        deployment=pin or None,
        status=answer.status,
        answered_by=answer.deployment,
        seconds=round(answer.seconds, 3),
    )
    shown = answer.body
    if not answer.truncated:
        with contextlib.suppress(ValueError):
            shown = json.dumps(json.loads(shown), indent=2, ensure_ascii=False)
    else:
        shown += "\n… (cut)"
    return _test_page(
        name,
        status=200,
        answer_status=answer.status,
        deployment=answer.deployment,
        body=shown,
        seconds=answer.seconds,
    )


def _test_page(
    name: str,
    *,
    status: int,
    problem: str = "",
    answer_status: int | None = None,
    deployment: str | None = None,
    body: str = "",
    seconds: float = 0.0,
) -> web.Response:
    body_html = livepages.test_result_page(
        name,
        status=answer_status,
        deployment=deployment,
        body=body,
        seconds=seconds,
        at=int(time.time()),
        problem=problem,
    )
    page = render.page(title=f"Test of {name}", body=body_html, fingerprint="", where="")
    return _html(page, status=status)


def _event(mark: str) -> bytes:
    return f"event: status\ndata: {json.dumps({'fingerprint': mark})}\n\n".encode()


_STATIC: dict[str, bytes] = {}


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in STATIC_TYPES:
        raise web.HTTPNotFound()
    if name not in _STATIC:
        _STATIC[name] = resources.files("reconciler.ui").joinpath("static", name).read_bytes()
    return web.Response(body=_STATIC[name], content_type=STATIC_TYPES[name], charset="utf-8")


def _html(text: str, *, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _json(value: Any, *, status: int = 200) -> web.Response:
    return web.json_response(value, status=status)


class _AccessLog(AbstractAccessLogger):
    """aiohttp's access log (INFO, seen when Python logging is turned on) without the
    token of a `?token=` address: aiohttp's own logs the request line as it came."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # As it came (percent-encoded: no line break can forge a log line), the token's
        # value left out.
        query = "&".join(
            "token=…" if unquote_plus(part.split("=", 1)[0]) == "token" else part
            for part in request.rel_url.raw_query_string.split("&")
            if part
        )
        self.logger.info(
            '%s "%s %s%s" %s %.3f',
            request.remote,
            request.method,
            request.rel_url.raw_path,
            f"?{query}" if query else "",
            response.status,
            time,
        )


async def start(
    source: StatusSource,
    *,
    host: str,
    port: int,
    options: UiOptions,
    daemon: DaemonFeatures | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve the dashboard; returns the runner (cleanup() stops it) and its address."""
    runner = web.AppRunner(
        build_app(source, options=options, daemon=daemon),
        shutdown_timeout=1.0,
        access_log_class=_AccessLog,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
    return runner, f"http://{shown}:{bound[1]}/"


def serve_forever(
    source: StatusSource,
    *,
    host: str,
    port: int,
    options: UiOptions,
    announce: Callable[[str], None],
) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM); `announce` gets the address once bound."""

    async def main() -> None:
        runner, url = await start(source, host=host, port=port, options=options)
        announce(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
