"""OpenTelemetry spans to our rows' fields (tracer/otel_mapping.py): the OTLP receiver's table,
from plain parts, as the in-process bridge calls it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tracer import otel_mapping, w3c
from tracer.otel_mapping import Event, Link

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN = 0x00F067AA0BA902B7
PARENT = 0xB7AD6B7169203331


def mapped(attributes: dict[str, Any] | None = None, **parts: Any) -> otel_mapping.MappedSpan:
    arguments: dict[str, Any] = {"name": "work", "kind": "internal", "trace_id": TRACE_ID,
                                 "span_id": SPAN, "parent_span_id": PARENT,
                                 "attributes": attributes or {}}
    arguments.update(parts)
    return otel_mapping.map_span(**arguments)


def otel(result: otel_mapping.MappedSpan) -> dict:
    return result.fields["metadata"]["otel"]


def test_kind_status_ids_trace_state_resource_and_scope_are_kept_under_metadata_otel() -> None:
    result = mapped(kind="SPAN_KIND_SERVER", status_code="OK", trace_state="vendor=x",
                    resource={"service.name": "checkout"},
                    scope={"name": "my.instrumentation", "version": "1.0"})
    assert otel(result) == {
        "trace_id": f"{TRACE_ID:032x}", "span_id": f"{SPAN:016x}",
        "parent_span_id": f"{PARENT:016x}", "kind": "server", "trace_state": "vendor=x",
        "status": {"code": "OK"}, "resource": {"service.name": "checkout"},
        "scope": {"name": "my.instrumentation", "version": "1.0"}}


def test_attributes_nothing_else_takes_are_kept_under_metadata_otel_attributes() -> None:
    result = mapped({"http.method": "GET", "retries": (1, 2)})
    assert otel(result)["attributes"] == {"http.method": "GET", "retries": [1, 2]}


def test_events_and_links_are_kept_under_metadata_otel() -> None:
    result = mapped(events=[Event("cache miss", 12.5, {"key": "k"})],
                    links=[Link(TRACE_ID, PARENT, {"why": "batch"})])
    assert otel(result)["events"] == [{"name": "cache miss", "time": 12.5,
                                       "attributes": {"key": "k"}}]
    row_span_id, row_root_span_id = w3c.row_ids(TRACE_ID, PARENT)
    assert otel(result)["links"] == [{"trace_id": f"{TRACE_ID:032x}",
                                      "span_id": f"{PARENT:016x}", "row_span_id": row_span_id,
                                      "row_root_span_id": row_root_span_id,
                                      "attributes": {"why": "batch"}}]


def test_the_last_exception_event_is_the_error_in_the_shape_our_rows_have() -> None:
    result = mapped(status_code="ERROR", status_message="ValueError: boom", events=[
        Event("exception", 1.0, {"exception.type": "KeyError", "exception.message": "k"}),
        Event("exception", 2.0, {"exception.type": "ValueError", "exception.message": "boom",
                                 "exception.stacktrace": "Traceback ...\nValueError: boom\n"})])
    assert result.fields["error"] == "ValueError: boom\n\nTraceback ...\nValueError: boom\n"
    assert "events" not in otel(result)


def test_an_error_status_without_an_exception_event_is_the_error() -> None:
    assert mapped(status_code="ERROR", status_message="upstream 503").fields["error"] == \
        "upstream 503"
    assert mapped(status_code=2).fields["error"] == "OpenTelemetry status ERROR"


def test_a_span_that_ended_well_has_no_error() -> None:
    assert "error" not in mapped(status_code="OK").fields


def test_genai_attributes_make_an_llm_span_with_messages_model_and_tokens() -> None:
    result = mapped({
        "gen_ai.request.model": "gpt-x", "gen_ai.system": "openai",
        "gen_ai.request.temperature": 0.5, "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
            {"type": "text", "content": "hi"}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
            {"type": "tool_call", "id": "c1", "name": "lookup", "arguments": {"q": 1}}]}]),
    })
    assert result.type == "llm"
    assert result.fields["input"] == [{"role": "user", "content": "hi"}]
    assert result.fields["output"] == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"q": 1}'}}]}]
    assert result.fields["metrics"] == {"prompt_tokens": 10, "completion_tokens": 3,
                                        "tokens": 13}
    metadata = result.fields["metadata"]
    assert (metadata["model"], metadata["provider"], metadata["temperature"]) == (
        "gpt-x", "openai", 0.5)
    assert "attributes" not in metadata["otel"]


def test_indexed_prompt_attributes_become_messages() -> None:
    result = mapped({"gen_ai.prompt.0.role": "system", "gen_ai.prompt.0.content": "be brief",
                     "gen_ai.prompt.1.role": "user", "gen_ai.prompt.1.content": "hi"})
    assert result.fields["input"] == [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": "hi"}]


def test_a_genai_tool_execution_is_a_tool_span() -> None:
    assert mapped({"gen_ai.operation.name": "execute_tool",
                   "gen_ai.request.model": "m"}).type == "tool"


def test_braintrust_attributes_set_the_fields_they_name_and_win_over_genai() -> None:
    result = mapped({
        "gen_ai.prompt": "from gen_ai", "braintrust.input_json": json.dumps({"q": 1}),
        "braintrust.output_json": json.dumps([1, 2]), "braintrust.expected": "e",
        "braintrust.metadata": json.dumps({"a": 1}), "braintrust.metadata.b": 2,
        "braintrust.metrics": json.dumps({"cost": 0.5}), "braintrust.scores": {"ok": 1},
        "braintrust.tags": ["t2", "t1"],
        "braintrust.span_attributes": json.dumps({"name": "renamed", "type": "score"}),
    })
    fields = result.fields
    assert (fields["input"], fields["output"], fields["expected"]) == ({"q": 1}, [1, 2], "e")
    assert (fields["metadata"]["a"], fields["metadata"]["b"]) == (1, 2)
    assert fields["metrics"] == {"cost": 0.5}
    assert fields["scores"] == {"ok": 1}
    assert fields["tags"] == ["t2", "t1"]
    assert (result.name, result.type) == ("renamed", "score")


def test_a_braintrust_json_attribute_that_is_not_json_stays_in_metadata_otel() -> None:
    result = mapped({"braintrust.input_json": "{not json"})
    assert "input" not in result.fields
    assert otel(result)["attributes"] == {"braintrust.input_json": "{not json"}


@pytest.mark.parametrize("attributes", [
    {"braintrust.metrics": json.dumps({"cost": "high"})},
    {"braintrust.scores": json.dumps({"ok": 3})},
    {"braintrust.span_attributes": json.dumps({"type": "banana"})},
    {"braintrust.metadata": "[1, 2]"},
])
def test_a_braintrust_attribute_a_field_cannot_take_leaves_them_all_in_metadata_otel(
        attributes: dict[str, Any]) -> None:
    # The receiver rejects such a span; in a process, the row is kept and says why.
    result = mapped({**attributes, "braintrust.input_json": '"kept aside too"'})
    assert "input" not in result.fields
    assert set(otel(result)["attributes"]) == {*attributes, "braintrust.input_json"}
    assert otel(result)["error"]


def test_braintrust_metrics_do_not_replace_the_spans_own_times() -> None:
    result = mapped({"braintrust.metrics": json.dumps({"start": 1, "end": 2, "cost": 3})})
    assert result.fields["metrics"] == {"cost": 3}


def test_braintrust_parent_naming_a_project_gives_the_project() -> None:
    result = mapped({"braintrust.parent": "project_name:billing"})
    assert result.project == "billing"
    assert "attributes" not in otel(result)


@pytest.mark.parametrize("value", ["experiment_id:e-1", "project_id:p-1", "project_name:",
                                   "project_name:a\x1fb", "nonsense"])
def test_braintrust_parent_not_naming_a_project_is_left_in_metadata_otel(value: str) -> None:
    result = mapped({"braintrust.parent": value})
    assert result.project is None
    assert otel(result)["attributes"] == {"braintrust.parent": value}


@pytest.mark.parametrize(("kind", "parent", "expected"), [
    ("server", PARENT, "task"), ("consumer", PARENT, "task"), ("internal", None, "task"),
    ("client", PARENT, "function"), ("internal", PARENT, "function"),
])
def test_a_span_no_convention_types_is_a_task_or_a_function(kind: str, parent: int | None,
                                                             expected: str) -> None:
    result = mapped(kind=kind, parent_span_id=parent)
    assert result.type is None
    assert otel_mapping.default_type(kind, parent is not None) == expected


def test_attribute_counts_keys_and_kept_strings_are_bounded() -> None:
    attributes: dict[str, Any] = {f"k{i:03}": i for i in range(300)}
    attributes["x" * 300] = "long key"
    attributes["big"] = "y" * 20_000
    result = mapped(attributes, dropped={"attributes": 4, "events": 1})
    kept = otel(result)["attributes"]
    assert len(kept) == 256
    assert otel(result)["dropped"] == {"attributes": 300 - 256 + 2 + 4, "events": 1}
    assert len(mapped({"big": "y" * 20_000}).fields["metadata"]["otel"]["attributes"]["big"]) \
        < 16_500


def test_events_beyond_the_bound_are_counted_as_dropped() -> None:
    result = mapped(events=[Event(f"e{i}", float(i), {}) for i in range(70)])
    assert len(otel(result)["events"]) == 64
    assert otel(result)["dropped"] == {"events": 6}


def test_non_finite_numbers_are_kept_as_text() -> None:
    assert otel(mapped({"ratio": float("inf")}))["attributes"] == {"ratio": "inf"}


def test_json_nested_too_deep_is_not_parsed_into_a_field() -> None:
    deep = "[" * 70 + "]" * 70
    result = mapped({"braintrust.input_json": deep})
    assert "input" not in result.fields


@pytest.mark.parametrize(("kind", "name"), [
    ("SERVER", "server"), ("SPAN_KIND_CLIENT", "client"), (2, "server"), ("odd", "internal"),
    (None, "internal"),
])
def test_kinds_are_read_by_name_or_by_otlp_number(kind: object, name: str) -> None:
    assert otel_mapping.kind_name(kind) == name


def test_seconds_keep_nanosecond_times_without_float_drift() -> None:
    assert otel_mapping.seconds(1_800_000_000_250_000_000) == 1_800_000_000.25
