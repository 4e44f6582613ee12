"""Snapshotting logged values into msgpack, with readable stand-ins for what msgpack cannot carry.

Values are packed when they are logged, on the caller's thread, so that later mutation of a logged
list or dict (a chat history that keeps growing, say) never changes what was recorded. The fast path
is one C call on a per-thread ``msgpack.Packer``; the stand-in hook runs only for types msgpack
does not know. Only when packing fails outright (a cycle, an int over 64 bits inside a container
msgpack cannot convert, a lone surrogate) is the value walked in Python and repaired. Nothing here
raises into user code.

Stand-ins (see README, "What gets stored"):
    set/frozenset -> list; datetime/date/time -> ISO string; UUID, Decimal, Path, Enum -> str;
    dataclass -> dict of its fields; objects with ``model_dump`` (pydantic) -> that dict;
    numpy values -> ``tolist()``; bytearray/memoryview -> bytes; ints beyond 64 bits -> str;
    cycles -> "<cycle: TYPE>"; nesting too deep to serialise (about 1,000 levels: msgpack's or
    JSON's limit, whichever comes first) -> cut at MAX_DEPTH levels, "<max depth N reached>";
    attachments (``tracer.attachments``) -> their reference dict, the content handed to the
    attachment writer; anything else -> its repr, truncated. Bytes, NaN and infinities travel
    as they are and are given JSON stand-ins by the aggregator.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import pathlib
import threading
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

from . import wire
from .wire import SNAPSHOT

MAX_DEPTH = 200
MAX_REPR = 1000

_local = threading.local()

# Types that stand for something else when logged, with what they become: (type, function)
# pairs, tried first. Registered by the module that knows them (the attachment writer turns an
# attachment into its reference dict), so that this module imports neither.
_substitutes: tuple[tuple[type, Callable[[Any], object]], ...] = ()


def register_substitute(cls: type, substitute: Callable[[Any], object]) -> None:
    """Log ``substitute(obj)`` in place of any ``obj`` of type ``cls``."""
    global _substitutes
    _substitutes = (*_substitutes, (cls, substitute))


def stand_in(obj: object) -> object:
    """msgpack ``default`` hook: a value msgpack can carry, describing ``obj``."""
    for cls, substitute in _substitutes:
        if isinstance(obj, cls):
            return substitute(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value if isinstance(obj.value, (str, int, float)) else str(obj)
    if isinstance(obj, (uuid.UUID, decimal.Decimal, pathlib.PurePath)):
        return str(obj)
    if isinstance(obj, int):  # only reached for ints msgpack cannot hold
        return str(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    try:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        dump = getattr(obj, "model_dump", None)
        if callable(dump):
            return dump()
        tolist = getattr(obj, "tolist", None)
        if hasattr(obj, "dtype") and callable(tolist):
            return tolist()
    except Exception:
        pass
    return describe(obj)


def describe(obj: object) -> str:
    """A readable, bounded description of an arbitrary object; never raises."""
    try:
        text = repr(obj)
    except Exception:
        return f"<unrepresentable {type(obj).__qualname__}>"
    if len(text) > MAX_REPR:
        text = text[:MAX_REPR] + f"... ({len(text)} chars)"
    return text


# Exact types whose values cannot change after they are logged (subclasses might).
_IMMUTABLE = frozenset((str, int, float, bool, type(None), bytes))


def snapshot(value: object) -> object:
    """``value`` as it is now, for a record packed later on the flusher's thread: an immutable
    value as it is, anything else packed now (an ``ExtType(SNAPSHOT, bytes)`` the aggregator
    unpacks in place), so that later mutation never changes what was recorded."""
    if type(value) in _IMMUTABLE:
        return value
    return msgpack.ExtType(SNAPSHOT, pack(value))


def immutable(values: tuple) -> bool:
    """Whether every value of ``values`` is of an immutable type (see ``snapshot``)."""
    # A loop, not all(...): no generator to create, on the hot path of every traced call.
    for value in values:  # noqa: SIM110
        if type(value) not in _IMMUTABLE:
            return False
    return True


def pack_records(records: list) -> bytes:
    """One DATA body from records: packed ones (bytes) as they are, tuples packed here.

    Runs of tuples are packed as one msgpack array whose header is then cut off, which leaves
    the records back to back at about half the cost of packing them one by one.
    """
    try:
        return b"".join(records)  # all packed already: the common case for span.log()
    except TypeError:
        pass
    parts: list[bytes] = []
    run: list = []
    for record in records:
        if type(record) is bytes:
            if run:
                parts.append(_pack_run(run))
                run = []
            parts.append(record)
        else:
            run.append(record)
    if run:
        parts.append(_pack_run(run))
    return b"".join(parts)


def _pack_run(run: list) -> bytes:
    n = len(run)
    try:
        packed = _packer().pack(run)
    except Exception:  # an int over 64 bits, a lone surrogate: repair record by record
        return b"".join(pack(record) for record in run)
    return packed[1 if n <= 15 else 3 if n <= 0xFFFF else 5:]  # the array header


def _packer() -> msgpack.Packer:
    packer = _local.__dict__.get("packer")
    if packer is None:
        packer = _local.packer = msgpack.Packer(default=stand_in)
    return packer


def pack(obj: object) -> bytes:
    """Snapshot ``obj`` as msgpack bytes, repairing it if it cannot be packed as it is."""
    packer = _packer()
    try:
        return packer.pack(obj)
    except Exception:
        # Cycles, over-deep nesting, lone surrogates: repair a copy and try once more.
        return packer.pack(sanitize(obj))


def sanitize(obj: object, depth: int = 0, path: frozenset[int] = frozenset()) -> object:
    """A copy of ``obj`` that msgpack can pack: cycles and deep nesting replaced by markers."""
    if obj is None or isinstance(obj, (bool, float)):
        return obj
    if isinstance(obj, int):
        return obj if -(2**63) <= obj < 2**64 else str(obj)
    if isinstance(obj, str):
        return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, bytes):
        return obj
    if depth >= MAX_DEPTH:
        return f"<max depth {MAX_DEPTH} reached>"
    if isinstance(obj, (dict, list, tuple, set, frozenset)):
        if id(obj) in path:
            return f"<cycle: {type(obj).__name__}>"
        inner = path | {id(obj)}
        if isinstance(obj, dict):
            return {
                _key(k): sanitize(v, depth + 1, inner) for k, v in list(obj.items())
            }
        return [sanitize(v, depth + 1, inner) for v in list(obj)]
    replaced = stand_in(obj)
    if isinstance(replaced, str):
        return sanitize(replaced)
    return sanitize(replaced, depth + 1, path | {id(obj)})


def _key(key: object) -> object:
    if isinstance(key, (str, int, float, bool)) or key is None:
        return sanitize(key)
    return describe(key)


def snapshot_to_json(snapshot: bytes, pretty: bool = False) -> bytes:
    """The JSON text of a value snapshotted with ``serialize.pack``."""
    unpacker = wire.record_unpacker()
    unpacker.feed(snapshot)
    value = next(unpacker)
    indent = 2 if pretty else None
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, indent=indent)
    except (TypeError, ValueError):
        text = json.dumps(_json_safe(value), ensure_ascii=False, allow_nan=False, indent=indent)
    return text.encode("utf-8", "backslashreplace")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        return f"<bytes: {len(value)} bytes>"
    if isinstance(value, dict):
        return {(k if isinstance(k, (str, int, float, bool)) or k is None else repr(k)):
                _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None or isinstance(value, float):
        return value
    return repr(value)
