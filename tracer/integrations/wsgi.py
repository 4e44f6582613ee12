"""WSGI middleware (Flask, Django, any WSGI app): one server span per request, continuing the
caller's trace.

    from flask import Flask
    from tracer.integrations.wsgi import instrument_flask

    app = Flask(__name__)
    instrument_flask(app)       # any WSGI app: app = TracerWSGIMiddleware(app)

Each request runs inside a span of type ``task`` named ``"<METHOD> <route>"`` (Flask's URL rule,
``GET /items/<int:item_id>``, read from the request object werkzeug leaves in the environ; the
path otherwise), the child of the span named by the request's ``traceparent``/``tracestate``
(``tracer.propagation``), current while the app runs. The span ends when the server closes the
response (after its body is sent). ``instrument_flask`` also logs the exception of a view that
raised (Flask turns it into a 500 response, so the middleware alone sees only the status). See
``tracer.integrations.server_spans`` for what the span holds. Imports nothing from Flask or
werkzeug until ``instrument_flask`` is called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..context import current
from ..span import Span
from . import server_spans

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict, StartResponse], Iterable[bytes]]

# Where instrument_flask leaves, for the middleware, the URL rule of the request and the
# exception of a view that raised (Flask clears its request object before the response is
# closed).
ROUTE_KEY = "tracer.route"
EXCEPTION_KEY = "tracer.exception"


class TracerWSGIMiddleware:
    """Wrap a WSGI app: each request in a server span (see the module's docstring)."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD") or "GET")
        path = (environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or "/")
        headers = {name: environ[key] for name, key in (("traceparent", "HTTP_TRACEPARENT"),
                                                        ("tracestate", "HTTP_TRACESTATE"))
                   if isinstance(environ.get(key), str)}
        span = server_spans.start(method, path, headers)
        if span is None:
            return self.app(environ, start_response)
        response = _Response(span, method, environ)

        def start(status: str, response_headers: list, exc_info: Any = None) -> Any:
            response.status = _status_code(status)
            return start_response(status, response_headers, exc_info)

        token = current.set(span)
        try:
            body = self.app(environ, start)
        except BaseException as exc:
            current.reset(token)
            response.finish(exc)
            raise
        current.reset(token)
        response.body = body
        return response


class _Response:
    """The app's response body, passed on as it is; the span ends when the server closes it
    (WSGI servers must), or once it is read to the end if it has nothing to close. The span is
    not current while the body is read (that happens on the server's side, after the app
    returned)."""

    def __init__(self, span: Span, method: str, environ: dict) -> None:
        self.span = span
        self.method = method
        self.environ = environ
        self.status: int | None = None
        self.body: Iterable[bytes] = ()
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.body
        except BaseException as exc:
            self.finish(exc)
            raise
        if getattr(self.body, "close", None) is None:
            self.finish(None)  # nothing left to do at close

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.finish(None)

    def finish(self, exc: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        if exc is None:
            exc = self.environ.pop(EXCEPTION_KEY, None)
        status = self.status if self.status is not None or exc is None else 500
        server_spans.finish(self.span, self.method, _route(self.environ), status, exc)


def _status_code(status: object) -> int | None:
    """The code of a WSGI status line (``"200 OK"``)."""
    if not isinstance(status, str):
        return None
    code = status.split(" ", 1)[0]
    return int(code) if code.isdigit() and len(code) == 3 else None


def _route(environ: dict) -> str | None:
    """The URL rule Flask (``instrument_flask``) or another werkzeug app matched (werkzeug
    leaves its request object in the environ)."""
    rule = environ.get(ROUTE_KEY)
    if rule is None:
        rule = getattr(getattr(environ.get("werkzeug.request"), "url_rule", None), "rule", None)
    if not isinstance(rule, str):
        return None
    return (environ.get("SCRIPT_NAME") or "") + rule


def instrument_flask(app: Any) -> Any:
    """Trace a Flask app's requests: its ``wsgi_app`` wrapped in ``TracerWSGIMiddleware``, each
    span named after the URL rule the request matched, and the exception of a view that raised
    logged as its span's error. Idempotent; returns ``app``."""
    from flask import got_request_exception, request, request_started

    if isinstance(app.wsgi_app, TracerWSGIMiddleware):
        return app
    app.wsgi_app = TracerWSGIMiddleware(app.wsgi_app)

    def keep_route(sender: Any, **_: Any) -> None:
        rule = request.url_rule
        if rule is not None:
            request.environ[ROUTE_KEY] = rule.rule

    def keep_exception(sender: Any, exception: BaseException, **_: Any) -> None:
        request.environ[EXCEPTION_KEY] = exception

    # Held strongly (weak=False): the functions live as long as the app.
    request_started.connect(keep_route, app, weak=False)
    got_request_exception.connect(keep_exception, app, weak=False)
    return app
