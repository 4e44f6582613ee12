"""Record layouts: every place that builds a record builds it as ``tracer.wire`` defines it.

The hottest paths (``@traced``'s wrapper, ``Span.end``) build their SPAN_END tuple inline rather
than through ``wire.span_end`` (a call costs ~0.1 us there). These tests run those paths and read
the records they hand over, before anything packs them, through a recorder stand-in that keeps
what it is given: each record must bind, field by field, to its builder's parameters.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tracer
from tracer import wire
from tracer.context import state
from tracer.span import Span


class KeepingRecorder:
    """Keeps the records it is given instead of sending them."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.open_spans: set[Span] = set()

    def add(self, record: Any) -> None:
        self.records.append(record)


@pytest.fixture
def keeper(monkeypatch: pytest.MonkeyPatch) -> KeepingRecorder:
    monkeypatch.setattr(state, "active", True)  # as if a logger were set up
    return KeepingRecorder()


@pytest.fixture
def parent(keeper: KeepingRecorder) -> Iterator[Span]:
    """A current span whose records (and its children's) go to ``keeper``."""
    now = time.time()
    span = Span(keeper, wire.logs_container("records"),  # type: ignore[arg-type]
                7, 11, None, 11, "parent", None, now)
    with span:
        yield span


def span_end_fields(record: tuple) -> dict[str, Any]:
    """The SPAN_END ``record`` by field name, after checking it binds to ``wire.span_end``."""
    assert record[0] == wire.SPAN_END and len(record) == len(wire.SPAN_END_FIELDS)
    named = dict(zip(wire.SPAN_END_FIELDS, record, strict=True))
    del named["kind"]
    assert wire.span_end(**named) == record
    return named


def test_each_builder_takes_its_record_fields_in_order() -> None:
    builders: list[tuple[Callable[..., tuple], tuple[str, ...]]] = [
        (wire.span_end, wire.SPAN_END_FIELDS), (wire.span_log, wire.SPAN_LOG_FIELDS),
        (wire.span_open, wire.SPAN_OPEN_FIELDS), (wire.update, wire.UPDATE_FIELDS)]
    for builder, fields in builders:
        assert tuple(inspect.signature(builder).parameters) == fields[1:], builder.__name__


def test_traced_builds_its_span_end_record_as_wire_defines_it(keeper: KeepingRecorder,
                                                               parent: Span) -> None:
    @tracer.traced(type="tool")
    def double(x: int) -> int:
        return 2 * x

    assert double(21) == 42
    named = span_end_fields(keeper.records[0])
    assert (named["trace"], named["parents"], named["root"]) == (7, 11, 11)
    assert named["container"] == parent.container and named["row_id"] is None
    assert (named["name"], named["type"]) == ("double", "tool")
    assert named["start"] <= named["end"]
    assert named["fields"] == {"output": 42}
    assert wire.unpack_input(named["input"]) == {"x": 21}


def test_traced_without_input_capture_builds_span_end_as_wire_defines_it(
        keeper: KeepingRecorder, parent: Span) -> None:
    @tracer.traced(notrace_io=True)
    def quiet() -> str:
        return "unrecorded"

    quiet()
    named = span_end_fields(keeper.records[0])
    assert named["name"] == "quiet" and named["fields"] is None and named["input"] is None


def test_a_traced_function_that_raises_builds_span_end_as_wire_defines_it(
        keeper: KeepingRecorder, parent: Span) -> None:
    @tracer.traced
    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError):
        fail()
    named = span_end_fields(keeper.records[0])
    assert named["fields"] is not None and "boom" in str(named["fields"]["error"])


def test_span_end_builds_its_record_as_wire_defines_it(keeper: KeepingRecorder,
                                                       parent: Span) -> None:
    child = parent.start_span("child", type="llm")
    end = child.end()
    named = span_end_fields(keeper.records[-1])
    assert (named["name"], named["type"], named["end"]) == ("child", "llm", end)
    assert named["parents"] == parent.span_int and named["trace"] == parent.trace_int
