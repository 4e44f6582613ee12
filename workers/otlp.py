"""OTLP traces in: the spans of an OTLP ``ExportTraceServiceRequest`` as our rows.

``tracer serve`` receives OTLP/HTTP at ``/v1/traces`` (``workers/server/otlp.py``) and writes
what this module makes of it through the ingest write path. The mapping is the README's table
("OpenTelemetry" → "Receiving OTLP"); in short:

- ids by ``tracer.w3c`` (the one mapping of every interop piece): the W3C trace id and span id
  give ``span_id`` and ``root_span_id``, the parent span id ``span_parents``; the row's ``id`` is
  its ``span_id``. A trace begun by OpenTelemetry has no row whose ``span_id`` is its
  ``root_span_id``: its root is the row with no parents (the store and the viewer know).
- the name goes to ``span_attributes.name``; the start and end times to ``metrics.start`` and
  ``metrics.end`` (seconds); exception events, else an ERROR status, to ``error`` in the shape
  our rows have (``"<type>: <message>\\n\\n<stacktrace>"``, as ``tracer.span.error_of`` writes it);
- the GenAI semantic conventions (``gen_ai.*``) to ``input``, ``output``, ``metadata.model`` /
  ``metadata.provider`` and the token metrics, with span type ``llm``; the reference's own
  ``braintrust.*`` attributes to the fields they name (they win over ``gen_ai.*``);
- everything else under ``metadata.otel``: the span's kind, status, W3C ids, the attributes
  nothing above took, non-exception events, links, the resource's attributes and the scope.

Each span is mapped alone: one that cannot be (bad ids, no start time, a ``braintrust.*``
attribute that is not what it names, a container that cannot be resolved) is rejected with a
message, counted in the response's ``partial_success``, and the others are applied. Hostile
input is bounded: attributes per span, key lengths, nesting, events and links, and the size of
the strings kept in ``metadata.otel``; the payload fields (input, output, expected) are bounded
by the request's size limit alone, as the ingest API's rows are.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tracer import event, w3c, wire

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ENCODINGS = (PROTOBUF, JSON)

# Bounds on what one span brings (hostile input costs only itself).
MAX_ATTRIBUTES = 256  # attributes kept per span, per resource, per event or link
MAX_KEY = 256  # characters of an attribute key (longer: dropped, counted)
MAX_DEPTH = 16  # levels of nested arrays and key-value lists in one attribute value
MAX_META_STRING = 16 * 1024  # characters of a string kept under metadata.otel
MAX_EVENTS = 64  # events kept per span (besides the exception that becomes ``error``)
MAX_LINKS = 64
MAX_JSON_DEPTH = 64  # levels of a JSON attribute parsed into a field (braintrust.*_json ...)
MAX_PROJECT = 256  # characters of a project name taken from a header or an attribute
MAX_ERRORS = 5  # distinct rejection messages named in a response
DEFAULT_PROJECT = "default"

_KINDS = {value: name[len("SPAN_KIND_"):].lower()
          for name, value in trace_pb2.Span.SpanKind.items()}
_STATUS = {value: name[len("STATUS_CODE_"):]
           for name, value in trace_pb2.Status.StatusCode.items()}
_SPAN_TYPES = frozenset(event.SPAN_TYPES)
_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


class RequestError(ValueError):
    """The request as a whole cannot be read (HTTP 400)."""


class SpanRejected(ValueError):
    """One span cannot become a row: it is counted in ``partial_success``, the rest applied."""


# -- the request and the response, in either encoding ------------------------------------------


def decode_request(body: bytes, encoding: str) -> trace_service_pb2.ExportTraceServiceRequest:
    """The request in ``body``, OTLP/protobuf or OTLP/JSON (``encoding``: PROTOBUF or JSON).

    OTLP/JSON as the OTLP specification has it: ids as hex strings (base64, protobuf's own JSON
    form of bytes, is accepted too), enums as numbers or names, 64-bit ints as numbers or
    strings, unknown fields ignored. Raises RequestError saying what is wrong."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    if encoding == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise RequestError(f"malformed OTLP protobuf: {_short(exc)}") from None
        return request
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestError(f"malformed JSON: {_short(exc)}") from None
    if not isinstance(document, dict):
        raise RequestError("an OTLP/JSON request is an object with resourceSpans")
    try:
        _hex_ids_to_base64(document)
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, ValueError, TypeError,
            AttributeError) as exc:
        raise RequestError(f"malformed OTLP/JSON: {_short(exc)}") from None
    return request


