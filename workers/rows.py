"""From wire records to rows in the reference's underlying format, and how rows merge.

A row is keyed by ``(container, id)``. Each record is turned into a *partial row* (only the fields
it carries); partial rows merge the way the reference's ``span.log()`` does: dicts merge
recursively, any other value replaces what was there.
"""

from __future__ import annotations

import datetime
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

from tracer import event, wire
from tracer.serialize import MAX_DEPTH, describe

# project_id is derived from the project name, so every process and every aggregator agrees on
# it without a lookup.
PROJECT_NAMESPACE = uuid.UUID("6f1c1c35-2f55-4b8e-9d0e-6a8f1f3c9b20")

Key = tuple[str, str]  # (container id, row id)


class Container:
    """What a container key resolves to: its id in the store and the columns its rows carry."""

    __slots__ = ("key", "kind", "id", "project_name", "project_id", "experiment_id",
                 "experiment_name", "columns")

    def __init__(self, key: str) -> None:
        parts = wire.split_container(key)
        if not all(parts[1:]):
            raise ValueError(f"container key {key!r:.100} has an empty part")
        self.key = key
        self.kind = parts[0]
        self.project_name = parts[1]
        self.project_id = project_id(parts[1])
        if self.kind == wire.PROJECT_LOGS:
            self.experiment_id = self.experiment_name = None
            self.columns = {"project_id": self.project_id, "log_id": "g"}
            self.id = f"logs:{self.project_id}"  # the container's id in the store
        else:
            self.experiment_id, self.experiment_name = parts[2], parts[3]
            self.columns = {"project_id": self.project_id, "experiment_id": self.experiment_id}
            self.id = wire.experiment_store_id(self.experiment_id)


def project_id(name: str) -> str:
    return str(uuid.uuid5(PROJECT_NAMESPACE, name))


def span_identity(container: Container, trace: int, span: int, parents: Any, root: int,
                  row_id: str | None) -> dict:
    """The system fields of a span's row."""
    span_id = wire.format_id(trace, span)
    # Most spans are roots or children of a root: their ids are formatted once.
    root_id = span_id if root == span else wire.format_id(trace, root)
    if parents is None:
        parent_ids = None
    elif isinstance(parents, int):
        parent_ids = [root_id if parents == root else wire.format_id(trace, parents)]
    else:
        parent_ids = [wire.format_id(trace, p) for p in parents] or None
    row = {
        "id": row_id or span_id,
        "span_id": span_id,
        "root_span_id": root_id,
        "span_parents": parent_ids,
    }
    row.update(container.columns)
    return row


