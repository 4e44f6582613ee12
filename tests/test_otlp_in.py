"""OTLP in: the real OpenTelemetry SDK and its real ``OTLPSpanExporter`` (HTTP/protobuf) send
spans to a real ``tracer serve`` on loopback, and what arrived is read back through the
server's API; OTLP/JSON is built with opentelemetry-proto and encoded as the OTLP
specification says (hex ids), as the Python SDK has no JSON exporter. The mapping's details are
tests/unit/test_otlp.py's."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tracer import w3c, wire
from workers.store import open_store

from .conftest import ROOT, TraceServer, clean_env, run_cli, run_python
from .helpers import wait_until

KEY = "otlp-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def server(trace_server, tmp_path) -> TraceServer:
    """``tracer serve --api-key KEY`` over a store that does not exist yet."""
    return trace_server(str(tmp_path / "traces.db"), "--api-key", KEY)


class Spans:
    """An OpenTelemetry SDK tracer provider whose finished spans are kept, to be exported with
    the real OTLP exporter in one request."""

    def __init__(self, service: str | None = "checkout", **resource: Any) -> None:
        attributes = dict(resource)
        if service is not None:
            attributes["service.name"] = service
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create(attributes))
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("tests.otlp_in", "1.0")

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.memory.get_finished_spans()

    def export(self, server: TraceServer, headers: dict[str, str] | None = None,
               **kwargs: Any) -> SpanExportResult:
        """The finished spans through the real ``OTLPSpanExporter`` to ``server``."""
        exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces",
                                    headers={**AUTH, **(headers or {})}, timeout=30, **kwargs)
        try:
            return exporter.export(self.finished())
        finally:
            exporter.shutdown()


def ids(span: ReadableSpan) -> tuple[str, str]:
    """``(span_id, root_span_id)`` of the row an OpenTelemetry span becomes."""
    assert span.context is not None
    return w3c.row_ids(span.context.trace_id, span.context.span_id)


def by_name(spans: Spans, name: str) -> ReadableSpan:
    [span] = [s for s in spans.finished() if s.name == name]
    return span


def listed(server: TraceServer, project: str, key: str = KEY) -> list[dict]:
    answer = server.get(f"/api/projects/{project}/traces",
                        headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return answer.json()["traces"]


def skeleton(server: TraceServer, root: str) -> dict:
    answer = server.get(f"/api/traces/{root}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()


def stored_row(server: TraceServer, span: ReadableSpan) -> dict:
    span_id, root = ids(span)
    answer = server.get(f"/api/traces/{root}/spans/{span_id}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()["row"]


def a_request_trace(spans: Spans) -> None:
    """A server span with two children, one of them with a child."""
    with spans.tracer.start_as_current_span("POST /orders", kind=trace_kind("SERVER")):
        with spans.tracer.start_as_current_span("validate"):
            pass
        with spans.tracer.start_as_current_span("save"), \
                spans.tracer.start_as_current_span("INSERT orders"):
            pass


def trace_kind(name: str) -> Any:
    from opentelemetry.trace import SpanKind

    return getattr(SpanKind, name)


# -- spans, parents, the trace list -------------------------------------------------------------


def test_spans_from_the_opentelemetry_sdk_arrive_with_their_parents(server):
    spans = Spans()
    a_request_trace(spans)

    assert spans.export(server) == SpanExportResult.SUCCESS

    root_id, trace_root = ids(by_name(spans, "POST /orders"))
    got = {s["name"]: s for s in skeleton(server, trace_root)["spans"]}
    assert set(got) == {"POST /orders", "validate", "save", "INSERT orders"}
    assert got["POST /orders"]["parents"] == []
    assert got["validate"]["parents"] == got["save"]["parents"] == [root_id]
    assert got["INSERT orders"]["parents"] == [got["save"]["span_id"]]
    for name, span in got.items():
        assert span["span_id"] == ids(by_name(spans, name))[0]
        assert span["end"] > span["start"] > 1_700_000_000


def test_the_trace_is_listed_with_its_span_without_parents_as_root(server):
    spans = Spans()
    a_request_trace(spans)
    spans.export(server)

    [trace] = listed(server, "checkout")
    root = by_name(spans, "POST /orders")
    root_id, trace_root = ids(root)
    assert (trace["root_span_id"], trace["row_id"], trace["name"], trace["spans"]) == (
        trace_root, root_id, "POST /orders", 4)
    assert root_id != trace_root  # a trace begun by OpenTelemetry: not root by id
    assert root.start_time is not None and root.end_time is not None
    assert trace["duration"] == pytest.approx((root.end_time - root.start_time) / 1e9, abs=1e-6)
    assert trace["running"] is False


def test_times_kind_resource_and_other_attributes_arrive_as_the_mapping_says(server):
    spans = Spans(**{"host.name": "web-1", "deployment.environment": "test"})
    with spans.tracer.start_as_current_span("POST /orders",
                                            kind=trace_kind("SERVER")) as span:
        span.set_attribute("http.request.method", "POST")
        span.add_event("validated", {"items": 3})
    spans.export(server)

    finished = by_name(spans, "POST /orders")
    row = stored_row(server, finished)
    assert finished.start_time is not None and finished.end_time is not None
    assert row["metrics"]["start"] == pytest.approx(finished.start_time / 1e9, abs=1e-6)
    assert row["metrics"]["end"] == pytest.approx(finished.end_time / 1e9, abs=1e-6)
    otel = row["metadata"]["otel"]
    assert otel["kind"] == "server"
    assert otel["attributes"] == {"http.request.method": "POST"}
    assert [(e["name"], e["attributes"]) for e in otel["events"]] == [("validated",
                                                                       {"items": 3})]
    assert otel["resource"]["service.name"] == "checkout"
    assert otel["resource"]["deployment.environment"] == "test"
    assert otel["scope"] == {"name": "tests.otlp_in", "version": "1.0"}
    assert row["origin"] == {"host": "web-1"}
    assert row["span_attributes"] == {"name": "POST /orders"}


# -- errors ------------------------------------------------------------------------------------


def test_an_exception_raised_in_a_span_arrives_as_its_error_with_the_traceback(server):
    spans = Spans()
    with pytest.raises(ValueError), spans.tracer.start_as_current_span("charge"):
        raise ValueError("card declined")
    spans.export(server)

    row = stored_row(server, by_name(spans, "charge"))
    head, _, stack = row["error"].partition("\n\n")
    assert head == "ValueError: card declined"
    assert stack.startswith("Traceback (most recent call last):")
    assert stack.rstrip().endswith("ValueError: card declined")
    assert row["metadata"]["otel"]["status"]["code"] == "ERROR"
    [trace] = listed(server, "checkout")
    assert trace["errors"] == 1


def test_an_error_status_set_by_hand_arrives_as_the_error(server):
    spans = Spans()
    with spans.tracer.start_as_current_span("call upstream") as span:
        span.set_status(Status(StatusCode.ERROR, "upstream returned 502"))
    spans.export(server)

    assert stored_row(server, by_name(spans, "call upstream"))["error"] == "upstream returned 502"


# -- GenAI and the reference's attributes -------------------------------------------------------


def test_genai_attributes_arrive_as_an_llm_span_with_its_messages_and_tokens(server):
    spans = Spans()
    with spans.tracer.start_as_current_span("answer"), \
            spans.tracer.start_as_current_span("chat gpt-4o-mini") as llm:
        llm.set_attributes({
            "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.request.max_tokens": 100,
            "gen_ai.input.messages": json.dumps([
                {"role": "user", "parts": [{"type": "text", "content": "Capital of France?"}]}]),
            "gen_ai.output.messages": json.dumps([
                {"role": "assistant", "finish_reason": "stop",
                 "parts": [{"type": "text", "content": "Paris."}]}]),
            "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 2})
    spans.export(server)

    row = stored_row(server, by_name(spans, "chat gpt-4o-mini"))
    assert row["span_attributes"] == {"name": "chat gpt-4o-mini", "type": "llm"}
    assert row["input"] == [{"role": "user", "content": "Capital of France?"}]
    assert row["output"] == [{"role": "assistant", "finish_reason": "stop",
                              "content": "Paris."}]
    assert {k: row["metrics"][k] for k in ("prompt_tokens", "completion_tokens", "tokens")} == {
        "prompt_tokens": 11, "completion_tokens": 2, "tokens": 13}
    assert (row["metadata"]["model"], row["metadata"]["provider"],
            row["metadata"]["max_tokens"]) == ("gpt-4o-mini", "openai", 100)
    [trace] = listed(server, "checkout")
    assert trace["tokens"] == 13


def test_braintrust_attributes_arrive_as_the_fields_they_name_in_the_project_they_name(server):
    spans = Spans()
    with spans.tracer.start_as_current_span("grade") as span:
        span.set_attributes({
            "braintrust.parent": "project_name:evals",
            "braintrust.span_attributes": json.dumps({"type": "score"}),
            "braintrust.input_json": json.dumps({"question": "2+2?"}),
            "braintrust.output_json": json.dumps(4),
            "braintrust.expected": "4",
            "braintrust.metadata": json.dumps({"grader": "exact"}),
            "braintrust.metrics": json.dumps({"cost": 0.5}),
            "braintrust.scores": json.dumps({"correct": 1}),
            "braintrust.tags": ["math"]})
    spans.export(server)

    assert listed(server, "evals") and not listed_or_none(server, "checkout")
    row = stored_row(server, by_name(spans, "grade"))
    assert (row["project_name"], row["span_attributes"]["type"]) == ("evals", "score")
    assert (row["input"], row["output"], row["expected"]) == ({"question": "2+2?"}, 4, "4")
    assert (row["metadata"]["grader"], row["metrics"]["cost"], row["scores"], row["tags"]) == (
        "exact", 0.5, {"correct": 1}, ["math"])


def listed_or_none(server: TraceServer, project: str) -> list[dict] | None:
    answer = server.get(f"/api/projects/{project}/traces", headers=AUTH)
    return answer.json()["traces"] if answer.status_code == 200 else None


def test_a_braintrust_parent_naming_an_experiment_puts_the_span_in_it(server):
    experiment = wire.experiment_container("evals", "exp-1", "nightly")
    written = httpx.post(f"{server.url}/api/v1/rows", headers=AUTH, timeout=30, json={
        "rows": [{"container": experiment, "row": {"id": "seed", "input": "registers it"}}]})
    assert written.status_code == 200, written.text
    spans = Spans()
    with spans.tracer.start_as_current_span("case 1") as span:
        span.set_attribute("braintrust.parent", "experiment_id:exp-1")
    spans.export(server)

    answer = server.get("/api/experiments/exp-1/traces", headers=AUTH)
    assert [t["name"] for t in answer.json()["traces"]] == ["case 1"]
    assert stored_row(server, by_name(spans, "case 1"))["experiment_name"] == "nightly"


# -- the project ----------------------------------------------------------------------------


def test_the_project_header_wins_over_the_resource(server):
    spans = Spans(**{"tracer.project": "from-resource"})
    with spans.tracer.start_as_current_span("work"):
        pass
    spans.export(server, headers={"x-tracer-project": "from-header"})
    spans.export(server)  # the same span again, without the header: into the resource's

    assert [t["name"] for t in listed(server, "from-header")] == ["work"]
    assert [t["name"] for t in listed(server, "from-resource")] == ["work"]


def test_without_a_project_header_or_resource_the_spans_go_to_default(server):
    span = trace_pb2.Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="work",
                          start_time_unix_nano=1_800_000_000_000_000_000)
    request = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[
        trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])

    answer = post(server, request.SerializeToString(), {**PROTOBUF, **AUTH})

    assert answer.status_code == 200, answer.text
    assert [t["name"] for t in listed(server, "default")] == ["work"]


# -- encodings -----------------------------------------------------------------------------


def test_a_gzip_export_arrives_as_a_plain_one_does(server):
    spans = Spans()
    a_request_trace(spans)

    assert spans.export(server, compression=Compression.Gzip) == SpanExportResult.SUCCESS
    [trace] = listed(server, "checkout")
    assert trace["spans"] == 4


def export_request(spans: Spans) -> trace_service_pb2.ExportTraceServiceRequest:
    """The request the exporter would send for the finished spans (the SDK's own encoder)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans.finished())


def otlp_json(request: trace_service_pb2.ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as the specification has it: protobuf's JSON mapping with the ids as hex."""
    document = json_format.MessageToDict(request)
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for name in ("traceId", "spanId", "parentSpanId"):
                    if span.get(name):
                        span[name] = base64.b64decode(span[name]).hex()
    return json.dumps(document).encode()


def test_otlp_json_with_hex_ids_arrives_and_is_answered_in_json(server):
    spans = Spans()
    a_request_trace(spans)
    body = otlp_json(export_request(spans))
    assert re.search(rb'"traceId": "[0-9a-f]{32}"', body)

    answer = httpx.post(f"{server.url}/v1/traces", content=body, timeout=30,
                        headers={**AUTH, "Content-Type": "application/json"})

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json() == {}
    [trace] = listed(server, "checkout")
    assert (trace["row_id"], trace["spans"]) == (ids(by_name(spans, "POST /orders"))[0], 4)


def test_gzipped_otlp_json_arrives(server):
    spans = Spans()
    a_request_trace(spans)
    answer = httpx.post(f"{server.url}/v1/traces", timeout=30,
                        content=gzip.compress(otlp_json(export_request(spans))),
                        headers={**AUTH, "Content-Type": "application/json",
                                 "Content-Encoding": "gzip"})
    assert answer.status_code == 200, answer.text
    assert listed(server, "checkout")[0]["spans"] == 4


def test_a_span_delivered_twice_is_stored_once(server):
    spans = Spans()
    a_request_trace(spans)
    spans.export(server)
    spans.export(server)

    [trace] = listed(server, "checkout")
    assert trace["spans"] == 4


# -- keys, limits, bad bodies, partial success -------------------------------------------------


def post(server: TraceServer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/traces", content=body, headers=headers, timeout=30)


def status_message(answer: httpx.Response) -> str:
    """The message of a ``google.rpc.Status`` protobuf body (field 2)."""
    body = answer.content
    if body[:1] == b"\x08":  # code, a one-byte varint here
        body = body[2:]
    assert body[:1] == b"\x12"
    return body[2:].decode()


def test_x_api_key_is_taken_as_the_key(server):
    spans = Spans()
    a_request_trace(spans)
    answer = post(server, export_request(spans).SerializeToString(),
                  {**PROTOBUF, "x-api-key": KEY})
    assert answer.status_code == 200, answer.text
    assert listed(server, "checkout")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"x-api-key": "wrong"}, {"Authorization": f"Basic {KEY}"}])
