"""Which rows OTLP out exports, and whole (workers/otlp_sink.py's ``SpanAssembler``): a span
whose pieces came in several batches goes out once it has ended, with every piece merged."""

from __future__ import annotations

import copy
from typing import Any

from tracer import wire
from workers.otlp_sink import SpanAssembler
from workers.queue import Pending
from workers.rows import Container, record_to_row

PROJECT = wire.logs_container("p")
TRACE, ROOT = 5, 1


def pending(record: tuple) -> Pending:
    """The queue's row for one record, as the aggregator queues it."""
    container, row_id, row = record_to_row(record, Container)
    return Pending((container.id, row_id), row, 100, 0, container)


def opened(span: int, name: str = "s", inp: Any = None) -> Pending:
    return pending(wire.span_open(PROJECT, TRACE, span, ROOT if span != ROOT else None, ROOT,
                                  None, name, None, 10.0, None,
                                  None if inp is None else (None, inp)))


def logged(span: int, **fields: Any) -> Pending:
    return pending(wire.span_log(PROJECT, TRACE, span, ROOT if span != ROOT else None, ROOT,
                                 None, fields))


def ended(span: int, name: str = "s", **fields: Any) -> Pending:
    return pending(wire.span_end(PROJECT, TRACE, span, ROOT if span != ROOT else None, ROOT,
                                 None, name, None, 10.0, 11.0, fields or None, None))


def updated(span: int, **fields: Any) -> Pending:
    return pending(wire.update(PROJECT, wire.format_id(TRACE, span), fields))


def rows(spans: list) -> list[dict]:
    return [s.row for s in spans]


def test_a_span_whole_in_one_batch_is_exported_as_it_is() -> None:
    assembler = SpanAssembler()
    batch = [ended(2, output="done")]
    [span] = assembler.take(batch)
    assert span.row == batch[0].row and span.key == batch[0].key
    assert span.container is batch[0].container


def test_a_span_still_running_is_not_exported() -> None:
    assembler = SpanAssembler()
    assert assembler.take([opened(2), logged(2, output="partial")]) == []
    assert assembler.open_spans() == 1


def test_a_span_in_pieces_is_exported_whole_when_it_ends() -> None:
    assembler = SpanAssembler()
    assembler.take([opened(2, inp={"q": 1})])
    assembler.take([logged(2, metadata={"a": 1}, output="half")])
    [span] = assembler.take([ended(2, output="all", metadata={"b": 2})])
    assert span.row["input"] == {"q": 1}
    assert span.row["output"] == "all"
    assert span.row["metadata"] == {"a": 1, "b": 2}
    assert span.row["metrics"] == {"start": 10.0, "end": 11.0}
    assert assembler.open_spans() == 0


def test_a_change_after_the_end_exports_the_whole_row_again() -> None:
    assembler = SpanAssembler()
    [first] = assembler.take([ended(2, output="o", metadata={"a": 1})])
    [again] = assembler.take([updated(2, scores={"good": 1})])
    assert again.row["scores"] == {"good": 1}
    assert again.row["output"] == "o" and again.row["span_id"] == first.row["span_id"]
    assert again.row["metrics"] == {"start": 10.0, "end": 11.0}


def test_a_change_to_a_span_never_seen_is_counted_not_exported() -> None:
    assembler = SpanAssembler()
    assert assembler.take([updated(2, scores={"good": 1})]) == []
    assert assembler.counters["otlp_update_unmatched"] == 1


def test_taking_the_same_batch_again_gives_the_same_spans() -> None:
    assembler = SpanAssembler()
    assembler.take([opened(2, inp=[1, 2])])
    batch = [ended(2, output={"x": [1]}), ended(3)]
    first = copy.deepcopy(rows(assembler.take(batch)))
    assert rows(assembler.take(batch)) == first


def test_rows_handed_in_are_never_changed() -> None:
    assembler = SpanAssembler()
    first = [ended(2, metadata={"a": {"b": 1}})]
    before = copy.deepcopy(first[0].row)
    assembler.take(first)
    assembler.take([updated(2, metadata={"a": {"c": 2}})])
    assert first[0].row == before


def test_spans_come_out_in_the_batch_order() -> None:
    assembler = SpanAssembler()
    spans = assembler.take([ended(4), opened(3), ended(2)])
    assert [s.key for s in spans] == [ended(4).key, ended(2).key]


def test_running_spans_beyond_the_bound_are_let_go_of_and_counted() -> None:
    assembler = SpanAssembler(max_open_rows=2)
    assembler.take([opened(2, inp="a"), opened(3, inp="b"), opened(4, inp="c")])
    assert assembler.open_spans() == 2
    assert assembler.counters["otlp_open_evicted"] == 1
    [span] = assembler.take([ended(2)])  # let go of: what came with its end
    assert "input" not in span.row
    [span] = assembler.take([ended(3)])
    assert span.row["input"] == "b"


def test_running_spans_beyond_the_byte_bound_are_let_go_of() -> None:
    assembler = SpanAssembler(max_open_bytes=250)  # each piece counts 100 bytes here
    assembler.take([opened(2), opened(3), opened(4)])
    assert assembler.open_spans() == 2


def test_spans_exported_long_ago_are_forgotten() -> None:
    assembler = SpanAssembler(max_ended_rows=1)
    assembler.take([ended(2), ended(3)])
    assert assembler.take([updated(2, scores={"a": 1})]) == []
    assert assembler.counters["otlp_update_unmatched"] == 1
    assert len(assembler.take([updated(3, scores={"a": 1})])) == 1


def test_ended_spans_hands_a_sink_only_whole_ended_spans(tmp_path) -> None:
    from workers.otlp_sink import EndedSpans
    from workers.store import open_store

    store = str(tmp_path / "s.db")
    with EndedSpans(open_store(store)) as sink:
        sink.write([opened(2, inp="q"), ended(3)])
        with open_store(store, readonly=True) as reader:
            assert [r["span_id"] for r in reader.rows()] == [wire.format_id(TRACE, 3)]
        sink.write([ended(2, output="a")])
        with open_store(store, readonly=True) as reader:
            [row] = [r for r in reader.rows() if r["span_id"] == wire.format_id(TRACE, 2)]
    assert (row["input"], row["output"]) == ("q", "a")


def test_ended_spans_passes_on_what_its_sink_says_of_a_failure(tmp_path) -> None:
    from workers.http_sink import Unavailable
    from workers.otlp_sink import EndedSpans, OtlpWriter

    sink = EndedSpans(OtlpWriter("http://127.0.0.1:9"))
    busy = Unavailable("429", retry_after=7.0, status=429)
    assert sink.store_failed(busy) and sink.retry_after(busy) == 7.0
    assert not sink.store_failed(ValueError("a row"))
    sink.close()
