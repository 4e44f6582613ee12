"""PostgreSQL for the benchmarks: a server started for a run, new databases on it, and the write
paths ``store_write.py`` compares (``VARIANTS``).

A variant is a ``PostgresWriter`` whose ``_write`` (one batch, one transaction) is done another
way; everything else (connection, schema, summaries' SQL) is the shipped writer's. ``shipped``
is the writer as it is in ``workers/store/postgres.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from postgres_server import new_database, postgres_for_bench  # noqa: E402, F401

from tracer import wire  # noqa: E402
from workers.rows import Key, pack_row  # noqa: E402
from workers.store import summary  # noqa: E402
from workers.store.base import RowUpdate  # noqa: E402
from workers.store.postgres import (  # noqa: E402
    _STAGE_TABLES,
    PostgresWriter,
    _folded,
    _iso,
    _json_text,
    _merged,
    _no_nul,
    _number,
    _partials,
    _text,
)

# -- before: the write path of 9843c8b (advisory locks, Python merge, unnest of text arrays,
# the summaries one statement per trace) ---------------------------------------------------

_BEFORE_UPSERT = """
INSERT INTO rows (container, id, span_id, root_span_id, name, type, start, "end", has_error,
                  created, updated, data, parents, search)
SELECT c, i, s, r, n, t, st, en, e, cr, %(now)s, d, p::jsonb,
       CASE WHEN x IS NULL THEN NULL ELSE to_tsvector('simple', x) END
FROM unnest(%(c)s::text[], %(i)s::text[], %(s)s::text[], %(r)s::text[], %(n)s::text[],
            %(t)s::text[], %(st)s::float8[], %(en)s::float8[], %(e)s::bool[], %(cr)s::text[],
            %(d)s::bytea[], %(p)s::text[], %(x)s::text[])
     WITH ORDINALITY AS u(c, i, s, r, n, t, st, en, e, cr, d, p, x, ord)
ORDER BY ord
ON CONFLICT (container, id) DO UPDATE SET
    span_id = excluded.span_id, root_span_id = excluded.root_span_id, name = excluded.name,
    type = excluded.type, start = excluded.start, "end" = excluded."end",
    has_error = excluded.has_error, updated = excluded.updated, data = excluded.data,
    parents = excluded.parents, search = coalesce(excluded.search, rows.search)
"""

# As SQLite's summary._ADD: a missing start never lowers ``start``; the root's columns come
# with its row.
_BEFORE_ADD_TRACE = """
INSERT INTO traces AS t (container, root_span_id, start, spans, errors, tokens, types, row_id,
                         name, type, "end", metadata)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)
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



