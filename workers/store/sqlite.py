"""The SQLite store: one file in WAL mode (the schema: ``workers.store.schema``).

A write merges each incoming partial row into the stored one inside one ``BEGIN IMMEDIATE``
transaction, so two aggregators writing the same file (two process trees sharing a store)
cannot lose each other's merges. A new row is inserted as it is; a row already stored is merged
in SQL by ``tracer_merge``, a function of ours that SQLite calls only for those.

The file is created private to the user (0600, whatever the umask; SQLite gives its -wal and
-shm files the database's mode). A writer notices when the file it has open was removed or
replaced at its path (``os.stat`` of the path against the file it opened, once per batch and
again after each commit): it closes every connection of this process to the old file, opens a
new store at the path (schema included), writes the batch there, and reports the event
(``StoreWriter.on_replaced``). What it had committed to the old file went with that file.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from tracer import config, wire

from ..rows import Key, load_row, merge, pack_row
from . import schema
from .base import RowUpdate, SchemaVersionError, StoreReader, StoreWriter

_COLUMNS = "container, id, span_id, root_span_id, name, type, start, end, has_error, created, " \
           "updated, data"

UPSERT = f"""
INSERT INTO rows ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (container, id) DO UPDATE SET
    data = tracer_merge(rows.data, excluded.data),
    span_id = coalesce(excluded.span_id, rows.span_id),
    root_span_id = coalesce(excluded.root_span_id, rows.root_span_id),
    name = coalesce(excluded.name, rows.name),
    type = coalesce(excluded.type, rows.type),
    start = coalesce(excluded.start, rows.start),
    end = coalesce(excluded.end, rows.end),
    has_error = max(rows.has_error, excluded.has_error),
    updated = excluded.updated
