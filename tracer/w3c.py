"""Our span ids as W3C trace context ids, and back: the one mapping every interop piece uses.

A row's ``span_id`` is the 128-bit id ``trace:span`` and its ``root_span_id`` is
``trace:root`` (``wire.format_id``), each half a 64-bit int. W3C trace context (and
OpenTelemetry) has a 128-bit trace id and a 64-bit span id, so:

- W3C trace id = the 128 bits of our ``root_span_id``: ``(trace << 64) | root``;
- W3C span id = our ``span``.

Back, ``trace = trace_id >> 64``, ``root = trace_id & MASK`` and ``span = span_id``: our ids
round-trip exactly. A trace begun elsewhere (128 random bits) maps the same way; its first span's
``span_id`` then is not its ``root_span_id`` (the store takes a row with no parents as the root
then). Neither id may be zero in W3C; ours never are (``tracer.ids``).
"""

from __future__ import annotations

import re

from . import wire

MASK = (1 << 64) - 1
#: ``traceparent`` as W3C Trace Context level 1 defines it: version, trace id, parent id, flags.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
MAX_HEADER = 512  # characters of a traceparent looked at: anything longer is not one
SAMPLED = 0x01


def to_w3c(trace: int, span: int, root: int) -> tuple[int, int]:
    """``(trace_id, span_id)`` in W3C terms for our span ``trace:span`` under root ``root``."""
    return (trace << 64) | root, span


def from_w3c(trace_id: int, span_id: int) -> tuple[int, int, int]:
    """``(trace, span, root)``, ours, for the W3C ``trace_id`` and ``span_id``."""
    return trace_id >> 64, span_id, trace_id & MASK


def row_ids(trace_id: int, span_id: int) -> tuple[str, str]:
    """``(span_id, root_span_id)`` as a row carries them, for W3C ids."""
    trace, span, root = from_w3c(trace_id, span_id)
    return wire.format_id(trace, span), wire.format_id(trace, root)


def from_row_ids(span_id: str, root_span_id: str) -> tuple[int, int]:
    """W3C ``(trace_id, span_id)`` for a row's ``span_id`` and ``root_span_id`` (ValueError if
    they are not ours, or not of one trace)."""
    trace, span = wire.parse_id(span_id)
    root_trace, root = wire.parse_id(root_span_id)
    if root_trace != trace:
        raise ValueError(f"span {span_id!r} and root {root_span_id!r} are not of one trace")
    return to_w3c(trace, span, root)


def format_traceparent(trace_id: int, span_id: int, flags: int = SAMPLED) -> str:
    """The ``traceparent`` header value (version 00)."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse_traceparent(value: object) -> tuple[int, int, int] | None:
    """``(trace_id, span_id, flags)`` of a ``traceparent`` value, or None when it is not a valid
    one (never raises: headers come from anyone). Follows the spec: version ``ff`` and all-zero
    ids are invalid; version 00 has nothing after the flags; a later version may have more,
    which is ignored."""
    if not isinstance(value, str) or len(value) > MAX_HEADER:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(flags_hex, 16)
