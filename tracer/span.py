"""Spans: what the user holds. A span only describes itself; the aggregator builds the row."""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, NamedTuple

from . import event, slug, wire
from .context import current, state
from .ids import new_id, new_trace_id
from .recorder import Recorder
from .serialize import StandIns, immutable, pack, snapshot


class Span:
    """A unit of work in a trace. Create spans with ``start_span``, ``Span.start_span`` or
    ``@traced``; do not instantiate this class directly.

    Attributes: ``id`` (the row id), ``span_id``, ``root_span_id``, ``span_parents``, ``name``,
    ``type``, ``start`` and ``end_time`` (epoch seconds; ``end_time`` is None while running).
    Internally a span is named by 64-bit integers (``trace_int``, ``span_int``, ``root_int``;
    ``parents`` holds ``span_int``s), which the aggregator formats into the string ids.
    """

    # ``_logged_end`` is left unset by __init__ (spans are made on @traced's hot path): only
    # ``log(metrics={"end": ...})`` sets it, and ``end()`` reads it with a default.
    __slots__ = ("_rec", "container", "trace_int", "span_int", "parents", "root_int", "row_id",
                 "name", "type", "start", "end_time", "_input", "_token", "_logged_end")

    def __init__(self, rec: Recorder, container: str, trace: int, span: int, parents: Any,
                 root: int, name: str | None, type: str | None, start: float) -> None:
        self._rec = rec
        self.container = container
        self.trace_int = trace
        self.span_int = span
        self.parents = parents  # None (root), an int, or a tuple of ints (several parents)
        self.root_int = root
        self.row_id: str | None = None
        self.name = name
        self.type = type
        self.start = start
        self.end_time: float | None = None
        self._input: Any = None  # [names, packed input] (see wire.py), sent with the span
        self._token: Any = None

    # -- identity ---------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The row id: pass it to ``Logger.update_span(id=...)``."""
        return self.row_id or wire.format_id(self.trace_int, self.span_int)

    @property
    def span_id(self) -> str:
        return wire.format_id(self.trace_int, self.span_int)

    @property
    def root_span_id(self) -> str:
        return wire.format_id(self.trace_int, self.root_int)

    @property
    def span_parents(self) -> list[str]:
        parents = self.parents
        if parents is None:
            return []
        if isinstance(parents, int):
            parents = [parents]
        return [wire.format_id(self.trace_int, p) for p in parents]

    def export(self) -> str:
        """An opaque string that another process (or thread) can pass as ``parent=`` to continue
        this trace, or as ``exported=`` to ``update_span``."""
        return slug.encode(self.container, self.trace_int, self.span_int, self.root_int,
                           self.row_id)

    def permalink(self, org_name: str | None = None, app_url: str | None = None) -> str:
        """A link to this span in the trace viewer (base URL: ``app_url``, default
        ``TRACER_APP_URL``). ``org_name`` is accepted for the reference's signature: a
        self-hosted viewer has no organisations."""
        del org_name
        return make_permalink(self.container, self.trace_int, self.span_int, self.root_int,
                              app_url)

    def link(self) -> str:
        """The same as ``permalink()`` (the reference's name for it)."""
        return self.permalink()

    # -- recording --------------------------------------------------------------------------

    def log(self, **fields: Any) -> None:
        """Merge fields into this span's row: ``input``, ``output``, ``expected``, ``error``,
        ``scores``, ``metadata``, ``metrics``, ``tags``. Dicts merge recursively; other values
        replace what was there. Values are snapshotted now.

        ``scores`` maps names to numbers in [0, 1] (None clears a score). ``metrics["start"]``
        and ``metrics["end"]`` (epoch seconds) replace the times the span was started and
        ended with: spans imported from elsewhere keep their own times.
        """
        event.check(fields, "Span.log")
        if fields.get("metrics"):
            self._take_times(fields["metrics"])
        self._record_log(fields)

    def _take_times(self, metrics: dict) -> None:
        # The span's own start and end are sent when it ends, after any log: without this
        # they would replace the logged ones in the merge.
        start, end = metrics.get("start"), metrics.get("end")
        if start is not None:
            self.start = start
        if end is not None and self.end_time is None:
            self._logged_end = end

    def _record_log(self, fields: dict, stand_ins: StandIns | None = None) -> None:
        if fields:
            self._rec.add_packed(pack(wire.span_log(self.container, self.trace_int,
                                                    self.span_int, self.parents, self.root_int,
                                                    self.row_id, fields), stand_ins))

    def set_attributes(self, name: str | None = None, type: str | None = None) -> None:
        """Change the span's name or type."""
        event.check_name(name, "Span.set_attributes")
        event.check_type(type, "Span.set_attributes")
        if name is not None:
            self.name = name
        if type is not None:
            self.type = type
        if self.end_time is not None:  # already sent: send the change as a merge
            self._rec.add_packed(pack(wire.span_end(self.container, self.trace_int, self.span_int,
                                             self.parents, self.root_int, self.row_id, self.name,
                                             self.type, self.start, self.end_time, None, None)))

    def start_span(self, name: str | None = None, type: str | None = None,
                   parent: str | None = None, set_current: bool | None = None,
                   **event_fields: Any) -> Span:
        """Start a child of this span, or of the span exported as ``parent`` (a slug from
        ``Span.export()``) if given; see ``tracer.start_span``."""
        fields, row_id = check_start(name, type, event_fields.pop("event", None), event_fields,
                                     "Span.start_span")
        ref = parent_ref(parent)
        if ref is not None:
            span = start_root(self._rec, ref.container, name, type, fields, row_id, ref)
        else:
            span = start_child(self, name, type, fields, row_id)
        return span.never_current() if set_current is False else span

    # -- being the current span ---------------------------------------------------------------

    def set_current(self) -> None:
        """Make this span the current one (``current_span()``, the parent of spans started
        without one) in this thread or task, until ``unset_current()`` or the end of a ``with``
        block on it. Does nothing for a span started with ``set_current=False``."""
        if self._token is _NEVER_CURRENT or current.get() is self:
            return
        self._token = current.set(self)

    def unset_current(self) -> None:
        """Undo ``set_current()``: the span current before it is current again."""
        token, self._token = self._token, None
        if token is None or token is _NEVER_CURRENT:
            self._token = token
            return
        try:
            current.reset(token)
        except ValueError:  # set in another context than this one: nothing to restore here
            if current.get() is self:
                current.set(None)

    def never_current(self) -> Span:
        """Mark this span as one that never becomes current (``set_current=False``)."""
        self._token = _NEVER_CURRENT
        return self

    def end(self, end_time: float | None = None) -> float:
        """End the span (idempotent); returns the end time in epoch seconds."""
        if self.end_time is not None:
            return self.end_time
        if end_time is None:
            end_time = getattr(self, "_logged_end", None)
        end = time.time() if end_time is None else float(end_time)
        self.end_time = end
        self._rec.open_spans.discard(self)
        # Nothing here can change later: packed on the flusher's thread. wire.span_end, inlined.
        self._rec.add((wire.SPAN_END, self.container, self.trace_int, self.span_int, self.parents,
                       self.root_int, self.row_id, self.name, self.type, self.start, end, None,
                       None))
        return end

    close = end

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until everything this process recorded so far is committed to the store."""
        self._rec.sync(wire.COMMITTED, timeout)

    def open_record(self) -> bytes:
        """The announcement of a span still running (sent by the recorder's flusher)."""
        return pack(wire.span_open(self.container, self.trace_int, self.span_int, self.parents,
                                   self.root_int, self.row_id, self.name, self.type, self.start,
                                   None, self._input))

    # -- context manager: current span inside the block, error logged, ended at exit -------

    def __enter__(self) -> Span:
        if self._token is not _NEVER_CURRENT:
            self._token = current.set(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self._record_log({"error": error_of(exc)})
        self.unset_current()
        self.end()

    def __repr__(self) -> str:
        return f"<Span {self.name!r} span_id={self.span_id}>"


class NoopSpan:
    """The span you get when nothing is being traced: every method does nothing."""

    id = span_id = root_span_id = name = ""
    span_parents: list[str] = []
    type = None

    def log(self, **fields: Any) -> None:
        event.check(fields, "Span.log")

    def set_attributes(self, name: str | None = None, type: str | None = None) -> None:
        pass

    def start_span(self, name: str | None = None, type: str | None = None,
                   parent: str | None = None, set_current: bool | None = None,
                   **event_fields: Any) -> NoopSpan:
        return self

    def set_current(self) -> None:
        pass

    def unset_current(self) -> None:
        pass

    def end(self, end_time: float | None = None) -> float:
        return time.time() if end_time is None else float(end_time)

    close = end

    def export(self) -> str:
        return ""

    def permalink(self, org_name: str | None = None, app_url: str | None = None) -> str:
        """The reference's link for a span that was never recorded: ``<app url>/noop-span``."""
        return noop_permalink(app_url)

    def link(self) -> str:
        return noop_permalink()

    def flush(self, timeout: float | None = 30.0) -> None:
        pass

    def __enter__(self) -> NoopSpan:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<NoopSpan>"


NOOP_SPAN = NoopSpan()

# ``Span._token`` of a span started with ``set_current=False``: it never becomes current.
_NEVER_CURRENT = object()


def noop_permalink(app_url: str | None = None) -> str:
    return f"{(app_url or state.app_url).rstrip('/')}/noop-span"


class RemoteSpan(Span):
    """A span that lives in another process, made current in a worker so that the worker's
    spans nest under it. Logging to it merges into its row by id (never touching the row's
    structure); ending it is left to its owner."""

    __slots__ = ()

    def __init__(self, rec: Recorder, ref: slug.SpanRef) -> None:
        super().__init__(rec, ref.container, ref.trace, ref.span, None, ref.root, None, None,
                         0.0)
        self.row_id = ref.row_id

    def _record_log(self, fields: dict, stand_ins: StandIns | None = None) -> None:
        if fields:
            self._rec.add_packed(pack(wire.update(self.container, self.id, fields), stand_ins))

    def set_attributes(self, name: str | None = None, type: str | None = None) -> None:
        event.check_name(name, "Span.set_attributes")
        event.check_type(type, "Span.set_attributes")
        attributes = {k: v for k, v in (("name", name), ("type", type)) if v is not None}
        if attributes:
            self._rec.add_packed(pack(wire.update(self.container, self.id,
                                           {"span_attributes": attributes})))

    def end(self, end_time: float | None = None) -> float:
        return time.time() if end_time is None else float(end_time)

    close = end

    def __repr__(self) -> str:
        return f"<RemoteSpan span_id={self.span_id}>"


def check_start(name: str | None, type: str | None, event_dict: dict | None,
                event_fields: dict, where: str) -> tuple[dict, str | None]:
    """Validate what starting a span takes; returns the event to log and the chosen row id.

    ``event`` and keyword arguments both give fields to log at start; ``id`` picks the row id.
    """
    event.check_name(name, where)
    event.check_type(type, where)
    fields = dict(event_dict or {})
    fields.update(event_fields)
    row_id = fields.pop("id", None)
    if row_id is not None and (not isinstance(row_id, str) or not row_id):
        raise TypeError(f"{where}: id must be a non-empty string")
    return event.check(fields, where), row_id


def parent_ref(parent: object) -> slug.SpanRef | None:
    """The span an exported slug names; None for no parent (None or "")."""
    if parent is None or parent == "":
        return None
    return slug.decode(parent)


class Parents(NamedTuple):
    """Several parents of one span, resolved: they are all spans of one trace."""

    container: str
    trace: int
    spans: tuple[int, ...]
    root: int
    recorder: Recorder | None  # the recorder of the first parent that is a live Span


def resolve_parents(parents: object, where: str) -> Parents:
    """Check ``parents=`` (Spans or slugs from ``Span.export()``) and resolve it.

    Ids inside a trace are 64-bit halves of one 128-bit id (``trace:span``), so a span's
    parents must all be spans of its own trace: parents in other traces (or containers) raise
    ValueError. The new span takes the first parent's root.
    """
    if not isinstance(parents, (list, tuple)):
        raise TypeError(f"{where}: parents must be a list of spans or exported slugs, got "
                        f"{type(parents).__name__}")
    if not parents:
        raise ValueError(f"{where}: parents is empty; give at least one span or slug")
    refs = []
    recorder = None
    for parent in parents:
        if isinstance(parent, Span):
            refs.append((parent.container, parent.trace_int, parent.span_int, parent.root_int))
            recorder = recorder or parent._rec
        elif isinstance(parent, str):
            ref = slug.decode(parent)
            refs.append((ref.container, ref.trace, ref.span, ref.root))
        else:
            raise TypeError(f"{where}: parents must be spans or slugs from Span.export(), got "
                            f"{type(parent).__name__}")
    container, trace, _, root = refs[0]
    for other_container, other_trace, _, _ in refs[1:]:
        if other_container != container or other_trace != trace:
            raise ValueError(f"{where}: parents must all be spans of one trace (in one "
                             "container); a span cannot join two traces")
    spans = tuple(dict.fromkeys(ref[2] for ref in refs))  # in order, each once
    return Parents(container, trace, spans, root, recorder)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_name() -> str:
    """The name of an unnamed child span, as the reference makes it: where it was started,
    ``"<function>:<file>:<line>"`` of the first frame outside this package."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "subspan"
    code = frame.f_code
    return f"{code.co_name}:{os.path.basename(code.co_filename)}:{frame.f_lineno}"


def root_type(container: str) -> str:
    """The type of a root span started without one: ``"eval"`` in an experiment, ``"task"``
    in a project's logs (the reference's defaults)."""
    return "eval" if container.startswith(wire.EXPERIMENT) else "task"


def start_under(parents: Parents, rec: Recorder, name: str | None, type: str | None,
                fields: dict, row_id: str | None) -> Span:
    """A new span whose parents are ``parents`` (see ``resolve_parents``), sent by ``rec``."""
    if name is None:
        name = caller_name()
    span_parents = parents.spans[0] if len(parents.spans) == 1 else parents.spans
    span = Span(rec, parents.container, parents.trace, new_id(), span_parents, parents.root,
                name, type, time.time())
    return _begin(span, fields, row_id)


def start_child(parent: Span, name: str | None, type: str | None, fields: dict,
                row_id: str | None) -> Span:
    """A new span under ``parent``, with ``fields`` (checked) logged at start."""
    if name is None:
        name = caller_name()
    span = Span(parent._rec, parent.container, parent.trace_int, new_id(), parent.span_int,
                parent.root_int, name, type, time.time())
    return _begin(span, fields, row_id)


def start_root(rec: Recorder, container: str, name: str | None, type: str | None,
               fields: dict, row_id: str | None,
               parent_ref: slug.SpanRef | None = None) -> Span:
    """A new span in ``container``: a root (named ``"root"`` and typed ``root_type`` unless
    given), or the child of a span exported elsewhere."""
    if parent_ref is None:
        name = "root" if name is None else name
        type = type or root_type(container)
        sid, now = new_id(), time.time()
        span = Span(rec, container, new_trace_id(now), sid, None, sid, name, type, now)
    else:
        span = Span(rec, parent_ref.container, parent_ref.trace, new_id(), parent_ref.span,
                    parent_ref.root, caller_name() if name is None else name, type, time.time())
    return _begin(span, fields, row_id)


def _begin(span: Span, fields: dict, row_id: str | None) -> Span:
    state.active = True
    span.row_id = row_id
    if fields.get("metrics"):
        span._take_times(fields["metrics"])
    stand_ins = None
    if "input" in fields:  # also kept for the announcement of a long-running span
        value = fields["input"]
        # The log record carries that snapshot too, so the input is packed once, and both share
        # their stand-ins: an object in the input and another field is described once.
        stand_ins = None if immutable((value,)) else StandIns()
        span._input = (None, snapshot(value, stand_ins))
        fields["input"] = span._input[1]  # ``fields`` is check_start's own dict
    span._rec.open_spans.add(span)
    span._record_log(fields, stand_ins)
    return span


def error_of(exc: BaseException, full_traceback: str | None = None) -> str:
    """How an exception is logged in ``error``: as the reference writes it, the exception's
    last line (``"ValueError: boom\n"``), a blank line, then the traceback: the exception's
    own, or ``full_traceback`` (as ``traceback.format_exc`` gives it; Celery's is taken before
    the frames are cleared)."""
    if full_traceback is None:
        full_traceback = "Traceback (most recent call last):\n" + "".join(
            traceback.format_tb(exc.__traceback__))
    return "".join(traceback.format_exception_only(type(exc), exc)) + "\n" + full_traceback


def make_permalink(container: str, trace: int, span: int, root: int,
                   app_url: str | None = None) -> str:
    from urllib.parse import quote

    base = app_url.rstrip("/") if app_url else state.app_url
    parts = wire.split_container(container)
    query = f"r={wire.format_id(trace, root)}&s={wire.format_id(trace, span)}"
    project = quote(parts[1], safe="")
    if parts[0] == wire.PROJECT_LOGS:
        return f"{base}/p/{project}/logs?{query}"
    return f"{base}/p/{project}/experiments/{quote(parts[3], safe='')}?{query}"
