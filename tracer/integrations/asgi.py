"""ASGI middleware (Starlette, FastAPI, any ASGI app): one server span per HTTP request,
continuing the caller's trace.

    from starlette.applications import Starlette
    from tracer.integrations.asgi import TracerMiddleware

    app = Starlette(routes=[...])
    app.add_middleware(TracerMiddleware)      # or: app = TracerMiddleware(app)

Each HTTP request runs inside a span of type ``task`` named ``"<METHOD> <route>"``
(``GET /items/{item_id}``, the route template Starlette and FastAPI matched; the path when none
did), the child of the span named by the request's ``traceparent``/``tracestate``
(``tracer.propagation``), which is current while the app runs: spans the handler starts, and
calls it makes through a wrapped client (``tracer.integrations.httpx``/``requests``), nest under
it. See ``tracer.integrations.server_spans`` for what the span holds. WebSocket and lifespan
events pass through untraced. Pure ASGI: imports nothing from Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..context import current
from . import server_spans

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_WANTED = {b"traceparent": "traceparent", b"tracestate": "tracestate"}


class TracerMiddleware:
    """Wrap an ASGI app: each HTTP request in a server span (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method") or "GET")
        span = server_spans.start(method, str(scope.get("path") or "/"), _trace_headers(scope))
        if span is None:
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = message.get("status")
            await send(message)

        token = current.set(span)
        try:
            await self.app(scope, receive, send_status)
        except BaseException as exc:
            current.reset(token)
            server_spans.finish(span, method, _route(scope), status or 500, exc)
            raise
        current.reset(token)
        server_spans.finish(span, method, _route(scope), status)


def _trace_headers(scope: Scope) -> dict[str, str]:
    """``traceparent`` and ``tracestate`` of an ASGI request (lowercase byte names, as ASGI
    gives them); repeated headers joined with commas, as HTTP combines them."""
    found: dict[str, str] = {}
    for item in scope.get("headers") or ():
        name = _WANTED.get(item[0])
        if name is not None:
            value = item[1].decode("latin-1")
            found[name] = f"{found[name]},{value}" if name in found else value
    return found


def _route(scope: Scope) -> str | None:
    """The route template the app matched (Starlette and FastAPI leave the route in the scope),
    under the path it is mounted at; None when none matched."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    if hasattr(route, "routes"):  # a Mount whose app is no router: its template is the route
        return template
    root = scope.get("root_path") or ""
    return f"{root}{template}" if isinstance(root, str) else template
