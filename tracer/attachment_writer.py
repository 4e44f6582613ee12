"""The attachment writer: stores the attachments a process logs in its store's spool directory.

The caller's thread only hands attachments over (``handle``, called while a logged value is
snapshotted): an append to an in-memory queue. A small daemon thread of this process, started on
the first attachment and gone after ``IDLE_EXIT`` seconds without one, takes them in order: it
reads the file (or takes the bytes, or encodes a ``JSONAttachment``), hashes the content with
sha256 while writing it to ``<store>.attachments/spool/<key>.data`` (written aside, then renamed),
then publishes ``<key>.json``, the attachment's metadata (key, sha256, size, filename, content
type, or the error that stopped it). The aggregator of that store moves the data into the blob
area and records it (``workers.attachments``). Chunked reads, writes and hashing release the GIL,
so a 5 MB attachment costs the process's other threads little; the flusher thread, which sends
rows, never waits for attachments.

- Which store: the one of the process's current logger (else of its last recorder). A recorder
  attached to a standalone aggregator by endpoint asks that aggregator for its store: attachments
  need the store's directory on this host (see README, "Attachments").
- Failures: a file that is missing, unreadable, not a regular file or over
  ``TRACER_MAX_ATTACHMENT_SIZE`` is not retried: its metadata carries the error, which the
  aggregator records, and a warning goes to stderr (at most one per reason every 10 s). Writing
  the spool is retried ``NUM_RETRIES`` times with backoff. Everything is counted
  (``attachments_spooled``, ``attachments_failed``, ``attachment_write_retries``) and the counts
  ride to the aggregator with the recorder's own (``tracer stats``: ``senders_attachments_*``).
  The row is never held back: it was sent with its reference whatever happens here.
- Flush and exit: ``Recorder.sync`` first waits (``drain``) until everything handed over before
  it is in the spool, then tells the aggregator, which waits for its mover before acknowledging.
- Memory: bytes are referenced, not copied, until written; past ``MAX_PENDING_BYTES`` waiting,
  new attachments are not stored (their reference says so) rather than block the caller.
- Fork: the child drops the parent's queue (the parent writes it) and starts its own thread.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

from . import attachments, config, lifecycle, registry, serialize, threads
from .attachments import Attachment, BaseAttachment, JSONAttachment
from .context import state

CHUNK = 1 << 20  # bytes read, hashed and written at a time
IDLE_EXIT = 2.0  # seconds without an attachment before the thread exits
WARN_INTERVAL = 10.0  # at most one warning per reason per interval
MAX_PENDING_BYTES = 1 << 30  # bytes handed over and not yet written, beyond which we refuse
RETRY_BASE = 0.05  # seconds before the first retry of a failed spool write; doubles
RETRY_MAX = 2.0
ASK_TIMEOUT_MS = 2000  # asking a standalone aggregator where its store is
ASK_AGAIN = 10.0  # seconds before asking again an aggregator that did not say


class _Unusable(Exception):
    """The attachment's content cannot be had (missing, unreadable, too large): not retried."""


class _Item:
    __slots__ = ("att", "rec", "problem", "size", "logged")

    def __init__(self, att: Attachment, rec: Any, problem: str | None, size: int) -> None:
        self.att, self.rec, self.problem, self.size = att, rec, problem, size
        self.logged = time.time()


class _State:
    """This process's writer. Replaced whole in a fork child."""

    def __init__(self) -> None:
        # Re-entrant: a finalizer run by a garbage collection inside handle() (an abandoned
        # traced generator ending its span) may log an attachment on the same thread.
        self.cond = threading.Condition(threading.RLock())
        self.queue: deque[_Item] = deque()
        self.handed = 0  # items ever queued
        self.done = 0  # items finished (in order: one thread takes them)
        self.pending_bytes = 0
        self.thread: threading.Thread | None = None
        self.counts: dict[Any, Counter] = {}  # recorder -> counts not yet reported
        self.published: dict[Any, int] = {}  # recorder -> metadata files published so far
        self.stores: dict[str, tuple[str | None, float]] = {}  # endpoint -> (store, when asked)
        self.warned: dict[str, float] = {}


_w = _State()


# -- the caller's side ----------------------------------------------------------------------


def handle(att: BaseAttachment) -> dict:
    """The reference a logged attachment becomes; hands its content to the writer thread.

    Runs on the caller's thread, inside the snapshot of a logged value: no hashing, no copy,
    and no I/O but a second look at a path found unusable when it was made
    (``Attachment.check``).
    """
    ref = att.reference  # a new dict: completed below
    if not isinstance(att, Attachment):
        return ref  # external: nothing to store
    problem = att.check()
    if not att._handed:
        rec = _destination()
        if rec is None:  # packed outside any logging (a JSONAttachment's value, say)
            ref.update(upload_status="error", error_message="not stored: no logger in this "
                                                            "process")
            return ref
        w = _w
        with w.cond:
            size = att._size or 0
            if problem is None and w.pending_bytes + size > MAX_PENDING_BYTES:
                # Not remembered on the object: a later log of it may find room.
                ref.update(upload_status="error", error_message=(
                    f"not stored: {w.pending_bytes} bytes of attachments are already waiting "
                    f"to be written (at most {MAX_PENDING_BYTES})"))
                _count_locked(w, rec, "attachments_refused_pending_bytes")
                return ref
            att._handed = True
            w.queue.append(_Item(att, rec, problem, size))
            w.handed += 1
            w.pending_bytes += size
            if w.thread is None:
                _start(w)
            else:
                w.cond.notify()
    if problem is not None:
        ref["upload_status"] = "error"
        ref["error_message"] = problem
    return ref