def _hex_ids_to_base64(document: dict) -> None:
    """Rewrite the hex ids of an OTLP/JSON document, in place, into the base64 that protobuf's
    JSON parser reads bytes as. A value that is not 16 or 32 hex digits is left as it is (then
    read as base64, or refused by the parser)."""
    for resource_spans in _items(document, "resourceSpans", "resource_spans"):
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            for span in _items(scope_spans, "spans"):
                _rewrite_ids(span)
                for link in _items(span, "links"):
                    _rewrite_ids(link)


def _items(parent: object, *names: str) -> list:
    if not isinstance(parent, dict):
        return []
    for name in names:
        value = parent.get(name)
        if isinstance(value, list):
            return value
    return []


def _rewrite_ids(obj: object) -> None:
    if not isinstance(obj, dict):
        return
    for name in _ID_FIELDS:
        value = obj.get(name)
        if isinstance(value, str) and len(value) in (16, 32):
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                continue
            obj[name] = base64.b64encode(raw).decode("ascii")


def encode_response(rejected: int, message: str, encoding: str) -> bytes:
    """An ``ExportTraceServiceResponse``: ``partial_success`` set when spans were rejected."""
    response = trace_service_pb2.ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if encoding == PROTOBUF:
        return response.SerializeToString()
    return json.dumps(json_format.MessageToDict(response)).encode()


def encode_status(code: int, message: str, encoding: str) -> bytes:
    """The body of a 4xx/5xx answer as OTLP/HTTP has it: a ``google.rpc.Status`` (``code``: a
    gRPC status code) in the request's encoding. The JSON form also carries ``error``, as every
    other error of the server's API does."""
    if encoding == PROTOBUF:
        # google.rpc.Status: code (field 1, varint), message (field 2, bytes). Written by hand:
        # two fields do not need googleapis-common-protos.
        text = message.encode("utf-8")
        return (b"\x08" + _varint(code) if code else b"") + b"\x12" + _varint(len(text)) + text
    return json.dumps({"code": code, "message": message, "error": message}).encode()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# -- spans to rows -----------------------------------------------------------------------------


Resolve = Callable[[str, str], "str | None"]
"""``resolve(kind, id)``: the container key of a ``project_id`` or ``experiment_id`` the
store knows (the server looks it up), or None."""

Check = Callable[[str, dict], None]
"""``check(container_key, row)``: raises ValueError if the ingest path would refuse the row."""


@dataclass
class Mapped:
    """What a request's spans became: rows to write, and the spans rejected."""

    rows: list[tuple[str, dict]] = field(default_factory=list)  # (container key, partial row)
    spans: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)  # distinct messages, at most MAX_ERRORS

    def reject(self, message: str) -> None:
        self.rejected += 1
        if message not in self.errors and len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    @property
    def message(self) -> str:
        """The response's ``error_message``: empty when nothing was rejected."""
        if not self.rejected:
            return ""
        more = "" if self.rejected <= len(self.errors) else "; ..."
        return f"{self.rejected} of {self.spans} spans rejected: {'; '.join(self.errors)}{more}"


