"""The PostgreSQL store: one database that several aggregators (on several hosts) can write at
once, and readers (``tracer serve``, ``tracer export``) read while they do.

Its URL is libpq's: ``postgresql://user:password@host:port/database`` (``postgres://`` too);
the driver is psycopg 3 (the ``postgres`` extra). ``location`` is the URL with its password
masked, so that no message or log carries it.

Tables (``SCHEMA``; versions in ``tracer_schema``, migrated by a writer on open under an
advisory lock, so two aggregators opening one new database migrate it once):

- ``rows``: one row per ``(container, id)``: the whole row in ``data`` (msgpack, as the SQLite
  store holds it: bytes, NaN and NUL characters survive, which jsonb would refuse), plus the
  columns the queries need, ``seq`` (the order rows were first written: a skeleton's ties and
  ``last_root``) and ``search``, the text index of the row's input and output (a ``tsvector``
  of ``summary.search_text`` with the ``simple`` configuration: lower-cased words, no stemming,
  no stop words, diacritics removed before (``_folded``); a GIN index). Search is for whole
  words, every one of them, as SQLite's. Text columns are ``COLLATE "C"``: the same order as
  SQLite's (code points), whatever the database's locale.
- ``containers``, ``aggregator_runs``, ``attachments``: as in SQLite (``workers.store.schema``).
- ``traces``: the per-trace summaries of ``workers.store.summary``, kept by the writer in the
  same transaction as the rows; ``scores``, ``score_sums`` and ``metadata`` are ``jsonb``.

A write is one transaction of a few statements whatever the batch's size (none per row):

1. the batch, each key's partial rows made into a new row, is copied (COPY, binary) into a
   temporary table of the session (``tracer_rows_stage``, made by the session's first batch,
   emptied at each commit), with ``seq`` values drawn in the batch's order;
2. one ``INSERT ... SELECT ... ORDER BY container, id ON CONFLICT DO NOTHING RETURNING`` stores
   the keys that are new (the common case: a span's row written once, at its end) and says
   which;
   (When the writer's last batch mostly merged into stored rows, it first asks which keys are
   stored, without a lock, and offers only the others to the insert: a hint, which step 3 and
   the next round correct when it is out of date.)
3. the other keys' stored rows are read ``FOR UPDATE`` (in key order), the partials merged into
   them in Python (``workers.rows.merge``, the reference's merge: dicts recursively, anything
   else replaces; the first ``created`` stays), copied into the stage again and written by one
   ``UPDATE ... FROM``;
4. the trace summaries move by the difference between each row before and after (COPY into
   ``tracer_traces_stage``, one ``INSERT ... ON CONFLICT DO UPDATE`` in key order), and the
   batch's new containers are recorded.

Two writers merging into one row take turns on its row lock, held from the read to the commit:
none loses the other's merge. Two inserting one new key: the second's insert waits for the
first's commit, finds the key stored and merges into it (step 3). No deadlock: inserts (step
2) wait only on a key's inserter or updater, and meet other inserters in key order; the locks of
step 3 are taken in key order, on rows whose inserters have committed; the summaries' in key
order after every row lock is held. A key deleted between steps 2
and 3 (``tracer prune``) goes round again. No advisory lock is taken: the server's lock table
(``max_locks_per_transaction`` x processes, 7,808 by default, shared by every session) would
bound the batch's size and the number of writers; row locks live in the rows.

Why merge in Python rather than in SQL with a jsonb merge function: the stored row is msgpack
(jsonb cannot hold what rows may hold: bytes, NaN, NUL characters), the summaries and the text
index need each row as it was before and as it is after, and measured, the jsonb merge was the
slowest way (``docs/benchmarks.md``, "PostgreSQL": ``scripts/bench/store_write.py``).

The writer needs the ``TEMP`` privilege on the database (PostgreSQL grants it to every user by
default).

Text columns cannot hold NUL in PostgreSQL: a NUL in an id, a name or the text indexed is
written as U+FFFD there (``data`` keeps the row exactly).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.types.json import Jsonb

from tracer import wire

from ..rows import Key, load_row, merge, pack_row
from . import summary
from .base import (
    Cursor,
    KeyExists,
    RowUpdate,
    SchemaVersionError,
    StoreError,
    StoreWriter,
    TraceFilter,
    TracePage,
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

SCHEMES = ("postgresql://", "postgres://")

_T = TypeVar("_T")

# MIGRATIONS[n - 1] takes a database from version n - 1 to n, in one transaction. Version 1
# is the whole schema as SQLite's version 2 has it (summaries and text index included);
# version 2 adds the API keys (SQLite's version 4).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE rows (
            seq bigint GENERATED BY DEFAULT AS IDENTITY UNIQUE,
            container text COLLATE "C" NOT NULL,
            id text COLLATE "C" NOT NULL,
            span_id text COLLATE "C",
            root_span_id text COLLATE "C",
            name text COLLATE "C",
            type text COLLATE "C",
            start double precision,
            "end" double precision,
            has_error boolean NOT NULL DEFAULT false,
            created text COLLATE "C" NOT NULL,
            updated double precision NOT NULL,
            data bytea NOT NULL,
            parents jsonb,
            search tsvector,
            PRIMARY KEY (container, id))""",
        "CREATE INDEX rows_by_root ON rows (root_span_id, start)",
        "CREATE INDEX rows_by_time ON rows (container, start)",
        "CREATE INDEX rows_search ON rows USING gin (search)",
        """CREATE TABLE containers (
            id text COLLATE "C" PRIMARY KEY,
            kind text NOT NULL,
            project_id text COLLATE "C" NOT NULL,
            project_name text COLLATE "C" NOT NULL,
            experiment_id text COLLATE "C",
            experiment_name text COLLATE "C",
            created text COLLATE "C" NOT NULL)""",
        """CREATE TABLE aggregator_runs (
            run_id text PRIMARY KEY,
            pid integer,
            host text,
            endpoint text,
            started text COLLATE "C",
            updated text,
            ended text,
            counters text)""",
        """CREATE TABLE attachments (
            key text PRIMARY KEY,
            sha256 text,
            size bigint,
            filename text,
            content_type text,
            status text NOT NULL,
            error text,
            source text,
            logged double precision,
            stored double precision)""",
        "CREATE INDEX attachments_by_sha ON attachments (sha256)",
        """CREATE TABLE traces (
            container text COLLATE "C" NOT NULL,
            root_span_id text COLLATE "C" NOT NULL,
            start double precision NOT NULL,
            row_id text COLLATE "C",
            name text COLLATE "C",
            type text COLLATE "C",
            "end" double precision,
            spans integer NOT NULL DEFAULT 0,
            errors integer NOT NULL DEFAULT 0,
            tokens double precision NOT NULL DEFAULT 0,
            types bigint NOT NULL DEFAULT 0,
            scores jsonb,
            score_sums jsonb,
            metadata jsonb,
            PRIMARY KEY (container, root_span_id))""",
        "CREATE INDEX traces_by_start ON traces (container, start, root_span_id)",
    ),
    # 2: the trace server's API keys (tracer keys create), hashed (as SQLite's version 4).
    (
        """CREATE TABLE api_keys (
            name text COLLATE "C" PRIMARY KEY,
            hash text NOT NULL UNIQUE,
            projects jsonb,
            created text COLLATE "C" NOT NULL,
            revoked text)""",
    ),
    # Version 3: the logs page's index covers the filters on span types and errors, so that a
    # page filtered on them reads the index alone (a filter no trace passes read every
    # trace's row: 1 s for 100,000 traces, against 24 ms; docs/benchmarks.md, "PostgreSQL").
    (
        "CREATE INDEX traces_by_start_keys ON traces (container, start, root_span_id) "
        "INCLUDE (types, errors)",
        "DROP INDEX traces_by_start",
    ),
)

