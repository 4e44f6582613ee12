"""OTLP spans to rows (``workers/otlp.py``): the README's mapping table, one behaviour a test,
on requests built with opentelemetry-proto's own messages."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tracer import w3c, wire
from workers import otlp

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
ROOT_SPAN = 0xB7AD6B7169203331
CHILD_SPAN = 0x00F067AA0BA902B7
T0 = 1_800_000_000_000_000_000  # ns


def any_value(value: Any) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, bytes):
        return common_pb2.AnyValue(bytes_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(
            values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(
            values=[common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in value.items()]))
    return common_pb2.AnyValue(string_value=value)


def kvs(attributes: dict[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def make_span(span_id: int = ROOT_SPAN, parent: int | None = None, name: str = "work",
              trace_id: int = TRACE_ID, start: int = T0, end: int = T0 + 1_500_000_000,
              attributes: dict[str, Any] | None = None, **fields: Any) -> trace_pb2.Span:
    return trace_pb2.Span(
        trace_id=trace_id.to_bytes(16, "big"), span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"", name=name,
        start_time_unix_nano=start, end_time_unix_nano=end,
        attributes=kvs(attributes or {}), **fields)


def request(*spans: trace_pb2.Span, resource: dict[str, Any] | None = None,
            scope: str = "test-scope") -> trace_service_pb2.ExportTraceServiceRequest:
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[
        trace_pb2.ResourceSpans(
            resource={"attributes": kvs({"service.name": "checkout", **(resource or {})})},
            scope_spans=[trace_pb2.ScopeSpans(scope={"name": scope, "version": "1.0"},
                                              spans=list(spans))])])


def rows_of(req: trace_service_pb2.ExportTraceServiceRequest, **kwargs: Any) -> list[
        tuple[str, dict]]:
    mapped = otlp.request_rows(req, **kwargs)
    assert mapped.rejected == 0, mapped.message
    return mapped.rows


def one_row(span: trace_pb2.Span, **kwargs: Any) -> dict:
    [(_, row)] = rows_of(request(span), **kwargs)
    return row


# -- ids, names, times -------------------------------------------------------------------------


def test_ids_map_through_the_w3c_mapping_with_the_parent_as_span_parents():
    root, child = (row for _, row in rows_of(request(
        make_span(ROOT_SPAN), make_span(CHILD_SPAN, parent=ROOT_SPAN))))

    span_id, root_span_id = w3c.row_ids(TRACE_ID, CHILD_SPAN)
    assert (child["id"], child["span_id"], child["root_span_id"]) == (
        span_id, span_id, root_span_id)
    assert child["span_parents"] == [root["span_id"]] == [w3c.row_ids(TRACE_ID, ROOT_SPAN)[0]]
    assert root["span_parents"] is None
    # A trace begun by OpenTelemetry: its first span is not root by id (docs/interop.md).
    assert root["span_id"] != root["root_span_id"] == child["root_span_id"]


def test_a_span_of_a_trace_begun_here_gets_back_exactly_our_ids():
    trace, root, span = 0x1111, 0x2222, 0x3333
    trace_id, span_id = w3c.to_w3c(trace, span, root)
    row = one_row(make_span(span_id, trace_id=trace_id, parent=root))

    assert row["span_id"] == wire.format_id(trace, span)
    assert row["root_span_id"] == row["span_parents"][0] == wire.format_id(trace, root)


def test_the_name_goes_to_span_attributes_and_the_times_to_metrics_in_seconds():
    row = one_row(make_span(name="GET /cart", start=T0, end=T0 + 250_000_000))

    assert row["span_attributes"] == {"name": "GET /cart"}
    assert row["metrics"] == {"start": 1_800_000_000.0, "end": 1_800_000_000.25}
    assert row["created"].startswith("2027-01-15T08:00:00")


def test_a_span_without_an_end_time_is_stored_running():
    row = one_row(make_span(end=0))
    assert row["metrics"] == {"start": 1_800_000_000.0}


def test_kind_status_ids_scope_and_resource_are_kept_under_metadata_otel():
    span = make_span(CHILD_SPAN, parent=ROOT_SPAN, kind=trace_pb2.Span.SPAN_KIND_SERVER,
                     status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_OK),
                     trace_state="vendor=x")
    [(_, row)] = rows_of(request(span, resource={"host.name": "web-1"}))

    assert row["metadata"]["otel"] == {
        "trace_id": f"{TRACE_ID:032x}", "span_id": f"{CHILD_SPAN:016x}",
        "parent_span_id": f"{ROOT_SPAN:016x}", "kind": "server", "trace_state": "vendor=x",
        "status": {"code": "OK"},
        "resource": {"service.name": "checkout", "host.name": "web-1"},
        "scope": {"name": "test-scope", "version": "1.0"}}


def test_attributes_nothing_else_takes_are_kept_under_metadata_otel_attributes():
    row = one_row(make_span(attributes={"http.method": "GET", "retries": 2, "ok": True,
                                        "tags": ["a", "b"], "nested": {"k": 1.5}}))

    assert row["metadata"]["otel"]["attributes"] == {
        "http.method": "GET", "retries": 2, "ok": True, "tags": ["a", "b"],
        "nested": {"k": 1.5}}


def test_events_and_links_are_kept_under_metadata_otel():
    span = make_span(events=[trace_pb2.Span.Event(time_unix_nano=T0 + 10**9, name="cache miss",
                                                   attributes=kvs({"key": "cart:1"}))],
                     links=[trace_pb2.Span.Link(trace_id=TRACE_ID.to_bytes(16, "big"),
                                                span_id=CHILD_SPAN.to_bytes(8, "big"))])
    otel = one_row(span)["metadata"]["otel"]

    assert otel["events"] == [{"name": "cache miss", "time": 1_800_000_001.0,
                               "attributes": {"key": "cart:1"}}]
    span_id, root_span_id = w3c.row_ids(TRACE_ID, CHILD_SPAN)
    assert otel["links"] == [{"trace_id": f"{TRACE_ID:032x}", "span_id": f"{CHILD_SPAN:016x}",
                              "row_span_id": span_id, "row_root_span_id": root_span_id}]


def test_rows_of_one_resource_share_no_dict_that_a_merge_could_change():
    [(_, first), (_, second)] = rows_of(request(make_span(), make_span(CHILD_SPAN),
                                                resource={"host.name": "web-1",
                                                          "labels": {"team": "a"}}))
    first["metadata"]["otel"]["resource"]["labels"]["team"] = "changed"
    first["origin"]["host"] = "changed"
    assert second["metadata"]["otel"]["resource"]["labels"] == {"team": "a"}
    assert second["origin"] == {"host": "web-1"}


def test_the_resources_host_becomes_the_rows_origin():
    [(_, row)] = rows_of(request(make_span(), resource={"host.name": "web-1",
                                                        "process.pid": 4242}))
    assert row["origin"] == {"host": "web-1", "pid": 4242}


# -- errors ------------------------------------------------------------------------------------


def exception_event(kind: str = "ValueError", message: str = "boom",
                    stack: str | None = None) -> trace_pb2.Span.Event:
    attrs = {"exception.type": kind, "exception.message": message}
    if stack is not None:
        attrs["exception.stacktrace"] = stack
    return trace_pb2.Span.Event(time_unix_nano=T0 + 1, name="exception", attributes=kvs(attrs))


def test_an_exception_event_becomes_the_error_in_the_shape_our_rows_have():
    stack = "Traceback (most recent call last):\n  File \"app.py\", line 1\nValueError: boom\n"
    row = one_row(make_span(events=[exception_event(stack=stack)],
                            status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR,
                                                    message="ValueError: boom")))

    assert row["error"] == f"ValueError: boom\n\n{stack}"
    assert "events" not in row["metadata"]["otel"]  # it is the error, not an event as well


def test_an_error_status_without_an_exception_event_becomes_the_error_with_its_message():
    row = one_row(make_span(status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR,
                                                    message="upstream returned 502")))
    assert row["error"] == "upstream returned 502"
    assert row["metadata"]["otel"]["status"] == {"code": "ERROR",
                                                 "message": "upstream returned 502"}


def test_an_error_status_without_a_message_still_marks_the_span_in_error():
    row = one_row(make_span(status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR)))
    assert row["error"] == "OpenTelemetry status ERROR"


def test_a_span_that_ended_well_has_no_error():
    assert "error" not in one_row(make_span())


# -- GenAI semantic conventions ----------------------------------------------------------------


def test_genai_attributes_make_an_llm_span_with_messages_model_and_token_metrics():
    row = one_row(make_span(name="chat gpt-4o", attributes={
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.request.temperature": 0.2, "gen_ai.operation.name": "chat",
        "gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "Be brief.",
        "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "Hi?",
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "Hello.",
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 3}))

    assert row["span_attributes"] == {"name": "chat gpt-4o", "type": "llm"}
    assert row["input"] == [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hi?"}]
    assert row["output"] == [{"role": "assistant", "content": "Hello."}]
    assert {k: row["metrics"][k] for k in ("prompt_tokens", "completion_tokens", "tokens")} == {
        "prompt_tokens": 12, "completion_tokens": 3, "tokens": 15}
    assert (row["metadata"]["model"], row["metadata"]["provider"],
            row["metadata"]["temperature"]) == ("gpt-4o", "openai", 0.2)
    # What was mapped is not kept twice; the rest is.
    assert row["metadata"]["otel"]["attributes"] == {"gen_ai.operation.name": "chat"}


def test_the_older_token_names_count_as_the_current_ones():
    row = one_row(make_span(attributes={"gen_ai.usage.prompt_tokens": 7,
                                        "gen_ai.usage.completion_tokens": 5}))
    assert (row["metrics"]["prompt_tokens"], row["metrics"]["completion_tokens"],
            row["metrics"]["tokens"]) == (7, 5, 12)


def test_indexed_tool_calls_become_lists_inside_their_message():
    row = one_row(make_span(attributes={
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.tool_calls.0.name": "lookup",
        "gen_ai.completion.0.tool_calls.0.arguments": "{\"q\": \"x\"}",
        "gen_ai.completion.0.tool_calls.1.name": "fetch"}))
    assert row["output"] == [{"role": "assistant", "tool_calls": [
        {"name": "lookup", "arguments": "{\"q\": \"x\"}"}, {"name": "fetch"}]}]


def test_genai_input_and_output_messages_with_parts_become_chat_messages():
    messages = [{"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}]
    answer = [{"role": "assistant", "finish_reason": "tool_call", "parts": [
        {"type": "tool_call", "id": "c1", "name": "weather", "arguments": {"city": "Paris"}}]}]
    row = one_row(make_span(attributes={"gen_ai.input.messages": json.dumps(messages),
                                        "gen_ai.output.messages": json.dumps(answer),
                                        "gen_ai.system_instructions": "Be kind."}))

    assert row["input"] == [{"role": "system", "content": "Be kind."},
                            {"role": "user", "content": "Weather in Paris?"}]
    assert row["output"] == [{"role": "assistant", "finish_reason": "tool_call",
                              "content": None, "tool_calls": [
                                  {"id": "c1", "type": "function", "function": {
                                      "name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]}]


def test_a_prompt_and_completion_given_whole_are_the_input_and_output():
    row = one_row(make_span(attributes={"gen_ai.prompt": "Say hi", "gen_ai.completion": "hi"}))
    assert (row["input"], row["output"], row["span_attributes"]["type"]) == (
        "Say hi", "hi", "llm")


def test_a_genai_tool_execution_is_a_tool_span():
    row = one_row(make_span(attributes={"gen_ai.operation.name": "execute_tool",
                                        "gen_ai.tool.name": "weather"}))
    assert row["span_attributes"]["type"] == "tool"


# -- the reference's braintrust.* attributes --------------------------------------------------


def test_braintrust_attributes_set_the_fields_they_name():
    row = one_row(make_span(attributes={
        "braintrust.input_json": json.dumps({"question": "2+2?"}),
        "braintrust.output_json": json.dumps({"answer": 4}),
        "braintrust.expected": "4",
        "braintrust.metadata": json.dumps({"user": "u1"}),
        "braintrust.metrics": json.dumps({"cost": 0.01}),
        "braintrust.scores": json.dumps({"correct": 1}),
        "braintrust.tags": ["math", "eval"],
        "braintrust.span_attributes": json.dumps({"type": "eval"})}))

    assert (row["input"], row["output"], row["expected"]) == ({"question": "2+2?"},
                                                              {"answer": 4}, "4")
    assert row["metadata"]["user"] == "u1"
    assert row["metrics"]["cost"] == 0.01
    assert (row["scores"], row["tags"]) == ({"correct": 1}, ["math", "eval"])
    assert row["span_attributes"] == {"name": "work", "type": "eval"}
    assert "attributes" not in row["metadata"]["otel"]


def test_braintrust_attributes_win_over_genai_ones():
    row = one_row(make_span(attributes={"gen_ai.prompt": "from genai",
                                        "braintrust.input": "from braintrust",
                                        "braintrust.span_attributes": {"type": "task"}}))
    assert (row["input"], row["span_attributes"]["type"]) == ("from braintrust", "task")


def test_flat_braintrust_metadata_keys_join_the_metadata():
    row = one_row(make_span(attributes={"braintrust.metadata.user": "u1",
                                        "braintrust.metrics.cost": 2}))
    assert (row["metadata"]["user"], row["metrics"]["cost"]) == ("u1", 2)


def test_a_braintrust_json_attribute_that_is_not_json_stays_in_metadata():
    row = one_row(make_span(attributes={"braintrust.input_json": "{not json"}))
    assert "input" not in row
    assert row["metadata"]["otel"]["attributes"] == {"braintrust.input_json": "{not json"}


@pytest.mark.parametrize("attributes, named", [
    ({"braintrust.scores": json.dumps({"q": 3})}, "braintrust.scores"),
    ({"braintrust.metrics": json.dumps({"cost": "high"})}, "braintrust.metrics"),
    ({"braintrust.span_attributes": json.dumps({"type": "banana"})}, "type"),
    ({"braintrust.metadata": "[1, 2]"}, "braintrust.metadata"),
    ({"braintrust.tags": [1, 2]}, "braintrust.tags"),
])
def test_a_braintrust_attribute_that_is_not_what_its_field_takes_rejects_its_span(attributes,
                                                                                   named):
    mapped = otlp.request_rows(request(make_span(attributes=attributes)))
    assert (mapped.rejected, mapped.rows) == (1, [])
    assert named in mapped.message


# -- containers --------------------------------------------------------------------------------


def container_of(req: trace_service_pb2.ExportTraceServiceRequest, **kwargs: Any) -> str:
    [(key, _)] = rows_of(req, **kwargs)
    return key


def test_the_project_is_the_services_name_without_anything_else():
    assert container_of(request(make_span())) == wire.logs_container("checkout")


def test_without_a_service_name_the_project_is_default():
    req = request(make_span(), resource={"service.name": ""})
    assert container_of(req) == wire.logs_container("default")


def test_a_resources_tracer_project_or_braintrust_parent_wins_over_its_service_name():
    assert container_of(request(make_span(), resource={"tracer.project": "shop"})) == \
        wire.logs_container("shop")
    assert container_of(request(make_span(), resource={
        "braintrust.parent": "project_name:shop2"})) == wire.logs_container("shop2")


def test_openinferences_project_attribute_names_the_project_as_phoenix_reads_it():
    req = request(make_span(), resource={"openinference.project.name": "agents"})
    assert container_of(req) == wire.logs_container("agents")


def test_the_request_header_wins_over_the_resource():
    req = request(make_span(), resource={"tracer.project": "shop"})
    assert container_of(req, project="from-header") == wire.logs_container("from-header")
    assert container_of(req, parent="project_name:bt") == wire.logs_container("bt")


def test_a_spans_braintrust_parent_wins_over_the_request_header():
    req = request(make_span(attributes={"braintrust.parent": "project_name:own"}))
    assert container_of(req, project="from-header") == wire.logs_container("own")


def test_project_and_experiment_ids_are_resolved_through_the_store():
    experiment = wire.experiment_container("shop", "e-1", "nightly")
    known = {("experiment_id", "e-1"): experiment,
             ("project_id", "p-1"): wire.logs_container("shop")}

    def resolve(kind: str, ident: str) -> str | None:
        return known.get((kind, ident))

    assert container_of(request(make_span()), parent="experiment_id:e-1",
                        resolve=resolve) == experiment
    assert container_of(request(make_span(attributes={"braintrust.parent": "project_id:p-1"})),
                        resolve=resolve) == wire.logs_container("shop")
    mapped = otlp.request_rows(request(make_span(attributes={
        "braintrust.parent": "experiment_id:nope"})), resolve=resolve)
    assert mapped.rejected == 1 and "no experiment id 'nope'" in mapped.message


@pytest.mark.parametrize("header", [{"project": "a\x1fb"}, {"project": ""},
                                    {"parent": "bucket:x"}, {"project": "p" * 300}])
def test_a_header_that_names_no_project_is_a_request_error(header):
    with pytest.raises(otlp.RequestError):
        otlp.request_rows(request(make_span()), **header)


# -- what is rejected, and bounds -------------------------------------------------------------


@pytest.mark.parametrize("span, reason", [
    (make_span(trace_id=0), "all zeros"),
    (trace_pb2.Span(trace_id=b"\x01" * 15, span_id=b"\x01" * 8, start_time_unix_nano=T0),
     "trace_id must be 16 bytes"),
    (trace_pb2.Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 4, start_time_unix_nano=T0),
     "span_id must be 8 bytes"),
    (make_span(start=0), "start_time_unix_nano is missing"),
])
def test_a_span_that_cannot_be_a_row_is_rejected_and_the_others_are_kept(span, reason):
    mapped = otlp.request_rows(request(make_span(CHILD_SPAN), span))

    assert (mapped.spans, mapped.rejected, len(mapped.rows)) == (2, 1, 1)
    assert mapped.message.startswith("1 of 2 spans rejected: ") and reason in mapped.message


def test_a_check_that_refuses_a_row_rejects_its_span_alone():
    def check(key: str, row: dict) -> None:
        if row["span_attributes"]["name"] == "bad":
            raise ValueError("the store cannot take it")

    mapped = otlp.request_rows(request(make_span(name="bad"), make_span(CHILD_SPAN)),
                               check=check)
    assert (mapped.rejected, [r["span_attributes"]["name"] for _, r in mapped.rows]) == (
        1, ["work"])
    assert "the store cannot take it" in mapped.message


def test_attribute_counts_key_lengths_nesting_and_kept_strings_are_bounded():
    deep: Any = "bottom"
    for _ in range(40):
        deep = [deep]
    attributes: dict[str, Any] = {f"a{i}": i for i in range(otlp.MAX_ATTRIBUTES + 10)}
    attributes["k" * (otlp.MAX_KEY + 1)] = "long key"
    span = make_span(attributes={"deep": deep, "big": "x" * (otlp.MAX_META_STRING + 100),
                                 **attributes})
    otel = one_row(span)["metadata"]["otel"]

    kept = otel["attributes"]
    assert len(kept) == otlp.MAX_ATTRIBUTES
    # 2 + MAX + 10 + 1 given: MAX kept, the 10 + 2 over the count and the long key dropped
    assert otel["dropped"] == {"attributes": 13}
    assert kept["big"].endswith("…[100 more characters]")
    assert len(kept["big"]) < otlp.MAX_META_STRING + 40
    level = kept["deep"]
    for _ in range(otlp.MAX_DEPTH):
        level = level[0]
    assert level == f"<nested deeper than {otlp.MAX_DEPTH} levels>"


def test_events_beyond_the_bound_are_counted_as_dropped():
    events = [trace_pb2.Span.Event(time_unix_nano=T0, name=f"e{i}")
              for i in range(otlp.MAX_EVENTS + 3)]
    otel = one_row(make_span(events=events, dropped_events_count=2))["metadata"]["otel"]
    assert len(otel["events"]) == otlp.MAX_EVENTS
    assert otel["dropped"] == {"events": 5}


def test_json_attributes_nested_too_deep_are_not_parsed_into_fields():
    deep = "[" * (otlp.MAX_JSON_DEPTH + 1) + "]" * (otlp.MAX_JSON_DEPTH + 1)
    row = one_row(make_span(attributes={"braintrust.input_json": deep}))
    assert "input" not in row


def test_non_finite_doubles_are_kept_as_text():
    row = one_row(make_span(attributes={"ratio": float("nan")}))
    assert row["metadata"]["otel"]["attributes"] == {"ratio": "nan"}


# -- encodings ---------------------------------------------------------------------------------


def otlp_json(req: trace_service_pb2.ExportTraceServiceRequest) -> bytes:
    """``req`` in OTLP/JSON as the specification has it: hex ids, not protobuf's base64."""
    document = json_format.MessageToDict(req)
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for name in ("traceId", "spanId", "parentSpanId"):
                    if name in span:
                        span[name] = base64.b64decode(span[name]).hex()
    return json.dumps(document).encode()


