"""The recorders alive in this process, and what is done to all of them at once.

A leaf module, so that the attachment writer (which needs this process's latest recorder) and the
process hooks in ``lifecycle`` (which close every recorder at exit) need not import the recorder,
which imports them.
"""

from __future__ import annotations

from typing import Any

from . import wire

# Every Recorder of this process, oldest first (typed Any: the Recorder class imports this module).
recorders: list[Any] = []


def register(recorder: Any) -> None:
    recorders.append(recorder)


def latest() -> Any:
    """The most recently created recorder, or None."""
    return recorders[-1] if recorders else None


def close_all() -> None:
    """Close every recorder of this process (idempotent)."""
    for recorder in list(recorders):
        recorder.close()


def deliver_all(timeout: float) -> None:
    """Hand everything this process recorded so far to the aggregators (received, not yet
    committed); never raises. For code that ends units of work in a process that may be killed
    right after (pool workers, Celery tasks)."""
    for recorder in list(recorders):
        recorder.deliver(timeout)


def sync_all(level: int = wire.COMMITTED, timeout: float | None = 30.0) -> None:
    """Flush every recorder of this process that has sent or holds anything."""
    for recorder in list(recorders):
        if recorder.in_use():
            recorder.sync(level, timeout)
