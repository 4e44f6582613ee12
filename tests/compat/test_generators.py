"""Traced generators as the reference traces them (its ``test_traced_sync_generator*`` and
``test_traced_async_generator*``): the yielded items as output, up to
``TRACER_MAX_GENERATOR_ITEMS`` (``BRAINTRUST_MAX_GENERATOR_ITEMS``), none past it, and the items
yielded before an exception kept beside the error. Rows are read back from the real store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

import tracer

from ..conftest import by_name

LIMIT_WARNING = "Generator output exceeded limit of 3 items"


def consume(agen: AsyncIterator) -> list:
    """Every item of an async generator, from synchronous code."""

    async def collect() -> list:
        return [item async for item in agen]

    return asyncio.run(collect())


@pytest.fixture
def limit(monkeypatch):
    """``limit("3")`` sets TRACER_MAX_GENERATOR_ITEMS for the generators decorated after it."""

    def set_limit(value: str, variable: str = "TRACER_MAX_GENERATOR_ITEMS") -> None:
        monkeypatch.setenv(variable, value)

    monkeypatch.delenv("TRACER_MAX_GENERATOR_ITEMS", raising=False)
    monkeypatch.delenv("BRAINTRUST_MAX_GENERATOR_ITEMS", raising=False)
    return set_limit


def test_a_sync_generator_logs_its_bound_input_and_yielded_items(logger, rows):
    @tracer.traced
    def doubles(n: int) -> Iterator[int]:
        for i in range(n):
            yield i * 2

    assert list(doubles(3)) == [0, 2, 4]

    (row,) = rows()
    assert row["input"] == {"n": 3}
    assert row["output"] == [0, 2, 4]
    assert row["span_attributes"]["name"] == "doubles"


def test_an_async_generator_logs_its_bound_input_and_yielded_items(logger, rows):
    @tracer.traced
    async def doubles(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i * 2

    assert consume(doubles(3)) == [0, 2, 4]

    (row,) = rows()
    assert row["input"] == {"n": 3}
    assert row["output"] == [0, 2, 4]


def test_a_sync_generator_past_the_limit_logs_no_output_and_warns(logger, rows, limit,
                                                                    caplog):
    limit("3")

    @tracer.traced
    def ten() -> Iterator[int]:
        yield from range(10)

    with caplog.at_level(logging.WARNING, logger="tracer"):
        assert list(ten()) == list(range(10))

    (row,) = rows()
    assert row.get("output") is None
    assert row["input"] == {}
    warnings = [r for r in caplog.records if r.name == "tracer" and LIMIT_WARNING in r.message]
    assert len(warnings) == 1
    assert "TRACER_MAX_GENERATOR_ITEMS" in warnings[0].message
    assert "-1" in warnings[0].message


def test_an_async_generator_past_the_limit_logs_no_output_and_warns(logger, rows, limit,
                                                                      caplog):
    limit("3")

    @tracer.traced
    async def ten() -> AsyncIterator[int]:
        for i in range(10):
            await asyncio.sleep(0)
            yield i

    with caplog.at_level(logging.WARNING, logger="tracer"):
        assert consume(ten()) == list(range(10))

    (row,) = rows()
    assert row.get("output") is None
    assert any(LIMIT_WARNING in r.message for r in caplog.records if r.name == "tracer")


def test_a_generator_of_exactly_the_limit_keeps_every_item(logger, rows, limit, caplog):
    limit("3")

    @tracer.traced
    def three() -> Iterator[int]:
        yield from range(3)

    with caplog.at_level(logging.WARNING, logger="tracer"):
        assert list(three()) == [0, 1, 2]

    (row,) = rows()
    assert row["output"] == [0, 1, 2]
    assert not [r for r in caplog.records if r.name == "tracer"]


def test_the_default_limit_is_1000_items(logger, rows, limit):
    @tracer.traced
    def exactly_1000() -> Iterator[int]:
        yield from range(1000)

    @tracer.traced
    def one_more() -> Iterator[int]:
        yield from range(1001)

    assert len(list(exactly_1000())) == 1000
    assert len(list(one_more())) == 1001

    named = by_name(rows())
    assert named["exactly_1000"]["output"] == list(range(1000))
    assert named["one_more"].get("output") is None


def test_a_zero_limit_logs_no_output_from_a_sync_generator(logger, rows, limit, caplog):
    limit("0")

    @tracer.traced
    def ten() -> Iterator[int]:
        yield from range(10)

    with caplog.at_level(logging.WARNING, logger="tracer"):
        assert list(ten()) == list(range(10))

    (row,) = rows()
    assert row.get("output") is None
    assert "end" in row["metrics"]
    assert not [r for r in caplog.records if r.name == "tracer"]


def test_a_zero_limit_logs_no_output_from_an_async_generator(logger, rows, limit):
    limit("0")

    @tracer.traced
    async def ten() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    assert consume(ten()) == list(range(10))

    (row,) = rows()
    assert row.get("output") is None


def test_minus_one_keeps_every_item_of_a_sync_generator(logger, rows, limit):
    limit("-1")

    @tracer.traced
    def many() -> Iterator[int]:
        yield from range(2500)

    assert len(list(many())) == 2500

    (row,) = rows()
    assert row["output"] == list(range(2500))


def test_minus_one_keeps_every_item_of_an_async_generator(logger, rows, limit):
    limit("-1")

    @tracer.traced
    async def many() -> AsyncIterator[int]:
        for i in range(2500):
            yield i

    assert len(consume(many())) == 2500

    (row,) = rows()
    assert row["output"] == list(range(2500))


def test_the_braintrust_name_of_the_limit_is_read(logger, rows, limit):
    limit("2", "BRAINTRUST_MAX_GENERATOR_ITEMS")

    @tracer.traced
    def three() -> Iterator[int]:
        yield from range(3)

    assert list(three()) == [0, 1, 2]

    (row,) = rows()
    assert row.get("output") is None


def test_the_tracer_name_of_the_limit_wins_over_the_braintrust_name(logger, rows, limit):
    limit("5")
    limit("2", "BRAINTRUST_MAX_GENERATOR_ITEMS")

    @tracer.traced
    def three() -> Iterator[int]:
        yield from range(3)

    assert list(three()) == [0, 1, 2]

    (row,) = rows()
    assert row["output"] == [0, 1, 2]


def test_the_limit_is_read_when_the_generator_is_decorated(logger, rows, limit):
    limit("2")

    @tracer.traced
    def three() -> Iterator[int]:
        yield from range(3)

    limit("-1")  # too late for three()
    assert list(three()) == [0, 1, 2]

    (row,) = rows()
    assert row.get("output") is None


def test_a_malformed_limit_is_refused_by_init_logger_naming_the_variable(limit, store_path):
    limit("-2")

    with pytest.raises(ValueError, match="TRACER_MAX_GENERATOR_ITEMS='-2': must be at least -1"):
        tracer.init_logger("never-started", store=store_path)


def test_a_sync_generator_that_raises_keeps_its_items_beside_the_error(logger, rows):
    @tracer.traced
    def failing() -> Iterator[str]:
        yield "first"
        yield "second"
        raise RuntimeError("Generator failed")

    seen = []
    with pytest.raises(RuntimeError, match="Generator failed"):
        for item in failing():
            seen.append(item)

    assert seen == ["first", "second"]
    (row,) = rows()
    assert row["output"] == ["first", "second"]
    assert "RuntimeError" in str(row["error"])
    assert "Generator failed" in str(row["error"])


def test_an_async_generator_that_raises_keeps_its_items_beside_the_error(logger, rows):
    @tracer.traced
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("Something went wrong")

    with pytest.raises(ValueError, match="Something went wrong"):
        consume(failing())

    (row,) = rows()
    assert row["output"] == [1, 2]
    assert "ValueError" in str(row["error"])


def test_a_generator_that_raises_before_yielding_logs_the_error_without_output(logger, rows):
    @tracer.traced
    def failing() -> Iterator[int]:
        raise KeyError("at once")
        yield 1  # noqa: F704 (makes this a generator)

    with pytest.raises(KeyError):
        list(failing())

    (row,) = rows()
    assert row.get("output") is None
    assert "KeyError" in str(row["error"])


def test_a_generator_that_raises_past_the_limit_logs_the_error_without_output(logger, rows,
                                                                              limit):
    limit("2")

    @tracer.traced
    def failing() -> Iterator[int]:
        yield from range(5)
        raise RuntimeError("late")

    with pytest.raises(RuntimeError):
        list(failing())

    (row,) = rows()
    assert row.get("output") is None
    assert "late" in str(row["error"])


def test_output_logged_by_a_generator_past_the_limit_is_kept(logger, rows, limit):
    limit("2")

    @tracer.traced
    def chatty() -> Iterator[int]:
        yield from range(5)
        tracer.current_span().log(output="summary")

    assert list(chatty()) == list(range(5))

    (row,) = rows()
    assert row["output"] == "summary"


def test_a_sync_generator_with_notrace_io_keeps_what_it_logs_beside_its_subtasks(logger, rows):
    @tracer.traced(notrace_io=True)
    def foo(i: int) -> int:
        return i * 2

    @tracer.traced(name="main", notrace_io=True)
    def main() -> Iterator[int]:
        yield 1
        tracer.current_span().log(metadata={"a": "b"})
        total = sum(foo(i) for i in range(3))
        tracer.current_span().log(metadata={"total": total}, output="testing")
        yield total

    assert list(main()) == [1, 6]

    got = rows()
    assert len(got) == 4
    main_row = by_name([r for r in got if r["span_attributes"]["name"] == "main"])["main"]
    assert main_row["output"] == "testing"
    assert main_row["metadata"] == {"a": "b", "total": 6}
    assert main_row.get("input") is None
    children = [r for r in got if r["span_attributes"]["name"] == "foo"]
    assert all(r["span_parents"] == [main_row["span_id"]] for r in children)


def test_an_async_generator_with_notrace_io_keeps_what_it_logs_beside_its_subtasks(logger,
                                                                                    rows):
    @tracer.traced(notrace_io=True)
    async def foo(i: int) -> int:
        await asyncio.sleep(0.001)
        return i * 2

    @tracer.traced(name="main", notrace_io=True)
    async def main() -> AsyncIterator[int]:
        yield 1
        tracer.current_span().log(metadata={"a": "b"})
        tasks = [asyncio.create_task(foo(i)) for i in range(3)]
        done, _ = await asyncio.wait(tasks)
        total = sum(task.result() for task in done)
        tracer.current_span().log(metadata={"total": total}, output="testing")
        yield total

    assert consume(main()) == [1, 6]

    got = rows()
    assert len(got) == 4
    main_row = next(r for r in got if r["span_attributes"]["name"] == "main")
    assert main_row["output"] == "testing"
    assert main_row["metadata"] == {"a": "b", "total": 6}
    children = [r for r in got if r["span_attributes"]["name"] == "foo"]
    assert len(children) == 3
    assert all(r["span_parents"] == [main_row["span_id"]] for r in children)
