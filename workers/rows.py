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

from tracer import wire
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


def record_to_row(record: Any, container_of: Callable[[str], Container]
                  ) -> tuple[Container, str, dict]:
    """The container, row id and partial row of one wire record (see ``tracer.wire``).

    ``container_of`` resolves a container key (the aggregator caches them). Raises
    ValueError (or a TypeError/IndexError on a malformed record) for anything else.
    """
    kind = record[0]
    if kind == wire.UPDATE:
        _, ckey, row_id, fields = record
        container = container_of(ckey)
        partial = dict(fields)
        partial["id"] = row_id
        partial.update(container.columns)
        return container, row_id, partial
    if kind not in (wire.SPAN_END, wire.SPAN_OPEN, wire.SPAN_LOG):
        raise ValueError(f"unknown record kind {kind!r}")
    _, ckey, trace, span, parents, root, row_id = record[:7]
    container = container_of(ckey)
    partial = span_identity(container, trace, span, parents, root, row_id)
    if kind == wire.SPAN_LOG:
        merge(partial, record[7])
        return container, partial["id"], partial
    name, span_type, start = record[7:10]
    attributes = {"name": name}
    if span_type is not None:
        attributes["type"] = span_type
    partial["span_attributes"] = attributes
    if kind == wire.SPAN_END:
        end, fields, inp = record[10:13]
        partial["metrics"] = {"start": start, "end": end}
    else:  # still running: no end yet
        fields, inp = record[10:12]
        partial["metrics"] = {"start": start}
    if inp is not None:
        partial["input"] = wire.unpack_input(inp)
    if fields:
        if partial.keys().isdisjoint(fields):  # the usual output/error/metadata: nothing to merge
            partial.update(fields)
        else:
            merge(partial, fields)
    return container, partial["id"], partial


def merge(into: dict, update: dict) -> dict:
    """Merge ``update`` into ``into`` in place: dicts recursively, other values replace."""
    for key, value in update.items():
        old = into.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            merge(old, value)
        else:
            into[key] = value
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
