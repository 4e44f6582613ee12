"""Traces across HTTP services (issue 20, part 4): real services on loopback, in processes of their
own (tests/http_services.py), sending to this test process's aggregator.

Ours: a Starlette app under uvicorn (``TracerMiddleware``) that calls a Flask app under werkzeug
(``instrument_flask``) through a wrapped httpx or requests client. OpenTelemetry's: the same
kinds of services and clients instrumented with OpenTelemetry's own packages, on one side of a
call whose other side is ours. What each side saw (``traceparent``, ``tracestate``) is checked,
and the ids map as docs/interop.md says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import pytest
import requests

import tracer
from tracer import slug, w3c, wire
from tracer.integrations.httpx import wrap_httpx
from tracer.integrations.requests import wrap_requests

from . import http_services
from .conftest import ROOT, Service, by_name, free_port, python_command, run_function, stored_rows
from .helpers import poll, wait_until

PROJECT = "http-propagation"


class Services(NamedTuple):
    starlette: str  # ours, calling flask
    flask: str  # ours
    otel_flask: str  # OpenTelemetry's Flask instrumentation
    otel_starlette: str  # OpenTelemetry's ASGI middleware
    store: str


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def services(store_path: str, tmp_path_factory) -> Iterator[Services]:
    """The four services, started once for the module. Ours attach to this process's
    aggregator (they inherit its endpoint) and log to PROJECT."""
    tracer.init_logger(PROJECT, store=store_path)
    env = dict(os.environ, PYTHONPATH=ROOT)
    logs = tmp_path_factory.mktemp("http-services")
    ports = {name: free_port() for name in Services._fields[:4]}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    commands = {
        "flask": python_command(http_services.serve_flask, ports["flask"], PROJECT),
        "starlette": python_command(http_services.serve_starlette, ports["starlette"], PROJECT,
                                    urls["flask"]),
        "otel_flask": python_command(http_services.serve_otel_flask, ports["otel_flask"]),
        "otel_starlette": python_command(http_services.serve_otel_starlette,
                                         ports["otel_starlette"]),
    }
    started: list[Service] = []
    try:
        for name, command in commands.items():
            service = Service(f"the {name} service", command, str(logs / f"{name}.log"), env)
            started.append(service)
        for service, url in zip(started, (urls[name] for name in commands), strict=True):
            if not poll(lambda url=url: _answers(f"{url}/health"), 60):  # type: ignore[misc]
                pytest.fail(f"{service.what} never answered:\n{service.log()}")
        yield Services(store=store_path, **urls)
    finally:
        for service in started:
            service.stop()


def ended(row: dict) -> bool:
    """Whether a row holds its span's end (the services' spans arrive as they are sent)."""
    return "span_attributes" in row and "end" in (row.get("metrics") or {})


def trace_rows(store: str, root_span_id: str, count: int) -> dict[str, dict]:
    """The rows of one trace by span name, once ``count`` of them are stored, ended (the
    services send theirs on their own)."""
    tracer.flush()

    def found() -> list[dict] | None:
        rows = [row for row in stored_rows(store, project=PROJECT)
                if row["root_span_id"] == root_span_id and ended(row)]
        return rows if len(rows) >= count else None

    return by_name(wait_until(found, 20, f"{count} rows of trace {root_span_id} never stored"))


def row_with_span_id(store: str, span_id: str) -> dict:
    tracer.flush()

    def found() -> list[dict]:
        return [row for row in stored_rows(store, project=PROJECT)
                if row["span_id"] == span_id and ended(row)]

    return wait_until(found, 20, f"the row of span {span_id} never stored")[0]


def w3c_of(span: tracer.Span | tracer.NoopSpan) -> tuple[str, str]:
    """The W3C trace id and span id (hex) of one of our spans."""
    assert isinstance(span, tracer.Span)
    trace_id, span_id = w3c.to_w3c(span.trace_int, span.span_int, span.root_int)
    return f"{trace_id:032x}", f"{span_id:016x}"


# -- ours on both sides -------------------------------------------------------------------------


def test_requests_to_starlette_then_httpx_to_flask_is_one_trace_with_the_right_parents(
        services: Services) -> None:
    session = wrap_requests(requests.Session())

    @tracer.traced
    def calls_the_services() -> dict[str, Any]:
        reply = session.get(f"{services.starlette}/chain/httpx", timeout=30).json()
        return {**reply, "root": tracer.current_span().root_span_id}

    reply = calls_the_services()
    rows = trace_rows(services.store, reply["root"], 3)
    caller, a, b = (rows["calls_the_services"], rows["GET /chain/{via}"],
                    rows["GET /items/<int:item_id>"])
    assert a["span_parents"] == [caller["span_id"]]
    assert b["span_parents"] == [a["span_id"]]
    assert (reply["span_id"], reply["downstream"]["span_id"]) == (a["span_id"], b["span_id"])


def test_httpx_to_starlette_then_requests_to_flask_is_one_trace_with_the_right_parents(
        services: Services) -> None:
    client = wrap_httpx(httpx.Client(timeout=30))
    with tracer.start_span("calls the services") as span:
        reply = client.get(f"{services.starlette}/chain/requests").json()
    rows = trace_rows(services.store, span.root_span_id, 3)
    a, b = rows["GET /chain/{via}"], rows["GET /items/<int:item_id>"]
    assert a["span_parents"] == [span.span_id]
    assert b["span_parents"] == [a["span_id"]]
    assert reply["downstream"]["span_id"] == b["span_id"]


def test_each_side_sees_the_callers_span_in_traceparent_and_its_slug_in_tracestate(
        services: Services) -> None:
    client = wrap_httpx(httpx.Client(timeout=30))
    with tracer.start_span("caller") as span:
        reply = client.get(f"{services.starlette}/chain/httpx").json()
    trace_id, span_id = w3c_of(span)
    assert reply["traceparent"] == f"00-{trace_id}-{span_id}-01"
    assert reply["tracestate"] == f"tracer={span.export()}"
    # Downstream, the Starlette service's span is the caller.
    a = slug.decode(reply["downstream"]["tracestate"].removeprefix("tracer="))
    assert wire.format_id(a.trace, a.span) == reply["span_id"]
    assert a.container == wire.logs_container(PROJECT)


def test_a_server_span_is_a_task_named_after_its_route_with_method_path_and_status(
        services: Services) -> None:
    client = wrap_httpx(httpx.Client(timeout=30))
    with tracer.start_span("caller") as span:
        client.get(f"{services.starlette}/hello/world")
    row = trace_rows(services.store, span.root_span_id, 2)["GET /hello/{name}"]
    assert row["span_attributes"]["type"] == "task"
    assert row["metadata"] == {"http.request.method": "GET", "url.path": "/hello/world",
                               "http.route": "/hello/{name}", "http.response.status_code": 200}
    assert "error" not in row or row["error"] is None


def test_a_mounted_route_is_named_under_its_mount(services: Services) -> None:
    client = wrap_httpx(httpx.Client(timeout=30))
    with tracer.start_span("caller") as span:
        client.get(f"{services.starlette}/api/v1/things/12")
    assert "GET /api/v1/things/{thing_id}" in trace_rows(services.store, span.root_span_id, 2)


def test_an_exception_in_a_starlette_handler_is_its_spans_error(services: Services) -> None:
    client = wrap_httpx(httpx.Client(timeout=30))
    with tracer.start_span("caller") as span:
        assert client.get(f"{services.starlette}/fail").status_code == 500
    row = trace_rows(services.store, span.root_span_id, 2)["GET /fail"]
    assert row["error"].startswith("ValueError: the handler failed\n")
    assert "Traceback" in row["error"]
    assert row["metadata"]["http.response.status_code"] == 500


def test_an_exception_in_a_flask_view_is_its_spans_error(services: Services) -> None:
    session = wrap_requests(requests.Session())
    with tracer.start_span("caller") as span:
        assert session.get(f"{services.flask}/fail", timeout=30).status_code == 500
    row = trace_rows(services.store, span.root_span_id, 2)["GET /fail"]
    assert row["error"].startswith("ValueError: the view failed\n")
    assert row["metadata"]["http.response.status_code"] == 500


@pytest.mark.parametrize("service", ["starlette", "flask"])
def test_a_5xx_response_marks_its_span_as_an_error(services: Services, service: str) -> None:
    session = wrap_requests(requests.Session())
    with tracer.start_span("caller") as span:
        assert session.get(f"{getattr(services, service)}/unavailable",
                           timeout=30).status_code == 503
    row = trace_rows(services.store, span.root_span_id, 2)["GET /unavailable"]
    assert row["error"] == "HTTP 503 Service Unavailable"
    assert row["metadata"]["http.response.status_code"] == 503


def test_a_request_without_trace_context_starts_a_trace_in_the_services_project(
        services: Services) -> None:
    reply = httpx.get(f"{services.flask}/items/3", timeout=30).json()
    assert reply["traceparent"] is None
    row = row_with_span_id(services.store, reply["span_id"])
    assert row["span_parents"] in (None, [])
    assert row["root_span_id"] == row["span_id"]
    assert row["span_attributes"]["name"] == "GET /items/<int:item_id>"


def test_calls_outside_any_span_carry_no_trace_context(services: Services) -> None:
    session = wrap_requests(requests.Session())
    client = wrap_httpx(httpx.Client(timeout=30))
    assert session.get(f"{services.otel_flask}/hello/x", timeout=30).json()["traceparent"] is None
    assert client.get(f"{services.otel_flask}/hello/x").json()["traceparent"] is None


# -- OpenTelemetry on one side -------------------------------------------------------------------


@pytest.mark.parametrize(("library", "service", "route"), [
    ("httpx", "starlette", "GET /hello/{name}"),
    ("requests", "flask", "GET /items/<int:item_id>"),
])
def test_an_opentelemetry_client_calling_our_service_continues_its_trace(
        services: Services, library: str, service: str, route: str) -> None:
    path = "/hello/otel" if service == "starlette" else "/items/5"
    out = json.loads(run_function(http_services.otel_client_calls,
                                  f"{getattr(services, service)}{path}", library).stdout)
    client = next(s for s in out["spans"] if s["kind"] == "CLIENT")
    caller = next(s for s in out["spans"] if s["name"] == "otel caller")
    assert client["parent_id"] == caller["span_id"]
    # What our service saw is the OpenTelemetry client span, and nothing of ours.
    # (flags 01, sampled, or 03, with W3C level 2's random trace id flag.)
    assert out["reply"]["traceparent"][:-3] == f"00-{client['trace_id']}-{client['span_id']}"
    assert not out["reply"]["tracestate"]
    # Our server span is its child, in the same trace, by the mapping of docs/interop.md.
    parent_id, root_id = w3c.row_ids(int(client["trace_id"], 16), int(client["span_id"], 16))
    row = row_with_span_id(services.store, out["reply"]["span_id"])
    assert row["span_parents"] == [parent_id]
    assert row["root_span_id"] == root_id
    assert row["span_attributes"] == {"name": route, "type": "task"}
    assert w3c.from_row_ids(row["span_id"], row["root_span_id"])[0] == int(client["trace_id"], 16)


@pytest.mark.parametrize(("library", "service"), [("requests", "otel_flask"),
                                                  ("httpx", "otel_starlette")])
def test_our_client_calling_an_opentelemetry_service_is_the_parent_of_its_server_span(
        services: Services, library: str, service: str) -> None:
    url = getattr(services, service)
    session = wrap_requests(requests.Session())
    client = wrap_httpx(httpx.Client(timeout=30))
    with tracer.start_span("calls an OpenTelemetry service") as span:
        if library == "requests":
            reply = session.get(f"{url}/hello/otel", timeout=30).json()
        else:
            reply = client.get(f"{url}/hello/otel").json()
    trace_id, span_id = w3c_of(span)
    assert reply["traceparent"] == f"00-{trace_id}-{span_id}-01"
    assert reply["tracestate"] == f"tracer={span.export()}"
    server = wait_until(lambda: [s for s in httpx.get(f"{url}/otel-spans").json()
                                 if s["kind"] == "SERVER" and s["trace_id"] == trace_id], 10,
                        "the OpenTelemetry service never finished its server span")[0]
    assert server["parent_id"] == span_id
    # OpenTelemetry keeps our tracestate entry on its span (and sends it on downstream).
    assert server["tracestate"] == f"tracer={span.export()}"