def request_rows(request: trace_service_pb2.ExportTraceServiceRequest, *,
                 project: str | None = None, parent: str | None = None,
                 resolve: Resolve | None = None, check: Check | None = None) -> Mapped:
    """The rows of every span of ``request``.

    The container of a span: its ``braintrust.parent`` attribute, else the request's
    ``parent`` (the ``x-bt-parent`` header) or ``project`` (``x-tracer-project``), else the
    resource's ``tracer.project`` (or OpenInference's ``openinference.project.name``) or
    ``braintrust.parent``, else its ``service.name``, else ``default``. ``check`` is run on
    each row (the ingest path's checks), so that a row the write would refuse rejects its span
    alone."""
    mapped = Mapped()
    resolved: dict[str, str] = {}  # braintrust.parent values resolved in this request

    def container_of(value: str, where: str) -> str:
        key = resolved.get(value)
        if key is None:
            key = resolved[value] = parent_container(value, resolve, where)
        return key

    header_key = None
    try:
        if project is not None:
            header_key = wire.logs_container(project_name(project, "header x-tracer-project"))
        elif parent is not None:
            header_key = container_of(parent, "header x-bt-parent")
    except SpanRejected as exc:  # the request's own: none of its spans can be placed
        raise RequestError(str(exc)) from None
    for resource_spans in request.resource_spans:
        resource, dropped = attributes(resource_spans.resource.attributes)
        dropped += resource_spans.resource.dropped_attributes_count
        default_key: str | None = header_key
        problem = None
        if default_key is None:
            try:
                default_key = _resource_container(resource, container_of)
            except ValueError as exc:
                problem = str(exc)
        context = _Context(resource=bounded(resource), resource_dropped=dropped,
                           origin=_origin(resource))
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            context.scope = ({"name": scope.name, **({"version": scope.version}
                                                      if scope.version else {})}
                             if scope.name else None)
            for span in scope_spans.spans:
                mapped.spans += 1
                if problem is not None:
                    mapped.reject(problem)
                    continue
                try:
                    key, row = span_row(span, context, default_key or "", container_of)
                    if check is not None:
                        check(key, row)
                except ValueError as exc:
                    mapped.reject(_short(exc, 300))
                    continue
                mapped.rows.append((key, row))
    return mapped


@dataclass
class _Context:
    """What the spans of one resource and scope share."""

    resource: dict
    resource_dropped: int = 0
    scope: dict | None = None
    origin: dict | None = None


def _origin(resource: dict) -> dict | None:
    """The row's ``origin`` (the host and process it came from, as an uploading aggregator
    sets it) from the resource's ``host.name`` and ``process.pid``."""
    host = resource.get("host.name")
    if not isinstance(host, str) or not host:
        return None
    origin: dict[str, Any] = {"host": host[:MAX_KEY]}
    pid = resource.get("process.pid")
    if isinstance(pid, int) and not isinstance(pid, bool):
        origin["pid"] = pid
    return origin


# Resource attributes naming the project: ours, and OpenInference's (what Phoenix reads).
PROJECT_ATTRIBUTES = ("tracer.project", "openinference.project.name")


def _resource_container(resource: dict, container_of: Callable[[str, str], str]) -> str:
    for name in PROJECT_ATTRIBUTES:
        project = resource.get(name)
        if project is not None:
            return wire.logs_container(project_name(project, f"resource attribute {name}"))
    value = resource.get("braintrust.parent")
    if value is not None:
        if not isinstance(value, str):
            raise SpanRejected("resource attribute braintrust.parent must be a string")
        return container_of(value, "resource attribute braintrust.parent")
    service = resource.get("service.name")
    if isinstance(service, str) and service:
        return wire.logs_container(project_name(service, "resource attribute service.name"))
    return wire.logs_container(DEFAULT_PROJECT)


def project_name(value: object, where: str) -> str:
    """``value`` as a project name (a non-empty string of at most MAX_PROJECT characters
    without the control character that separates a container key's parts), or ValueError
    naming ``where`` it came from."""
    if not isinstance(value, str) or not value.strip():
        raise SpanRejected(f"{where}: a project name must be a non-empty string")
    if len(value) > MAX_PROJECT:
        raise SpanRejected(f"{where}: a project name has at most {MAX_PROJECT} characters")
    if wire.SEP in value:
        raise SpanRejected(f"{where}: a project name cannot contain the character \\x1f")
    return value