"""

# Rows per INSERT statement. sqlite3 lets go of the GIL for each step of a statement: with one
# row per step (executemany), the uploader took the GIL back from the receiving thread once per
# row. 80 rows x 12 values stay under SQLite's oldest limit on variables (999).
ROWS_PER_STATEMENT = 80
_UPSERT_HEAD, _UPSERT_TAIL = UPSERT.split("VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
_upserts: dict[int, str] = {}

# A key already recorded as stored stays so (StoreWriter.record_attachment).
RECORD_ATTACHMENT = """
INSERT INTO attachments VALUES (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (key) DO UPDATE SET sha256=excluded.sha256, size=excluded.size,
    filename=excluded.filename, content_type=excluded.content_type, status=excluded.status,
    error=excluded.error, source=excluded.source, logged=excluded.logged, stored=excluded.stored
WHERE attachments.status != 'done'
"""

_ATTACHMENT_FIELDS = ("key", "sha256", "size", "filename", "content_type", "status", "error")


def _upsert(rows: int) -> str:
    """The upsert of ``rows`` rows in one statement (cached by row count)."""
    sql = _upserts.get(rows)
    if sql is None:
        values = ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * rows)
        sql = _upserts[rows] = f"{_UPSERT_HEAD}VALUES {values}{_UPSERT_TAIL}"
    return sql


def _merge_data(stored: bytes | str, update: bytes) -> bytes:
    """tracer_merge(old, new) in SQL: the reference's merge; the first ``created`` stays."""
    row = wire.unpack_stored(stored)
    new = wire.unpack_stored(update)
    if not (isinstance(row, dict) and isinstance(new, dict)):  # only rows are written to `data`
        raise ValueError("tracer_merge: a stored row is not a map")
    created = row.get("created")
    merge(row, new)
    if created is not None:
        row["created"] = created
    return pack_row(row)


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the store at ``path``. Writable: the file and a private directory are
    made if missing, and the schema brought up to date. Read-only: the file must exist; its
    schema is checked, not changed. Either raises ``SchemaVersionError`` for a newer store."""
    if readonly:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no store at {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            schema.check(schema.version(conn), path)
        except BaseException:
            conn.close()
            raise
        return conn
    directory = os.path.dirname(path)
    if directory:  # traces hold prompts and user data: a directory we create is private
        os.makedirs(directory, mode=0o700, exist_ok=True)
    if not os.path.exists(path):  # so is a file: SQLite would make it 0644 (less the umask)
        os.close(config.open_private(path, os.O_RDWR | os.O_CREAT))
    # A short busy timeout: a locked store fails fast into the uploader's retries and backoff,
    # which count and report what they could not write.
    conn = sqlite3.connect(path, timeout=2, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        schema.migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    conn.create_function("tracer_merge", 2, _merge_data, deterministic=True)
    return conn


# The writers of this process, by path: when one finds its file replaced, every connection of
# this process to the old file is closed before a new file is opened at the path. (The last
# connection to a WAL database to close removes the -wal and -shm files *at the path*: closed
# later, an old connection would remove the new store's.) The lock also keeps the writers of a
# path (the uploader's, the attachment mover's) from using a connection while it is replaced.
_writers: dict[str, weakref.WeakSet[SQLiteWriter]] = {}
_path_locks: dict[str, threading.RLock] = {}
_registry_lock = threading.Lock()

# SQLite's primary result codes for a store that failed as a whole (busy, locked, out of memory,
# read-only, interrupted, I/O error, corrupt, full, cannot open, locking protocol, no large file
# support, authorization, not a database): another try later may succeed. Anything else (an
# error in a row: a merge that raises, a value SQLite cannot hold) is in what was written.
_STORE_CODES = frozenset((3, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 22, 23, 26))
_STORE_MESSAGES = ("locked", "busy", "disk", "full", "unable to open", "readonly",
                   "not a database", "malformed", "out of memory", "interrupted")
SQLITE_FULL = 13
SQLITE_IOERR = 10


class SQLiteWriter(StoreWriter):
    """Writes to a SQLite store; the file is opened on first use (see ``StoreWriter``)."""

    def __init__(self, path: str) -> None:
        self.path = self.location = path
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file open
        self._committed = 0  # rows committed to the file open, reported if it is replaced
        self._known_containers: set[str] = set()
        with _registry_lock:
            _writers.setdefault(path, weakref.WeakSet()).add(self)
            self._lock = _path_locks.setdefault(path, threading.RLock())

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, opened (and the schema migrated) on first use, and opened anew (a
        new store) if the file it had open was removed or replaced."""
        with self._lock:
            if self._conn is not None:
                why = self._replaced()
                if why is not None:
                    self._reopen_all(why)
            if self._conn is None:
                self._conn = connect(self.path)
                self._identity = _identity(self.path)
                self._committed = 0
                self._known_containers.clear()
            return self._conn

    def write(self, batch: Sequence[RowUpdate]) -> None:
        with self._lock:
            try:
                self._write(self.conn, batch)
                why = self._replaced()  # committed into a file that was replaced meanwhile?
                if why is not None:
                    self._write(self.conn, batch)  # (reopens): nothing reported is left behind
            except sqlite3.Error as exc:
                raise self._out_of_space(exc) or exc from None
            self._committed += len(batch)

    def _write(self, conn: sqlite3.Connection, batch: Sequence[RowUpdate]) -> None:
        now = time.time()
        created = _iso(now)
        conn.execute("BEGIN IMMEDIATE")
        try:
            added = self._add_containers(conn, batch)
            rows = [_columns(p.key, p.row, now, created) for p in batch]
            for i in range(0, len(rows), ROWS_PER_STATEMENT):
                chunk = rows[i:i + ROWS_PER_STATEMENT]
                conn.execute(_upsert(len(chunk)), [value for row in chunk for value in row])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # the first error says more than this one
                    pass
            raise
        self._known_containers.update(added)  # only once they are committed

    def _add_containers(self, conn: sqlite3.Connection, batch: Sequence[RowUpdate]) -> set[str]:
        added: set[str] = set()
        for p in batch:
            c = p.container
            if c.id in self._known_containers or c.id in added:
                continue
            conn.execute(
                "INSERT OR IGNORE INTO containers VALUES (?,?,?,?,?,?,?)",
                (c.id, "project_logs" if c.experiment_id is None else "experiment",
                 c.project_id, c.project_name, c.experiment_id, c.experiment_name,
                 _iso(time.time())),
            )
            added.add(c.id)
        return added

    def _replaced(self) -> str | None:
        """Why the file at the path is not the one open ("removed", "replaced"), or None."""
        try:
            found = _identity(self.path)
        except FileNotFoundError:
            return "removed"
        except OSError:  # cannot tell (a directory we may not search): the write will say
            return None
        return None if found == self._identity else "replaced"

    def _reopen_all(self, why: str) -> None:
        """Close every connection of this process to the old file (each writer tells of it),
        and what the old file left at the path; the next use opens a new store."""
        with _registry_lock:
            writers = list(_writers.get(self.path, ()))
        for writer in writers:
            if writer._conn is not None and writer._identity == self._identity:
                committed = writer._committed
                writer.close()
                if writer.on_replaced is not None:
                    writer.on_replaced(why, committed)
        if why == "removed":
            # The database is gone: a -wal or -shm left at the path is the old file's, and a
            # new database must not take it for its own.
            for suffix in ("-wal", "-shm"):
                try:
                    os.unlink(self.path + suffix)
                except FileNotFoundError:
                    pass

    def _out_of_space(self, exc: sqlite3.Error) -> OSError | None:
        """SQLite's "database or disk is full" (or an I/O error on a file system with no space
        left) as the OSError it is, so that the cause reads "No space left on device"."""
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        full = code == SQLITE_FULL or "disk is full" in str(exc)
        if not full and not (code == SQLITE_IOERR and _no_space_left(self.path)):
            return None
        return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (SQLite: {exc})", self.path)

    def store_failed(self, exc: BaseException) -> bool:
        if isinstance(exc, (OSError, SchemaVersionError)):
            return True
        if not isinstance(exc, sqlite3.Error):
            return False
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _STORE_CODES
        message = str(exc).lower()  # Python 3.10: no error code
        return any(text in message for text in _STORE_MESSAGES)

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        now = _iso(time.time())
        with self._lock:
            self.conn.execute(
                "INSERT INTO aggregator_runs VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO "
                "UPDATE SET updated=excluded.updated, ended=excluded.ended, "
                "counters=excluded.counters",
                (run_id, info["pid"], info["host"], info["endpoint"], info["started"], now,
                 now if ended else None, json.dumps(counters, sort_keys=True)),
            )

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None:
        with self._lock:
            self.conn.execute(RECORD_ATTACHMENT, (
                key, sha256 if error is None else None, size, filename, content_type,
                "error" if error is not None else "done", error, source, logged, time.time()))
            self._committed += 1

    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        with self._lock:
            found = self.conn.execute(
                "SELECT experiment_id FROM containers WHERE kind = 'experiment' AND "
                "project_name = ? AND experiment_name = ? ORDER BY created LIMIT 1",
                (project_name, experiment_name)).fetchone()
        return found[0] if found else None

    def schema_version(self) -> int:
        with self._lock:
            return schema.version(self.conn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _no_space_left(path: str) -> bool:
    try:
        return os.statvfs(os.path.dirname(path) or ".").f_bavail == 0
    except OSError:
        return False


def _columns(key: Key, row: dict, now: float, created: str) -> tuple:
    attrs = row.get("span_attributes") or {}
    metrics = row.get("metrics") or {}
    return (key[0], key[1], row.get("span_id"), row.get("root_span_id"), attrs.get("name"),
            attrs.get("type"), _number(metrics.get("start")), _number(metrics.get("end")),
            1 if row.get("error") else 0, row.setdefault("created", created), now, pack_row(row))


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


class SQLiteReader(StoreReader):
    """Reads a SQLite store, read-only (see ``StoreReader``); the file must exist."""

    def __init__(self, path: str) -> None:
        self.path = self.location = path
        self.conn = connect(path, readonly=True)
        self.conn.row_factory = sqlite3.Row

    def containers(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM containers ORDER BY created")]

    def rows(self, project: str | None = None, experiment: str | None = None,
             root_span_id: str | None = None, span_type: str | None = None,
             errors: bool = False, since: float | None = None,
             until: float | None = None) -> Iterator[dict]:
        where: list[str] = []
        args: list[object] = []
        for clause, value in (("c.project_name = ?", project),
                              ("(c.experiment_name = ? OR c.experiment_id = ?)", experiment),
                              ("r.root_span_id = ?", root_span_id), ("r.type = ?", span_type),
                              ("r.start >= ?", since), ("r.start < ?", until)):
            if value is not None:
                where.append(clause)
                args += [value] * clause.count("?")
        if errors:
            where.append("r.has_error = 1")
        sql = ("SELECT r.data, c.project_name, c.experiment_name FROM rows r "
               "LEFT JOIN containers c ON c.id = r.container")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.start, r.created, r.id, r.container"
        for data, project_name, experiment_name in self.conn.execute(sql, args):
            row = load_row(data)
            row["project_name"] = project_name
            if experiment_name is not None:
                row["experiment_name"] = experiment_name
            yield row

    def last_root(self) -> str | None:
        found = self.conn.execute(
            "SELECT root_span_id FROM rows ORDER BY rowid DESC LIMIT 1").fetchone()
        return None if found is None else found[0]

    def runs(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute(
            "SELECT * FROM aggregator_runs ORDER BY started DESC")]

    def attachments(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return lookup_attachments(self.conn, keys)

    def schema_version(self) -> int:
        return schema.version(self.conn)

    def close(self) -> None:
        self.conn.close()


def lookup_attachments(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``StoreReader.attachments`` on a connection. A store of version 0 may have no
    attachments table (it was made once an attachment was stored): nothing is recorded."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(keys), 500):
        chunk = list(keys[start:start + 500])
        try:
            rows = conn.execute(
                f"SELECT {', '.join(_ATTACHMENT_FIELDS)} FROM attachments"
                f" WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise
        for row in rows:
            found[row[0]] = dict(zip(_ATTACHMENT_FIELDS, row, strict=True))
    return found
