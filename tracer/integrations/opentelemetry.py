"""OpenTelemetry in the same process: spans made by OpenTelemetry instrumentation become rows of
our traces, and the two kinds of spans nest inside each other.

    import tracer
    from tracer.integrations import opentelemetry as tracer_otel

    tracer.init_logger("shop")
    tracer_otel.setup()         # once: OpenTelemetry's spans now go where tracer's go

``setup()`` adds a ``TracerSpanProcessor`` to the global ``TracerProvider`` (making an SDK one
if none was set) and gives OpenTelemetry's context a view of ours:

- A finished OpenTelemetry span goes through this process's recorder and aggregator, as a span
  of ours does: the processor hands the recorder the finished span as it is (one small object),
  and the recorder's flusher thread makes its record (``tracer.otel_mapping``: name, type,
  input, output, error, metadata, metrics). Its ids are OpenTelemetry's, read the way
  docs/interop.md says (``tracer.w3c``); its container is that of the span current where it
  started, else the current logger's (a process with no logger records none: counted as
  ``untraced``).
- An OpenTelemetry span started inside a span of ours has it as its parent: while one of our
  spans is the innermost current span, OpenTelemetry sees a ``NonRecordingSpan`` carrying its
  W3C ids (and its slug in ``tracestate``, so that an instrumented HTTP client downstream sends
  the container along).
- A span of ours started inside an OpenTelemetry span (``start_as_current_span``, or any
  instrumentation that makes its span current) is its child: attaching an OpenTelemetry span
  also makes a stand-in for it our current span (``tracer.current_span()`` inside it logs to
  its row).

Our own spans cost what they did: the view is in OpenTelemetry's context functions, which we
wrap (``opentelemetry.context``'s runtime context), never in ``@traced`` or ``start_span``.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import opentelemetry.context as otel_context
from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation import _SPAN_KEY

from .. import api, otel_mapping, serialize, w3c, wire
from ..context import current
from ..recorder import FlushError, Recorder
from ..span import RemoteSpan, Span

# Spans started and not yet ended whose container was noted at their start: beyond this many
# (spans that never end), a span's container is looked up when it ends instead.
MAX_OPEN = 65536
_TRACESTATE_KEY = "tracer"
_MAX_TRACESTATE_VALUE = 256


# -- OpenTelemetry's spans as our rows ----------------------------------------------------------


class _Finished:
    """A finished OpenTelemetry span handed to the recorder as it is; its record is made on the
    flusher's thread (``_record``). An SDK span cannot change once ended."""

    __slots__ = ("span", "container", "recorder")

    def __init__(self, span: ReadableSpan, container: str, recorder: Recorder) -> None:
        self.span = span
        self.container = container
        self.recorder = recorder


def _record(finished: _Finished) -> tuple | bytes:
    """The SPAN_END record of a finished OpenTelemetry span (see ``tracer.otel_mapping``)."""
    try:
        return _span_end(finished)
    except Exception:
        pass
    try:  # the mapping failed on something odd: the span's ids, name and times at least
        return _span_end(finished, mapped=False)
    except Exception:
        # No record at all. Counted where this sender's losses are (on the flusher's thread,
        # the only one that writes them): the aggregator's counters, `tracer stats`.
        finished.recorder.counters["lost_unreadable_otel_span"] += 1
        return b""


def _span_end(finished: _Finished, mapped: bool = True) -> tuple:
    span, container = finished.span, finished.container
    context = span.context
    trace_id, span_id = context.trace_id, context.span_id
    trace_int, span_int, root = w3c.from_w3c(trace_id, span_id)
    parent = span.parent
    parents = parent.span_id if parent is not None and parent.is_valid else None
    start = otel_mapping.seconds(span.start_time)
    end = otel_mapping.seconds(span.end_time) if span.end_time is not None else start
    if not mapped:
        return (wire.SPAN_END, container, trace_int, span_int, parents, root, None,
                str(span.name), otel_mapping.default_type(span.kind, parents is not None),
                start, end, {"metadata": {"otel": {"error": "the span could not be mapped"}}},
                None)
    status = span.status
    attributes = span.attributes
    events = span.events
    links = span.links
    result = otel_mapping.map_span(
        name=span.name, kind=span.kind, trace_id=trace_id, span_id=span_id,
        parent_span_id=parents,
        # A plain copy (BoundedAttributes.copy), much cheaper to walk than the mapping.
        attributes=attributes.copy() if hasattr(attributes, "copy") else attributes or {},
        status_code=status.status_code, status_message=status.description or "",
        trace_state=context.trace_state.to_header() if context.trace_state else "",
        events=[otel_mapping.Event(e.name, otel_mapping.seconds(e.timestamp), e.attributes or {})
                for e in events] if events else (),
        links=[otel_mapping.Link(link.context.trace_id, link.context.span_id,
                                 link.attributes or {}) for link in links] if links else (),
        dropped={"attributes": span.dropped_attributes, "events": span.dropped_events,
                 "links": span.dropped_links})
    otel = result.fields["metadata"]["otel"]
    _add_shared(otel, span.resource, span.instrumentation_scope)
    if result.project is not None:
        container = wire.logs_container(result.project)
    span_type = result.type or otel_mapping.default_type(span.kind, parents is not None)
    return (wire.SPAN_END, container, trace_int, span_int, parents, root, None, result.name,
            span_type, start, end, result.fields, None)


