"""Our rows as OpenTelemetry spans: the mapping of OTLP out (``TRACER_OTLP_ENDPOINT``).

A row in the underlying format becomes one OTLP ``Span`` (``opentelemetry-proto``'s messages,
the ``otlp`` extra; the aggregator imports this module only when an OTLP endpoint is
configured):

- ids by the one mapping of ``tracer.w3c``: trace id = the 128 bits of ``root_span_id``, span id
  = the low 64 bits of ``span_id``; the parent is ``span_parents[0]``, further parents are
  links. Rows whose ids are not ours (imported from elsewhere) follow the same rule when they
  are UUID-shaped, else a hash of the id: deterministic either way, so an exported span exported
  again keeps its ids.
- ``span_attributes.name`` the name, ``metrics.start``/``end`` (epoch seconds) the times in
  nanoseconds; an ``llm`` span is of kind CLIENT (as the GenAI conventions want), any other
  INTERNAL.
- ``error``: status ERROR (its first line the status message) and an ``exception`` event
  (``exception.type`` and ``exception.message`` from its head, ``exception.stacktrace`` the
  traceback after it).
- The row's fields as the reference's ``braintrust.*`` attributes (JSON text, as its OTLP
  ingestion reads them): ``braintrust.input_json``, ``braintrust.output_json``,
  ``braintrust.expected_json``, ``braintrust.metadata``, ``braintrust.metrics`` (without
  ``start``/``end``: they are the span's times), ``braintrust.scores``, ``braintrust.tags`` (a
  string array), ``braintrust.span_attributes``, and ``braintrust.parent``
  (``project_name:<name>`` or ``experiment_id:<id>``, with ``tracer.experiment_name``).
- An ``llm`` span also gets the GenAI semantic conventions' attributes: ``gen_ai.operation.name``,
  ``gen_ai.provider.name`` (and the older ``gen_ai.system``), ``gen_ai.request.model`` and the
  request parameters the conventions name as ``metadata`` does (``temperature``,
  ``max_tokens`` ...), ``gen_ai.usage.input_tokens``/``output_tokens`` from
  ``metrics.prompt_tokens``/``completion_tokens``, ``gen_ai.input.messages``/``output.messages``
  (OpenAI-style messages turned into the conventions' parts) and
  ``gen_ai.response.finish_reasons``.
- Resource: ``service.name`` (``TRACER_OTLP_SERVICE_NAME``, else the project), ``tracer.project``,
  ``host.name`` and ``process.pid`` from the row's ``origin`` when it has one, and
  ``telemetry.sdk.*``. One ``ResourceSpans`` per distinct resource.

Only rows that have ended are spans (``exportable``): OTLP has no running span.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeGuard

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

import tracer
from tracer import w3c, wire

from .rows import Container, to_json

SCOPE = "tracer"
_MAX_NS = (1 << 64) - 1
# A row's arrays: lists, or tuples as the aggregator decodes records (msgpack's use_list=False).
_ARRAYS = (list, tuple)
_INT64 = (-(1 << 63), (1 << 63) - 1)
# The type that starts an error as ``tracer.span.error_of`` writes it: ``module.Type: message``.
_EXCEPTION_TYPE = re.compile(r"[A-Za-z_][\w.]*")
# Request parameters of an LLM call (logged in ``metadata``) that the GenAI conventions name
# alike (``gen_ai.request.<name>``): only these, so that a receiver mapping them back into
# ``metadata`` (as ``tracer serve`` does) finds the keys it came from.
_REQUEST_PARAMETERS = ("temperature", "top_p", "top_k", "max_tokens", "frequency_penalty",
                       "presence_penalty", "seed")


def exportable(row: dict) -> bool:
    """Whether ``row`` can be an OTLP span: it has its ids and has ended (``metrics.end``)."""
    metrics = row.get("metrics")
    return (isinstance(row.get("span_id"), str) and isinstance(row.get("root_span_id"), str)
            and isinstance(metrics, dict) and _is_number(metrics.get("end")))


def to_request(rows: Iterable[tuple[Container, dict]],
               service_name: str | None = None) -> ExportTraceServiceRequest:
    """The OTLP export request for ``(container, row)`` pairs, every row ``exportable``.

    Spans are grouped by resource (service, project, origin host and pid), in the order their
    resources first appear; a row that is not exportable raises ValueError.
    """
    request = ExportTraceServiceRequest()
    by_resource: dict[tuple, ScopeSpans] = {}
    for container, row in rows:
        origin = _dict(row.get("origin"))
        host, pid = origin.get("host"), origin.get("pid")
        key = (service_name or container.project_name, container.project_name,
               host if isinstance(host, str) else None,
               pid if type(pid) is int and _INT64[0] <= pid <= _INT64[1] else None)
        scope = by_resource.get(key)
        if scope is None:
            resource_spans = request.resource_spans.add()
            _resource(resource_spans, *key)
            scope = resource_spans.scope_spans.add()
            scope.scope.CopyFrom(InstrumentationScope(name=SCOPE, version=tracer.__version__))
            by_resource[key] = scope
        span_into(scope.spans.add(), container, row)
    return request


def _resource(resource_spans: ResourceSpans, service: str, project: str, host: str | None,
              pid: int | None) -> None:
    attributes: list[tuple[str, Any]] = [
        ("service.name", service), ("tracer.project", project),
        ("telemetry.sdk.name", "tracer"), ("telemetry.sdk.language", "python"),
        ("telemetry.sdk.version", tracer.__version__)]
    if host is not None:
        attributes.append(("host.name", host))
    if pid is not None:
        attributes.append(("process.pid", pid))
    _add_all(resource_spans.resource.attributes, attributes)


def span_into(span: Span, container: Container, row: dict) -> None:
    """Fill ``span`` (a new OTLP span) from ``row`` of ``container`` (``exportable``)."""
    if not exportable(row):
        raise ValueError(f"row {row.get('id')!r:.60}: not exportable (it needs span_id, "
                         "root_span_id and metrics.end)")
    trace_id, span_id = otlp_ids(row["span_id"], row["root_span_id"])
    span.trace_id = trace_id.to_bytes(16, "big")
    span.span_id = span_id.to_bytes(8, "big")
    parents = row.get("span_parents")
    parents = [p for p in parents if isinstance(p, str)] if isinstance(parents, _ARRAYS) else []
    if parents:
        span.parent_span_id = _span_part(parents[0]).to_bytes(8, "big")
        for other in parents[1:]:
            link = span.links.add()
            link.trace_id = span.trace_id
            link.span_id = _span_part(other).to_bytes(8, "big")
            _add(link.attributes, "tracer.link", "parent")
    attributes = row.get("span_attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    name, span_type = attributes.get("name"), attributes.get("type")
    span.name = _text(name) if isinstance(name, str) and name else "span"
    span.kind = Span.SPAN_KIND_CLIENT if span_type == "llm" else Span.SPAN_KIND_INTERNAL
    metrics = row["metrics"]
    end = _nanoseconds(metrics["end"])
    start = _nanoseconds(metrics["start"]) if _is_number(metrics.get("start")) else end
    span.start_time_unix_nano = start
    span.end_time_unix_nano = max(start, end)
    _add_all(span.attributes, _attributes(container, row, span_type))
    error = row.get("error")
    if error is not None:
        _error_into(span, error)


def otlp_ids(span_id: str, root_span_id: str) -> tuple[int, int]:
    """The OTLP ``(trace_id, span_id)`` of a row with these ids: ``tracer.w3c``'s mapping for
    ours; for others the same rule (trace id = the root's 128 bits, span id = the span's low 64
    bits) when UUID-shaped, else hashes of the ids. Never zero."""
    try:
        trace_id, otlp_span_id = w3c.from_row_ids(span_id, root_span_id)
    except ValueError:
        trace_id = otlp_span_id = 0
    if trace_id and otlp_span_id:
        return trace_id, otlp_span_id
    return _trace_part(root_span_id), _span_part(span_id)


def _trace_part(root_span_id: str) -> int:
    try:
        trace, root = wire.parse_id(root_span_id)
        value = (trace << 64) | root
    except ValueError:
        value = 0
    return value or _hashed(root_span_id, 16)


def _span_part(span_id: str) -> int:
    try:
        value = wire.parse_id(span_id)[1]
    except ValueError:
        value = 0
    return value or _hashed(span_id, 8)


def _hashed(text: str, size: int) -> int:
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:size],
                           "big")
    return value or 1


def _nanoseconds(seconds: float) -> int:
    # Whole seconds and the fraction apart: ``seconds * 1e9`` would round an epoch time to
    # ~256 ns; the fraction of a float is exact, so this is the nanosecond nearest its value.
    whole = int(seconds)
    return min(max(whole * 1_000_000_000 + round((seconds - whole) * 1e9), 0), _MAX_NS)


def _is_number(value: object) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _attributes(container: Container, row: dict, span_type: object) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if container.experiment_id is None:
        out.append(("braintrust.parent", f"project_name:{container.project_name}"))
    else:
        out.append(("braintrust.parent", f"experiment_id:{container.experiment_id}"))
        out.append(("tracer.experiment_name", container.experiment_name))
    if row.get("id") != row["span_id"] and isinstance(row.get("id"), str):
        out.append(("tracer.row_id", row["id"]))
    attributes = row.get("span_attributes")
    if isinstance(attributes, dict) and attributes:
        out.append(("braintrust.span_attributes", to_json(attributes)))
    for field, attribute in (("input", "braintrust.input_json"),
                             ("output", "braintrust.output_json"),
                             ("expected", "braintrust.expected_json"),
                             ("metadata", "braintrust.metadata"),
                             ("scores", "braintrust.scores")):
        if row.get(field) is not None:
            out.append((attribute, to_json(row[field])))
    metrics = {k: v for k, v in row["metrics"].items() if k not in ("start", "end")}
    if metrics:
        out.append(("braintrust.metrics", to_json(metrics)))
    tags = row.get("tags")
    if isinstance(tags, _ARRAYS) and tags and all(isinstance(t, str) for t in tags):
        out.append(("braintrust.tags", list(tags)))
    if span_type == "llm":
        out.extend(gen_ai_attributes(row))
    return out


# -- the GenAI semantic conventions -------------------------------------------------------------


def gen_ai_attributes(row: dict) -> list[tuple[str, Any]]:
    """The ``gen_ai.*`` attributes of an LLM span's row (its messages in OpenAI's format, its
    parameters in ``metadata``, its token counts in ``metrics``, as ``wrap_openai`` logs them)."""
    out: list[tuple[str, Any]] = []
    metadata, metrics = _dict(row.get("metadata")), _dict(row.get("metrics"))
    messages = _input_messages(row.get("input"))
    if messages is not None:
        out.append(("gen_ai.operation.name", "chat"))
    provider = metadata.get("provider")
    if isinstance(provider, str):
        out.append(("gen_ai.provider.name", provider))
        out.append(("gen_ai.system", provider))  # the older name, still what many receivers read
    model = metadata.get("model")
    if isinstance(model, str):
        out.append(("gen_ai.request.model", model))
    for parameter in _REQUEST_PARAMETERS:
        value = metadata.get(parameter)
        if _is_number(value):
            out.append((f"gen_ai.request.{parameter}", value))
    for metric, attribute in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                              ("completion_tokens", "gen_ai.usage.output_tokens")):
        value = metrics.get(metric)
        if _is_number(value):
            out.append((attribute, int(value)))
    if messages is not None:
        out.append(("gen_ai.input.messages", to_json(messages)))
    outputs = _output_messages(row.get("output"))
    if outputs is not None:
        out.append(("gen_ai.output.messages", to_json(outputs)))
        reasons = [m["finish_reason"] for m in outputs if isinstance(m.get("finish_reason"), str)]
        if reasons:
            out.append(("gen_ai.response.finish_reasons", reasons))
    return out


def _input_messages(value: object) -> list[dict] | None:
    """OpenAI chat messages (a list of dicts with a ``role``) in the conventions' form, else
    None (a prompt that is not a list of messages is left to ``braintrust.input_json``)."""
    if isinstance(value, str):
        return [{"role": "user", "parts": [{"type": "text", "content": value}]}]
    if not isinstance(value, _ARRAYS) or not value or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in value):
        return None
    return [_message(m) for m in value]


def _output_messages(value: object) -> list[dict] | None:
    """Chat choices (``[{"message": ..., "finish_reason": ...}]``), a message, a list of messages
    or a text, in the conventions' form; else None."""
    if isinstance(value, str):
        return [{"role": "assistant", "parts": [{"type": "text", "content": value}]}]
    if isinstance(value, dict) and isinstance(value.get("role"), str):
        return [_message(value)]
    if not isinstance(value, _ARRAYS) or not value or not all(isinstance(v, dict) for v in value):
        return None
    out = []
    for item in value:
        message = _dict(item.get("message")) or item
        if not isinstance(message.get("role"), str):
            return None
        converted = _message(message)
        if isinstance(item.get("finish_reason"), str):
            converted["finish_reason"] = item["finish_reason"]
        out.append(converted)
    return out


