"""Which span is current (per thread and per asyncio task) and the process-wide tracing state."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

# The current span. A ContextVar, so each thread and each asyncio task sees its own, and a task
# created inside a span starts with that span as its parent.
current: ContextVar[Any] = ContextVar("tracer_current_span", default=None)


# Loggers and experiments made current in this task or thread (``init_logger``/``init`` with
# ``set_current``): (logger, experiment), or None where none was. As in the reference, an
# ``init_logger`` inside an asyncio task changes what that task (and tasks it creates) see, not
# what its parent sees; threads start with an empty context and see the process-wide ones.
scoped_parent: ContextVar[Any] = ContextVar("tracer_current_containers", default=None)


class State:
    """Process-wide tracing state. ``active`` stays False until something can record, which keeps
    ``@traced`` at one attribute check when tracing is off."""

    __slots__ = ("active", "logger", "experiment", "parent_object", "app_url", "scoped")

    def __init__(self) -> None:
        self.active = False
        self.logger: Any = None  # the current Logger, or None
        self.experiment: Any = None  # the current Experiment, or None
        # Where a span started outside any span goes: the current experiment, else the current
        # logger (the reference's precedence). One attribute, read by every @traced root span,
        # valid while only one container was ever made current; once a second one is
        # (``scoped``), it stays None and ``current_container`` decides, per context.
        self.parent_object: Any = None
        self.app_url = ""
        self.scoped = False

    def make_current(self, logger: Any, experiment: Any) -> None:
        """Make a logger or an experiment (the other one None) current: in this context, and
        process-wide for threads and contexts that never chose one."""
        view = scoped_parent.get()
        old_logger, old_experiment = view if view is not None else (self.logger,
                                                                     self.experiment)
        if logger is not None:
            self.logger = logger
            scoped_parent.set((logger, old_experiment))
        else:
            self.experiment = experiment
            scoped_parent.set((old_logger, experiment))
        chosen = logger or experiment
        if self.parent_object is not None and self.parent_object is not chosen:
            self.scoped = True  # two containers: which one is current depends on the context
        self.parent_object = None if self.scoped else self.experiment or self.logger

    def current_logger(self) -> Any:
        view = scoped_parent.get()
        return (view[0] if view is not None else None) or self.logger

    def current_experiment(self) -> Any:
        view = scoped_parent.get()
        return (view[1] if view is not None else None) or self.experiment

    def current_container(self) -> Any:
        """Where a span started outside any span goes (the reference's precedence): the
        current experiment, else the current logger; None if neither."""
        if not self.scoped:
            return self.parent_object
        return self.current_experiment() or self.current_logger()


state = State()