# What every span of a resource (or instrumentation scope) shares, mapped once: the resource's
# attributes packed once (a snapshot, unpacked in place by the aggregator), and the number of
# them dropped; the scope's dict. Keyed by id, the object held so that its id stays its own.
_resources: dict[int, tuple[Any, Any, int]] = {}
_scopes: dict[int, tuple[Any, dict | None]] = {}
_MAX_SHARED = 256


def _add_shared(otel: dict, resource: Any, scope: Any) -> None:
    """Put a span's resource and scope under its ``metadata.otel``, as ``map_span`` would."""
    if resource is not None:
        known = _resources.get(id(resource))
        if known is None or known[0] is not resource:
            plain, dropped = otel_mapping.plain_attributes(resource.attributes)
            packed = serialize.snapshot(otel_mapping.bounded(plain)) if plain else None
            if len(_resources) >= _MAX_SHARED:
                _resources.clear()
            known = _resources[id(resource)] = (resource, packed, dropped)
        if known[1] is not None:
            otel["resource"] = known[1]
        if known[2]:
            otel.setdefault("dropped", {})["resource_attributes"] = known[2]
    if scope is not None:
        shared = _scopes.get(id(scope))
        if shared is None or shared[0] is not scope:
            mapped = ({"name": scope.name, **({"version": scope.version} if scope.version
                                              else {})} if scope.name else None)
            if len(_scopes) >= _MAX_SHARED:
                _scopes.clear()
            shared = _scopes[id(scope)] = (scope, mapped)
        if shared[1] is not None:
            otel["scope"] = dict(shared[1])


serialize.register_late_record(_Finished, _record)


def _home() -> tuple[str, Recorder] | None:
    """Where a span starting or ending here goes: the current span's container (and recorder),
    else the current experiment's or logger's; None when nothing is traced."""
    cur = current.get()
    if cur is not None:
        return cur.container, cur._rec
    target = api._parent_object()
    if target is None:
        return None
    return target.container, target.recorder


class TracerSpanProcessor(SpanProcessor):
    """Hands OpenTelemetry's finished spans to this process's recorder (``setup()`` adds one to
    the global TracerProvider). On the caller's thread: a dict entry at start, and at end one
    object appended to the recorder's buffer; the mapping to a record is the flusher's work.
    ``counts["untraced"]``: spans ended where nothing is traced (no logger), not recorded."""

    def __init__(self) -> None:
        self._homes: dict[int, tuple[str, Recorder]] = {}
        self.counts: Counter = Counter()

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        homes = self._homes
        if len(homes) < MAX_OPEN:
            home = _home()
            if home is not None:
                homes[span.context.span_id] = home

    def on_end(self, span: ReadableSpan) -> None:
        home = self._homes.pop(span.context.span_id, None) or _home()
        if home is None:
            self.counts["untraced"] += 1
            return
        home[1].add(_Finished(span, home[0], home[1]))

    def shutdown(self) -> None:
        """Nothing to do: tracer delivers what its recorders hold when the process exits (the
        provider's own exit handler calls this too, in an order we do not choose)."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every span recorded so far is committed (``tracer.flush``)."""
        try:
            api.flush(timeout_millis / 1000)
        except FlushError:
            return False
        return True


# -- the two contexts as one --------------------------------------------------------------------


class _StandIn(NonRecordingSpan):
    """What OpenTelemetry sees as the current span while one of ours is innermost."""

    def __init__(self, context: SpanContext, ours: Span) -> None:
        super().__init__(context)
        self.ours = ours


class _OTelParent(RemoteSpan):
    """What we see as the current span while an OpenTelemetry span is innermost: spans of ours
    started inside are its children; what is logged to it is merged into its row. Made by
    ``_parent_for`` (one per OpenTelemetry span made current: kept cheap)."""

    __slots__ = ("otel_span",)
    otel_span: Any

    def __repr__(self) -> str:
        return f"<OpenTelemetry span span_id={self.span_id}>"


def _stand_in(ours: Span) -> _StandIn:
    trace_id, span_id = w3c.to_w3c(ours.trace_int, ours.span_int, ours.root_int)
    exported = ours.export()
    state = (TraceState([(_TRACESTATE_KEY, exported)])
             if len(exported) <= _MAX_TRACESTATE_VALUE else TraceState())
    return _StandIn(SpanContext(trace_id, span_id, is_remote=False,
                                trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=state),
                    ours)