def _destination() -> Any:
    """The recorder whose store receives attachments logged now."""
    logger = state.current_logger()
    if logger is not None:
        return logger.recorder
    return registry.latest()


def _start(w: _State) -> bool:
    """Start the writer thread (``w.cond`` held); False if none can be started (at interpreter
    shutdown): ``drain`` then does the work on its own thread."""
    thread = threading.Thread(target=_run, args=(w,), name="tracer-attachments", daemon=True)
    try:
        threads.start(thread)
    except RuntimeError:
        return False
    w.thread = thread
    return True


# -- flush and exit -------------------------------------------------------------------------


def pending() -> bool:
    """Whether attachments handed over are still being written."""
    return _w.done < _w.handed


def drain(timeout: float | None) -> bool:
    """Wait until every attachment handed over so far is in the spool (or failed); False if
    ``timeout`` seconds passed first."""
    w = _w
    deadline = None if timeout is None else time.monotonic() + timeout
    with w.cond:
        target = w.handed
        while w.done < target:
            if w.thread is None and not _start(w):
                _write_inline(w, target)
                break
            if deadline is None:
                w.cond.wait(0.1)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                w.cond.wait(min(remaining, 0.1))
    return True


def _write_inline(w: _State, target: int) -> None:
    # ``w.cond`` held; no thread can run, so nobody else takes items meanwhile.
    while w.done < target and w.queue:
        item = w.queue.popleft()
        w.cond.release()
        try:
            _process(w, item)
        finally:
            w.cond.acquire()
        w.done += 1
        w.pending_bytes -= item.size


def published(rec: Any) -> int:
    """How many attachment metadata files were published to ``rec``'s store (its SYNC tells the
    aggregator whether to wait for its mover)."""
    return _w.published.get(rec, 0)


def take_counts(rec: Any) -> dict:
    """The counts about ``rec``'s attachments not reported yet (the recorder's flusher sends
    them with its own)."""
    w = _w
    if not w.counts:
        return {}
    with w.cond:
        counts = w.counts.pop(rec, None)
    return dict(counts) if counts else {}


# -- the writer thread ----------------------------------------------------------------------


def _run(w: _State) -> None:
    while True:
        with w.cond:
            if not w.queue:
                w.cond.wait(IDLE_EXIT)
                if not w.queue:
                    w.thread = None
                    w.cond.notify_all()
                    return
            item = w.queue.popleft()
        try:
            _process(w, item)
        except BaseException as exc:  # never let the thread die with items still queued
            _count(w, item.rec, "attachments_failed")
            _warn(w, "bug", f"tracer: attachment writer error: {exc!r}")
        with w.cond:
            w.done += 1
            w.pending_bytes -= item.size
            w.cond.notify_all()


def _process(w: _State, item: _Item) -> None:
    att, rec = item.att, item.rec
    store = _store_of(w, rec)
    if store is None:
        _count(w, rec, "attachments_failed")
        where = getattr(rec, "endpoint", "no aggregator")
        _warn(w, "no_store", f"tracer: attachment {att.filename!r} (key {att.key}) not stored: "
                             f"the store of the aggregator at {where} is not on this host")
        return
    spool = attachments.spool_dir(store)
    meta: dict[str, Any] = {"key": att.key, "filename": att.filename,
                            "content_type": att.content_type, "logged": item.logged,
                            "pid": os.getpid()}
    problem = item.problem
    retries = config.value_or_default("NUM_RETRIES")  # on our thread: never raises
    for attempt in range(retries + 1):
        try:
            if problem is None:
                try:
                    digest, size, wrote = _spool_content(att, store, spool)
                    meta.update(sha256=digest, size=size, data=wrote)
                except _Unusable as exc:
                    problem = str(exc)
            if problem is not None:
                meta["error"] = problem
            _publish(spool, att.key, meta)
            break
        except OSError as exc:
            if attempt == retries:
                _count(w, rec, "attachments_failed")
                _warn(w, "spool", f"tracer: could not write attachment {att.filename!r} (key "
                                  f"{att.key}) to {spool} after {attempt + 1} attempts: {exc}; "
                                  "it is not stored (the row keeps its reference)")
                return
            _count(w, rec, "attachment_write_retries")
            time.sleep(min(RETRY_MAX, RETRY_BASE * 2**attempt))
    with w.cond:
        w.published[rec] = w.published.get(rec, 0) + 1
    if problem is not None:
        _count(w, rec, "attachments_failed")
        _warn(w, "unusable", f"tracer: attachment {att.filename!r} (key {att.key}) not stored: "
                             f"{problem}")
        return
    _count(w, rec, "attachments_spooled")
    _count(w, rec, "attachment_bytes_spooled", meta["size"])


