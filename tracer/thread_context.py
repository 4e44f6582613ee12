"""``setup_threads()``: the current span follows work into plain threads and thread pools.

A ``ContextVar`` (``tracer.context.current``, the current span) does not cross into a new thread:
before Python 3.14 a ``threading.Thread`` starts in an empty context, and a
``concurrent.futures.ThreadPoolExecutor`` runs each task in its worker thread's context. So,
by default, a span started in a thread, or in a task of a plain executor, starts a trace of its
own. ``TracedThreadPoolExecutor`` carries the span by wrapping; ``setup_threads()`` does it for
the standard classes themselves, as the reference SDK's ``setup_threads()`` does, so that code
we do not own (libraries, frameworks, ``loop.run_in_executor``) keeps its spans in the trace:

- ``threading.Thread.start`` copies the context of the thread calling it, and the new thread's
  ``run`` (whichever class defines it: ``Timer`` and subclasses included) runs in that copy;
- ``ThreadPoolExecutor.submit`` (and so ``map``, ``loop.run_in_executor``) copies the context of
  the submitter, and the task runs in that copy.

The cost is one ``contextvars.copy_context()`` (a reference copy, ~0.1 us) per thread started and
per task submitted; ``@traced`` and ``start_span`` are untouched. A task submitted as
``ctx.run`` of a context (``TracedThreadPoolExecutor``, ``asyncio.to_thread``, libraries that
copy the context themselves) already runs where its submitter chose, so it is not wrapped again.
Our own threads (``tracer.threads.start``) start in an empty context whatever this does.
"""

from __future__ import annotations

import contextvars
import functools
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Python 3.14's Thread takes a context (``Thread(context=...)``, kept in ``_context``).
_HAS_THREAD_CONTEXT = sys.version_info >= (3, 14)

_NONE = object()  # no run of its own on a Thread instance

_lock = threading.Lock()
# The methods replaced, as they were, while setup_threads() is in effect; None otherwise.
_originals: tuple[Callable[..., Any], Callable[..., Any]] | None = None


def setup_threads() -> bool:
    """Make the current span follow work into new threads and thread pool tasks.

    After it, a ``threading.Thread`` (any subclass, ``threading.Timer`` too) runs as a child of
    the span current when its ``start()`` was called, and a ``ThreadPoolExecutor`` task
    (``submit``, ``map``, ``loop.run_in_executor``) as a child of the span current at
    ``submit``, as with ``TracedThreadPoolExecutor`` but without changing the code that makes
    them. The whole context is carried (every ``ContextVar``, not only the current span), as the
    reference SDK's ``setup_threads()`` carries it. Without it, spans started in a thread or a
    plain pool's task start traces of their own.

    It patches ``threading.Thread.start`` and ``ThreadPoolExecutor.submit`` for the whole
    process (fork children inherit it) and for good: call it once, early, before the threads
    and pools it should affect start work. Calling it again does nothing. Returns True (the
    reference returns False when its patching failed, which cannot happen here).
    """
    global _originals
    with _lock:
        if _originals is None:
            _originals = (threading.Thread.start, ThreadPoolExecutor.submit)
            # setattr: the type checker refuses an assignment to a method.
            setattr(threading.Thread, "start", _make_start(_originals[0]))  # noqa: B010
            setattr(ThreadPoolExecutor, "submit", _make_submit(_originals[1]))  # noqa: B010
    return True


def _undo() -> None:
    """Put ``Thread.start`` and ``ThreadPoolExecutor.submit`` back as they were before
    ``setup_threads()``. For the tests, which must leave the process as they found it; threads
    already started keep the context they were given."""
    global _originals
    with _lock:
        if _originals is not None:
            setattr(threading.Thread, "start", _originals[0])  # noqa: B010
            setattr(ThreadPoolExecutor, "submit", _originals[1])  # noqa: B010
            _originals = None


def _make_start(original: Callable[[threading.Thread], None]) -> Callable[[threading.Thread], None]:
    @functools.wraps(original)
    def start(self: threading.Thread) -> None:
        # A thread already started is left to fail as it would. Python 3.14 gives Thread a
        # context of its own: one chosen with Thread(context=...) is left alone.
        if self.ident is not None or (
                _HAS_THREAD_CONTEXT and getattr(self, "_context", None) is not None):
            original(self)
            return
        run = self.run  # the bound run, whichever class (or instance) defines it
        shadowed = self.__dict__.get("run", _NONE)  # a run set on the instance, if any
        ctx = contextvars.copy_context()

        def run_in_context() -> None:
            try:
                ctx.run(run)
            finally:
                # Thread.run drops its target at the end to break reference cycles; so do we
                # (thread -> run_in_context -> run -> thread).
                _unshadow(self, shadowed)

        # An instance attribute shadows the class's run: Thread's bootstrap calls self.run().
        self.run = run_in_context  # type: ignore[method-assign]
        try:
            original(self)
        except BaseException:  # not started (no thread left, interpreter shutdown): undo
            _unshadow(self, shadowed)
            raise

    return start


def _unshadow(thread: threading.Thread, shadowed: object) -> None:
    """Give ``thread`` back the ``run`` it had before ``start`` shadowed it."""
    if shadowed is _NONE:
        thread.__dict__.pop("run", None)
    else:
        thread.__dict__["run"] = shadowed


def _make_submit(original: Callable[..., Future]) -> Callable[..., Future]:
    @functools.wraps(original)
    def submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> Future:
        if _runs_in_a_chosen_context(fn):
            return original(self, fn, *args, **kwargs)
        return original(self, contextvars.copy_context().run, fn, *args, **kwargs)

    return submit


def _runs_in_a_chosen_context(fn: object) -> bool:
    """Whether ``fn`` is ``ctx.run`` of some context, bare or in a ``functools.partial`` (as
    ``TracedThreadPoolExecutor`` and ``asyncio.to_thread`` submit): the submitter chose where
    it runs, and copying the context again around it would change nothing."""
    if isinstance(fn, functools.partial):
        fn = fn.func
    return isinstance(getattr(fn, "__self__", None), contextvars.Context)
