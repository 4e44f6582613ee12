"""The wire format between span recorders and the aggregator.

Everything on the socket is msgpack (never pickle). A recorder talks to the aggregator over one
ZeroMQ DEALER socket; the aggregator answers on its ROUTER socket. Every message from a recorder is
two frames::

    header = [VERSION, kind, host, pid, gen, seq, arg]
    body   = concatenated msgpack records (DATA) or b"" (other kinds)

``(host, pid, gen)`` names the sender: ``gen`` is drawn anew whenever a process (re)opens its
recorder, so a recycled pid or a forked child is always a new sender. ``seq`` counts the sender's
DATA messages from 1, so the aggregator can detect gaps; ``arg`` depends on ``kind``.

Records are msgpack arrays. Span records share a 7-element head::

    (kind, container, trace, span, parents, root, row_id, ...)

``trace`` is a 64-bit trace id shared by every span of a trace, ``span`` and ``root`` 64-bit span
ids inside it (the 128-bit ``span_id`` string is ``trace:span`` formatted as a UUID by the
aggregator); ``parents`` is None for a root span, an int for one parent or a list of ints for
several. ``row_id`` is None unless the user chose the row id. Ids are formatted, containers resolved
and rows merged by the aggregator, never by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgpack

VERSION = 1

# Message kinds, recorder -> aggregator (header[1]).
DATA = 1  # arg: number of records in the body
SYNC = 2  # arg: [token, level]; the aggregator answers ACK once the level is reached
BYE = 3  # arg: the sender's counters (dict); the sender is closing cleanly
STATS = 4  # arg: token; the aggregator answers STATS_REPLY

# Reply kinds, aggregator -> recorder: [VERSION, kind, token, payload, first_seq]. first_seq is
# the first DATA seq this aggregator received from the sender (0: none yet). A recorder that has
# sent data and gets a reply whose first_seq is not 1 is talking to an aggregator that did not
# see its stream from the start: a replacement, reached through a silent reconnect.
ACK = 10  # token: the SYNC's; payload: None on success, or an error message
STATS_REPLY = 11  # payload: counters dict
COMMITTED_UPTO = 12  # token: a DATA seq; every DATA message up to it is committed

# SYNC levels.
RECEIVED = 0  # every earlier message of this sender has been read and queued
COMMITTED = 1  # ... and every row it touched is committed to the sink

# Record kinds. Each record's layout is defined once, by its builder below (``span_end`` ...)
# and its ``*_FIELDS`` names; the aggregator reads records by these positions.
SPAN_END = 1  # a span that ended: head + (name, type, start, end, fields | None, input)
SPAN_LOG = 2  # fields logged to a span: head + (fields,)
SPAN_OPEN = 3  # a span still running: head + (name, type, start, fields | None, input)
UPDATE = 4  # (UPDATE, container, row_id, fields): merge into an existing row by id

HEAD_FIELDS = ("kind", "container", "trace", "span", "parents", "root", "row_id")
SPAN_END_FIELDS = (*HEAD_FIELDS, "name", "type", "start", "end", "fields", "input")
SPAN_LOG_FIELDS = (*HEAD_FIELDS, "fields")
SPAN_OPEN_FIELDS = (*HEAD_FIELDS, "name", "type", "start", "fields", "input")
UPDATE_FIELDS = ("kind", "container", "row_id", "fields")

# msgpack extension type of a value packed when it was logged, inside a record packed later
# (tracer.serialize.snapshot): unpacked in place.
SNAPSHOT = 1

# ``input`` of SPAN_END/SPAN_OPEN is None or (names, value), ``value`` as it was when the span
# started (immutable values as they are, others a SNAPSHOT). With names None it is the input
# itself; with a tuple of parameter names (``@traced``) it is (args, kwargs) and the input is the
# bound arguments, which the aggregator builds (so the caller never builds that dict).

# Container keys travel with every record as one short string (packing it is a memcpy):
# "L\x1f<project>" for project logs, "E\x1f<project>\x1f<experiment id>\x1f<experiment name>".
SEP = "\x1f"
PROJECT_LOGS = "L"
EXPERIMENT = "E"


def logs_container(project: str) -> str:
    return f"{PROJECT_LOGS}{SEP}{project}"


def experiment_container(project: str, experiment_id: str, experiment_name: str) -> str:
    return f"{EXPERIMENT}{SEP}{project}{SEP}{experiment_id}{SEP}{experiment_name}"


def experiment_store_id(experiment_id: str) -> str:
    """How the store names an experiment's container (its ``rows.container`` column)."""
    return f"exp:{experiment_id}"


def split_container(key: str) -> tuple[str, ...]:
    """Split a container key into (kind, project[, experiment_id, experiment_name])."""
    parts = tuple(key.split(SEP))
    if parts[0] == PROJECT_LOGS and len(parts) == 2:
        return parts
    if parts[0] == EXPERIMENT and len(parts) == 4:
        return parts
    raise ValueError(f"malformed container key {key!r}")