def _spool_content(att: Attachment, store: str, spool: str) -> tuple[str, int, bool]:
    """Write the content to ``spool/<key>.data`` while hashing it; returns (sha256, size,
    whether the data file was written: content already in the blob area is not)."""
    import hashlib  # here: importing it costs every process that imports tracer ~2 ms

    limit = attachments.max_size()
    attachments.make_private(spool)
    final = os.path.join(spool, att.key + ".data")
    tmp = f"{final}.{os.getpid()}.tmp"
    if isinstance(att, JSONAttachment):
        data: str | bytes = serialize.snapshot_to_json(att._snapshot, att.pretty)
        if len(data) > limit:
            raise _Unusable(f"its JSON is {len(data)} bytes, over the attachment size limit of "
                            f"{limit} bytes (TRACER_MAX_ATTACHMENT_SIZE)")
    else:
        data = att._source  # the path is copied in chunks below, never read whole
    try:
        if isinstance(data, bytes):
            digest = hashlib.sha256(data).hexdigest()  # releases the GIL
            if os.path.exists(attachments.blob_path(store, digest)):
                return digest, len(data), False  # stored already: no need to write it again
            with _create(tmp) as out:
                view = memoryview(data)
                for start in range(0, len(data), CHUNK):
                    out.write(view[start:start + CHUNK])
            os.replace(tmp, final)
            return digest, len(data), True
        digest, size = _copy_file(data, tmp, limit)
        os.replace(tmp, final)
        return digest, size, True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _copy_file(path: str, tmp: str, limit: int) -> tuple[str, int]:
    import hashlib

    try:
        src = open(path, "rb")  # noqa: SIM115 - closed below, after the checks
    except FileNotFoundError:
        raise _Unusable(f"file not found: {path} (it was there when logged)") from None
    except OSError as exc:
        raise _Unusable(f"cannot read {path}: {exc.strerror or exc}") from None
    with src, _create(tmp) as out:
        digest = hashlib.sha256()
        size = 0
        while True:
            try:
                chunk = src.read(CHUNK)
            except OSError as exc:
                raise _Unusable(f"cannot read {path}: {exc.strerror or exc}") from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise _Unusable(f"{path} grew over the attachment size limit of {limit} bytes "
                                "(TRACER_MAX_ATTACHMENT_SIZE)")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _create(path: str):
    return os.fdopen(config.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")


def _publish(spool: str, key: str, meta: dict) -> None:
    """Publish the metadata file, which tells the aggregator the attachment is ready."""
    attachments.make_private(spool)
    path = os.path.join(spool, key + ".json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with _create(tmp) as out:
        out.write(json.dumps(meta).encode())
    os.replace(tmp, path)


def _store_of(w: _State, rec: Any) -> str | None:
    """The store path ``rec``'s aggregator writes to, if its directory is on this host."""
    if rec is None:
        return None
    if rec.store:
        return rec.store
    known = w.stores.get(rec.endpoint)
    if known is not None and (known[0] is not None or time.monotonic() - known[1] < ASK_AGAIN):
        return known[0]
    store = _ask_store(rec.endpoint, getattr(rec, "server_key", None))
    w.stores[rec.endpoint] = (store, time.monotonic())
    return store


def _ask_store(endpoint: str, server_key: str | None) -> str | None:
    """Ask a standalone aggregator (attached to by endpoint) where its store is; None unless
    it runs on this host with its store's directory here."""
    from .stats_client import ask_stats  # only a recorder attached by endpoint ever asks

    stats = ask_stats(endpoint, ASK_TIMEOUT_MS, server_key)
    if stats is None:
        return None
    store, host = stats.get("store"), stats.get("host")
    if not isinstance(store, str) or not (endpoint.startswith("ipc://")
                                          or host == socket.gethostname()):
        return None
    return store if os.path.isdir(os.path.dirname(store)) else None


def _count(w: _State, rec: Any, name: str, n: int = 1) -> None:
    with w.cond:
        _count_locked(w, rec, name, n)


def _count_locked(w: _State, rec: Any, name: str, n: int = 1) -> None:
    counts = w.counts.get(rec)
    if counts is None:
        counts = w.counts[rec] = Counter()
    counts[name] += n


def _warn(w: _State, reason: str, message: str) -> None:
    now = time.monotonic()
    if now - w.warned.get(reason, -WARN_INTERVAL) >= WARN_INTERVAL:
        w.warned[reason] = now
        print(message, file=sys.stderr)


# -- JSONAttachment -------------------------------------------------------------------------


def _after_fork_in_child() -> None:
    # The parent's queue is the parent's to write; its thread does not exist here.
    global _w
    _w = _State()


lifecycle.on_fork_child(_after_fork_in_child)
# A logged attachment becomes its reference, its content handed to this writer.
serialize.register_substitute(BaseAttachment, handle)
