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


class FlushError(RuntimeError):
    """A flush did not complete: the aggregator is gone, failed to commit, or timed out."""


class Recorder:
    """Sends this process's records to one aggregator at ``endpoint``."""

    def __init__(self, endpoint: str, aggregator_pid: int | None = None, owner: bool = False,
                 max_buffer: int = 0, drop_reason: str | None = None, store: str | None = None,
                 aggregator_owner: int | None = None,
                 restart: Callable[[Recorder], int | None] | None = None,
                 spool_dir: str | None = None, server_key: str | None = None):
        self.endpoint = endpoint
        self.server_key = server_key  # the aggregator's CURVE public key (tcp:// only)
        self.max_buffer = max_buffer  # records; 0 = unbounded (never block the caller)
        self._block_at = max_buffer or sys.maxsize
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
        self._dropped = 0  # records dropped by the queue policy (callers' threads)
        self._spool: list[bytes] = []  # dropped records not yet written to spool_dir
        self._dropped_reported = 0
        # Re-entrant: the SIGTERM handler of a terminated child may interrupt a drop.
        self._count_lock = threading.RLock()
        self._attachments_synced = 0  # attachment files published before our last SYNC

    # -- the caller's side -------------------------------------------------------------------

    def add(self, record: bytes | tuple) -> None:
        """Queue one record: packed, or a tuple of values that cannot change, which the flusher
        packs (``serialize.pack_records``). This is the hot path: keep it to a few attribute
        reads."""
        buffer = self._buffer
        buffer.append(record)
        queued = len(buffer)
        if queued >= KICK_RECORDS:
            # Kick once per flusher wake-up (it can take a GIL switch interval to come), and
            # again only when the buffer is full.
            if not self._kicked or queued >= self._block_at:
                self._kick(queued)
        elif self._thread is None:
            self._start_thread()

    def _kick(self, queued: int) -> None:
        if not self._kicked:  # once per flusher wake-up, not per record
            if self._pid != os.getpid():  # forked without our hook (a C-level fork)
                self._forget_parent()
                return
            self._kicked = True
            self._wake()
        if self._thread is None:
            self._start_thread()
        if self.max_buffer and queued >= self.max_buffer:
            if self.drop_reason is None:
                self._wait_for_room()
            else:
                self._drop_newest()

    def _drop_newest(self) -> None:
        # A drop policy never blocks the caller: the newest record goes, and is counted.
        try:
            item = self._buffer.pop()
        except IndexError:
            return
        if isinstance(item, _FlushMarker):  # a flush marker is never dropped
            self._buffer.append(item)
            return
        with self._count_lock:
            self._dropped += 1
            if self.spool_dir is not None:
                self._spool.append(item)
                # Written by the flusher each turn; if it is stuck sending, by the caller once
                # in a while, so that the kept copies stay bounded.
                if len(self._spool) < max(SPOOL_RECORDS, self.max_buffer):
                    return
        if self.spool_dir is not None:
            self._write_spool()
            return
        self._warn("dropped", f"tracer: the send buffer is full ({self.max_buffer} records): "
                              f"{self._dropped} records dropped so far ({self.drop_reason})")

    def _write_spool(self) -> None:
        """Write the dropped records kept so far as one payload file (any thread)."""
        with self._count_lock:
            records, self._spool = self._spool, []
        if not records or self.spool_dir is None:
            return
        try:
            config.write_payload_file(self.spool_dir, self.drop_reason or "dropped",
                                      ".records.msgpack", pack_records(records))
        except OSError as exc:
            self._warn("spool", f"tracer: could not write {len(records)} dropped records to "
                                f"{self.spool_dir}: {exc}; they are lost")
            return
        self._warn("dropped", f"tracer: the send buffer is full ({self.max_buffer} records): "
                              f"{self._dropped} records dropped so far ({self.drop_reason}), "
                              f"written to {self.spool_dir} for tracer import-payloads")

    def _wait_for_room(self) -> None:
        # Blocking policy: the caller waits while the aggregator is alive and busy; a dead
        # aggregator never blocks it (the flusher drops and counts instead).
        if threading.current_thread() is self._thread:
            return
        while len(self._buffer) >= self.max_buffer and not self._closed:
            self._wake()
            with self._room:
                self._room.wait(0.05)

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
                                 f"{self._key_hint()})")
        if waiter.error:
            raise FlushError(waiter.error)

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
        while buffer:
            items = [take() for _ in range(min(len(buffer), self._frame_records))]
            for item in items:
                if type(item) is _FlushMarker:  # flush markers among them: keep the order
                    self._send_in_order(items)
                    break
            else:
                self._send_data(pack_records(items), len(items))
        return True

    def _send_in_order(self, items: list) -> None:
        records: list[bytes] = []
        for item in items:
            if isinstance(item, _FlushMarker):
                if records:
                    self._send_data(pack_records(records), len(records))
                    records = []
                self._waiting[item.token] = item
                self._send_sync(item)
            else:
                records.append(item)
        if records:
            self._send_data(pack_records(records), len(records))

    def _send_data(self, body: bytes, records: int) -> None:
        """Send a DATA message and keep it until the aggregator says it is committed."""
        counts = self._unreported()
        seq = self._send(wire.DATA, [records, counts] if counts else records, body)
        if seq is None:
            self._lose(records, "aggregator_unreachable")
            return
        self._channel.keep(seq, body, records)
        self.counters["sent"] += records

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
        self._send_data(b"".join(s.open_record() for s in fresh), 0)
        return True

    def _read_replies(self) -> None:
        acks, replaced = self._channel.read_replies()
        for token, payload in acks:
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
                channel.unacked.clear()
                self._fail_waiting(f"the aggregator at {self.endpoint} is gone"
                                   f"{self._key_hint()}")
                channel.last_reply = time.monotonic()
                return False
        self._recovering = True
        try:
            supervisor.aggregator_pid = pid
            resend = channel.restart_stream()
            for _, body, records in resend:
                self._send_data(body, records)
            for sync in list(self._waiting.values()):
                self._send_sync(sync)
            self._announced.clear()
            resent = sum(n for _, _, n in resend)
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
        dropped = self._dropped - self._dropped_reported
        if dropped:
            self._dropped_reported += dropped
            counts[f"dropped_{self.drop_reason}"] = dropped
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