VERSION = len(MIGRATIONS)  # the schema version this code writes

# The advisory lock (two-int key space: apart from the rows' one-bigint keys) under which a
# writer migrates.
_MIGRATION_LOCK = (0x7472, 0x6163)  # "tr", "ac"

# A batch is staged in two temporary tables of the writer's session (COPY, binary), then moved
# into ``rows`` and ``traces`` by one statement each. They are made by the first batch of a
# session (``_STAGE_TABLES``), emptied at each commit.
_STAGE_TABLES = """
DO $$BEGIN
IF to_regclass('pg_temp.tracer_rows_stage') IS NULL THEN
    CREATE TEMP TABLE tracer_rows_stage (
        seq bigint, c text COLLATE "C", i text COLLATE "C", s text, r text, n text, t text,
        st float8, en float8, e bool, cr text, d bytea, p text, x text) ON COMMIT DELETE ROWS;
END IF;
IF to_regclass('pg_temp.tracer_traces_stage') IS NULL THEN
    CREATE TEMP TABLE tracer_traces_stage (
        c text COLLATE "C", r text COLLATE "C", st float8, spans integer, errors integer,
        tokens float8, types bigint, row_id text, n text, t text, en float8, m text)
        ON COMMIT DELETE ROWS;
END IF;
END$$"""

_COPY_ROWS = "COPY tracer_rows_stage FROM STDIN (FORMAT BINARY)"
_ROWS_STAGE_TYPES = ("int8", "text", "text", "text", "text", "text", "text", "float8", "float8",
                     "bool", "text", "bytea", "text", "text")
_COPY_TRACES = "COPY tracer_traces_stage FROM STDIN (FORMAT BINARY)"
_TRACES_STAGE_TYPES = ("text", "text", "float8", "int4", "int4", "float8", "int8", "text",
                       "text", "text", "float8", "text")

# ``seq`` values for the batch's rows, in the batch's order (a row keeps the first it is given).
_RESERVE_SEQ = ("SELECT nextval(pg_get_serial_sequence('rows', 'seq')) "
                "FROM generate_series(1, %s) ORDER BY 1")

# The batch's keys not stored yet, inserted whole; the keys already stored are left to the
# merge. In key order: two writers inserting overlapping new keys meet on them in one order.
_INSERT_NEW = """
INSERT INTO rows (seq, container, id, span_id, root_span_id, name, type, start, "end",
                  has_error, created, updated, data, parents, search)
SELECT seq, c, i, s, r, n, t, st, en, e, cr, %s, d, p::jsonb,
       CASE WHEN x IS NULL THEN NULL ELSE to_tsvector('simple', x) END
FROM tracer_rows_stage ORDER BY c, i
ON CONFLICT (container, id) DO NOTHING
RETURNING container, id
"""

# The stored rows of the keys the insert left, locked (in key order) until the commit.
_LOCK_STORED = """
SELECT container, id, data FROM rows
WHERE (container, id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
ORDER BY container, id FOR UPDATE
"""

# The merged rows, staged again (the stage emptied first), written over the locked ones.
_UPDATE_MERGED = """
UPDATE rows SET span_id = s.s, root_span_id = s.r, name = s.n, type = s.t, start = s.st,
    "end" = s.en, has_error = s.e, updated = %s, data = s.d, parents = s.p::jsonb,
    search = CASE WHEN s.x IS NULL THEN rows.search ELSE to_tsvector('simple', s.x) END
FROM tracer_rows_stage s WHERE rows.container = s.c AND rows.id = s.i
"""

# The summaries moved by the batch's differences, in key order (as SQLite's summary._ADD: a
# missing start never lowers ``start``; the root's columns come with its row).
_ADD_TRACES = """
INSERT INTO traces AS t (container, root_span_id, start, spans, errors, tokens, types, row_id,
                         name, type, "end", metadata)
SELECT c, r, st, spans, errors, tokens, types, row_id, n, t, en, m::jsonb
FROM tracer_traces_stage ORDER BY c, r
ON CONFLICT (container, root_span_id) DO UPDATE SET
    start = least(t.start, excluded.start),
    spans = t.spans + excluded.spans,
    errors = t.errors + excluded.errors,
    tokens = t.tokens + excluded.tokens,
    types = t.types | excluded.types,
    row_id = coalesce(excluded.row_id, t.row_id),
    name = CASE WHEN excluded.row_id IS NULL THEN t.name ELSE excluded.name END,
    type = CASE WHEN excluded.row_id IS NULL THEN t.type ELSE excluded.type END,
    "end" = CASE WHEN excluded.row_id IS NULL THEN t."end" ELSE excluded."end" END,
    metadata = CASE WHEN excluded.row_id IS NULL THEN t.metadata ELSE excluded.metadata END
"""

# As SQLite's summary._ADD_PARENTLESS: a parentless root's columns, only where the trace's are
# empty or its own.
_ADD_PARENTLESS = """
UPDATE traces SET row_id = %s, name = %s, type = %s, "end" = %s, metadata = %s::jsonb
WHERE container = %s AND root_span_id = %s AND (row_id IS NULL OR row_id = %s)
"""


def _root_params(root: tuple) -> tuple:
    """A trace's root columns ``(row_id, name, type, end, metadata)`` as query parameters."""
    return (_text(root[0]), _text(root[1]), _text(root[2]), root[3], _json_text(root[4]))