def test_otlp_json_with_hex_ids_reads_as_the_same_request_as_protobuf():
    req = request(make_span(), make_span(CHILD_SPAN, parent=ROOT_SPAN,
                                         kind=trace_pb2.Span.SPAN_KIND_CLIENT))
    assert otlp.decode_request(otlp_json(req), otlp.JSON) == req
    assert otlp.decode_request(req.SerializeToString(), otlp.PROTOBUF) == req


def test_otlp_json_takes_enums_as_numbers_and_ignores_unknown_fields():
    document = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": f"{TRACE_ID:032x}", "spanId": f"{ROOT_SPAN:016x}", "name": "x",
        "kind": 3, "startTimeUnixNano": str(T0), "status": {"code": "STATUS_CODE_ERROR"},
        "someFutureField": True}]}]}], "alsoUnknown": 1}
    req = otlp.decode_request(json.dumps(document).encode(), otlp.JSON)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    assert (span.kind, span.status.code, span.start_time_unix_nano) == (
        trace_pb2.Span.SPAN_KIND_CLIENT, trace_pb2.Status.STATUS_CODE_ERROR, T0)


@pytest.mark.parametrize("body, encoding", [
    (b"\xff\xff\xff", otlp.PROTOBUF), (b"{", otlp.JSON), (b"[1]", otlp.JSON),
    (b'{"resourceSpans": 5}', otlp.JSON), (b"\xff", otlp.JSON),
    (b"[" * 100_000, otlp.JSON),
])
def test_a_body_that_is_no_request_is_a_request_error(body, encoding):
    with pytest.raises(otlp.RequestError):
        otlp.decode_request(body, encoding)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    size, out = len(payload), bytearray()
    while True:
        low, size = size & 0x7F, size >> 7
        out.append(low | (0x80 if size else 0))
        if not size:
            break
    return bytes([number << 3 | 2]) + bytes(out) + payload


