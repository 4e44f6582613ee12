"""The trace server's write path: batches of rows from uploading aggregators (and the other
ingest routes: OpenTelemetry, the reference's HTTP API) merged into the server's store.

One ``Ingest`` per server. It owns one ``StoreWriter`` (``open_store`` of the server's store:
a SQLite path, made if missing, or a PostgreSQL URL), used by one thread only, the *writer
thread*, which applies what was submitted in order, one job at a time: a batch of rows is one
``StoreWriter.write`` (one transaction: all of it or none), and its submitter is answered
once it is committed. Between the endpoints and that thread is a queue bounded in rows
(``max_rows``: the batches waiting plus the one being written): a batch that would overflow
it is refused at once (``IngestFull``) rather than waited for, so a slow store turns into
``429 Retry-After`` for the uploaders, which back off, never into unbounded memory here.

The Python API. Each call waits until the writer thread is done with its job, at most
``timeout`` seconds. The plain methods block their thread (for a sync caller, or one in a worker
thread); an async endpoint uses the ``*_async`` ones, which check the rows in a worker thread
(``run_in_threadpool``) and wait for the commit on the event loop without holding a thread (so
many uploads waiting on a slow store never take the thread pool from the viewer's endpoints):

- ``submit(entries, timeout, projects)`` / ``await submit_async(...)`` (or in two steps:
  ``check(entries, projects)`` in a worker thread, then ``await write_async(batch)``):
  ``(container, row)`` pairs (a ``rows.Container`` or a container key as on the wire) checked
  (``check_batch``), then written whole; returns how many rows were committed. Raises
  ``BadBatch`` (a row that is not one, with its index: nothing is written), ``NotAllowed`` (a
  row of a project the key may not write), ``IngestFull`` (the queue is full: try again after
  ``retry_after`` seconds), ``IngestUnavailable`` (the store failed, or the write took longer
  than ``timeout``, or the server is stopping: try again after ``retry_after``).
- ``record_run(run_id, info, counters, ended)`` (``record_run_async``) and
  ``record_attachment(key, ...)``: the ``StoreWriter`` calls of the same names, through the
  same thread (same exceptions); ``record_attachments(records)``
  (``record_attachments_async``): several in one job, each a dict of
  ``record_attachment``'s arguments, every stored one naming a blob the server has
  (``MissingBlob`` otherwise).
- ``has_blob(sha256)``, ``put_blob(sha256, chunks, max_bytes)`` (or ``blob_writer`` for a body
  that arrives in pieces): the store's content-addressed blob area
  (``tracer.attachments.blob_path``: beside a SQLite store, in ``config.local_path``'s
  directory for a PostgreSQL one), written 0600 aside, fsync'd, then renamed into place, once
  its SHA-256 is checked (``BlobRefused`` 400 on a mismatch, 413 over ``max_bytes``). Files,
  not the store: these run on the caller's thread.

Every batch refused is counted by reason (``counters``: ``refused_full``,
``refused_unavailable``, ``refused_bad``, ``refused_timeout``, ...) alongside
``rows_committed`` and ``batches_committed``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable
from typing import Any

from starlette.concurrency import run_in_threadpool

from tracer import attachments, config, threads

from ..rows import BadRecord, Container, Key, check_row
from ..store import STORE_ERRORS, StoreError, StoreWriter, open_store

#: Rows the queue holds (waiting, and being written) by default: ``tracer serve --ingest-queue``.
DEFAULT_QUEUE_ROWS = 100_000
#: How long a submitter waits for its batch to be committed by default (seconds). Below the
#: uploaders' read timeout (30 s), so that they hear why rather than time out.
DEFAULT_WAIT = 25.0
#: ``Retry-After`` seconds for a full queue, and for a store that failed.
RETRY_FULL = 1
RETRY_UNAVAILABLE = 2
#: Characters of a container key.
MAX_CONTAINER_KEY = 4096


class IngestError(Exception):
    """What keeps a job of the write path from being done; ``status`` is its HTTP status."""

    status = 500


class BadBatch(IngestError):
    """A row that cannot be stored (``index``: its place in the batch; None when the store
    refused the batch as a whole for what it holds). Nothing of the batch was written."""

    status = 400

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


class NotAllowed(IngestError):
    """A row of a project the key may not write (``index``: the first such row). Nothing of
    the batch was written."""

    status = 403

    def __init__(self, project: str, index: int) -> None:
        super().__init__(f"row {index}: this key may not write to project {project!r:.200}")
        self.project = project
        self.index = index


class IngestFull(IngestError):
    """The write queue has no room for the batch: nothing was written; try again after
    ``retry_after`` seconds."""

    status = 429

    def __init__(self, retry_after: int, message: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IngestUnavailable(IngestError):
    """The store failed (locked, unreachable, full), the write took too long, or the server is
    stopping; try again after ``retry_after`` seconds. Nothing was written, except after a
    timeout while the batch was being written (``maybe_applied``): it may have been committed
    since, and writing it again changes nothing."""

    status = 503

    def __init__(self, retry_after: int, message: str, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.maybe_applied = maybe_applied


class MissingBlob(IngestError):
    """An attachment recorded as stored names a blob the server does not have: nothing of the
    request was recorded; upload the blob first (``PUT /api/v1/blobs/{sha256}``)."""

    status = 409

    def __init__(self, sha256: str, index: int) -> None:
        super().__init__(f"attachment {index}: no blob {sha256} on this server: PUT it to "
                         f"/api/v1/blobs/{sha256} first")
        self.sha256 = sha256
        self.index = index


class BlobRefused(IngestError):
    """A blob not stored: its bytes do not have the digest named (400), or are over the limit
    (413, ``limit``)."""

    def __init__(self, status: int, message: str, limit: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.limit = limit


SHA256 = re.compile(r"[0-9a-f]{64}")


class BlobWriter:
    """One blob arriving in pieces: ``write`` each, then ``commit`` (or ``abort``). The bytes go
    to a private temporary file beside where the blob belongs, hashed as they come; ``commit``
    checks the digest, fsyncs and renames the file into place."""

    def __init__(self, path: str, sha256: str, max_bytes: int) -> None:
        self.path = path
        self.sha256 = sha256
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        directory = os.path.dirname(path)
        attachments.make_private(directory)
        self._temporary = os.path.join(directory, f".{sha256}.{secrets.token_hex(8)}.tmp")
        self._file = os.fdopen(config.open_private(
            self._temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb")

    def write(self, data: bytes) -> None:
        """Add ``data``; ``BlobRefused`` (413) once the blob is over ``max_bytes`` (the
        temporary file is removed)."""
        self.size += len(data)
        if self.size > self.max_bytes:
            self.abort()
            raise BlobRefused(413, f"the blob is over {self.max_bytes} bytes, the most this "
                                   "server takes (--max-blob)", self.max_bytes)
        self._hash.update(data)
        self._file.write(data)

    def commit(self) -> bool:
        """Check the digest (``BlobRefused`` 400) and put the blob in place: True if it is new,
        False if the server had it already."""
        try:
            if self._hash.hexdigest() != self.sha256:
                raise BlobRefused(400, f"the body's SHA-256 is {self._hash.hexdigest()}, not "
                                       f"{self.sha256}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if os.path.exists(self.path):
                return False
            os.replace(self._temporary, self.path)
            _fsync_directory(os.path.dirname(self.path))
            return True
        finally:
            self.abort()

    def abort(self) -> None:
        """Let go of the temporary file (nothing stored)."""
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self._temporary)
        except FileNotFoundError:
            pass


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Update:
    """One row of a batch for ``StoreWriter.write`` (a ``RowUpdate``)."""

    __slots__ = ("container", "key", "row")

    def __init__(self, container: Container, row: dict) -> None:
        self.container = container
        self.key: Key = (container.id, row["id"])
        self.row = row


def container_of(key: object, cache: dict[str, Container] | None = None) -> Container:
    """The container a key names (as ``rows.Container`` parses it); ValueError saying why
    not."""
    if isinstance(key, Container):
        return key
    if type(key) is not str:
        raise ValueError("container: must be a container key (a string)")
    if cache is not None and key in cache:
        return cache[key]
    if len(key) > MAX_CONTAINER_KEY:
        raise ValueError(f"container: at most {MAX_CONTAINER_KEY} characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("container: not valid text") from None
    try:
        container = Container(key)
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"container: {exc}") from None
    if cache is not None:
        cache[key] = container
    return container


def check_batch(entries: Iterable[tuple[Container | str, object]],
                projects: Collection[str] | None = None) -> list[Update]:
    """The batch as the store writes it: each ``(container, row)`` checked (the container key
    parses, the row is one: ``rows.check_row``), the row's container columns
    (``project_id``, ``log_id`` / ``experiment_id``) set from its container, as the aggregator
    sets them. ``projects``: the project names the rows may belong to (None: any). Raises
    ``BadBatch`` or ``NotAllowed`` for the first row that fails."""
    cache: dict[str, Container] = {}
    batch = []
    for index, (key, row) in enumerate(entries):
        try:
            container = container_of(key, cache)
            check_row(row)
        except (BadRecord, ValueError) as exc:
            raise BadBatch(f"row {index}: {exc}", index) from None
        assert isinstance(row, dict)
        if projects is not None and container.project_name not in projects:
            raise NotAllowed(container.project_name, index)
        row.update(container.columns)
        batch.append(Update(container, row))
    return batch


Work = Callable[[StoreWriter], Any]


def _recorder(records: list[dict]) -> Work:
    """The writer thread's job for attachment records."""
    def work(writer: StoreWriter) -> None:
        for record in records:
            writer.record_attachment(**record)
    return work


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class _Job:
    """One call for the writer thread, and its outcome."""

    __slots__ = ("rows", "work", "what", "wake", "state", "done", "result", "error")

    def __init__(self, rows: int, work: Work, what: str,
                 wake: Callable[[], None] | None = None) -> None:
        self.rows = rows  # its weight in the queue's bound
        self.work = work
        self.what = what  # for messages: "a batch of 12 rows"
        self.wake = wake  # called once it is done (an async waiter's loop woken)
        self.state = "queued"  # then "running", "done"; or "cancelled" while queued
        self.done = threading.Event()
        self.result: Any = None
        self.error: IngestError | None = None


