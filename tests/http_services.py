"""HTTP services on loopback for the propagation tests (tests/test_http_propagation.py), each run
in a fresh interpreter (``conftest.python_command``) as a real server:

- ``serve_starlette``: a Starlette app under uvicorn, traced by ``TracerMiddleware``, that calls
  a downstream service through a wrapped httpx or requests client;
- ``serve_flask``: a Flask app under werkzeug's threaded server, traced by ``instrument_flask``;
- ``serve_otel_flask`` and ``serve_otel_starlette``: the same kind of services instrumented with
  OpenTelemetry's own packages instead (no tracer), which report the spans they made;

and ``otel_client_calls``, a client instrumented with OpenTelemetry calling one of ours.

Every endpoint answers with the trace headers it was sent (``seen``) and, for ours, the ids of
the span current in the handler, so that the tests check what each side saw. Only the standard
library and tracer are imported at the top; each program imports what it serves with.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import tracer

# -- ours: Starlette under uvicorn, calling downstream ------------------------------------------


def _span_ids() -> dict[str, Any]:
    span = tracer.current_span()
    return {"span_id": span.span_id, "root_span_id": span.root_span_id}


def starlette_app(downstream: str) -> Any:
    import httpx
    import requests
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Mount, Route

    from tracer.integrations.asgi import TracerMiddleware
    from tracer.integrations.httpx import wrap_httpx
    from tracer.integrations.requests import wrap_requests

    client = wrap_httpx(httpx.AsyncClient(timeout=10))
    session = wrap_requests(requests.Session())

    def seen(request: Request) -> dict[str, Any]:
        return {"traceparent": request.headers.get("traceparent"),
                "tracestate": request.headers.get("tracestate"), **_span_ids()}

    async def chain(request: Request) -> JSONResponse:
        via = request.path_params["via"]
        url = f"{downstream}/items/7"
        if via == "httpx":
            downstream_reply = (await client.get(url)).json()
        else:  # requests is synchronous: in a thread, which Starlette gives our context
            downstream_reply = (await run_in_threadpool(session.get, url, timeout=10)).json()
        return JSONResponse({**seen(request), "downstream": downstream_reply})

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse(seen(request))

    async def fail(request: Request) -> JSONResponse:
        raise ValueError("the handler failed")

    async def unavailable(request: Request) -> PlainTextResponse:
        return PlainTextResponse("later", status_code=503)

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[
        Route("/chain/{via}", chain), Route("/hello/{name}", hello), Route("/fail", fail),
        Route("/unavailable", unavailable), Route("/health", health),
        Mount("/api", routes=[Route("/v1/things/{thing_id:int}", hello)]),
    ])
    app.add_middleware(TracerMiddleware)
    return app


def serve_starlette(port: int, project: str, downstream: str) -> None:
    import uvicorn

    tracer.init_logger(project)
    uvicorn.run(starlette_app(downstream), host="127.0.0.1", port=port, log_level="warning")


# -- ours: Flask under werkzeug --------------------------------------------------------------


def flask_app() -> Any:
    from flask import Flask, jsonify, request

    from tracer.integrations.wsgi import instrument_flask

    app = Flask("tracer-test-service")

    def seen() -> dict[str, Any]:
        return {"traceparent": request.headers.get("traceparent"),
                "tracestate": request.headers.get("tracestate"), **_span_ids()}

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return jsonify({**seen(), "item_id": item_id})

    @app.get("/fail")
    def fail() -> Any:
        raise ValueError("the view failed")

    @app.get("/unavailable")
    def unavailable() -> Any:
        return "later", 503

    @app.get("/health")
    def health() -> Any:
        return "ok"

    instrument_flask(app)
    return app


def _serve_wsgi(app: Any, port: int) -> None:
    from werkzeug.serving import make_server

    # SIGTERM ends the server as an exception would, so that exit handlers run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


def serve_flask(port: int, project: str) -> None:
    tracer.init_logger(project)
    _serve_wsgi(flask_app(), port)


# -- OpenTelemetry's own: services and a client ------------------------------------------------


def _otel_provider() -> Any:
    """An SDK TracerProvider, set as the global one, keeping spans in memory."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def otel_spans(exporter: Any) -> list[dict[str, Any]]:
    """The finished spans an in-memory exporter holds, with their ids in hex."""
    return [{"name": s.name, "kind": s.kind.name,
             "trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}",
             "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
             "tracestate": s.context.trace_state.to_header()}
            for s in exporter.get_finished_spans()]


def serve_otel_flask(port: int) -> None:
    from flask import Flask, jsonify, request
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    exporter = _otel_provider()
    app = Flask("otel-test-service")

    @app.get("/hello/<name>")
    def hello(name: str) -> Any:
        return jsonify({"traceparent": request.headers.get("traceparent"),
                        "tracestate": request.headers.get("tracestate")})

    @app.get("/otel-spans")
    def spans() -> Any:
        return jsonify(otel_spans(exporter))

    @app.get("/health")
    def health() -> Any:
        return "ok"

    FlaskInstrumentor().instrument_app(app, excluded_urls="otel-spans,health")
    _serve_wsgi(app, port)


def serve_otel_starlette(port: int) -> None:
    import uvicorn
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    exporter = _otel_provider()

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"traceparent": request.headers.get("traceparent"),
                             "tracestate": request.headers.get("tracestate")})

    async def spans(request: Request) -> JSONResponse:
        return JSONResponse(otel_spans(exporter))

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/hello/{name}", hello), Route("/otel-spans", spans),
                            Route("/health", health)])
    traced = OpenTelemetryMiddleware(app, excluded_urls="otel-spans,health")
    uvicorn.run(traced, host="127.0.0.1", port=port, log_level="warning")


def otel_client_calls(url: str, library: str) -> None:
    """Call ``url`` with httpx or requests instrumented by OpenTelemetry, inside an OpenTelemetry
    span; print the server's reply and the client's spans as JSON."""
    from opentelemetry import trace

    exporter = _otel_provider()
    if library == "httpx":
        import httpx
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument()
        get = httpx.get
    else:
        import requests
        from opentelemetry.instrumentation.requests import RequestsInstrumentor

        RequestsInstrumentor().instrument()
        get = requests.get  # type: ignore[assignment]
    with trace.get_tracer("test").start_as_current_span("otel caller"):
        reply = get(url, timeout=10)
    print(json.dumps({"status": reply.status_code, "reply": reply.json(),
                      "spans": otel_spans(exporter)}))
