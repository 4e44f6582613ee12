"""The per-process span recorder: a buffer, its queue policy, flushes and one small flusher thread.

The caller's thread only appends a record to a deque (see ``Recorder.add``). A daemon flusher
thread, started on first use and again after fork, turns the buffer into DATA messages on the
``Channel`` to the aggregator at least every ``FLUSH_INTERVAL`` (or as soon as ``KICK_RECORDS``
are waiting), announces spans that are still running, and carries flush handshakes. It exits when
it has had nothing to do for ``IDLE_EXIT`` seconds and is started again by the next record.

- Queue policy: with a bound (``TRACER_QUEUE_SIZE``), a full buffer blocks the caller while the
  aggregator is alive (the default), or drops the newest record, counted and, with
  ``FAILED_PUBLISH_PAYLOADS_DIR``, written there for ``tracer import-payloads``.
- Nothing is lost when the aggregator dies: the channel keeps every DATA message until it is
  committed; the ``Supervisor`` notices the death and gets a replacement, and the recorder resends
  what was not committed as a new sender (merges are idempotent: no duplicate rows). Where no
  replacement can be had, the loss is counted and warned about.
- Fork and exit: ``lifecycle`` runs ``_forget_parent`` in every fork child (new buffer - the
  inherited one belongs to the parent -, new locks, new wake pipe, no socket, no thread) and
  closes every recorder however the process ends; a pid check in ``_kick`` and ``sync`` covers a
  fork that bypassed the hook. At interpreter shutdown, where Python >= 3.12 starts no thread,
  ``sync`` and ``close`` do the flusher's work on their own thread.
- Exit never hangs: every send has a timeout, every close a bounded linger, every handshake a
  deadline, and a dead aggregator is detected through its pid.

See docs/architecture.md for the whole data path.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import zmq

from . import attachment_writer, config, curve, lifecycle, registry, threads, wire
from .channel import LINGER_MS, Channel
from .serialize import pack_records
from .supervisor import Supervisor

FLUSH_INTERVAL = 0.1  # seconds a record may wait in the buffer
KICK_RECORDS = 64  # records that wake the flusher early
FRAME_MAX_RECORDS = 1024
FRAME_MAX_BYTES = 1 << 20  # a frame of more than one record is split above this size
LARGE_RECORD = 4096  # packed records from this size count against max_bytes while buffered
SPOOL_RECORDS = 1024  # dropped records kept before they must be written to the spool dir
IDLE_EXIT = 2.0  # seconds of nothing to do before the flusher thread exits
EXIT_TIMEOUT = 5.0  # how long process exit waits for the aggregator's acknowledgement
WARN_INTERVAL = 10.0  # at most one warning per reason per interval


class _FlushMarker:
    """A flush handshake waiting in the buffer, in order with the records before it."""

    __slots__ = ("token", "level", "done", "error", "seq")

    def __init__(self, token: int, level: int):
        self.token = token
        self.level = level
        self.done = threading.Event()
        self.error: str | None = None
        self.seq = 0  # the last DATA message this handshake covers


# How FlushError names each kind of loss (the counter names' prefixes).
_LOSS_WORDS = (("aggregator_dropped_", "dropped by the aggregator"),
               ("dropped_", "dropped by this process"), ("lost_", "lost"))


def _describe_loss(reason: str, records: int) -> str:
    for prefix, words in _LOSS_WORDS:
        if reason.startswith(prefix):
            return f"{records} {words} ({reason[len(prefix):]})"
    return f"{records} {reason}"


class FlushError(RuntimeError):
    """A flush did not complete (the aggregator is gone, failed to commit, or timed out), or
    records of this process were dropped or lost since the previous flush.

    ``losses`` counts those records by reason (``dropped_<policy>`` here, ``lost_<why>`` on
    the way, ``aggregator_dropped_<policy>`` by the aggregator); each loss is reported by one
    flush only.
    """

    def __init__(self, error: str | None, losses: dict[str, int] | None = None) -> None:
        self.error = error
        self.losses = dict(losses or {})
        parts = [error] if error else []
        if self.losses:
            what = ", ".join(_describe_loss(reason, n)
                             for reason, n in sorted(self.losses.items()))
            parts.append(f"{sum(self.losses.values())} records of this process were dropped or "
                         f"lost since the previous flush ({what})")
        super().__init__("; ".join(parts))


class Recorder:
    """Sends this process's records to one aggregator at ``endpoint``."""

    def __init__(self, endpoint: str, aggregator_pid: int | None = None, owner: bool = False,
                 max_buffer: int = 0, drop_reason: str | None = None, store: str | None = None,
                 aggregator_owner: int | None = None,
                 restart: Callable[[Recorder], int | None] | None = None,
                 spool_dir: str | None = None, max_bytes: int = 0,
                 block_timeout: float = config.BY_NAME["QUEUE_BLOCK_TIMEOUT"].default,
                 server_key: str | None = None, api_url: str | None = None):
        self.endpoint = endpoint
        self.server_key = server_key  # the aggregator's CURVE public key (tcp:// only)
        self.max_buffer = max_buffer  # records; 0 = unbounded
        # Bytes of packed records held until the aggregator has committed them (0: unbounded).
        # Over it, the queue policy applies to new records as for a full buffer.
        self.max_bytes = max_bytes
        # The blocking policy waits at most this long for room; then records are dropped.
        self.block_timeout = block_timeout
        # The queue policy: None blocks the caller while the buffer is full; otherwise the
        # newest record is dropped and counted under this reason.
        self.drop_reason = drop_reason
        # FAILED_PUBLISH_PAYLOADS_DIR: dropped records are written there for tracer
        # import-payloads rather than only counted.
        self.spool_dir = spool_dir
        # Frames of at most a quarter of the bound, and a send high-water mark to match:
        # ZeroMQ's queues count messages, and what sits in them counts against the bound too.
        self._frame_records = min(FRAME_MAX_RECORDS, max(1, max_buffer // 4)) if max_buffer \
            else FRAME_MAX_RECORDS
        hwm = max(2, max_buffer // (4 * self._frame_records)) if max_buffer else None
        self._channel = Channel(endpoint, hwm, server_key)
        self._supervisor = Supervisor(endpoint, aggregator_pid, restart, self._warn)
        self.store = store  # the aggregator's store, when known: needed to restart it
        self.api_url = api_url  # the server it uploads to, if any: needed to restart it too
        # The process whose exit (with every sender gone) ends the aggregator: us, if we
        # started it. A replacement aggregator gets the same owner.
        self.aggregator_owner = os.getpid() if owner else aggregator_owner
        self._tokens = itertools.count(1)
        self._reset()
        registry.register(self)

    @property
    def aggregator_pid(self) -> int | None:
        return self._supervisor.aggregator_pid

    def _reset(self) -> None:
        """Fresh per-process state; runs at construction and in a fork child."""
        self._pid = os.getpid()
        self._buffer: deque = deque()
        # add() wakes the flusher from _kick_at buffered records and applies the queue policy
        # from _block_at: KICK_RECORDS and max_buffer, or 1 and 1 while the bytes held are over
        # max_bytes (set by the flusher, see _update_bounds).
        self._kick_at = KICK_RECORDS
        self._block_at = self.max_buffer or sys.maxsize
        self._shedding = False  # a wait for room timed out: drop at once until there is room
        # Bytes of the large packed records in the buffer (under _count_lock).
        self._buffered_bytes = 0
        self.open_spans: set = set()  # spans started and not yet ended, see _announce
        self._announced: set = set()
        self._recovering = False
        # Re-entrant: a span ended by a GC finalizer (an abandoned stream or generator) can call
        # add() from inside _start_thread on this same thread.
        self._lock = threading.RLock()
        self._starting = False
        self._room = threading.Condition(threading.Lock())
        # Any thread wakes the flusher by writing to this pipe; the flusher polls it together with
        # the socket, so acknowledgements are read the moment they arrive.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._kicked = False
        self._thread: threading.Thread | None = None
        self._poller: zmq.Poller | None = None
        self._polled: zmq.Socket | None = None  # the socket registered with the poller
        self._stepping = threading.Lock()  # one flusher turn at a time (thread or inline)
        self._closing = False
        self._close_deadline = 0.0
        self._closed = False
        self._waiting: dict[int, _FlushMarker] = {}
        self._warned: dict[str, float] = {}
        self.counters: Counter = Counter()  # written by the flusher only
        self._reported: Counter = Counter()  # counters already sent to the aggregator
        # Records dropped by the queue policy, by reason (callers' threads, under _count_lock).
        self._dropped: Counter = Counter()
        self._spool: list[bytes] = []  # dropped records not yet written to spool_dir
        self._dropped_reported: Counter = Counter()
        # This sender's rows the aggregator dropped, as its flush acknowledgements said.
        self._dropped_remotely: Counter = Counter()
        self._losses_reported: Counter = Counter()  # losses a flush already raised about
        # Re-entrant: the SIGTERM handler of a terminated child may interrupt a drop.
        self._count_lock = threading.RLock()
        self._attachments_synced = 0  # attachment files published before our last SYNC

    # -- the caller's side -------------------------------------------------------------------

    def add(self, record: bytes | tuple | object) -> None:
        """Queue one record: packed, or a tuple of values that cannot change, which the flusher
        packs (``serialize.pack_records``), or an object of a type registered with
        ``serialize.register_late_record``, which the flusher makes into a record first. This
        is the hot path: keep it to a few attribute reads."""
        buffer = self._buffer
        buffer.append(record)
        queued = len(buffer)
        if queued >= self._kick_at:
            # Kick once per flusher wake-up (it can take a GIL switch interval to come), and
            # again only when the buffer is full.
            if not self._kicked or queued >= self._block_at:
                self._kick(queued)
        elif self._thread is None:
            self._start_thread()

    def add_packed(self, record: bytes) -> None:
        """``add`` for a record the caller packed (``span.log``, updates): a large one counts
        against ``max_bytes`` from now on, and may make the queue policy apply to it."""
        size = len(record)
        if size >= LARGE_RECORD:
            with self._count_lock:
                self._buffered_bytes += size
            if self.max_bytes and self._held_bytes() >= self.max_bytes:
                self._kick_at = self._block_at = 1
        self.add(record)

    def _held_bytes(self) -> int:
        """Bytes this recorder holds for the aggregator: large records buffered, messages sent
        and not committed (the byte bound)."""
        return self._buffered_bytes + self._channel.unacked_bytes

    def _kick(self, queued: int) -> None:
        if not self._kicked:  # once per flusher wake-up, not per record
            if self._pid != os.getpid():  # forked without our hook (a C-level fork)
                self._forget_parent()
                return
            self._kicked = True
            self._wake()
        if self._thread is None:
            self._start_thread()
        if queued >= self._block_at:
            if self.drop_reason is not None:
                self._drop_newest(self.drop_reason)
            elif self._shedding or not self._wait_for_room():
                self._shed()

    def _shed(self) -> None:
        """The blocking policy's bound: a caller waited ``block_timeout`` seconds and the
        aggregator took nothing. Until it takes records again, new records are dropped at once
        (counted, set aside) rather than each waiting that long again."""
        if not self._shedding:
            self._shedding = True
            self._warn("blocked", f"tracer: the aggregator at {self.endpoint} took no records "
                                  f"for {self.block_timeout:g} s (TRACER_QUEUE_BLOCK_TIMEOUT): "
                                  "new records are dropped until it does")
        self._drop_newest("queue_block_timeout")

    def _drop_newest(self, reason: str) -> None:
        # A drop policy never blocks the caller: the newest record goes, and is counted.
        try:
            item = self._buffer.pop()
        except IndexError:
            return
        if isinstance(item, _FlushMarker):  # a flush marker is never dropped
            self._buffer.append(item)
            return
        with self._count_lock:
            if type(item) is bytes and len(item) >= LARGE_RECORD:
                self._buffered_bytes -= len(item)
            self._dropped[reason] += 1
            if self.spool_dir is not None:
                self._spool.append(item)
                # Written by the flusher each turn; if it is stuck sending, by the caller once
                # in a while, so that the kept copies stay bounded.
                if len(self._spool) < max(SPOOL_RECORDS, self.max_buffer):
                    return
        if self.spool_dir is not None:
            self._write_spool()
            return
        self._warn("dropped", f"tracer: {self._full_what()}: {self._dropped.total()} records "
                              f"dropped so far ({reason})")

    def _full_what(self) -> str:
        if self._block_at < (self.max_buffer or sys.maxsize):
            return f"{self.max_bytes} bytes are held for the aggregator (TRACER_QUEUE_MAX_BYTES)"
        return f"the send buffer is full ({self.max_buffer} records)"

    def _write_spool(self) -> None:
        """Write the dropped records kept so far as one payload file (any thread)."""
        with self._count_lock:
            records, self._spool = self._spool, []
        if not records or self.spool_dir is None:
            return
        try:
            config.write_payload_file(self.spool_dir, self.drop_reason or "queue_block_timeout",
                                      ".records.msgpack", pack_records(records))
        except OSError as exc:
            self._warn("spool", f"tracer: could not write {len(records)} dropped records to "
                                f"{self.spool_dir}: {exc}; they are lost")
            return
        self._warn("dropped", f"tracer: {self._full_what()}: {self._dropped.total()} records "
                              f"dropped so far, written to {self.spool_dir} for tracer "
                              "import-payloads")

    def _wait_for_room(self) -> bool:
        """Blocking policy: wait while the aggregator is alive and busy, at most
        ``block_timeout`` seconds; False if there is still no room then. A dead aggregator
        never blocks the caller (the flusher drops and counts instead)."""
        if threading.current_thread() is self._thread:
            return True
        deadline = time.monotonic() + self.block_timeout
        while len(self._buffer) >= self._block_at and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wake()
            with self._room:
                self._room.wait(min(0.05, remaining))
        return True

    def sync(self, level: int = wire.COMMITTED, timeout: float | None = 30.0) -> None:
        """Wait until the aggregator has received (or committed) everything added so far.

        Raises FlushError on failure or timeout.
        """
        if self._pid != os.getpid():
            self._forget_parent()
        if self._closed:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        # Attachments logged before this point are in the spool before the handshake is sent,
        # so that the aggregator can wait for them too.
        if attachment_writer.pending() and not attachment_writer.drain(timeout):
            raise FlushError(f"flush timed out after {timeout}s writing attachments")
        self._announce_running()
        waiter = _FlushMarker(next(self._tokens), level)
        self._buffer.append(waiter)
        inline = self._thread is None and not self._start_thread()
        self._wake()
        while not waiter.done.is_set():
            if inline:  # no flusher can run (interpreter shutdown): do its work here
                with self._stepping:
                    self._step(0.05)
            else:
                waiter.done.wait(0.05)
            if deadline is not None and time.monotonic() > deadline:
                raise FlushError(f"flush timed out after {timeout}s ({self.endpoint}"
                                 f"{self._key_hint()})", self._new_losses())
        losses = self._new_losses()
        if waiter.error or losses:
            raise FlushError(waiter.error, losses)

    def _announce_running(self) -> None:
        """Before a flush: announce every span still running that was not announced yet, so
        that after the flush its row is there with what it logged (the reference writes as it
        goes), not only once it has run for a while (``_announce``)."""
        fresh = [s for s in list(self.open_spans) if s not in self._announced]
        if fresh:
            self._announced.update(fresh)
            for span in fresh:
                self.add_packed(span.open_record())

    def _new_losses(self) -> dict[str, int]:
        """This process's records dropped or lost since the last flush that said so, by reason;
        a flush raises about them once."""
        with self._count_lock:
            losses = Counter({f"dropped_{reason}": n for reason, n in self._dropped.items()})
            losses.update({name: n for name, n in list(self.counters.items())
                           if name.startswith("lost_")})
            losses.update({f"aggregator_dropped_{reason}": n
                           for reason, n in self._dropped_remotely.items()})
            news = losses - self._losses_reported
            self._losses_reported = losses
        return dict(news)

    def deliver(self, timeout: float) -> None:
        """Make sure the aggregator has received everything added so far (not yet committed).

        Pool workers call this after each task. There is no round trip when nothing was added
        since the last time; a failure is warned about, never raised.
        """
        channel = self._channel
        if not self._buffer and channel.seq == channel.acked_seq \
                and not attachment_writer.pending():
            return
        try:
            self.sync(wire.RECEIVED, timeout)
        except FlushError as exc:
            self._warn("deliver", f"tracer: spans of process {os.getpid()} may be lost: {exc}")

    def in_use(self) -> bool:
        """Whether this recorder has sent or holds anything (a flush has work to wait for)."""
        return self._channel.sock is not None or bool(self._buffer)

    def aggregator_dead(self) -> bool:
        """True when the aggregator's process is gone, or (pid unknown) it has not answered
        for a long while as we wait on it."""
        return self._supervisor.dead(bool(self._channel.unacked or self._waiting),
                                     self._channel.last_reply)

    # -- the flusher thread ------------------------------------------------------------------

    def _start_thread(self) -> bool:
        """Start the flusher unless it runs; False if no thread can be started (Python >= 3.12
        refuses at interpreter shutdown): then ``sync``/``close`` do its work inline."""
        # The first record of a process arms the exit handlers, however soon it then exits.
        lifecycle.arm_exit()
        with self._lock:
            if self._thread is not None or self._starting:  # running, or being started below
                return True
            # A record after this process's exit handler ran (from an atexit handler registered
            # before ours, which runs after it): deliver it at once rather than strand it.
            late = self._closed
            self._closed = self._closing = False
            thread = threading.Thread(target=self._run, name="tracer-flusher", daemon=True)
            self._starting = True
            try:
                threads.start(thread)
            except RuntimeError:
                started = False
            else:
                self._thread = thread
                started = True
            finally:
                self._starting = False
        if late:
            self.close()
        return started

    def _forget_parent(self) -> None:
        """In a fork child: leave the parent's socket, pipe and buffer alone, start afresh."""
        self._channel.forget_parent()
        self._supervisor.reset()
        for fd in (self._wake_r, self._wake_w):  # our copies of the parent's wake pipe
            try:
                os.close(fd)
            except OSError:
                pass
        self._reset()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full: the flusher has plenty of wake-ups waiting
            pass

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            with self._stepping:
                busy = self._step(FLUSH_INTERVAL)
                if self._closing and not self._buffer and not self._waiting:
                    self._finish()
                    return
            now = time.monotonic()
            if busy or self._buffer or self._waiting or self._channel.unacked:
                idle_since = now
            elif now - idle_since > IDLE_EXIT:
                # Exit when idle. Clear _thread before looking at the buffer, under the lock,
                # so a concurrent add() either sees None and starts a new thread or added its
                # record before our look and we stay.
                with self._lock:
                    self._thread = None
                    if not self._buffer:
                        return
                    self._thread = threading.current_thread()

    def _step(self, timeout: float) -> bool:
        """One turn of the flusher's work: wait (at most ``timeout`` s) for a wake-up or a reply,
        send what is buffered, announce long-running spans, read replies, look after the
        aggregator. Returns whether there was anything to do."""
        poller = self._poller
        if poller is None:
            poller = self._poller = zmq.Poller()
            poller.register(self._wake_r, zmq.POLLIN)
        sock = self._channel.sock
        if sock is not self._polled:  # opened, or replaced after a recovery
            if self._polled is not None:
                poller.unregister(self._polled)
            self._polled = sock
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        poller.poll(int(timeout * 1000))
        self._kicked = False
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        try:
            busy = self._send_buffered()
            if self._spool:
                self._write_spool()
            busy = self._announce() or busy
            self._read_replies()
            self._check_aggregator()
            self._update_bounds()
        except Exception as exc:  # never let the flusher die silently
            self._warn("flusher", f"tracer: flusher error: {exc!r}")
            busy = True
        with self._room:
            self._room.notify_all()
        return busy

    def _send_buffered(self) -> bool:
        buffer = self._buffer
        if not buffer:
            return False
        take = buffer.popleft
        channel = self._channel
        while buffer:
            if self.max_bytes and channel.unacked_bytes >= self.max_bytes:
                break  # over the byte bound: wait for commits (the queue policy holds callers)
            if self._closing and time.monotonic() > self._close_deadline:
                self._give_up_buffer()  # exiting, and the aggregator takes nothing: never hang
                break
            if self._buffered_bytes:  # large records among them: a frame's worth of bytes
                items = self._take_frame()
            else:
                items = [take() for _ in range(min(len(buffer), self._frame_records))]
                if self._buffered_bytes:  # a large record came in as they were taken
                    self._uncount(items)
            for item in items:
                if type(item) is _FlushMarker:  # flush markers among them: keep the order
                    self._send_in_order(items)
                    break
            else:
                self._send_records(items)
        return True

    def _take_frame(self) -> list:
        """Records for one frame, at most FRAME_MAX_BYTES of large ones (or one): what the
        flusher holds between the buffer and the channel stays within a frame."""
        buffer, large = self._buffer, 0
        items: list = []
        while buffer and len(items) < self._frame_records and large < FRAME_MAX_BYTES:
            item = buffer.popleft()
            items.append(item)
            if type(item) is bytes and len(item) >= LARGE_RECORD:
                large += len(item)
        with self._count_lock:
            self._buffered_bytes -= large
        return items

    def _uncount(self, items: list) -> None:
        """Large records taken from the buffer no longer count as buffered."""
        large = sum(len(i) for i in items if type(i) is bytes and len(i) >= LARGE_RECORD)
        with self._count_lock:
            self._buffered_bytes -= large

    def _give_up_buffer(self) -> None:
        records = 0
        while self._buffer:
            item = self._buffer.popleft()
            if type(item) is not _FlushMarker:
                records += 1
        with self._count_lock:
            self._buffered_bytes = 0
        self._lose(records, "aggregator_unreachable")

    def _send_records(self, records: list) -> None:
        """Pack and send records as DATA, in frames of at most FRAME_MAX_BYTES (or one record):
        what a frame holds counts against the byte bound until it is committed."""
        body = pack_records(records)
        if len(body) > FRAME_MAX_BYTES and len(records) > 1:
            half = len(records) // 2
            self._send_records(records[:half])
            self._send_records(records[half:])
            return
        self._send_data(body, len(records))

    def _send_in_order(self, items: list) -> None:
        records: list[bytes] = []
        for item in items:
            if isinstance(item, _FlushMarker):
                if records:
                    self._send_records(records)
                    records = []
                self._waiting[item.token] = item
                self._send_sync(item)
            else:
                records.append(item)
        if records:
            self._send_records(records)

    def _send_data(self, body: bytes, records: int, carried: dict | None = None) -> None:
        """Send a DATA message and keep it, with the counts it carries, until the aggregator
        says it is committed. ``carried``: counts of an earlier message resent now."""
        counts = self._unreported()
        if carried:
            counts = dict(Counter(counts) + Counter(carried))
        seq = self._send(wire.DATA, [records, counts] if counts else records, body)
        if seq is None:
            self._lose(records, "aggregator_unreachable")
            return
        self._channel.keep(seq, body, records, counts)
        self.counters["sent"] += records
        if self.max_bytes and self._channel.unacked_bytes >= self.max_bytes:
            self._update_bounds()  # callers feel the byte bound now, not after this turn

    def _send_sync(self, sync: _FlushMarker) -> None:
        sync.seq = self._channel.seq
        arg = [sync.token, sync.level]
        published = attachment_writer.published(self)
        if published != self._attachments_synced:
            # Attachments published since our last handshake: the aggregator's commit flushes
            # then wait for its mover to take them in.
            self._attachments_synced = published
            arg.append(1)
        if self._send(wire.SYNC, arg, b"") is None:
            self._fail_waiting(f"the aggregator at {self.endpoint} is not reachable")

    def _send(self, kind: int, arg: object, body: bytes) -> int | None:
        """Send one message; returns its seq, or None if it cannot be delivered. Blocks while
        the aggregator is alive but not reading (the queue policy); recovers if it died."""
        while True:
            try:
                # Numbered by the channel, after any recovery below has renumbered the stream.
                return self._channel.send(kind, arg, body)
            except zmq.Again:
                if self._closing and time.monotonic() > self._close_deadline:
                    return None
                if self.aggregator_dead() and not self._recover():
                    return None
            except zmq.ZMQError as exc:
                self._warn("send", f"tracer: send to {self.endpoint} failed: {exc}")
                return None

    def _announce(self) -> bool:
        """Send spans that have been running for a while, so a crash leaves a marked row."""
        if not self.open_spans:
            if self._announced:
                self._announced.clear()
            return False
        cutoff = time.time() - FLUSH_INTERVAL
        fresh = [s for s in list(self.open_spans) if s.start < cutoff and s not in self._announced]
        self._announced.intersection_update(self.open_spans)
        if not fresh:
            return False
        self._announced.update(fresh)
        # Through pack_records, as every record that leaves: they carry inputs to mask.
        self._send_data(pack_records([s.open_record() for s in fresh]), 0)
        return True

    def _read_replies(self) -> None:
        acks, replaced = self._channel.read_replies()
        for token, payload in acks:
            if isinstance(payload, dict):  # what the aggregator dropped of ours, and any error
                dropped = payload.get("dropped")
                if isinstance(dropped, dict):
                    with self._count_lock:
                        self._dropped_remotely.update(
                            {str(k): v for k, v in dropped.items() if isinstance(v, int)})
                payload = payload.get("error")
            sync = self._waiting.pop(token, None) if isinstance(token, int) else None
            if sync is None:
                continue
            if payload is None:
                self._channel.acked(sync.seq)
            else:
                sync.error = str(payload)
            sync.done.set()
        if replaced:
            # A replacement aggregator, reached through a silent reconnect, that never saw the
            # start of our stream: what went to its predecessor may be lost. Resend.
            self._recover(replaced=True)

    def _update_bounds(self) -> None:
        """Over the byte bound, the queue policy applies to every new record, as for a full
        buffer; a caller's timed-out wait ends once there is room."""
        over = self.max_bytes and self._held_bytes() >= self.max_bytes
        self._kick_at = 1 if over else KICK_RECORDS
        self._block_at = 1 if over else (self.max_buffer or sys.maxsize)
        if self._shedding and not over and len(self._buffer) < self._block_at:
            self._shedding = False

    def _check_aggregator(self) -> None:
        """While waiting on the aggregator, look now and then whether it is still there."""
        if not (self._channel.unacked or self._waiting) or not self._supervisor.check_due():
            return
        if self.aggregator_dead():
            self._recover()

    def _recover(self, replaced: bool = False) -> bool:
        """The aggregator is gone (or, ``replaced``, another one answers in its place): get a new
        one, reconnect as a new sender and resend what was not committed. Returns False (after
        counting the loss) if no new one can be had."""
        if self._recovering:
            return False
        supervisor, channel = self._supervisor, self._channel
        dead = supervisor.aggregator_pid
        if replaced:  # someone else already started the new one
            pid = supervisor.found_replacement()
        else:
            pid = supervisor.start_replacement(self)
            if pid is None:
                self._lose(channel.unacked_records(), "aggregator_died")
                channel.forget_unacked()
                self._fail_waiting(f"the aggregator at {self.endpoint} is gone"
                                   f"{self._key_hint()}")
                channel.last_reply = time.monotonic()
                return False
        self._recovering = True
        try:
            supervisor.aggregator_pid = pid
            resend = channel.restart_stream()
            for _, body, records, counts in resend:
                self._send_data(body, records, counts)
            for sync in list(self._waiting.values()):
                self._send_sync(sync)
            self._announced.clear()
            resent = sum(entry[2] for entry in resend)
            self.counters["aggregator_restarts"] += 1
            self.counters["resent_after_restart"] += resent
            self._warn("restart", f"tracer: the aggregator at {self.endpoint} (pid {dead}) "
                                  f"died; pid {pid} took over and {resent} records were resent")
        finally:
            self._recovering = False
            channel.last_reply = time.monotonic()
        return True

    def _key_hint(self) -> str:
        # A CURVE handshake that fails (a key the aggregator does not have) shows only as
        # silence: say what to check.
        if curve.applies(self.endpoint, self.server_key):
            return "; or it refuses our CURVE key: check TRACER_AGGREGATOR_KEY"
        return ""

    def _lose(self, records: int, reason: str) -> None:
        if not records:
            return
        self.counters[f"lost_{reason}"] += records
        self._warn(reason, f"tracer: {self.counters[f'lost_{reason}']} records lost so far "
                           f"({reason.replace('_', ' ')}, {self.endpoint})")

    def _fail_waiting(self, error: str) -> None:
        for sync in self._waiting.values():
            sync.error = error
            sync.done.set()
        self._waiting.clear()

    # -- exit ----------------------------------------------------------------------------------

    def close(self, timeout: float = EXIT_TIMEOUT) -> None:
        """Deliver what is buffered, say goodbye and close; never takes much over ``timeout``."""
        if self._pid != os.getpid() or self._closed or self._closing:
            return
        if self._channel.sock is None and not self._buffer:
            self._closed = True
            return
        # Committed, not only received: once this process is gone nobody could resend its
        # records if the aggregator died before committing them.
        try:
            self.sync(wire.COMMITTED, timeout)
        except FlushError as exc:
            print(f"tracer: at exit, {exc}; records not yet committed may be lost",
                  file=sys.stderr)
        self._close_deadline = time.monotonic() + 1.0
        self._closing = True
        if self._thread is None and not self._start_thread():
            with self._stepping:  # no flusher can run: say goodbye from here
                self._finish()
            return
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(LINGER_MS / 1000 + 1.0)
        self._closed = True

    def _finish(self) -> None:
        # On the flusher thread: the only thread that ever touches the socket. The goodbye
        # carries this sender's counters, so losses it counted end up in the aggregator's.
        self._write_spool()
        self._channel.say_goodbye(self._unreported())
        with self._lock:
            self._thread = None
            self._closed = True

    def _unreported(self) -> dict:
        """What this sender counted (losses, drops, resends) and has not told the aggregator
        yet; it rides on the next DATA message or the goodbye. Flusher thread only."""
        news = self.counters - self._reported
        self._reported.update(news)
        counts = {name: n for name, n in news.items() if name != "sent"}
        counts.update(attachment_writer.take_counts(self))
        with self._count_lock:
            dropped = self._dropped - self._dropped_reported
            self._dropped_reported.update(dropped)
        counts.update({f"dropped_{reason}": n for reason, n in dropped.items()})
        return counts

    def _warn(self, reason: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(reason, -WARN_INTERVAL) >= WARN_INTERVAL:
            self._warned[reason] = now
            print(message, file=sys.stderr)


def _forget_parents() -> None:
    """Fork child: every recorder starts afresh (registered with ``lifecycle``)."""
    for recorder in registry.recorders:
        recorder._forget_parent()


lifecycle.on_fork_child(_forget_parents)