def parent_container(value: str, resolve: Resolve | None, where: str) -> str:
    """The container key a ``braintrust.parent`` value names: ``project_name:<name>``,
    ``project_id:<id>`` or ``experiment_id:<id>`` (the ids looked up with ``resolve``)."""
    kind, sep, ident = value.partition(":")
    if not sep or not ident:
        raise SpanRejected(f"{where}: {value[:100]!r} is not project_name:<name>, "
                           "project_id:<id> or experiment_id:<id>")
    if kind == "project_name":
        return wire.logs_container(project_name(ident, where))
    if kind in ("project_id", "experiment_id"):
        key = resolve(kind, ident[:200]) if resolve is not None else None
        if key is None:
            raise SpanRejected(f"{where}: no {kind.replace('_', ' ')} {ident[:100]!r} in this "
                               "store")
        return key
    raise SpanRejected(f"{where}: {kind[:40]!r} is not project_name, project_id or "
                       "experiment_id")


def span_row(span: trace_pb2.Span, context: _Context, default_key: str,
             container_of: Callable[[str, str], str]) -> tuple[str, dict]:
    """``(container key, row)`` of one span; SpanRejected (a ValueError) if it cannot be one."""
    trace_id, span_id = _id(span.trace_id, 16, "trace_id"), _id(span.span_id, 8, "span_id")
    parent = (int.from_bytes(span.parent_span_id, "big") if len(span.parent_span_id) == 8
              else None)
    if span.parent_span_id and parent is None:
        raise SpanRejected(f"span {span_id:016x}: parent_span_id must be 8 bytes, not "
                           f"{len(span.parent_span_id)}")
    if not span.start_time_unix_nano:
        raise SpanRejected(f"span {span_id:016x}: start_time_unix_nano is missing")
    row_span_id, root_span_id = w3c.row_ids(trace_id, span_id)
    start = seconds(span.start_time_unix_nano)
    metrics: dict[str, Any] = {"start": start}
    if span.end_time_unix_nano:
        metrics["end"] = seconds(span.end_time_unix_nano)
    attrs, dropped = attributes(span.attributes)
    where = f"span {span_id:016x}"
    row: dict[str, Any] = {
        "id": row_span_id,
        "span_id": row_span_id,
        "root_span_id": root_span_id,
        # A parent id of zeros is no parent (some exporters write one for roots).
        "span_parents": [w3c.row_ids(trace_id, parent)[0]] if parent else None,
        "created": datetime.datetime.fromtimestamp(start, datetime.timezone.utc).isoformat(),
    }
    span_attributes: dict[str, Any] = {"name": span.name or None}
    metadata: dict[str, Any] = {}
    fields: dict[str, Any] = {}  # input, output, expected, error, scores, tags

    # gen_ai.* first: braintrust.* then replaces what both set.
    span_type = _genai(attrs, fields, metadata, metrics)
    if span_type is not None:
        span_attributes["type"] = span_type
    key = default_key
    braintrust_parent = _braintrust(attrs, fields, metadata, metrics, span_attributes, where)
    if braintrust_parent is not None:
        key = container_of(braintrust_parent, f"{where}: attribute braintrust.parent")
    # The span's own times win over braintrust.metrics' start and end.
    metrics["start"] = start
    if span.end_time_unix_nano:
        metrics["end"] = seconds(span.end_time_unix_nano)

    otel: dict[str, Any] = {"trace_id": f"{trace_id:032x}", "span_id": f"{span_id:016x}",
                            "kind": _KINDS.get(span.kind, str(span.kind))}
    if parent:
        otel["parent_span_id"] = f"{parent:016x}"
    if span.trace_state:
        otel["trace_state"] = span.trace_state[:MAX_META_STRING]
    status = _STATUS.get(span.status.code, str(span.status.code))
    if status != "UNSET" or span.status.message:
        otel["status"] = {"code": status, **({"message": span.status.message[:MAX_META_STRING]}
                                             if span.status.message else {})}
    error, events, events_dropped = _events(span.events)
    if error is None and span.status.code == trace_pb2.Status.STATUS_CODE_ERROR:
        error = span.status.message or "OpenTelemetry status ERROR"
    if error is not None and "error" not in fields:
        fields["error"] = error
    if events:
        otel["events"] = events
    links = [_link(link) for link in span.links[:MAX_LINKS]]
    if links:
        otel["links"] = links
    if attrs:
        otel["attributes"] = bounded(attrs)
    # Copies: rows merge in place (rows.merge), and a row must never share a dict with another.
    if context.resource:
        otel["resource"] = _copy(context.resource)
    if context.scope:
        otel["scope"] = dict(context.scope)
    lost = {name: count for name, count in (
        ("attributes", dropped + span.dropped_attributes_count),
        ("events", span.dropped_events_count + events_dropped),
        ("links", span.dropped_links_count + max(0, len(span.links) - MAX_LINKS)),
        ("resource_attributes", context.resource_dropped)) if count}
    if lost:
        otel["dropped"] = lost
    metadata["otel"] = otel
    if context.origin is not None:
        row["origin"] = dict(context.origin)
    row["span_attributes"] = span_attributes
    row["metrics"] = metrics
    row["metadata"] = metadata
    row.update(fields)
    return key, row


