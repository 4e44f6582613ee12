"""Per-trace summaries and the text index: what the trace server's queries read, kept by the
SQLite writer in the same transaction as the rows (and built for older stores by migration 2).

A trace is the rows of one ``(container, root_span_id)``. Its summary (the ``traces`` table) has
what the logs page lists and filters on without reading the rows:

- counted over every span: ``spans``, ``errors`` (spans with an error), ``tokens`` (the sum of
  ``metrics.tokens``, else ``metrics.total_tokens``), ``types`` (a bit per span type present:
  ``TYPE_BITS``), ``start`` (the earliest ``metrics.start``: the root's once it is stored), and
  ``score_sums`` (``{name: [sum, count]}`` of every numeric score of every span, so that an
  experiment's mean is the mean over its spans, as ``Experiment.summarize`` computes it) with
  ``scores`` (``{name: mean}``, what the page shows and filters on);
- taken from the root row (the row whose ``span_id`` is its ``root_span_id``), once it is
  stored: ``row_id``, ``name``, ``type``, ``end`` (None while the root runs) and ``metadata``
  (its top-level keys with scalar values, each as text: what ``meta=key=value`` compares).
  A trace begun elsewhere (OpenTelemetry, docs/interop.md) has no such row: its root is then
  a row with no ``span_parents`` (a *parentless root*), the first one stored; a row whose
  ``span_id`` is the ``root_span_id`` replaces it whenever it comes, and a parentless root
  never replaces one (``root_kind``).

The writer knows, for each key of a batch, the row before the batch (None for a new row: the
merge function records what it merged) and the row after it; the summary moves by the
difference (``Change``), so merges, retries and replays keep it exact.

The text index (``rows_fts``, FTS5, contentless, its rowid the row's) holds the words of each
span's ``input`` and ``output``, each bounded to ``TEXT_BOUND`` characters: search finds what
a span's input or output begins with, and indexing costs the same for a 5 MB input as for a
5 KB one. What it covers is the store's search mode (``SEARCH_MODES``, in the ``settings`` table
since migration 3; ``TRACER_SEARCH_INDEX`` for the writer): every span (``all``), root and llm
spans only (``roots``), or nothing (``off``). A row's entry is ``indexed_text(row, mode)``, a
function of the row and the mode alone, so that the words a row went in with can be told again
to take it out; a writer set to another mode than its store's rebuilds the index (``reindex``).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeGuard

# The bit of each span type in ``traces.types``. Stored in the database: only ever append.
TYPE_BITS: dict[str, int] = {name: 1 << i for i, name in enumerate(
    ("llm", "score", "function", "eval", "task", "tool", "automation", "facet", "preprocessor",
     "classifier"))}
OTHER_TYPE_BIT = 1 << 40  # a type this table does not know (imported rows may have any)

SEARCH_MODES = ("all", "roots", "off")  # what the text index covers: TRACER_SEARCH_INDEX
TEXT_BOUND = 2000  # characters of a span's input, and of its output, that search sees
META_VALUE_BOUND = 200  # characters of a root metadata value kept for ``meta=`` filters
META_KEYS_BOUND = 50  # top-level metadata keys kept per root

TRACES = """
CREATE TABLE IF NOT EXISTS traces (
    container TEXT NOT NULL,
    root_span_id TEXT NOT NULL,
    start REAL NOT NULL,
    row_id TEXT,
    name TEXT,
    type TEXT,
    end REAL,
    spans INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    tokens REAL NOT NULL DEFAULT 0,
    types INTEGER NOT NULL DEFAULT 0,
    scores TEXT,
    score_sums TEXT,
    metadata TEXT,
    PRIMARY KEY (container, root_span_id)
) WITHOUT ROWID"""

# detail=none: the index keeps which rows hold a word, not where (no phrase queries, which
# search does not make): about half the cost of indexing a row with positions. Contentless
# (content='', columnsize=0): no copy of the text, no sizes for ranking: a row's words are
# all it keeps (a copy was 14% of a store). A row's entry is taken out by giving its text
# again (``search_text`` of the row as it was: the function of the row alone).
FTS = ("CREATE VIRTUAL TABLE IF NOT EXISTS rows_fts USING fts5(text, "
       "tokenize = 'unicode61 remove_diacritics 2', detail = none, content = '', "
       "columnsize = 0)")

# The store's settings that readers and every writer must agree on (migration 3): today the
# search mode (a store without the table, version 2, indexes every span).
SETTINGS = "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

# A missing start never lowers ``start``: the writer passes the batch's time instead, which is
# later than any start already stored. The root's columns come with its row (``row_id`` set):
# the whole root row is at hand then, so they are replaced, not merged.
_ADD = """
INSERT INTO traces (container, root_span_id, start, spans, errors, tokens, types, row_id, name,
                    type, end, metadata)
VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (container, root_span_id) DO UPDATE SET
    start = min(traces.start, excluded.start),
    spans = traces.spans + excluded.spans,
    errors = traces.errors + excluded.errors,
    tokens = traces.tokens + excluded.tokens,
    types = traces.types | excluded.types,
    row_id = coalesce(excluded.row_id, traces.row_id),
    name = iif(excluded.row_id IS NULL, traces.name, excluded.name),
    type = iif(excluded.row_id IS NULL, traces.type, excluded.type),
    end = iif(excluded.row_id IS NULL, traces.end, excluded.end),
    metadata = iif(excluded.row_id IS NULL, traces.metadata, excluded.metadata)
"""

# A parentless root's columns, for a trace whose root columns are empty or its own: the
# root-by-id's (``_ADD``) always replace them, they never replace another row's.
_ADD_PARENTLESS = """
UPDATE traces SET row_id = ?, name = ?, type = ?, end = ?, metadata = ?
WHERE container = ? AND root_span_id = ? AND (row_id IS NULL OR row_id = ?)
"""

NO_ROOT = (None, None, None, None, None)

BY_ID, PARENTLESS = 1, 2  # what makes a row its trace's root (``root_kind``)


def root_kind(row: dict) -> int:
    """``BY_ID`` if ``row`` is its trace's root by id (its ``span_id`` is its
    ``root_span_id``), ``PARENTLESS`` if it is a span with no ``span_parents`` (the root of a
    trace begun elsewhere, when no row is root by id), else 0."""
    span_id = row.get("span_id")
    if span_id is None:
        return 0
    if span_id == row.get("root_span_id"):
        return BY_ID
    return 0 if row.get("span_parents") else PARENTLESS


class Part(NamedTuple):
    """What one row adds to its trace's summary (a tuple: one is made per row written)."""

    root: str | None
    error: int
    tokens: float
    type_bit: int
    start: float | None
    scores: dict[str, float] | None


def part(row: dict) -> Part:
    """What ``row`` (a whole row, in the underlying format) adds to its trace's summary."""
    metrics = row.get("metrics")
    start = tokens = None
    if type(metrics) is dict:
        start = _float(metrics.get("start"))
        tokens = _float(metrics.get("tokens", metrics.get("total_tokens")))
    attrs = row.get("span_attributes")
    kind = attrs.get("type") if type(attrs) is dict else None
    scores = row.get("scores")
    numeric = None
    if scores and type(scores) is dict:
        numeric = {str(k): v for k, v in ((k, _float(v)) for k, v in scores.items())
                   if v is not None} or None
    root = row.get("root_span_id")
    return Part(
        root=root if type(root) is str else None,
        error=1 if row.get("error") else 0,
        tokens=tokens or 0.0,
        type_bit=(TYPE_BITS.get(kind, OTHER_TYPE_BIT) if type(kind) is str else 0),
        start=start,
        scores=numeric,
    )


def _float(value: Any) -> float | None:
    """A finite int or float (not a bool) as a float; None for anything else."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        return float(value)
    return None


def number(value: Any) -> TypeGuard[int | float]:
    """A finite int or float, not a bool."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


