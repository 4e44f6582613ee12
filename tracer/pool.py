"""Pools and executors that carry the current span to their workers.

``TracedThreadPoolExecutor`` runs tasks in the submitter's context. ``TracedPool`` (a drop-in for
``multiprocessing.Pool``, any ``context=``) and ``TracedProcessPoolExecutor`` wrap each submitted
callable in a picklable ``_Carried``: it remembers the span current at submission (as an export
slug) and the aggregator's address, and in the worker process runs the callable with that span as
its parent. Before the result goes back, the worker hands the task's spans to the aggregator (one
round trip, skipped when the task recorded nothing), so nothing depends on how the worker later
exits: ``Pool.terminate()`` (what ``with Pool() as p:`` does) or recycling with
``maxtasksperchild=1`` lose nothing.
"""

from __future__ import annotations

import contextvars
import multiprocessing.pool
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from . import launcher, masking, slug
from .context import current, state
from .span import RemoteSpan

DELIVER_TIMEOUT = 30.0  # seconds a worker waits for the aggregator to take a task's spans


class _Carried:
    """``fn``, to be run in another process as a child of the span current when this was made,
    masked with the masking function set when this was made (if it pickles)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.parent: str | None = None
        self.endpoint: str | None = None
        self.aggregator_pid: int | None = None
        # A spawn or forkserver worker has no masking function of its own: hand it ours.
        self.mask = masking.for_workers()
        span = current.get()
        if span is not None:
            self.parent = span.export()
            rec = span._rec
        elif state.current_container() is not None:
            rec = state.current_container().recorder
        else:
            return  # nothing is being traced: run fn as it is
        self.endpoint = rec.endpoint
        self.aggregator_pid = rec.aggregator_pid

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.mask is not None:  # also for a task that traces on its own
            masking.adopt(self.mask)
        if self.endpoint is None:
            return self.fn(*args, **kwargs)
        rec = launcher.attach(self.endpoint, self.aggregator_pid)
        state.active = True
        token = None
        if self.parent is not None:
            token = current.set(RemoteSpan(rec, slug.decode(self.parent)))
        try:
            return self.fn(*args, **kwargs)
        finally:
            if token is not None:
                current.reset(token)
            rec.deliver(DELIVER_TIMEOUT)


class TracedPool(multiprocessing.pool.Pool):
    """``multiprocessing.Pool`` whose tasks run as children of the span current when they are
    submitted (``map``, ``imap``, ``imap_unordered``, ``starmap``, ``apply`` and their async
    forms), with any start method (``context=multiprocessing.get_context(...)``)."""

    def apply_async(self, func: Callable, args: Iterable = (),
                    kwds: Mapping[str, Any] | None = None, callback: Callable | None = None,
                    error_callback: Callable | None = None) -> multiprocessing.pool.AsyncResult:
        return super().apply_async(_Carried(func), tuple(args), kwds or {}, callback,
                                   error_callback)

    def _map_async(self, func, iterable, mapper, chunksize=None, callback=None,
                   error_callback=None):  # map, map_async, starmap and starmap_async
        return super()._map_async(  # type: ignore[misc]  # private, absent from the stubs
            _Carried(func), iterable, mapper, chunksize, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int | None = 1):
        return super().imap(_Carried(func), iterable, chunksize)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int | None = 1):
        return super().imap_unordered(_Carried(func), iterable, chunksize)


Pool = TracedPool


class TracedProcessPoolExecutor(ProcessPoolExecutor):
    """``ProcessPoolExecutor`` whose tasks run as children of the span current at ``submit``
    (and ``map``), with any ``mp_context``."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any):
        return super().submit(_Carried(fn), *args, **kwargs)


class TracedThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run in the submitter's context, so spans created in
    a task are children of the span that was current at ``submit`` time."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any):
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)