def deep_protobuf(levels: int) -> bytes:
    """A request whose one attribute is an array nested ``levels`` deep (written by hand:
    protobuf would not serialise it)."""
    value = b""
    for _ in range(levels):
        value = _field(5, _field(1, value))  # AnyValue.array_value -> ArrayValue.values
    span = (_field(1, TRACE_ID.to_bytes(16, "big")) + _field(2, ROOT_SPAN.to_bytes(8, "big"))
            + b"\x39" + T0.to_bytes(8, "little")  # start_time_unix_nano (fixed64)
            + _field(9, _field(1, b"deep") + _field(2, value)))  # Span.attributes
    return _field(1, _field(2, _field(2, span)))  # resource_spans.scope_spans.spans


def test_a_protobuf_nested_deeper_than_protobuf_reads_is_a_request_error():
    with pytest.raises(otlp.RequestError, match="malformed OTLP protobuf"):
        otlp.decode_request(deep_protobuf(5000), otlp.PROTOBUF)


def test_a_protobuf_nested_as_deep_as_protobuf_reads_is_kept_to_the_bound():
    request = otlp.decode_request(deep_protobuf(40), otlp.PROTOBUF)
    [(_, row)] = otlp.request_rows(request).rows
    level = row["metadata"]["otel"]["attributes"]["deep"]
    for _ in range(otlp.MAX_DEPTH):
        level = level[0]
    assert level == f"<nested deeper than {otlp.MAX_DEPTH} levels>"


def test_the_response_carries_partial_success_in_the_requests_encoding():
    assert otlp.encode_response(0, "", otlp.PROTOBUF) == b""
    assert json.loads(otlp.encode_response(0, "", otlp.JSON)) == {}
    parsed = trace_service_pb2.ExportTraceServiceResponse.FromString(
        otlp.encode_response(2, "2 of 3 spans rejected", otlp.PROTOBUF))
    assert (parsed.partial_success.rejected_spans,
            parsed.partial_success.error_message) == (2, "2 of 3 spans rejected")
    assert json.loads(otlp.encode_response(2, "why", otlp.JSON)) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "why"}}


def test_an_error_body_is_a_google_rpc_status():
    body = otlp.encode_status(3, "malformed", otlp.PROTOBUF)
    assert body == b"\x08\x03\x12\x09malformed"
    assert json.loads(otlp.encode_status(3, "malformed", otlp.JSON)) == {
        "code": 3, "message": "malformed", "error": "malformed"}
