"""The aggregator: one process that receives the spans of a whole process tree (or fleet).

    wire -> aggregator (receive, decode, records to rows) -> queue -> uploader thread -> store

The receiving loop below is the only user of the ROUTER socket. It decodes each message (counting
and skipping anything malformed: garbage never crashes it), follows each sender's sequence
numbers (``senders``), turns records into partial rows (``rows``, ``media``: each record checked,
and one that cannot become a row rejected, counted against its sender and set aside, so it
costs no other), and puts them on the bounded queue (``queue``); while the queue is full it
stops reading, so ZeroMQ's high-water marks fill and the senders block (the default policy).
The uploader thread commits batches (``uploader``); the replies owed to senders go back from
here (``acks``).

Whoever can reach the socket can send anything (``curve``: over tcp:// a secret key admits only
those who know its public key): messages are bounded in size before they are read, headers and
records checked before they count, and malformed input logged at most once per ``LOG_EVERY``
per kind. ZeroMQ's socket monitor counts handshakes refused and connections closed.

Supervision (``supervision``): a sender on this host that dies leaves its still-running spans
marked with an error; an aggregator started by ``init_logger`` exits once its owner and every
sender are gone and everything is committed; the uploader or attachment mover thread, should
one die, is started again. Its counters: ``stats``. Every thread logs through ``log``, which
never raises: no turn of the receiving loop, the uploader or the mover ends a thread with an
exception, it is counted and the loop goes on.

Run ``python -m workers.aggregator --help`` (or ``tracer aggregator --help``).
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from tracer import config, wire
from tracer.processes import read_pid_file, write_pid_file

from . import curve, log, media, payloads, stats
from .acks import Acks, Marker
from .attachments import AttachmentMover
from .queue import RowQueue
from .rows import CHECK_DEPTH_FROM, BadRecord, Container, check_depth, merge, now_iso, record_to_row
from .senders import Sender, Senders
from .store import StoreWriter, open_store
from .supervision import Supervisor, revive
from .uploader import Uploader

SUPERVISE_INTERVAL = 0.25
IDLE_EXIT = 1.0  # seconds without traffic, owner and senders gone, before exiting
MAX_BURST = 512  # messages read per loop turn before acks and supervision get a turn
DROP_WARN_INTERVAL = 10.0  # seconds between warnings about dropped rows
GC_THRESHOLD = 100_000  # allocations between collections of the youngest generation (700)
LOG_EVERY = 10.0  # seconds between log lines about the same kind of failure
ERROR_PAUSE = 0.05  # seconds after a failed turn of the receiving loop
MAX_CONTAINERS = 10_000  # container keys resolved and cached; the cache starts over past it
# ZeroMQ's socket monitor events counted, by name.
_MONITORED: dict[int, str] = {zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshakes_failed",
                               zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshakes_failed",
                               zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshakes_failed",
                               zmq.EVENT_DISCONNECTED: "peer_disconnects"}


class Aggregator:
    """Receives from recorders on ``bind`` and commits to the store at ``store`` (``run``)."""

    def __init__(self, bind: str, store: str, owner: int | None = None,
                 settings: config.Settings | None = None, idle_exit: float = IDLE_EXIT,
                 secret_key: bytes | None = None) -> None:
        self.bind = bind
        self.secret_key = secret_key  # CURVE (``curve``): only key holders get a frame in
        self.store = store
        self.owner = owner
        self.settings = settings or config.load()
        self.this_run = stats.Run(bind, store, owner)
        self.counters: Counter = Counter()
        log.attach(self.counters)
        self.senders = Senders(self.counters)
        # Over ipc every peer is on this host, whatever host its header claims.
        self.supervisor = Supervisor(owner, bind.startswith("ipc://"), idle_exit, self.counters)
        self.containers: dict[str, Container] = {}
        # The queue policy: block (drop_reason None: stop reading while full, so senders
        # block), or drop new rows beyond the bound and count them under drop_reason.
        bound, self.drop_reason = config.queue_policy(self.settings)
        self.queue = RowQueue(bound, hold=self.settings.sync_flush,
                              max_bytes=self.settings.queue_max_bytes)
        self.dropped = payloads.DroppedRows(self.settings.failed_payloads_dir, self.drop_reason,
                                            self.settings.batch_size, self.counters)
        self.rejected = payloads.RejectedRecords(self.settings.failed_payloads_dir,
                                                 self.counters)
        self.stopping = False
        self.last_traffic = time.monotonic()
        self._drop_warned = -DROP_WARN_INTERVAL
        # Set by run(): the uploader and mover threads wake the receiving loop through it.
        self._waker: zmq.Socket | None = None
        self._waker_lock = threading.Lock()
        # Attachments have their own thread, store writer and retries: they never hold rows back.
        self.mover = AttachmentMover(store, self.settings, self.counters, self._wake)
        self.acks = Acks(lambda: self.mover.completed)
        self.inline_limit = self.settings.max_inline_base64  # longer base64: an attachment
        # Attachments were published to the spool (a sender said so) or pulled out of rows since
        # the mover was last asked for a scan; a commit flush then waits for the mover too, as
        # it waits for every row queued before it, whoever sent them.
        self._attachments_new = False
        self._scan_due = 0  # the mover's scan the next commit flushes wait for
        self.uploader: Uploader | None = None  # set by run()

    # -- main loop -------------------------------------------------------------------------------

    def run(self) -> int:
        """Receive and commit until stopped (a signal, or the owner and senders gone); then
        commit what is left and exit. Returns the exit status."""
        sink = open_store(self.store)
        sink.on_replaced = self._store_replaced
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 500)
        if self.queue.max_rows:  # what waits in ZeroMQ counts against the bound too
            router.setsockopt(zmq.RCVHWM, 4)
        # A larger frame closes its connection before it is read: memory stays bounded.
        router.setsockopt(zmq.MAXMSGSIZE, self.settings.max_message_size)
        if self.secret_key is not None:
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        monitor = router.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_DISCONNECTED)
        router.bind(self.bind)
        if self.bind.startswith("ipc://"):  # recorders look here to see whether we live
            write_pid_file(self.bind[len("ipc://"):], os.getpid())
        wake = ctx.socket(zmq.PAIR)
        wake.bind("inproc://uploader-wake")
        waker = self._waker = ctx.socket(zmq.PAIR)
        waker.connect("inproc://uploader-wake")

        def on_done(finished: list) -> None:  # uploader thread
            self.acks.completed(finished)
            if finished:
                self._wake()

        uploader = self.uploader = Uploader(self.queue, sink, self.settings, self.counters,
                                            on_done, lambda: self._record_run(sink))
        self._record_run(sink)  # before the uploader starts: one thread at a time in the sink
        uploader.start()
        self.mover.start()
        self._info(f"listening on {self.bind}, store {self.store}")

        reading = zmq.Poller()
        reading.register(router, zmq.POLLIN)
        reading.register(wake, zmq.POLLIN)
        reading.register(monitor, zmq.POLLIN)
        blocked = zmq.Poller()  # while the queue is full: wait for commits only
        blocked.register(wake, zmq.POLLIN)
        blocked.register(monitor, zmq.POLLIN)
        next_supervise = time.monotonic()
        while not self.stopping:
            try:  # a turn that fails is counted; the loop, and every sender, goes on
                poller = blocked if self._must_wait() else reading
                events = dict(poller.poll(int(SUPERVISE_INTERVAL * 1000)))
                if router in events:
                    self._receive(router)
                if wake in events:
                    while wake.poll(0):
                        wake.recv()
                if monitor in events:
                    self._count_events(monitor)
                self.acks.send(router)
                if time.monotonic() >= next_supervise:
                    next_supervise = time.monotonic() + SUPERVISE_INTERVAL
                    self._supervise()
            except Exception as exc:
                self.counters["receive_loop_errors"] += 1
                log.log(f"receiving loop: {exc!r}", key="receive-loop", every=LOG_EVERY)
                time.sleep(ERROR_PAUSE)  # a fault that repeats must not spin the CPU

        # Shutdown: take in what is already queued on the socket, then drain and commit. Each
        # step is guarded: one that fails must not keep the others from saving what they can.
        self._step("receiving the last messages", lambda: self._receive(router, until_empty=True))
        self._step("saving dropped rows", self.dropped.save)
        self._step("saving rejected records", self.rejected.save)
        self.queue.close()
        uploader.thread.join(60)
        uploader.stopping.set()
        uploader.thread.join(5)
        self._step("stopping the attachment mover", self.mover.stop)
        self._step("sending replies", lambda: self.acks.send(router))
        if uploader.thread.is_alive():  # stuck in the sink: leave the connection to it
            log.log(f"exiting with {self.queue.depth()} rows uncommitted: the store does not "
                    "answer")
        else:
            self._record_run(sink, ended=True)
            self._step("closing the store", sink.close)
        router.disable_monitor()
        monitor.close(linger=0)
        router.close(linger=500)
        wake.close(linger=0)
        waker.close(linger=0)
        ctx.term()
        self._step("removing the socket's files", self._remove_files)
        self._info(f"exiting: {stats.summary(self.counters)}")
        log.drain()
        return 0

    def _step(self, what: str, step: Callable[[], object]) -> None:
        """One step of the shutdown; a failure is counted and logged, and the next step runs."""
        try:
            step()
        except Exception as exc:
            self.counters["shutdown_errors"] += 1
            log.log(f"{what}: {exc!r}")

    def _store_replaced(self, why: str, committed: int) -> None:
        """The uploader's writer found the store removed or replaced (its thread, or the
        mover's); what it had committed there went with the old file."""
        self.counters["store_replaced"] += 1
        self.counters["rows_in_replaced_store"] += committed
        log.log(f"the store {self.store} was {why} while in use: {committed} rows committed "
                "to the old file by this aggregator went with it; a new store is started at "
                "the same path for everything not yet committed")

    def _wake(self) -> None:
        """Wake the receiving loop: the uploader and attachment mover threads call this once
        replies may be due."""
        waker = self._waker
        if waker is None:  # not serving yet: nothing waits
            return
        with self._waker_lock:
            try:
                waker.send(b"", zmq.NOBLOCK)
            except zmq.Again:  # wake-ups already pending: the loop will see the acks
                pass

    def _record_run(self, sink: StoreWriter, ended: bool = False) -> None:
        try:
            sink.record_run(self.this_run.run_id, self.this_run.info(), self.stats(), ended)
        except Exception as exc:  # the store is unusable: rows still go to retries and payloads
            self.counters["run_record_errors"] += 1
            log.log(f"could not record this run in {self.store}: {exc!r}", key="run-record",
                    every=60.0)

    def _remove_files(self) -> None:
        """Remove our ipc socket and its pid and lock files, unless a successor owns them."""
        if not self.bind.startswith("ipc://"):
            return
        path = self.bind[len("ipc://"):]
        if read_pid_file(path) not in (None, os.getpid()):
            return
        for name in (path, path + ".pid", path + ".lock"):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass

    def _info(self, message: str) -> None:
        # An aggregator started by init_logger (its stderr is aggregator.log beside the store)
        # notes its start and exit only when asked; problems are always written.
        if self.owner is None or self.settings.debug:
            log.log(message)

    def stop(self, *_: object) -> None:
        """Stop serving (a signal handler)."""
        self.stopping = True

    def _count_events(self, monitor: zmq.Socket) -> None:
        """Count what ZeroMQ's socket monitor saw: handshakes refused (a peer without our CURVE
        public key, or one speaking plain to a CURVE socket), connections closed (a message over
        ``TRACER_MAX_MESSAGE_SIZE`` closes its connection before it is read)."""
        while monitor.poll(0):
            frames = monitor.recv_multipart()
            event = int.from_bytes(frames[0][:2], "little")  # the event id, then a 32-bit value
            name = _MONITORED.get(event)
            if name is not None:
                self.counters[name] += 1
            if name == "handshakes_failed":
                address = frames[1].decode("utf-8", "replace") if len(frames) > 1 else "?"
                log.log(f"refused a connection that failed the handshake (no or the wrong "
                        f"CURVE key) on {address}", key="handshake", every=LOG_EVERY)

    def _receive(self, router: zmq.Socket, until_empty: bool = False) -> None:
        for _ in range(MAX_BURST if not until_empty else 1 << 30):
            if self._must_wait() and not until_empty:
                return
            try:
                parts = router.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self.last_traffic = time.monotonic()
            if len(parts) != 3:
                self.counters["bad_messages"] += 1
                continue
            try:
                self._handle(router, parts[0], parts[1], parts[2])
            except Exception as exc:  # a bug or hostile input must not stop the aggregator
                self._bad_message(f"could not be handled: {exc!r:.300}")

    def _must_wait(self) -> bool:
        """The blocking policy's back-pressure: while the queue is full, stop reading."""
        return self.drop_reason is None and self.queue.full()

    def _bad_message(self, why: str) -> None:
        self.counters["bad_messages"] += 1
        log.log(f"ignored a malformed message: {why}", key="bad-message", every=LOG_EVERY)

    def _handle(self, router: zmq.Socket, identity: bytes, head: bytes, body: bytes) -> None:
        try:
            kind, host, pid, gen, seq, arg = wire.unpack_header(head)
        except wire.VersionMismatch:
            self.counters["bad_version"] += 1
            return
        except ValueError as exc:
            self._bad_message(str(exc))
            return
        # Every check before the sender is looked up: a malformed message creates no sender.
        if kind == wire.DATA:
            if seq < 1:
                self._bad_message("a DATA message numbered 0")
                return
            sender = self.senders.heard(host, pid, gen)
            self.senders.numbered(sender, seq)
            if isinstance(arg, list) and len(arg) == 2:  # [records, what the sender counted]
                self.senders.reported(sender, arg[1])
            self.counters["messages"] += 1
            self.counters["bytes"] += len(body)
            self._apply_records(body, sender)
            # Tell the sender once this message is committed: until then it keeps a copy.
            self._mark((wire.COMMITTED_UPTO, identity, seq, sender.first_seq, None))
        elif kind == wire.SYNC:
            # [token, level, attachments published since?]
            if not (isinstance(arg, list) and 2 <= len(arg) <= 3 and type(arg[0]) is int
                    and type(arg[1]) is int and arg[1] in (wire.RECEIVED, wire.COMMITTED)):
                self._bad_message("a SYNC whose argument is not [token, level]")
                return
            token, level = arg[0], arg[1]
            sender = self.senders.heard(host, pid, gen)
            self.counters["syncs"] += 1
            if len(arg) > 2 and arg[2]:
                self._attachments_new = True
            marker = (wire.ACK, identity, token, sender.first_seq,
                      self._dropped_since_flush(sender))
            if level == wire.RECEIVED:
                self.acks.owe(marker)
            else:
                if self._attachments_new:
                    self._attachments_new = False
                    self._scan_due = self.mover.request()
                if self.mover.completed < self._scan_due:
                    self.acks.after_scan(identity, token, self._scan_due)
                self._mark(marker)
        elif kind == wire.BYE:
            sender = self.senders.heard(host, pid, gen)
            sender.closed = True
            self.counters["senders_closed"] += 1
            self.senders.reported(sender, arg)
            self._abandon(sender, f"process {pid} exited before the span ended")
        elif kind == wire.STATS:  # a question (tracer stats), not a sender of spans
            router.send_multipart([identity, wire.reply(wire.STATS_REPLY, arg, self.stats())])
        else:
            self._bad_message(f"unknown kind {kind!r:.20}")

    def _put(self, items: list, sender: Sender) -> None:
        """Queue a message's partial rows; under a drop policy, count and set aside those the
        full queue refuses."""
        refused = self.queue.put_many(items, self.drop_reason is not None)
        if refused:
            self.counters[f"dropped_{self.drop_reason}"] += len(refused)
            sender.dropped += len(refused)
            sender.dropped_here += len(refused)
            self._warn_drops()
            # set aside for tracer import-payloads
            self.dropped.extend((container, partial)
                                for _key, partial, _size, container in refused)

    def _dropped_since_flush(self, sender: Sender) -> dict[str, int] | None:
        """The sender's rows this aggregator dropped since its previous flush, told with the
        flush's acknowledgement (its rows are refused in order, before the flush is read)."""
        news = sender.dropped_here - sender.dropped_told
        if not news:
            return None
        sender.dropped_told = sender.dropped_here
        return {str(self.drop_reason): news}

    def _warn_drops(self) -> None:
        now = time.monotonic()
        if now - self._drop_warned >= DROP_WARN_INTERVAL:
            self._drop_warned = now
            log.log(f"queue full ({self.queue.max_rows} rows): "
                    f"{self.counters[f'dropped_{self.drop_reason}']} rows dropped so far")

    def _apply_records(self, body: bytes, sender: Sender) -> None:
        unpacker = wire.record_unpacker(max_buffer_size=max(len(body), 1))
        unpacker.feed(body)
        created = now_iso()
        images = media.may_hold_images(body)  # most bodies: no record needs a look
        items: list = []  # (key, partial row, size, container) for the queue
        apply = self._apply
        start = received = 0
        while True:
            try:
                record = next(unpacker)
            except StopIteration:
                if start < len(body):  # a body is always whole: leftover bytes are truncated
                    received += 1
                    self._reject(sender, "truncated", "the body ends inside a record",
                                 body[start:])
                break
            except Exception:
                # This record cannot be decoded (not UTF-8, an extension type refused, nested
                # too deep...): find where each of the rest starts without decoding them, and
                # decode them one by one, so that it costs no other.
                received += self._apply_framed(body, start, sender, created, images, items)
                break
            received += 1
            end = unpacker.tell()
            try:
                items.append(apply(record, sender, end - start, created,
                                   images and media.hinted(body, start, end)))
            except BadRecord as exc:
                self._reject(sender, exc.reason, str(exc), body[start:end])
            except Exception as exc:  # anything else a record could do to us
                self._reject(sender, "malformed", repr(exc), body[start:end])
            start = end
        sender.records += received
        self.counters["records"] += received
        self._put(items, sender)

    def _apply_framed(self, body: bytes, start: int, sender: Sender, created: str,
                      images: bool, items: list) -> int:
        """``_apply_records`` from ``start`` on, one record at a time; returns how many records
        (or runs of bytes that are not one) were met."""
        frames, stop = wire.frame_records(body, start)
        view = memoryview(body)
        for begin, end in frames:
            try:
                record = wire.unpack_record(view[begin:end])
            except Exception as exc:
                self._reject(sender, "undecodable", repr(exc), body[begin:end])
                continue
            try:
                items.append(self._apply(record, sender, end - begin, created,
                                         images and media.hinted(body, begin, end)))
            except BadRecord as exc:
                self._reject(sender, exc.reason, str(exc), body[begin:end])
            except Exception as exc:
                self._reject(sender, "malformed", repr(exc), body[begin:end])
        if stop < len(body):  # not msgpack from here on: one run of bytes, rejected whole
            self._reject(sender, "unframeable", "bytes that are not msgpack records",
                         body[stop:])
            return len(frames) + 1
        return len(frames)

    def _reject(self, sender: Sender, reason: str, why: str, data: bytes) -> None:
        """A record that cannot become a row: counted (``bad_records``, by reason, and against
        its sender) and set aside; it never joins a batch, so it costs no other record."""
        self.counters["bad_records"] += 1
        self.counters[f"bad_record_{reason}"] += 1
        sender.rejected += 1
        self.rejected.add(data)
        log.log(f"rejected a record from {sender.host}:{sender.pid} ({reason}): {why:.300}",
                key="bad-record", every=LOG_EVERY)

    def _apply(self, record: Any, sender: Sender, size: int, created: str,
               images: bool = False) -> tuple:
        """One record as ``(key, partial row, size, container)`` for the queue; raises
        BadRecord (or anything else) for one that cannot become a row."""
        container, row_id, partial = record_to_row(record, self._container)
        if size >= CHECK_DEPTH_FROM:  # smaller records cannot nest too deep to be stored
            check_depth(partial)
        large = self.inline_limit and size > self.inline_limit
        if images or large:
            adopt = self.mover.adopt if large else None
            if media.mark_and_extract(partial, mark_images=images,
                                      extract_over=self.inline_limit, adopt=adopt):
                self._attachments_new = True
                self.counters["attachments_extracted"] += 1
        key = (container.id, row_id)
        if record[0] == wire.SPAN_END:
            if sender.open:
                self.senders.ended(sender, key)
        elif record[0] == wire.SPAN_OPEN:  # closed with an error if its process dies first
            self.senders.track_open(sender, key, container, dict(partial), size)
        partial["created"] = created
        return key, partial, size, container

    def _container(self, key: str) -> Container:
        container = self.containers.get(key)
        if container is None:
            if len(self.containers) >= MAX_CONTAINERS:  # keys are anyone's to make up
                self.containers.clear()
            container = self.containers[key] = Container(key)
        return container

    def _mark(self, marker: Marker) -> None:
        """Reply once every row queued before now is committed (see ``acks``)."""
        urgent = marker[0] == wire.ACK  # a flush; a COMMITTED_UPTO notice can wait
        self.acks.completed(self.queue.mark(marker, urgent))

    # -- supervision -----------------------------------------------------------------------------

    def _supervise(self) -> None:
        self.dropped.save()
        self.rejected.save()
        if self.uploader is not None:  # a thread of ours that died anyway is started again
            revive({"uploader": self.uploader, "attachments": self.mover}, self.counters)
        for sender, reason in self.supervisor.dead_senders(self.senders):
            self._abandon(sender, reason)
        if self.supervisor.may_exit(self.senders, self.last_traffic):
            self.stopping = True

    def _abandon(self, sender: Sender, reason: str) -> None:
        """Close the spans a sender left running, marked with an error."""
        for key, container, partial in self.senders.take_open(sender):
            row = dict(partial)
            row["error"] = reason
            merge(row, {"metrics": {"end": sender.last_seen}})
            self.queue.put(key, row, 256, container)
            self.counters["spans_marked_unfinished"] += 1

    # -- reporting -------------------------------------------------------------------------------

    def stats(self) -> dict:
        """The counters, as ``tracer stats`` shows them (any thread)."""
        return stats.stats(self.this_run, self.counters, self.queue, self.senders.snapshot(),
                           self.drop_reason or "block")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tracer aggregator",
        description="Run an aggregator: receive spans from recorders and commit them to a store.",
    )
    p.add_argument("--bind", default="tcp://127.0.0.1:5557",
                   help="ZeroMQ endpoint to listen on (default: %(default)s). Point recorders "
                        "at it with TRACER_ENDPOINT or init_logger(endpoint=...). Anything but "
                        "loopback needs --secret-key (or --insecure).")
    p.add_argument("--store", default=None,
                   help="SQLite path, sqlite:///path or postgresql://... (default: "
                        "TRACER_STORE or "
                        ".tracer/traces.db)")
    p.add_argument("--secret-key", metavar="FILE",
                   help="the aggregator's secret key file (mode 0600, from `tracer keys "
                        "curve`): only senders given its public key (TRACER_AGGREGATOR_KEY) "
                        "can connect, and the traffic is encrypted (ZeroMQ CURVE). tcp:// only")
    p.add_argument("--insecure", action="store_true",
                   help="allow a bind beyond loopback without --secret-key: anyone who can "
                        "reach the port can write rows into any project")
    p.add_argument("--owner", type=int, default=None,
                   help="pid whose exit (with all senders gone) ends the aggregator; "
                        "set by init_logger, omit for a standalone aggregator")
    p.add_argument("--idle-exit", type=float, default=IDLE_EXIT, help=argparse.SUPPRESS)
    return p


