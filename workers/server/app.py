"""The trace server's application: routes, the API key, security headers, the viewer's files.

``make_app(store, api_key)`` is what ``tracer serve`` runs under uvicorn (and what tests serve).
The server only reads the store (``workers.store.base.StoreReader``), one reader per thread of
the thread pool that runs the endpoints, opened once the store exists and again when the file
at its path is replaced.

Security (docs/server.md):

- With an API key, every route but the login form needs it: ``Authorization: Bearer <key>``,
  or the session cookie the login form sets (HttpOnly, SameSite=Strict; its value is derived
  from the key, never the key itself). Keys are compared as SHA-256 digests with
  ``hmac.compare_digest``. A page asked for without it is sent to the login form; anything
  else is answered 401.
- Without a key (``tracer serve`` allows that on loopback only, unless ``--insecure``), a
  request must name a loopback host (``Host: 127.0.0.1:8585``, ``localhost``, ``[::1]``): a
  web page elsewhere cannot reach the server through a DNS name it made point at 127.0.0.1.
- Every response carries ``CSP`` and ``X-Content-Type-Options: nosniff`` (and does not let
  itself be framed, or send a referrer); API answers are not cached.
- Any failure is answered ``{"error": "internal error"}`` with 500: no traceback leaves.
- The reference SDK's API (``braintrust_api``: ``/logs3``, ``/v1/...``, the paths its
  ``handles`` names) is left to its routes as the ingest API is: Bearer keys, or for the
  uploads to its signed URLs, their tokens.
- The ingest API (``/api/v1/``: ``ingest_api``, writing through ``ingest``) takes only
  ``Authorization: Bearer <key>``, checked by its routes (``ingest_auth``): never the session
  cookie, so a web page cannot post rows with a signed-in user's cookie; and no loopback
  ``Host`` is asked of it (the key is what a rebinding page cannot have). OTLP in
  (``POST /v1/traces``: ``otlp_api``) is guarded the same way (its key may also come as
  ``x-api-key``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import os
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tracer import config

from ..store import StoreReader, open_store
from . import api, braintrust_api, ingest_api, otlp_api
from .ingest import DEFAULT_QUEUE_ROWS, Ingest
from .ingest_auth import KeyRing

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; "
       "img-src 'self' data: blob: http: https:; media-src 'self' data: blob:; "
       "object-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# An attachment may be framed by the viewer's own pages (a PDF previewed in an <object>), by
# nothing else; it still carries the `sandbox` policy api.attachment adds.
ATTACHMENT_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.replace("frame-ancestors 'none'",
                                             "frame-ancestors 'self'").encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"referrer-policy", b"no-referrer"),
]
COOKIE = "tracer_session"
# Served without the key: the sign-in form and its style sheet (which holds no data).
PUBLIC_PATHS = frozenset(("/login", "/static/login.css"))
WRONG_KEY = '<p class="error" role="alert">That is not the key.</p>'
LOOPBACK_HOSTS = frozenset(("127.0.0.1", "localhost", "[::1]", "::1"))
INGEST_PREFIX = "/api/v1/"  # the ingest API: Bearer keys only, checked by its routes
MAX_LOGIN_BODY = 4096

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Stores:
    """The store reader of each thread: opened on first use once the store exists, opened
    again when the file at the path is another (an aggregator made a new store)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[StoreReader] = []
        self._lock = threading.Lock()

    def reader(self) -> StoreReader | None:
        """This thread's reader, or None while there is no store at the path."""
        identity: tuple[int, int]
        if self.path.startswith(config.POSTGRES_SCHEMES):
            identity = (0, 0)  # a database is not replaced under its URL: one reader a thread
        else:
            try:
                info = os.stat(self.path)
            except FileNotFoundError:
                return None
            identity = (info.st_dev, info.st_ino)
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == identity:
            return held[1]
        if held is not None:
            self._close(held[1])
        try:
            reader = open_store(self.path, readonly=True)
        except FileNotFoundError:  # removed meanwhile; a database without a store's tables
            return None
        self._local.held = (identity, reader)
        with self._lock:
            self._all.append(reader)
        return reader

    def _close(self, reader: StoreReader) -> None:
        with self._lock:
            if reader in self._all:
                self._all.remove(reader)
        reader.close()

    def close(self) -> None:
        """Close every reader (at shutdown)."""
        with self._lock:
            readers, self._all = self._all, []
        for reader in readers:
            try:
                reader.close()
            except Exception:  # closing at exit: nothing left to tell
                pass


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def session_token(key: str) -> str:
    """The login cookie's value: derived from the key (which it never reveals)."""
    return hmac.new(key.encode("utf-8"), b"tracer serve session v1", hashlib.sha256).hexdigest()