def _parent_for(otel_span: Any, cur: Any) -> _OTelParent | None:
    """Our stand-in for an OpenTelemetry span made current, in the container of the span
    current before it (else the current logger's); None when nothing is traced here."""
    if cur is not None:
        container, rec = cur.container, cur._rec
    else:
        target = api._parent_object()
        if target is None:
            return None
        container, rec = target.container, target.recorder
    context = otel_span.get_span_context()
    trace_id, span_id = context.trace_id, context.span_id
    trace_int, root = trace_id >> 64, trace_id & w3c.MASK
    if not (trace_int and root and span_id):  # invalid, or a 64-bit trace id: none of ours
        return None
    # RemoteSpan's fields, set here rather than through its __init__ (and Span's).
    parent = _OTelParent.__new__(_OTelParent)
    parent._rec, parent.container, parent.trace_int, parent.span_int = (rec, container,
                                                                        trace_int, span_id)
    parent.parents, parent.root_int, parent.row_id, parent.name, parent.type = (None, root,
                                                                              None, None, None)
    parent.start, parent.end_time, parent._input, parent._token = 0.0, None, None, None
    parent.otel_span = otel_span
    return parent


class _Token:
    __slots__ = ("inner", "ours")

    def __init__(self, inner: Any, ours: Any) -> None:
        self.inner = inner
        self.ours = ours


class BridgedRuntimeContext(otel_context._RuntimeContext):
    """OpenTelemetry's runtime context, wrapped so that OpenTelemetry and tracer see one stack
    of current spans (see the module's docstring). Tokens of the wrapped context (attached
    before ``setup()``) are still detached correctly."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        # (our span, OpenTelemetry's context) -> the context OpenTelemetry is shown: made once.
        self._shown: dict[tuple[int, int], tuple[Any, Any, Context]] = {}
        self._last: tuple[Any, Any, Any] = (None, None, None)

    def attach(self, context: Context) -> Any:
        token = self._inner.attach(context)
        span = context.get(_SPAN_KEY)
        if span is None or type(span) is _StandIn:
            return _Token(token, None)
        cur = current.get()
        if type(cur) is _OTelParent and cur.otel_span is span:
            return _Token(token, None)  # already ours (a context derived from the same span)
        parent = _parent_for(span, cur)
        return _Token(token, None if parent is None else current.set(parent))

    def get_current(self) -> Context:
        context = self._inner.get_current()
        cur = current.get()
        if cur is None or type(cur) is _OTelParent:
            return context  # OpenTelemetry's own span is innermost (or nothing of ours is)
        last = self._last  # the answer to the last such question: most often this one
        if last[0] is cur and last[1] is context:
            return last[2]
        span = context.get(_SPAN_KEY)
        if type(span) is _StandIn and span.ours is cur:
            return context
        key = (id(cur), id(context))
        shown = self._shown.get(key)
        if shown is None or shown[0] is not cur or shown[1] is not context:
            shown = (cur, context, Context({**context, _SPAN_KEY: _stand_in(cur)}))
            if len(self._shown) >= 1024:
                self._shown.clear()
            self._shown[key] = shown
        self._last = shown
        return shown[2]

    def detach(self, token: Any) -> None:
        if type(token) is not _Token:
            self._inner.detach(token)
            return
        if token.ours is not None:
            try:
                current.reset(token.ours)
            except ValueError:  # attached in another context: nothing of ours to restore here
                pass
        self._inner.detach(token.inner)


# -- setup ----------------------------------------------------------------------------------------

_lock = threading.Lock()
_processor: TracerSpanProcessor | None = None


def setup() -> TracerSpanProcessor:
    """Send OpenTelemetry's spans where tracer's go, and nest each kind in the other (see the
    module's docstring). Adds a ``TracerSpanProcessor`` to the global TracerProvider, first
    setting an SDK ``TracerProvider`` as the global one if none was set; wraps OpenTelemetry's
    runtime context. Idempotent: returns the processor. RuntimeError if the global provider is
    one that takes no span processors (not the SDK's)."""
    global _processor
    with _lock:
        if _processor is not None:
            return _processor
        provider = trace.get_tracer_provider()
        if not hasattr(provider, "add_span_processor"):
            if isinstance(provider, trace.ProxyTracerProvider):
                trace.set_tracer_provider(TracerProvider())
                provider = trace.get_tracer_provider()
            if not hasattr(provider, "add_span_processor"):
                raise RuntimeError(
                    f"tracer.integrations.opentelemetry.setup: the global TracerProvider "
                    f"({type(provider).__name__}) takes no span processors; set an SDK "
                    "TracerProvider (opentelemetry.sdk.trace.TracerProvider) first")
        processor = TracerSpanProcessor()
        provider.add_span_processor(processor)
        if not isinstance(otel_context._RUNTIME_CONTEXT, BridgedRuntimeContext):
            otel_context._RUNTIME_CONTEXT = BridgedRuntimeContext(otel_context._RUNTIME_CONTEXT)
        _processor = processor
        return processor
