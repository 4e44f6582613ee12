"""Process helpers shared by the recorders and the aggregator: liveness and pid files.

A leaf module: it imports only ``config``, so both sides (``tracer`` and ``workers``) can use it.
An aggregator started for an ipc endpoint leaves its pid in ``<socket path>.pid``, which is how a
recorder that finds it replaced (or a process that must replace it) learns the new pid.
"""

from __future__ import annotations

import os

from . import config


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:  # an aggregator we started is our child: reap it if it has exited
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil  # only on this slow path: it costs ~10 ms to import

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def read_pid_file(socket_path: str) -> int | None:
    """The pid recorded for the aggregator listening at ``socket_path``, if any."""
    try:
        with open(socket_path + ".pid") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def write_pid_file(socket_path: str, pid: int) -> None:
    """Record ``pid`` as the aggregator listening at ``socket_path`` (written aside, renamed)."""
    tmp = f"{socket_path}.pid.{os.getpid()}"
    with os.fdopen(config.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        f.write(str(pid))
    os.replace(tmp, socket_path + ".pid")


def pid_file_of(endpoint: str) -> int | None:
    """The recorded aggregator pid of an ipc ``endpoint``; None for other transports."""
    if not endpoint.startswith("ipc://"):
        return None
    return read_pid_file(endpoint[len("ipc://"):])