# Score sums: read under the summaries' row locks (the upsert above took them), written back.
_READ_SCORES = """
SELECT container, root_span_id, score_sums FROM traces
WHERE (container, root_span_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""
_WRITE_SCORES = """
UPDATE traces SET scores = u.m::jsonb, score_sums = u.s::jsonb
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS u(c, r, m, s)
WHERE traces.container = u.c AND traces.root_span_id = u.r
"""

# A key already recorded as stored stays so (StoreWriter.record_attachment).
_RECORD_ATTACHMENT = """
INSERT INTO attachments AS a VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (key) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,
    filename = excluded.filename, content_type = excluded.content_type,
    status = excluded.status, error = excluded.error, source = excluded.source,
    logged = excluded.logged, stored = excluded.stored
WHERE a.status != 'done'
"""

_ATTACHMENT_FIELDS = ("key", "sha256", "size", "filename", "content_type", "status", "error")


def redact(url: str) -> str:
    """``url`` with its password (if any) masked: what messages and logs may show."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:  # not a URL we can take apart: say nothing of it
        return "postgresql://***"


def _pg(sql: str) -> str:
    """SQL written for both backends (``?`` placeholders) in psycopg's (``%s``)."""
    return sql.replace("?", "%s")


def _text(value: Any) -> str | None:
    """A string for a text column (NUL, which PostgreSQL's text cannot hold, as U+FFFD); None
    for anything else."""
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _json_text(text: str | None) -> str | None:
    """JSON text for a jsonb column: jsonb cannot hold ``\\u0000`` either."""
    if text is None or "\\u0000" not in text:
        return text
    return json.dumps(_no_nul(json.loads(text)), ensure_ascii=False)


def _no_nul(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value


def _folded(text: str) -> str:
    """Text as the index holds it and queries look for it: diacritics removed (``Galápagos``
    is found as ``galapagos``, as SQLite's ``remove_diacritics`` has it), done here rather than
    with the ``unaccent`` extension, which a database may not have."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _number(value: Any) -> float | None:
    """A number for a float8 column; None for anything else, or one beyond float8 (the row
    keeps it: only the column, for queries, goes without)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


@contextlib.contextmanager
def _translated(location: str) -> Iterator[None]:
    """psycopg's errors as ``StoreError`` (what callers catch without importing psycopg),
    naming the store by its redacted location; ``failed`` for the database as a whole."""
    try:
        yield
    except psycopg.Error as exc:
        failed = isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        raise StoreError(f"PostgreSQL store {location}: {str(exc).strip()}", failed) from exc


def _connect(url: str) -> psycopg.Connection:
    """An autocommit connection (transactions are explicit), its errors without the URL's
    password (libpq's messages name the host, the port and the user, never the password)."""
    return psycopg.connect(url, autocommit=True, connect_timeout=10,
                           application_name="tracer")


def _version(conn: psycopg.Connection) -> int | None:
    """The schema version of the database (None: no tracer tables yet)."""
    found = conn.execute("SELECT to_regclass('tracer_schema')").fetchone()
    if found is None or found[0] is None:
        return None
    row = conn.execute("SELECT version FROM tracer_schema").fetchone()
    return 0 if row is None else int(row[0])


def check(found: int, location: str) -> None:
    """Refuse a store of a schema newer than this code knows."""
    if found > VERSION:
        raise SchemaVersionError(location, found, VERSION)


def migrate(conn: psycopg.Connection, location: str) -> None:
    """Bring the database to ``VERSION`` (``SchemaVersionError`` if it is newer). A current
    one costs one read; otherwise the migrations run in one transaction under an advisory
    lock, the version read again under it: two writers opening one new database migrate it
    once."""
    found = _version(conn)
    if found == VERSION:
        return
    if found is not None:
        check(found, location)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _MIGRATION_LOCK)
        conn.execute("CREATE TABLE IF NOT EXISTS tracer_schema (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM tracer_schema").fetchone()
        if row is None:
            conn.execute("INSERT INTO tracer_schema VALUES (0)")
            found = 0
        else:
            found = int(row[0])
        check(found, location)
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                conn.execute(statement)  # our own constant SQL
        conn.execute("UPDATE tracer_schema SET version = %s", (VERSION,))


def _merged(row: object, update: dict) -> dict:
    """``update`` merged into the stored ``row`` (in place); the first ``created`` stays."""
    if not isinstance(row, dict):  # only rows are written to `data`
        raise ValueError("merge: a stored row is not a map")
    created = row.get("created")
    merge(row, update)
    if created is not None:
        row["created"] = created
    return row


# Rounds of insert-or-lock a batch gets (each round is for the keys deleted between the two).
_ROUNDS = 5


def _partials(batch: Sequence[RowUpdate]) -> tuple[dict[Key, list[dict]], set[Key]]:
    """The batch's partial rows by key (as the text columns hold it: NUL as U+FFFD), in the
    batch's order, and the keys a replacing write (``StoreWriter.write``) replaced: what came
    before that write is dropped. A key's partials are copied when it has several, so that
    merging them into a row never changes the batch (a retry writes the same)."""
    partials: dict[Key, list[dict]] = {}
    replaced: set[Key] = set()
    for p in batch:
        key = (_text(p.key[0]) or "", _text(p.key[1]) or "")
        if getattr(p, "replace", False):
            partials[key] = [p.row]
            replaced.add(key)
            continue
        parts = partials.get(key)
        if parts is None:
            partials[key] = [p.row]
        else:
            if len(parts) == 1:
                parts[0] = copy.deepcopy(parts[0])
            parts.append(copy.deepcopy(p.row))
    return partials, replaced


def _new_row(parts: list[dict], created: str) -> dict:
    """A new row of a key's partials: the first as it is, the others merged into it in
    order; ``created`` unless the row brings its own."""
    if len(parts) == 1:
        row = dict(parts[0])
    else:  # merged into a copy: the partials stay as they were, for a stored row's merge
        row = copy.deepcopy(parts[0])
        for part in parts[1:]:
            _merged(row, copy.deepcopy(part))
    row.setdefault("created", created)
    return row


