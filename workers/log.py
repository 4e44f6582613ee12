"""The aggregator's one logging path: every thread of the aggregator process writes here, and
nothing here raises or waits.

Messages go to the process's stderr: for an aggregator started by ``init_logger`` that is
``aggregator.log`` beside the store (``tracer/launcher.py`` opens it, and gives the aggregator the
application's stderr instead when it cannot); for a standalone one, wherever its service manager
sends stderr. A log must never stop work, whatever becomes of it (a full disk under it, a pipe
nobody reads, a closed descriptor), so ``log`` only queues the line and a small writer thread
writes it. A line that cannot be written, or that finds ``MAX_PENDING`` lines already waiting,
is dropped and counted (``log_lines_dropped``); a message logged with a ``key`` is written at
most once per ``every`` seconds, the others counted (``log_lines_suppressed``).

The counts go into the aggregator's counters once it calls ``attach`` (before that they are
kept here and added then). ``drain`` gives the writer a bounded time to finish at exit.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque

MAX_PENDING = 1000  # lines waiting for the writer; beyond this they are dropped, counted
STDERR = 2

_lock = threading.Condition()
_counters: Counter = Counter()
_pending: deque[bytes] = deque()
_last_by_key: dict[str, float] = {}
_writing = False  # the writer holds a line it has not finished with
_writer: threading.Thread | None = None


def attach(counters: Counter) -> None:
    """Count into ``counters`` from now on (the aggregator's, which ``tracer stats`` shows)."""
    global _counters
    with _lock:
        counters.update(_counters)
        _counters = counters


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to counter ``name``, safely from any thread."""
    with _lock:
        _counters[name] += n


def log(message: str, *, key: str | None = None, every: float = 0.0) -> bool:
    """Queue one line for stderr; whether it was queued. Never raises, never blocks on the
    output. With ``key``, a line of that key is written at most once per ``every`` seconds."""
    try:
        line = f"tracer-aggregator[{os.getpid()}]: {message}\n".encode("utf-8", "replace")
        with _lock:
            if key is not None:
                now = time.monotonic()
                last = _last_by_key.get(key)
                if last is not None and now - last < every:
                    _counters["log_lines_suppressed"] += 1
                    return False
                _last_by_key[key] = now
            if len(_pending) >= MAX_PENDING:
                _counters["log_lines_dropped"] += 1
                return False
            _pending.append(line)
            _ensure_writer()
            _lock.notify()
        return True
    except Exception:  # a log must never be why work stops
        try:
            with _lock:
                _counters["log_lines_dropped"] += 1
        except Exception:
            pass
        return False


def drain(timeout: float = 1.0) -> bool:
    """Wait at most ``timeout`` seconds for the lines queued to be written (or dropped);
    whether they all were."""
    deadline = time.monotonic() + timeout
    with _lock:
        while _pending or _writing:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _lock.wait(min(left, 0.05))
    return True


def _ensure_writer() -> None:
    """Start the writer thread, again if it died (called with ``_lock`` held)."""
    global _writer
    if _writer is not None and _writer.is_alive():
        return
    if _writer is not None:
        _counters["thread_restarts_log"] += 1
    _writer = threading.Thread(target=_write_lines, name="tracer-log", daemon=True)
    _writer.start()


def _write_lines() -> None:
    global _writing
    while True:
        try:
            with _lock:
                while not _pending:
                    _lock.wait()
                line = _pending.popleft()
                _writing = True
            try:
                _write_all(line)
            except OSError:  # ENOSPC, EIO, EBADF...: this line is lost, the next may pass
                with _lock:
                    _counters["log_lines_dropped"] += 1
            finally:
                with _lock:
                    _writing = False
                    _lock.notify_all()
        except Exception:  # the writer must outlive anything; nothing can be said about it
            with _lock:
                _counters["log_lines_dropped"] += 1


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(STDERR, view)
        view = view[written:]