class Change(NamedTuple):
    """One key's change over a batch: the row before (None: new) and after (a tuple: one is
    made per key written)."""

    container: str
    row_id: str
    before: Part | None
    after: dict
    rowid: int | None = None  # the row's rowid (for the text index)
    text_changed: bool = False  # the batch wrote a field the row's indexed text depends on
    old_text: str = ""  # what the text index held for the row before the batch


# Summary rows and index entries per statement: several rows a statement, as for ``rows``
# (sqlite3 lets go of the GIL at each step of executemany; one statement steps once), within
# SQLite's oldest limit of 999 variables.
_ADD_ROWS = 999 // 12
_TEXT_ROWS = 999 // 3
_ADD_HEAD, _ADD_TAIL = _ADD.split("VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
_statements: dict[tuple[str, int], str] = {}


def _many(conn: sqlite3.Connection, head: str, values: str, tail: str, per: int,
          rows: list[tuple]) -> None:
    """``head VALUES values, values, ... tail`` for ``rows``, ``per`` rows a statement (the
    statements cached by head and row count)."""
    for i in range(0, len(rows), per):
        chunk = rows[i:i + per]
        key = (head, len(chunk))
        sql = _statements.get(key)
        if sql is None:
            sql = _statements[key] = f"{head} VALUES {','.join([values] * len(chunk))}{tail}"
        conn.execute(sql, [value for row in chunk for value in row])


@dataclass
class Delta:
    """How a batch moves one trace's summary."""

    spans: int = 0
    errors: int = 0
    tokens: float = 0.0
    types: int = 0
    start: float | None = None
    scores: dict[str, list[float]] = field(default_factory=dict)
    root: tuple = NO_ROOT  # (row_id, name, type, end, metadata) of the root row, if written
    parentless: tuple = NO_ROOT  # the same of the batch's first parentless root, if any

    def add(self, p: Part, sign: int) -> None:
        self.spans += sign
        self.errors += sign * p.error
        self.tokens += sign * p.tokens
        if sign > 0:
            self.types |= p.type_bit
            if p.start is not None and (self.start is None or p.start < self.start):
                self.start = p.start
        if p.scores:
            for name, value in p.scores.items():
                acc = self.scores.setdefault(name, [0.0, 0])
                acc[0] += sign * value
                acc[1] += sign


def deltas_of(changes: Iterable[Change]) -> dict[tuple[str, str], Delta]:
    """How ``changes`` move each trace's summary, by ``(container, root_span_id)`` (what every
    backend adds to its ``traces`` table)."""
    deltas: dict[tuple[str, str], Delta] = {}
    for change in changes:
        _add_change(deltas, change)
    return deltas


def _add_change(deltas: dict[tuple[str, str], Delta], change: Change) -> Part:
    """Add one change to ``deltas``; returns what its row adds after it."""
    after = part(change.after)
    if change.before is not None and change.before.root is not None:
        key = (change.container, change.before.root)
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = Delta()
        delta.add(change.before, -1)
    if after.root is not None:
        key = (change.container, after.root)
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = Delta()
        delta.add(after, 1)
        row = change.after
        if row.get("span_id") == after.root:
            delta.root = root_columns(change.row_id, row)
        elif (not row.get("span_parents") and delta.parentless is NO_ROOT
              and row.get("span_id") is not None):
            delta.parentless = root_columns(change.row_id, row)
    return after


def add_scores(sums: dict[str, list[float]], delta: dict[str, list[float]]) -> None:
    """Add a trace's score delta (``{name: [sum, count]}``) to its stored sums, in place; a
    score no span has any more goes."""
    for name, (total, count) in delta.items():
        acc = sums.setdefault(name, [0.0, 0])
        acc[0] += total
        acc[1] += count
        if acc[1] <= 0:
            del sums[name]


def apply(conn: sqlite3.Connection, changes: Iterable[Change], now: float,
          mode: str = "all") -> None:
    """Move the summaries and the text index by ``changes``, in the caller's transaction
    (``mode``: the store's search mode, ``SEARCH_MODES``)."""
    # (container, root) -> [start, spans, errors, tokens, types, root columns, score sums]: a
    # list, not an object: a fan-in of one-span traces makes one per row.
    deltas: dict[tuple[str, str], list] = {}
    parentless: dict[tuple[str, str], tuple] = {}  # the first parentless root of a trace
    texts: list[tuple[int, str]] = []
    replaced: list[tuple[int, str]] = []
    for change in changes:
        before = change.before
        if before is not None and before.root is not None:
            key = (change.container, before.root)
            delta = deltas.get(key)
            if delta is None:
                delta = deltas[key] = [None, 0, 0, 0.0, 0, NO_ROOT, None]
            delta[1] -= 1
            delta[2] -= before.error
            delta[3] -= before.tokens
            if before.scores:
                _sum_scores(delta, before.scores, -1)
        row = change.after
        after = part(row)
        root = after.root
        if root is not None:
            key = (change.container, root)
            delta = deltas.get(key)
            if delta is None:
                delta = deltas[key] = [after.start, 1, after.error, after.tokens,
                                       after.type_bit, NO_ROOT, None]
            else:
                start = after.start
                if start is not None and (delta[0] is None or start < delta[0]):
                    delta[0] = start
                delta[1] += 1
                delta[2] += after.error
                delta[3] += after.tokens
                delta[4] |= after.type_bit
            if after.scores:
                _sum_scores(delta, after.scores, 1)
            if row.get("span_id") == root:
                delta[5] = root_columns(change.row_id, row)
            elif (not row.get("span_parents") and row.get("span_id") is not None
                  and key not in parentless):
                parentless[key] = root_columns(change.row_id, row)
        if change.text_changed and change.rowid is not None:
            text = indexed_text(row, mode)
            if text != change.old_text:  # else the index holds these words already
                if change.old_text:  # out of the index with the words it went in with
                    replaced.append((change.rowid, change.old_text))
                if text:
                    texts.append((change.rowid, text))
    if deltas:
        _many(conn, _ADD_HEAD, "(?,?,?,?,?,?,?,?,?,?,?,?)", _ADD_TAIL, _ADD_ROWS, [
            (c, r, d[0] if d[0] is not None else now, d[1], d[2], d[3], d[4], *d[5])
            for (c, r), d in deltas.items()])
        if parentless:  # traces begun elsewhere (rare): their root when none is root by id
            conn.executemany(_ADD_PARENTLESS, [
                (*columns, c, r, columns[0]) for (c, r), columns in parentless.items()
                if deltas[(c, r)][5] is NO_ROOT])
        scored = [(key, d[6]) for key, d in deltas.items() if d[6]]
        if scored:
            _add_scores(conn, scored)
    if replaced:
        _many(conn, "INSERT INTO rows_fts (rows_fts, rowid, text)", "('delete',?,?)", "",
              _TEXT_ROWS, replaced)
    if texts:
        _many(conn, "INSERT INTO rows_fts (rowid, text)", "(?,?)", "", _TEXT_ROWS, texts)


def _sum_scores(delta: list, scores: dict[str, float], sign: int) -> None:
    sums = delta[6]
    if sums is None:
        sums = delta[6] = {}
    for name, value in scores.items():
        acc = sums.get(name)
        if acc is None:
            acc = sums[name] = [0.0, 0]
        acc[0] += sign * value
        acc[1] += sign


def _add_scores(conn: sqlite3.Connection,
                scored: list[tuple[tuple[str, str], dict[str, list[float]]]]) -> None:
    """Scores are rare (experiments, evaluations): read, add and write each trace's sums."""
    updates = []
    for (container, root), delta in scored:
        found = conn.execute("SELECT score_sums FROM traces WHERE container = ? AND "
                             "root_span_id = ?", (container, root)).fetchone()
        sums: dict[str, list[float]] = json.loads(found[0]) if found and found[0] else {}
        add_scores(sums, delta)
        means = {name: s / n for name, (s, n) in sums.items()}
        updates.append((json.dumps(means) if means else None,
                        json.dumps(sums) if sums else None, container, root))
    conn.executemany("UPDATE traces SET scores = ?, score_sums = ? WHERE container = ? AND "
                     "root_span_id = ?", updates)


def root_columns(row_id: str, row: dict) -> tuple:
    """``(row_id, name, type, end, metadata)`` of a root row, as ``traces`` holds them."""
    attrs = row.get("span_attributes")
    attrs = attrs if isinstance(attrs, dict) else {}
    metrics = row.get("metrics")
    end = metrics.get("end") if isinstance(metrics, dict) else None
    name, kind = attrs.get("name"), attrs.get("type")
    return (row_id, name if isinstance(name, str) else None,
            kind if isinstance(kind, str) else None, float(end) if number(end) else None,
            metadata_text(row.get("metadata")))


def metadata_text(metadata: Any) -> str | None:
    """A root's metadata as ``meta=key=value`` compares it: top-level keys with scalar values,
    each value as text (strings as they are, other scalars as JSON: ``0.1``, ``true``,
    ``null``), bounded."""
    if not isinstance(metadata, dict) or not metadata:
        return None
    kept: dict[str, str] = {}
    for key, value in metadata.items():
        if len(kept) >= META_KEYS_BOUND:
            break
        if isinstance(value, str):
            kept[str(key)] = value[:META_VALUE_BOUND]
        elif value is None or isinstance(value, (bool, int, float)):
            try:
                kept[str(key)] = json.dumps(value)
            except ValueError:  # a float that is not finite
                kept[str(key)] = str(value)
    return json.dumps(kept, ensure_ascii=False) if kept else None


def search_text(row: dict) -> str:
    """What the text index holds for a row: its input's text, then its output's, each bounded
    to ``TEXT_BOUND`` characters. A string is its text; a flat dict or list the text of its
    values; anything else its scalar leaves (keys left out), walked only as far as the bound.
    A function of the row alone: the text index is told it again to take the row out."""
    text = ""
    for name in ("input", "output"):
        value = row.get(name)
        if value is None:
            continue
        kind = type(value)
        if kind is str:
            value = value[:TEXT_BOUND]
        elif kind is int or kind is float or kind is bool:
            value = str(value)
        else:
            flat = _flat_text(value)
            value = flat[:TEXT_BOUND] if flat is not None else _leaves(value, TEXT_BOUND)
        if value:
            text = f"{text}\n{value}" if text else value
    return text


def indexed_text(row: dict, mode: str) -> str:
    """What the text index holds for a row in search mode ``mode``: ``search_text`` of every
    row (``all``), of root and llm spans only (``roots``), of none (``off``). A function of the
    row and the mode alone, as ``search_text`` is of the row. A root is either kind of root
    (``root_kind``): a parentless span is indexed even where a root by id exists."""
    if mode == "all":
        return search_text(row)
    if mode == "off":
        return ""
    attrs = row.get("span_attributes")
    if (type(attrs) is dict and attrs.get("type") == "llm") or root_kind(row):
        return search_text(row)
    return ""


# The fields of a row that its indexed text depends on, in each mode.
_TEXT_FIELDS = {"all": ("input", "output"),
                "roots": ("input", "output", "span_attributes", "span_id", "root_span_id",
                          "span_parents"),
                "off": ()}


def touches_text(partial: dict, mode: str) -> bool:
    """Whether merging ``partial`` into a row may change the row's ``indexed_text``."""
    # A loop, not any() of a generator: called once per row written, and twice as fast.
    for name in _TEXT_FIELDS[mode]:  # noqa: SIM110
        if name in partial:
            return True
    return False


def search_mode(conn: sqlite3.Connection) -> str:
    """The store's search mode; ``all`` for a store without the settings table (version 2,
    whose index covers every span)."""
    try:
        found = conn.execute("SELECT value FROM settings WHERE key = 'search_index'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return "all"
        raise
    return found[0] if found and found[0] in SEARCH_MODES else "all"


def reindex(conn: sqlite3.Connection, load: Any, mode: str, batch: int = 2000) -> None:
    """Make the text index cover what ``mode`` asks, from the rows as they are, and record the
    mode, in the caller's transaction: the index emptied, then (unless ``off``) a pass over
    every row, decoded (about as long as migration 2's: 45 s a million rows)."""
    conn.execute("INSERT INTO rows_fts (rows_fts) VALUES ('delete-all')")
    last = 0
    while mode != "off":
        chunk = conn.execute("SELECT rowid, data FROM rows WHERE rowid > ? ORDER BY rowid "
                             "LIMIT ?", (last, batch)).fetchall()
        if not chunk:
            break
        texts = [(rowid, text) for rowid, text in
                 ((rowid, indexed_text(load(data), mode)) for rowid, data in chunk) if text]
        if texts:
            _many(conn, "INSERT INTO rows_fts (rowid, text)", "(?,?)", "", _TEXT_ROWS, texts)
        last = chunk[-1][0]
    conn.execute("INSERT INTO settings (key, value) VALUES ('search_index', ?) ON CONFLICT (key) "
                 "DO UPDATE SET value = excluded.value", (mode,))


def _flat_text(value: Any) -> str | None:
    """The values of a dict, or the items of a list, joined, if each is a string or a number
    (the common inputs: keyword arguments, a few strings); None for anything deeper."""
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return None
    if len(items) > 64:
        return None
    parts = []
    for item in items:
        kind = type(item)
        if kind is str:
            parts.append(item)
        elif kind is int or kind is float or kind is bool:
            parts.append(str(item))
        elif item is not None:
            return None
    return " ".join(parts)


def _leaves(value: Any, budget: int) -> str:
    out: list[str] = []
    used = 0
    for leaf in _walk(value):
        out.append(leaf[:budget - used])
        used += len(out[-1]) + 1
        if used >= budget:
            break
    return " ".join(out)


def _walk(value: Any, depth: int = 0) -> Iterator[str]:
    """The scalar leaves of a value, depth first, to a bounded depth."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (bool, int, float)):
        yield str(value)
    elif depth < 32:
        if isinstance(value, dict):
            for item in value.values():
                yield from _walk(item, depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from _walk(item, depth + 1)


def match_query(text: str) -> str | None:
    """The FTS5 query for what a user typed: every word must appear (each quoted, so that no
    FTS5 syntax gets through). Whole words only: a prefix query reads every row a common prefix
    is in (100 ms for a word in half of a million rows, against 1 ms for the word). None when
    it has no word."""
    import re

    words = re.findall(r"\w+", text)[:16]
    if not words:
        return None
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def backfill(conn: sqlite3.Connection, load: Any, batch: int = 2000) -> None:
    """Migration 2 for a store that has rows: each row's ``parents`` column, the summaries and
    the text index, built from the rows as they are (``load`` reads a row's ``data``)."""
    last = 0
    now = _now()
    while True:
        chunk = conn.execute("SELECT rowid, container, id, data FROM rows WHERE rowid > ? "
                             "ORDER BY rowid LIMIT ?", (last, batch)).fetchall()
        if not chunk:
            return
        changes = []
        parents = []
        for rowid, container, row_id, data in chunk:
            row = load(data)
            changes.append(Change(container, row_id, None, row, rowid, True))
            parents.append((parents_text(row), rowid))
        conn.executemany("UPDATE rows SET parents = ? WHERE rowid = ?", parents)
        apply(conn, changes, now)
        last = chunk[-1][0]


def parents_text(row: dict) -> str | None:
    """The ``parents`` column: the row's ``span_parents`` as JSON text (None if it has none)."""
    parents = row.get("span_parents")
    if isinstance(parents, list) and parents:
        return json.dumps([p for p in parents if isinstance(p, str)])
    return None


def _now() -> float:
    import time

    return time.time()