class Guard:
    """ASGI middleware: security headers on every response; the API key (or, without one, a
    loopback Host) required before anything else runs."""

    def __init__(self, app: ASGIApp, api_key: str | None, check_host: bool) -> None:
        self.app = app
        self.key_digest = key_digest(api_key) if api_key else None
        self.token = session_token(api_key) if api_key else None
        self.check_host = check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = (ATTACHMENT_HEADERS if scope["path"].startswith("/api/attachments/")
                         else SECURITY_HEADERS)
                for name, value in extra:
                    if name == b"content-security-policy" or name not in names:
                        headers.append((name, value))
                if scope["path"].startswith("/api/") and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        path = request.url.path
        if (path.startswith(INGEST_PREFIX) or path == otlp_api.PATH
                or braintrust_api.handles(path)):
            return None  # their keys only: their routes check them, and never the cookie
        if self.check_host:
            host = (request.headers.get("host") or "").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in LOOPBACK_HOSTS:
                return api.error(400, "this server answers on a loopback address only (Host "
                                      "127.0.0.1 or localhost)")
        if self.key_digest is None or path in PUBLIC_PATHS:
            return None
        if self._authorized(request):
            return None
        if not path.startswith(("/api/", "/static/")) and request.method in ("GET", "HEAD"):
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?next=" + urllib.parse.quote(target, safe=""), 303)
        response = api.error(401, "this server needs its API key: Authorization: Bearer <key>")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def _authorized(self, request: Request) -> bool:
        assert self.key_digest is not None and self.token is not None
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() == "bearer" and presented and hmac.compare_digest(
                key_digest(presented.strip()), self.key_digest):
            return True
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return False
        return hmac.compare_digest(cookie.encode("utf-8", "replace"), self.token.encode())


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tracer: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/login.css"></head>
<body><main><h1>tracer</h1><p>This trace server needs its API key.</p>{message}
<form method="post" action="/login"><input type="hidden" name="next" value="{next}">
<label>API key <input type="password" name="key" autocomplete="current-password" autofocus>
</label> <button type="submit">Sign in</button></form></main></body></html>
"""


def _local_target(value: str | None) -> str:
    """Where to go after signing in: a path of this server, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(ch) < 0x20 for ch in value):
        return "/"
    return value


