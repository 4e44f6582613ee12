"""Our rows as OTLP spans (workers/otlp_export.py), checked by decoding the protobuf the mapping
writes with opentelemetry-proto, as a receiver would."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status  # noqa: E402

from tracer import w3c, wire  # noqa: E402
from workers import otlp_export  # noqa: E402
from workers.rows import Container, record_to_row  # noqa: E402

PROJECT = wire.logs_container("otlp-project")
TRACE, ROOT = 0x0123456789ABCDEF, 0x1111111111111111


def ended(span: int, parents: Any = None, name: str = "work", span_type: str | None = None,
          start: float = 1_700_000_000.25, end: float = 1_700_000_001.5,
          fields: dict | None = None, container: str = PROJECT,
          inp: Any = None) -> tuple[Container, dict]:
    """The row the aggregator makes of a span's end record."""
    record = wire.span_end(container, TRACE, span, parents, ROOT, None, name, span_type, start,
                           end, fields, None if inp is None else (None, inp))
    found, _, row = record_to_row(record, Container)
    return found, row


def decoded(*rows: tuple[Container, dict], service: str | None = None
            ) -> ExportTraceServiceRequest:
    """The request as a receiver gets it: serialized, then parsed."""
    body = otlp_export.to_request(rows, service).SerializeToString()
    return ExportTraceServiceRequest.FromString(body)


def spans(request: ExportTraceServiceRequest) -> list[Span]:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    assert kind is not None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


def attributes(item: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in item.attributes}


def only_span(*rows: tuple[Container, dict]) -> Span:
    [span] = spans(decoded(*rows))
    return span


# -- ids and the tree --------------------------------------------------------------------------


def test_ids_follow_the_w3c_mapping_of_tracer_w3c() -> None:
    span = only_span(ended(0x42, parents=ROOT))
    trace_id, span_id = w3c.from_row_ids(wire.format_id(TRACE, 0x42), wire.format_id(TRACE, ROOT))
    assert span.trace_id == trace_id.to_bytes(16, "big")
    assert span.span_id == span_id.to_bytes(8, "big") == (0x42).to_bytes(8, "big")
    assert span.trace_id.hex() == wire.format_id(TRACE, ROOT).replace("-", "")


def test_the_parent_is_the_first_of_span_parents() -> None:
    span = only_span(ended(0x42, parents=[0x7, 0x8]))
    assert span.parent_span_id == (0x7).to_bytes(8, "big")


def test_further_parents_become_links_in_the_same_trace() -> None:
    span = only_span(ended(0x42, parents=[0x7, 0x8, 0x9]))
    assert [link.span_id for link in span.links] == [(0x8).to_bytes(8, "big"),
                                                    (0x9).to_bytes(8, "big")]
    assert all(link.trace_id == span.trace_id for link in span.links)


def test_a_root_span_has_no_parent() -> None:
    span = only_span(ended(ROOT))
    assert span.parent_span_id == b""
    assert span.span_id == span.trace_id[8:]


def test_the_same_row_exported_twice_keeps_its_ids() -> None:
    first, second = only_span(ended(0x42, parents=ROOT)), only_span(ended(0x42, parents=ROOT))
    assert (first.trace_id, first.span_id) == (second.trace_id, second.span_id)


def test_rows_with_ids_from_elsewhere_get_deterministic_valid_ids() -> None:
    container, row = ended(0x42)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    row.update(span_id=a, root_span_id=b, span_parents=["not-a-uuid"])
    span = only_span((container, row))
    assert span.trace_id == uuid.UUID(b).bytes
    assert span.span_id == uuid.UUID(a).bytes[8:]
    assert span.parent_span_id != bytes(8) and len(span.parent_span_id) == 8
    assert only_span((container, row)).parent_span_id == span.parent_span_id


def test_an_all_zero_id_is_never_exported() -> None:
    container, row = ended(0x42)
    row.update(span_id=str(uuid.UUID(int=0)), root_span_id=str(uuid.UUID(int=0)))
    span = only_span((container, row))
    assert span.trace_id != bytes(16) and span.span_id != bytes(8)


