"""Programs of the in-process OpenTelemetry bridge's tests (tests/test_otel_bridge.py), run in
fresh interpreters (``conftest.run_function``): ``setup()`` changes process-wide OpenTelemetry
state (the global TracerProvider, the runtime context, instrumented libraries), which must not
leak into the test process. Each prints what its test checks, as JSON. Only the standard
library and tracer are imported at the top."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import tracer


class _Echo(BaseHTTPRequestHandler):
    """Answers every GET with the trace headers it was sent."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"traceparent": self.headers.get("traceparent"),
                           "tracestate": self.headers.get("tracestate")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def echo_server() -> Iterator[str]:
    """A loopback HTTP server in a thread; its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _ids(span: Any) -> dict[str, str]:
    return {"span_id": span.span_id, "root_span_id": span.root_span_id}


def an_instrumented_httpx_call_inside_our_span(project: str) -> None:
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    from tracer.integrations import opentelemetry as tracer_otel

    tracer.init_logger(project)
    tracer_otel.setup()
    HTTPXClientInstrumentor().instrument()
    with echo_server() as url, tracer.start_span("ours", type="task") as ours:
        seen = httpx.get(f"{url}/items?q=1", timeout=10).json()
    tracer.flush()
    print(json.dumps({"ours": _ids(ours), "export": ours.export(), "seen": seen}))


def our_spans_inside_opentelemetry_spans(project: str) -> None:
    import requests
    from opentelemetry import trace
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    from tracer.integrations import opentelemetry as tracer_otel

    tracer.init_logger(project)
    tracer_otel.setup()
    RequestsInstrumentor().instrument()
    otel = trace.get_tracer("tests.otel_programs")

    @tracer.traced
    def ours_inside(url: str) -> int:
        return requests.get(url, timeout=10).status_code  # an OpenTelemetry client span

    with echo_server() as url, otel.start_as_current_span("otel outer") as outer:
        inside = tracer.current_span()
        inside.log(metadata={"logged": "through current_span()"})
        ours_inside(url)
    tracer.flush()
    context = outer.get_span_context()
    print(json.dumps({"trace_id": f"{context.trace_id:032x}",
                      "span_id": f"{context.span_id:016x}",
                      "current_inside": inside.span_id}))


def maps_an_opentelemetry_spans_attributes_and_exception(project: str) -> None:
    from opentelemetry import trace

    from tracer.integrations import opentelemetry as tracer_otel

    tracer.init_logger(project)
    tracer_otel.setup()
    otel = trace.get_tracer("tests.otel_programs", "1.2")
    with tracer.start_span("ours"):
        with otel.start_as_current_span("chat m1", kind=trace.SpanKind.CLIENT, attributes={
                "gen_ai.operation.name": "chat", "gen_ai.request.model": "m1",
                "gen_ai.system": "openai", "gen_ai.usage.input_tokens": 12,
                "gen_ai.usage.output_tokens": 5,
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                    {"type": "text", "content": "hello"}]}]),
                "braintrust.metadata": json.dumps({"customer": "c-1"}),
                "http.status": 200}):
            pass
        try:
            with otel.start_as_current_span("fails"):
                raise ValueError("the work failed")
        except ValueError:
            pass
    tracer.flush()


def records_nothing_without_a_logger() -> None:
    import sys

    from opentelemetry import trace

    from tracer.integrations import opentelemetry as tracer_otel

    processor = tracer_otel.setup()
    with trace.get_tracer("t").start_as_current_span("nowhere to go"):
        pass
    print(json.dumps({"counts": dict(processor.counts),
                      "threads": sorted(t.name for t in threading.enumerate()),
                      "zmq_loaded": "zmq.sugar.context" in sys.modules
                      and any(t.name.startswith("tracer") for t in threading.enumerate())}))


def setup_keeps_the_sdk_provider_already_set(project: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tracer.integrations import opentelemetry as tracer_otel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer.init_logger(project)
    first, second = tracer_otel.setup(), tracer_otel.setup()
    with trace.get_tracer("t").start_as_current_span("exported and recorded"):
        pass
    tracer.flush()
    print(json.dumps({"same": first is second, "provider_kept": trace.get_tracer_provider()
                      is provider, "exported": [s.name for s in exporter.get_finished_spans()]}))


def setup_refuses_a_provider_without_processors() -> None:
    from opentelemetry import trace

    from tracer.integrations import opentelemetry as tracer_otel

    class Custom(trace.NoOpTracerProvider):
        pass

    trace.set_tracer_provider(Custom())
    try:
        tracer_otel.setup()
    except RuntimeError as exc:
        print(json.dumps({"error": str(exc)}))


def masks_opentelemetry_spans(project: str) -> None:
    from opentelemetry import trace

    from tracer.integrations import opentelemetry as tracer_otel

    def mask(value: Any) -> Any:
        return "MASKED" if isinstance(value, str) and "secret" in value else value

    tracer.init_logger(project)
    tracer.set_masking_function(mask)
    tracer_otel.setup()
    with trace.get_tracer("t").start_as_current_span(
            "masked", attributes={"braintrust.input_json": json.dumps("a secret prompt")}):
        pass
    tracer.flush()