def _copy(value: Any) -> Any:
    """A copy of a plain value's dicts and lists (the resource's attributes, for each row)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def seconds(nanoseconds: int) -> float:
    """Unix nanoseconds as the seconds our rows' times are (whole and fraction apart: as
    exact as a float of today's times can be, where ``ns / 1e9`` is off in the 7th decimal)."""
    whole, fraction = divmod(nanoseconds, 1_000_000_000)
    return whole + fraction / 1e9


def _id(raw: bytes, size: int, name: str) -> int:
    if len(raw) != size:
        raise SpanRejected(f"{name} must be {size} bytes, not {len(raw)}")
    value = int.from_bytes(raw, "big")
    if not value:
        raise SpanRejected(f"{name} is all zeros (invalid in W3C trace context)")
    return value


def _events(events: Iterable[trace_pb2.Span.Event]) -> tuple[str | None, list[dict], int]:
    """The error (the last exception event, as our rows write errors), the other events (at
    most MAX_EVENTS) and how many of those were dropped."""
    error = None
    kept: list[dict] = []
    dropped = 0
    for item in events:
        if item.name == "exception":
            attrs, _ = attributes(item.attributes)
            error = exception_error(attrs)
            continue
        if len(kept) < MAX_EVENTS:
            attrs, _ = attributes(item.attributes)
            entry: dict[str, Any] = {"name": item.name[:MAX_KEY],
                                     "time": seconds(item.time_unix_nano)}
            if attrs:
                entry["attributes"] = bounded(attrs)
            kept.append(entry)
        else:
            dropped += 1
    return error, kept, dropped


def exception_error(attrs: dict) -> str:
    """An exception event's attributes as our rows' ``error``: ``"<type>: <message>"``, then a
    blank line and the stack trace when there is one (``tracer.span.error_of``'s shape)."""
    kind, message, stack = (attrs.get(f"exception.{name}") for name in
                            ("type", "message", "stacktrace"))
    kind = kind if isinstance(kind, str) and kind else None
    message = message if isinstance(message, str) else None
    head = f"{kind}: {message}" if kind and message else kind or message or "exception"
    if isinstance(stack, str) and stack:
        return f"{head}\n\n{stack}"
    return head