def _lock_key(key: Key) -> int:
    """A row's advisory lock: 64 bits of a hash of its key, signed as PostgreSQL's bigint."""
    digest = hashlib.blake2b(f"{key[0]}\x1f{key[1]}".encode("utf-8", "surrogatepass"),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Before(PostgresWriter):
    """The write path as it was at 9843c8b, verbatim."""

    def _write(self, conn: psycopg.Connection, batch: Sequence[RowUpdate]) -> None:
        now = time.time()
        created = _iso(now)
        keys = list(dict.fromkeys(p.key for p in batch))  # first appearance order
        added: set[str] = set()
        with conn.transaction():
            locks = sorted({_lock_key(k) for k in keys})
            conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) k",
                         (locks,))
            stored: dict[Key, bytes] = {}
            for c, i, d in conn.execute(
                    "SELECT r.container, r.id, r.data FROM rows r JOIN unnest(%s::text[], "
                    "%s::text[]) k(c, i) ON r.container = k.c AND r.id = k.i",
                    ([_text(k[0]) for k in keys], [_text(k[1]) for k in keys])):
                stored[(c, i)] = d
            rows: dict[Key, dict] = {}
            before: dict[Key, summary.Part | None] = {}
            text_changed: set[Key] = set()
            for p in batch:
                key = (_text(p.key[0]) or "", _text(p.key[1]) or "")
                if "input" in p.row or "output" in p.row:
                    text_changed.add(key)
                row = rows.get(key)
                if row is not None:
                    _merged(row, p.row)
                    continue
                data = stored.get(key)
                if data is None:
                    row = dict(p.row)
                    row.setdefault("created", created)
                    before[key] = None
                else:
                    old = wire.unpack_stored(data)
                    before[key] = summary.part(old) if isinstance(old, dict) else None
                    row = _merged(old, p.row)
                rows[key] = row
            self._upsert(conn, rows, text_changed, now)
            changes = [summary.Change(c, i, before[(c, i)], row)
                       for (c, i), row in rows.items()]
            self._apply(conn, summary.deltas_of(changes), now)
            added = self._add_containers(conn, batch, created)
        self._known_containers.update(added)  # only once they are committed

    def _upsert(self, conn: psycopg.Connection, rows: dict[Key, dict], text_changed: set[Key],
                now: float) -> None:
        cols: dict[str, list[Any]] = {name: [] for name in
                                      ("c", "i", "s", "r", "n", "t", "st", "en", "e", "cr", "d",
                                       "p", "x")}
        for key, row in rows.items():
            attrs = row.get("span_attributes")
            attrs = attrs if isinstance(attrs, dict) else {}
            metrics = row.get("metrics")
            metrics = metrics if isinstance(metrics, dict) else {}
            cols["c"].append(key[0])
            cols["i"].append(key[1])
            cols["s"].append(_text(row.get("span_id")))
            cols["r"].append(_text(row.get("root_span_id")))
            cols["n"].append(_text(attrs.get("name")))
            cols["t"].append(_text(attrs.get("type")))
            cols["st"].append(_number(metrics.get("start")))
            cols["en"].append(_number(metrics.get("end")))
            cols["e"].append(bool(row.get("error")))
            cols["cr"].append(_text(row.get("created")) or "")
            cols["d"].append(pack_row(row))
            cols["p"].append(_json_text(summary.parents_text(row)))
            cols["x"].append(_text(_folded(summary.search_text(row))) if key in text_changed
                            else None)
        conn.execute(_BEFORE_UPSERT, {**cols, "now": now})

    def _apply(self, conn: psycopg.Connection, deltas: dict[tuple[str, str], summary.Delta],
               now: float) -> None:
        """Move the trace summaries by ``deltas``, in key order (no deadlock between
        writers); the score sums read and rewritten under the row locks the upserts took."""
        if not deltas:
            return
        ordered = sorted(deltas.items())
        with conn.cursor() as cur:
            cur.executemany(_BEFORE_ADD_TRACE, [
                (c, r, d.start if d.start is not None else now, d.spans, d.errors, d.tokens,
                 d.types, _text(d.root[0]), _text(d.root[1]), _text(d.root[2]), d.root[3],
                 _json_text(d.root[4]))
                for (c, r), d in ordered])
        scored = [(key, d.scores) for key, d in ordered if d.scores]
        if not scored:
            return
        found = {(c, r): s for c, r, s in conn.execute(
            "SELECT container, root_span_id, score_sums FROM traces WHERE (container, "
            "root_span_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([k[0] for k, _ in scored], [k[1] for k, _ in scored]))}
        updates = []
        for key, delta in scored:
            sums: dict[str, list[float]] = dict(found.get(key) or {})
            summary.add_scores(sums, delta)
            means = {name: s / n for name, (s, n) in sums.items()}
            updates.append((Jsonb(_no_nul(means)) if means else None,
                            Jsonb(_no_nul(sums)) if sums else None, key[0], key[1]))
        with conn.cursor() as cur:
            cur.executemany("UPDATE traces SET scores = %s, score_sums = %s WHERE container = %s"
                            " AND root_span_id = %s", updates)



# -- advisory+copy: the locks and the read of before, the transport of now --------------------

_ADVISORY_UPSERT = """
INSERT INTO rows (container, id, span_id, root_span_id, name, type, start, "end", has_error,
                  created, updated, data, parents, search)
SELECT c, i, s, r, n, t, st, en, e, cr, %s, d, p::jsonb,
       CASE WHEN x IS NULL THEN NULL ELSE to_tsvector('simple', x) END
FROM tracer_rows_stage ORDER BY seq
ON CONFLICT (container, id) DO UPDATE SET
    span_id = excluded.span_id, root_span_id = excluded.root_span_id, name = excluded.name,
    type = excluded.type, start = excluded.start, "end" = excluded."end",
    has_error = excluded.has_error, updated = excluded.updated, data = excluded.data,
    parents = excluded.parents, search = coalesce(excluded.search, rows.search)
"""


class AdvisoryCopy(PostgresWriter):
    """As ``Before`` (a transaction-scoped advisory lock per key in hash order, the stored rows
    read, merged in Python), the rows and the summaries then written as the shipped writer
    does: COPY into the session's stage tables, one statement each."""

    def _write(self, conn: psycopg.Connection, batch: Sequence[RowUpdate]) -> None:
        now = time.time()
        created = _iso(now)
        partials, _replaced = _partials(batch)
        keys = list(partials)
        text_changed = {key for key, parts in partials.items()
                        if any("input" in part or "output" in part for part in parts)}
        with conn.transaction():
            conn.execute(_STAGE_TABLES)
            locks = sorted({_lock_key(k) for k in keys})
            conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) k",
                         (locks,))
            stored = {(c, i): d for c, i, d in conn.execute(
                "SELECT r.container, r.id, r.data FROM rows r JOIN unnest(%s::text[], "
                "%s::text[]) k(c, i) ON r.container = k.c AND r.id = k.i",
                ([k[0] for k in keys], [k[1] for k in keys]))}
            rows: dict[Key, dict] = {}
            before: dict[Key, summary.Part | None] = {}
            for key, parts in partials.items():
                data = stored.get(key)
                if data is None:
                    row = dict(parts[0])
                    for part in parts[1:]:
                        _merged(row, part)
                    row.setdefault("created", created)
                    before[key] = None
                else:
                    old = wire.unpack_stored(data)
                    before[key] = summary.part(old) if isinstance(old, dict) else None
                    row = _merged(old, parts[0])
                    for part in parts[1:]:
                        _merged(row, part)
                rows[key] = row
            self._stage(conn, rows, text_changed, range(len(rows)))
            conn.execute(_ADVISORY_UPSERT, (now,))
            changes = [summary.Change(c, i, before[(c, i)], row)
                       for (c, i), row in rows.items()]
            self._apply(conn, summary.deltas_of(changes), now)
            added = self._add_containers(conn, batch, created)
        self._known_containers.update(added)


