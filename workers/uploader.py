"""The uploader: one thread that takes batches from the queue and writes them to the store.

Batches are bounded by ``DEFAULT_BATCH_SIZE`` rows, ``MAX_REQUEST_SIZE`` bytes and ``MAX_DELAY``
seconds. A failed write is retried ``NUM_RETRIES`` times with exponential backoff and jitter
(interrupted at shutdown); writes merge by row key, so a retried batch never duplicates rows.
A batch given up is counted under ``dropped_sink_failed``.

Payload files (``workers.payloads``): every batch goes to ``ALL_PUBLISH_PAYLOADS_DIR`` before it
is written, and a batch given up to ``FAILED_PUBLISH_PAYLOADS_DIR``, for ``tracer
import-payloads``. A single row larger than ``MAX_REQUEST_SIZE`` is stored with its largest fields
replaced by a marker (``rows.truncate``); its full copy goes to the failed payload dir when set.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

from tracer.config import Settings

from . import payloads
from .queue import Pending, RowQueue
from .rows import row_size, truncate
from .store import StoreWriter

MAX_DELAY = 0.1  # seconds a row waits for its batch to fill
BACKOFF_BASE = 0.05
BACKOFF_MAX = 5.0
RUN_RECORD_INTERVAL = 1.0


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
        self.thread = threading.Thread(target=self._run, name="tracer-uploader", daemon=True)
        self._last_record = 0.0

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while True:
            batch = self.queue.take(self.settings.batch_size, self.settings.max_request_size,
                                    MAX_DELAY)
            if batch is None:
                return
            self._fit(batch)
            if self.settings.all_payloads_dir:
                self._save(self.settings.all_payloads_dir, batch, "batch")
            error = self._write(batch)
            if error is not None and self.settings.failed_payloads_dir:
                self._save(self.settings.failed_payloads_dir, batch, "sink_failed", error)
            try:  # whatever goes wrong here, this thread must go on committing
                self.on_done(self.queue.done(error))
                if time.monotonic() - self._last_record >= RUN_RECORD_INTERVAL:
                    self._last_record = time.monotonic()
                    self.on_idle()
            except Exception as exc:
                self.counters["uploader_errors"] += 1
                print(f"tracer-aggregator: uploader: {exc!r}", file=sys.stderr)

    def _write(self, batch: list) -> str | None:
        retries = self.settings.num_retries
        for attempt in range(retries + 1):
            try:
                self.sink.write(batch)
                self.counters["rows_committed"] += len(batch)
                self.counters["batches_committed"] += 1
                return None
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if attempt == retries or self.stopping.is_set():
                    break
                self.counters["write_retries"] += 1
                delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)
                self.stopping.wait(delay * random.uniform(0.5, 1.5))
        self.counters["dropped_sink_failed"] += len(batch)
        print(f"tracer-aggregator: gave up writing {len(batch)} rows after {attempt + 1} "
              f"attempts: {error}", file=sys.stderr)
        return error

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
