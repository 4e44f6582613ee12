"""The default sink and store: one SQLite file in WAL mode.

``rows`` holds one row per (container, id), the full row in ``data`` (msgpack: ``rows.load_row``
reads it; stores written before that hold JSON text, which is read too) plus the columns the tree
and time queries need. A write merges each incoming partial row into the stored one inside
one ``BEGIN IMMEDIATE`` transaction, so two aggregators writing the same file (two process trees
sharing a store) cannot lose each other's merges.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from tracer import wire

from ..rows import load_row, merge, pack_row

SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    container TEXT NOT NULL,
    id TEXT NOT NULL,
    span_id TEXT,
    root_span_id TEXT,
    name TEXT,
    type TEXT,
    start REAL,
    end REAL,
    has_error INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    updated REAL NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (container, id)
);
CREATE INDEX IF NOT EXISTS rows_by_root ON rows (root_span_id, start);
CREATE INDEX IF NOT EXISTS rows_by_time ON rows (container, start);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    project_id TEXT NOT NULL,
    project_name TEXT NOT NULL,
    experiment_id TEXT,
    experiment_name TEXT,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS aggregator_runs (
    run_id TEXT PRIMARY KEY,
    pid INTEGER,
    host TEXT,
    endpoint TEXT,
    started TEXT,
    updated TEXT,
    ended TEXT,
    counters TEXT
);
"""

_COLUMNS = "container, id, span_id, root_span_id, name, type, start, end, has_error, created, " \
           "updated, data"

# A new row is inserted as it is; a row already stored (a later log() or update_span, or a row
# another aggregator wrote) is merged in SQL by tracer_merge, which SQLite calls only for those.
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
    created = row.get("created")
    merge(row, wire.unpack_stored(update))
    if created is not None:
        row["created"] = created
    return pack_row(row)


def connect(path: str, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no store at {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    else:
        directory = os.path.dirname(path)
        if directory:  # traces hold prompts and user data: a directory we create is private
            os.makedirs(directory, mode=0o700, exist_ok=True)
        # A short busy timeout: a locked store fails fast into the uploader's retries and
        # backoff, which count and report what they could not write.
        conn = sqlite3.connect(path, timeout=2, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
        except sqlite3.Error:
            conn.close()
            raise
        conn.create_function("tracer_merge", 2, _merge_data, deterministic=True)
    return conn


class SQLiteSink:
    """Writes batches of partial rows; used only by the aggregator's uploader thread.

    The file is opened on first use (and tried again at each write until it opens), so a
    store that cannot be opened (not a database, an unwritable directory) fails each write
    into the uploader's retries and payload files rather than stopping the aggregator.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._known_containers: set[str] = set()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path)
        return self._conn

    def write(self, batch: list) -> None:
        """Merge a batch of ``workers.queue.Pending`` rows into the store, atomically."""
        conn = self.conn
        now = time.time()
        created = _iso(now)
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._add_containers(batch)
            rows = [_columns(p.key, p.row, now, created) for p in batch]
            for i in range(0, len(rows), ROWS_PER_STATEMENT):
                chunk = rows[i:i + ROWS_PER_STATEMENT]
                conn.execute(_upsert(len(chunk)), [value for row in chunk for value in row])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _add_containers(self, batch: list) -> None:
        for p in batch:
            c = p.container
            if c.id in self._known_containers:
                continue
            self.conn.execute(
                "INSERT OR IGNORE INTO containers VALUES (?,?,?,?,?,?,?)",
                (c.id, "project_logs" if c.experiment_id is None else "experiment",
                 c.project_id, c.project_name, c.experiment_id, c.experiment_name,
                 _iso(time.time())),
            )
            self._known_containers.add(c.id)

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        """Persist the aggregator's counters, so they outlive it (``tracer stats``)."""
        now = _iso(time.time())
        self.conn.execute(
            "INSERT INTO aggregator_runs VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE "
            "SET updated=excluded.updated, ended=excluded.ended, counters=excluded.counters",
            (run_id, info["pid"], info["host"], info["endpoint"], info["started"], now,
             now if ended else None, json.dumps(counters, sort_keys=True)),
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _columns(key: tuple, row: dict, now: float, created: str) -> tuple:
    attrs = row.get("span_attributes") or {}
    metrics = row.get("metrics") or {}
    return (key[0], key[1], row.get("span_id"), row.get("root_span_id"), attrs.get("name"),
            attrs.get("type"), _number(metrics.get("start")), _number(metrics.get("end")),
            1 if row.get("error") else 0, row.setdefault("created", created), now, pack_row(row))


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _iso(epoch: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


# -- reading (the CLI and tests) -------------------------------------------------------------


class Store:
    """Read access to a store file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = connect(path, readonly=True)
        self.conn.row_factory = sqlite3.Row

    def containers(self) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM containers ORDER BY created")]

    def rows(self, project: str | None = None, experiment: str | None = None,
             root_span_id: str | None = None, span_type: str | None = None,
             errors: bool = False, since: float | None = None,
             until: float | None = None) -> Iterator[dict]:
        """Rows in the underlying format (plus ``project_name``/``experiment_name``), in the
        order they started (then created, then id: the same store always lists them alike).

        ``experiment`` is an experiment's name or id; ``since``/``until`` (epoch seconds) keep
        rows whose ``metrics.start`` is in ``[since, until)``; ``errors`` keeps rows with an
        error.
        """
        where, args = [], []
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

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
