"""The SQLite store's schema and its migrations, in one place.

The schema version is the file's ``PRAGMA user_version``. Every store written before versions
existed reads 0, as does a new, empty file; migration ``n`` takes a store from version ``n - 1``
to ``n``, so a new store is made by running them all. A writer migrates when it opens a store
(``migrate``); a reader never does (it may not write the file) and reads any version up to
``VERSION`` as it is. A store of a newer version than ``VERSION`` is refused by both.

Tables:

- ``rows``: one row per ``(container, id)``: the whole row in ``data`` (msgpack;
  ``workers.rows.load_row`` reads it), plus the columns that tree and time queries need. Stores
  from before msgpack hold JSON text in ``data``: read and merged into as they are, and
  rewritten as msgpack when next merged into, so no migration converts them.
- ``containers``: project logs and experiments, with their names.
- ``aggregator_runs``: each aggregator run's counters, kept after it exits (``tracer stats``).
- ``attachments``: what became of each attachment key (``workers.attachments``).
- ``traces`` (version 2): one summary per trace, and ``rows_fts``, the text index of each span's
  input and output (``workers.store.summary``, which the writer keeps in step with ``rows``).
  ``rows.parents`` (version 2) is ``span_parents`` as JSON text, for a trace's skeleton.
- ``settings`` (version 3): ``search_index``, what the text index covers (``all``, ``roots``,
  ``off``: ``workers.store.summary.SEARCH_MODES``).
- ``api_keys`` (version 4): the trace server's ingest API keys (``tracer keys create``): a
  name, the key's SHA-256 (hex; never the key), the projects it may write (JSON list, NULL:
  any), when it was made and revoked.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ..rows import load_row
from . import summary
from .base import SchemaVersionError

ROWS = """
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
)"""

CONTAINERS = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    project_id TEXT NOT NULL,
    project_name TEXT NOT NULL,
    experiment_id TEXT,
    experiment_name TEXT,
    created TEXT NOT NULL
)"""

AGGREGATOR_RUNS = """
CREATE TABLE IF NOT EXISTS aggregator_runs (
    run_id TEXT PRIMARY KEY,
    pid INTEGER,
    host TEXT,
    endpoint TEXT,
    started TEXT,
    updated TEXT,
    ended TEXT,
    counters TEXT
)"""

API_KEYS = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    projects TEXT,
    created TEXT NOT NULL,
    revoked TEXT
)"""

ATTACHMENTS = """
CREATE TABLE IF NOT EXISTS attachments (
    key TEXT PRIMARY KEY,
    sha256 TEXT,
    size INTEGER,
    filename TEXT,
    content_type TEXT,
    status TEXT NOT NULL,
    error TEXT,
    source TEXT,
    logged REAL,
    stored REAL
)"""


def _backfill(conn: sqlite3.Connection) -> None:
    summary.backfill(conn, load_row)


# MIGRATIONS[n - 1] takes a store from version n - 1 to n: statements (SQL, or a function of the
# connection) run in one transaction (one at a time: sqlite3's executescript would commit the
# transaction first).
MIGRATIONS: tuple[tuple[str | Callable[[sqlite3.Connection], None], ...], ...] = (
    # 1: the schema as it was when versions began. A version-0 store may have all of it or part
    # (the attachments table was made only once an attachment was stored), hence IF NOT EXISTS.
    # Stores from before merges were done in SQL also carry an index on `updated` that every
    # write maintained and nothing reads.
    (
        ROWS,
        "CREATE INDEX IF NOT EXISTS rows_by_root ON rows (root_span_id, start)",
        "CREATE INDEX IF NOT EXISTS rows_by_time ON rows (container, start)",
        CONTAINERS,
        AGGREGATOR_RUNS,
        ATTACHMENTS,
        "CREATE INDEX IF NOT EXISTS attachments_by_sha ON attachments (sha256)",
        "DROP INDEX IF EXISTS rows_by_update",
    ),
    # 2: the trace server's tables (workers.store.summary): per-trace summaries, kept by the
    # writer; their index (newest first per container); the text index of
    # inputs and outputs; each row's parents as a column. A store that has rows gets them built
    # from its rows (a pass over every row, decoded: about 45 s a million rows).
    (
        "ALTER TABLE rows ADD COLUMN parents TEXT",
        summary.TRACES,
        # Newest first per container, covering the commonest filters (span types, errors): a
        # filter no trace passes reads the index alone (15 ms for 100,000 traces, not 60).
        "CREATE INDEX IF NOT EXISTS traces_by_start ON traces (container, start, root_span_id, "
        "types, errors)",
        summary.FTS,
        _backfill,
    ),
    # 3: the store's settings (workers.store.summary.SETTINGS): what its text index covers
    # (TRACER_SEARCH_INDEX), which the trace server reads and every writer follows. A store
    # made before has an index of every span.
    (
        summary.SETTINGS,
        "INSERT OR IGNORE INTO settings (key, value) VALUES ('search_index', 'all')",
    ),
    # 4: the trace server's API keys (tracer keys create), hashed.
    (API_KEYS,),
)

VERSION = len(MIGRATIONS)  # the schema version this code writes


def version(conn: sqlite3.Connection) -> int:
    """The schema version of the store ``conn`` is open on."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check(found: int, location: str) -> None:
    """Refuse a store of a schema newer than this code knows."""
    if found > VERSION:
        raise SchemaVersionError(location, found, VERSION)


def migrate(conn: sqlite3.Connection, location: str) -> None:
    """Bring the store ``conn`` is open on (in autocommit mode) to ``VERSION``; raises
    ``SchemaVersionError`` if it is newer.

    A store already current costs one pragma read. Otherwise the migrations run under the
    write lock (``BEGIN IMMEDIATE``), the version read again under it: two aggregators opening
    one new store migrate it once.
    """
    found = version(conn)
    if found == VERSION:
        return
    check(found, location)
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = version(conn)
        check(found, location)
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                if callable(statement):
                    statement(conn)
                else:
                    conn.execute(statement)
        # A pragma takes no parameters; VERSION is this module's integer.
        conn.execute(f"PRAGMA user_version = {VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