class Ingest:
    """The server's write path over the store at ``store`` (see the module)."""

    def __init__(self, store: str, max_rows: int = DEFAULT_QUEUE_ROWS, *,
                 opener: Callable[[str], StoreWriter] = open_store) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows}: at least 1")
        self.store = store
        self.max_rows = max_rows
        self.counters: Counter = Counter()
        self._count_lock = threading.Lock()
        self._opener = opener
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._held = 0  # rows of the jobs queued and running
        self._closed = False
        self._thread: threading.Thread | None = None
        self._writer: StoreWriter | None = None  # the writer thread's only
        self._last_log: dict[str, float] = {}

    # -- the API ---------------------------------------------------------------------------

    def submit(self, entries: Iterable[tuple[Container | str, object]],
               timeout: float = DEFAULT_WAIT,
               projects: Collection[str] | None = None) -> int:
        """Check the ``(container, row)`` pairs and write them whole; how many rows were
        committed (see the module for what it raises)."""
        batch = self.check(entries, projects)
        if not batch:
            return 0
        self._call(len(batch), lambda writer: writer.write(batch),
                   f"a batch of {len(batch)} rows", timeout)
        self.count("batches_committed", 1)
        self.count("rows_committed", len(batch))
        return len(batch)

    def check(self, entries: Iterable[tuple[Container | str, object]],
              projects: Collection[str] | None = None) -> list[Update]:
        """``check_batch``, counting what it refuses (CPU work: off the event loop)."""
        try:
            return check_batch(entries, projects)
        except BadBatch:
            self.count("refused_bad")
            raise
        except NotAllowed:
            self.count("refused_forbidden")
            raise

    async def write_async(self, batch: list[Update], timeout: float = DEFAULT_WAIT,
                          what: str | None = None) -> int:
        """Write a batch ``check`` made, whole, waiting on the event loop (no thread held)
        until it is committed; how many rows (``what``: the batch for messages). Raises as
        ``submit`` does."""
        if not batch:
            return 0
        await self._call_async(len(batch), lambda writer: writer.write(batch),
                               what or f"a batch of {len(batch)} rows", timeout)
        self.count("batches_committed")
        self.count("rows_committed", len(batch))
        return len(batch)

    async def submit_async(self, entries: Iterable[tuple[Container | str, object]],
                           timeout: float = DEFAULT_WAIT,
                           projects: Collection[str] | None = None) -> int:
        """``submit`` for an async endpoint: the rows checked in a worker thread, the commit
        waited for on the event loop."""
        batch = await run_in_threadpool(self.check, entries, projects)
        return await self.write_async(batch, timeout)

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False,
                   timeout: float = DEFAULT_WAIT) -> None:
        """``StoreWriter.record_run`` on the writer thread."""
        self._call(1, lambda writer: writer.record_run(run_id, info, counters, ended),
                   f"run {run_id!r:.80}", timeout)

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None,
                          timeout: float = DEFAULT_WAIT) -> None:
        """``StoreWriter.record_attachment`` on the writer thread."""
        self._call(1, lambda writer: writer.record_attachment(
            key, sha256=sha256, size=size, filename=filename, content_type=content_type,
            error=error, source=source, logged=logged), f"attachment {key!r:.80}", timeout)

    async def record_run_async(self, run_id: str, info: dict, counters: dict,
                               ended: bool = False, timeout: float = DEFAULT_WAIT) -> None:
        """``record_run``, waiting on the event loop."""
        await self._call_async(1, lambda writer: writer.record_run(run_id, info, counters, ended),
                               f"run {run_id!r:.80}", timeout)

    def record_attachments(self, records: list[dict], timeout: float = DEFAULT_WAIT) -> int:
        """``record_attachment`` for each record (a dict of its arguments), in one job; a record
        without ``error`` must name a blob the server has (``MissingBlob`` for the first that
        does not, and nothing is recorded). Returns how many were recorded."""
        self._check_blobs(records)
        self._call(max(1, len(records)), _recorder(records),
                   f"{len(records)} attachment records", timeout)
        self.count("attachments_recorded", len(records))
        return len(records)

    async def record_attachments_async(self, records: list[dict],
                                       timeout: float = DEFAULT_WAIT) -> int:
        """``record_attachments``, waiting on the event loop."""
        await run_in_threadpool(self._check_blobs, records)
        await self._call_async(max(1, len(records)), _recorder(records),
                               f"{len(records)} attachment records", timeout)
        self.count("attachments_recorded", len(records))
        return len(records)

    def _check_blobs(self, records: list[dict]) -> None:
        for index, record in enumerate(records):
            if record.get("error") is None and not self.has_blob(str(record.get("sha256"))):
                self.count("refused_missing_blob")
                raise MissingBlob(str(record.get("sha256")), index)

    def blob_path(self, sha256: str) -> str:
        """Where the blob of this SHA-256 (64 lower-case hex digits) is, or would be;
        ValueError for anything that is not a digest (no path comes from a client)."""
        if not SHA256.fullmatch(sha256):
            raise ValueError(f"{sha256[:80]!r}: not a SHA-256 (64 lower-case hex digits)")
        return attachments.blob_path(self.store, sha256)

    def has_blob(self, sha256: str) -> bool:
        """Whether the server has the blob of this SHA-256 (False for what is not one)."""
        try:
            return os.path.isfile(self.blob_path(sha256))
        except ValueError:
            return False

    def blob_writer(self, sha256: str, max_bytes: int) -> BlobWriter:
        """A ``BlobWriter`` for the blob ``sha256`` (ValueError if it is not a digest)."""
        return BlobWriter(self.blob_path(sha256), sha256, max_bytes)

    def put_blob(self, sha256: str, chunks: Iterable[bytes], max_bytes: int) -> bool:
        """Store the blob whose bytes ``chunks`` are; True if new, False if the server had it
        (see ``BlobWriter``)."""
        if self.has_blob(sha256):
            return False
        writer = self.blob_writer(sha256, max_bytes)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        created = writer.commit()
        self.count("blobs_stored" if created else "blobs_deduplicated")
        return created

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (any thread)."""
        with self._count_lock:
            self.counters[name] += n

    def snapshot(self) -> dict:
        """The counters, and the rows held now (``queue_rows``) and its bound
        (``queue_max_rows``): what ``/api/stats`` shows as ``ingest``."""
        with self._count_lock:
            counters = dict(self.counters)
        return {"counters": counters, "queue_rows": self.held(),
                "queue_max_rows": self.max_rows}

    def held(self) -> int:
        """Rows queued and being written now."""
        with self._cond:
            return self._held

    def close(self, timeout: float = 30) -> None:
        """Stop: the job being written is finished (``timeout`` seconds at most), the queued
        ones are answered ``IngestUnavailable``, the store is let go of."""
        with self._cond:
            self._closed = True
            while self._jobs:
                job = self._jobs.popleft()
                self._held -= job.rows
                self._finish(job, error=IngestUnavailable(
                    RETRY_UNAVAILABLE, "the trace server is stopping"))
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            writer, self._writer = self._writer, None
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # closing at exit: nothing left to tell
                    pass

    # -- the queue -------------------------------------------------------------------------

    def _call(self, rows: int, work: Work, what: str, timeout: float) -> Any:
        job = self._enqueue(rows, work, what)
        if not job.done.wait(timeout):
            self._timed_out(job, timeout)
        return self._outcome(job)

    async def _call_async(self, rows: int, work: Work, what: str, timeout: float) -> Any:
        """``_call`` for the event loop: the wait holds no thread (the writer thread wakes the
        loop when the job is done)."""
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def wake() -> None:  # on the writer thread (or a closing one)
            loop.call_soon_threadsafe(_resolve, finished)

        job = self._enqueue(rows, work, what, wake)
        try:
            await asyncio.wait_for(asyncio.shield(finished), timeout)
        except asyncio.TimeoutError:
            self._timed_out(job, timeout)
        return self._outcome(job)

    def _enqueue(self, rows: int, work: Work, what: str,
                 wake: Callable[[], None] | None = None) -> _Job:
        job = _Job(rows, work, what, wake)
        with self._cond:
            if self._closed:
                self.count("refused_stopping")
                raise IngestUnavailable(RETRY_UNAVAILABLE, "the trace server is stopping")
            # A batch larger than the whole queue is taken when the queue is empty: refusing it
            # would refuse it forever.
            if self._held and self._held + rows > self.max_rows:
                self.count("refused_full")
                raise IngestFull(RETRY_FULL, f"the server's write queue is full ({self._held} "
                                             f"rows waiting; --ingest-queue {self.max_rows})")
            self._jobs.append(job)
            self._held += rows
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tracer-ingest-writer",
                                                daemon=True)
                threads.start(self._thread)
            self._cond.notify_all()
        return job

    def _timed_out(self, job: _Job, timeout: float) -> None:
        """A job not done within ``timeout``: taken back if it has not started (nothing
        written), and either way answered ``IngestUnavailable``; unless it finished just now."""
        with self._cond:
            if job.state == "queued":  # never started: taken back, nothing written
                job.state = "cancelled"
                self._jobs.remove(job)
                self._held -= job.rows
                self._cond.notify_all()
            state = job.state
        if state == "done":
            return
        self.count("refused_timeout")
        if state == "cancelled":
            raise IngestUnavailable(RETRY_UNAVAILABLE, f"{job.what} waited {timeout:g}s for the "
                                    "store and was not written")
        raise IngestUnavailable(
            RETRY_UNAVAILABLE, f"{job.what} was still being written after {timeout:g}s: it may "
            "be committed; writing it again changes nothing", maybe_applied=True)

    @staticmethod
    def _outcome(job: _Job) -> Any:
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return  # closed
                job = self._jobs.popleft()
                job.state = "running"
            result: Any = None
            error: IngestError | None = None
            try:
                result = job.work(self._open())
            except Exception as exc:  # answered to its submitter, whatever it is
                error = self._failure(job, exc)
            with self._cond:
                self._held -= job.rows
                self._finish(job, result, error)
                self._cond.notify_all()

    def _open(self) -> StoreWriter:
        if self._writer is None:
            self._writer = self._opener(self.store)
            self._writer.on_replaced = self._replaced
        return self._writer

    def _replaced(self, why: str, committed: int) -> None:
        """The store file was removed or replaced under the server (what it had committed
        there went with it): counted and said; the next write makes a new store."""
        self.count("store_replaced")
        where = config.without_password(self.store)
        self._log("replaced", f"the store at {where} was {why}: the {committed} rows and "
                              "records this server had written there went with it", every=0.0)

    def _failure(self, job: _Job, exc: Exception) -> IngestError:
        """What to answer for a job that raised ``exc``: the store failing as a whole is
        ``IngestUnavailable``; anything else is in what was written (``BadBatch``)."""
        writer = self._writer
        failed = (writer is None or isinstance(exc, OSError)
                  or (isinstance(exc, StoreError) and exc.failed)
                  or writer.store_failed(exc))
        if failed:
            self.count("refused_unavailable", 1)
            self._log("store", f"the store failed writing {job.what}: "
                               f"{type(exc).__name__}: {exc}")
            return IngestUnavailable(RETRY_UNAVAILABLE, f"the store failed: "
                                     f"{type(exc).__name__}: {exc}")
        self.count("refused_by_store", 1)
        self._log("refused", f"the store refused {job.what}: {type(exc).__name__}: {exc}")
        if not isinstance(exc, STORE_ERRORS + (ValueError, TypeError, OverflowError)):
            self.count("ingest_internal_errors", 1)
        return BadBatch(f"the store refused {job.what}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _finish(job: _Job, result: Any = None, error: IngestError | None = None) -> None:
        job.result, job.error, job.state = result, error, "done"
        job.done.set()
        if job.wake is not None:
            try:
                job.wake()
            except RuntimeError:  # the waiting loop is closed: nobody to answer
                pass

    def _log(self, key: str, message: str, every: float = 10.0) -> None:
        """One line on stderr, at most once per ``every`` seconds for a ``key``."""
        now = time.monotonic()
        if now - self._last_log.get(key, -every) < every:
            self.count("log_lines_suppressed", 1)
            return
        self._last_log[key] = now
        try:
            print(f"tracer serve: {message}", file=sys.stderr, flush=True)
        except Exception:  # a log must never stop the writer
            pass