# -- jsonb: rows as jsonb, merged in SQL by a recursive function ------------------------------
# A prototype of the first suggestion, measured on a table of its own (``rows_j``): the
# readers do not read it. Rows are JSON here, so what jsonb cannot hold (bytes, NaN, NUL
# characters, integers past 64 bits as exact values of msgpack) is lost or refused: the
# workloads hold none of it. The summaries need each row before and after: the update keeps
# the row it replaces in ``prev`` (PostgreSQL 15's RETURNING has no OLD), and returns both.
# The text index is ``summary.search_text`` of the merged row, so it is a second statement.

_JSONB_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rows_j (
        seq bigint GENERATED BY DEFAULT AS IDENTITY UNIQUE,
        container text COLLATE "C" NOT NULL,
        id text COLLATE "C" NOT NULL,
        span_id text COLLATE "C" GENERATED ALWAYS AS (data ->> 'span_id') STORED,
        root_span_id text COLLATE "C" GENERATED ALWAYS AS (data ->> 'root_span_id') STORED,
        name text COLLATE "C" GENERATED ALWAYS AS (data -> 'span_attributes' ->> 'name') STORED,
        type text COLLATE "C" GENERATED ALWAYS AS (data -> 'span_attributes' ->> 'type') STORED,
        start double precision GENERATED ALWAYS AS (CASE WHEN jsonb_typeof(
            data -> 'metrics' -> 'start') = 'number' THEN (data -> 'metrics' ->> 'start')::float8
            END) STORED,
        "end" double precision GENERATED ALWAYS AS (CASE WHEN jsonb_typeof(
            data -> 'metrics' -> 'end') = 'number' THEN (data -> 'metrics' ->> 'end')::float8
            END) STORED,
        has_error boolean GENERATED ALWAYS AS (coalesce(data -> 'error', 'null') NOT IN
            ('null', 'false', '""', '0')) STORED,
        parents jsonb GENERATED ALWAYS AS (CASE WHEN jsonb_typeof(data -> 'span_parents') =
            'array' THEN data -> 'span_parents' END) STORED,
        created text COLLATE "C" NOT NULL,
        updated double precision NOT NULL,
        data jsonb NOT NULL,
        prev jsonb,
        search tsvector,
        PRIMARY KEY (container, id))""",
    "CREATE INDEX IF NOT EXISTS rows_j_by_root ON rows_j (root_span_id, start)",
    "CREATE INDEX IF NOT EXISTS rows_j_by_time ON rows_j (container, start)",
    "CREATE INDEX IF NOT EXISTS rows_j_search ON rows_j USING gin (search)",
    # merge(into, update): dicts recursively, anything else replaces (workers.rows.merge).
    """CREATE OR REPLACE FUNCTION tracer_jmerge(a jsonb, b jsonb) RETURNS jsonb
    LANGUAGE plpgsql IMMUTABLE AS $$
    DECLARE k text; v jsonb;
    BEGIN
        IF jsonb_typeof(a) IS DISTINCT FROM 'object' OR jsonb_typeof(b) <> 'object' THEN
            RETURN b;
        END IF;
        FOR k, v IN SELECT * FROM jsonb_each(b) LOOP
            IF jsonb_typeof(v) = 'object' AND jsonb_typeof(a -> k) = 'object' THEN
                a := a || jsonb_build_object(k, tracer_jmerge(a -> k, v));
            ELSE
                a := a || jsonb_build_object(k, v);
            END IF;
        END LOOP;
        RETURN a;
    END $$""",
    """CREATE TEMP TABLE IF NOT EXISTS stage_j (c text COLLATE "C", i text COLLATE "C",
        cr text, d text, x text) ON COMMIT DELETE ROWS""",
)

_JSONB_UPSERT = """
INSERT INTO rows_j AS r (container, id, created, updated, data)
SELECT c, i, cr, %s, d::jsonb FROM stage_j ORDER BY c, i
ON CONFLICT (container, id) DO UPDATE SET
    prev = r.data,
    data = tracer_jmerge(r.data, excluded.data - 'created')
           || CASE WHEN r.data ? 'created' THEN '{}'::jsonb
                   ELSE jsonb_build_object('created', excluded.data -> 'created') END,
    updated = excluded.updated
