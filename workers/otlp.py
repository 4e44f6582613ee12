"""OTLP traces in: the spans of an OTLP ``ExportTraceServiceRequest`` as our rows.

``tracer serve`` receives OTLP/HTTP at ``/v1/traces`` (``workers/server/otlp.py``) and writes
what this module makes of it through the ingest write path. The mapping is the README's table
("OpenTelemetry" → "Receiving OTLP"). This module decodes the protobuf (ids, times, attribute
values) and resolves containers; the mapping itself is ``tracer.otel_mapping.map_span``, the
one the in-process bridge calls, asked for the receiver's differences by parameter. In short:

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

# The mapping, its bounds and helpers are the in-process bridge's (one mapping, two front ends);
# the bounds re-exported here (``otlp.MAX_META_STRING`` ...) are the receiver's too.
from tracer import otel_mapping, w3c, wire
from tracer.otel_mapping import MAX_ATTRIBUTES as MAX_ATTRIBUTES
from tracer.otel_mapping import MAX_EVENTS as MAX_EVENTS
from tracer.otel_mapping import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from tracer.otel_mapping import MAX_KEY as MAX_KEY
from tracer.otel_mapping import MAX_LINKS as MAX_LINKS
from tracer.otel_mapping import MAX_META_STRING as MAX_META_STRING
from tracer.otel_mapping import seconds

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
ENCODINGS = (PROTOBUF, JSON)

# Bounds on what one span brings (hostile input costs only itself); the rest are
# tracer.otel_mapping's, imported above.
MAX_DEPTH = 16  # levels of nested arrays and key-value lists in one attribute value
MAX_PROJECT = 256  # characters of a project name taken from a header or an attribute
MAX_ERRORS = 5  # distinct rejection messages named in a response
DEFAULT_PROJECT = "default"

_KINDS = {value: name[len("SPAN_KIND_"):].lower()
          for name, value in trace_pb2.Span.SpanKind.items()}
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
        context = _Context(resource=resource, resource_dropped=dropped,
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

    resource: dict  # its attributes decoded (map_span bounds a copy for each row)
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
    """``(container key, row)`` of one span; SpanRejected (a ValueError) if it cannot be one.
    The protobuf decoded into plain values, mapped by ``tracer.otel_mapping`` (as the
    in-process bridge maps SDK spans), strictly: a ``braintrust.*`` attribute that is not what
    its field takes rejects the span, and ``braintrust.parent`` is resolved here."""
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
    links = span.links
    try:
        mapped = otel_mapping.map_span(
            name=span.name, kind=span.kind, trace_id=trace_id, span_id=span_id,
            parent_span_id=parent, attributes=attrs, status_code=span.status.code,
            status_message=span.status.message, trace_state=span.trace_state,
            events=_events(span.events),
            links=[otel_mapping.Link(link.trace_id, link.span_id, attributes(link.attributes)[0])
                   for link in links[:MAX_LINKS]],
            # map_span bounds a copy of the resource's attributes for each row: rows merge in
            # place (rows.merge), and a row must never share a dict with another.
            resource=context.resource, scope=context.scope,
            dropped={"attributes": dropped + span.dropped_attributes_count,
                     "events": span.dropped_events_count,
                     "links": span.dropped_links_count + max(0, len(links) - MAX_LINKS),
                     "resource_attributes": context.resource_dropped},
            strict=True, parent_as_is=True, own_end=bool(span.end_time_unix_nano))
    except ValueError as exc:  # a braintrust.* attribute that is not what its field takes
        raise SpanRejected(f"{where}: {exc}") from None
    key = default_key
    if mapped.parent is not None:
        key = container_of(mapped.parent, f"{where}: attribute braintrust.parent")
    fields = mapped.fields
    otel = fields["metadata"]["otel"]
    # OTLP's own names for its kinds, unknown numbers as they came (map_span: "internal").
    otel["kind"] = _KINDS.get(span.kind, str(span.kind))
    row: dict[str, Any] = {
        "id": row_span_id,
        "span_id": row_span_id,
        "root_span_id": root_span_id,
        # A parent id of zeros is no parent (some exporters write one for roots).
        "span_parents": [w3c.row_ids(trace_id, parent)[0]] if parent else None,
        "created": datetime.datetime.fromtimestamp(start, datetime.timezone.utc).isoformat(),
    }
    if context.origin is not None:
        row["origin"] = dict(context.origin)
    row["span_attributes"] = mapped.span_attributes
    row["metrics"] = {**metrics, **fields.pop("metrics", {})}
    row["metadata"] = fields.pop("metadata")
    row.update(fields)  # input, output, expected, error, scores, tags
    return key, row


def _id(raw: bytes, size: int, name: str) -> int:
    if len(raw) != size:
        raise SpanRejected(f"{name} must be {size} bytes, not {len(raw)}")
    value = int.from_bytes(raw, "big")
    if not value:
        raise SpanRejected(f"{name} is all zeros (invalid in W3C trace context)")
    return value


def _events(events: Iterable[trace_pb2.Span.Event]) -> Iterator[otel_mapping.Event]:
    """The span's events as ``otel_mapping``'s, the attributes decoded only of those it keeps
    (the exceptions, and the first MAX_EVENTS others): the rest are only counted."""
    others = 0
    for item in events:
        if item.name != "exception":
            others += 1
            if others > MAX_EVENTS:
                yield otel_mapping.Event(item.name, 0.0, {})
                continue
        yield otel_mapping.Event(item.name, seconds(item.time_unix_nano),
                                 attributes(item.attributes)[0])


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


def _short(exc: BaseException, bound: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= bound else text[:bound] + "…"
