"""Every hook this package sets into the process: fork, exit, ``os._exit`` and SIGTERM.

One place, so that a reader looking for "what runs when the process forks or ends" finds all of
it here (the role dd-trace's ``forksafe`` plays). Other modules do not touch
``os.register_at_fork``, ``atexit``, ``os._exit`` or signal handlers; they register here:

- ``on_fork_child(fn)``: ``fn()`` runs in every fork child, before any other code of the child,
  in registration order. The recorders, the attachment writer and the id generator use it to drop
  what belongs to the parent (ZeroMQ is not fork-safe; the parent owns its buffers; the child must
  not draw the parent's ids). Hooks must not log or take locks: other threads of the parent do
  not exist in the child.
- ``arm_exit()``: called by the first record of a process (cheap after the first call). From then
  on, however the process ends, every recorder is closed (``registry.close_all``) within its bound:
  ``atexit`` for a normal exit; ``multiprocessing.util.Finalize`` for multiprocessing children,
  which end in ``os._exit``; a wrapper of ``os._exit`` itself for bare ``os.fork()`` children (and
  billiard's); a SIGTERM handler in multiprocessing children, whose ``terminate()`` would otherwise
  kill them with their last spans unsent.

See docs/architecture.md, "Process model".
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from . import config, registry, threads

TERMINATE_TIMEOUT = 2.0  # how long a terminated multiprocessing child delivers before dying
MISSED_SIGNAL_GRACE = 0.5  # seconds a SIGTERM handler has to start before it is re-sent

_fork_hooks: list[Callable[[], None]] = []
_armed_pid = 0  # the process whose exit is armed (0: none; a fork child starts unarmed)
# The signal wakeup pipe (read end, write end) of this process's SIGTERM handler, once installed.
_signal_pipe: tuple[int, int] | None = None
_terminating = False  # the SIGTERM handler has started
_real_exit = os._exit


def on_fork_child(hook: Callable[[], None]) -> None:
    """Run ``hook()`` in every fork child of this process, before anything else runs there."""
    _fork_hooks.append(hook)


def arm_exit() -> None:
    """Arrange for every recorder of this process to be closed however the process ends."""
    global _armed_pid
    if _armed_pid == os.getpid():
        return
    _armed_pid = os.getpid()
    atexit.register(registry.close_all)
    # A process that ends in os._exit (fork children of multiprocessing, billiard, bare forks)
    # runs no atexit handler: deliver first there too.
    os._exit = _exit_delivering
    import multiprocessing.util

    # multiprocessing children end in os._exit: atexit never runs there, but their finalizers do.
    multiprocessing.util.Finalize(None, registry.close_all, exitpriority=100)
    _deliver_on_terminate()


def _exit_delivering(status: int) -> NoReturn:
    """``os._exit`` in fork children: deliver this process's spans first (bounded), then exit.

    A child made with a bare ``os.fork()`` that ends in ``os._exit`` runs no atexit handler and
    no finalizer: this is the only place its last spans can still be sent from.
    """
    try:
        registry.close_all()
    except BaseException:
        pass
    _real_exit(status)


def _deliver_on_terminate() -> None:
    """In a multiprocessing child, have SIGTERM deliver this process's spans before it dies.

    ``Pool.terminate()`` (what ``with Pool() as pool:`` calls on the way out) and
    ``Process.terminate()`` send SIGTERM, whose default action kills the child on the spot,
    with the spans of its last tasks still in its buffer: every one of them, when the tasks are
    short. The handler delivers them (for at most TERMINATE_TIMEOUT seconds), then dies of the
    signal as it would have. Only where SIGTERM still has its default action, and only in
    children of multiprocessing: a program's own SIGTERM is left to it.

    The trade-off: a Python signal handler runs between bytecodes, so a child busy in a long C
    call (numpy, say) when terminate() arrives dies when that call returns rather than at once.
    ``TRACER_DELIVER_ON_TERMINATE=0`` keeps the default action (and loses those spans).
    """
    import multiprocessing

    if (not config.value_or_default("DELIVER_ON_TERMINATE")
            or multiprocessing.parent_process() is None
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return
    if _watch_for_missed_signals():  # else the default action: a loss beats a hang
        signal.signal(signal.SIGTERM, _terminated)


def _watch_for_missed_signals() -> bool:
    """Make sure a SIGTERM that Python takes is acted on even if the main thread misses it.

    Python runs a handler when the main thread next runs bytecode. A signal taken just before
    the main thread enters a wait that only a signal would end (a pool worker going back to the
    task queue's lock, which ``Pool.terminate()`` holds for good) does not interrupt that wait:
    the handler never runs and, caught rather than fatal, the signal no longer kills the process.
    Python's C handler writes each signal's number to the wakeup fd, whatever the thread; a small
    thread reads it and, if the handler has not started after a moment, sends SIGTERM to the
    main thread itself, which ends the wait and runs the handler. False (handler not installed)
    where the wakeup fd is already someone else's.
    """
    global _signal_pipe
    if not hasattr(signal, "pthread_kill"):  # Windows: no way to re-send it
        return False
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    if previous != -1:
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)
        return False
    _signal_pipe = (read_end, write_end)
    threads.start(threading.Thread(target=_watch_signal_pipe, args=(read_end,),
                                   name="tracer-sigterm", daemon=True))
    return True


def _watch_signal_pipe(read_end: int) -> None:
    while True:
        try:
            received = os.read(read_end, 64)
        except OSError:
            return
        if not received:
            return
        if signal.SIGTERM in received:
            time.sleep(MISSED_SIGNAL_GRACE)
            main = threading.main_thread().ident
            if not _terminating and main is not None:
                signal.pthread_kill(main, signal.SIGTERM)
            return


def _terminated(signum: int, frame: object) -> None:
    global _terminating
    _terminating = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    deadline = time.monotonic() + TERMINATE_TIMEOUT  # for all recorders together
    try:
        for recorder in list(registry.recorders):
            recorder.close(max(0.1, deadline - time.monotonic()))
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    # Never log or take locks here: other threads of the parent do not exist in the child.
    global _armed_pid, _signal_pipe, _terminating
    _armed_pid = 0
    if _signal_pipe is not None:
        # The parent's SIGTERM handler and wakeup pipe: the watching thread is not here, and a
        # signal of ours must not wake the parent's. The first record re-arms both.
        try:
            signal.set_wakeup_fd(-1)
            if signal.getsignal(signal.SIGTERM) is _terminated:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # forked from a thread Python does not take for the main one
            pass
        for fd in _signal_pipe:
            os.close(fd)
        _signal_pipe = None
    _terminating = False
    for hook in _fork_hooks:
        hook()
    if registry.recorders:
        # The parent's recorders were inherited (and reset by their hook): a bare fork child that
        # ends in os._exit must still deliver what it records before its first record re-arms.
        os._exit = _exit_delivering


os.register_at_fork(after_in_child=_after_fork_in_child)