def test_without_a_valid_key_it_is_401_and_nothing_is_written(server, headers):
    spans = Spans()
    a_request_trace(spans)

    answer = post(server, export_request(spans).SerializeToString(), {**PROTOBUF, **headers})

    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/x-protobuf"
    assert "API key" in status_message(answer)
    assert KEY not in answer.text
    assert listed_or_none(server, "checkout") is None


def test_a_key_limited_to_projects_writes_their_spans_and_has_the_others_rejected(
        trace_server, tmp_path):
    store = str(tmp_path / "traces.db")
    done = run_cli("keys", "create", "--name", "checkout-team", "--project", "checkout",
                   "--store", store)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    server = trace_server(store)  # no --api-key: the store's keys only
    spans = Spans()
    with spans.tracer.start_as_current_span("mine"), \
            spans.tracer.start_as_current_span("theirs") as span:
        span.set_attribute("braintrust.parent", "project_name:payments")
    headers = {**PROTOBUF, "Authorization": f"Bearer {key}"}

    answer = post(server, export_request(spans).SerializeToString(), headers)

    assert answer.status_code == 200, answer.text
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(answer.content)
    assert response.partial_success.rejected_spans == 1
    assert "may not write to project 'payments'" in response.partial_success.error_message
    assert [t["name"] for t in listed(server, "checkout", key)] == ["mine"]
    only_theirs = Spans(service="payments")
    with only_theirs.tracer.start_as_current_span("theirs"):
        pass
    answer = post(server, export_request(only_theirs).SerializeToString(), headers)
    assert answer.status_code == 403
    assert "payments" in status_message(answer)


