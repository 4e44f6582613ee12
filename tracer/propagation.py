"""W3C trace context across HTTP (or any) boundaries: ``inject`` into outgoing headers, ``extract``
from incoming ones. No dependencies: the hooks in ``tracer.integrations`` (ASGI, WSGI, httpx,
requests) and any other transport call these two.

On the wire (docs/interop.md):

- ``traceparent: 00-<trace-id>-<span-id>-01``, our ids mapped by ``tracer.w3c`` (the trace id is
  the 128 bits of the span's ``root_span_id``, the span id its own 64-bit id), so that a service
  traced with OpenTelemetry continues the trace, and one of ours continues an OpenTelemetry
  trace;
- ``tracestate: tracer=<slug>``, the span's export slug (``Span.export()``), first and before
  the other vendors' entries, which are kept: it carries the container, so that a service of ours
  continues the trace in the caller's project (or experiment).

``extract`` takes the slug when it names the ``traceparent``'s span; when it names another span
of the same trace (an OpenTelemetry service in between forwarded our ``tracestate`` and put its
own span in ``traceparent``), the ids come from ``traceparent`` and the container from the slug;
with ``traceparent`` alone, the container is the current logger's, else the project
``"default"``. Headers come from anyone: whatever they hold, ``extract`` returns None rather
than raise, and reads a bounded amount of them.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from . import slug, w3c, wire
from .api import current_logger
from .context import current
from .span import NoopSpan, Span

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
KEY = "tracer"  # our tracestate key
# W3C Trace Context: at most 32 list members, values of at most 256 characters; a vendor should
# propagate at least 512 characters of tracestate and may cut what is longer, by whole members.
MAX_MEMBERS = 32
MAX_VALUE = 256
MAX_TRACESTATE = 512
# What extract reads of an incoming tracestate: anything longer is ignored whole (it is not one
# a sender that follows the spec would send, and is not worth splitting).
MAX_INCOMING_TRACESTATE = 8192
DEFAULT_PROJECT = "default"


def inject(headers: MutableMapping[str, Any], span: Span | NoopSpan | None = None) -> None:
    """Write the trace context of ``span`` (default: the current span) into ``headers``:
    ``traceparent``, and our entry in ``tracestate`` (other vendors' entries are kept, ours
    first, within tracestate's 32 entries and 512 characters). With no span (nothing traced),
    writes nothing. ``headers`` is any mutable mapping of header names to values (a dict, httpx's
    or requests' headers); existing ``traceparent``/``tracestate`` entries are replaced.
    """
    if span is None:
        span = current.get()
        if span is None:
            return
    if not isinstance(span, Span):
        if isinstance(span, NoopSpan):  # nothing traced
            return
        raise TypeError(f"inject: span must be a tracer Span, got {type(span).__name__}")
    trace_id, span_id = w3c.to_w3c(span.trace_int, span.span_int, span.root_int)
    _set(headers, TRACEPARENT, w3c.format_traceparent(trace_id, span_id))
    ours = span.export()
    others = _other_members(_get(headers, TRACESTATE))
    members = [f"{KEY}={ours}"] if len(ours) <= MAX_VALUE else []
    members += others
    state = _within_limits(members)
    if state:
        _set(headers, TRACESTATE, state)
    else:
        _delete(headers, TRACESTATE)


def extract(headers: Mapping[str, Any]) -> str | None:
    """What ``start_span(parent=...)`` accepts for the trace context in ``headers`` (an export
    slug), or None when they hold none, or none that is valid. Never raises.

    ``headers``: a mapping of header names to values; names are matched without regard to case
    (``Traceparent`` is ``traceparent``). See the module's docstring for which container the
    slug names.
    """
    try:
        parsed = w3c.parse_traceparent(_get(headers, TRACEPARENT))
        if parsed is None:
            return None
        trace_id, span_id, _flags = parsed
        trace, span, root = w3c.from_w3c(trace_id, span_id)
        if not (trace and span and root):
            return None  # a 64-bit trace id padded with zeros: not an id of ours
        ref = _our_member(_get(headers, TRACESTATE))
        if ref is not None and (ref.trace, ref.root) == (trace, root):
            if ref.span == span:
                return slug.encode(ref.container, trace, span, root, ref.row_id)
            return slug.encode(ref.container, trace, span, root, None)
        return slug.encode(_current_container(), trace, span, root, None)
    except Exception:  # hostile headers or a mapping that fails: no parent, never an error
        return None


def _current_container() -> str:
    logger = current_logger()
    return logger.container if logger is not None else wire.logs_container(DEFAULT_PROJECT)


def _our_member(tracestate: object) -> slug.SpanRef | None:
    """Our slug in an incoming tracestate, decoded; None if absent or not one."""
    if not isinstance(tracestate, str) or len(tracestate) > MAX_INCOMING_TRACESTATE:
        return None
    prefix = KEY + "="
    for member in tracestate.split(",", MAX_MEMBERS):
        member = member.strip(" \t")
        if member.startswith(prefix):
            value = member[len(prefix):]
            if len(value) > MAX_VALUE:
                return None
            try:
                return slug.decode(value)
            except (TypeError, ValueError):
                return None
    return None


def _other_members(tracestate: object) -> list[str]:
    """The other vendors' members of an outgoing request's tracestate, in order, without ours
    and without empty or malformed ones."""
    if not isinstance(tracestate, str) or not tracestate:
        return []
    members = []
    for member in tracestate.split(",", MAX_MEMBERS * 2)[:MAX_MEMBERS * 2]:
        member = member.strip(" \t")
        key, eq, value = member.partition("=")
        if eq and key and value and key != KEY and len(value) <= MAX_VALUE:
            members.append(member)
    return members


def _within_limits(members: list[str]) -> str:
    """``members`` joined, cut to 32 members and 512 characters: members longer than 128
    characters go first, then members from the end, as W3C Trace Context says."""
    members = members[:MAX_MEMBERS]
    joined = ",".join(members)
    if len(joined) <= MAX_TRACESTATE:
        return joined
    ours = members[:1] if members and members[0].startswith(KEY + "=") else []
    rest = [m for m in members[len(ours):] if len(m) <= 128]
    while rest and len(",".join(ours + rest)) > MAX_TRACESTATE:
        rest.pop()
    return ",".join(ours + rest)


def _get(headers: Mapping[str, Any], name: str) -> Any:
    """A header's value by its lowercase name, whatever the case of the mapping's keys (a plain
    dict is case-sensitive; httpx's, requests' and Starlette's headers are not)."""
    value = headers.get(name)
    if value is not None:
        return value
    if isinstance(headers, dict):  # a plain dict: look for other spellings
        for key, value in headers.items():
            if isinstance(key, str) and key.lower() == name:
                return value
    return None


def _set(headers: MutableMapping[str, Any], name: str, value: str) -> None:
    _delete(headers, name)
    headers[name] = value


def _delete(headers: MutableMapping[str, Any], name: str) -> None:
    if isinstance(headers, dict):
        for key in [k for k in headers if isinstance(k, str) and k.lower() == name]:
            del headers[key]
    else:
        headers.pop(name, None)
