"""Traced work for the process-boundary tests; importable, so spawn and forkserver workers can
unpickle it. Each call of ``work`` makes two spans: ``work`` and its child ``inner``."""

from __future__ import annotations

import os

import tracer


@tracer.traced
def inner(i: int) -> int:
    return i * 2


@tracer.traced
def work(i: int) -> int:
    return inner(i) + 1


def work_pair(i: int, j: int) -> int:
    return work(i) + j


def work_under(parent: str, n: int) -> None:
    """A plain Process target: the user hands the parent span over as an exported slug."""
    with tracer.start_span("continued", parent=parent):
        for i in range(n):
            work(i)


def pid_of_worker(_: int) -> int:
    return os.getpid()


def die_in_a_span(_: int) -> None:
    """Start a span, run long enough for it to be announced, then die as a crash would."""
    import signal
    import time

    with tracer.start_span("doomed", input="half done"):
        time.sleep(0.5)  # the recorder announces a running span within 0.1 s
        os.kill(os.getpid(), signal.SIGKILL)


def sigterm_is_default_after_a_span(i: int) -> bool:
    """Record a span (which arms this process's exit paths), then say whether SIGTERM still has
    its default action."""
    import signal

    work(i)
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def waits_on_a_lock_while_another_thread_takes_sigterm(lock) -> None:
    """Record a span, then wait on ``lock`` (held by the parent) as a pool worker waits on its
    task queue, while SIGTERM lands on another thread: the wait is never interrupted."""
    import signal
    import threading
    import time

    work(0)

    def take_sigterm() -> None:
        time.sleep(0.5)  # the main thread is in lock.acquire() by now
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
        time.sleep(60)  # this thread stays while the process is terminated

    threading.Thread(target=take_sigterm, daemon=True).start()
    lock.acquire()