def check_bind(bind: str, secret_key_file: str | None, insecure: bool) -> bytes | None:
    """The CURVE secret key to serve ``bind`` with (None: plain). Raises ValueError for a bind
    beyond loopback without a key (unless ``insecure``), or a key on anything but tcp://; warns
    on stderr about a bind beyond loopback that is insecure."""
    if secret_key_file is not None:
        if not bind.startswith("tcp://"):
            raise ValueError(f"--secret-key applies to tcp:// endpoints, not {bind}: an ipc:// "
                             "socket is protected by its directory's permissions")
        return curve.read_secret(secret_key_file)[1]
    if not curve.loopback(bind):
        if not insecure:
            raise ValueError(f"--bind {bind} is reachable from other hosts: anyone who can "
                             "connect could write rows into any project. Give --secret-key "
                             "FILE (make one with `tracer keys curve`), or --insecure to accept "
                             "that")
        log.log(f"WARNING: listening on {bind} without a secret key (--insecure): anyone who "
                "can reach it can send spans into any project, and traffic is not encrypted")
    return None


def main(argv: list[str] | None = None) -> int:
    """Run an aggregator (``tracer aggregator ARGV...``); returns the exit status: 0, or 2 for
    a refused configuration (said on stderr)."""
    args = parser().parse_args(argv)
    try:  # a malformed variable, --store or key, a bind that needs a key: status 2, said why
        settings = config.load()
        store = (config.store_path(args.store, "--store") if args.store is not None
                 else config.store_path(settings.store, "TRACER_STORE"))
        secret_key = check_bind(args.bind, args.secret_key, args.insecure)
    except ValueError as exc:
        print(f"tracer aggregator: {exc}", file=sys.stderr)
        return 2
    if config.is_postgres(store):
        # The store URL is said in the log, in the run's record and to whoever asks for stats:
        # it must not hold the password, which libpq finds in PGPASSWORD instead.
        store, password = config.split_password(store)
        if password is not None:
            os.environ["PGPASSWORD"] = password
    aggregator = Aggregator(args.bind, store, args.owner, settings, args.idle_exit, secret_key)
    # The rows waiting in the queue are thousands of small dicts that hold no cycles; with the
    # default thresholds the collector scanned them every few hundred allocations (12% of the
    # receiving thread's samples under load). Refcounting frees them; collect rarely.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 50)
    signal.signal(signal.SIGTERM, aggregator.stop)
    signal.signal(signal.SIGINT, aggregator.stop)
    # A thread that dies anyway is said so through the one log that cannot fail (the default
    # hook prints to stderr, which may be a full disk); the watchdog starts it again.
    threading.excepthook = _thread_died
    return aggregator.run()


def _thread_died(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "a thread"
    log.log(f"{name} died: {args.exc_type.__name__}: {args.exc_value!r}")


if __name__ == "__main__":
    sys.exit(main())
