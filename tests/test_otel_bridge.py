"""OpenTelemetry in the same process (issue 20, part 2): ``tracer.integrations.opentelemetry``.

The programs (tests/otel_programs.py) run in fresh interpreters that attach to this test
process's aggregator (they inherit its endpoint), with OpenTelemetry's own instrumentation of
httpx and requests making real client spans against a loopback server.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tracer import slug, w3c, wire

from . import otel_programs
from .conftest import ROOT, by_name, clean_env, run_function


def run(program, *args, env: dict[str, str] | None = None) -> dict:
    out = run_function(program, *args, env=env).stdout
    return json.loads(out) if out.strip() else {}


def test_an_instrumented_client_span_inside_our_span_is_its_child_row(logger, rows) -> None:
    out = run(otel_programs.an_instrumented_httpx_call_inside_our_span, logger.project)
    named = by_name(rows())
    ours, client = named["ours"], named["GET"]
    assert client["span_parents"] == [ours["span_id"]] == [out["ours"]["span_id"]]
    assert client["root_span_id"] == ours["root_span_id"]
    assert client["span_attributes"] == {"name": "GET", "type": "function"}
    otel = client["metadata"]["otel"]
    assert otel["kind"] == "client"
    assert otel["scope"]["name"] == "opentelemetry.instrumentation.httpx"
    attributes = otel["attributes"]  # (the older or the stable HTTP conventions)
    assert attributes.get("http.status_code", attributes.get("http.response.status_code")) == 200
    assert client["metrics"]["start"] <= client["metrics"]["end"]


def test_an_instrumented_client_sends_its_span_and_our_slug_downstream(logger, rows) -> None:
    out = run(otel_programs.an_instrumented_httpx_call_inside_our_span, logger.project)
    client = by_name(rows())["GET"]
    trace_id, span_id = w3c.from_row_ids(client["span_id"], client["root_span_id"])
    assert out["seen"]["traceparent"][:-3] == f"00-{trace_id:032x}-{span_id:016x}"
    # The container travels with it: our span's slug, in tracestate.
    assert out["seen"]["tracestate"] == f"tracer={out['export']}"
    assert slug.decode(out["export"]).container == wire.logs_container(logger.project)


def test_our_spans_inside_an_opentelemetry_span_are_its_children(logger, rows) -> None:
    out = run(otel_programs.our_spans_inside_opentelemetry_spans, logger.project)
    named = by_name(rows())
    outer, ours, client = named["otel outer"], named["ours_inside"], named["GET"]
    outer_id, root_id = w3c.row_ids(int(out["trace_id"], 16), int(out["span_id"], 16))
    assert outer["span_id"] == outer_id and outer["root_span_id"] == root_id
    assert outer["span_parents"] in (None, [])  # a trace begun by OpenTelemetry
    assert ours["span_parents"] == [outer["span_id"]]
    assert client["span_parents"] == [ours["span_id"]]
    assert {row["root_span_id"] for row in named.values()} == {root_id}


def test_the_current_span_inside_an_opentelemetry_span_logs_to_its_row(logger, rows) -> None:
    out = run(otel_programs.our_spans_inside_opentelemetry_spans, logger.project)
    outer = by_name(rows())["otel outer"]
    assert out["current_inside"] == outer["span_id"]
    assert outer["metadata"]["logged"] == "through current_span()"
    assert outer["span_attributes"] == {"name": "otel outer", "type": "task"}


def test_an_opentelemetry_spans_genai_attributes_and_exception_map_as_otlp_in(
        logger, rows) -> None:
    run(otel_programs.maps_an_opentelemetry_spans_attributes_and_exception, logger.project)
    named = by_name(rows())
    llm, failed = named["chat m1"], named["fails"]
    assert llm["span_attributes"] == {"name": "chat m1", "type": "llm"}
    assert llm["input"] == [{"role": "user", "content": "hello"}]
    assert llm["metrics"]["prompt_tokens"] == 12 and llm["metrics"]["tokens"] == 17
    assert llm["metadata"]["model"] == "m1" and llm["metadata"]["provider"] == "openai"
    assert llm["metadata"]["customer"] == "c-1"
    assert llm["metadata"]["otel"]["attributes"] == {"gen_ai.operation.name": "chat",
                                                     "http.status": 200}
    assert llm["metadata"]["otel"]["scope"] == {"name": "tests.otel_programs", "version": "1.2"}
    assert failed["error"].startswith("ValueError: the work failed\n\nTraceback")
    assert failed["metadata"]["otel"]["status"]["code"] == "ERROR"


def test_spans_where_nothing_is_traced_are_counted_and_start_nothing() -> None:
    out = run(otel_programs.records_nothing_without_a_logger, env=clean_env())
    assert out["counts"] == {"untraced": 1}
    assert not out["zmq_loaded"]


def test_setup_adds_to_the_sdk_provider_already_set_once(logger, rows) -> None:
    out = run(otel_programs.setup_keeps_the_sdk_provider_already_set, logger.project)
    assert out == {"same": True, "provider_kept": True, "exported": ["exported and recorded"]}
    assert "exported and recorded" in by_name(rows())


def test_setup_refuses_a_provider_that_takes_no_span_processors() -> None:
    out = run(otel_programs.setup_refuses_a_provider_without_processors, env=clean_env())
    assert "takes no span processors" in out["error"]


def test_the_masking_function_masks_opentelemetry_spans_too(logger, rows) -> None:
    run(otel_programs.masks_opentelemetry_spans, logger.project)
    assert by_name(rows())["masked"]["input"] == "MASKED"


def test_import_tracer_loads_no_http_library_nor_opentelemetry() -> None:
    code = ("import sys, tracer; print(sorted(m for m in ('opentelemetry', 'httpx', 'requests', "
            "'flask', 'werkzeug', 'starlette') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "[]"
