"""Traced programs for the differential test against the reference SDK (``braintrust``).

Each scenario is written once, against a module ``bt`` that is either ``braintrust`` or
``tracer``: the two expose the same API, so the same lines run under both and their rows can be
compared field by field (``tests/compat/differential.py`` runs them, ``test_differential.py``
compares). A scenario receives a ``Side``: ``side.bt`` the module, ``side.logger`` the logger
of a project of the scenario's own (already current), and ``side.snapshot()``, which flushes
and returns the rows stored so far; a scenario that calls it is compared on those rows rather
than on the rows stored once it returns.

Every scenario is deterministic: fixed values, no clocks or randomness in what is logged (the
comparison leaves ids and times aside). The unnamed spans are named after their caller's file
and line by the reference, so moving lines here changes both sides alike.

Nothing here imports ``tracer`` or ``braintrust``: the module under test arrives as ``bt``.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol


class Side(Protocol):
    """What a scenario gets from the side running it."""

    bt: Any
    logger: Any

    def snapshot(self) -> list[dict]:
        """Flush, and return the rows of this scenario's project stored so far."""
        ...


Scenario = Callable[[Side], None]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    """Register ``fn`` under its name (also the project it logs into)."""
    SCENARIOS[fn.__name__] = fn
    return fn


class Boom(Exception):
    """The error the scenarios raise: a class of our own, so the message is all there is."""


class ReprRaises:
    """A logged object whose ``repr`` raises (and that is not JSON either)."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


# -- @traced ---------------------------------------------------------------------------------


@scenario
def traced_function_with_arguments(side: Side) -> None:
    """A @traced function: its input is the bound arguments (defaults included or not), its
    output the return value."""
    bt = side.bt

    @bt.traced
    def add(a: int, b: int = 2, *rest: int, scale: int = 1, **extra: int) -> int:
        return (a + b + sum(rest)) * scale

    add(1, 3, 4, 5, scale=2, unused=7)


@scenario
def traced_nested_calls(side: Side) -> None:
    """@traced calling @traced: a parent and a child in one trace."""
    bt = side.bt

    @bt.traced
    def inner(x: int) -> int:
        return x * 2

    @bt.traced
    def outer(x: int) -> int:
        return inner(x) + inner(x + 1)

    outer(10)


@scenario
def traced_with_name_and_type(side: Side) -> None:
    """``@traced(name=..., type=...)``."""
    bt = side.bt

    @bt.traced(name="custom name", type="llm")
    def call_model(prompt: str) -> str:
        return prompt.upper()

    call_model("hello")


@scenario
def traced_method(side: Side) -> None:
    """A @traced method: ``self`` is the instance."""
    bt = side.bt

    class Greeter:
        def __repr__(self) -> str:
            return "<Greeter>"

        @bt.traced
        def greet(self, who: str) -> str:
            return f"hello {who}"

    Greeter().greet("world")


@scenario
def traced_function_raises(side: Side) -> None:
    """A @traced function that raises: the error is logged and the exception propagates."""
    bt = side.bt

    @bt.traced
    def fails(x: int) -> int:
        raise Boom(f"failed on {x}")

    try:
        fails(3)
    except Boom:
        pass


@scenario
def traced_generator(side: Side) -> None:
    """A @traced generator, consumed to the end."""
    bt = side.bt

    @bt.traced
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    assert list(count(3)) == [0, 1, 2]


@scenario
def traced_generator_raises(side: Side) -> None:
    """A @traced generator that raises after yielding twice."""
    bt = side.bt

    @bt.traced
    def count_then_fail(n: int) -> Iterator[int]:
        yield from range(n)
        raise Boom("after yielding")

    seen = []
    try:
        for item in count_then_fail(2):
            seen.append(item)
    except Boom:
        pass
    assert seen == [0, 1]


@scenario
def traced_async_function(side: Side) -> None:
    """A @traced ``async def`` calling a @traced ``async def``."""
    bt = side.bt

    @bt.traced
    async def inner(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    @bt.traced
    async def outer(x: int) -> dict:
        return {"result": await inner(x)}

    asyncio.run(outer(41))


@scenario
def traced_async_generator(side: Side) -> None:
    """A @traced async generator, consumed to the end."""
    bt = side.bt

    @bt.traced
    async def ticks(n: int) -> AsyncIterator[str]:
        for i in range(n):
            await asyncio.sleep(0)
            yield f"tick {i}"

    async def consume() -> list[str]:
        return [tick async for tick in ticks(2)]

    assert asyncio.run(consume()) == ["tick 0", "tick 1"]


# -- start_span ------------------------------------------------------------------------------


@scenario
def start_span_with_every_field(side: Side) -> None:
    """A root span given every field at start, a child given them through ``span.log``."""
    bt = side.bt
    with bt.start_span("parent", type="task", input={"question": "q"}, expected="a",
                       metadata={"model": "m", "nested": {"k": 1}}, tags=["t1", "t2"]) as parent:
        with parent.start_span("child", type="tool", input=[1, 2]) as child:
            child.log(output={"answer": "a"}, expected="a", scores={"exact": 1, "fuzzy": 0.5},
                      metrics={"tokens": 12, "prompt_tokens": 5}, metadata={"step": 2})
        parent.log(output="a", scores={"overall": 0.75})


@scenario
def unnamed_spans(side: Side) -> None:
    """An unnamed root span and an unnamed child, through the module's ``start_span``."""
    bt = side.bt
    with bt.start_span(), bt.start_span():  # the root is current when the child starts
        pass


