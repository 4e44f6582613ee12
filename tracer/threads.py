"""Starting our background threads so that they never take the process's termination signals
(nor the span of the thread that starts them: see ``start``).

A signal sent to a process goes to one of its threads that does not block it, chosen by the
kernel. Python runs its handlers on the main thread only, when that thread next runs bytecode: a
signal that lands on the flusher while the main thread sits in a wait that only the signal would
have interrupted (a pool worker waiting for a task, once ``Pool.terminate()`` has taken the task
queue's lock for good) is never handled, and the process never exits. With SIGTERM and SIGINT
blocked in our threads, the kernel hands them to the main thread (ZeroMQ's I/O threads block
every signal already), whose wait is interrupted and whose handler then runs.
"""

from __future__ import annotations

import contextvars
import signal
import threading

# Blocked in every thread we start. The new thread inherits the mask of the thread that starts
# it, so there is no window in which it could take one of them before blocking it itself.
TERMINATION_SIGNALS = frozenset((signal.SIGTERM, signal.SIGINT))


def start(thread: threading.Thread) -> None:
    """``thread.start()``, with the termination signals blocked in the new thread, and in an
    empty context: our threads are started from the caller's thread, inside its spans, and must
    not carry them (nor keep them alive) when ``setup_threads()`` makes threads inherit the
    context of the thread that starts them."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no such signals to route
        contextvars.Context().run(thread.start)
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATION_SIGNALS)
    try:
        contextvars.Context().run(thread.start)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