# -- name, kind, times, status -----------------------------------------------------------------


def test_name_and_times_in_nanoseconds() -> None:
    span = only_span(ended(0x42, name="fetch", start=1_700_000_000.25, end=1_700_000_001.5))
    assert span.name == "fetch"
    assert span.start_time_unix_nano == 1_700_000_000_250_000_000
    assert span.end_time_unix_nano == 1_700_000_001_500_000_000


def test_an_llm_span_is_a_client_span_and_others_internal() -> None:
    assert only_span(ended(0x42, span_type="llm")).kind == Span.SPAN_KIND_CLIENT
    assert only_span(ended(0x43, span_type="task")).kind == Span.SPAN_KIND_INTERNAL


def test_a_span_without_error_leaves_its_status_unset() -> None:
    span = only_span(ended(0x42))
    assert span.status.code == Status.STATUS_CODE_UNSET
    assert not span.events


def test_an_error_is_status_error_and_an_exception_event() -> None:
    error = ("ValueError: boom\n\nTraceback (most recent call last):\n"
             '  File "x.py", line 1, in f\n')
    span = only_span(ended(0x42, fields={"error": error}))
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert span.status.message == "ValueError: boom"
    [event] = span.events
    assert event.name == "exception"
    assert event.time_unix_nano == span.end_time_unix_nano
    assert attributes(event) == {
        "exception.type": "ValueError", "exception.message": "boom",
        "exception.stacktrace": 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n'}


def test_an_error_rebuilt_as_type_message_blank_line_stacktrace_is_the_error_again() -> None:
    # What a receiver that writes errors as tracer does (tracer serve's OTLP receiver) gets.
    for error in ("ValueError: boom\n\nTraceback (most recent call last):\n  x\n",
                  "ValueError: two\nlines\n\nTraceback:\n", "mod.Failure: x", "timeout: upstream",
                  "ValueError\n\nTraceback:\n"):
        found = attributes(only_span(ended(0x42, fields={"error": error})).events[0])
        kind, message = found.get("exception.type"), found["exception.message"]
        head = f"{kind}: {message}" if kind and message else kind or message
        stack = found.get("exception.stacktrace")
        assert (f"{head}\n\n{stack}" if stack else head) == error


def test_an_error_that_is_not_an_exception_keeps_its_text_as_the_message() -> None:
    span = only_span(ended(0x42, fields={"error": "the sender died"}))
    assert span.status.message == "the sender died"
    assert attributes(span.events[0]) == {"exception.message": "the sender died"}


def test_an_error_logged_as_a_dict_is_its_json() -> None:
    span = only_span(ended(0x42, fields={"error": {"code": 3}}))
    assert attributes(span.events[0])["exception.message"] == '{"code":3}'


# -- the row's fields as braintrust.* attributes -----------------------------------------------


def test_fields_become_braintrust_attributes_as_json() -> None:
    fields = {"output": {"answer": 42}, "expected": "42", "metadata": {"user": "ada"},
              "metrics": {"retries": 2}, "scores": {"exact": 1}, "tags": ["a", "b"]}
    span = only_span(ended(0x42, span_type="function", fields=fields, inp={"q": "why?"}))
    found = attributes(span)
    assert json.loads(found["braintrust.input_json"]) == {"q": "why?"}
    assert json.loads(found["braintrust.output_json"]) == {"answer": 42}
    assert json.loads(found["braintrust.expected_json"]) == "42"
    assert json.loads(found["braintrust.metadata"]) == {"user": "ada"}
    assert json.loads(found["braintrust.metrics"]) == {"retries": 2}  # start/end: the times
    assert json.loads(found["braintrust.scores"]) == {"exact": 1}
    assert found["braintrust.tags"] == ["a", "b"]
    assert json.loads(found["braintrust.span_attributes"]) == {"name": "work", "type": "function"}
    assert found["braintrust.parent"] == "project_name:otlp-project"


def test_fields_not_logged_are_not_attributes() -> None:
    found = attributes(only_span(ended(0x42)))
    assert not {"braintrust.input_json", "braintrust.output_json", "braintrust.metadata",
                "braintrust.metrics", "braintrust.tags"} & found.keys()


def test_an_experiment_row_names_its_experiment() -> None:
    container = wire.experiment_container("otlp-project", "exp-1", "baseline")
    found = attributes(only_span(ended(0x42, container=container)))
    assert found["braintrust.parent"] == "experiment_id:exp-1"
    assert found["tracer.experiment_name"] == "baseline"


def test_a_row_id_other_than_the_span_id_is_kept() -> None:
    container, row = ended(0x42)
    row["id"] = "my-row"
    assert attributes(only_span((container, row)))["tracer.row_id"] == "my-row"
    assert "tracer.row_id" not in attributes(only_span(ended(0x43)))


def test_values_json_cannot_hold_get_stand_ins() -> None:
    span = only_span(ended(0x42, fields={"output": b"\x00\x01", "metadata": {"x": float("nan")}}))
    found = attributes(span)
    assert json.loads(found["braintrust.output_json"]).startswith("<bytes: 2 bytes")
    assert json.loads(found["braintrust.metadata"]) == {"x": "NaN"}


def test_a_name_utf8_cannot_hold_is_escaped_not_a_failure() -> None:
    assert only_span(ended(0x42, name="a\ud800b")).name == "a\\ud800b"


# -- GenAI conventions for llm spans -----------------------------------------------------------


def llm_row() -> tuple[Container, dict]:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    choices = [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Sunny."}}]
    return ended(0x42, name="Chat Completion", span_type="llm", inp=messages, fields={
        "output": choices,
        "metadata": {"model": "gpt-4o-mini", "provider": "openai", "temperature": 0.5,
                     "max_tokens": 100, "max_completion_tokens": 90, "stop": "\n"},
        "metrics": {"prompt_tokens": 12, "completion_tokens": 3, "tokens": 15}})


def test_an_llm_span_has_the_gen_ai_model_provider_and_parameters() -> None:
    found = attributes(only_span(llm_row()))
    assert found["gen_ai.operation.name"] == "chat"
    assert found["gen_ai.provider.name"] == found["gen_ai.system"] == "openai"
    assert found["gen_ai.request.model"] == "gpt-4o-mini"
    assert found["gen_ai.request.temperature"] == 0.5
    assert found["gen_ai.request.max_tokens"] == 100


def test_only_parameters_the_conventions_name_alike_become_gen_ai_request_attributes() -> None:
    # A receiver maps gen_ai.request.<name> back to metadata.<name>: no key it did not come from.
    found = attributes(only_span(llm_row()))
    assert sorted(k for k in found if k.startswith("gen_ai.request.")) == [
        "gen_ai.request.max_tokens", "gen_ai.request.model", "gen_ai.request.temperature"]


def test_an_llm_span_has_the_gen_ai_token_usage() -> None:
    found = attributes(only_span(llm_row()))
    assert found["gen_ai.usage.input_tokens"] == 12
    assert found["gen_ai.usage.output_tokens"] == 3
    assert json.loads(found["braintrust.metrics"]) == {"prompt_tokens": 12,
                                                       "completion_tokens": 3, "tokens": 15}


def test_an_llm_span_has_its_messages_as_the_conventions_parts() -> None:
    found = attributes(only_span(llm_row()))
    assert json.loads(found["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "weather",
                                         "arguments": {"city": "Paris"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1",
                                    "response": "sunny"}]}]
    assert json.loads(found["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Sunny."}],
         "finish_reason": "stop"}]
    assert found["gen_ai.response.finish_reasons"] == ["stop"]


