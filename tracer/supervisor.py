"""Watching the aggregator a recorder sends to, and replacing it when it dies.

A recorder only looks while it waits on the aggregator (messages not yet committed, or a flush
waiting), at most every ``CHECK_INTERVAL`` seconds. An aggregator whose pid is known is dead when
that process is gone; one attached to by endpoint alone (pid unknown) is taken for dead after
``UNRESPONSIVE`` seconds without a reply. A replacement is started through the ``restart``
callback the launcher gives (an ipc aggregator with a known store), at most ``MAX_RESTARTS`` times
per ``RESTART_WINDOW``, so that an aggregator that dies as it starts is not restarted in a loop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .processes import pid_file_of, process_alive

CHECK_INTERVAL = 0.5  # how often the flusher checks the aggregator while it waits on it
MAX_RESTARTS = 3  # replacement aggregators started per RESTART_WINDOW seconds, at most
RESTART_WINDOW = 60.0
UNRESPONSIVE = 30.0  # an aggregator whose pid we do not know is taken for dead after this


class Supervisor:
    """Liveness and replacement of one recorder's aggregator."""

    def __init__(self, endpoint: str, aggregator_pid: int | None,
                 restart: Callable[[Any], int | None] | None,
                 warn: Callable[[str, str], None]) -> None:
        self.endpoint = endpoint
        self.aggregator_pid = aggregator_pid
        self._restart = restart  # starts a replacement aggregator; returns its pid
        self._warn = warn
        self.reset()

    def reset(self) -> None:
        """Fresh per-process state (construction, fork child)."""
        self._last_check = 0.0  # monotonic time of the last look at the aggregator
        self._restarts: deque[float] = deque()  # when we started replacement aggregators

    def dead(self, waiting: bool, last_reply: float) -> bool:
        """True when the aggregator's process is gone, or (pid unknown) it has not answered for
        ``UNRESPONSIVE`` seconds while we wait on it (``waiting``)."""
        if self.aggregator_pid is not None:
            return not process_alive(self.aggregator_pid)
        return waiting and time.monotonic() - last_reply > UNRESPONSIVE

    def check_due(self) -> bool:
        """Whether it is time for another look (at most every ``CHECK_INTERVAL`` seconds)."""
        now = time.monotonic()
        if now - self._last_check < CHECK_INTERVAL:
            return False
        self._last_check = now
        return True

    def found_replacement(self) -> int | None:
        """The pid of an aggregator another process started in place of ours (from its pid
        file; the old pid if it cannot be learned)."""
        return pid_file_of(self.endpoint) or self.aggregator_pid

    def start_replacement(self, recorder: Any) -> int | None:
        """Start a new aggregator through the restart callback; its pid, or None when none can
        be had (no callback, or the restart budget is spent). The caller counts the loss."""
        if self._restart is None or not self._may_restart():
            return None
        return self._restart(recorder)

    def _may_restart(self) -> bool:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            self._warn("restarts", f"tracer: the aggregator at {self.endpoint} died "
                                   f"{MAX_RESTARTS + 1} times within {RESTART_WINDOW:.0f} s; "
                                   "not starting another (see aggregator.log beside the store)")
            return False
        self._restarts.append(now)
        return True
