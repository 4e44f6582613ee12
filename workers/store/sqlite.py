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
import re
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

from tracer import config, wire

from ..rows import Key, load_row, merge, pack_row
from . import schema, summary
from .base import (
    Cursor,
    KeyExists,
    RowUpdate,
    SchemaVersionError,
    SearchOff,
    StoreWriter,
    TraceFilter,
    TracePage,
    UpgradeRequired,
)
from .pruning import (
    ATTACHMENT_MARK,
    PROJECT_CONTAINERS,
    PRUNE_BATCH,
    PRUNE_PAUSE,
    PRUNE_ROWS,
    Gone,
    attachment_keys,
    created_epoch,
    up_to_rows,
)
from .queries import SharedQueries

_COLUMNS = "rowid, container, id, span_id, root_span_id, name, type, start, end, has_error, " \
           "created, updated, data, parents"
_VALUES = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"

# A new row gets the rowid the writer gives it (the text index is keyed by rowid: so it knows a
# new row's without asking); a row already stored keeps its own.
UPSERT = f"""
INSERT INTO rows ({_COLUMNS}) VALUES {_VALUES}
ON CONFLICT (container, id) DO UPDATE SET
    data = tracer_merge(rows.data, excluded.data, rows.container, rows.id, rows.rowid),
    span_id = coalesce(excluded.span_id, rows.span_id),
    root_span_id = coalesce(excluded.root_span_id, rows.root_span_id),
    name = coalesce(excluded.name, rows.name),
    type = coalesce(excluded.type, rows.type),
    start = coalesce(excluded.start, rows.start),
    end = coalesce(excluded.end, rows.end),
    has_error = max(rows.has_error, excluded.has_error),
    updated = excluded.updated,
    parents = coalesce(excluded.parents, rows.parents)
"""

# A replacing write (``RowUpdate.replace``: the reference's write without ``_is_merge``): the
# new row and its columns take the stored row's place whole; ``tracer_replace`` notes the
# change for the summaries as ``tracer_merge`` does.
UPSERT_REPLACE = f"""
INSERT INTO rows ({_COLUMNS}) VALUES {_VALUES}
ON CONFLICT (container, id) DO UPDATE SET
    data = tracer_replace(rows.data, excluded.data, rows.container, rows.id, rows.rowid),
    span_id = excluded.span_id,
    root_span_id = excluded.root_span_id,
    name = excluded.name,
    type = excluded.type,
    start = excluded.start,
    end = excluded.end,
    has_error = excluded.has_error,
    created = excluded.created,
    updated = excluded.updated,
    parents = excluded.parents
"""

# Rows per INSERT statement. sqlite3 lets go of the GIL for each step of a statement: with one
# row per step (executemany), the uploader took the GIL back from the receiving thread once per
# row. 71 rows x 14 values stay under SQLite's oldest limit on variables (999).
ROWS_PER_STATEMENT = 71
_UPSERT_HEAD, _UPSERT_TAIL = UPSERT.split(f"VALUES {_VALUES}")
_REPLACE_HEAD, _REPLACE_TAIL = UPSERT_REPLACE.split(f"VALUES {_VALUES}")
_upserts: dict[tuple[int, bool], str] = {}

# A key already recorded as stored stays so (StoreWriter.record_attachment).
RECORD_ATTACHMENT = """
INSERT INTO attachments VALUES (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (key) DO UPDATE SET sha256=excluded.sha256, size=excluded.size,
    filename=excluded.filename, content_type=excluded.content_type, status=excluded.status,
    error=excluded.error, source=excluded.source, logged=excluded.logged, stored=excluded.stored
WHERE attachments.status != 'done'
"""

_RUN_FIELDS = ("run_id", "pid", "host", "endpoint", "started", "updated", "ended", "counters")
_ATTACHMENT_FIELDS = ("key", "sha256", "size", "filename", "content_type", "status", "error")


def _upsert(rows: int, replace: bool = False) -> str:
    """The upsert of ``rows`` rows in one statement, merging or (``replace``) replacing
    (cached by row count and kind)."""
    sql = _upserts.get((rows, replace))
    if sql is None:
        values = ",".join([_VALUES] * rows)
        head, tail = (_REPLACE_HEAD, _REPLACE_TAIL) if replace else (_UPSERT_HEAD, _UPSERT_TAIL)
        sql = _upserts[(rows, replace)] = f"{head}VALUES {values}{tail}"
    return sql


def _merge_data(stored: bytes | str, update: bytes) -> bytes:
    """The merge of ``update`` into the stored row: the reference's merge; the first
    ``created`` stays."""
    return pack_row(_merged(wire.unpack_stored(stored), update))


def _merged(row: object, update: bytes | object) -> dict:
    """``row`` with ``update`` (packed, or unpacked already) merged into it (in place)."""
    new = wire.unpack_stored(update) if isinstance(update, (bytes, str)) else update
    if not (isinstance(row, dict) and isinstance(new, dict)):  # only rows are written to `data`
        raise ValueError("tracer_merge: a stored row is not a map")
    created = row.get("created")
    merge(row, new)
    if created is not None:
        row["created"] = created
    return row


