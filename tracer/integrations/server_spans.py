"""The server span of an HTTP request, as the ASGI and WSGI middleware open and close it.

One span of type ``task`` per request, named ``"<METHOD> <route or path>"`` (the route template
once the framework has matched one: ``GET /items/{item_id}``), continuing the caller's trace
(``tracer.propagation.extract``), else a child of the current span, else a root span of the
current logger. Its metadata holds what OpenTelemetry's HTTP semantic conventions name
(``http.request.method``, ``url.path``, ``http.route``, ``http.response.status_code``), so that
our server spans and OpenTelemetry's read alike. An exception is logged as the span's error; a
5xx response without one is marked with ``error: "HTTP 503 Service Unavailable"``. Bodies, query
strings and headers are not logged (they may hold secrets); log them in the handler if wanted.
"""

from __future__ import annotations

import http
import os
from collections.abc import Mapping

from .. import api, propagation
from ..span import NoopSpan, Span, error_of

SPAN_TYPE = "task"


def start(method: str, path: str, headers: Mapping[str, str]) -> Span | None:
    """The server span of a request (not yet current), or None when nothing is traced here."""
    parent = propagation.extract(headers)
    if api._parent_object() is None and (parent is None or not os.environ.get("TRACER_ENDPOINT")):
        # No logger: a request that carries a trace continues it only through an aggregator
        # given in TRACER_ENDPOINT (else every worker process would start its own); one that
        # carries none has no project to start a trace in.
        return None
    span = api.start_span(name=f"{method} {path}", type=SPAN_TYPE, parent=parent,
                          metadata={"http.request.method": method, "url.path": path})
    return None if isinstance(span, NoopSpan) else span


def finish(span: Span, method: str, route: str | None, status: int | None,
           exc: BaseException | None = None) -> None:
    """Log what the request came to and end its span: the route (the span renamed after it),
    the status code, the error (``exc``, or a 5xx status)."""
    metadata: dict[str, object] = {}
    if route:
        metadata["http.route"] = route
        span.set_attributes(name=f"{method} {route}")
    if status is not None:
        metadata["http.response.status_code"] = status
    fields: dict[str, object] = {"metadata": metadata}
    if exc is not None:
        fields["error"] = error_of(exc)
    elif status is not None and status >= 500:
        fields["error"] = f"HTTP {status} {_phrase(status)}".rstrip()
    span.log(**fields)
    span.end()


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