def span_end(container: str, trace: int, span: int, parents: object, root: int,
             row_id: str | None, name: str | None, type: str | None, start: float, end: float,
             fields: dict | None, input: object) -> tuple:
    """A SPAN_END record. ``@traced`` and ``Span.end`` build it inline (a call costs ~0.1 us on
    the hottest path); tests/test_records.py checks those copies against this layout."""
    return (SPAN_END, container, trace, span, parents, root, row_id, name, type, start, end,
            fields, input)


def span_log(container: str, trace: int, span: int, parents: object, root: int,
             row_id: str | None, fields: dict) -> tuple:
    """A SPAN_LOG record: fields merged into the span's row."""
    return (SPAN_LOG, container, trace, span, parents, root, row_id, fields)


def span_open(container: str, trace: int, span: int, parents: object, root: int,
              row_id: str | None, name: str | None, type: str | None, start: float,
              fields: dict | None, input: object) -> tuple:
    """A SPAN_OPEN record: the announcement of a span still running."""
    return (SPAN_OPEN, container, trace, span, parents, root, row_id, name, type, start, fields,
            input)


def update(container: str, row_id: str, fields: dict) -> tuple:
    """An UPDATE record: fields merged into the row ``row_id`` of ``container``."""
    return (UPDATE, container, row_id, fields)


_prefixes: dict[int, str] = {}  # trace -> the first half of its ids, "xxxxxxxx-xxxx-xxxx-"


def format_id(trace: int, span: int) -> str:
    """The UUID-shaped string of the 128-bit id ``trace:span``."""
    # The aggregator formats three ids per row, mostly of a few live traces: caching the trace
    # half saves ~40% of the work.
    prefix = _prefixes.get(trace)
    if prefix is None:
        if len(_prefixes) >= 4096:
            _prefixes.clear()
        h = f"{trace:016x}"
        prefix = _prefixes[trace] = f"{h[:8]}-{h[8:12]}-{h[12:]}-"
    h = f"{span:016x}"
    return f"{prefix}{h[:4]}-{h[4:]}"


def parse_id(text: str) -> tuple[int, int]:
    """Inverse of :func:`format_id`; raises ValueError for anything else."""
    h = text.replace("-", "")
    if len(h) != 32:
        raise ValueError(f"not a span id: {text!r}")
    n = int(h, 16)
    return n >> 64, n & 0xFFFFFFFFFFFFFFFF


def header(kind: int, sender: tuple[str, int, int], seq: int, arg: object = None) -> bytes:
    return msgpack.packb([VERSION, kind, sender[0], sender[1], sender[2], seq, arg])


def reply(kind: int, token: object, payload: object = None, first_seq: int = 0) -> bytes:
    return msgpack.packb([VERSION, kind, token, payload, first_seq])


def unpack_input(slot: Any) -> object:
    """The input a SPAN_END/SPAN_OPEN record carries in its ``input`` slot: ``(names, value)``,
    ``value`` being the input itself (names None) or ``(args, kwargs)`` to bind to the names."""
    names, value = slot
    if names is None:
        return value
    args, kwargs = value
    bound = dict(zip(names, args, strict=False))
    if len(args) > len(names):  # more positional arguments than parameters: keep them
        bound["*args"] = list(args[len(names):])
    if kwargs:
        bound.update(kwargs)
    return bound


# Snapshots inside snapshots: one level is all a recorder sends. Each level is a nested
# msgpack.unpackb, which takes about 30 KB of C stack: a few hundred levels (a 1 KB message)
# overflow it and kill the process, so the depth is bounded here, not by recursion limits.
MAX_SNAPSHOT_DEPTH = 4


def _snapshot_hook(strict: bool) -> Callable[[int, bytes], object]:
    """The ext hook of a record: a SNAPSHOT is unpacked in place, with a hook one level deeper,
    down to ``MAX_SNAPSHOT_DEPTH`` levels, where it is refused (ValueError). Any other extension
    type is refused too if ``strict`` (nothing of ours sends one; msgpack's own timestamps never
    reach a hook), else left as it is, an ``ExtType``."""

    def other(code: int, data: bytes) -> object:
        if strict:
            raise ValueError(f"unknown msgpack extension type {code}")
        return msgpack.ExtType(code, data)

    def deepest(code: int, data: bytes) -> object:
        if code == SNAPSHOT:
            raise ValueError(f"snapshots nested more than {MAX_SNAPSHOT_DEPTH} deep")
        return other(code, data)

    def above(inner: Callable[[int, bytes], object]) -> Callable[[int, bytes], object]:
        def hook(code: int, data: bytes) -> object:
            if code == SNAPSHOT:
                return msgpack.unpackb(data, strict_map_key=False, use_list=False,
                                       ext_hook=inner)
            return other(code, data)
        return hook

    # Built from the deepest level up: each hook holds the next, so no depth is counted.
    hook: Callable[[int, bytes], object] = deepest
    for _ in range(MAX_SNAPSHOT_DEPTH):
        hook = above(hook)
    return hook