def _link(link: trace_pb2.Span.Link) -> dict:
    entry: dict[str, Any] = {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
    if len(link.trace_id) == 16 and len(link.span_id) == 8:
        trace_id = int.from_bytes(link.trace_id, "big")
        span_id = int.from_bytes(link.span_id, "big")
        if trace_id and span_id:  # as our ids, to find the linked span in the store
            entry["row_span_id"], entry["row_root_span_id"] = w3c.row_ids(trace_id, span_id)
    attrs, _ = attributes(link.attributes)
    if attrs:
        entry["attributes"] = bounded(attrs)
    return entry


# -- attribute values ---------------------------------------------------------------------------


def attributes(pairs: Iterable[common_pb2.KeyValue]) -> tuple[dict[str, Any], int]:
    """Key-values as a dict of plain values (the first MAX_ATTRIBUTES, keys of at most MAX_KEY
    characters; a repeated key keeps its last value), and how many were dropped."""
    out: dict[str, Any] = {}
    dropped = 0
    for pair in pairs:
        if len(out) >= MAX_ATTRIBUTES or len(pair.key) > MAX_KEY or not pair.key:
            dropped += 1
            continue
        out[pair.key] = value_of(pair.value)
    return out, dropped


def value_of(value: common_pb2.AnyValue, depth: int = 0) -> Any:
    """An ``AnyValue`` as a plain value: arrays as lists, key-value lists as dicts, nested at
    most MAX_DEPTH levels (deeper: a marker string). Non-finite doubles become strings (rows
    are JSON)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else str(number)
    if kind == "bool_value":
        return value.bool_value
    if kind == "bytes_value":
        return value.bytes_value
    if kind in ("array_value", "kvlist_value"):
        if depth >= MAX_DEPTH:
            return f"<nested deeper than {MAX_DEPTH} levels>"
        if kind == "array_value":
            return [value_of(item, depth + 1) for item in value.array_value.values]
        return {pair.key[:MAX_KEY]: value_of(pair.value, depth + 1)
                for pair in value.kvlist_value.values}
    return None  # empty, or a form (string_value_strindex) that traces do not use


def bounded(value: Any) -> Any:
    """A copy of ``value`` with its strings cut to MAX_META_STRING characters and its bytes to
    as many bytes (what is kept under ``metadata.otel``)."""
    if isinstance(value, str):
        if len(value) <= MAX_META_STRING:
            return value
        return f"{value[:MAX_META_STRING]}…[{len(value) - MAX_META_STRING} more characters]"
    if isinstance(value, bytes):
        return value[:MAX_META_STRING]
    if isinstance(value, dict):
        return {k: bounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [bounded(v) for v in value]
    return value


def _json_value(value: Any) -> tuple[bool, Any]:
    """``(True, parsed)`` if ``value`` is a string of JSON nested at most MAX_JSON_DEPTH
    levels, else ``(False, None)``."""
    if not isinstance(value, str):
        return False, None
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return False, None
    if _depth(parsed) > MAX_JSON_DEPTH:
        return False, None
    return True, parsed


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar: 0), walked with a stack of our own."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            items: Iterable[Any] = item.values()
        elif isinstance(item, list):
            items = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, level) for child in items)
    return deepest


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


# -- the GenAI semantic conventions -------------------------------------------------------------

_PROMPT, _COMPLETION = "gen_ai.prompt.", "gen_ai.completion."
# Token counts: the current names, then the older ones, then OpenLLMetry's (``llm.usage.*``).
_PROMPT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                  "llm.usage.prompt_tokens")
_COMPLETION_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                      "llm.usage.completion_tokens")
_TOTAL_TOKENS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens")
# Operations (gen_ai.operation.name) whose spans are not LLM calls.
_GENAI_TYPES = {"execute_tool": "tool", "invoke_agent": "task", "create_agent": "task"}


def _genai(attrs: dict, fields: dict, metadata: dict, metrics: dict) -> str | None:
    """Take the GenAI attributes out of ``attrs`` into the row's fields; the span type they
    make (``llm``, or ``tool``/``task`` for tool and agent operations), or None if none."""
    seen = False
    model = attrs.pop("gen_ai.request.model", None)
    response_model = attrs.pop("gen_ai.response.model", None)
    if isinstance(model, str) or isinstance(response_model, str):
        metadata["model"] = model if isinstance(model, str) else response_model
        seen = True
    for name in ("gen_ai.system", "gen_ai.provider.name"):
        provider = attrs.pop(name, None)
        if isinstance(provider, str) and "provider" not in metadata:
            metadata["provider"] = provider
            seen = True
    for name in [k for k in attrs if k.startswith("gen_ai.request.")]:
        metadata[name[len("gen_ai.request."):]] = bounded(attrs.pop(name))
        seen = True

    inp = _messages_attribute(attrs, "gen_ai.input.messages")
    system = attrs.pop("gen_ai.system_instructions", None)
    indexed = _indexed_messages(attrs, _PROMPT)
    prompt = attrs.pop("gen_ai.prompt", None)
    if inp is None:
        inp = indexed
    if inp is None and prompt is not None:
        ok, parsed = _json_value(prompt)
        inp = parsed if ok and isinstance(parsed, (list, dict)) else prompt
    if system is not None and isinstance(inp, list):
        ok, parsed = _json_value(system)
        parts = parsed if ok else system
        inp = [{"role": "system", "content": _text_of(parts)}, *inp]
    if inp is not None:
        fields["input"] = inp
        seen = True

    out = _messages_attribute(attrs, "gen_ai.output.messages")
    indexed = _indexed_messages(attrs, _COMPLETION)
    completion = attrs.pop("gen_ai.completion", None)
    if out is None:
        out = indexed
    if out is None and completion is not None:
        ok, parsed = _json_value(completion)
        out = parsed if ok and isinstance(parsed, (list, dict)) else completion
    if out is not None:
        fields["output"] = out
        seen = True

    prompt_tokens = _first_number(attrs, _PROMPT_TOKENS)
    completion_tokens = _first_number(attrs, _COMPLETION_TOKENS)
    total = _first_number(attrs, _TOTAL_TOKENS)
    if prompt_tokens is not None:
        metrics["prompt_tokens"] = prompt_tokens
    if completion_tokens is not None:
        metrics["completion_tokens"] = completion_tokens
    if total is None and (prompt_tokens is not None or completion_tokens is not None):
        total = (prompt_tokens or 0) + (completion_tokens or 0)
    if total is not None:
        metrics["tokens"] = total
        seen = True

    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str) and operation in _GENAI_TYPES:
        return _GENAI_TYPES[operation]
    return "llm" if seen else None


def _first_number(attrs: dict, names: tuple[str, ...]) -> int | float | None:
    found = None
    for name in names:
        if name in attrs and _number(attrs[name]):
            value = attrs.pop(name)
            if found is None:
                found = value
    return found


def _messages_attribute(attrs: dict, name: str) -> Any:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages`` (a JSON string, or already a
    structured value) as chat messages, or None if absent or not messages."""
    if name not in attrs:
        return None
    value = attrs[name]
    if isinstance(value, str):
        ok, value = _json_value(value)
        if not ok:
            return None  # left in otel.attributes as it came
    if not isinstance(value, list):
        return None
    del attrs[name]
    return [_message(m) for m in value]


def _message(message: Any) -> Any:
    """A GenAI semantic-conventions message (``role`` and typed ``parts``) as a chat message
    (``role`` and ``content``, ``tool_calls``, ``tool_call_id``), as our llm rows and the
    viewer's conversation have them. A message in another shape is kept as it is."""
    if not isinstance(message, dict) or not isinstance(message.get("parts"), list):
        return message
    out: dict[str, Any] = {k: v for k, v in message.items() if k != "parts"}
    texts: list[str] = []
    calls: list[dict] = []
    others: list[Any] = []
    for part in message["parts"]:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("content"), str):
            texts.append(part["content"])
        elif kind == "tool_call":
            arguments = part.get("arguments")
            calls.append({"id": part.get("id"), "type": "function",
                          "function": {"name": part.get("name"),
                                       "arguments": arguments if isinstance(arguments, str)
                                       else json.dumps(arguments)}})
        elif kind == "tool_call_response":
            out["role"] = message.get("role", "tool")
            out["tool_call_id"] = part.get("id")
            response = part.get("response")
            texts.append(response if isinstance(response, str) else json.dumps(response))
        else:
            others.append(part)
    if others:
        out["content"] = [*({"type": "text", "text": t} for t in texts), *others]
    else:
        out["content"] = "".join(texts) if texts or not calls else None
    if calls:
        out["tool_calls"] = calls
    return out


