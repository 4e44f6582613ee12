"""Rows received and not yet committed: merged by key, bounded, taken in arrival order.

The receiving loop puts partial rows in; the uploader takes batches out and reports when they are
committed. Flush markers ride in the same order: a marker is done once every row queued before it
has been committed (or has failed for good), which is what a recorder's ``flush()`` waits for.

Ordering works on sequence numbers: each newly queued row gets the next number, and a marker
records the number of the last row queued before it. Batches are taken oldest first, so a marker
is done once the oldest row still pending or in flight is newer than the marker.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Any

from .rows import Key, merge


class Pending:
    """One row waiting to be committed: a merge of every partial row received for its key."""

    __slots__ = ("key", "row", "size", "seq", "since", "container")

    def __init__(self, key: Key, row: dict, size: int, seq: int, container: Any,
                 since: float | None = None) -> None:
        self.key = key
        self.row = row
        self.size = size
        self.seq = seq
        self.since = time.monotonic() if since is None else since
        self.container = container


class RowQueue:
    """Bounded to ``max_rows`` rows and ``max_bytes`` bytes (their wire sizes) pending plus in
    flight (0 = unbounded)."""

    def __init__(self, max_rows: int = 0, hold: bool = False, max_bytes: int = 0) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._bytes = 0  # wire bytes of the rows pending and in flight
        # SYNC_FLUSH: rows wait for a flush (or the queue filling up, or closing) before they
        # are taken, rather than for a batch size or a delay.
        self.hold = hold
        self._cond = threading.Condition()
        self._pending: dict[Key, Pending] = {}  # insertion order = arrival order
        self._inflight: list[Pending] = []
        self._markers: deque = deque()  # (seq, failures so far, marker, urgent), in order
        self._urgent = 0  # markers waiting that ask for an upload now (flushes)
        self._failures: list[str] = []  # why batches were given up, in order
        self._seq = 0
        self._closed = False
        self._flush_requested = False

    # -- the receiving side -------------------------------------------------------------------

    def put(self, key: Key, partial: dict, size: int, container: Any,
            may_drop: bool = False) -> bool:
        """Queue a partial row, merged into the pending one with its key. With ``may_drop``, a
        new row that finds the queue full is refused (False) instead of going over the bound."""
        return not self.put_many([(key, partial, size, container)], may_drop)

    def put_many(self, items: list[tuple[Key, dict, int, Any]], may_drop: bool = False) -> list:
        """``put`` for each ``(key, partial, size, container)``, under one lock (a message's
        records); returns the items refused."""
        refused = []
        with self._cond:
            pending_rows = self._pending
            was_empty = not pending_rows
            since = time.monotonic()
            for item in items:
                pending = pending_rows.get(item[0])
                if pending is None:
                    if may_drop and self.full():
                        refused.append(item)
                        continue
                    self._seq += 1
                    key, partial, size, container = item
                    pending_rows[key] = Pending(key, partial, size, self._seq, container, since)
                else:
                    merge(pending.row, item[1])
                    pending.size += item[2]
                self._bytes += item[2]
            if was_empty and pending_rows:
                self._cond.notify()
        return refused

    def mark(self, marker: Any, urgent: bool = True) -> list:
        """Queue a marker; returns ``[(marker, None)]`` at once when nothing is ahead of it.

        An ``urgent`` marker (a flush) has what is ahead of it uploaded now; others (commit
        notices) wait for the batch to fill or age like the rows.
        """
        with self._cond:
            if not self._pending and not self._inflight:
                return [(marker, None)]
            self._markers.append((self._seq, len(self._failures), marker, urgent))
            if urgent:
                self._urgent += 1
                self._flush_requested = True
                self._cond.notify()
            return []

    def full(self) -> bool:
        return (bool(self.max_rows) and len(self._pending) + len(self._inflight) >= self.max_rows
                or bool(self.max_bytes) and self._bytes >= self.max_bytes)

    def depth(self) -> int:
        return len(self._pending) + len(self._inflight)

    def held_bytes(self) -> int:
        """Wire bytes of the rows pending and in flight."""
        return self._bytes

    def close(self) -> None:
        """No more puts: the uploader drains what is left, then ``take`` returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the uploading side -------------------------------------------------------------------

    def take(self, max_rows: int, max_bytes: int, max_delay: float) -> list[Pending] | None:
        """The next batch, oldest first, once ``max_rows`` are waiting, the oldest has waited
        ``max_delay`` seconds, a flush was requested, or the queue is closing. None when closed
        and empty."""
        with self._cond:
            while True:
                if self._pending:
                    oldest = next(iter(self._pending.values()))
                    wait = oldest.since + max_delay - time.monotonic()
                    # A full queue goes at once: senders are waiting on it.
                    due = self.full() or not self.hold and (len(self._pending) >= max_rows
                                                            or wait <= 0)
                    if due or self._flush_requested or self._closed:
                        return self._cut(max_rows, max_bytes)
                    self._cond.wait(max_delay if self.hold else wait)
                elif self._closed:
                    return None
                else:
                    self._cond.wait(max_delay)

    def _cut(self, max_rows: int, max_bytes: int) -> list[Pending]:
        batch: list[Pending] = []
        size = 0
        for key in list(itertools.islice(self._pending, max_rows)):
            pending = self._pending[key]
            if batch and (len(batch) >= max_rows or size + pending.size > max_bytes):
                break
            del self._pending[key]
            batch.append(pending)
            size += pending.size
        self._inflight = batch
        if not self._pending:
            self._flush_requested = False
        return batch

    def done(self, error: str | None = None) -> list:
        """The in-flight batch is committed (``error`` None) or given up; returns the markers
        this completes as ``(marker, error)``, where error tells of any batch given up since
        the marker was placed."""
        with self._cond:
            self._bytes -= sum(p.size for p in self._inflight)
            self._inflight = []
            if error is not None:
                self._failures.append(error)
            oldest = next(iter(self._pending.values())).seq if self._pending else None
            finished = []
            while self._markers and (oldest is None or self._markers[0][0] < oldest):
                _seq, failures_before, marker, urgent = self._markers.popleft()
                self._urgent -= urgent
                failed = list(dict.fromkeys(self._failures[failures_before:]))  # each once
                finished.append((marker, "; ".join(failed[-3:]) if failed else None))
            if not self._markers:
                self._failures.clear()
            if self._urgent:
                self._flush_requested = True
            return finished
