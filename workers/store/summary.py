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

The writer knows, for each key of a batch, the row before the batch (None for a new row: the
merge function records what it merged) and the row after it; the summary moves by the
difference (``Change``), so merges, retries and replays keep it exact.

The text index (``rows_fts``, FTS5, contentless, its rowid the row's) holds the words of each
span's ``input`` and ``output``, each bounded to ``TEXT_BOUND`` characters: search finds what
a span's input or output begins with, and indexing costs the same for a 5 MB input as for a
5 KB one.
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

_NO_ROOT = (None, None, None, None, None)


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


@dataclass
class Change:
    """One key's change over a batch: the row before (None: new) and after."""

    container: str
    row_id: str
    before: Part | None
    after: dict
    rowid: int | None = None  # the row's rowid (for the text index)
    text_changed: bool = False  # the batch wrote ``input`` or ``output``
    old_text: str = ""  # what the text index held for the row before the batch


@dataclass
class Delta:
    """How a batch moves one trace's summary."""

    spans: int = 0
    errors: int = 0
    tokens: float = 0.0
    types: int = 0
    start: float | None = None
    scores: dict[str, list[float]] = field(default_factory=dict)
    root: tuple = _NO_ROOT  # (row_id, name, type, end, metadata) of the root row, if written

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
        if change.after.get("span_id") == after.root:
            delta.root = root_columns(change.row_id, change.after)
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


def apply(conn: sqlite3.Connection, changes: Iterable[Change], now: float) -> None:
    """Move the summaries and the text index by ``changes``, in the caller's transaction."""
    deltas: dict[tuple[str, str], Delta] = {}
    texts: list[tuple[int, str]] = []
    replaced: list[tuple[int, str]] = []
    for change in changes:
        _add_change(deltas, change)
        if change.text_changed and change.rowid is not None:
            if change.old_text:  # out of the index with the words it went in with
                replaced.append((change.rowid, change.old_text))
            text = search_text(change.after)
            if text:
                texts.append((change.rowid, text))
    if deltas:
        conn.executemany(_ADD, [
            (c, r, d.start if d.start is not None else now, d.spans, d.errors, d.tokens, d.types,
             *d.root)
            for (c, r), d in deltas.items()])
        scored = [(key, d.scores) for key, d in deltas.items() if d.scores]
        if scored:
            _add_scores(conn, scored)
    if replaced:
        conn.executemany("INSERT INTO rows_fts (rows_fts, rowid, text) VALUES ('delete', ?, ?)",
                         replaced)
    if texts:
        conn.executemany("INSERT INTO rows_fts (rowid, text) VALUES (?, ?)", texts)


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