def test_a_browser_session_cookie_is_not_a_key_for_otlp(server):
    signed_in = httpx.post(f"{server.url}/login", data={"key": KEY, "next": "/"}, timeout=30)
    cookies = dict(signed_in.cookies) or dict(signed_in.history[0].cookies
                                               if signed_in.history else {})
    assert cookies, "the sign-in form set no cookie"
    answer = httpx.post(f"{server.url}/v1/traces", content=b"", cookies=cookies, timeout=30,
                        headers=PROTOBUF)
    assert answer.status_code == 401


def test_a_body_over_the_limit_is_413(trace_server, tmp_path):
    small = trace_server(str(tmp_path / "traces.db"), "--api-key", KEY, "--max-body", "2048")
    spans = Spans()
    with spans.tracer.start_as_current_span("big") as span:
        span.set_attribute("payload", "x" * 10_000)

    answer = post(small, export_request(spans).SerializeToString(), {**PROTOBUF, **AUTH})

    assert answer.status_code == 413
    assert "2048" in status_message(answer)
    assert spans.export(small) == SpanExportResult.FAILURE  # the exporter is told so too


def test_a_gzip_body_that_inflates_past_the_limit_is_413(trace_server, tmp_path):
    small = trace_server(str(tmp_path / "traces.db"), "--api-key", KEY, "--max-body", "2048")
    bomb = gzip.compress(b"\x00" * 100_000)
    assert len(bomb) < 2048
    answer = post(small, bomb, {**PROTOBUF, **AUTH, "Content-Encoding": "gzip"})
    assert answer.status_code == 413


