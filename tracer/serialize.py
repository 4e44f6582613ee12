"""Snapshotting logged values into msgpack, with readable stand-ins for what msgpack cannot carry.

Values are packed when they are logged, on the caller's thread, so that later mutation of a logged
list or dict (a chat history that keeps growing, say) never changes what was recorded. The fast path
is one C call on a per-thread ``msgpack.Packer``, whose hook converts the standard library's simple
types msgpack does not know (sets, datetimes, UUIDs...). A value holding anything else (a user
object: its repr, ``model_dump``...) or that msgpack refuses (a cycle, an int over 64 bits inside a
container, a lone surrogate) is packed again with stand-ins made for that one value: each object in
it is described once, however often it appears, and the value is walked in Python and repaired
only if it still cannot be packed. Hooks (``model_dump``, ``tolist``) are looked up on the type, so
an object that makes up attributes (a ``Mock``) is described by its repr. Nothing here raises into
user code.

Stand-ins (see README, "What gets stored"):
    set/frozenset -> list; datetime/date/time -> ISO string; UUID, Decimal, Path, Enum -> str;
    dataclass -> dict of its fields; objects with ``model_dump`` (pydantic) -> that dict;
    numpy values -> ``tolist()``; bytearray/memoryview -> bytes; ints beyond 64 bits -> str;
    cycles -> "<circular reference>"; nesting too deep to serialise (about 1,000 levels:
    msgpack's or JSON's limit, whichever comes first) -> cut at MAX_DEPTH levels,
    "<max depth N reached>"; attachments (``tracer.attachments``) -> their reference dict, the
    content handed to the attachment writer; anything else -> its repr, truncated
    ("<non-serializable: TYPE>" if the repr raises). Bytes, NaN and infinities travel as they
    are and are given JSON stand-ins by the aggregator.
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


def stand_in(obj: object, describe_as: Callable[[object], str] | None = None) -> object:
    """A value msgpack can carry, describing ``obj`` (``describe_as``, default ``describe``,
    for anything without a better stand-in); never raises.

    The hooks of pydantic (``model_dump``) and numpy (``dtype`` and ``tolist``) are looked up on
    the type, not the object: an object that makes up attributes as they are asked for (a
    ``unittest.mock.Mock``, a proxy) would otherwise answer every hook with another such object,
    and the stand-in of that with yet another.
    """
    try:
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
        cls = type(obj)
        if dataclasses.is_dataclass(cls):
            return {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}
        if callable(getattr(cls, "model_dump", None)):
            dumped = obj.model_dump()  # type: ignore[attr-defined]
            if isinstance(dumped, dict):
                return dumped
        elif hasattr(cls, "dtype") and callable(getattr(cls, "tolist", None)):
            return obj.tolist()  # type: ignore[attr-defined]
    except Exception:
        pass
    return (describe_as or describe)(obj)


def describe(obj: object) -> str:
    """A readable, bounded description of an arbitrary object; never raises."""
    try:
        text = repr(obj)
    except Exception:
        return f"<non-serializable: {type(obj).__qualname__}>"
    if len(text) > MAX_REPR:
        text = text[:MAX_REPR] + f"... ({len(text)} chars)"
    return text


# Exact types whose values cannot change after they are logged (subclasses might).
_IMMUTABLE = frozenset((str, int, float, bool, type(None), bytes))


def snapshot(value: object, stand_ins: StandIns | None = None) -> object:
    """``value`` as it is now, for a record packed later on the flusher's thread: an immutable
    value as it is, anything else packed now (an ``ExtType(SNAPSHOT, bytes)`` the aggregator
    unpacks in place), so that later mutation never changes what was recorded. ``stand_ins``:
    see ``pack``."""
    if type(value) in _IMMUTABLE:
        return value
    return msgpack.ExtType(SNAPSHOT, pack(value, stand_ins))


def immutable(values: tuple) -> bool:
    """Whether every value of ``values`` is of an immutable type (see ``snapshot``)."""
    # A loop, not all(...): no generator to create, on the hot path of every traced call.
    for value in values:  # noqa: SIM110
        if type(value) not in _IMMUTABLE:
            return False
    return True


# The masking function's pass over records (``tracer.masking.mask_records``), set only while
# a masking function is: without one, packing costs one check per frame, nothing per record.
_masker: Callable[[list], list] | None = None


def set_masker(masker: Callable[[list], list] | None) -> None:
    """Pass every frame's records through ``masker`` before packing them (None: do not)."""
    global _masker
    _masker = masker


# Records made on the flusher's thread from what a caller handed the recorder as it was (an
# OpenTelemetry span, finished: ``tracer.integrations.opentelemetry``): the type of such an
# object -> the function that makes its record (a tuple or bytes). Registered by the module that
# knows the type; empty, packing costs one check per frame and nothing per record.
_late: dict[type, Callable[[Any], object]] = {}