class _Merges:
    """``tracer_merge(old, new, container, id, rowid)`` in SQL, called by the upsert for each
    row already stored: merges, and notes for the batch's summaries what the row added to its
    trace before its first merge of the batch, the text the index held for it then (once a
    merge of the batch writes a field that text depends on), the row after its last merge and
    its rowid (``summary.Change``)."""

    def __init__(self) -> None:
        # key -> [summary.Part before, row after, merges, text indexed before or None, rowid]
        self.seen: dict[Key, list] = {}
        self.mode = "all"  # the store's search mode, set by the writer for each batch

    def __call__(self, stored: bytes | str, update: bytes, container: str, row_id: str,
                 rowid: int) -> bytes:
        return self._write(stored, update, container, row_id, rowid, False)

    def replace(self, stored: bytes | str, update: bytes, container: str, row_id: str,
                rowid: int) -> bytes:
        """``tracer_replace``: as ``tracer_merge``, but the update takes the row's place."""
        return self._write(stored, update, container, row_id, rowid, True)

    def _write(self, stored: bytes | str, update: bytes, container: str, row_id: str,
               rowid: int, replace: bool) -> bytes:
        key = (container, row_id)
        entry = self.seen.get(key)
        if entry is not None:  # merged into again in this batch: the stored row is entry[1]
            new = wire.unpack_stored(update)
            if entry[3] is None and (replace or isinstance(new, dict) and summary.touches_text(
                    new, self.mode)):
                # The merges before this one left the indexed text as it was before the batch.
                entry[3] = summary.indexed_text(entry[1], self.mode)
            entry[1] = _replacing(new) if replace else _merged(entry[1], new)
            entry[2] += 1
            return pack_row(entry[1])
        row = wire.unpack_stored(stored)
        new = wire.unpack_stored(update)
        before = old_text = None
        if isinstance(row, dict):
            before = summary.part(row)
            if replace or isinstance(new, dict) and summary.touches_text(new, self.mode):
                old_text = summary.indexed_text(row, self.mode)
        after = _replacing(new) if replace else _merged(row, new)
        self.seen[key] = [before, after, 1, old_text, rowid]
        return pack_row(after)


def _replacing(new: object) -> dict:
    """The row a replacing write leaves: the update itself."""
    if not isinstance(new, dict):  # only rows are written to `data`
        raise ValueError("tracer_replace: a row is not a map")
    return new


