"""The spool: batches for a remote destination kept on disk while it cannot take them.

``SpoolingWriter`` wraps a remote ``StoreWriter`` (the trace server's ``HttpWriter``; an OTLP
exporter later). While its spool is empty a batch goes straight to the destination; when the
destination cannot take it (``store_failed``: unreachable, a timeout, 429, 5xx), the batch is
written to the spool instead, which counts as committed: it is on disk, fsync'd, and will be
sent. While the spool holds anything, new batches go behind it (order matters: a later merge
replaces an earlier value), and a drain thread of its own sends the spooled batches oldest
first, waiting between failures (backoff with jitter, at least the destination's
``Retry-After``), and removes each file once the destination committed it. The thread survives
its own exceptions (counted, ``spool_drain_errors``).

``Spool`` is the directory (``TRACER_SPOOL_DIR``; by default ``spool/`` in the server's
directory, ``~/.tracer/api/<host>-<port>/``). Each aggregator writes into a *segment* of its
own, ``<directory>/<start time>-<host>-<pid>/``, holding numbered batch files and a ``.lock``
it holds (``flock``) for its lifetime, and a ``destination`` file naming the URL its batches
are for. A segment whose lock can be taken was left by an aggregator that is gone (killed, a
reboot): the next aggregator for the same destination adopts it and drains it before its own
batches (at start, and every ``ORPHAN_SCAN`` seconds). Files are written aside, fsync'd,
renamed, and the directory fsync'd: a batch file is whole or absent, whatever the crash.
Directories are 0700, files 0600. The spool is bounded by ``TRACER_SPOOL_MAX_BYTES`` (what
this aggregator holds, adopted segments included): full, a write fails as a store failure
(``SpoolFull``), so the uploader retries it with its backoff and the queue's policy applies
behind it.

What the destination refuses while draining: a refused writer (a bad key, ``Refused``) costs
the batch (counted ``dropped_<reason>``, set aside in ``FAILED_PUBLISH_PAYLOADS_DIR``) and makes
the next write go to the destination directly, so that the uploader sees the refusal and the
flushes raise it; a refused row (``Rejected``) is split out and set aside like the uploader
does (``dropped_row_failed``). Nothing is retried forever but an unavailable destination.
"""

from __future__ import annotations

import fcntl
import math
import os
import random
import shutil
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from tracer import attachments, config

from . import log, payloads
from .rows import Container, Key
from .store.base import Refused, RowUpdate, StoreWriter

FORMAT = 1  # a batch file: msgpack [FORMAT, [[container key, row], ...]]
SUFFIX = ".batch"
LOCK = ".lock"
DESTINATION = "destination"
BACKOFF_BASE = 0.1  # seconds after the first failure to drain, doubling
BACKOFF_MAX = 5.0
ORPHAN_SCAN = 10.0  # seconds between looks for segments left by aggregators that are gone
EXIT_DRAIN_MAX = 600.0  # seconds an exiting aggregator drains at most, however it goes
EXIT_DRAIN = 30.0  # seconds an exiting aggregator drains without a batch getting through
ERROR_PAUSE = 0.1
IDLE_WAIT = 1.0  # seconds the drain thread sleeps with nothing to send (a write wakes it)
LOG_EVERY = 10.0
MAX_BATCH_FILE = 1 << 32  # bytes read from one batch file, at most


class SpoolFull(Exception):
    """The spool has no room for the batch (``TRACER_SPOOL_MAX_BYTES``): a store failure."""


@dataclass
class _File:
    path: str
    size: int
    since: float  # epoch seconds: when it was spooled
    segment: str