def register_late_record(cls: type, build: Callable[[Any], object]) -> None:
    """Let a recorder take objects of type ``cls`` as records, made into records (tuples or
    bytes) by ``build`` when they are packed, on the flusher's thread. ``build`` must not raise
    (a failure would cost the whole frame)."""
    _late[cls] = build


def _build_late(records: list) -> list:
    late = _late
    built = []
    for record in records:
        build = late.get(type(record))
        built.append(record if build is None else build(record))
    return built


def pack_records(records: list) -> bytes:
    """One DATA body from records: packed ones (bytes) as they are, tuples packed here, objects
    of a type registered with ``register_late_record`` made into records first; with a masking
    function set, each record's user fields masked first (``tracer.masking``).

    Runs of tuples are packed as one msgpack array whose header is then cut off, which leaves
    the records back to back at about half the cost of packing them one by one.
    """
    if _late:
        records = _build_late(records)
    if _masker is not None:
        records = _masker(records)
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


class _NotPlain(Exception):
    """Raised by the per-thread packer at a value that needs a stand-in (see ``pack``)."""


# Stand-ins cheap and safe enough for the per-thread packer: exact types of the standard library,
# whose conversion runs no user code. Anything else goes to ``StandIns``.
_PLAIN: dict[type, Callable[[Any], object]] = {
    set: list, frozenset: list,
    datetime.datetime: datetime.datetime.isoformat, datetime.date: datetime.date.isoformat,
    datetime.time: datetime.time.isoformat,
    uuid.UUID: str, decimal.Decimal: str, pathlib.PurePosixPath: str, pathlib.PosixPath: str,
    pathlib.PureWindowsPath: str, pathlib.WindowsPath: str,
    int: str,  # only reached for ints msgpack cannot hold
    bytearray: bytes, memoryview: bytes,
}


def _plain_stand_in(obj: object) -> object:
    convert = _PLAIN.get(type(obj))
    if convert is None:
        raise _NotPlain
    return convert(obj)


def _packer() -> msgpack.Packer:
    packer = _local.__dict__.get("packer")
    if packer is None:
        packer = _local.packer = msgpack.Packer(default=_plain_stand_in)
    return packer


def pack(obj: object, stand_ins: StandIns | None = None) -> bytes:
    """Snapshot ``obj`` as msgpack bytes, with stand-ins and repairs where needed; never raises.

    Plain values (and the standard library's simple types) are one C call on the per-thread
    packer. At the first value that needs more (user objects: their repr, ``model_dump``...) or
    a repair (cycles, over-deep nesting, lone surrogates), the value is packed again by a
    ``StandIns``, so that each object in it is described once: ``stand_ins`` when several
    values logged by one call are packed apart, else one of its own.
    """
    try:
        return _packer().pack(obj)
    except Exception:
        return (stand_ins or StandIns()).pack(obj)


class StandIns:
    """The stand-ins of what one call logs: each object's is made once, its repr taken at most
    once, however often the object appears and whether or not the value then needs repairing
    (``sanitize``). Objects are held as long as this is, so their ids stay theirs."""

    __slots__ = ("_made", "_described")

    def __init__(self) -> None:
        self._made: dict[int, tuple[object, object]] = {}
        self._described: dict[int, tuple[object, str]] = {}

    def pack(self, obj: object) -> bytes:
        packer = msgpack.Packer(default=self.stand_in)
        try:
            return packer.pack(obj)
        except Exception:
            pass
        try:
            # Cycles, over-deep nesting, lone surrogates: repair a copy and try once more.
            return packer.pack(self.sanitize(obj))
        except Exception:  # a container whose own methods fail: describe it whole
            return packer.pack(self.sanitize(self.describe(obj)))

    def stand_in(self, obj: object) -> object:
        """msgpack ``default`` hook: ``stand_in(obj)``, made once per object."""
        made = self._made.get(id(obj))
        if made is None:
            made = self._made[id(obj)] = (obj, stand_in(obj, self.describe))
        return made[1]

    def describe(self, obj: object) -> str:
        """``describe(obj)``, taken once per object."""
        described = self._described.get(id(obj))
        if described is None:
            described = self._described[id(obj)] = (obj, describe(obj))
        return described[1]

    def sanitize(self, obj: object, depth: int = 0, path: frozenset[int] = frozenset()) -> object:
        """A copy of ``obj`` that msgpack can pack: cycles and deep nesting replaced by
        markers."""
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
                return "<circular reference>"
            inner = path | {id(obj)}
            if isinstance(obj, dict):
                return {self._key(k): self.sanitize(v, depth + 1, inner)
                        for k, v in list(obj.items())}
            return [self.sanitize(v, depth + 1, inner) for v in list(obj)]
        replaced = self.stand_in(obj)
        if isinstance(replaced, str):
            return self.sanitize(replaced)
        return self.sanitize(replaced, depth + 1, path | {id(obj)})

    def _key(self, key: object) -> object:
        if isinstance(key, (str, int, float, bool)) or key is None:
            return self.sanitize(key)
        return self.describe(key)


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