_ext = _snapshot_hook(strict=True)  # records from the wire
_stored_ext = _snapshot_hook(strict=False)  # rows as stores hold them


def record_unpacker(source: object = None, max_buffer_size: int = 0) -> msgpack.Unpacker:
    """An unpacker of records as the recorder sends them (a DATA body, a spool file).

    Arrays come back as tuples: tuple dict keys, which msgpack packs as arrays, must stay
    hashable. JSON and the merge treat tuples as lists. Snapshots are unpacked in place, at
    most ``MAX_SNAPSHOT_DEPTH`` inside one another; other extension types raise ValueError.
    With ``max_buffer_size``, no string, array or map can claim more than that.
    """
    return msgpack.Unpacker(source, strict_map_key=False, use_list=False, ext_hook=_ext,
                            max_buffer_size=max_buffer_size)


def unpack_record(data: bytes | memoryview) -> object:
    """One record from exactly its bytes (see ``frame_records``), as ``record_unpacker`` would
    give it; raises ValueError (or another msgpack error) if they are not one."""
    return msgpack.unpackb(data, strict_map_key=False, use_list=False, ext_hook=_ext)


def frame_records(body: bytes, start: int = 0) -> tuple[list[tuple[int, int]], int]:
    """Where the records of ``body[start:]`` begin and end, found without decoding them, so
    that one record that cannot be decoded (a string that is not UTF-8, an extension type we
    refuse) costs no other. Returns the ``(start, end)`` offsets and the offset where framing
    stopped: ``len(body)``, or the start of bytes that are not msgpack or are cut short."""
    skipper = msgpack.Unpacker(max_buffer_size=max(len(body) - start, 1))
    skipper.feed(memoryview(body)[start:])
    frames = []
    pos = 0
    while pos < len(body) - start:
        try:
            skipper.skip()
        except Exception:  # truncated, not msgpack, nested beyond msgpack's stack
            break
        end = skipper.tell()
        frames.append((start + pos, start + end))
        pos = end
    return frames, start + pos


def unpack_stored(data: bytes | str) -> object:
    """A row as a store holds it (the ``data`` column): msgpack, or JSON text in stores written
    before msgpack (both are read; only msgpack is written). Arrays come back as tuples, as from
    ``record_unpacker``, snapshots unpacked; an extension value of another type comes back as
    it is, an ``ExtType`` (stores written before records were checked may hold one)."""
    if isinstance(data, str):
        return json.loads(data)
    return msgpack.unpackb(data, strict_map_key=False, use_list=False, ext_hook=_stored_ext)


def unpack_reply(msg: bytes) -> tuple[int, object, object, int]:
    """Decode an aggregator reply into (kind, token, payload, first_seq); raises ValueError if
    it is not one."""
    try:
        obj = msgpack.unpackb(msg, strict_map_key=False)
    except Exception as exc:
        raise ValueError(f"undecodable reply: {exc}") from None
    if not isinstance(obj, list) or len(obj) != 5 or obj[0] != VERSION:
        raise ValueError("not a reply of this wire version")
    return obj[1], obj[2], obj[3], obj[4]


class VersionMismatch(ValueError):
    """A header of another wire version than ours."""


# A header is a few dozen bytes (a sender's counters make it a few hundred): anything much
# larger is not one, and is not decoded.
MAX_HEADER_BYTES = 64 * 1024
MAX_HOST_LEN = 255
_PID_LIMIT = 1 << 31  # pids are positive C ints
_U64 = 1 << 64  # gen and seq are unsigned 64-bit at most


def unpack_header(frame: bytes) -> tuple[object, str, int, int, int, Any]:
    """Decode a message's header frame (``header``) into ``(kind, host, pid, gen, seq, arg)``.

    Raises ValueError for anything that is not a header of this wire version: too large,
    undecodable, of the wrong shape, or with a malformed sender (a host name over 255
    characters, a pid that is not a positive int, a gen or seq outside 0..2**64-1);
    VersionMismatch (a ValueError) for a header of another version. ``kind`` and ``arg`` are
    returned as they came: their meaning is the receiver's to check.
    """
    if len(frame) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(frame)} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = msgpack.unpackb(frame)
    except Exception as exc:
        raise ValueError(f"undecodable header: {exc!r:.200}") from None
    if not isinstance(header, list) or len(header) != 7:
        raise ValueError("not a header: expected an array of 7")
    version, kind, host, pid, gen, seq, arg = header
    if version != VERSION:
        raise VersionMismatch(f"wire version {version!r:.50}, not {VERSION}")
    if not (type(host) is str and len(host) <= MAX_HOST_LEN and type(pid) is int
            and 0 < pid < _PID_LIMIT and type(gen) is int and 0 <= gen < _U64
            and type(seq) is int and 0 <= seq < _U64):
        raise ValueError("malformed sender or sequence number in header")
    return kind, host, pid, gen, seq, arg