class PostgresWriter(StoreWriter):
    """Writes to a PostgreSQL store; connects on first use and again after a failure (see
    ``StoreWriter``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.location = redact(url)
        self._conn: psycopg.Connection | None = None
        self._lock = threading.RLock()  # one connection, used by one call at a time
        self._known_containers: set[str] = set()
        self._merging = False  # the last batch mostly merged into stored rows (``_write``)

    @property
    def conn(self) -> psycopg.Connection:
        """The connection, opened (and the schema migrated) on first use."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                conn = _connect(self.url)
                try:
                    migrate(conn, self.location)
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
                self._known_containers.clear()
            return self._conn

    def _call(self, work: Any) -> Any:
        """Run ``work(conn)``; a connection that failed is let go, for the next call to open
        a new one."""
        with self._lock, _translated(self.location):
            conn = self.conn
            try:
                return work(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                if conn.broken or conn.closed:
                    self._conn = None
                    conn.close()
                raise

    def store_failed(self, exc: BaseException) -> bool:
        # Connection lost, server shut down, disk full, a lock or serialization failure: the
        # database as a whole (another try may succeed). A DataError or an integrity error is
        # in what was written.
        if isinstance(exc, StoreError):
            return exc.failed
        return isinstance(exc, (OSError, SchemaVersionError))

    def write(self, batch: Sequence[RowUpdate]) -> None:
        if not batch:
            return
        self._call(lambda conn: self._write(conn, batch))

    def _write(self, conn: psycopg.Connection, batch: Sequence[RowUpdate]) -> None:
        now = time.time()
        created = _iso(now)
        partials, replaced = _partials(batch)
        # (a replacing write may take the text's fields away)
        text_changed = replaced | {key for key, parts in partials.items()
                                   if any("input" in part or "output" in part for part in parts)}
        rows: dict[Key, dict] = {}
        before: dict[Key, summary.Part | None] = {}
        with conn.transaction():
            conn.execute(_STAGE_TABLES)
            pending = list(partials)
            # When the last batch mostly merged into stored rows, which keys are stored is asked
            # first (without a lock: a hint), so that a stored key is not made into a new row
            # and offered to the insert in vain. Either way the insert comes before the locks.
            hint = self._stored(conn, pending) if self._merging else set()
            staged = False
            merges = 0
            for _ in range(_ROUNDS):
                new = {key: _new_row(partials[key], created) for key in pending
                       if key not in hint}
                if new:
                    if staged:
                        conn.execute("DELETE FROM tracer_rows_stage")
                    (seqs,) = zip(*conn.execute(_RESERVE_SEQ, (len(new),)), strict=True)
                    self._stage(conn, new, text_changed, seqs)
                    staged = True
                    for key in conn.execute(_INSERT_NEW, (now,)):
                        rows[key] = new[key]
                        before[key] = None
                left = sorted(key for key in pending if key not in rows)
                if not left:
                    break
                merged: dict[Key, dict] = {}
                for c, i, data in conn.execute(_LOCK_STORED, ([k[0] for k in left],
                                                              [k[1] for k in left])):
                    stored = wire.unpack_stored(data)
                    before[(c, i)] = summary.part(stored) if isinstance(stored, dict) else None
                    parts = partials[(c, i)]
                    if (c, i) in replaced:  # the stored row is replaced, not merged into
                        row = _new_row(parts, created)
                    else:
                        row = _merged(stored, parts[0])
                        for part in parts[1:]:
                            _merged(row, part)
                    merged[(c, i)] = row
                if merged:
                    if staged:
                        conn.execute("DELETE FROM tracer_rows_stage")
                    self._stage(conn, merged, text_changed, None)
                    staged = True
                    conn.execute(_UPDATE_MERGED, (now,))
                    rows.update(merged)
                    merges += len(merged)
                # A key that was stored when the insert met it (or the hint was taken) and
                # deleted (pruned) before the lock: inserted in the next round.
                pending = [key for key in left if key not in merged]
                hint = set()
                if not pending:
                    break
            else:
                raise psycopg.errors.SerializationFailure(
                    f"{len(pending)} rows were deleted each time they were about to be merged "
                    "into")
            self._merging = merges * 2 > len(partials)
            changes = [summary.Change(c, i, before[(c, i)], row)
                       for (c, i), row in rows.items()]
            self._apply(conn, summary.deltas_of(changes), now)
            added = self._add_containers(conn, batch, created)
        self._known_containers.update(added)  # only once they are committed

    def _stored(self, conn: psycopg.Connection, keys: Sequence[Key]) -> set[Key]:
        """Which of ``keys`` are stored now (no lock taken: a hint, which may be out of date
        by the time it is used)."""
        return {(c, i) for c, i in conn.execute(
            "SELECT container, id FROM rows WHERE (container, id) IN (SELECT * FROM "
            "unnest(%s::text[], %s::text[]))", ([k[0] for k in keys], [k[1] for k in keys]))}

    def _stage(self, conn: psycopg.Connection, rows: dict[Key, dict], text_changed: set[Key],
               seqs: Sequence[int] | None) -> None:
        """COPY ``rows`` (whole rows, by key) into the rows' stage: the columns the queries
        read, the row packed, the text to index (only where the batch wrote input or
        output); ``seqs`` in the rows' order, for new rows."""
        with conn.cursor().copy(_COPY_ROWS) as copy:
            copy.set_types(_ROWS_STAGE_TYPES)
            write = copy.write_row
            for n, (key, row) in enumerate(rows.items()):
                attrs = row.get("span_attributes")
                attrs = attrs if isinstance(attrs, dict) else {}
                metrics = row.get("metrics")
                metrics = metrics if isinstance(metrics, dict) else {}
                write((seqs[n] if seqs is not None else None, key[0], key[1],
                       _text(row.get("span_id")), _text(row.get("root_span_id")),
                       _text(attrs.get("name")), _text(attrs.get("type")),
                       _number(metrics.get("start")), _number(metrics.get("end")),
                       bool(row.get("error")), _text(row.get("created")) or "",
                       pack_row(row), _json_text(summary.parents_text(row)),
                       _text(_folded(summary.search_text(row))) if key in text_changed
                       else None))

    def _apply(self, conn: psycopg.Connection, deltas: dict[tuple[str, str], summary.Delta],
               now: float) -> None:
        """Move the trace summaries by ``deltas`` (one statement, in key order: no deadlock
        between writers); the score sums read and rewritten under the summaries' row locks
        that statement took."""
        if not deltas:
            return
        with conn.cursor().copy(_COPY_TRACES) as copy:
            copy.set_types(_TRACES_STAGE_TYPES)
            for (c, r), d in deltas.items():
                copy.write_row((c, r, d.start if d.start is not None else now, d.spans,
                                d.errors, d.tokens, d.types, _text(d.root[0]),
                                _text(d.root[1]), _text(d.root[2]), d.root[3],
                                _json_text(d.root[4])))
        conn.execute(_ADD_TRACES)
        # A trace begun elsewhere: its first parentless root, where no root by id is stored
        # (summary.root_kind).
        parentless = [(*_root_params(d.parentless), c, r, _text(d.parentless[0]))
                      for (c, r), d in sorted(deltas.items())
                      if d.root is summary.NO_ROOT and d.parentless is not summary.NO_ROOT]
        if parentless:
            with conn.cursor() as cur:
                cur.executemany(_ADD_PARENTLESS, parentless)
        scored = sorted((key, d.scores) for key, d in deltas.items() if d.scores)
        if not scored:
            return
        found = {(c, r): s for c, r, s in conn.execute(
            _READ_SCORES, ([k[0] for k, _ in scored], [k[1] for k, _ in scored]))}
        columns: tuple[list[str], list[str], list[str | None], list[str | None]] = (
            [], [], [], [])
        for key, delta in scored:
            sums: dict[str, list[float]] = dict(found.get(key) or {})
            summary.add_scores(sums, delta)
            means = {name: s / n for name, (s, n) in sums.items()}
            columns[0].append(key[0])
            columns[1].append(key[1])
            columns[2].append(json.dumps(_no_nul(means)) if means else None)
            columns[3].append(json.dumps(_no_nul(sums)) if sums else None)
        conn.execute(_WRITE_SCORES, columns)

    def _add_containers(self, conn: psycopg.Connection, batch: Sequence[RowUpdate],
                        created: str) -> set[str]:
        new: dict[str, tuple] = {}
        for p in batch:
            c = p.container
            if c.id in self._known_containers or c.id in new:
                continue
            new[c.id] = (_text(c.id), "project_logs" if c.experiment_id is None else "experiment",
                         _text(c.project_id), _text(c.project_name), _text(c.experiment_id),
                         _text(c.experiment_name), created)
        if new:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO containers VALUES (%s, %s, %s, %s, %s, %s, %s) "
                                "ON CONFLICT (id) DO NOTHING",
                                [new[k] for k in sorted(new)])
        return set(new)

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        now = _iso(time.time())
        self._call(lambda conn: conn.execute(
            "INSERT INTO aggregator_runs VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (run_id) DO UPDATE SET updated = excluded.updated, "
            "ended = excluded.ended, counters = excluded.counters",
            (run_id, info["pid"], _text(info["host"]), _text(info["endpoint"]),
             _text(info["started"]), now, now if ended else None,
             json.dumps(counters, sort_keys=True))))

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None:
        self._call(lambda conn: conn.execute(_RECORD_ATTACHMENT, (
            _text(key), sha256 if error is None else None, size, _text(filename),
            _text(content_type), "error" if error is not None else "done", _text(error),
            source, logged, time.time())))

    def import_containers(self, containers: Sequence[dict]) -> None:
        def work(conn: psycopg.Connection) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany("INSERT INTO containers VALUES (%s, %s, %s, %s, %s, %s, %s) "
                                "ON CONFLICT (id) DO NOTHING",
                                [(c["id"], c["kind"], c["project_id"], c["project_name"],
                                  c["experiment_id"], c["experiment_name"], c["created"])
                                 for c in containers])
        self._call(work)

    def import_run(self, run: dict) -> None:
        self._call(lambda conn: conn.execute(
            "INSERT INTO aggregator_runs VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (run_id) DO NOTHING",
            tuple(run[f] for f in ("run_id", "pid", "host", "endpoint", "started", "updated",
                                   "ended", "counters"))))

    def add_api_key(self, name: str, digest: str, projects: Sequence[str] | None) -> None:
        def work(conn: psycopg.Connection) -> None:
            found = conn.execute(
                "INSERT INTO api_keys (name, hash, projects, created) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING name",
                (name, digest, None if projects is None else Jsonb(list(projects)),
                 _iso(time.time()))).fetchone()
            if found is None:
                raise KeyExists(name)
        self._call(work)

    def revoke_api_key(self, name: str) -> bool:
        def work(conn: psycopg.Connection) -> bool:
            with conn.transaction():
                found = conn.execute("SELECT revoked FROM api_keys WHERE name = %s FOR UPDATE",
                                     (name,)).fetchone()
                if found is None:
                    raise KeyError(name)
                if found[0] is not None:
                    return False
                conn.execute("UPDATE api_keys SET revoked = %s WHERE name = %s",
                             (_iso(time.time()), name))
                return True
        return bool(self._call(work))

    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        found = self._call(lambda conn: conn.execute(
            "SELECT experiment_id FROM containers WHERE kind = 'experiment' AND "
            "project_name = %s AND experiment_name = %s ORDER BY created LIMIT 1",
            (_text(project_name), _text(experiment_name))).fetchone())
        return found[0] if found else None

    def schema_version(self) -> int:
        return int(self._call(_version) or 0)

    # -- retention ---------------------------------------------------------------------------
    #
    # A prune batch first holds the rows it removes (``_hold``), so that no write merges into
    # them as they go, then removes the traces' summaries, then their rows: the order of the
    # writers (rows, then summaries). A writer adding a new row to one of these traces meanwhile
    # waits for its summary, and starts it anew with its row once the prune commits; one that
    # added it before is waited for, and its row goes with the rest. A deadlock with a writer
    # (a row added between the prune's look and its locks) costs one of them a retry.

    def prune(self, before: float, project: str | None = None, *, dry_run: bool = False,
              batch: int = PRUNE_BATCH,
              progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, int]:
        if batch < 1:
            raise ValueError(f"batch={batch}: expected at least 1")
        where = "t.start < %s"
        args: list[object] = [before]
        if project is not None:
            if self._call(lambda conn: conn.execute(
                    _pg(PROJECT_CONTAINERS), (_text(project),)).fetchone()) is None:
                raise ValueError(f"no project {project!r} in store {self.location}")
            where += f" AND t.container IN ({_pg(PROJECT_CONTAINERS)})"
            args.append(_text(project))
        counts = {"traces": 0, "rows": 0}
        if dry_run:
            traces, rows = self._call(lambda conn: conn.execute(
                "SELECT count(*), coalesce(sum((SELECT count(*) FROM rows r WHERE "
                "r.root_span_id = t.root_span_id AND r.container = t.container)), 0) "
                f"FROM traces t WHERE {where}", args).fetchone())
            counts.update(traces=traces, rows=int(rows) + len(self._rows_without_trace(
                before, project)))
            return counts
        # Container by container, each from its oldest trace on (as SQLite's prune does).
        containers = [c for (c,) in self._call(lambda conn: conn.execute(
            "SELECT id FROM containers" + (" WHERE project_name = %s" if project else "")
            + " ORDER BY id", (_text(project),) if project else ()).fetchall())]
        for container in containers:
            position: tuple[float, str] | None = None
            while True:
                def work(conn: psycopg.Connection, container: str = container,
                         position: tuple[float, str] | None = position
                         ) -> tuple[float, str] | None:
                    return self._prune_traces(conn, container, before, position, batch, counts)

                position = self._retried(work)
                if progress is not None:
                    progress(dict(counts))
                if position is None:
                    break
                time.sleep(PRUNE_PAUSE)
        loose = self._rows_without_trace(before, project)
        for start in range(0, len(loose), PRUNE_ROWS):
            def remove(conn: psycopg.Connection,
                       keys: list[tuple[str, str]] = loose[start:start + PRUNE_ROWS]) -> int:
                return self._prune_rows(conn, keys)

            counts["rows"] += self._retried(remove)
            if progress is not None:
                progress(dict(counts))
            time.sleep(PRUNE_PAUSE)
        return counts

    def _retried(self, work: Callable[[psycopg.Connection], _T], attempts: int = 5) -> _T:
        """``work`` in ``_call``, run again (a few times) when the database rolled it back for
        a deadlock or a serialization failure."""
        for attempt in range(attempts):
            try:
                return self._call(work)
            except StoreError as exc:
                if attempt == attempts - 1 or not isinstance(
                        exc.__cause__, psycopg.errors.TransactionRollback):
                    raise
                time.sleep(PRUNE_PAUSE * 2 ** attempt)
        raise AssertionError("unreachable")

    def _hold(self, conn: psycopg.Connection, container: str, ids: list[str]) -> None:
        """Keep writers from merging into these rows until this transaction ends: each row's
        lock, taken in the writers' order (key order: ``_write`` locks the stored rows it
        merges into FOR UPDATE in that order, and inserts a key deleted meanwhile anew)."""
        conn.execute("SELECT count(*) FROM (SELECT 1 FROM rows WHERE container = %s AND id = "
                     "ANY(%s) ORDER BY id FOR UPDATE) locked", (container, ids))

    def _prune_traces(self, conn: psycopg.Connection, container: str, before: float,
                      position: tuple[float, str] | None, batch: int,
                      counts: dict[str, int]) -> tuple[float, str] | None:
        """Remove up to ``batch`` traces of ``container`` that started before ``before``,
        after ``position`` (``(start, root_span_id)``), of about ``PRUNE_ROWS`` rows in all,
        in one transaction (counted into ``counts`` once committed); the position of the last
        one, or None once none is left."""
        sql = ("SELECT root_span_id, start, spans FROM traces WHERE container = %s AND "
               "start < %s")
        args: list[object] = [container, before]
        if position is not None:
            sql += " AND (start, root_span_id) > (%s, %s)"
            args += position
        with conn.transaction():
            found = conn.execute(f"{sql} ORDER BY start, root_span_id LIMIT %s",
                                 [*args, batch]).fetchall()
            traces = up_to_rows(found)
            if not traces:
                return None
            roots = [r for r, _, _ in traces]
            ids = [i for (i,) in conn.execute(
                "SELECT id FROM rows WHERE container = %s AND root_span_id = ANY(%s)",
                (container, roots)).fetchall()]
            self._hold(conn, container, ids)
            # (a trace's start only ever moves earlier: old when selected, old now)
            gone = [r for (r,) in conn.execute(
                "DELETE FROM traces WHERE container = %s AND root_span_id = ANY(%s) "
                "RETURNING root_span_id", (container, roots)).fetchall()]
            rows = conn.execute("DELETE FROM rows WHERE container = %s AND root_span_id = "
                                "ANY(%s)", (container, gone)).rowcount
        counts["traces"] += len(gone)
        counts["rows"] += rows
        if len(traces) == len(found) < batch:
            return None
        return traces[-1][1], traces[-1][0]

    def _rows_without_trace(self, before: float, project: str | None) -> list[tuple[str, str]]:
        """The keys of the rows with no trace (no ``root_span_id``) created before
        ``before``, in key order."""
        sql = "SELECT container, id, created FROM rows WHERE root_span_id IS NULL"
        args: list[object] = []
        if project is not None:
            sql += f" AND container IN ({_pg(PROJECT_CONTAINERS)})"
            args.append(_text(project))
        found = self._call(lambda conn: conn.execute(sql + " ORDER BY container, id",
                                                     args).fetchall())
        return [(c, i) for c, i, created in found
                if (when := created_epoch(created)) is not None and when < before]

    def _prune_rows(self, conn: psycopg.Connection, keys: list[tuple[str, str]]) -> int:
        removed = 0
        with conn.transaction():
            for container in sorted({c for c, _ in keys}):
                ids = [i for c, i in keys if c == container]
                self._hold(conn, container, ids)
                removed += conn.execute(
                    "DELETE FROM rows WHERE root_span_id IS NULL AND container = %s AND id = "
                    "ANY(%s)", (container, ids)).rowcount
        return removed

    def collect_attachments(self, stored_before: float, keep: Collection[str] = (), *,
                            dry_run: bool = False,
                            pruned: tuple[float, str | None] | None = None
                            ) -> tuple[int, set[str]]:
        candidates = {key for (key,) in self._call(lambda conn: conn.execute(
            "SELECT key FROM attachments WHERE coalesce(stored, 0) < %s",
            (stored_before,)).fetchall())}
        candidates.difference_update(keep)
        sql = ("SELECT seq, data, root_span_id, created, container FROM rows r WHERE seq > %s "
               "AND position(%s::bytea IN data) > 0")
        args: list[object] = [ATTACHMENT_MARK]
        containers = None
        if pruned is not None:  # (the rows of the traces a prune would remove count as gone)
            sql += " AND NOT EXISTS (SELECT 1 FROM traces t WHERE t.container = r.container " \
                   "AND t.root_span_id = r.root_span_id AND t.start < %s"
            args.append(pruned[0])
            if pruned[1] is not None:
                sql += f" AND t.container IN ({_pg(PROJECT_CONTAINERS)})"
                args.append(_text(pruned[1]))
                containers = {c for (c,) in self._call(lambda conn: conn.execute(
                    _pg(PROJECT_CONTAINERS), (_text(pruned[1]),)).fetchall())}
            sql += ")"
        gone = Gone(pruned, containers)
        last = 0
        while candidates:  # (rows without the mark refer to no attachment: not read)
            chunk = self._call(lambda conn, last=last: conn.execute(
                f"{sql} ORDER BY seq LIMIT 500", [last, *args]).fetchall())
            if not chunk:
                break
            for _, data, root, created, container in chunk:
                if not gone.loose(root, created, container):
                    candidates.difference_update(attachment_keys(wire.unpack_stored(data)))
            last = chunk[-1][0]
        removed = sorted(candidates)
        if not dry_run:
            for start in range(0, len(removed), 500):
                part = removed[start:start + 500]
                self._call(lambda conn, part=part: conn.execute(
                    "DELETE FROM attachments WHERE key = ANY(%s)", (part,)))
        kept = self._call(lambda conn: conn.execute(
            "SELECT key, sha256 FROM attachments WHERE sha256 IS NOT NULL").fetchall())
        return len(removed), {sha for key, sha in kept if not dry_run or key not in candidates}

    def recorded_blobs(self, sha256s: Collection[str]) -> set[str]:
        return {sha for (sha,) in self._call(lambda conn: conn.execute(
            "SELECT DISTINCT sha256 FROM attachments WHERE sha256 = ANY(%s)",
            (list(sha256s),)).fetchall())}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class PostgresReader(SharedQueries):
    """Reads a PostgreSQL store (see ``StoreReader``): connects now; the database must have a
    store's tables (FileNotFoundError otherwise, as for a SQLite store's missing file).

    A connection the database ended (a restart, an administrator, a network cut) is replaced:
    a query that finds it broken connects again and runs once more (reads can be repeated), so
    a long-lived reader (one of ``tracer serve``'s) fails only while the database is away."""

    #: Rows fetched from the server at a time by ``rows`` and ``stored_rows`` (``tracer
    #: export``, ``tracer migrate``): a result of millions of rows is never held whole.
    chunk_rows = 1000
    _cursors = 0  # server-side cursors opened (their names)

    def __init__(self, url: str) -> None:
        self.url = url
        self.location = redact(url)
        with _translated(self.location):
            self.conn = _connect(url)
        try:
            with _translated(self.location):
                found = _version(self.conn)
            if found is None:
                raise FileNotFoundError(f"no store at {self.location} (the database has no "
                                        "tracer tables: a writer makes them)")
            check(found, self.location)
        except BaseException:
            self.conn.close()
            raise
        self._version = found

    def schema_version(self) -> int:
        found = self._read(_version)
        return 0 if found is None else found

    def _cursor_name(self) -> str:
        """A new name for a server-side cursor of this reader's connection."""
        self._cursors += 1
        return f"tracer_rows_{self._cursors}"

    def close(self) -> None:
        self.conn.close()

    def _read(self, work: Callable[[psycopg.Connection], _T]) -> _T:
        """``work(connection)``, its errors as ``StoreError``; a connection found broken is
        replaced and ``work`` run once more on the new one."""
        with _translated(self.location):
            try:
                return work(self.conn)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                if not (self.conn.broken or self.conn.closed):
                    raise  # (the query failed, not the connection)
                self.conn.close()
                self.conn = _connect(self.url)  # (fails again while the database is away)
                return work(self.conn)

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self._read(lambda conn: conn.execute(sql, args).fetchall())

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple | None:
        return self._read(lambda conn: conn.execute(sql, args).fetchone())

    def _query(self, sql: str, args: Sequence[Any] = ()) -> Iterable[tuple]:
        # The shared queries' placeholders, and their text arguments as a text column holds
        # them (no NUL).
        return self._all(_pg(sql), [_text(a) if isinstance(a, str) else a for a in args])

    def _stream(self, sql: str, args: Sequence[Any] = ()) -> Iterator[tuple]:
        """The result of a query (the shared queries' ``?`` placeholders, or psycopg's),
        fetched ``chunk_rows`` at a time through a server-side cursor, in a transaction of its
        own: one snapshot of the store, however long the reading takes, and never the whole
        result in memory. A connection found broken before the first row is replaced (as
        ``_read`` does); one that breaks later fails the reading (``StoreError``)."""
        query = _pg(sql)
        params = [_text(a) if isinstance(a, str) else a for a in args]
        for attempt in (1, 2):
            started = False
            try:
                with _translated(self.location), self.conn.transaction(), \
                        self.conn.cursor(name=self._cursor_name()) as cursor:
                    cursor.itersize = self.chunk_rows
                    cursor.execute(query, params)
                    for found in cursor:
                        started = True
                        yield found
                return
            except StoreError:
                if started or attempt == 2 or not (self.conn.broken or self.conn.closed):
                    raise
                self.conn.close()
                with _translated(self.location):
                    self.conn = _connect(self.url)

    def _decode(self, value: Any) -> Any:
        return value  # jsonb: psycopg decodes it

    def _dicts(self, sql: str) -> list[dict]:
        def work(conn: psycopg.Connection) -> list[dict]:
            with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
                return cur.execute(sql).fetchall()
        return self._read(work)

    def containers(self) -> list[dict]:
        return self._dicts("SELECT * FROM containers ORDER BY created, id")

    def last_root(self) -> str | None:
        found = self._one(
            "SELECT root_span_id FROM rows ORDER BY seq DESC LIMIT 1")
        return None if found is None else found[0]

    def runs(self) -> list[dict]:
        return self._dicts("SELECT * FROM aggregator_runs ORDER BY started DESC NULLS LAST")

    def api_keys(self) -> list[dict]:
        found = self._one("SELECT to_regclass('api_keys')")
        if found is None or found[0] is None:
            return []  # (a store from before version 2)
        return self._dicts("SELECT name, hash, projects, created, revoked FROM api_keys "
                           "ORDER BY created, name")

    def stored_rows(self) -> Iterator[tuple[str, dict]]:
        # As stored (not load_row's JSON view), in the order first stored, in chunks.
        for container, data in self._stream("SELECT container, data FROM rows ORDER BY seq"):
            row = wire.unpack_stored(data)
            if not isinstance(row, dict):  # (only rows are written to `data`)
                raise ValueError(f"a stored row of {container!r} is not a map")
            yield container, row

    def attachment_records(self) -> list[dict]:
        return self._dicts("SELECT * FROM attachments ORDER BY key")

    def attachments(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for row in self._all(f"SELECT {', '.join(_ATTACHMENT_FIELDS)} FROM attachments "
                             "WHERE key = ANY(%s)", ([_text(k) for k in keys],)):
            found[row[0]] = dict(zip(_ATTACHMENT_FIELDS, row, strict=True))
        return found

    # -- the trace server's queries ------------------------------------------------------

    def projects(self) -> list[dict]:
        projects: dict[str, dict] = {}
        counts = {c: (n, last) for c, n, last in self._all(
            "SELECT container, count(*), max(start) FROM traces GROUP BY container")}
        for c in self.containers():
            p = projects.setdefault(c["project_name"], {
                "name": c["project_name"], "id": c["project_id"], "traces": 0,
                "experiments": 0, "last_start": None})
            n, last = counts.get(c["id"], (0, None))
            if c["kind"] == "experiment":
                p["experiments"] += 1
            else:
                p["traces"] = n
            if last is not None and (p["last_start"] is None or last > p["last_start"]):
                p["last_start"] = last
        return sorted(projects.values(), key=lambda p: p["name"])

    def _container(self, project: str | None, experiment_id: str | None) -> str | None:
        if experiment_id is not None:
            found = self._one(
                "SELECT id FROM containers WHERE kind = 'experiment' AND experiment_id = %s",
                (_text(experiment_id),))
        else:
            found = self._one(
                "SELECT id FROM containers WHERE kind = 'project_logs' AND project_name = %s",
                (_text(project),))
        return None if found is None else found[0]

    def trace_summaries(self, *, project: str | None = None, experiment_id: str | None = None,
                        filters: TraceFilter | None = None, limit: int = 50,
                        before: Cursor | None = None,
                        after: Cursor | None = None) -> TracePage | None:
        container = self._container(project, experiment_id)
        if container is None:
            return None
        where = ["t.container = %s"]
        args: list[object] = [container]
        if before is not None:
            where.append("(t.start, t.root_span_id) < (%s, %s)")
            args += [before[0], _text(before[1])]
        if after is not None:
            where.append("(t.start, t.root_span_id) > (%s, %s)")
            args += [after[0], _text(after[1])]
        f = filters or TraceFilter()
        if f.since is not None:
            where.append("t.start >= %s")
            args.append(f.since)
        if f.until is not None:
            where.append("t.start < %s")
            args.append(f.until)
        if f.name:
            where.append("left(t.name, %s) = %s")
            args += [len(f.name), _text(f.name)]
        if f.span_type is not None:
            where.append("t.types & %s != 0")
            args.append(summary.TYPE_BITS.get(f.span_type, summary.OTHER_TYPE_BIT))
        if f.errors:
            where.append("t.errors > 0")
        for name, op, threshold in f.scores:
            # A mean that is not a number (never stored: only numbers are averaged) is absent.
            where.append("jsonb_typeof(t.scores -> %s) = 'number' AND "
                         f"(t.scores ->> %s)::float8 {'>' if op == 'gt' else '<'} %s")
            args += [_text(name), _text(name), threshold]
        for key, wanted in f.metadata:
            # Containment, not ``->> key = value`` (the same here: every value the summary
            # keeps is a string): the planner estimates it from the column's statistics, where
            # it took each ``->>`` equality for 0.5% of the traces and, for two of them, read
            # every trace rather than the newest (140 ms against 15 at 1,000,000 rows).
            where.append("t.metadata @> %s::jsonb")
            args.append(json.dumps({_text(key): _text(wanted)}, ensure_ascii=False))
        words = _words(f.text) if f.text else None
        if words is not None:
            # Traces with a span whose input or output has every word (the GIN index finds
            # the spans; the planner picks between those and reading newest traces first).
            where.append("EXISTS (SELECT 1 FROM rows r WHERE r.root_span_id = t.root_span_id "
                         "AND r.container = t.container AND "
                         "r.search @@ plainto_tsquery('simple', %s))")
            args.append(words)
        # The keys first, the rest of the summaries for those kept: filters on types and
        # errors read traces_by_start_keys alone.
        found = self._all(
            "SELECT t.root_span_id, t.row_id, t.name, t.type, t.start, t.\"end\", t.spans, "
            "t.errors, t.scores, t.tokens FROM (SELECT t.container AS kc, t.root_span_id AS kr, "
            f"t.start AS ks FROM traces t WHERE {' AND '.join(where)} ORDER BY t.start DESC, "
            "t.root_span_id DESC LIMIT %s) k JOIN traces t ON t.container = k.kc AND "
            "t.root_span_id = k.kr ORDER BY k.ks DESC, k.kr DESC", [*args, limit + 1])
        traces = [_summary(row) for row in found[:limit]]
        more = len(found) > limit
        last = traces[-1] if traces and more else None
        return TracePage(traces, (last["start"], last["root_span_id"]) if last else None)

    def _trace_container(self, root_span_id: str) -> str | None:
        found = self._one(
            "SELECT container FROM rows WHERE root_span_id = %s ORDER BY start NULLS FIRST, "
            "seq LIMIT 1", (_text(root_span_id),))
        return None if found is None else found[0]

    def trace_skeleton(self, root_span_id: str) -> dict | None:
        container = self._trace_container(root_span_id)
        if container is None:
            return None
        found = self._all(
            "SELECT id, span_id, parents, name, type, start, \"end\", has_error FROM rows "
            "WHERE root_span_id = %s AND container = %s ORDER BY start NULLS FIRST, seq",
            (_text(root_span_id), container))
        spans = [{"row_id": row_id, "span_id": span_id, "parents": parents or [],
                  "name": name, "type": kind, "start": start, "end": end,
                  "error": bool(has_error), "running": end is None}
                 for row_id, span_id, parents, name, kind, start, end, has_error in found]
        return {"root_span_id": root_span_id, "container": self._describe(container),
                "spans": spans}

    def trace_skeleton_json(self, root_span_id: str) -> str | None:
        # PostgreSQL writes the spans' JSON itself (as SQLite does): a 100,000-span trace
        # without a Python dict per span.
        container = self._trace_container(root_span_id)
        if container is None:
            return None
        found = self._one(_SKELETON_JSON, (_text(root_span_id), container))
        head = json.dumps({"root_span_id": root_span_id,
                           "container": self._describe(container)}, ensure_ascii=False)
        return f'{head[:-1]},"spans":{found[0] if found else "[]"}}}'

    def _describe(self, container: str) -> dict:
        c = self._one("SELECT kind, project_name, experiment_id, experiment_name FROM "
                              "containers WHERE id = %s", (container,))
        if c is None:
            return {"kind": None, "project": None, "experiment_id": None,
                    "experiment_name": None}
        return {"kind": c[0], "project": c[1], "experiment_id": c[2], "experiment_name": c[3]}

    def span_row(self, root_span_id: str, span_id: str) -> dict | None:
        found = self._one(
            "SELECT r.data, c.project_name, c.experiment_name FROM rows r LEFT JOIN containers "
            "c ON c.id = r.container WHERE r.root_span_id = %s AND r.span_id = %s "
            "ORDER BY r.seq LIMIT 1", (_text(root_span_id), _text(span_id)))
        if found is None:
            return None
        row = load_row(found[0])
        row["project_name"] = found[1]
        if found[2] is not None:
            row["experiment_name"] = found[2]
        return row


# The skeleton's spans as JSON, as ``trace_skeleton`` has them (float8 as JSON numbers, in
# their shortest exact form).
_SKELETON_JSON = """
SELECT coalesce(json_agg(json_build_object(
    'row_id', id, 'span_id', span_id, 'parents', coalesce(parents, '[]'::jsonb), 'name', name,
    'type', type, 'start', start, 'end', "end", 'error', has_error, 'running', "end" IS NULL)
    ORDER BY start NULLS FIRST, seq), '[]')::text
FROM rows WHERE root_span_id = %s AND container = %s
"""


def _words(text: str) -> str | None:
    """What a user typed as the words every one of which must appear (``plainto_tsquery``
    ANDs them; its parser takes no query syntax), or None when it has no word: as SQLite's
    ``summary.match_query``, whole words, at most 16."""
    import re

    words = re.findall(r"\w+", text)[:16]
    return _text(_folded(" ".join(words))) if words else None


def _summary(found: tuple) -> dict:
    root, row_id, name, kind, start, end, spans, errors, scores, tokens = found
    return {"root_span_id": root, "row_id": row_id, "name": name, "type": kind,
            "start": start, "end": end,
            "duration": end - start if end is not None and row_id is not None else None,
            "spans": spans, "errors": errors, "running": end is None,
            "scores": scores or {},
            "tokens": (int(tokens) if float(tokens).is_integer() else tokens) if tokens else None}
