"""Which span is current (per thread and per asyncio task) and the process-wide tracing state."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

# The current span. A ContextVar, so each thread and each asyncio task sees its own, and a task
# created inside a span starts with that span as its parent.
current: ContextVar[Any] = ContextVar("tracer_current_span", default=None)


class State:
    """Process-wide tracing state. ``active`` stays False until something can record, which keeps
    ``@traced`` at one attribute check when tracing is off."""

    __slots__ = ("active", "logger", "experiment", "parent_object", "app_url")

    def __init__(self) -> None:
        self.active = False
        self.logger: Any = None  # the current Logger, or None
        self.experiment: Any = None  # the current Experiment, or None
        # Where a span started outside any span goes: the current experiment, else the current
        # logger (the reference's precedence). One attribute, read by every @traced call.
        self.parent_object: Any = None
        self.app_url = ""


state = State()
