"""Containers: where rows belong. ``Logger`` is a project's logs; ``Experiment``
(tracer/experiment.py) is the other kind. Both are a ``SpanContainer``."""

from __future__ import annotations

from typing import Any

from . import event, wire
from .recorder import Recorder
from .serialize import pack
from .span import Span, check_start, parent_ref, resolve_parents, start_root, start_under


class SpanContainer:
    """What logs and experiments share: starting root spans in them, logging and updating
    rows, flushing. Rows of two containers never mix: each row is keyed by its container."""

    def __init__(self, project: str, container: str, recorder: Recorder) -> None:
        self.project = project
        self.container = container  # the wire's container key (see tracer.wire)
        self.recorder = recorder

    def start_span(self, name: str | None = None, type: str | None = None,
                   parent: str | None = None, event: dict | None = None,
                   parents: list | None = None, set_current: bool | None = None,
                   **event_fields: Any) -> Span:
        """Start a root span here (or, with ``parent=``, a child of an exported span; with
        ``parents=[...]``, a child of several spans of one trace: see ``tracer.start_span``).

        Use it as a context manager, or call ``span.end()`` yourself. ``set_current=False``:
        the span never becomes the current span.
        """
        where = f"{type_name(self)}.start_span"
        fields, row_id = check_start(name, type, event, event_fields, where)
        if parents is not None:
            if parent is not None:
                raise TypeError(f"{where}: give parent= or parents=, not both")
            resolved = resolve_parents(parents, where)
            span = start_under(resolved, resolved.recorder or self.recorder, name, type, fields,
                               row_id)
        else:
            span = start_root(self.recorder, self.container, name, type, fields, row_id,
                              parent_ref(parent))
        return span.never_current() if set_current is False else span

    def log(self, **fields: Any) -> str:
        """Log a one-span trace in one call (``input=``, ``output=``, ``expected=``,
        ``scores=``, ``metadata=``, ``metrics=``, ``tags=``, ``error=``, and ``id=`` to choose
        the row id); returns its row id."""
        event_fields, row_id = check_start(None, None, None, fields, f"{type_name(self)}.log")
        span = start_root(self.recorder, self.container, None, None, event_fields, row_id)
        span.end()
        return span.id

    def update_span(self, id: str, **fields: Any) -> None:
        """Merge ``fields`` into the row with this id (e.g. ``span.id`` from earlier).

        Make sure the span itself was logged first, or the two writes may interleave.
        """
        where = f"{type_name(self)}.update_span"
        if not isinstance(id, str) or not id:
            raise TypeError(f"{where}: id must be a non-empty string (a span's .id)")
        event.check(fields, where)
        self.recorder.add_packed(pack(wire.update(self.container, id, fields)))

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until everything this process logged so far is committed to the store."""
        self.recorder.sync(wire.COMMITTED, timeout)


class Logger(SpanContainer):
    """A project's logs. Get one from ``init_logger``; it sends to the aggregator of its store."""

    def __repr__(self) -> str:
        return f"<Logger project={self.project!r} endpoint={self.recorder.endpoint!r}>"


def type_name(obj: object) -> str:
    return type(obj).__name__
