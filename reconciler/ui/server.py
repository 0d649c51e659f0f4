"""The dashboard's web server (aiohttp): pages, JSON API, server-sent events.

    GET /                               overview of every endpoint (HTML)
    GET /endpoints/NAME                 one endpoint: deployments, history (HTML)
    GET /api/endpoints                  the overview's data (JSON)
    GET /api/endpoints/NAME             one endpoint's data (JSON)
    GET /api/endpoints/NAME/history     its status history, newest first (JSON)
    GET /api/events                     server-sent events: `status` when the data changes
    GET /static/style.css, /static/live.js

Read-only: every route is a GET. build_app takes any StatusSource, so the daemon can mount
the same application over its own state. Security: every response carries a strict
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
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from reconciler.ui import data, render
from reconciler.ui.source import StatusSource

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
STATIC_TYPES = {"style.css": "text/css", "live.js": "text/javascript"}


@dataclass(frozen=True, slots=True)
class UiOptions:
    """token: required on every request when set (None: none, for 127.0.0.1 only);
    poll_s: how often the status branch is looked at for server-sent events;
    history_limit: status commits shown in an endpoint's timeline."""

    token: str | None = None
    poll_s: float = 2.0
    history_limit: int = 50


class _Hub:
    """Polls the source's fingerprint while anyone listens; tells every listener when it
    changes. One poller for all the browsers, so git is asked once per interval."""

    def __init__(self, source: StatusSource, call: Callable[..., Awaitable[Any]], poll_s: float):
        self.source = source
        self.call = call
        self.poll_s = poll_s
        self.listeners: set[asyncio.Queue[str]] = set()
        self.current: str | None = None

    async def mark(self) -> str:
        fingerprint: str = await self.call(self.source.fingerprint)
        self.current = _digest(fingerprint)
        return self.current

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
            if now != before:
                for queue in list(self.listeners):
                    queue.put_nowait(now)


def _digest(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


_SOURCE: web.AppKey[StatusSource] = web.AppKey("source", StatusSource)
_OPTIONS = web.AppKey("options", UiOptions)
_HUB = web.AppKey("hub", _Hub)
_CALL: web.AppKey[Callable[..., Awaitable[Any]]] = web.AppKey("call")


def build_app(source: StatusSource, *, options: UiOptions | None = None) -> web.Application:
    """The dashboard as an aiohttp application, over any StatusSource."""
    options = options or UiOptions()
    # git is not thread-safe in one repository object: one worker thread for all reads.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reconcile-ui")

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args, **kwargs))

    app = web.Application(middlewares=[_auth_middleware(options.token)])
    app[_SOURCE] = source
    app[_OPTIONS] = options
    app[_CALL] = call
    app[_HUB] = _Hub(source, call, options.poll_s)
    app.on_response_prepare.append(_security_headers)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        poller = asyncio.create_task(app[_HUB].run())
        yield
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        pool.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/", overview_page)
    app.router.add_get("/endpoints/{name}", endpoint_page)
    app.router.add_get("/api/endpoints", api_endpoints)
    app.router.add_get("/api/endpoints/{name}", api_endpoint)
    app.router.add_get("/api/endpoints/{name}/history", api_history)
    app.router.add_get("/api/events", events)
    app.router.add_get("/static/{file}", static_file)
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
            return await handler(request)
        offered = request.query.get("token")
        if offered is not None:
            if not _same(offered, token):
                return _refused()
            # The token leaves the address at once (history, logs, Referer): a cookie
            # carries it from here on.
            rest = {k: v for k, v in request.query.items() if k != "token"}
            target = request.path + (f"?{urlencode(rest)}" if rest else "")
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


def _same(offered: str, token: str) -> bool:
    return hmac.compare_digest(offered.encode(), token.encode())


def _refused() -> web.Response:
    return web.Response(
        status=401,
        text="a token is required: Authorization: Bearer TOKEN, or open the page with "
        "?token=TOKEN\n",
        headers={"WWW-Authenticate": 'Bearer realm="reconciler"'},
    )


async def _snapshot(request: web.Request) -> tuple[Any, str]:
    app = request.app
    snap = await app[_CALL](app[_SOURCE].snapshot)
    mark = await app[_HUB].mark()
    return snap, mark


async def overview_page(request: web.Request) -> web.Response:
    snap, mark = await _snapshot(request)
    return _html(render.overview_page(data.overview(snap), fingerprint=mark))


async def endpoint_page(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    snap, mark = await _snapshot(request)
    detail, timeline = await _detail(request, snap, name)
    if detail is None:
        return _html(render.not_found_page(name, fingerprint=mark), status=404)
    where = f"status branch {snap.branch} at {render.short(snap.status_commit)}"
    return _html(render.endpoint_page(detail, timeline, fingerprint=mark, where=where))


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
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    queue: asyncio.Queue[str] = asyncio.Queue()
    hub.listeners.add(queue)
    try:
        mark = await hub.mark()
        await response.write(_event(mark))
        while True:
            try:
                mark = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            await response.write(_event(mark))
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        hub.listeners.discard(queue)
    return response


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


async def start(
    source: StatusSource, *, host: str, port: int, options: UiOptions
) -> tuple[web.AppRunner, str]:
    """Serve the dashboard; returns the runner (cleanup() stops it) and its address."""
    runner = web.AppRunner(build_app(source, options=options), shutdown_timeout=1.0)
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