class Spool:
    """The batch files of one destination, oldest first; thread-safe."""

    def __init__(self, directory: str, destination: str, max_bytes: int) -> None:
        self.directory = directory
        self.destination = destination
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: deque[_File] = deque()
        self._bytes = 0
        self._own: str | None = None  # our segment, made on the first append
        self._seq = 0
        self._locks: dict[str, int] = {}  # segment -> the descriptor of its held lock

    # -- state ----------------------------------------------------------------------------------

    @property
    def batches(self) -> int:
        return len(self._files)

    def state(self) -> dict:
        """What ``tracer stats`` shows: ``bytes``, ``batches`` and ``oldest_age`` (seconds the
        oldest batch has waited; None when empty), ``max_bytes`` and ``directory``."""
        with self._lock:
            oldest = self._files[0].since if self._files else None
            return {"bytes": self._bytes, "batches": len(self._files), "max_bytes": self.max_bytes,
                    "oldest_age": None if oldest is None else max(0.0, time.time() - oldest),
                    "directory": self.directory}

    # -- writing --------------------------------------------------------------------------------

    def append(self, rows: Sequence[tuple[str, dict]]) -> str:
        """Write a batch of ``(container key, row)`` durably at the end; returns its path.
        Raises ``SpoolFull`` without room, OSError if the disk fails."""
        data = msgpack.packb([FORMAT, [[key, row] for key, row in rows]])
        with self._lock:
            if self.max_bytes and self._bytes + len(data) > self.max_bytes:
                raise SpoolFull(f"the spool {self.directory} is full: {self._bytes} bytes of "
                                f"{self.max_bytes} (TRACER_SPOOL_MAX_BYTES) held, a batch of "
                                f"{len(data)} bytes does not fit")
            segment = self._own or self._make_segment()
            self._seq += 1
            name = f"{self._seq:012d}{SUFFIX}"
            path = os.path.join(segment, name)
            _write_durably(os.path.join(segment, f".{name}.tmp"), path, data)
            _fsync_dir(segment)
            self._files.append(_File(path, len(data), time.time(), segment))
            self._bytes += len(data)
            return path

    def _make_segment(self) -> str:
        """Our segment: made aside (so that nobody adopts it half made), locked, renamed."""
        attachments.make_private(self.directory)
        name = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}"
        name = "".join(c if c.isalnum() or c in "-._" else "_" for c in name)
        aside = os.path.join(self.directory, f".{name}.tmp")
        os.mkdir(aside, 0o700)
        fd = config.open_private(os.path.join(aside, LOCK), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _write_durably(os.path.join(aside, f".{DESTINATION}.tmp"),
                       os.path.join(aside, DESTINATION), self.destination.encode())
        segment = os.path.join(self.directory, name)
        os.rename(aside, segment)
        _fsync_dir(self.directory)
        self._own = segment
        self._locks[segment] = fd
        return segment

    # -- draining -------------------------------------------------------------------------------

    def first(self) -> _File | None:
        """The oldest batch file, if any (it stays until ``remove``)."""
        with self._lock:
            return self._files[0] if self._files else None

    @staticmethod
    def read(file: _File) -> list[tuple[str, dict]]:
        """The ``(container key, row)`` pairs of a batch file; ValueError if it is not one."""
        with open(file.path, "rb") as f:
            data = f.read(MAX_BATCH_FILE)
        try:
            found = msgpack.unpackb(data, strict_map_key=False)
        except Exception as exc:
            raise ValueError(f"{file.path}: not a spooled batch ({exc})") from None
        if (not isinstance(found, list) or len(found) != 2 or found[0] != FORMAT
                or not isinstance(found[1], list)
                or not all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                           and isinstance(item[1], dict) and isinstance(item[1].get("id"), str)
                           for item in found[1])):
            raise ValueError(f"{file.path}: not a spooled batch of format {FORMAT}")
        return [(key, row) for key, row in found[1]]

    def remove(self, file: _File, set_aside: bool = False) -> None:
        """The batch is committed (or, ``set_aside``, unreadable: kept as ``<name>.bad`` for a
        look, outside the spool's count): its file goes. An adopted segment left empty goes
        too, and its lock with it."""
        with self._lock:
            try:
                self._files.remove(file)
            except ValueError:
                return
            self._bytes -= file.size
            left = any(f.segment == file.segment for f in self._files)
        try:
            if set_aside:
                os.replace(file.path, file.path + ".bad")
            else:
                os.unlink(file.path)
        except FileNotFoundError:
            pass
        if not left and file.segment != self._own:
            self._release(file.segment, remove=not set_aside)

    def adopt(self) -> int:
        """Take over the segments of this destination left by aggregators that are gone
        (their lock is free): their batches go before ours. Returns how many were found."""
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except FileNotFoundError:
            return 0
        found: list[_File] = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                if entry.name.endswith(".tmp") and entry.is_dir(follow_symlinks=False):
                    self._remove_unfinished(entry.path)
                continue
            if entry.path in self._locks:
                continue
            try:
                with open(os.path.join(entry.path, DESTINATION), "rb") as f:
                    if f.read(4096).decode("utf-8", "replace") != self.destination:
                        continue  # another destination's: not ours to send
                fd = os.open(os.path.join(entry.path, LOCK), os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its aggregator lives
                os.close(fd)
                continue
            self._locks[entry.path] = fd
            files = []
            for name in sorted(os.listdir(entry.path)):
                if name.endswith(SUFFIX) and not name.startswith("."):
                    path = os.path.join(entry.path, name)
                    try:
                        info = os.stat(path)
                    except OSError:
                        continue
                    files.append(_File(path, info.st_size, info.st_mtime, entry.path))
            if files:
                found += files
            else:
                self._release(entry.path, remove=True)
        if found:
            with self._lock:
                self._files.extendleft(reversed(found))  # before ours, in their order
                self._bytes += sum(f.size for f in found)
        return len(found)

    def _remove_unfinished(self, path: str) -> None:
        """A segment made aside by an aggregator that died before renaming it holds no batch."""
        try:
            fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _release(self, segment: str, remove: bool) -> None:
        if remove:  # while we hold its lock: nobody adopts it half removed
            shutil.rmtree(segment, ignore_errors=True)
        fd = self._locks.pop(segment, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Let go of every segment; ours is removed if it holds nothing."""
        with self._lock:
            holding = {f.segment for f in self._files}
        for segment in list(self._locks):
            self._release(segment, remove=segment not in holding)
        if self._own not in holding:
            self._own = None


def _write_durably(aside: str, path: str, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all: written aside, fsync'd, renamed."""
    try:
        with os.fdopen(config.open_private(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                       "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(aside, path)
    except BaseException:
        try:
            os.unlink(aside)
        except OSError:
            pass
        raise


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Spooled:
    """A spooled row handed back to the destination's writer (a ``RowUpdate``)."""

    __slots__ = ("container", "key", "row")

    def __init__(self, container: Container, row: dict) -> None:
        self.container = container
        self.key: Key = (container.id, row["id"])
        self.row = row


class SpoolingWriter(StoreWriter):
    """``inner`` (a remote writer) behind ``spool``; see the module. ``counters`` are the
    aggregator's (this writes ``spool_*`` and ``dropped_*`` keys); what is given up goes to
    ``failed_dir`` (``FAILED_PUBLISH_PAYLOADS_DIR``) when set."""

    def __init__(self, inner: StoreWriter, spool: Spool, counters: Counter,
                 failed_dir: str | None = None) -> None:
        self.inner = inner
        self.spool = spool
        self.counters = counters
        self.failed_dir = failed_dir
        self.location = inner.location
        self._send_lock = threading.Lock()  # one request at a time through ``inner``
        self._cond = threading.Condition()
        self._run: tuple | None = None  # the latest run record not yet sent
        self._refused: Refused | None = None  # the destination refused us while draining
        self._closing = False
        self._failures = 0  # drain attempts failed in a row
        self._next_scan = time.monotonic() + ORPHAN_SCAN
        self.stopping = threading.Event()  # cuts waits short at close
        self.thread = self._new_thread()
        self._containers: dict[str, Container] = {}

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._drain, name="tracer-spool", daemon=True)

    def start(self) -> None:
        """Adopt what earlier runs left (drained before anything new), then start draining."""
        try:
            adopted = self.spool.adopt()
        except OSError as exc:
            adopted = 0
            log.log(f"spool: could not look for batches left in {self.spool.directory}: {exc!r}")
        if adopted:
            self.counters["spool_batches_adopted"] += adopted
            log.log(f"spool: {adopted} batches left by an earlier run in "
                    f"{self.spool.directory} are sent first")
        self.thread.start()

    def restart(self) -> None:
        """Start a new drain thread in place of one that died (the aggregator's watchdog)."""
        self.thread = self._new_thread()
        self.thread.start()

    # -- the StoreWriter interface (the uploader's thread) --------------------------------------

    def store_failed(self, exc: BaseException) -> bool:
        return isinstance(exc, (SpoolFull, OSError)) or self.inner.store_failed(exc)

    def retry_after(self, exc: BaseException) -> float | None:
        return self.inner.retry_after(exc)

    def schema_version(self) -> int:
        return self.inner.schema_version()

    def write(self, batch: Sequence[RowUpdate]) -> None:
        """Send ``batch`` now while nothing is spooled (or the destination refused us: the
        refusal must reach the caller), else spool it behind what is; a batch the destination
        cannot take now is spooled. Raises what the destination refuses (``Refused``, or a row
        it cannot take), ``SpoolFull``, or OSError when the spool's disk fails."""
        if not self.spool.batches or self._refused is not None:
            try:
                with self._send_lock:
                    self.inner.write(batch)
                self._refused = None
                return
            except Exception as exc:
                if not self.inner.store_failed(exc):
                    raise
                self.counters["spool_direct_failures"] += 1
                log.log(f"spool: {self.location} cannot take batches now ({exc}); they are "
                        f"spooled in {self.spool.directory} and sent when it can",
                        key="spool-direct", every=LOG_EVERY)
        self.spool.append([(u.container.key, u.row) for u in batch])
        self.counters["spool_batches_written"] += 1
        self.counters["spool_rows_written"] += len(batch)
        with self._cond:
            self._cond.notify()

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        """Kept for the drain thread, which sends the latest once the destination answers: a
        destination away must not hold up the uploader."""
        with self._cond:
            self._run = (run_id, info, counters, ended)
            self._cond.notify()

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None:
        with self._send_lock:
            self.inner.record_attachment(key, sha256=sha256, size=size, filename=filename,
                                         content_type=content_type, error=error,
                                         source=source, logged=logged)

    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        return self.inner.find_experiment(project_name, experiment_name)

    def import_containers(self, containers: Sequence[dict]) -> None:
        self.inner.import_containers(containers)

    def import_run(self, run: dict) -> None:
        self.inner.import_run(run)

    def close(self) -> None:
        """Drain until the spool is empty or ``EXIT_DRAIN`` seconds pass without a batch getting
        through, whether the destination is busy (429/503 with ``Retry-After``) or away (a
        restart, a network cut: the traced program that ended has no reason to wait for it,
        this process does); ``EXIT_DRAIN_MAX`` in all. Send the last run record, then stop.
        What is still spooled then waits for the next aggregator."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self.thread.ident is not None:
            self.thread.join(EXIT_DRAIN_MAX)
            self.stopping.set()
            self.thread.join(5)
        if not self.thread.is_alive():
            self._send_run()
            self.spool.close()
            self.inner.close()

    # -- the drain thread -----------------------------------------------------------------------

    def _drain(self) -> None:
        deadline = math.inf
        while not self.stopping.is_set():
            try:
                if self._closing and deadline == math.inf:
                    deadline = time.monotonic() + EXIT_DRAIN
                progressed = self._turn()
                if self._closing and progressed:
                    deadline = time.monotonic() + EXIT_DRAIN  # it takes batches: go on
                if self._closing and (time.monotonic() > deadline or not self.spool.batches):
                    return
                if not progressed:
                    with self._cond:
                        if not self.spool.batches and not self._closing:
                            self._cond.wait(IDLE_WAIT)
            except Exception as exc:  # whatever goes wrong, the spool must go on draining
                self.counters["spool_drain_errors"] += 1
                log.log(f"spool: {exc!r}", key="spool-drain", every=LOG_EVERY)
                if self._closing:
                    return
                self.stopping.wait(ERROR_PAUSE)

    def _turn(self) -> bool:
        """Send the oldest spooled batch, or the run record, or look for orphans; True if it
        got something through (False: nothing to do, or the destination is away)."""
        file = self.spool.first()
        if file is None:
            if time.monotonic() >= self._next_scan and not self._closing:
                self._next_scan = time.monotonic() + ORPHAN_SCAN
                adopted = self.spool.adopt()
                if adopted:
                    self.counters["spool_batches_adopted"] += adopted
                    return True
            return self._send_run()
        try:
            rows = self.spool.read(file)
        except (OSError, ValueError) as exc:
            self.counters["spool_bad_files"] += 1
            log.log(f"spool: set aside an unreadable batch file: {exc}")
            self.spool.remove(file, set_aside=True)
            return True
        try:
            self._send(rows)
        except Refused as exc:
            self._refused = exc
            self._given_up(rows, exc.reason, str(exc))
            self.spool.remove(file)
            return True
        except Exception as exc:
            if not self.inner.store_failed(exc):
                raise
            self._failures += 1
            self.counters["spool_retries"] += 1
            log.log(f"spool: {len(rows)} rows wait for {self.location}: {exc}",
                    key="spool-retry", every=LOG_EVERY)
            asked = self.inner.retry_after(exc)
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(self._failures - 1, 16))
            delay = delay * random.uniform(0.5, 1.5)
            self.stopping.wait(max(delay, asked or 0.0))
            return False
        self._failures = 0
        self.spool.remove(file)
        self.counters["spool_batches_drained"] += 1
        self.counters["spool_rows_drained"] += len(rows)
        return True

    def _send(self, rows: list[tuple[str, dict]]) -> None:
        """Send a spooled batch; a piece the destination refuses for its content is split down
        to the rows it refuses, which are set aside. Unavailable and Refused propagate (the
        whole file is tried again, or given up)."""
        pieces = [[_Spooled(self._container(key), row) for key, row in rows]]
        while pieces:
            piece = pieces.pop()
            try:
                with self._send_lock:
                    self.inner.write(piece)
            except Refused:
                raise
            except Exception as exc:
                if self.inner.store_failed(exc):
                    raise
                if len(piece) > 1:
                    middle = len(piece) // 2
                    pieces += [piece[middle:], piece[:middle]]
                    continue
                self._given_up([(piece[0].container.key, piece[0].row)], "row_failed",
                               f"{type(exc).__name__}: {exc}")

    def _container(self, key: str) -> Container:
        container = self._containers.get(key)
        if container is None:
            if len(self._containers) > 10_000:
                self._containers.clear()
            container = self._containers[key] = Container(key)
        return container

    def _given_up(self, rows: list[tuple[str, dict]], reason: str, error: str) -> None:
        self.counters[f"dropped_{reason}"] += len(rows)
        log.log(f"spool: gave up {len(rows)} spooled rows ({reason}): {error}",
                key=f"spool-lost-{reason}", every=LOG_EVERY)
        if self.failed_dir:
            payloads.save(self.failed_dir, [(self._container(k), row) for k, row in rows],
                          reason, self.counters, error)

    def _send_run(self) -> bool:
        """Send the latest run record, if one waits; True if it went."""
        with self._cond:
            run, self._run = self._run, None
        if run is None:
            return False
        try:
            with self._send_lock:
                self.inner.record_run(*run)
            return True
        except Exception as exc:
            if self.inner.store_failed(exc):
                with self._cond:  # not sent: kept, unless a newer one came meanwhile
                    if self._run is None:
                        self._run = run
            else:
                self.counters["run_record_errors"] += 1
                log.log(f"could not record this run at {self.location}: {exc}",
                        key="run-record", every=60.0)
            return False
