"""The aggregator's attachment mover, and the state of the attachments a row refers to.

Recorders leave each attachment in the store's spool directory (``tracer.attachment_writer``):
``<key>.data`` (the content) and then ``<key>.json`` (its metadata: sha256, size, filename,
content type, or the error that kept it from being read). The mover, one thread of the
aggregator beside the row uploader, takes each published ``<key>.json``:

- content addressed: the data is renamed to ``blobs/<sha256[:2]>/<sha256>`` (same file system:
  no copy), or deleted if that blob exists already (the blob touched: retention,
  ``workers.retention``, keeps blobs touched within its grace period), so identical content is
  stored once however many keys refer to it;
- recorded: ``key -> sha256, size, filename, content_type, status ("done" | "error"), error`` in
  the store (``StoreWriter.record_attachment``), read by ``tracer show``, ``tracer export
  --with-attachments`` and ``tracer attachment get`` (``references`` and ``status`` below);
- retried: a failure (the store locked, a full disk) is retried with backoff (``NUM_RETRIES``,
  0.05 s doubling to 5 s), then counted (``attachments_failed``) and left in the spool for the
  next aggregator to try; never does it hold back a row, which the uploader commits on its own.

It also stores what the aggregator pulls out of rows itself (``workers.media``: very large base64
strings), handed over with ``adopt``.

Uploading to a trace server (``remote``: an ``HttpWriter`` made for this thread), each
attachment also goes there, content addressed: ``HEAD /api/v1/blobs/{sha256}`` asks whether the
server has the bytes, a ``PUT`` sends them only if not, then the record is posted
(``/api/v1/attachments``). With a local store too, the local blob and record come first and a
``<key>.upload`` marker in the spool (the record, as JSON) stands for what the server still
lacks; uploading only (no local store), the spooled ``<key>.data`` is sent and then removed,
and what was pulled out of rows is spooled the same way. A server that cannot be reached is
retried with backoff (at most ``REMOTE_BACKOFF_MAX`` apart) for as long as it takes, the files
staying in the spool (for the next aggregator, should this one exit first); a server that
refuses the key is counted (``attachments_refused``) and left to the next aggregator.
A flush that covers attachments waits for the mover
(``request`` / ``completed``), so that after ``tracer.flush()`` every attachment logged before it
is in the blob area or recorded as failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from tracer import attachments, config
from tracer.config import Settings

from . import log
from .store import STORE_ERRORS, Refused, StoreWriter, open_store

SCAN_INTERVAL = 0.25  # seconds between looks at the spool when nobody asks
BACKOFF_BASE = 0.05
BACKOFF_MAX = 5.0
ORPHAN_AGE = 3600.0  # a data file with no metadata this old was left by a writer that died
MAX_META_BYTES = 1 << 16
KEY = re.compile(r"[0-9a-f]{32}")  # our keys (attachments.new_key)
#: What a stored attachment may be named by: our keys, or the reference SDK's (a UUID), which
#: its own clients give the attachments they upload to ``tracer serve``.
REFERENCE_KEY = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                           r"[0-9a-f]{12}")
# What storing an attachment may fail with (the file system, the store) and is retried.
_FAILURES: tuple[type[Exception], ...] = (OSError, *STORE_ERRORS)
SHA256 = re.compile(r"[0-9a-f]{64}")
REMOTE_BACKOFF_MAX = 10.0  # seconds between tries of a server that cannot be reached


class RemoteBlobs(Protocol):
    """What the mover needs of a trace server (``workers.http_sink.HttpWriter``)."""

    def has_blob(self, sha256: str) -> bool: ...

    def put_blob(self, sha256: str, path: str) -> None: ...

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None: ...

    def store_failed(self, exc: BaseException) -> bool: ...

    def close(self) -> None: ...


class AttachmentMover:
    """Moves spooled attachments into the blob area and records them; one thread."""

    def __init__(self, store: str, settings: Settings, counters: Counter,
                 on_progress: Callable[[], None], local: bool = True,
                 remote: Callable[[], RemoteBlobs] | None = None) -> None:
        self.store = store  # the store, or where an uploading aggregator's files are anchored
        self.settings = settings
        self.counters = counters  # this thread writes only attachment* keys
        self.on_progress = on_progress
        self.spool = attachments.spool_dir(store)
        self.local = local  # False: uploading only, there is no local store to record in
        self._store: StoreWriter | None = None
        if local:
            self._store = open_store(store)  # opened on first use, by this thread
            self._store.on_replaced = self._store_replaced
        self._make_remote = remote
        self._remote: RemoteBlobs | None = None  # made on first use, by this thread
        self._cond = threading.Condition()
        self._requested = 0  # scans asked for (a flush waiting)
        self._completed = 0  # the last request a finished scan covered
        self._adopted: deque = deque()  # (key, content, filename, content_type) from rows
        self._stopping = False
        self._retry: dict[str, tuple[int, float]] = {}  # key -> (failures, next attempt)
        self._given_up: set[str] = set()
        self.stopping = threading.Event()  # cuts backoff short at shutdown
        self.thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name="tracer-attachments", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def restart(self) -> None:
        """Start a new thread in place of one that died (the aggregator's watchdog)."""
        self.thread = self._new_thread()
        self.thread.start()

    # -- other threads ---------------------------------------------------------------------

    def request(self) -> int:
        """Ask for a scan of the spool now; returns the number ``completed`` reaches once a scan
        that began after this call has finished."""
        with self._cond:
            self._requested += 1
            self._cond.notify()
            return self._requested

    @property
    def completed(self) -> int:
        return self._completed

    def adopt(self, content: bytes, filename: str, content_type: str) -> str:
        """Store ``content`` pulled out of a row by the aggregator; returns its new key."""
        key = attachments.new_key()
        with self._cond:
            self._adopted.append((key, content, filename, content_type))
            self._cond.notify()
        return key

    def stop(self, timeout: float = 30.0) -> None:
        """Take in what is spooled and adopted, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.thread.join(timeout)
        self.stopping.set()
        self.thread.join(5)
        if not self.thread.is_alive():  # else it is still using the store: leave it
            if self._store is not None:
                self._store.close()
            if self._remote is not None:
                self._remote.close()

    # -- the mover thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            stopping = False
            try:  # never let the thread die: the next turn tries again
                with self._cond:
                    if not (self._stopping or self._adopted
                            or self._requested > self._completed):
                        self._cond.wait(SCAN_INTERVAL)
                    covered = self._requested
                    stopping = self._stopping
                try:
                    self._store_adopted()
                    self._scan()
                finally:  # a failed scan still answers the flushes waiting: they are not held
                    if covered > self._completed:
                        self._completed = covered
                        self.on_progress()
            except Exception as exc:
                self.counters["attachment_mover_errors"] += 1
                log.log(f"attachment mover: {exc!r}", key="mover", every=10.0)
                self.stopping.wait(0.1)  # a fault that repeats must not spin the CPU
            if stopping:
                return

    def _store_replaced(self, why: str, committed: int) -> None:
        """The store was removed or replaced under the mover's writer: the attachment records
        it had committed there went with the old file (the blobs stay)."""
        self.counters["attachment_records_in_replaced_store"] += committed

    def _scan(self) -> None:
        try:
            entries = list(os.scandir(self.spool))
        except FileNotFoundError:  # nothing was ever logged with an attachment
            return
        names = {entry.name for entry in entries}
        now = time.monotonic()
        for entry in entries:
            name = entry.name
            if name.endswith(".json"):
                key = name[:-5]
                if key in self._given_up:
                    continue
                failures, when = self._retry.get(key, (0, 0.0))
                if when > now and not self._stopping:
                    continue
                self._take(key, failures)
            elif name.endswith(".upload") and self._make_remote is not None:
                key = name[:-len(".upload")]
                failures, when = self._retry.get(name, (0, 0.0))
                if name in self._given_up or when > now and not self._stopping:
                    continue
                self._take_upload(key, failures)
            elif name.endswith((".data", ".tmp")) and name.split(".", 1)[0] + ".json" not in names:
                self._remove_orphan(entry)

    def _take(self, key: str, failures: int) -> None:
        meta_path = os.path.join(self.spool, key + ".json")
        data_path = os.path.join(self.spool, key + ".data")
        meta = None
        try:
            meta = _read_meta(meta_path, key)
            if meta is None:  # not ours to read: set aside, counted
                self.counters["attachments_bad_metadata"] += 1
                os.replace(meta_path, meta_path + ".bad")
                return
            error = meta.get("error")
            sha = meta.get("sha256")
            source = "base64" if meta.get("source") == "base64" else "logged"
            if error is None and not (isinstance(sha, str) and SHA256.fullmatch(sha)):
                error = "the spooled metadata has no valid sha256"
            if self.local:
                if error is None:
                    self._move(data_path, str(sha))
                self._record(key, meta, error, source)
                if self._make_remote is not None:
                    self._mark_for_upload(key, meta, error, source)
            else:
                self._upload(key, meta, error, source, data_path)
            os.unlink(meta_path)
            if error is not None or not self.local:
                _unlink(data_path)
            if error is not None:
                self.counters["attachments_failed"] += 1
            self._retry.pop(key, None)
        except _Missing as exc:  # the data is gone: nothing to retry
            self._record_failure(key, meta, str(exc), meta_path)
        except Exception as exc:
            if not self._retryable(exc):
                raise
            self._failed(key, failures, exc)

    def _retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a failure this mover retries (the file system, the store, the
        server) rather than a bug."""
        return isinstance(exc, _FAILURES) or self._remote is not None and (
            self._remote.store_failed(exc) or isinstance(exc, Exception))

    def _take_upload(self, key: str, failures: int) -> None:
        """Send to the server an attachment stored locally already (its ``.upload`` marker)."""
        path = os.path.join(self.spool, key + ".upload")
        try:
            meta = _read_meta(path, key)
            if meta is None:
                self.counters["attachments_bad_metadata"] += 1
                os.replace(path, path + ".bad")
                return
            error = meta.get("error")
            sha = meta.get("sha256")
            data = attachments.blob_path(self.store, str(sha)) if error is None else None
            self._upload(key, meta, error, str(meta.get("source") or "logged"), data)
            os.unlink(path)
            self._retry.pop(key + ".upload", None)
        except Exception as exc:
            if not self._retryable(exc):
                raise
            self._failed(key + ".upload", failures, exc)

    def _mark_for_upload(self, key: str, meta: dict, error: str | None, source: str) -> None:
        """Leave ``<key>.upload`` (the record, written aside then renamed) for ``_upload``."""
        record = dict(meta, key=key, error=error, source=source)
        path = os.path.join(self.spool, key + ".upload")
        attachments.make_private(self.spool)
        tmp = f"{path}.{os.getpid()}.tmp"
        with os.fdopen(config.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                       "wb") as f:
            f.write(json.dumps(record).encode())
        os.replace(tmp, path)

    def _remote_blobs(self) -> RemoteBlobs:
        if self._remote is None:
            assert self._make_remote is not None
            self._remote = self._make_remote()
        return self._remote

    def _upload(self, key: str, meta: dict, error: str | None, source: str,
                data_path: str | None) -> None:
        """The server gets the bytes (unless it has them: content addressed) and the record."""
        if self._make_remote is None:  # exporting to OTLP only: attachments have nowhere to go
            self.counters["attachments_not_exported"] += 1
            return
        remote = self._remote_blobs()
        sha = meta.get("sha256") if error is None else None
        if sha is not None:
            if remote.has_blob(sha):
                self.counters["attachments_on_server_already"] += 1
            else:
                if data_path is None or not os.path.exists(data_path):
                    raise _Missing("the attachment's data is missing")
                size = os.path.getsize(data_path)
                remote.put_blob(sha, data_path)
                self.counters["attachments_uploaded"] += 1
                self.counters["attachment_bytes_uploaded"] += size
        logged = meta.get("logged")
        remote.record_attachment(
            key, sha256=sha, size=_int(meta.get("size")), filename=_text(meta.get("filename")),
            content_type=_text(meta.get("content_type")), error=error, source=source,
            logged=logged if isinstance(logged, (int, float)) else None)
        self.counters["attachment_records_uploaded"] += 1

    def _move(self, data_path: str, sha: str) -> None:
        blob = attachments.blob_path(self.store, sha)
        if _reuse(blob):
            if os.path.exists(data_path):
                os.unlink(data_path)
            self.counters["attachments_deduplicated"] += 1
            return
        if not os.path.exists(data_path):
            raise _Missing("the spooled data file is missing")
        attachments.make_private(os.path.dirname(blob))
        size = os.path.getsize(data_path)
        os.replace(data_path, blob)
        self.counters["attachments_stored"] += 1
        self.counters["attachment_bytes_stored"] += size

    def _record(self, key: str, meta: dict, error: str | None, source: str) -> None:
        if self._store is None:  # uploading only: the server keeps the record
            self._upload(key, meta, error, source, None)
            return
        logged = meta.get("logged")
        self._store.record_attachment(
            key, sha256=meta.get("sha256"), size=_int(meta.get("size")),
            filename=_text(meta.get("filename")), content_type=_text(meta.get("content_type")),
            error=error, source=source,
            logged=logged if isinstance(logged, (int, float)) else None)

    def _record_failure(self, key: str, meta: dict | None, error: str, meta_path: str) -> None:
        """Record ``key`` as failed for good (``meta``: its metadata, if it was read)."""
        try:
            self._record(key, meta or {}, error, "logged")
            if self.local and self._make_remote is not None:
                self._mark_for_upload(key, meta or {}, error, "logged")
            os.unlink(meta_path)
            _unlink(meta_path[:-len(".json")] + ".data")
        except Exception as exc:
            if not self._retryable(exc):
                raise
            log.log(f"could not record attachment {key} as failed: {exc!r}")
            self._given_up.add(key)
        self.counters["attachments_failed"] += 1

    def _failed(self, key: str, failures: int, exc: BaseException) -> None:
        if self._remote is not None and isinstance(exc, Refused):
            self._given_up.add(key)  # left in the spool: the next aggregator tries again
            self.counters["attachments_refused"] += 1
            log.log(f"attachment {key}: {exc}", key="attachment-refused", every=10.0)
            return
        if self._remote is not None and self._remote.store_failed(exc):
            # The server is away: tried again for as long as it takes (left in the spool for
            # the next aggregator should this one exit first); it holds back no row.
            failures += 1
            self.counters["attachment_retries"] += 1
            log.log(f"attachment {key} waits for the server: {exc}", key="attachment-wait",
                    every=10.0)
            delay = min(REMOTE_BACKOFF_MAX, BACKOFF_BASE * 2 ** min(failures - 1, 16))
            self._retry[key] = (failures, time.monotonic() + delay)
            if self._stopping:
                self._given_up.add(key)
            return
        failures += 1
        if failures > self.settings.num_retries or self._stopping:
            self._retry.pop(key, None)
            self._given_up.add(key)  # left in the spool: the next aggregator tries again
            self.counters["attachments_failed"] += 1
            log.log(f"gave up storing attachment {key} after {failures} attempts: {exc!r}")
            return
        self.counters["attachment_retries"] += 1
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failures - 1))
        self._retry[key] = (failures, time.monotonic() + delay)

    def _remove_orphan(self, entry: os.DirEntry) -> None:
        try:
            if time.time() - entry.stat().st_mtime > ORPHAN_AGE:
                os.unlink(entry.path)
                self.counters["attachment_orphans_removed"] += 1
        except OSError:
            pass

    def _store_adopted(self) -> None:
        while self._adopted:
            key, content, filename, content_type = self._adopted.popleft()
            meta = {"filename": filename, "content_type": content_type, "size": len(content),
                    "logged": time.time()}
            if not self.local:
                if self._make_remote is None:  # exporting to OTLP only: nowhere to go
                    self.counters["attachments_not_exported"] += 1
                else:
                    self._spool_adopted(key, content, meta)
                continue
            for attempt in range(self.settings.num_retries + 1):
                try:
                    meta["sha256"] = self._write_blob(content)
                    self._record(key, meta, None, "base64")
                    if self._make_remote is not None:
                        self._mark_for_upload(key, meta, None, "base64")
                    break
                except _FAILURES as exc:
                    if attempt == self.settings.num_retries or self.stopping.is_set():
                        self.counters["attachments_failed"] += 1
                        log.log(f"gave up storing extracted attachment {key}: {exc!r}")
                        break
                    self.counters["attachment_retries"] += 1
                    self.stopping.wait(min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt))

    def _spool_adopted(self, key: str, content: bytes, meta: dict) -> None:
        """Uploading only: content pulled out of a row goes into the spool as if a recorder had
        logged it (``<key>.data``, then ``<key>.json``), and the scan sends it."""
        meta = dict(meta, key=key, sha256=hashlib.sha256(content).hexdigest(), source="base64")
        try:
            attachments.make_private(self.spool)
            for suffix, data in ((".data", content), (".json", json.dumps(meta).encode())):
                path = os.path.join(self.spool, key + suffix)
                tmp = f"{path}.{os.getpid()}.tmp"
                with os.fdopen(config.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                               "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
        except OSError as exc:
            self.counters["attachments_failed"] += 1
            log.log(f"could not spool extracted attachment {key}: {exc!r}")

    def _write_blob(self, content: bytes) -> str:
        sha = hashlib.sha256(content).hexdigest()
        blob = attachments.blob_path(self.store, sha)
        if _reuse(blob):
            self.counters["attachments_deduplicated"] += 1
            return sha
        attachments.make_private(os.path.dirname(blob))
        tmp = f"{blob}.{os.getpid()}.tmp"
        with os.fdopen(config.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                       "wb") as f:
            f.write(content)
        os.replace(tmp, blob)
        self.counters["attachments_stored"] += 1
        self.counters["attachment_bytes_stored"] += len(content)
        return sha


def _reuse(blob: str) -> bool:
    """Whether the blob is there to store the same content again: touched, so that retention
    (``workers.retention``), which removes only blobs untouched for its grace period and looks
    at a blob's time once more after taking it out of the way, keeps it; False if it is not
    there (taken away: the content is stored anew)."""
    try:
        os.utime(blob)
    except FileNotFoundError:
        return False
    except OSError:  # there, but not ours to touch (another user's area): reused as it is
        return os.path.exists(blob)
    return True


class _Missing(Exception):
    """What the metadata announces is not there; retrying cannot help."""


def _read_meta(path: str, key: str) -> dict | None:
    with open(path, "rb") as f:
        raw = f.read(MAX_META_BYTES + 1)
    if len(raw) > MAX_META_BYTES or not KEY.fullmatch(key):
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and meta.get("key") == key else None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# -- reading: the command line ----------------------------------------------------------------


def references(value: Any) -> Iterator[dict]:
    """Every attachment reference (stored or external) in a row or value, depth first."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") in attachments.REFERENCE_TYPES and (
                    "key" in item or "url" in item):
                yield item
                continue
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def status(store: str, ref: dict, recorded: dict | None) -> dict:
    """The state of one reference: ``{"upload_status": "done" | "error" | "uploading" |
    "missing", "error_message"?, "size"?, "path"?}`` (``path``: the blob, when stored)."""
    if ref.get("type") != attachments.BRAINTRUST_ATTACHMENT:
        return {"upload_status": "external"}
    if recorded is not None:
        out: dict[str, Any] = {"upload_status": recorded["status"], "size": recorded["size"]}
        if recorded["status"] == "done" and recorded["sha256"]:
            path = attachments.blob_path(store, recorded["sha256"])
            if os.path.exists(path):
                out["path"] = path
            else:
                out.update(upload_status="error", error_message="the stored blob is missing")
        if recorded["error"]:
            out["error_message"] = recorded["error"]
        return out
    if ref.get("upload_status") == "error":  # found when it was logged
        return {"upload_status": "error", "error_message": ref.get("error_message")}
    key = ref.get("key")
    if isinstance(key, str) and os.path.exists(
            os.path.join(attachments.spool_dir(store), key + ".json")):
        return {"upload_status": "uploading"}
    return {"upload_status": "missing",
            "error_message": "not in the store (its process may have died before writing it)"}