RETURNING container, id, CASE WHEN xmax = 0 THEN NULL ELSE prev END, data
"""


class JsonbMerge(PostgresWriter):
    """Rows as jsonb, merged in SQL: COPY the batch's partial rows (JSON) into a stage, one
    ``INSERT ... ON CONFLICT DO UPDATE`` with ``tracer_jmerge`` under the rows' locks (taken
    in key order), the rows before and after returned for the summaries and the text index."""

    def _write(self, conn: psycopg.Connection, batch: Sequence[RowUpdate]) -> None:
        now = time.time()
        created = _iso(now)
        partials, _replaced = _partials(batch)
        text_changed = {key for key, parts in partials.items()
                        if any("input" in part or "output" in part for part in parts)}
        with conn.transaction():
            conn.execute(_STAGE_TABLES)
            for statement in _JSONB_SCHEMA:
                conn.execute(statement)
            with conn.cursor().copy("COPY stage_j (c, i, cr, d) FROM STDIN") as copy:
                for key, parts in partials.items():
                    row = dict(parts[0])
                    for part in parts[1:]:
                        _merged(row, part)
                    row.setdefault("created", created)
                    copy.write_row((key[0], key[1], _text(row.get("created")) or "",
                                    json.dumps(row, ensure_ascii=False)))
            changes = []
            texts = []
            for c, i, prev, data in conn.execute(_JSONB_UPSERT, (now,)):
                changes.append(summary.Change(c, i, None if prev is None else summary.part(prev),
                                              data))
                if (c, i) in text_changed:
                    texts.append((c, i, _text(_folded(summary.search_text(data)))))
            if texts:
                conn.execute("DELETE FROM stage_j")
                with conn.cursor().copy("COPY stage_j (c, i, x) FROM STDIN") as copy:
                    for t in texts:
                        copy.write_row(t)
                conn.execute("UPDATE rows_j SET search = to_tsvector('simple', s.x) FROM stage_j s"
                             " WHERE rows_j.container = s.c AND rows_j.id = s.i")
            self._apply(conn, summary.deltas_of(changes), now)
            added = self._add_containers(conn, batch, created)
        self._known_containers.update(added)


VARIANTS: dict[str, Callable[[str], PostgresWriter]] = {
    "shipped": PostgresWriter,
    "before": Before,
    "advisory+copy": AdvisoryCopy,
    "jsonb": JsonbMerge,
}