def test_malformed_protobuf_is_400_with_a_status_saying_so(server):
    answer = post(server, b"\xff\xff\xff\xff not protobuf", {**PROTOBUF, **AUTH})

    assert answer.status_code == 400
    assert "malformed OTLP protobuf" in status_message(answer)


def test_malformed_json_is_400_in_json(server):
    answer = post(server, b'{"resourceSpans": [', {**AUTH, "Content-Type": "application/json"})

    assert answer.status_code == 400
    assert answer.json()["code"] == 3 and "malformed JSON" in answer.json()["error"]


@pytest.mark.parametrize("body, content_type", [
    (b"[" * 200_000, "application/json"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}', "application/json"),
    (b"\x0a\xff\xff\xff\xff\x0f", "application/x-protobuf"),
], ids=["deep-json", "json-id-of-the-wrong-type", "protobuf-length-past-the-end"])
def test_hostile_bodies_are_400_and_the_server_goes_on(server, body, content_type):
    answer = post(server, body, {**AUTH, "Content-Type": content_type})
    assert answer.status_code == 400

    spans = Spans()
    a_request_trace(spans)
    assert spans.export(server) == SpanExportResult.SUCCESS


def test_another_content_type_is_415(server):
    answer = post(server, b"<spans/>", {**AUTH, "Content-Type": "application/xml"})
    assert answer.status_code == 415
    assert "application/x-protobuf" in answer.json()["error"]