@scenario
def span_body_raises(side: Side) -> None:
    """A ``with start_span`` block that raises: the error is logged, the exception propagates."""
    bt = side.bt
    try:
        with bt.start_span("failing block"):
            raise Boom("inside the block")
    except Boom:
        pass


@scenario
def span_log_error_string(side: Side) -> None:
    """An error logged by hand as a string."""
    bt = side.bt
    with bt.start_span("logs an error") as span:
        span.log(error="something went wrong")


@scenario
def update_span_from_export(side: Side) -> None:
    """``update_span(span.export(), ...)`` after the span ended."""
    bt = side.bt
    with bt.start_span("to update", input="in") as span:
        span.log(metadata={"first": 1})
    bt.update_span(span.export(), output="updated later", metadata={"second": 2})


@scenario
def logger_update_span_by_id(side: Side) -> None:
    """``logger.update_span(id=span.id, ...)`` after the span ended."""
    with side.logger.start_span("to update by id", input="in") as span:
        pass
    side.logger.update_span(id=span.id, output="updated by id", scores={"later": 1})


@scenario
def logger_log(side: Side) -> None:
    """``logger.log(...)``: a one-span trace in one call."""
    side.logger.log(input={"q": 1}, output={"a": 2}, expected={"a": 2}, scores={"ok": 1},
                    metadata={"source": "logger.log"}, metrics={"tokens": 3}, tags=["logged"])


@scenario
def set_attributes(side: Side) -> None:
    """``span.set_attributes(name=..., type=...)`` while the span runs."""
    bt = side.bt
    with bt.start_span("before") as span:
        span.set_attributes(name="after", type="tool")


@scenario
def metadata_merge(side: Side) -> None:
    """Two ``span.log`` calls: dicts merge recursively, other values replace."""
    bt = side.bt
    with bt.start_span("merged") as span:
        span.log(input="first", metadata={"a": 1, "nested": {"x": 1, "list": [1]}})
        span.log(input="second", metadata={"b": 2, "nested": {"y": 2, "list": [2]}})


@scenario
def current_span_log(side: Side) -> None:
    """``current_span().log`` from inside a @traced function."""
    bt = side.bt

    @bt.traced
    def work() -> str:
        bt.current_span().log(metadata={"from": "current_span"}, metrics={"tokens": 1})
        return "done"

    work()


@scenario
def stand_ins(side: Side) -> None:
    """Values JSON cannot carry, one child span each (so that one failure cannot hide
    another): a cycle, an object whose repr raises, a set, a datetime, NaN and infinities,
    bytes."""
    bt = side.bt
    cycle: list[Any] = [1]
    cycle.append(cycle)
    values: dict[str, Any] = {
        "cycle": cycle,
        "repr_raises": ReprRaises(),
        "set": {3, 1, 2},
        "datetime": datetime.datetime(2024, 1, 10, 7, 49, 48, tzinfo=datetime.timezone.utc),
        "nan": float("nan"),
        "inf": [float("inf"), float("-inf")],
        "bytes": b"\x00bin",
    }
    with bt.start_span("stand-ins"):
        for key, value in values.items():
            with bt.start_span(f"stand-in {key}") as span:
                span.log(output={key: value})


@scenario
def span_open_at_flush(side: Side) -> None:
    """A span still open when the rows are read: ``with start_span("parent")`` has logged its
    input, and a child has ended inside it."""
    bt = side.bt
    with bt.start_span("parent", input="still running"):
        with bt.start_span("finished child") as child:
            child.log(output="child done")
        side.snapshot()


@scenario
def start_span_with_exported_parent(side: Side) -> None:
    """``start_span(parent=span.export())``: a child continued from an exported slug, as
    another process would, then ended by hand."""
    bt = side.bt
    with bt.start_span("exporter") as span:
        slug = span.export()
    child = bt.start_span("continued", parent=slug, input="from a slug")
    child.log(output="continued")
    child.end()


@scenario
def traced_without_io(side: Side) -> None:
    """``@traced(notrace_io=True)``: neither input nor output is logged."""
    bt = side.bt

    @bt.traced(notrace_io=True)
    def secret(password: str) -> str:
        return password[::-1]

    secret("hunter2")