def _create(path: str) -> None:
    """Make a new store at ``path``, whole: its schema is written into a private temporary file
    beside it, which is then linked into place. A reader never finds a store file without its
    tables (the schema takes a while to write), and of two writers making one store at once,
    the second finds the first's. The file is 0600 (traces hold prompts and user data; SQLite
    would make it 0644, less the umask)."""
    fd, temporary = tempfile.mkstemp(prefix=".new-", suffix=".db",
                                     dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        conn = sqlite3.connect(temporary, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # kept in the file's header
            schema.migrate(conn, temporary)
        finally:
            conn.close()  # checkpoints the WAL into the file
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another writer made it first: use theirs
        except OSError:  # a file system without hard links: a rename, unless one appeared
            if not os.path.exists(path):
                os.rename(temporary, path)
    finally:
        for leftover in (temporary, temporary + "-wal", temporary + "-shm"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass


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
    if not os.path.exists(path):
        _create(path)
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


#: A writer's ``search_index`` that keeps the store's own (what ``tracer prune`` and the trace
#: server's retention write with: pruning never rebuilds the text index to another setting).
STORE_SEARCH_INDEX = "store"


class SQLiteWriter(StoreWriter):
    """Writes to a SQLite store; the file is opened on first use (see ``StoreWriter``)."""

    def __init__(self, path: str, search_index: str | None = None) -> None:
        self.path = self.location = path
        # What the text index covers (summary.SEARCH_MODES): a store set otherwise has its index
        # rebuilt when this writer opens it (unless STORE_SEARCH_INDEX: the store's own).
        self.search_index: str = (search_index if search_index is not None
                                  else config.value_or_default("SEARCH_INDEX"))
        if self.search_index not in (*summary.SEARCH_MODES, STORE_SEARCH_INDEX):
            raise ValueError(f"search_index={self.search_index!r}: expected one of "
                             f"{', '.join(summary.SEARCH_MODES)}")
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file open
        self._committed = 0  # rows committed to the file open, reported if it is replaced
        self._known_containers: set[str] = set()
        self._merges = _Merges()
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
                self._conn.create_function("tracer_merge", 5, self._merges)
                self._conn.create_function("tracer_replace", 5, self._merges.replace)
                self._set_search_mode(self._conn)
                self._identity = _identity(self.path)
                self._committed = 0
                self._known_containers.clear()
            return self._conn

    def _set_search_mode(self, conn: sqlite3.Connection) -> None:
        """Rebuild the text index if the store covers other spans than this writer is set to
        (under the write lock: two writers opening one store at once rebuild it once)."""
        if self.search_index == STORE_SEARCH_INDEX or \
                summary.search_mode(conn) == self.search_index:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if summary.search_mode(conn) != self.search_index:
                summary.reindex(conn, load_row, self.search_index)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

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
            # The store's mode, not this writer's: another writer may have set it since.
            mode = self._merges.mode = summary.search_mode(conn)
            added = self._add_containers(conn, batch)
            # The rowids new rows get: past every row stored (this transaction holds the
            # write lock); the first write of a key in the batch inserts it, if anything does.
            first = (conn.execute("SELECT max(rowid) FROM rows").fetchone()[0] or 0) + 1
            rowids: dict[Key, int] = {}
            for p in batch:
                rowids.setdefault(p.key, first + len(rowids))
            rows = [_columns(rowids[p.key], p.key, p.row, now, created) for p in batch]
            self._merges.seen.clear()
            # Runs of merging and of replacing writes, in the batch's order, each in
            # statements of up to ROWS_PER_STATEMENT rows.
            for replace, run in _runs(batch, rows):
                for i in range(0, len(run), ROWS_PER_STATEMENT):
                    chunk = run[i:i + ROWS_PER_STATEMENT]
                    conn.execute(_upsert(len(chunk), replace),
                                 [value for row in chunk for value in row])
            summary.apply(conn, self._changes(batch, rowids, mode), now, mode)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # the first error says more than this one
                    pass
            raise
        finally:
            self._merges.seen.clear()
        self._known_containers.update(added)  # only once they are committed

    def _changes(self, batch: Sequence[RowUpdate], rowids: dict[Key, int],
                 mode: str) -> list[summary.Change]:
        """Each key's change over the batch, for the summaries and the text index: the upsert
        merged into the rows that were stored (``_Merges``) and inserted the others (a key
        written n times was new if it was merged into n - 1 times), with the rowid it was
        given; a row stored before keeps its own (``_Merges`` has it)."""
        touches = summary.touches_text
        counts: dict[Key, list] = {}  # key -> [occurrences, last partial row, wrote text]
        for p in batch:
            entry = counts.get(p.key)
            # A replacing write may take away the fields the text was made of.
            text = touches(p.row, mode) or getattr(p, "replace", False)
            if entry is None:
                counts[p.key] = [1, p.row, text]
            else:
                entry[0] += 1
                entry[1] = p.row
                entry[2] = entry[2] or text
        changes = []
        seen = self._merges.seen
        for key, (occurrences, row, text) in counts.items():
            merged = seen.get(key)
            rowid: int | None = rowids[key]
            old_text = ""
            if merged is None:
                before, after = None, row
            else:
                before = merged[0] if merged[2] == occurrences else None
                after = merged[1]
                if before is not None:  # stored before the batch: its own rowid
                    rowid = merged[4]
                    old_text = merged[3] or ""
            changes.append(summary.Change(key[0], key[1], before, after, rowid, text, old_text))
        return changes

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

    def import_containers(self, containers: Sequence[dict]) -> None:
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO containers VALUES (?,?,?,?,?,?,?)",
                    [(c["id"], c["kind"], c["project_id"], c["project_name"], c["experiment_id"],
                      c["experiment_name"], c["created"]) for c in containers])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def import_run(self, run: dict) -> None:
        with self._lock:
            self.conn.execute("INSERT OR IGNORE INTO aggregator_runs VALUES (?,?,?,?,?,?,?,?)",
                              tuple(run[f] for f in _RUN_FIELDS))

    def add_api_key(self, name: str, digest: str, projects: Sequence[str] | None) -> None:
        with self._lock:
            try:
                self.conn.execute(
                    "INSERT INTO api_keys (name, hash, projects, created) VALUES (?,?,?,?)",
                    (name, digest, None if projects is None else json.dumps(list(projects)),
                     _iso(time.time())))
            except sqlite3.IntegrityError:
                raise KeyExists(name) from None

    def revoke_api_key(self, name: str) -> bool:
        with self._lock:
            found = self.conn.execute("SELECT revoked FROM api_keys WHERE name = ?",
                                      (name,)).fetchone()
            if found is None:
                raise KeyError(name)
            if found[0] is not None:
                return False
            self.conn.execute("UPDATE api_keys SET revoked = ? WHERE name = ?",
                              (_iso(time.time()), name))
            return True

    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        with self._lock:
            found = self.conn.execute(
                "SELECT experiment_id FROM containers WHERE kind = 'experiment' AND "
                "project_name = ? AND experiment_name = ? ORDER BY created LIMIT 1",
                (project_name, experiment_name)).fetchone()
        return found[0] if found else None

    # -- retention ---------------------------------------------------------------------------

    def prune(self, before: float, project: str | None = None, *, dry_run: bool = False,
              batch: int = PRUNE_BATCH,
              progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, int]:
        if batch < 1:
            raise ValueError(f"batch={batch}: expected at least 1")
        where: str = "t.start < ?"
        args: list[object] = [before]
        with self._lock:
            if project is not None:
                if self.conn.execute(PROJECT_CONTAINERS, (project,)).fetchone() is None:
                    raise ValueError(f"no project {project!r} in store {self.location}")
                where += f" AND t.container IN ({PROJECT_CONTAINERS})"
                args.append(project)
        counts = {"traces": 0, "rows": 0}
        if dry_run:
            with self._lock:
                traces, rows = self.conn.execute(
                    "SELECT count(*), coalesce(sum((SELECT count(*) FROM rows r WHERE "
                    "r.root_span_id = t.root_span_id AND +r.container = t.container)), 0) "
                    f"FROM traces t WHERE {where}", args).fetchone()
            counts.update(traces=traces, rows=rows + len(self._rows_without_trace(
                before, project)))
            return counts
        # Container by container, each from its oldest trace on (the summaries' index): a
        # batch reads only what it removes, and a trace written meanwhile behind the prune's
        # position waits for the next prune (one that kept arriving would keep it going).
        with self._lock:
            containers = [c for (c,) in self.conn.execute(
                "SELECT id FROM containers" + (" WHERE project_name = ?" if project else "")
                + " ORDER BY id", (project,) if project else ())]
        for container in containers:
            position: tuple[float, str] | None = None
            while True:
                with self._lock:
                    position = self._prune_traces(self.conn, container, before, position,
                                                  batch, counts)
                if progress is not None:
                    progress(dict(counts))
                if position is None:
                    break
                time.sleep(PRUNE_PAUSE)
        loose = self._rows_without_trace(before, project)
        for start in range(0, len(loose), PRUNE_ROWS):
            with self._lock:
                counts["rows"] += self._prune_rows(self.conn, loose[start:start + PRUNE_ROWS])
            if progress is not None:
                progress(dict(counts))
            time.sleep(PRUNE_PAUSE)
        return counts

    def _prune_traces(self, conn: sqlite3.Connection, container: str, before: float,
                      position: tuple[float, str] | None, batch: int,
                      counts: dict[str, int]) -> tuple[float, str] | None:
        """Remove up to ``batch`` traces of ``container`` that started before ``before``,
        after ``position`` (``(start, root_span_id)``), of about ``PRUNE_ROWS`` rows in all,
        in one transaction; the position of the last one removed, or None once none is
        left."""
        sql = ("SELECT root_span_id, start, spans FROM traces WHERE container = ? AND "
               "start < ?")
        args: list[object] = [container, before]
        if position is not None:
            sql += " AND (start, root_span_id) > (?, ?)"
            args += position
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = conn.execute(f"{sql} ORDER BY start, root_span_id LIMIT ?",
                                 [*args, batch]).fetchall()
            traces = up_to_rows(found)
            mode = summary.search_mode(conn)
            for root, _, _ in traces:  # (+container: through rows_by_root, as _SKELETON_JSON)
                stored = conn.execute("SELECT rowid, data FROM rows WHERE root_span_id = ? "
                                      "AND +container = ?", (root, container)).fetchall()
                _unindex(conn, stored, mode)
                conn.execute("DELETE FROM rows WHERE root_span_id = ? AND +container = ?",
                             (root, container))
                conn.execute("DELETE FROM traces WHERE container = ? AND root_span_id = ?",
                             (container, root))
                counts["rows"] += len(stored)
            counts["traces"] += len(traces)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if len(traces) == len(found) < batch:
            return None
        return traces[-1][1], traces[-1][0]

    def _rows_without_trace(self, before: float, project: str | None) -> list[int]:
        """The rowids of the rows with no trace (no ``root_span_id``) created before
        ``before``."""
        sql = "SELECT rowid, created FROM rows WHERE root_span_id IS NULL"
        args: list = []
        if project is not None:
            sql += f" AND container IN ({PROJECT_CONTAINERS})"
            args.append(project)
        with self._lock:
            found = self.conn.execute(sql, args).fetchall()
        return [rowid for rowid, created in found
                if (when := created_epoch(created)) is not None and when < before]

    def _prune_rows(self, conn: sqlite3.Connection, rowids: list[int]) -> int:
        """Remove these rows if they still have no trace; how many were."""
        removed = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            mode = summary.search_mode(conn)
            for rowid in rowids:
                found = conn.execute("SELECT rowid, data FROM rows WHERE rowid = ? AND "
                                     "root_span_id IS NULL", (rowid,)).fetchall()
                _unindex(conn, found, mode)
                conn.execute("DELETE FROM rows WHERE rowid = ? AND root_span_id IS NULL",
                             (rowid,))
                removed += len(found)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return removed

    def collect_attachments(self, stored_before: float, keep: Collection[str] = (), *,
                            dry_run: bool = False,
                            pruned: tuple[float, str | None] | None = None
                            ) -> tuple[int, set[str]]:
        with self._lock:
            conn = self.conn
            candidates = {key for (key,) in conn.execute(
                "SELECT key FROM attachments WHERE coalesce(stored, 0) < ?", (stored_before,))}
        candidates.difference_update(keep)
        sql = ("SELECT rowid, data, root_span_id, created, container FROM rows r WHERE "
               "rowid > ? AND instr(data, ?) > 0")
        args: list[object] = [ATTACHMENT_MARK]
        gone = Gone(pruned, self._project_containers(pruned[1]) if pruned else None)
        if pruned is not None:  # (the rows of the traces a prune would remove count as gone)
            sql += " AND NOT EXISTS (SELECT 1 FROM traces t WHERE t.container = r.container " \
                   "AND t.root_span_id = r.root_span_id AND t.start < ?"
            args.append(pruned[0])
            if pruned[1] is not None:
                sql += f" AND t.container IN ({PROJECT_CONTAINERS})"
                args.append(pruned[1])
            sql += ")"
        last = 0
        while candidates:  # (rows without the mark refer to no attachment: not read)
            with self._lock:
                chunk = self.conn.execute(f"{sql} ORDER BY rowid LIMIT 500",
                                          [last, *args]).fetchall()
            if not chunk:
                break
            for _, data, root, created, container in chunk:
                if not gone.loose(root, created, container):
                    candidates.difference_update(attachment_keys(wire.unpack_stored(data)))
            last = chunk[-1][0]
        removed = sorted(candidates)
        if not dry_run:
            for start in range(0, len(removed), 500):
                with self._lock:
                    self.conn.executemany("DELETE FROM attachments WHERE key = ?",
                                          [(key,) for key in removed[start:start + 500]])
        with self._lock:
            shas = {sha for (key, sha) in self.conn.execute(
                "SELECT key, sha256 FROM attachments WHERE sha256 IS NOT NULL")
                if not dry_run or key not in candidates}
        return len(removed), shas

    def _project_containers(self, project: str | None) -> set[str] | None:
        if project is None:
            return None
        with self._lock:
            return {c for (c,) in self.conn.execute(PROJECT_CONTAINERS, (project,))}

    def recorded_blobs(self, sha256s: Collection[str]) -> set[str]:
        wanted = list(sha256s)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            with self._lock:
                found.update(sha for (sha,) in self.conn.execute(
                    f"SELECT DISTINCT sha256 FROM attachments WHERE sha256 IN "
                    f"({','.join('?' * len(chunk))})", chunk))
        return found

    def schema_version(self) -> int:
        with self._lock:
            return schema.version(self.conn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _unindex(conn: sqlite3.Connection, found: list[tuple[int, bytes | str]], mode: str) -> None:
    """Take rows (``(rowid, data)``) out of the text index, with the words they went in with
    (``summary.indexed_text`` of the row as stored: the contentless index keeps no copy)."""
    if mode == "off":
        return
    texts = []
    for rowid, data in found:
        row = wire.unpack_stored(data)
        text = summary.indexed_text(row, mode) if isinstance(row, dict) else ""
        if text:
            texts.append((rowid, text))
    if texts:
        conn.executemany("INSERT INTO rows_fts (rows_fts, rowid, text) VALUES ('delete', ?, ?)",
                         texts)


def _identity(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _no_space_left(path: str) -> bool:
    try:
        return os.statvfs(os.path.dirname(path) or ".").f_bavail == 0
    except OSError:
        return False


def _runs(batch: Sequence[RowUpdate], rows: list[tuple]) -> Iterator[tuple[bool, list[tuple]]]:
    """``rows`` (the columns of ``batch``'s updates) in runs of one kind, in order:
    ``(replace, run)``."""
    start = 0
    for i in range(1, len(batch) + 1):
        if i == len(batch) or (getattr(batch[i], "replace", False)
                               != getattr(batch[start], "replace", False)):
            yield bool(getattr(batch[start], "replace", False)), rows[start:i]
            start = i


def _columns(rowid: int, key: Key, row: dict, now: float, created: str) -> tuple:
    attrs = row.get("span_attributes") or {}
    metrics = row.get("metrics") or {}
    return (rowid, key[0], key[1], row.get("span_id"), row.get("root_span_id"), attrs.get("name"),
            attrs.get("type"), _number(metrics.get("start")), _number(metrics.get("end")),
            1 if row.get("error") else 0, row.setdefault("created", created), now, pack_row(row),
            summary.parents_text(row))


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


class SQLiteReader(SharedQueries):
    """Reads a SQLite store, read-only (see ``StoreReader``); the file must exist."""

    def __init__(self, path: str) -> None:
        self.path = self.location = path
        self.conn = connect(path, readonly=True)
        self.conn.row_factory = sqlite3.Row

    def _query(self, sql: str, args: Sequence[Any] = ()) -> Iterable[tuple]:
        return self.conn.execute(sql, args)

    def _decode(self, value: Any) -> Any:
        return json.loads(value)

    def containers(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM containers ORDER BY created")]

    def last_root(self) -> str | None:
        found = self.conn.execute(
            "SELECT root_span_id FROM rows ORDER BY rowid DESC LIMIT 1").fetchone()
        return None if found is None else found[0]

    def runs(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute(
            "SELECT * FROM aggregator_runs ORDER BY started DESC")]

    def stored_rows(self) -> Iterator[tuple[str, dict]]:
        # As stored (not load_row's JSON view): a value JSON cannot hold is copied as it is.
        for container, data in self.conn.execute("SELECT container, data FROM rows "
                                                 "ORDER BY rowid"):
            row = wire.unpack_stored(data)
            if not isinstance(row, dict):  # (only rows are written to `data`)
                raise ValueError(f"a stored row of {container!r} is not a map")
            yield container, row

    def attachment_records(self) -> list[dict]:
        try:
            cursor = self.conn.execute("SELECT * FROM attachments ORDER BY key")
        except sqlite3.OperationalError as exc:  # (version 0 without any attachment)
            if "no such table" in str(exc):
                return []
            raise
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def attachments(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return lookup_attachments(self.conn, keys)

    def api_keys(self) -> list[dict]:
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                             "name = 'api_keys'").fetchone() is None:
            return []  # (a store from before version 4)
        return [{"name": name, "hash": digest,
                 "projects": None if projects is None else json.loads(projects),
                 "created": created, "revoked": revoked}
                for name, digest, projects, created, revoked in self.conn.execute(
                    "SELECT name, hash, projects, created, revoked FROM api_keys "
                    "ORDER BY created, name")]

    def schema_version(self) -> int:
        return schema.version(self.conn)

    def close(self) -> None:
        self.conn.close()

    # -- the trace server's queries (workers.store.summary keeps what they read) -------------

    def _require_summaries(self) -> None:
        found = schema.version(self.conn)
        if found < SUMMARIES_VERSION:
            raise UpgradeRequired(self.path, found, SUMMARIES_VERSION)

    def projects(self) -> list[dict]:
        self._require_summaries()
        projects: dict[str, dict] = {}
        for c in self.containers():
            p = projects.setdefault(c["project_name"], {
                "name": c["project_name"], "id": c["project_id"], "traces": 0,
                "experiments": 0, "last_start": None})
            if c["kind"] == "experiment":
                p["experiments"] += 1
            else:
                p["traces"] = self.conn.execute(
                    "SELECT count(*) FROM traces WHERE container = ?", (c["id"],)).fetchone()[0]
            last = self.conn.execute("SELECT max(start) FROM traces WHERE container = ?",
                                     (c["id"],)).fetchone()[0]
            if last is not None and (p["last_start"] is None or last > p["last_start"]):
                p["last_start"] = last
        return sorted(projects.values(), key=lambda p: p["name"])

    def _container(self, project: str | None, experiment_id: str | None) -> str | None:
        if experiment_id is not None:
            found = self.conn.execute(
                "SELECT id FROM containers WHERE kind = 'experiment' AND experiment_id = ?",
                (experiment_id,)).fetchone()
        else:
            found = self.conn.execute(
                "SELECT id FROM containers WHERE kind = 'project_logs' AND project_name = ?",
                (project,)).fetchone()
        return None if found is None else found[0]

    def trace_summaries(self, *, project: str | None = None, experiment_id: str | None = None,
                        filters: TraceFilter | None = None, limit: int = 50,
                        before: Cursor | None = None,
                        after: Cursor | None = None) -> TracePage | None:
        self._require_summaries()
        container = self._container(project, experiment_id)
        if container is None:
            return None
        where = ["t.container = ?"]
        args: list[object] = [container]
        if before is not None:
            where.append("(t.start, t.root_span_id) < (?, ?)")
            args += before
        if after is not None:
            where.append("(t.start, t.root_span_id) > (?, ?)")
            args += after
        f = filters or TraceFilter()
        if f.since is not None:
            where.append("t.start >= ?")
            args.append(f.since)
        if f.until is not None:
            where.append("t.start < ?")
            args.append(f.until)
        if f.name:
            where.append("substr(t.name, 1, ?) = ?")
            args += [len(f.name), f.name]
        if f.span_type is not None:
            where.append("t.types & ? != 0")
            args.append(summary.TYPE_BITS.get(f.span_type, summary.OTHER_TYPE_BIT))
        if f.errors:
            where.append("t.errors > 0")
        for name, op, threshold in f.scores:
            where.append(f"{_json_value('t.scores', name, args)} {'>' if op == 'gt' else '<'} ?")
            args.append(threshold)
        for key, wanted in f.metadata:
            where.append(f"{_json_value('t.metadata', key, args)} = ?")
            args.append(wanted)
        if f.text and summary.search_mode(self.conn) == "off":
            raise SearchOff(self.path)
        query = summary.match_query(f.text) if f.text else None
        if query is not None and self._matches_at_most(query, TEXT_SET_BOUND):
            where.append(_TEXT_MATCH)
            args.append(query)
            query = None
        if query is None:
            found = self.conn.execute(_page_sql(where), [*args, limit + 1]).fetchall()
        else:
            found = self._matching_in_order(container, where, args, query, limit + 1)
        traces = [_summary(row) for row in found[:limit]]
        more = len(found) > limit
        last = traces[-1] if traces and more else None
        return TracePage(traces, (last["start"], last["root_span_id"]) if last else None)

    def _matches_at_most(self, query: str, bound: int) -> bool:
        """Whether at most ``bound`` spans match the text query (counted no further)."""
        (count,) = self.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM rows_fts WHERE rows_fts MATCH ? LIMIT ?)",
            (query, bound + 1)).fetchone()
        return bool(count <= bound)

    def _matching_in_order(self, container: str, where: list[str], args: list[object],
                           query: str, wanted: int) -> list[tuple]:
        """The first ``wanted`` traces (newest first) that ``where`` keeps and that have a span
        matching the text query, read TEXT_CHUNK traces at a time."""
        matched_keys: list[str] = []
        keys_sql = _keys_sql(where)
        more_sql = _keys_sql([*where, "(t.start, t.root_span_id) < (?, ?)"])
        chunk = self.conn.execute(keys_sql, [*args, TEXT_CHUNK]).fetchall()
        while chunk and len(matched_keys) < wanted:
            # The chunk's spans from rows_by_root alone (their container is not in it: the
            # chunk's traces are of one container, and a root_span_id is unique in practice).
            spans: list[tuple[int, str]] = []
            roots = [root for root, _ in chunk]
            for i in range(0, len(roots), 500):
                part = roots[i:i + 500]
                spans += self.conn.execute(
                    "SELECT rowid, root_span_id FROM rows WHERE root_span_id IN "
                    f"({','.join('?' * len(part))})", part).fetchall()
            if spans:
                low = min(span[0] for span in spans)
                high = max(span[0] for span in spans)
                hits = {rowid for (rowid,) in self.conn.execute(
                    "SELECT rowid FROM rows_fts WHERE rows_fts MATCH ? AND rowid BETWEEN ? AND ?",
                    (query, low, high))}
                matched = {root for rowid, root in spans if rowid in hits}
                matched_keys += [root for root in roots if root in matched]
            if len(chunk) < TEXT_CHUNK:
                break
            last_root, last_start = chunk[-1]
            chunk = self.conn.execute(more_sql, [*args, last_start, last_root,
                                                 TEXT_CHUNK]).fetchall()
        keys = matched_keys[:wanted]
        found: list[tuple] = []
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            found += self.conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM traces t WHERE t.container = ? AND "
                f"t.root_span_id IN ({','.join('?' * len(part))})", [container, *part]).fetchall()
        found.sort(key=lambda row: (row[4], row[0]), reverse=True)
        return found

    def _trace_container(self, root_span_id: str) -> str | None:
        """The container of a trace: that of its first span (a root_span_id shared across
        containers would be a coincidence of imported ids)."""
        found = self.conn.execute("SELECT container FROM rows WHERE root_span_id = ? "
                                  "ORDER BY start LIMIT 1", (root_span_id,)).fetchone()
        return None if found is None else found[0]

    def trace_skeleton(self, root_span_id: str) -> dict | None:
        self._require_summaries()
        container = self._trace_container(root_span_id)
        if container is None:
            return None
        found = self.conn.execute(
            "SELECT id, span_id, parents, name, type, start, end, has_error FROM rows "
            "WHERE root_span_id = ? AND +container = ? ORDER BY start, rowid",
            (root_span_id, container)).fetchall()
        loads = json.loads
        spans = [{"row_id": row_id, "span_id": span_id,
                  "parents": loads(parents) if parents else [], "name": name, "type": kind,
                  "start": start, "end": end, "error": bool(has_error), "running": end is None}
                 for row_id, span_id, parents, name, kind, start, end, has_error in found]
        return {"root_span_id": root_span_id, "container": self._describe(container),
                "spans": spans}

    def trace_skeleton_json(self, root_span_id: str) -> str | None:
        # SQLite writes the spans' JSON itself: for 100,000 spans, a third of the time Python
        # takes to make and encode the dicts. Times with 16 significant digits (SQLite's
        # default of 15 would round epoch seconds to 10 µs; 16 keep the microsecond).
        self._require_summaries()
        container = self._trace_container(root_span_id)
        if container is None:
            return None
        (spans,) = self.conn.execute(_SKELETON_JSON, (root_span_id, container)).fetchone()
        head = json.dumps({"root_span_id": root_span_id,
                           "container": self._describe(container)}, ensure_ascii=False)
        return f'{head[:-1]},"spans":{spans}}}'

    def _describe(self, container: str) -> dict:
        c = self.conn.execute("SELECT kind, project_name, experiment_id, experiment_name FROM "
                              "containers WHERE id = ?", (container,)).fetchone()
        if c is None:
            return {"kind": None, "project": None, "experiment_id": None,
                    "experiment_name": None}
        return {"kind": c[0], "project": c[1], "experiment_id": c[2], "experiment_name": c[3]}

    def span_row(self, root_span_id: str, span_id: str) -> dict | None:
        self._require_summaries()
        found = self.conn.execute(
            "SELECT r.data, c.project_name, c.experiment_name FROM rows r LEFT JOIN containers c"
            " ON c.id = r.container WHERE r.root_span_id = ? AND r.span_id = ? "
            "ORDER BY r.rowid LIMIT 1", (root_span_id, span_id)).fetchone()
        if found is None:
            return None
        row = load_row(found[0])
        row["project_name"] = found[1]
        if found[2] is not None:
            row["experiment_name"] = found[2]
        return row


SUMMARIES_VERSION = 2  # the schema version that has the trace server's tables

# `+container`: the trace's rows through rows_by_root, never a scan of the container's rows in
# start order through rows_by_time (what SQLite picks otherwise, to skip a sort).
_SKELETON_JSON = """
-- (printf of NULL is '0': a missing start or end is kept NULL by the iif.)
SELECT json_group_array(json_object(
    'row_id', id, 'span_id', span_id, 'parents', json(coalesce(parents, '[]')), 'name', name,
    'type', type, 'start', iif(start IS NULL, NULL, json(printf('%.17g', start))),
    'end', iif(end IS NULL, NULL, json(printf('%.17g', end))),
    'error', json(iif(has_error, 'true', 'false')),
    'running', json(iif(end IS NULL, 'true', 'false'))))
FROM (SELECT * FROM rows WHERE root_span_id = ? AND +container = ? ORDER BY start, rowid)
"""

_SUMMARY_COLUMNS = ("t.root_span_id, t.row_id, t.name, t.type, t.start, t.end, t.spans, "
                    "t.errors, t.scores, t.tokens")


def _keys_sql(where: list[str]) -> str:
    """The (root_span_id, start) of the traces ``where`` keeps, newest first, ``LIMIT ?``:
    from traces_by_start alone when the filters are on its columns (types, errors)."""
    return (f"SELECT t.root_span_id, t.start FROM traces t WHERE {' AND '.join(where)} "
            "ORDER BY t.start DESC, t.root_span_id DESC LIMIT ?")


def _page_sql(where: list[str]) -> str:
    """The summaries of the traces ``where`` keeps, newest first, ``LIMIT ?``: the keys first
    (a filter no trace passes then reads the index alone: 14 ms for 100,000 traces, against
    85 ms reading each trace's row), the rest of the row for those kept."""
    return (f"SELECT {_SUMMARY_COLUMNS} FROM (SELECT t.container AS kc, t.root_span_id AS kr, "
            f"t.start AS ks FROM traces t WHERE {' AND '.join(where)} ORDER BY t.start DESC, "
            "t.root_span_id DESC LIMIT ?) k JOIN traces t ON t.container = k.kc AND "
            "t.root_span_id = k.kr ORDER BY k.ks DESC, k.kr DESC")

# Text search, two ways (``trace_summaries``). A word in at most this many spans: the matching
# spans' traces are found once, then listed as any filter lists them. A commoner word: the
# traces the other filters keep are read newest first, TEXT_CHUNK at a time, and each chunk's
# spans are looked up in the text index at once (a rowid range); a common word fills a page
# from the first chunks, where looking up every matching span would take seconds.
TEXT_SET_BOUND = 20_000
TEXT_CHUNK = 1000

# Traces with a span whose input or output matches: the matching rows found once (the text
# index), their traces looked up among them.
_TEXT_MATCH = ("(t.container, t.root_span_id) IN (SELECT r.container, r.root_span_id FROM "
               "rows_fts f JOIN rows r ON r.rowid = f.rowid WHERE rows_fts MATCH ?)")

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_]{1,100}")


def _json_value(column: str, key: str, args: list[object]) -> str:
    """SQL for the value of a top-level key of a JSON object column (None if absent); the key
    goes into ``args``."""
    if _PLAIN_KEY.fullmatch(key):  # a JSON path; any other key through json_each
        args.append(f'$."{key}"')
        return f"json_extract({column}, ?)"
    args.append(key)
    return f"(SELECT value FROM json_each({column}) WHERE key = ?)"


def _summary(found: tuple) -> dict:
    root, row_id, name, kind, start, end, spans, errors, scores, tokens = found
    return {"root_span_id": root, "row_id": row_id, "name": name, "type": kind,
            "start": start, "end": end,
            "duration": end - start if end is not None and row_id is not None else None,
            "spans": spans, "errors": errors, "running": end is None,
            "scores": json.loads(scores) if scores else {},
            "tokens": (int(tokens) if float(tokens).is_integer() else tokens) if tokens else None}


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