def test_an_llm_span_whose_output_is_text_has_one_assistant_message() -> None:
    found = attributes(only_span(ended(0x42, span_type="llm", inp="Say hi",
                                       fields={"output": "hi"})))
    assert json.loads(found["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Say hi"}]}]
    assert json.loads(found["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "hi"}]}]


def test_an_llm_span_with_input_that_is_not_messages_has_no_gen_ai_messages() -> None:
    found = attributes(only_span(ended(0x42, span_type="llm", inp={"prompt": 1},
                                       fields={"output": {"x": 1}})))
    assert "gen_ai.input.messages" not in found and "gen_ai.output.messages" not in found
    assert json.loads(found["braintrust.input_json"]) == {"prompt": 1}


def test_a_span_of_another_type_has_no_gen_ai_attributes() -> None:
    container, row = llm_row()
    row["span_attributes"]["type"] = "task"
    assert not [k for k in attributes(only_span((container, row))) if k.startswith("gen_ai.")]


# -- resources ---------------------------------------------------------------------------------


def test_the_service_is_the_project_unless_one_is_configured() -> None:
    [resource] = [rs.resource for rs in decoded(ended(0x42)).resource_spans]
    assert attributes(resource)["service.name"] == "otlp-project"
    assert attributes(resource)["tracer.project"] == "otlp-project"
    [resource] = [rs.resource for rs in decoded(ended(0x42), service="checkout").resource_spans]
    assert attributes(resource)["service.name"] == "checkout"
    assert attributes(resource)["tracer.project"] == "otlp-project"


def test_host_and_pid_come_from_the_rows_origin() -> None:
    container, row = ended(0x42)
    row["origin"] = {"host": "web-1", "pid": 4242}
    [resource] = [rs.resource for rs in decoded((container, row)).resource_spans]
    assert attributes(resource)["host.name"] == "web-1"
    assert attributes(resource)["process.pid"] == 4242


def test_spans_are_grouped_by_resource_in_the_order_they_first_appear() -> None:
    def at(span: int, host: str) -> tuple[Container, dict]:
        container, row = ended(span)
        row["origin"] = {"host": host, "pid": 1}
        return container, row

    request = decoded(at(1, "a"), at(2, "b"), at(3, "a"))
    assert [attributes(rs.resource)["host.name"] for rs in request.resource_spans] == ["a", "b"]
    assert [[s.span_id[-1] for s in rs.scope_spans[0].spans]
            for rs in request.resource_spans] == [[1, 3], [2]]
    assert request.resource_spans[0].scope_spans[0].scope.name == "tracer"


# -- what is a span ----------------------------------------------------------------------------


def test_a_row_that_has_not_ended_is_not_exportable() -> None:
    container, row = ended(0x42)
    del row["metrics"]["end"]
    assert not otlp_export.exportable(row)
    with pytest.raises(ValueError, match="not exportable"):
        otlp_export.to_request([(container, row)])


def test_an_update_without_ids_is_not_exportable() -> None:
    assert not otlp_export.exportable({"id": "x", "scores": {"a": 1}, "metrics": {"end": 1.0}})


def test_a_span_ending_before_it_starts_ends_when_it_starts() -> None:
    span = only_span(ended(0x42, start=10.0, end=5.0))
    assert span.start_time_unix_nano == span.end_time_unix_nano == 10_000_000_000


# -- rows as the aggregator has them -----------------------------------------------------------


def as_from_the_wire(value: Any) -> Any:
    """``value`` with its lists as tuples: the aggregator decodes records with msgpack's
    ``use_list=False``, so a row's arrays are tuples."""
    if isinstance(value, dict):
        return {k: as_from_the_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(as_from_the_wire(v) for v in value)
    return value


def test_arrays_decoded_from_the_wire_as_tuples_are_exported_like_lists() -> None:
    container, row = llm_row()
    row["tags"] = ["a", "b"]
    row["span_parents"] = [wire.format_id(TRACE, 7), wire.format_id(TRACE, 8)]
    expected = attributes(only_span((container, row)))
    span = only_span((container, as_from_the_wire(row)))
    assert attributes(span) == expected
    assert span.parent_span_id == (7).to_bytes(8, "big") and len(span.links) == 1
    assert expected["braintrust.tags"] == ["a", "b"] and "gen_ai.input.messages" in expected
