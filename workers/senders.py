"""Who sends to the aggregator: one ``Sender`` per (host, pid, generation), and the table of them
that follows each one's sequence numbers and what it reported about itself.

Every message names its sender and DATA messages are numbered from 1 (``tracer.wire``), so a
number skipped is a message lost on the way (counted as a gap), and a sender whose first message
to us is not number 1 was sending to an aggregator we replaced (it resends what that one had not
committed). Senders report their own counters (losses, resends, restarts) in DATA and BYE
messages; those are added to the aggregator's under ``senders_<name>``.

Anyone who can reach the aggregator can name any sender, so nothing here grows or counts
without a bound: the table keeps at most ``MAX_SENDERS`` (the least recently heard is
evicted), the spans kept for crash marking at most ``MAX_OPEN_BYTES`` of rows, one message
adds at most ``MAX_GAP`` to the gap count, and reported counters are plausible or ignored.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator

from .rows import Container, Key

SenderKey = tuple[str, int, int]  # (host, pid, gen)

# A fleet's processes, live and recently gone, fit many times over. Past it, the least
# recently heard sender is forgotten: if it was still alive, its next message makes it a
# sender joining mid-stream, which resends what was not committed (nothing is lost), and
# only the spans it had running lose their marking should it crash.
MAX_SENDERS = 10_000
# Spans running (SPAN_OPEN received, no SPAN_END yet) are kept to be closed with an error if
# their process dies: at most this many bytes of them (as received), over all senders.
MAX_OPEN_BYTES = 64 * 1024 * 1024
# A recorder resends every message until it is committed, so a real gap is a handful of
# messages lost in transit; a larger jump in one message is counted once, as a jump.
MAX_GAP = 1 << 16
# Reported counters: names as the recorders make them, values a sender could have counted
# since its last report, a bounded number of names.
_REPORTED_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_REPORTED = 1 << 40  # attachment_bytes_spooled is in bytes
MAX_REPORTED_NAMES = 256


class Sender:
    """What the aggregator knows of one sending process (host, pid, generation)."""

    __slots__ = ("host", "pid", "gen", "seq", "first_seq", "first_seen", "last_seen", "records",
                 "gaps", "dropped", "dropped_here", "dropped_told", "rejected", "closed", "dead",
                 "open", "open_bytes")

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
        self.rejected = 0  # records of this sender that could not become rows
        self.closed = self.dead = False
        # row key -> (container, partial row, size) of spans still running: closed with an
        # error if the process dies first (``Senders.track_open``)
        self.open: dict[Key, tuple[Container, dict, int]] = {}
        self.open_bytes = 0

    @property
    def live(self) -> bool:
        return not (self.closed or self.dead)


class Senders:
    """The senders the aggregator has heard from, by (host, pid, gen).

    Written by the receiving loop only; ``snapshot`` takes them in one step, safe against that loop
    adding one meanwhile (the uploader thread reads them for the stats it records).
    """

    def __init__(self, counters: Counter, max_senders: int = MAX_SENDERS,
                 max_open_bytes: int = MAX_OPEN_BYTES) -> None:
        self.counters = counters
        self.max_senders = max_senders
        self.max_open_bytes = max_open_bytes
        self.open_bytes = 0  # over all senders
        self._by_key: dict[SenderKey, Sender] = {}  # least recently heard first
        self._reported_names: set[str] = set()

    def heard(self, host: str, pid: int, gen: int) -> Sender:
        """The sender of a message just received (new if unknown), seen now."""
        by_key = self._by_key
        sender = by_key.pop((host, pid, gen), None)
        if sender is None:
            if len(by_key) >= self.max_senders:
                self._evict()
            sender = Sender(host, pid, gen)
            self.counters["senders_seen"] += 1
        by_key[(host, pid, gen)] = sender  # now the most recently heard
        sender.last_seen = time.time()
        return sender

    def _evict(self) -> None:
        key = next(iter(self._by_key))
        self.forget(key)
        self.counters["senders_evicted"] += 1

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
            if missing > MAX_GAP:  # not messages lost on the way: a sender gone wrong
                self.counters["seq_jumps"] += 1
            else:
                sender.gaps += missing
                self.counters["seq_gap_messages"] += missing
        sender.seq = max(seq, sender.seq)

    def reported(self, sender: Sender, counts: object) -> None:
        """Add what a sender counted itself (drops, losses, resends, restarts) to ours."""
        if not isinstance(counts, dict):
            return
        if len(counts) > 64:
            self.counters["bad_sender_reports"] += 1
            return
        for name, value in counts.items():
            if not (type(name) is str and type(value) is int and 0 < value < MAX_REPORTED
                    and _REPORTED_NAME.fullmatch(name)):
                self.counters["bad_sender_reports"] += 1
                continue
            if name not in self._reported_names:
                if len(self._reported_names) >= MAX_REPORTED_NAMES:
                    self.counters["bad_sender_reports"] += 1
                    continue
                self._reported_names.add(name)
            self.counters[f"senders_{name}"] += value
            if name.startswith("dropped_"):
                sender.dropped += value

    def track_open(self, sender: Sender, key: Key, container: Container, partial: dict,
                   size: int) -> None:
        """Keep a running span's row (``size`` bytes as received) to close it with an error if
        its process dies first; counted under ``open_spans_untracked`` past the bound."""
        old = sender.open.pop(key, None)
        if old is not None:
            self._untracked(sender, old[2])
        if self.open_bytes + size > self.max_open_bytes:
            self.counters["open_spans_untracked"] += 1
            return
        sender.open[key] = (container, partial, size)
        sender.open_bytes += size
        self.open_bytes += size

    def ended(self, sender: Sender, key: Key) -> None:
        """The span ``key`` of ``sender`` ended: no longer kept."""
        old = sender.open.pop(key, None)
        if old is not None:
            self._untracked(sender, old[2])

    def take_open(self, sender: Sender) -> list[tuple[Key, Container, dict]]:
        """The spans ``sender`` left running, no longer kept."""
        spans = [(key, container, partial) for key, (container, partial, _size)
                 in sender.open.items()]
        self._untracked(sender, sender.open_bytes)
        sender.open.clear()
        return spans

    def _untracked(self, sender: Sender, size: int) -> None:
        sender.open_bytes -= size
        self.open_bytes -= size

    def snapshot(self) -> list[Sender]:
        """Every sender known, taken in one step (see the class)."""
        return list(self._by_key.values())

    def items(self) -> Iterator[tuple[SenderKey, Sender]]:
        """``(key, sender)`` pairs, taken in one step: ``forget`` may be called meanwhile."""
        return iter(list(self._by_key.items()))

    def __len__(self) -> int:
        return len(self._by_key)

    def known(self, key: SenderKey) -> bool:
        return key in self._by_key

    def forget(self, key: SenderKey) -> None:
        """Drop a sender that is long gone (or the least recently heard, to stay within the
        bound): memory stays bounded, the counters remember."""
        sender = self._by_key.pop(key, None)
        if sender is not None:
            self.take_open(sender)
