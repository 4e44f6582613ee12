"""Who sends to the aggregator: one ``Sender`` per (host, pid, generation), and the table of them
that follows each one's sequence numbers and what it reported about itself.

Every message names its sender and DATA messages are numbered from 1 (``tracer.wire``), so a
number skipped is a message lost on the way (counted as a gap), and a sender whose first message
to us is not number 1 was sending to an aggregator we replaced (it resends what that one had not
committed). Senders report their own counters (losses, resends, restarts) in DATA and BYE
messages; those are added to the aggregator's under ``senders_<name>``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from .rows import Container, Key

SenderKey = tuple[str, int, int]  # (host, pid, gen)


class Sender:
    """What the aggregator knows of one sending process (host, pid, generation)."""

    __slots__ = ("host", "pid", "gen", "seq", "first_seq", "first_seen", "last_seen", "records",
                 "gaps", "dropped", "dropped_here", "dropped_told", "closed", "dead", "open")

    def __init__(self, host: str, pid: int, gen: int) -> None:
        self.host, self.pid, self.gen = host, pid, gen
        self.seq = 0
        self.first_seq = 0  # the first DATA seq we received; told back in every reply
        self.first_seen = self.last_seen = time.time()
        self.records = 0
        self.gaps = 0
        self.dropped = 0  # rows of this sender dropped, here or (as it reported) by itself
        self.dropped_here = 0  # ... by this aggregator's queue policy
        self.dropped_told = 0  # ... of which its flushes were told
        self.closed = self.dead = False
        # row key -> (container, partial row) of spans still running: closed with an error if
        # the process dies first
        self.open: dict[Key, tuple[Container, dict]] = {}

    @property
    def live(self) -> bool:
        return not (self.closed or self.dead)


class Senders:
    """The senders the aggregator has heard from, by (host, pid, gen).

    Written by the receiving loop only; ``snapshot`` takes them in one step, safe against that loop
    adding one meanwhile (the uploader thread reads them for the stats it records).
    """

    def __init__(self, counters: Counter) -> None:
        self.counters = counters
        self._by_key: dict[SenderKey, Sender] = {}

    def heard(self, host: str, pid: int, gen: int) -> Sender:
        """The sender of a message just received (new if unknown), seen now."""
        sender = self._by_key.get((host, pid, gen))
        if sender is None:
            sender = self._by_key[(host, pid, gen)] = Sender(host, pid, gen)
            self.counters["senders_seen"] += 1
        sender.last_seen = time.time()
        return sender

    def numbered(self, sender: Sender, seq: int) -> None:
        """Follow the sequence numbers of ``sender``'s DATA messages: ``seq`` just came."""
        if sender.first_seq == 0:
            sender.first_seq = seq
        if sender.seq == 0 and seq > 1:
            # Its first message to us continues a stream: it was sending to an aggregator we
            # replaced, and will resend what that one had not committed.
            self.counters["senders_joined_mid_stream"] += 1
        elif seq != sender.seq + 1:
            missing = max(0, seq - sender.seq - 1)
            sender.gaps += missing
            self.counters["seq_gap_messages"] += missing
        sender.seq = max(seq, sender.seq)

    def reported(self, sender: Sender, counts: object) -> None:
        """Add what a sender counted itself (drops, losses, resends, restarts) to ours."""
        if not isinstance(counts, dict):
            return
        for name, value in counts.items():
            if isinstance(name, str) and isinstance(value, int) and value > 0:
                self.counters[f"senders_{name}"] += value
                if name.startswith("dropped_"):
                    sender.dropped += value

    def snapshot(self) -> list[Sender]:
        """Every sender known, taken in one step (see the class)."""
        return list(self._by_key.values())

    def items(self) -> Iterator[tuple[SenderKey, Sender]]:
        """``(key, sender)`` pairs, taken in one step: ``forget`` may be called meanwhile."""
        return iter(list(self._by_key.items()))

    def forget(self, key: SenderKey) -> None:
        """Drop a sender that is long gone, to keep memory bounded (the counters remember)."""
        del self._by_key[key]
