"""The uploader: one thread that takes batches from the queue and writes them to the store.

Batches are bounded by ``DEFAULT_BATCH_SIZE`` rows, ``MAX_REQUEST_SIZE`` bytes and ``MAX_DELAY``
seconds. A write that fails because the store failed (locked, full, unreachable: the store
says which, ``StoreWriter.store_failed``) is retried ``NUM_RETRIES`` times per batch with
exponential backoff and jitter (interrupted at shutdown); writes merge by row key, so a retried
batch never duplicates rows. What is still not written then is counted under
``dropped_sink_failed``. A write that fails because of what is in it (a row whose merge fails)
is split in halves, and the halves written on their own, down to single rows, so that only the
rows that cannot be written are lost: counted under ``dropped_row_failed``. A remote sink may
ask for a wait (HTTP ``Retry-After``, ``StoreWriter.retry_after``): a retry then waits at least
that, with jitter. A remote sink that refuses the writer itself (a bad API key: ``Refused``) is
neither retried nor split: the batch is counted under ``dropped_unauthorized`` (or
``dropped_refused``), set aside, and the refusal, which names the URL and the key by its first
characters, goes to the flushes waiting for it (``tracer.FlushError``).

Payload files (``workers.payloads``): every batch goes to ``ALL_PUBLISH_PAYLOADS_DIR`` before it
is written, and what is given up to ``FAILED_PUBLISH_PAYLOADS_DIR``, for ``tracer
import-payloads``. A single row larger than ``MAX_REQUEST_SIZE`` is stored with its largest fields
replaced by a marker (``rows.truncate``); its full copy goes to the failed payload dir when set.

The thread never dies of an exception: each turn is guarded, and a batch caught in a turn that
failed is given up, counted (``dropped_uploader_error``) and set aside, so that no flush waits
for it forever. A thread that dies anyway (an exception no guard catches) is replaced by the
aggregator's watchdog (``restart``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

from tracer.config import Settings

from . import log, payloads
from .queue import Pending, RowQueue
from .rows import row_size, truncate
from .store import Refused, StoreWriter

MAX_DELAY = 0.1  # seconds a row waits for its batch to fill
BACKOFF_BASE = 0.05
BACKOFF_MAX = 5.0
RUN_RECORD_INTERVAL = 1.0
ERROR_PAUSE = 0.1  # seconds after a failed turn: a fault that repeats must not spin the CPU
LOG_EVERY = 10.0  # seconds between log lines about the same kind of failure


class Uploader:
    """Owns the store's writer: every call to it happens on this thread."""

    def __init__(self, queue: RowQueue, sink: StoreWriter, settings: Settings, counters: Counter,
                 on_done: Callable[[list], None], on_idle: Callable[[], None]) -> None:
        self.queue = queue
        self.sink = sink
        self.settings = settings
        self.counters = counters  # this thread writes only the keys it owns
        self.on_done = on_done
        self.on_idle = on_idle
        self.stopping = threading.Event()  # set to cut retries short at shutdown
        self.thread = self._new_thread()
        self._last_record = 0.0
        self._batch: list[Pending] | None = None  # taken from the queue, not yet reported done

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name="tracer-uploader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def restart(self) -> None:
        """Start a new thread in place of one that died (the aggregator's watchdog)."""
        self.thread = self._new_thread()
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                if self._batch is not None:  # a thread before this one died holding it
                    self._give_up(self._batch, "the uploader thread died writing this batch")
                if not self._turn():
                    return
            except Exception as exc:  # whatever goes wrong, this thread must go on committing
                self.counters["uploader_errors"] += 1
                log.log(f"uploader: {exc!r}", key="uploader", every=LOG_EVERY)
                try:
                    if self._batch is not None:
                        self._give_up(self._batch, f"{type(exc).__name__}: {exc}")
                except Exception as again:
                    log.log(f"uploader: giving up a batch: {again!r}", key="uploader-give-up",
                            every=LOG_EVERY)
                self.stopping.wait(ERROR_PAUSE)

    def _turn(self) -> bool:
        """Take one batch, write it and report it; False once the queue is closed and empty."""
        batch = self.queue.take(self.settings.batch_size, self.settings.max_request_size,
                                MAX_DELAY)
        if batch is None:
            return False
        self._batch = batch
        self._fit(batch)
        if self.settings.all_payloads_dir:
            self._save(self.settings.all_payloads_dir, batch, "batch")
        error = self._write(batch)
        self._batch = None
        self.on_done(self.queue.done(error))
        if time.monotonic() - self._last_record >= RUN_RECORD_INTERVAL:
            self._last_record = time.monotonic()
            self.on_idle()
        return True

    def _give_up(self, batch: list[Pending], error: str) -> None:
        """Report a batch whose fate a failed turn left unknown as given up: counted, set aside
        and its flushes told, so that nothing waits for it."""
        self._batch = None
        self.counters["dropped_uploader_error"] += len(batch)
        try:  # what failed the turn may fail this too: the flushes are told all the same
            if self.settings.failed_payloads_dir:
                self._save(self.settings.failed_payloads_dir, batch, "uploader_error", error)
        finally:
            self.on_done(self.queue.done(error))

    def _write(self, batch: list[Pending]) -> str | None:
        """Write ``batch``; returns why rows of it could not be written (None: all were).

        Pieces are written oldest first. A store failure is retried (``NUM_RETRIES`` for the
        whole batch) and then ends the batch; a failure of a piece's content splits the piece.
        """
        retries = self.settings.num_retries
        attempts = 0
        pieces = [batch]  # a stack: the next piece to write is last
        failed: list[tuple[int, str]] = []  # (rows, error) of the rows that could not be written
        while pieces:
            piece = pieces.pop()
            attempts += 1
            try:
                self.sink.write(piece)
            except Refused as exc:  # the destination refuses us, not these rows: no retry
                rest = [p for left in reversed(pieces) for p in left]
                self._lost(piece + rest, exc.reason, str(exc), attempts)
                failed.append((len(piece) + len(rest), str(exc)))
                break
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if self.sink.store_failed(exc):
                    if retries > 0 and not self.stopping.is_set():
                        retries -= 1
                        self.counters["write_retries"] += 1
                        pieces.append(piece)
                        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (self.settings.num_retries
                                                                      - retries - 1))
                        delay *= random.uniform(0.5, 1.5)
                        asked = self.sink.retry_after(exc)
                        if asked is not None:  # at least what the server asked, spread out
                            self.counters["retry_after_waits"] += 1
                            delay = max(delay, asked * random.uniform(1.0, 1.2))
                        self.stopping.wait(delay)
                        continue
                    rest = [p for left in reversed(pieces) for p in left]
                    self._lost(piece + rest, "sink_failed", error, attempts)
                    failed.append((len(piece) + len(rest), error))
                    break
                if len(piece) > 1:  # the cause is in the rows: write each half on its own
                    self.counters["batch_splits"] += 1
                    middle = len(piece) // 2
                    pieces += [piece[middle:], piece[:middle]]
                    continue
                self._lost(piece, "row_failed", error, attempts)
                failed.append((1, error))
                continue
            self.counters["rows_committed"] += len(piece)
            self.counters["batches_committed"] += 1
        if not failed:
            return None
        lost = sum(rows for rows, _ in failed)
        if lost == len(batch):
            return failed[-1][1]
        return f"{lost} of {len(batch)} rows could not be written: {failed[0][1]}"

    def _lost(self, rows: list[Pending], reason: str, error: str, attempts: int) -> None:
        """Count rows given up, set them aside in the failed payload dir, and say so."""
        self.counters[f"dropped_{reason}"] += len(rows)
        if self.settings.failed_payloads_dir:
            self._save(self.settings.failed_payloads_dir, rows, reason, error)
        what = ("a row that cannot be written" if reason == "row_failed"
                else f"{len(rows)} rows refused" if reason in ("unauthorized", "refused")
                else f"gave up writing {len(rows)} rows after {attempts} attempts")
        log.log(f"{what}: {error}", key=f"lost-{reason}", every=LOG_EVERY)

    def _fit(self, batch: list[Pending]) -> None:
        """Truncate the rows too large for one upload, setting their full copy aside."""
        limit = self.settings.max_request_size
        for p in batch:
            # A wire byte becomes at most 6 JSON bytes (a control character's \u escape) and
            # about one stored byte: only rows that could be over the limit are measured, as
            # read (JSON) and as stored (msgpack, where bytes values keep their size).
            if p.size * 6 <= limit or row_size(p.row) <= limit:
                continue
            saved = None
            if self.settings.failed_payloads_dir:
                saved = self._save(self.settings.failed_payloads_dir, [p], "oversized")
            p.row = truncate(p.row, limit, saved)
            self.counters["rows_truncated"] += 1

    def _save(self, directory: str, batch: list[Pending], reason: str,
              error: str | None = None) -> str | None:
        return payloads.save(directory, [(p.container, p.row) for p in batch], reason,
                             self.counters, error)