def _message(message: dict) -> dict:
    role = message["role"]
    parts: list[dict] = []
    content = message.get("content")
    if role == "tool":
        parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"),
                      "response": content})
    elif isinstance(content, str):
        parts.append({"type": "text", "content": content})
    elif isinstance(content, _ARRAYS):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append({"type": "text", "content": part.get("text")})
            elif isinstance(part, dict):
                parts.append(dict(part))  # a part the conventions have no name for: as it is
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            function = _dict(call.get("function"))
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    pass  # not JSON: kept as the text it is
            parts.append({"type": "tool_call", "id": call.get("id"),
                          "name": function.get("name"), "arguments": arguments})
    out = {"role": role, "parts": parts}
    if isinstance(message.get("name"), str):
        out["name"] = message["name"]
    return out


# -- errors ------------------------------------------------------------------------------------


def _error_into(span: Span, error: object) -> None:
    """Status ERROR and an ``exception`` event. Our errors read ``"<type>: <message>"``, a blank
    line, then the traceback (``tracer.span.error_of``): the event's ``exception.type`` and
    ``exception.message`` are the head's, its ``exception.stacktrace`` the traceback, so that a
    receiver writing ``"<type>: <message>\\n\\n<stacktrace>"`` back (``tracer serve``) gets the
    error as it was. An error of another shape is the message."""
    text = error if isinstance(error, str) else to_json(error)
    head, _, stack = text.partition("\n\n")
    first = head.split("\n", 1)[0]
    span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR,
                                message=_text(first[:1024] or "error")))
    event = span.events.add()
    event.name = "exception"
    event.time_unix_nano = span.end_time_unix_nano
    attributes: list[tuple[str, Any]] = []
    kind, colon, message = head.partition(": ")
    if _EXCEPTION_TYPE.fullmatch(kind) and (colon or "." in kind
                                            or kind.endswith(("Error", "Exception"))):
        attributes.append(("exception.type", kind))
        attributes.append(("exception.message", message))
    else:
        attributes.append(("exception.message", head))
    if stack:
        attributes.append(("exception.stacktrace", stack))
    _add_all(event.attributes, attributes)


# -- attribute values --------------------------------------------------------------------------


def _add_all(into: Any, attributes: Iterable[tuple[str, Any]]) -> None:
    for key, value in attributes:
        _add(into, key, value)


def _add(into: Any, key: str, value: Any) -> None:
    """Append the attribute ``key = value`` to the repeated ``KeyValue`` field ``into``, built in
    place (twice as fast as building a ``KeyValue`` and copying it in)."""
    pair = into.add()
    pair.key = key
    _fill(pair.value, value)


def _fill(into: AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        into.bool_value = value
    elif isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            into.int_value = value
        else:
            into.string_value = str(value)
    elif isinstance(value, float):
        into.double_value = value
    elif isinstance(value, str):
        into.string_value = _text(value)
    elif isinstance(value, Sequence):
        values = into.array_value.values
        for item in value:
            _fill(values.add(), item)
    else:
        into.string_value = to_json(value)


def _text(value: str) -> str:
    """``value`` as protobuf takes a string: valid UTF-8 (a lone surrogate, which a row can hold
    but UTF-8 cannot, becomes its escape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value
