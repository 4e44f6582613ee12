"""The OTLP sink: the aggregator's rows exported to an OpenTelemetry collector or backend.

Two pieces, stacked as the aggregator builds the sink (``workers.sinks``)::

    EndedSpans  ->  SpoolingWriter  ->  OtlpWriter  ->  POST <endpoint>/v1/traces

- ``EndedSpans`` (a ``StoreWriter`` in front of the spool) turns the uploader's batches of
  *partial* rows into whole rows of spans that have ended. A span lasting longer than a batch
  reaches the aggregator in pieces (its input logged in one batch, its output and end in a
  later one), and OTLP has no partial spans: the pieces of a span still running are held and
  merged here (``SpanAssembler``) and the span goes out once, whole, when its end arrives. A
  change after the end (``update_span``, scores logged later, a span marked unfinished because
  its process died) exports the whole row again, with the same ids.
- ``OtlpWriter`` POSTs rows mapped by ``workers.otlp_export`` as protobuf.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence

from .otlp_export import exportable
from .rows import Container, Key, merge, pack_row
from .store.base import RowUpdate, StoreWriter

#: Spans still running whose pieces are held (beyond either bound the oldest is let go of:
#: counted, ``otlp_open_evicted``; its end then exports what arrives with it).
MAX_OPEN_ROWS = 10_000
MAX_OPEN_BYTES = 64 * 2**20
#: Spans exported lately, kept to export whole again when a change arrives after their end
#: (past the bounds, the oldest is forgotten: a change to it then has no ids to export with,
#: counted as ``otlp_update_unmatched``).
MAX_ENDED_ROWS = 10_000
MAX_ENDED_BYTES = 32 * 2**20


class Span:
    """A span ready to export: a ``RowUpdate`` whose row is whole."""

    __slots__ = ("container", "key", "row")

    def __init__(self, key: Key, row: dict, container: Container) -> None:
        self.key = key
        self.row = row
        self.container = container


class _Held:
    __slots__ = ("container", "row", "size")

    def __init__(self, container: Container, row: dict, size: int) -> None:
        self.container = container
        self.row = row
        self.size = size


class SpanAssembler:
    """Partial rows in, whole rows of ended spans out (``take``), within bounded memory.

    Taking the same batch again (a retried write) gives the same spans: merges are idempotent.
    Rows handed in are never changed: what is held is a copy of their dicts.
    """

    def __init__(self, max_open_rows: int = MAX_OPEN_ROWS, max_open_bytes: int = MAX_OPEN_BYTES,
                 max_ended_rows: int = MAX_ENDED_ROWS,
                 max_ended_bytes: int = MAX_ENDED_BYTES) -> None:
        self.counters: Counter = Counter()
        self._open: OrderedDict[Key, _Held] = OrderedDict()
        self._ended: OrderedDict[Key, _Held] = OrderedDict()
        self._bounds = {id(self._open): (max_open_rows, max_open_bytes),
                        id(self._ended): (max_ended_rows, max_ended_bytes)}
        self._bytes = {id(self._open): 0, id(self._ended): 0}

    def take(self, batch: Sequence[RowUpdate]) -> list[Span]:
        """The spans of ``batch`` to export, in its order: each row that has ended, merged with
        its pieces held from earlier batches (and with its row as last exported, for a change
        after the end). Pieces of spans still running are held."""
        out = []
        for update in batch:
            key = update.key
            size = getattr(update, "size", 0) or len(pack_row(update.row))
            held = self._pop(self._ended, key) or self._pop(self._open, key)
            if held is None:
                held = _Held(update.container, _copy(update.row), size)
            else:
                _merge_copy(held.row, update.row)
                held.size += size
            if exportable(held.row):
                out.append(Span(key, held.row, held.container))
                self._put(self._ended, key, held)
            elif isinstance(held.row.get("span_id"), str):
                self._put(self._open, key, held)
            else:  # a change (update_span) to a span neither held nor exported lately
                self.counters["otlp_update_unmatched"] += 1
        return out

    def open_spans(self) -> int:
        """How many spans still running have pieces held."""
        return len(self._open)

    def _pop(self, table: OrderedDict[Key, _Held], key: Key) -> _Held | None:
        held = table.pop(key, None)
        if held is not None:
            self._bytes[id(table)] -= held.size
        return held

    def _put(self, table: OrderedDict[Key, _Held], key: Key, held: _Held) -> None:
        table[key] = held
        self._bytes[id(table)] += held.size
        max_rows, max_bytes = self._bounds[id(table)]
        while len(table) > max_rows or self._bytes[id(table)] > max_bytes and len(table) > 1:
            _, oldest = table.popitem(last=False)
            self._bytes[id(table)] -= oldest.size
            if table is self._open:
                self.counters["otlp_open_evicted"] += 1


def _copy(row: dict) -> dict:
    """``row`` with its dicts copied (merges change dicts only: other values are shared)."""
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in row.items()}


def _merge_copy(into: dict, update: dict) -> None:
    """``rows.merge`` of ``update`` into ``into``, copying the dicts it takes from ``update``."""
    merge(into, _copy(update))


class EndedSpans(StoreWriter):
    """A sink that hands ``inner`` the spans of each batch that have ended, whole
    (``SpanAssembler``); everything else passes through to ``inner``."""

    def __init__(self, inner: StoreWriter, assembler: SpanAssembler | None = None) -> None:
        self.inner = inner
        self.assembler = assembler if assembler is not None else SpanAssembler()
        self.location = inner.location

    @property
    def counters(self) -> Counter:
        return self.assembler.counters

    def store_failed(self, exc: BaseException) -> bool:
        return self.inner.store_failed(exc)

    def write(self, batch: Sequence[RowUpdate]) -> None:
        spans = self.assembler.take(batch)
        if spans:
            self.inner.write(spans)

    def schema_version(self) -> int:
        return self.inner.schema_version()

    def close(self) -> None:
        running = self.assembler.open_spans()
        if running:  # OTLP has no running span: these never ended while we ran
            self.assembler.counters["otlp_unfinished_at_close"] += running
        self.inner.close()

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        self.inner.record_run(run_id, info, counters, ended)

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None:
        self.inner.record_attachment(key, sha256=sha256, size=size, filename=filename,
                                     content_type=content_type, error=error, source=source,
                                     logged=logged)

    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        return self.inner.find_experiment(project_name, experiment_name)

    def import_containers(self, containers: Sequence[dict]) -> None:
        self.inner.import_containers(containers)

    def import_run(self, run: dict) -> None:
        self.inner.import_run(run)
