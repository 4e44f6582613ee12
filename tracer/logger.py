"""Containers: where rows belong. ``Logger`` is a project's logs; experiments come next."""

from __future__ import annotations

from typing import Any

from . import event, wire
from .recorder import Recorder
from .serialize import pack
from .span import Span, check_start, start_root


class Logger:
    """A project's logs. Get one from ``init_logger``; it sends to the aggregator of its store."""

    def __init__(self, project: str, container: str, recorder: Recorder) -> None:
        self.project = project
        self.container = container
        self.recorder = recorder

    def start_span(self, name: str | None = None, type: str | None = None,
                   parent: str | None = None, event: dict | None = None,
                   **event_fields: Any) -> Span:
        """Start a root span in this logger (or, with ``parent=``, a child of an exported span).

        Use it as a context manager, or call ``span.end()`` yourself.
        """
        from .api import _parent_ref  # api imports this module

        fields, row_id = check_start(name, type, event, event_fields, "Logger.start_span")
        return start_root(self.recorder, self.container, name, type, fields, row_id,
                          _parent_ref(parent))

    def log(self, **fields: Any) -> str:
        """Log a one-span trace in one call; returns its row id."""
        with self.start_span(name="log", **fields) as span:
            return span.id

    def update_span(self, id: str, **fields: Any) -> None:
        """Merge ``fields`` into the row with this id (e.g. ``span.id`` from earlier).

        Make sure the span itself was logged first, or the two writes may interleave.
        """
        if not isinstance(id, str) or not id:
            raise TypeError("Logger.update_span: id must be a non-empty string (a span's .id)")
        event.check(fields, "Logger.update_span")
        self.recorder.add(pack((wire.UPDATE, self.container, id, fields)))

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until everything this process logged so far is committed to the store."""
        self.recorder.sync(wire.COMMITTED, timeout)

    def __repr__(self) -> str:
        return f"<Logger project={self.project!r} endpoint={self.recorder.endpoint!r}>"