def make_app(store: str, api_key: str | None = None, *, check_host: bool | None = None,
             max_body: int = ingest_api.DEFAULT_MAX_BODY,
             max_blob: int = ingest_api.DEFAULT_MAX_BLOB,
             ingest_queue: int = DEFAULT_QUEUE_ROWS) -> Guard:
    """The trace server over the store at ``store`` (a path or a PostgreSQL URL): an ASGI
    application (the Starlette app, ``.app``, inside the ``Guard``, so that even an answer to a
    failure carries the headers). With ``api_key``, every route needs it. ``check_host``
    (default: without a key) refuses requests that do not name a loopback host. The viewer's
    routes only read; the ingest API (``/api/v1/``) writes through one writer thread
    (``ingest.Ingest``, its queue bounded to ``ingest_queue`` rows, bodies to ``max_body``
    bytes, blobs to ``max_blob``), which opens the store only once something is written; it
    takes ``api_key`` and the keys recorded in the store (``tracer keys create``)."""
    stores = Stores(store)
    ingest = Ingest(store, ingest_queue)

    def store_keys() -> list[dict]:
        try:
            reader = stores.reader()
        except FileNotFoundError:  # (a database without a store's tables yet)
            return []
        return [] if reader is None else reader.api_keys()
    token = session_token(api_key) if api_key else None
    digest = key_digest(api_key) if api_key else None

    def page(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"),
                            headers={"Cache-Control": "no-cache"})

    def login_form(request: Request) -> Response:
        target = _local_target(request.query_params.get("next"))
        return HTMLResponse(_LOGIN_PAGE.format(message="", next=html.escape(target)))

    async def login(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return api.error(400, "login: the form is too large")
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
        presented = (form.get("key") or [""])[0]
        target = _local_target((form.get("next") or ["/"])[0])
        if digest is None or token is None:
            return RedirectResponse(target, 303)
        if not hmac.compare_digest(key_digest(presented), digest):
            return HTMLResponse(_LOGIN_PAGE.format(message=WRONG_KEY,
                                                   next=html.escape(target)), 401)
        response = RedirectResponse(target, 303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response

    routes = [
        Route("/", page),
        Route("/status", page),
        Route("/p/{project:path}/logs", page),
        Route("/p/{project:path}/experiments", page),
        Route("/p/{project:path}/experiments/{experiment}", page),
        Route("/p/{project:path}/compare", page),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/api/projects", api.projects),
        Route("/api/projects/{project:path}/traces", api.project_traces),
        Route("/api/projects/{project:path}/experiments", api.experiments),
        Route("/api/experiments/{experiment_id:path}/traces", api.experiment_traces),
        Route("/api/traces/{root_span_id}", api.trace),
        Route("/api/traces/{root_span_id}/spans/{span_id}", api.span),
        Route("/api/compare", api.compare),
        Route("/api/attachments/{key}", api.attachment),
        Route("/api/stats", api.stats),
        Route("/api/v1/rows", ingest_api.post_rows, methods=["POST"]),
        *braintrust_api.routes(),
        Route("/api/v1/runs", ingest_api.post_run, methods=["POST"]),
        Route("/api/v1/attachments", ingest_api.post_attachments, methods=["POST"]),
        Route("/api/v1/blobs/{sha256}", ingest_api.head_blob, methods=["HEAD"]),
        Route("/api/v1/blobs/{sha256}", ingest_api.put_blob, methods=["PUT"]),
        Route("/api/v1/ping", ingest_api.ping, methods=["GET"]),
        Route(otlp_api.PATH, otlp_api.post_traces, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if (exc.status_code == 404 and request.method in ("GET", "HEAD")
                and not request.url.path.startswith(("/api/", "/static/"))
                and not braintrust_api.handles(request.url.path)):
            # A page that does not exist: the viewer says so (its own "not found" page).
            return FileResponse(os.path.join(STATIC_DIR, "index.html"), status_code=404,
                                headers={"Cache-Control": "no-cache"})
        response = api.error(exc.status_code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def internal_error(request: Request, exc: Exception) -> Response:
        return api.error(500, "internal error")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        ingest.close()
        stores.close()

    app = Starlette(routes=routes,
                    exception_handlers={HTTPException: http_error, Exception: internal_error},
                    lifespan=lifespan)
    app.state.stores = stores
    app.state.ingest = ingest
    app.state.keys = KeyRing(api_key, store_keys)
    app.state.limits = ingest_api.Limits(max_body, max_blob)
    app.state.braintrust = braintrust_api.BraintrustAPI(store, ingest, app.state.limits)
    app.router.redirect_slashes = False  # one URL per resource; anything else is not found
    return Guard(app, api_key, (api_key is None) if check_host is None else check_host)
