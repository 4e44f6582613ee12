"""The per-process span recorder: a buffer, one lazy ZeroMQ socket and one small flusher thread.

The caller's thread only appends an already packed record to a deque (see ``Recorder.add``).
A daemon flusher thread, started on first use and again after fork, turns the buffer into DATA
messages at least every ``FLUSH_INTERVAL`` (or as soon as ``KICK_RECORDS`` are waiting), announces
spans that are still running, and carries flush handshakes. It exits when it has had nothing to do
for ``IDLE_EXIT`` seconds and is started again by the next record.

Fork: the child must never touch the parent's ZeroMQ context or socket (ZeroMQ is not fork-safe).
An ``os.register_at_fork`` hook gives every recorder fresh state in the child (new buffer - the
inherited one belongs to the parent -, new locks, new wake pipe, no socket, no thread, a new
sender generation); the socket is reopened lazily, and a pid check in ``_kick`` and ``sync``
covers a fork that bypassed the hook. Children leave through ``os._exit``: multiprocessing
children run the ``multiprocessing.util.Finalize`` registered by the first record of a process,
and in a bare ``os.fork()`` child the hook wraps ``os._exit`` itself to deliver first. At
interpreter shutdown, where Python >= 3.12 starts no thread, ``sync`` and ``close`` do the
flusher's work on their own thread.

Nothing is lost when the aggregator dies: every DATA message is kept until the aggregator says
it is committed (``COMMITTED_UPTO``). If the aggregator's process is gone, the recorder starts a
new one (or finds the one another process started), reconnects as a new sender and resends what
was not committed; row merges are idempotent, so a resent record never duplicates a row. Where no
new aggregator can be had, the loss is counted and warned about.

Exit never hangs: every send has a timeout, every close a bounded linger, every handshake a
deadline, and a dead aggregator is detected through its pid.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import zmq

from . import attachment_writer, config, threads, wire
from .ids import reseed_after_fork
from .serialize import pack_records

FLUSH_INTERVAL = 0.1  # seconds a record may wait in the buffer
KICK_RECORDS = 64  # records that wake the flusher early
FRAME_MAX_RECORDS = 1024
SPOOL_RECORDS = 1024  # dropped records kept before they must be written to the spool dir
IDLE_EXIT = 2.0  # seconds of nothing to do before the flusher thread exits
SEND_TIMEOUT_MS = 500  # a blocked send re-checks that the aggregator is alive this often
LINGER_MS = 1000  # how long close() lets ZeroMQ deliver what is still queued
EXIT_TIMEOUT = 5.0  # how long process exit waits for the aggregator's acknowledgement
TERMINATE_TIMEOUT = 2.0  # how long a terminated multiprocessing child delivers before dying
MISSED_SIGNAL_GRACE = 0.5  # seconds a SIGTERM handler has to start before it is re-sent
WARN_INTERVAL = 10.0  # at most one warning per reason per interval
CHECK_INTERVAL = 0.5  # how often the flusher checks the aggregator while it waits on it
MAX_RESTARTS = 3  # replacement aggregators started per RESTART_WINDOW seconds, at most
RESTART_WINDOW = 60.0
UNRESPONSIVE = 30.0  # an aggregator whose pid we do not know is taken for dead after this

_HOST = socket.gethostname()
_recorders: list[Recorder] = []


class _Sync:
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
                 spool_dir: str | None = None):
        self.endpoint = endpoint
        self.aggregator_pid = aggregator_pid
        self.max_buffer = max_buffer  # records; 0 = unbounded (never block the caller)
        self._block_at = max_buffer or sys.maxsize
        # The queue policy: None blocks the caller while the buffer is full; otherwise the
        # newest record is dropped and counted under this reason.
        self.drop_reason = drop_reason
        # FAILED_PUBLISH_PAYLOADS_DIR: dropped records are written there for tracer
        # import-payloads rather than only counted.
        self.spool_dir = spool_dir
        # Frames of at most a quarter of the bound: ZeroMQ's queues count messages, and what
        # sits in them counts against the bound too (design point 8).
        self._frame_records = min(FRAME_MAX_RECORDS, max(1, max_buffer // 4)) if max_buffer \
            else FRAME_MAX_RECORDS
        self.store = store  # the aggregator's store, when known: needed to restart it
        # The process whose exit (with every sender gone) ends the aggregator: us, if we
        # started it. A replacement aggregator gets the same owner.
        self.aggregator_owner = os.getpid() if owner else aggregator_owner
        self._restart = restart  # starts a replacement aggregator; returns its pid
        self._tokens = itertools.count(1)
        self._reset()
        _recorders.append(self)

    def _reset(self) -> None:
        """Fresh per-process state; runs at construction and in a fork child."""
        self._pid = os.getpid()
        self._gen = int.from_bytes(os.urandom(4), "big")
        self._buffer: deque = deque()
        self.open_spans: set = set()  # spans started and not yet ended, see _announce
        self._announced: set = set()
        self._seq = 0
        self._acked_seq = 0  # the aggregator has received every DATA message up to this one
        self._unacked: deque = deque()  # (seq, body, records) sent and not known committed
        self._last_reply = time.monotonic()
        self._checked = 0.0
        self._recovering = False
        self._restarts: deque = deque()  # when we started replacement aggregators
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
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
        self._waiting: dict[int, _Sync] = {}
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
        if isinstance(item, _Sync):  # a flush marker is never dropped
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
        if not records:
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
        waiter = _Sync(next(self._tokens), level)
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
                raise FlushError(f"flush timed out after {timeout}s ({self.endpoint})")
        if waiter.error:
            raise FlushError(waiter.error)

    def deliver(self, timeout: float) -> None:
        """Make sure the aggregator has received everything added so far (not yet committed).

        Pool workers call this after each task. There is no round trip when nothing was added
        since the last time; a failure is warned about, never raised.
        """
        if not self._buffer and self._seq == self._acked_seq and not attachment_writer.pending():
            return
        try:
            self.sync(wire.RECEIVED, timeout)
        except FlushError as exc:
            self._warn("deliver", f"tracer: spans of process {os.getpid()} may be lost: {exc}")

    def aggregator_dead(self) -> bool:
        """True when the aggregator's process is gone, or (pid unknown) it has not answered
        for ``UNRESPONSIVE`` seconds while we wait on it."""
        if self.aggregator_pid is not None:
            return not process_alive(self.aggregator_pid)
        waiting = self._unacked or self._waiting
        return bool(waiting) and time.monotonic() - self._last_reply > UNRESPONSIVE

    # -- the flusher thread ------------------------------------------------------------------

    def _start_thread(self) -> bool:
        """Start the flusher unless it runs; False if no thread can be started (Python >= 3.12
        refuses at interpreter shutdown): then ``sync``/``close`` do its work inline."""
        # The first record of a process arms the exit handlers, however soon it then exits.
        _register_exit()
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
        if self._sock is not None:
            _inherited_zmq.append((self._ctx, self._sock))
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
            if busy or self._buffer or self._waiting or self._unacked:
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
        if self._sock is not self._polled:  # opened, or replaced after a recovery
            if self._polled is not None:
                poller.unregister(self._polled)
            self._polled = self._sock
            if self._sock is not None:
                poller.register(self._sock, zmq.POLLIN)
        poller.poll(timeout * 1000)
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

    def _ensure_open(self) -> zmq.Socket:
        if self._sock is not None:
            return self._sock
        self._ctx = zmq.Context(io_threads=1)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, 20)
        if self.max_buffer:
            # What sits in ZeroMQ's queue counts against the bound too (design point 8).
            sock.setsockopt(zmq.SNDHWM, max(2, self.max_buffer // (4 * self._frame_records)))
        sock.connect(self.endpoint)
        self._sock = sock
        return sock

    def _send_buffered(self) -> bool:
        buffer = self._buffer
        if not buffer:
            return False
        take = buffer.popleft
        while buffer:
            items = [take() for _ in range(min(len(buffer), self._frame_records))]
            for item in items:
                if type(item) is _Sync:  # flush markers among them: send in order around them
                    self._send_in_order(items)
                    break
            else:
                self._send_data(pack_records(items), len(items))
        return True

    def _send_in_order(self, items: list) -> None:
        records: list[bytes] = []
        for item in items:
            if isinstance(item, _Sync):
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
        self._unacked.append((seq, body, records))
        self.counters["sent"] += records

    def _send_sync(self, sync: _Sync) -> None:
        sync.seq = self._seq
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
            sock = self._ensure_open()
            # Numbered here, after any recovery inside this loop has renumbered the stream.
            seq = self._seq + 1 if kind == wire.DATA else self._seq
            head = wire.header(kind, (_HOST, self._pid, self._gen), seq, arg)
            try:
                sock.send_multipart([head, body])
            except zmq.Again:
                if self._closing and time.monotonic() > self._close_deadline:
                    return None
                if self.aggregator_dead() and not self._recover():
                    return None
                continue
            except zmq.ZMQError as exc:
                self._warn("send", f"tracer: send to {self.endpoint} failed: {exc}")
                return None
            self._seq = seq
            return seq

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
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                kind, token, payload, first_seq = wire.unpack_reply(msg)
            except ValueError:
                continue
            self._last_reply = time.monotonic()
            if self._seq and first_seq != 1:
                # A replacement aggregator, reached through a silent reconnect, that never saw
                # the start of our stream: what went to its predecessor may be lost. Resend.
                self._recover(replaced=True)
                return
            if kind == wire.COMMITTED_UPTO:
                unacked = self._unacked
                while unacked and unacked[0][0] <= token:
                    unacked.popleft()
                self._acked_seq = max(self._acked_seq, token)
            elif kind == wire.ACK:
                sync = self._waiting.pop(token, None)
                if sync is not None:
                    if payload is None:
                        self._acked_seq = max(self._acked_seq, sync.seq)
                    sync.error = payload
                    sync.done.set()

    def _check_aggregator(self) -> None:
        """While waiting on the aggregator, look now and then whether it is still there."""
        if not (self._unacked or self._waiting):
            return
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        if self.aggregator_dead():
            self._recover()

    def _recover(self, replaced: bool = False) -> bool:
        """The aggregator is gone (or, ``replaced``, another one answers in its place): get a new
        one, reconnect as a new sender and resend what was not committed. Returns False (after
        counting the loss) if no new one can be had."""
        if self._recovering:
            return False
        dead = self.aggregator_pid
        if replaced:  # someone else already started the new one: find its pid, if we can
            pid = _pid_file_of(self.endpoint) or self.aggregator_pid
        else:
            pid = None
            if self._restart is not None and self._may_restart():
                pid = self._restart(self)
            if pid is None:
                self._lose(sum(n for _, _, n in self._unacked), "aggregator_died")
                self._unacked.clear()
                self._fail_waiting(f"the aggregator at {self.endpoint} is gone")
                self._last_reply = time.monotonic()
                return False
        self._recovering = True
        try:
            self.aggregator_pid = pid
            self._close_socket(linger=0)
            self._gen = int.from_bytes(os.urandom(4), "big")
            self._seq = self._acked_seq = 0
            resend, self._unacked = list(self._unacked), deque()
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
            self._last_reply = time.monotonic()
        return True

    def _may_restart(self) -> bool:
        """At most MAX_RESTARTS replacements a minute: an aggregator that dies as it starts (a
        broken interpreter, say) is given up on rather than restarted in a loop."""
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

    def _close_socket(self, linger: int) -> None:
        sock, ctx = self._sock, self._ctx
        self._sock = self._ctx = None
        if sock is not None:
            sock.close(linger=linger)
        if ctx is not None:
            ctx.term()

    # -- exit ----------------------------------------------------------------------------------

    def close(self, timeout: float = EXIT_TIMEOUT) -> None:
        """Deliver what is buffered, say goodbye and close; never takes much over ``timeout``."""
        if self._pid != os.getpid() or self._closed or self._closing:
            return
        if self._sock is None and not self._buffer:
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
        if self._sock is not None:
            try:
                self._sock.send_multipart([wire.header(wire.BYE, (_HOST, self._pid, self._gen),
                                                       self._seq, self._unreported()), b""],
                                          zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self._close_socket(linger=LINGER_MS)
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


_exit_registered_pid = 0


def _register_exit() -> None:
    """Arrange for every recorder of this process to be closed when the process ends."""
    global _exit_registered_pid
    if _exit_registered_pid == os.getpid():
        return
    _exit_registered_pid = os.getpid()
    atexit.register(close_all)
    # A process that ends in os._exit (fork children of multiprocessing, billiard, bare forks)
    # runs no atexit handler: deliver first there too.
    os._exit = _exit_delivering
    import multiprocessing.util

    # multiprocessing children end in os._exit: atexit never runs there, but their finalizers do.
    multiprocessing.util.Finalize(None, close_all, exitpriority=100)
    _deliver_on_terminate()


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

    if (os.environ.get("TRACER_DELIVER_ON_TERMINATE", "1").lower() in ("0", "false", "no", "off")
            or multiprocessing.parent_process() is None
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return
    if _watch_for_missed_signals():  # else the default action: a loss beats a hang
        signal.signal(signal.SIGTERM, _terminated)


# The signal wakeup pipe (read end, write end) of this process's SIGTERM handler, once installed.
_signal_pipe: tuple[int, int] | None = None
_terminating = False  # the handler has started


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
            if not _terminating:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            return


def _terminated(signum: int, frame: object) -> None:
    global _terminating
    _terminating = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    deadline = time.monotonic() + TERMINATE_TIMEOUT  # for all recorders together
    try:
        for recorder in list(_recorders):
            recorder.close(max(0.1, deadline - time.monotonic()))
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


def close_all() -> None:
    """Close every recorder of this process (idempotent)."""
    for recorder in list(_recorders):
        recorder.close()


def deliver_all(timeout: float) -> None:
    """Hand everything this process recorded so far to the aggregators (received, not yet
    committed); never raises. For code that ends units of work in a process that may be killed
    right after (pool workers, Celery tasks)."""
    for recorder in list(_recorders):
        recorder.deliver(timeout)


def sync_all(level: int = wire.COMMITTED, timeout: float | None = 30.0) -> None:
    """Flush every recorder of this process."""
    for recorder in list(_recorders):
        if recorder._sock is not None or recorder._buffer:
            recorder.sync(level, timeout)


# The parent's ZeroMQ objects as a fork child inherited them. The child must never use them, and
# letting them be garbage-collected makes pyzmq warn about unclosed sockets (it skips the close in
# a child by itself), so they are kept here, untouched, until the child exits.
_inherited_zmq: list = []


def _pid_file_of(endpoint: str) -> int | None:
    if not endpoint.startswith("ipc://"):
        return None
    from .launcher import read_pid_file  # launcher imports this module

    return read_pid_file(endpoint[len("ipc://") :])


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
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


_real_exit = os._exit


def _exit_delivering(code: int) -> None:
    """``os._exit`` in fork children: deliver this process's spans first (bounded), then exit.

    A child made with a bare ``os.fork()`` that ends in ``os._exit`` runs no atexit handler and
    no finalizer: this is the only place its last spans can still be sent from.
    """
    try:
        close_all()
    except BaseException:
        pass
    _real_exit(code)


def _after_fork_in_child() -> None:
    # Never log or take locks here: other threads of the parent do not exist in the child.
    global _exit_registered_pid, _signal_pipe, _terminating
    _exit_registered_pid = 0
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
    for recorder in _recorders:
        recorder._forget_parent()
    if _recorders:
        os._exit = _exit_delivering
    reseed_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