class BadRecord(ValueError):
    """A record from the wire that cannot become a row: the aggregator rejects it (counted as
    ``bad_record_<reason>`` and against its sender) before it joins a batch, where it would
    make the store's write fail for every row of the batch."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_RECORD_LENGTHS = {wire.SPAN_END: len(wire.SPAN_END_FIELDS),
                   wire.SPAN_LOG: len(wire.SPAN_LOG_FIELDS),
                   wire.SPAN_OPEN: len(wire.SPAN_OPEN_FIELDS),
                   wire.UPDATE: len(wire.UPDATE_FIELDS)}
_SPAN_TYPES = frozenset(event.SPAN_TYPES)


def record_to_row(record: Any, container_of: Callable[[str], Container]
                  ) -> tuple[Container, str, dict]:
    """The container, row id and partial row of one wire record (see ``tracer.wire``).

    ``container_of`` resolves a container key (the aggregator caches them). The record is
    checked as ``tracer.event`` checks what the API is given (the wire may carry anything):
    ids 64-bit ints, the row id a string, names strings, times numbers, fields only the
    logged ones with ``metrics`` a dict of numbers, ``scores`` numbers in [0, 1], ``tags``
    strings, ``metadata`` string keys. Raises BadRecord (a ValueError) naming the reason.
    """
    if type(record) is not tuple and type(record) is not list or not record:
        raise BadRecord("shape", f"a record is a non-empty array, not {type(record).__name__}")
    kind = record[0]
    length = _RECORD_LENGTHS.get(kind) if type(kind) is int else None
    if length != len(record):
        if length is None:
            raise BadRecord("shape", f"unknown record kind {kind!r:.20}")
        raise BadRecord("shape", f"a record of kind {kind} has {length} fields, not "
                                 f"{len(record)}")
    if kind == wire.UPDATE:
        _, ckey, row_id, fields = record
        if type(row_id) is not str or not row_id:
            raise BadRecord("row_id", "an update's row id must be a non-empty string")
        container = _container(container_of, ckey)
        partial = dict(_checked(fields, _UPDATE_FIELDS))
        partial["id"] = row_id
        partial.update(container.columns)
        return container, row_id, partial
    _, ckey, trace, span, parents, root, row_id = record[:7]
    # A few type tests per record: this is the aggregator's hot path.
    # ``>> 64`` is non-zero for a negative id or one over 64 bits.
    if type(trace) is not int or type(span) is not int or type(root) is not int or (
            (trace | span | root) >> 64):
        raise BadRecord("ids", "trace, span and root ids must be 64-bit unsigned ints")
    if parents is not None and not (type(parents) is int and not parents >> 64) and (
            not isinstance(parents, (tuple, list))
            or not all(type(p) is int and not p >> 64 for p in parents)):
        raise BadRecord("ids", "parents must be None, a span id or a list of span ids")
    if row_id is not None and (type(row_id) is not str or not row_id):
        raise BadRecord("row_id", "a row id must be None or a non-empty string")
    if type(ckey) is not str:
        raise BadRecord("container", "a container key must be a string")
    try:
        container = container_of(ckey)  # _container, inlined
    except ValueError as exc:
        raise BadRecord("container", str(exc)) from None
    partial = span_identity(container, trace, span, parents, root, row_id)
    if kind == wire.SPAN_LOG:
        merge(partial, _checked(record[7], _SPAN_FIELDS))
        return container, partial["id"], partial
    name, span_type, start = record[7:10]
    if name is not None and type(name) is not str:
        raise BadRecord("attributes", "a span's name must be None or a string")
    if span_type is not None and (type(span_type) is not str or span_type not in _SPAN_TYPES):
        raise BadRecord("attributes", f"span type {span_type!r:.40} is not a span type")
    attributes = {"name": name}
    if span_type is not None:
        attributes["type"] = span_type
    partial["span_attributes"] = attributes
    if kind == wire.SPAN_END:
        end, fields, inp = record[10:13]
        if type(start) not in _NUMBERS or type(end) not in _NUMBERS:
            raise BadRecord("times", "a span's start and end must be numbers")
        partial["metrics"] = {"start": start, "end": end}
    else:  # still running: no end yet
        fields, inp = record[10:12]
        if type(start) not in _NUMBERS:
            raise BadRecord("times", "a span's start must be a number")
        partial["metrics"] = {"start": start}
    if inp is not None:
        try:
            partial["input"] = wire.unpack_input(inp)
        except (TypeError, ValueError) as exc:
            raise BadRecord("input", f"malformed input slot: {exc}") from None
    if fields:
        _checked(fields, _SPAN_FIELDS)
        if partial.keys().isdisjoint(fields):  # the usual output/error/metadata: nothing to merge
            partial.update(fields)
        else:
            merge(partial, fields)
    return container, partial["id"], partial


_NUMBERS = frozenset((int, float))  # not bool: True is no time or metric


def _container(container_of: Callable[[str], Container], key: object) -> Container:
    if type(key) is not str:
        raise BadRecord("container", "a container key must be a string")
    try:
        return container_of(key)
    except ValueError as exc:
        raise BadRecord("container", str(exc)) from None


def _checked(fields: object, allowed: dict[str, Callable[[Any], str | None] | None]) -> dict:
    """``fields`` if it is a dict of fields the API could have logged (see ``record_to_row``);
    raises BadRecord otherwise. ``allowed`` maps each field name to its check, if any."""
    if type(fields) is not dict:
        raise BadRecord("fields", f"fields must be a map, not {type(fields).__name__}")
    for name, value in fields.items():
        check = allowed.get(name, _unknown) if type(name) is str else _unknown
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise BadRecord("fields", f"{name!r:.40}: {problem}")
    return fields


def _unknown(_value: object) -> str:
    return "not a field that can be logged"


def _map_of(valid: Callable[[Any], bool] | None, what: str) -> Callable[[Any], str | None]:
    """The check of a field that is a map of string keys to values ``valid`` accepts (None
    always accepted): what is wrong with a value, or None."""
    def problem(value: object) -> str | None:
        if type(value) is not dict:
            return "must be a map"
        for key, item in value.items():
            if type(key) is not str:
                return "keys must be strings"
            if valid is not None and item is not None and not valid(item):
                return f"{key!r:.40} must be {what}"
        return None
    return problem


_metrics_problem = _map_of(lambda v: type(v) in _NUMBERS, "a number")
# NaN fails the comparison.
_scores_problem = _map_of(lambda v: type(v) in _NUMBERS and 0 <= v <= 1, "a number in [0, 1]")
_metadata_problem = _map_of(None, "anything")


def _tags_problem(value: object) -> str | None:
    if not isinstance(value, (tuple, list)):
        return "must be a list"
    for tag in value:
        if type(tag) is not str:
            return "must be strings"
    return None


def _attributes_problem(value: object) -> str | None:
    if type(value) is not dict:
        return "must be a map"
    for key, attribute in value.items():
        if key == "name":
            if attribute is not None and type(attribute) is not str:
                return "name must be a string"
        elif key == "type":
            if attribute is not None and (type(attribute) is not str
                                          or attribute not in _SPAN_TYPES):
                return f"{attribute!r:.40} is not a span type"
        else:
            return f"unknown attribute {key!r:.40}"
    return None


# What Span.log and friends accept (tracer.event), each with its check, if any.
_SPAN_FIELDS: dict[str, Callable[[Any], str | None] | None] = dict.fromkeys(event.FIELDS)
_SPAN_FIELDS.update(metrics=_metrics_problem, scores=_scores_problem,
                    metadata=_metadata_problem, tags=_tags_problem)
# RemoteSpan.set_attributes sends span attributes in an update.
_UPDATE_FIELDS = {**_SPAN_FIELDS, "span_attributes": _attributes_problem}


# -- rows in the underlying format sent by another program (the trace server's ingest API) ---

#: Characters of an id (``id``, ``span_id``, ``root_span_id``, a parent) a row may have.
MAX_ID_CHARS = 1024


def _id_problem(value: object) -> str | None:
    if type(value) is not str:
        return "must be a string"
    if len(value) > MAX_ID_CHARS:
        return f"at most {MAX_ID_CHARS} characters"
    return None


def _parents_problem(value: object) -> str | None:
    if not isinstance(value, (tuple, list)):
        return "must be a list of span ids"
    for parent in value:
        problem = _id_problem(parent)
        if problem:
            return f"each parent {problem}"
    return None


def _text_problem(value: object) -> str | None:
    return None if type(value) is str else "must be a string"


def _map_problem(value: object) -> str | None:
    return None if type(value) is dict else "must be a map"


def _row_attributes_problem(value: object) -> str | None:
    # Rows may carry span attributes beyond the ones our API sets (an imported or converted
    # row): string keys; the name and type the store reads must be strings.
    if type(value) is not dict:
        return "must be a map"
    for key, attribute in value.items():
        if type(key) is not str:
            return "keys must be strings"
        if key in ("name", "type") and attribute is not None and type(attribute) is not str:
            return f"{key} must be a string"
    return None


#: The fields a row in the underlying format may have, each with its check (None: anything):
#: what the aggregator makes of records (``record_to_row``, ``media``, the uploader's
#: truncation), ``origin`` (the host and process an uploading aggregator got it from), and
#: ``context`` (where the reference SDK's span started: caller_filename... and span_origin,
#: sent by its own clients to ``tracer serve``'s /logs3).
ROW_FIELDS: dict[str, Callable[[Any], str | None] | None] = {
    **_SPAN_FIELDS,
    "id": _id_problem, "span_id": _id_problem, "root_span_id": _id_problem,
    "span_parents": _parents_problem, "span_attributes": _row_attributes_problem,
    "created": _text_problem, "project_id": _text_problem, "log_id": _text_problem,
    "experiment_id": _text_problem, "_images": _map_problem, "origin": _map_problem,
    "context": _map_problem,
}


def check_row(row: object) -> dict:
    """``row`` if it is a partial row in the underlying format the store can take: a map with a
    non-empty string ``id``, only ``ROW_FIELDS``, each of the right type (``metrics`` numbers,
    ``scores`` numbers in [0, 1], ``tags`` strings, ...), nested no deeper than the store packs
    (``check_depth``). Raises BadRecord naming the field."""
    if type(row) is not dict:
        raise BadRecord("shape", f"a row must be a map, not {type(row).__name__}")
    row_id = row.get("id")
    if type(row_id) is not str or not row_id:
        raise BadRecord("row_id", "id: must be a non-empty string")
    for name, value in row.items():
        if type(name) is not str:
            raise BadRecord("fields", f"field names must be strings, not {name!r:.40}")
        check = ROW_FIELDS.get(name, _not_a_row_field)
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise BadRecord("fields", f"{name!r:.60}: {problem}")
    check_depth(row)
    return row


def _not_a_row_field(_value: object) -> str:
    return "not a field of a row"


# msgpack packs (and unpacks) at most 1,024 levels of nesting: a row deeper than that fails the
# store's write, and with it its whole batch. Each level takes at least a byte on the wire, and
# a row nests no deeper than its record, so only records of this size or more need the check.
CHECK_DEPTH_FROM = 1024


def check_depth(partial: dict) -> None:
    """Raise BadRecord if the store could not pack ``partial`` (nested too deep)."""
    try:
        pack_row(partial)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRecord("too_deep", f"the row cannot be stored: {exc}") from None


def merge(into: dict, update: dict) -> dict:
    """Merge ``update`` into ``into`` in place: dicts recursively, other values replace."""
    # A loop, not recursion: rows nest as deep as msgpack allows (1,024 levels), deeper than
    # Python's recursion limit.
    pending = [(into, update)]
    while pending:
        target, source = pending.pop()
        for key, value in source.items():
            old = target.get(key)
            if isinstance(value, dict) and isinstance(old, dict):
                pending.append((old, value))
            else:
                target[key] = value
    return into


# Fields a truncated row keeps whatever their size: without them it is not the same row.
IDENTITY_FIELDS = frozenset(("id", "span_id", "root_span_id", "span_parents", "created",
                             "project_id", "log_id", "experiment_id"))


def row_size(row: Any) -> int:
    """How large a row (or a value of one) is: the larger of its JSON (as read) and its msgpack
    (as stored) forms. They differ most for bytes, which JSON shows as a short stand-in."""
    return max(len(to_json(row)), len(pack_row(row)))


def truncate(row: dict, limit: int, saved_to: str | None = None) -> dict:
    """A copy of ``row`` that fits in about ``limit`` bytes (``row_size``).

    Its largest fields, biggest first, are replaced by a marker: ``{"_truncated": true,
    "original_bytes": N, "preview": "<start of the JSON>", "saved_to": "<payload file>"}``.
    """
    sizes = {k: row_size({k: v}) for k, v in row.items() if k not in IDENTITY_FIELDS}
    out = dict(row)
    total = row_size(row)
    for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total <= limit:
            break
        text = to_json(row[name])
        marker = {"_truncated": True, "original_bytes": len(text),
                  "preview": text[:min(1000, limit // 8)]}
        if saved_to is not None:
            marker["saved_to"] = saved_to
        out[name] = marker
        total -= sizes[name] - len(to_json({name: marker}))
    return out


def pack_row(row: dict) -> bytes:
    """A row as the store holds it (``wire.unpack_stored`` reads it back): msgpack, about 5x
    cheaper to write than JSON (measured in docs/benchmarks.md); JSON is made when read."""
    return msgpack.packb(row)


def load_row(data: bytes | str) -> dict:
    """A stored row as readers see it: the reference's underlying format, exactly as its JSON
    would read back (values JSON cannot hold get the stand-ins ``to_json`` gives them)."""
    return json.loads(to_json(wire.unpack_stored(data)))


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


# One encoder for every row: json.dumps with options builds a new one per call (~1 us).
_encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


def to_json(row: Any) -> str:
    """Serialise a row (or any value of one) as JSON; values JSON cannot hold get readable
    stand-ins."""
    try:
        return _encode(row)
    except (TypeError, ValueError, RecursionError):
        return _encode(json_safe(row))


def json_safe(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` with JSON stand-ins: bytes, NaN/inf, non-string keys, deep nesting."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, bytes):
        preview = describe(value[:64])
        return f"<bytes: {len(value)} bytes {preview}{'...' if len(value) > 64 else ''}>"
    if depth >= MAX_DEPTH:
        return f"<max depth {MAX_DEPTH} reached>"
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else _json_key(k)): json_safe(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    return describe(value)


def _json_key(key: Any) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return json.dumps(json_safe(key)) if isinstance(key, (list, tuple, dict)) else str(key)