def test_partial_success_counts_the_rejected_spans_and_writes_the_rest(server):
    spans = Spans()
    a_request_trace(spans)
    request = export_request(spans)
    bad = request.resource_spans[0].scope_spans[0].spans.add()
    bad.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    bad.span_id = b"\x00" * 8  # invalid in W3C
    bad.name = "bad ids"

    answer = post(server, request.SerializeToString(), {**PROTOBUF, **AUTH})

    assert answer.status_code == 200, answer.text
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(answer.content)
    assert response.partial_success.rejected_spans == 1
    assert "1 of 5 spans rejected" in response.partial_success.error_message
    assert "span_id is all zeros" in response.partial_success.error_message
    [trace] = listed(server, "checkout")
    assert trace["spans"] == 4


# -- a slow or failing store: 503 and 429 with Retry-After, nothing written ----------------


@pytest.fixture
def locked_store(tmp_path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A store, made, then held locked by a transaction of the test: ``(path, release)``."""
    path = str(tmp_path / "locked.db")
    with open_store(path) as writer:
        writer.schema_version()  # made, at the current schema
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")

    def release() -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    yield path, release
    release()
    conn.close()


def one_trace_request() -> bytes:
    spans = Spans()
    a_request_trace(spans)
    return export_request(spans).SerializeToString()


def test_a_locked_store_is_503_with_retry_after_and_the_export_can_be_retried(trace_server,
                                                                              locked_store):
    path, release = locked_store
    server = trace_server(path, "--api-key", KEY)
    body = one_trace_request()

    answer = post(server, body, {**PROTOBUF, **AUTH})

    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    assert "store" in status_message(answer)
    release()
    assert listed_or_none(server, "checkout") in (None, [])
    assert post(server, body, {**PROTOBUF, **AUTH}).status_code == 200  # the retry is taken
    assert listed(server, "checkout")[0]["spans"] == 4


def test_a_full_write_queue_is_429_with_retry_after(trace_server, locked_store):
    path, release = locked_store
    server = trace_server(path, "--api-key", KEY, "--ingest-queue", "4")
    answers: list[httpx.Response] = []
    senders: list[threading.Thread] = []
    body = one_trace_request()

    def refused() -> httpx.Response | None:
        # One trace of 4 spans fills the queue for as long as the locked store takes to fail
        # it (seconds); a request posted meanwhile finds no room.
        if not any(sender.is_alive() for sender in senders):
            senders.append(threading.Thread(target=lambda: answers.append(
                post(server, body, {**PROTOBUF, **AUTH}))))
            senders[-1].start()
        answers.append(post(server, one_trace_request(), {**PROTOBUF, **AUTH}))
        return next((a for a in answers if a.status_code == 429), None)

    full = wait_until(refused, 60, "no export was refused while the queue was full")
    for sender in senders:
        sender.join(60)
    assert int(full.headers["retry-after"]) >= 1
    assert "queue" in status_message(full)
    release()
    assert listed_or_none(server, "checkout") in (None, [])


# -- the README's example ------------------------------------------------------------------


def readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as readme:
        text = readme.read()
    section = text[text.index("### Receiving OTLP"):]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def test_the_readmes_example_exports_its_trace_to_tracer_serve(server):
    code = readme_example().replace("http://127.0.0.1:8585", server.url)
    run_python(code, env=clean_env(TRACER_API_KEY=KEY))

    [trace] = listed(server, "checkout")
    assert (trace["name"], trace["spans"], trace["tokens"]) == ("handle order", 2, 13)