def _text_of(value: Any) -> Any:
    """System instructions (a string, or a list of text parts) as a message's content."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       for p in value):
        return "".join(str(p.get("content", "")) for p in value)
    return value


def _indexed_messages(attrs: dict, prefix: str) -> list | None:
    """The indexed form (``gen_ai.prompt.0.role``, ``gen_ai.prompt.0.content``,
    ``gen_ai.prompt.1.tool_calls.0.name`` ...) as a list of messages, in index order; the
    attributes taken out of ``attrs``. None if there are none."""
    names = [k for k in attrs if k.startswith(prefix)]
    if not names:
        return None
    messages: dict[int, dict] = {}
    for name in names:
        index, _, path = name[len(prefix):].partition(".")
        if not index.isdigit() or not path or len(index) > 6:
            continue  # not the indexed form: left in otel.attributes
        target = messages.setdefault(int(index), {})
        parts = path.split(".")
        for part in parts[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = target[part] = {}
            target = nxt
        target[parts[-1]] = attrs.pop(name)
    return [_lists(messages[i]) for i in sorted(messages)] or None


def _lists(value: Any) -> Any:
    """Dicts whose keys are all indexes (``{"0": ..., "1": ...}``) as lists, all the way down."""
    if not isinstance(value, dict):
        return value
    items = {k: _lists(v) for k, v in value.items()}
    if items and all(k.isdigit() and len(k) <= 6 for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


# -- the reference's braintrust.* attributes ----------------------------------------------------

_BT = "braintrust."
_BT_DICTS = ("metadata", "metrics", "scores", "span_attributes")  # fields that are maps


def _braintrust(attrs: dict, fields: dict, metadata: dict, metrics: dict,
                span_attributes: dict, where: str) -> str | None:
    """Take the ``braintrust.*`` attributes out of ``attrs`` into the row's fields; the
    ``braintrust.parent`` value, if any. An attribute that is not what its field needs rejects
    the span (SpanRejected naming it); a ``*_json`` attribute that is not JSON stays in
    ``otel.attributes`` (as the reference keeps it in metadata)."""
    names = [k for k in attrs if k.startswith(_BT)]
    if not names:
        return None
    parent = None
    maps: dict[str, dict] = {"metadata": metadata, "metrics": metrics, "scores": {},
                             "span_attributes": span_attributes}
    for name in sorted(names):  # the whole map (braintrust.metadata) before its flat keys
        value = attrs[name]
        rest = name[len(_BT):]
        if rest == "parent":
            if not isinstance(value, str):
                raise SpanRejected(f"{where}: attribute {name} must be a string")
            parent = value
        elif rest in ("input", "output", "expected"):
            fields[rest] = value
        elif rest in ("input_json", "output_json", "expected_json"):
            ok, parsed = _json_value(value)
            if not ok:
                continue  # stays in otel.attributes
            fields[rest[:-len("_json")]] = parsed
        elif rest in _BT_DICTS or (rest.endswith("_json") and rest[:-5] in _BT_DICTS):
            field_name = rest[:-5] if rest.endswith("_json") else rest
            if isinstance(value, str):
                ok, value = _json_value(value)
                if not ok:
                    raise SpanRejected(f"{where}: attribute {name} is not a JSON object")
            if not isinstance(value, dict):
                raise SpanRejected(f"{where}: attribute {name} must be a map")
            maps[field_name].update(value)
        elif rest == "tags" or rest == "tags_json":
            if isinstance(value, str):
                ok, parsed = _json_value(value)
                value = parsed if ok and isinstance(parsed, list) else [value]
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise SpanRejected(f"{where}: attribute {name} must be a list of strings")
            fields["tags"] = value
        elif rest.partition(".")[0] in _BT_DICTS and rest.partition(".")[2]:
            head, _, key = rest.partition(".")  # braintrust.metadata.<key> and the like
            maps[head][key] = value
        else:
            continue  # not one of the reference's: stays in otel.attributes
        del attrs[name]
    if maps["scores"]:
        fields["scores"] = maps["scores"]
    kind = span_attributes.get("type")
    if kind is not None and (not isinstance(kind, str) or kind not in _SPAN_TYPES):
        raise SpanRejected(f"{where}: braintrust.span_attributes type {kind!r:.40} is not one "
                           f"of {', '.join(event.SPAN_TYPES)}")
    name_value = span_attributes.get("name")
    if name_value is not None and not isinstance(name_value, str):
        raise SpanRejected(f"{where}: braintrust.span_attributes name must be a string")
    for key, number in metrics.items():
        if not _number(number):
            raise SpanRejected(f"{where}: braintrust.metrics {key!r:.40} must be a number")
    for key, score in maps["scores"].items():
        if score is not None and not (_number(score) and 0 <= score <= 1):
            raise SpanRejected(f"{where}: braintrust.scores {key!r:.40} must be a number in "
                               "[0, 1]")
    return parent


def _short(exc: BaseException, bound: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= bound else text[:bound] + "…"
