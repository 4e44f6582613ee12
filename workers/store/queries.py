"""The reader queries both SQL backends answer with the same SQL, written once.

They are written with ``?`` placeholders and run through ``_query``, which each backend
implements (PostgreSQL's turns the placeholders into ``%s``); ``_decode`` reads a JSON column
(SQLite keeps JSON as text, PostgreSQL as jsonb). What differs between the dialects stays in
``workers.store.sqlite`` and ``workers.store.postgres``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..rows import load_row
from . import summary
from .base import StoreReader
from .compare import compare, score_means


class SharedQueries(StoreReader):
    """``rows``, ``experiments`` and ``compare_experiments`` for a SQL backend."""

    @abc.abstractmethod
    def _query(self, sql: str, args: Sequence[Any] = ()) -> Iterable[tuple]:
        """Run ``sql`` (``?`` placeholders) with ``args``; its result rows as tuples."""

    @abc.abstractmethod
    def _decode(self, value: Any) -> Any:
        """A JSON column's value (not NULL) as Python values."""

    def _stream(self, sql: str, args: Sequence[Any] = ()) -> Iterator[tuple]:
        """``_query`` for a result that may be too large to hold (``rows``): a backend that
        would fetch it whole (PostgreSQL's) reads it in chunks instead. SQLite's cursor steps
        through the result as it is read already."""
        return iter(self._query(sql, args))

    def _require_summaries(self) -> None:
        """Raise if the store is too old for the trace server's tables (``UpgradeRequired``)."""

    def _query_one(self, sql: str, args: Sequence[Any] = ()) -> tuple | None:
        return next(iter(self._query(sql, args)), None)

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
            where.append("r.has_error")
        sql = ("SELECT r.data, c.project_name, c.experiment_name FROM rows r "
               "LEFT JOIN containers c ON c.id = r.container")
        if where:
            sql += " WHERE " + " AND ".join(where)
        # A missing start first (SQLite's default order; PostgreSQL's puts NULLs last).
        sql += " ORDER BY r.start NULLS FIRST, r.created, r.id, r.container"
        for data, project_name, experiment_name in self._stream(sql, args):
            row = load_row(data)
            row["project_name"] = project_name
            if experiment_name is not None:
                row["experiment_name"] = experiment_name
            yield row

    def _score_means(self, container: str) -> dict[str, float]:
        sums: dict[str, list[float]] = {}
        for (found,) in self._query("SELECT score_sums FROM traces WHERE container = ? AND "
                                    "score_sums IS NOT NULL", (container,)):
            summary.add_scores(sums, self._decode(found))
        return score_means(sums)

    def experiments(self, project: str) -> list[dict] | None:
        self._require_summaries()
        found = list(self._query(
            "SELECT id, experiment_id, experiment_name, created, kind FROM containers WHERE "
            "project_name = ? ORDER BY created DESC", (project,)))
        if not found:
            return None
        out = []
        for container, experiment_id, name, created, kind in found:
            if kind != "experiment":
                continue
            traces, spans = self._query_one(
                "SELECT count(*), coalesce(sum(spans), 0) FROM traces WHERE container = ?",
                (container,)) or (0, 0)
            out.append({"id": experiment_id, "name": name, "created": created,
                        "traces": traces, "spans": int(spans),
                        "scores": self._score_means(container)})
        return out

    def compare_experiments(self, a: str, b: str) -> dict | None:
        self._require_summaries()
        sides = []
        for experiment_id in (a, b):
            found = self._query_one(
                "SELECT id, experiment_id, experiment_name, project_name FROM containers "
                "WHERE kind = 'experiment' AND experiment_id = ?", (experiment_id,))
            if found is None:
                return None
            container, eid, name, project = found
            roots = []
            for root, tname, scores, data in self._query(
                    "SELECT t.root_span_id, t.name, t.scores, r.data FROM traces t LEFT JOIN "
                    "rows r ON r.container = t.container AND r.id = t.row_id WHERE "
                    "t.container = ? ORDER BY t.start, t.root_span_id", (container,)):
                row = load_row(data) if data is not None else {}
                roots.append({"root_span_id": root, "name": tname, "input": row.get("input"),
                              "output": row.get("output"),
                              "scores": self._decode(scores) if scores else {}})
            sides.append(({"id": eid, "name": name, "project": project}, roots,
                          self._score_means(container)))
        (a_info, a_rows, a_scores), (b_info, b_rows, b_scores) = sides
        return compare(a_info, b_info, a_rows, b_rows, a_scores, b_scores)
