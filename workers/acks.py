"""The aggregator's replies to senders: what is owed, and sending it.

Two kinds of reply are owed (``tracer.wire``):

- ``ACK`` of a SYNC (a flush): at the RECEIVED level at once; at the COMMITTED level once every
  row queued before it is committed (the queue's markers say when) and, if attachments were
  published before it, once the attachment mover has finished a scan begun after it.
- ``COMMITTED_UPTO`` a DATA seq: the sender may forget its copies up to there. Only the latest
  per sender is sent.

Replies become due on the receiving loop and on the uploader thread (a committed batch
completes markers); a deque takes them from both. They are sent from the receiving loop, the
only user of the ROUTER socket.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import zmq

from tracer import wire

# (reply kind, identity, token, first_seq, the sender's rows dropped here since its last flush)
Marker = tuple[int, bytes, object, int, dict[str, int] | None]


class Acks:
    """Replies owed to senders, sent by ``send``."""

    def __init__(self, scans_completed: Callable[[], int]) -> None:
        self._scans_completed = scans_completed  # the attachment mover's completed scans
        # (kind, identity, token, first_seq, dropped, error) due, in order
        self._due: deque[tuple[int, bytes, object, int, dict[str, int] | None, str | None]] = \
            deque()
        self._scans: dict[tuple[bytes, object], int] = {}  # (identity, token) -> scan awaited

    def owe(self, marker: Marker, error: str | None = None) -> None:
        """A reply due now."""
        self._due.append((*marker, error))

    def completed(self, finished: Iterable[tuple[Marker, str | None]]) -> None:
        """Markers the queue completed (``RowQueue.mark`` or ``done``), with the error of any
        batch given up since each was placed; any thread."""
        for marker, error in finished:
            self._due.append((*marker, error))

    def after_scan(self, identity: bytes, token: object, scan: int) -> None:
        """Hold the ACK of this flush until the attachment mover has completed ``scan``. Called
        before the flush's marker is placed, so that it holds whenever the marker completes."""
        self._scans[(identity, token)] = scan

    def send(self, router: zmq.Socket) -> None:
        """Send every reply due (those whose scan is not done yet stay due)."""
        committed: dict[bytes, tuple[int, int]] = {}  # only the latest COMMITTED_UPTO per sender
        replies = []
        later = []  # flushes still waiting for the attachment mover
        while self._due:
            entry = self._due.popleft()
            kind, identity, token, first_seq, dropped, error = entry
            if kind == wire.COMMITTED_UPTO:
                seq = token if isinstance(token, int) else 0
                if seq > committed.get(identity, (0, 0))[0]:
                    committed[identity] = (seq, first_seq)
            else:
                if self._scans and (identity, token) in self._scans:
                    if self._scans_completed() < self._scans[(identity, token)]:
                        later.append(entry)
                        continue
                    del self._scans[(identity, token)]
                # A flush learns what the aggregator dropped of its sender's rows, so that it
                # can raise about it (tracer.FlushError).
                payload = {"error": error, "dropped": dropped} if dropped else error
                replies.append((identity, wire.reply(kind, token, payload, first_seq)))
        self._due.extend(later)
        replies += [(identity, wire.reply(wire.COMMITTED_UPTO, seq, None, first_seq))
                    for identity, (seq, first_seq) in committed.items()]
        for identity, reply in replies:
            try:
                router.send_multipart([identity, reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the sender is gone; nobody is waiting
