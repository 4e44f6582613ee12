"""The current span across threads, pools, tasks and generators, as the reference SDK's
``test_context.py`` specifies it: ``tracer.setup_threads()`` and what holds without it.

Every test reads the rows back from the real aggregator and store. ``setup_threads()`` patches
the process for good, so the tests that call it do so through the ``threads_set_up`` fixture,
which puts the standard classes back afterwards: the other tests of this process find threads
as Python makes them (the default: no propagation).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import multiprocessing
import queue
import signal
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import tracer
from tracer import threads
from tracer.context import current

from ..conftest import by_name, clean_env, run_function, stored_rows, undo_setup_threads
from . import programs


@pytest.fixture
def threads_set_up() -> Iterator[None]:
    """``setup_threads()`` in effect for the test, undone after it."""
    assert tracer.setup_threads() is True
    yield
    undo_setup_threads()


def is_child_of(child: dict, parent: dict) -> bool:
    """Whether row ``child`` hangs directly below row ``parent``, in its trace."""
    return (child["span_parents"] == [parent["span_id"]]
            and child["root_span_id"] == parent["root_span_id"])


def is_a_root(row: dict) -> bool:
    return not row["span_parents"] and row["root_span_id"] == row["span_id"]


def run_in_thread(target: Callable[[], Any]) -> None:
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()


def start_child(name: str) -> None:
    """A span started and ended here, under whatever span is current."""
    with tracer.start_span(name):
        pass


# -- setup_threads() itself -------------------------------------------------------------------


def test_setup_threads_returns_true(threads_set_up):
    assert tracer.setup_threads() is True


def test_setup_threads_called_again_changes_nothing(logger, rows, threads_set_up):
    start, submit = threading.Thread.start, concurrent.futures.ThreadPoolExecutor.submit

    assert tracer.setup_threads() is True
    assert tracer.setup_threads() is True

    assert threading.Thread.start is start
    assert concurrent.futures.ThreadPoolExecutor.submit is submit
    with tracer.start_span("parent"):
        run_in_thread(lambda: start_child("in thread"))
    named = by_name(rows())
    assert is_child_of(named["in thread"], named["parent"])


def test_setup_threads_is_exported_as_the_reference_exports_it():
    assert "setup_threads" in tracer.__all__
    assert tracer.setup_threads.__doc__


@pytest.mark.parametrize("variable", ["BRAINTRUST_INSTRUMENT_THREADS", "TRACER_INSTRUMENT_THREADS"])
def test_the_instrument_threads_variable_sets_up_threads_when_tracer_is_imported(
        tmp_path, variable):
    run_function(programs.traces_a_thread_set_up_by_the_environment,
                 env=clean_env(**{variable: "true"}), cwd=str(tmp_path))

    named = by_name(stored_rows(str(tmp_path / ".tracer" / "traces.db"), project="instrumented"))
    assert is_child_of(named["in thread"], named["parent"])


# -- plain threads ----------------------------------------------------------------------------


def test_by_default_a_span_started_in_a_plain_thread_starts_its_own_trace(logger, rows):
    seen: list[Any] = []

    def in_thread() -> None:
        seen.append(tracer.current_span())
        start_child("in thread")

    with tracer.start_span("parent"):
        run_in_thread(in_thread)

    named = by_name(rows())
    assert not seen[0]  # the no-op span: nothing is current in the new thread
    assert is_a_root(named["in thread"])


def test_after_setup_threads_a_plain_thread_sees_the_span_current_at_start(
        logger, rows, threads_set_up):
    seen: list[Any] = []
    with tracer.start_span("parent") as parent:
        run_in_thread(lambda: seen.append(tracer.current_span()))

    assert seen[0] is parent


def test_after_setup_threads_a_span_started_in_a_plain_thread_nests_under_the_starter(
        logger, rows, threads_set_up):
    with tracer.start_span("parent"):
        run_in_thread(lambda: start_child("in thread"))

    named = by_name(rows())
    assert is_child_of(named["in thread"], named["parent"])


def test_a_thread_takes_the_span_current_at_start_not_when_it_was_made(
        logger, rows, threads_set_up):
    with tracer.start_span("where it was made"):
        thread = threading.Thread(target=start_child, args=("in thread",))
    with tracer.start_span("where it was started"):
        thread.start()
        thread.join()

    named = by_name(rows())
    assert is_child_of(named["in thread"], named["where it was started"])


def test_a_thread_subclass_with_its_own_run_nests_under_the_starter(
        logger, rows, threads_set_up):
    class Worker(threading.Thread):
        def run(self) -> None:
            start_child("in subclass")

    with tracer.start_span("parent"):
        worker = Worker()
        worker.start()
        worker.join()

    named = by_name(rows())
    assert is_child_of(named["in subclass"], named["parent"])


def test_a_run_set_on_the_thread_object_nests_under_the_starter_and_is_kept(
        logger, rows, threads_set_up):
    thread = threading.Thread()
    own_run = lambda: start_child("own run")  # noqa: E731 - the object set on the thread
    thread.run = own_run  # type: ignore[method-assign]
    with tracer.start_span("parent"):
        thread.start()
        thread.join()

    named = by_name(rows())
    assert is_child_of(named["own run"], named["parent"])
    assert thread.run is own_run


def test_a_timer_nests_under_the_span_current_when_it_was_started(logger, rows, threads_set_up):
    with tracer.start_span("parent"):
        timer = threading.Timer(0, start_child, args=("in timer",))
        timer.start()
        timer.join()

    named = by_name(rows())
    assert is_child_of(named["in timer"], named["parent"])


def test_a_library_that_starts_a_thread_for_us_keeps_the_span_after_setup_threads(
        logger, rows, threads_set_up):
    class ThreadIntegration:  # code we do not own, which never heard of spans
        def process(self, fn: Callable[[], None]) -> threading.Thread:
            thread = threading.Thread(target=fn)
            thread.start()
            return thread

    with tracer.start_span("user parent"):
        ThreadIntegration().process(lambda: start_child("library work")).join()

    named = by_name(rows())
    assert is_child_of(named["library work"], named["user parent"])


def test_a_thread_running_its_own_event_loop_nests_under_the_starter(
        logger, rows, threads_set_up):
    events: queue.Queue[str | None] = queue.Queue()

    async def invoke() -> None:
        start_child("in the thread's loop")
        events.put("done")

    def thread_main() -> None:
        asyncio.run(invoke())
        events.put(None)

    with tracer.start_span("parent"):
        thread = threading.Thread(target=thread_main)
        thread.start()
        while events.get(timeout=30) is not None:
            pass
        thread.join()

    named = by_name(rows())
    assert is_child_of(named["in the thread's loop"], named["parent"])


def test_an_exception_in_a_thread_still_reaches_the_excepthook_after_setup_threads(
        threads_set_up, monkeypatch):
    caught: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: caught.append(args.exc_value))

    def fail() -> None:
        raise KeyError("from the thread")

    run_in_thread(fail)

    assert isinstance(caught[0], KeyError)


def test_a_thread_object_started_twice_still_refuses_after_setup_threads(threads_set_up):
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()

    with pytest.raises(RuntimeError, match="only be started once"):
        thread.start()


# -- thread pools -----------------------------------------------------------------------------


def test_by_default_a_plain_pool_task_starts_its_own_trace(logger, rows):
    with tracer.start_span("parent"), concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(start_child, "task").result()

    named = by_name(rows())
    assert is_a_root(named["task"])


def test_after_setup_threads_a_pool_task_sees_the_span_current_at_submit(
        logger, rows, threads_set_up):
    with tracer.start_span("parent") as parent, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        seen = pool.submit(tracer.current_span).result()

    assert seen is parent


def test_after_setup_threads_a_span_started_in_a_pool_task_nests_under_the_submitter(
        logger, rows, threads_set_up):
    with tracer.start_span("parent"), concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(start_child, "task").result()

    named = by_name(rows())
    assert is_child_of(named["task"], named["parent"])


def test_each_task_takes_the_span_current_at_its_own_submit(logger, rows, threads_set_up):
    # One worker thread, started by the first submit (under "first"): the second task still
    # runs under the span current when it was submitted.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with tracer.start_span("first"):
            pool.submit(start_child, "task 1").result()
        with tracer.start_span("second"):
            pool.submit(start_child, "task 2").result()

    named = by_name(rows())
    assert is_child_of(named["task 1"], named["first"])
    assert is_child_of(named["task 2"], named["second"])


def test_every_task_of_a_pool_with_several_workers_nests_under_the_submitter(
        logger, rows, threads_set_up):
    with tracer.start_span("pipeline"), concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(start_child, [f"item {i}" for i in range(6)]))

    named = by_name(rows())
    for i in range(6):
        assert is_child_of(named[f"item {i}"], named["pipeline"])


def test_nested_pools_nest_each_level_under_the_span_that_submitted_it(
        logger, rows, threads_set_up):
    def level1() -> None:
        with tracer.start_span("level1"), concurrent.futures.ThreadPoolExecutor(1) as inner:
            inner.submit(start_child, "level2").result()

    with tracer.start_span("root"), concurrent.futures.ThreadPoolExecutor(1) as outer:
        outer.submit(level1).result()

    named = by_name(rows())
    assert is_child_of(named["level1"], named["root"])
    assert is_child_of(named["level2"], named["level1"])


def test_a_traced_function_submitted_to_a_plain_pool_nests_under_the_submitter(
        logger, rows, threads_set_up):
    @tracer.traced
    def work(x: int) -> int:
        return 2 * x

    with tracer.start_span("parent"), concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(work, 21).result() == 42

    named = by_name(rows())
    assert is_child_of(named["work"], named["parent"])
    assert named["work"]["output"] == 42


def test_a_library_wrapping_calls_in_its_own_pool_keeps_the_span_after_setup_threads(
        logger, rows, threads_set_up):
    def run_in_pool(fn: Callable[[], None]) -> Callable[[], None]:  # a library's decorator
        pool = concurrent.futures.ThreadPoolExecutor(1)

        def wrapper() -> None:
            pool.submit(fn).result()

        return wrapper

    work = run_in_pool(lambda: start_child("decorated work"))
    with tracer.start_span("user parent"):
        work()

    named = by_name(rows())
    assert is_child_of(named["decorated work"], named["user parent"])


def test_run_in_executor_work_nests_under_the_awaiting_span_after_setup_threads(
        logger, rows, threads_set_up):
    async def handle_request() -> None:
        with tracer.start_span("http request"):
            await asyncio.get_running_loop().run_in_executor(None, start_child, "background")

    asyncio.run(handle_request())

    named = by_name(rows())
    assert is_child_of(named["background"], named["http request"])


def test_traced_thread_pool_executor_tasks_nest_once_under_the_submitter_after_setup_threads(
        logger, rows, threads_set_up):
    calls: list[int] = []

    def task(i: int) -> int:
        calls.append(i)
        start_child(f"task {i}")
        return i

    with tracer.start_span("parent"), tracer.TracedThreadPoolExecutor(2) as pool:
        assert list(pool.map(task, range(3))) == [0, 1, 2]

    named = by_name(rows())
    assert sorted(calls) == [0, 1, 2]
    for i in range(3):
        assert is_child_of(named[f"task {i}"], named["parent"])


def test_a_library_that_copies_the_context_itself_keeps_the_span_without_setup_threads(
        logger, rows):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with tracer.start_span("user parent"):
            ctx = contextvars.copy_context()
            pool.submit(lambda: ctx.run(start_child, "library work")).result()
    finally:
        pool.shutdown()

    named = by_name(rows())
    assert is_child_of(named["library work"], named["user parent"])


def test_a_context_a_library_captured_earlier_wins_over_setup_threads(
        logger, rows, threads_set_up):
    # Not fixable from outside, in the reference as here: the library switches to its stale
    # context inside the task, after ours.
    pool = concurrent.futures.ThreadPoolExecutor(1)
    stale = contextvars.copy_context()  # captured before any span
    try:
        with tracer.start_span("user parent"):
            pool.submit(lambda: stale.run(start_child, "library work")).result()
    finally:
        pool.shutdown()

    named = by_name(rows())
    assert is_a_root(named["library work"])


# -- our own threads ----------------------------------------------------------------------------


def test_our_threads_start_without_the_callers_span_after_setup_threads(
        logger, threads_set_up):
    seen: list[Any] = ["not run"]
    thread = threading.Thread(target=lambda: seen.__setitem__(0, current.get()))
    with tracer.start_span("caller"):
        threads.start(thread)
    thread.join()

    assert seen[0] is None


def test_our_threads_still_leave_termination_signals_to_the_main_thread_after_setup_threads(
        threads_set_up):
    blocked: list[set[int]] = []
    thread = threading.Thread(
        target=lambda: blocked.append(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    threads.start(thread)
    thread.join()

    assert {signal.SIGTERM, signal.SIGINT} <= blocked[0]


def test_a_fork_child_keeps_propagating_into_its_threads_and_delivers_their_spans(
        logger, rows, threads_set_up):
    def child() -> None:
        with tracer.start_span("in the child"):
            run_in_thread(lambda: start_child("thread of the child"))

    with tracer.start_span("parent"):
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join(60)

    assert process.exitcode == 0
    named = by_name(rows())
    assert is_child_of(named["in the child"], named["parent"])
    assert is_child_of(named["thread of the child"], named["in the child"])


# -- asyncio: what holds without setup_threads ------------------------------------------------


def test_a_task_made_with_create_task_nests_under_the_span_current_when_it_was_made(
        logger, rows):
    async def worker() -> Any:
        seen = tracer.current_span()
        with tracer.start_span("async worker"):
            await asyncio.sleep(0.001)
        return seen

    async def main() -> tuple[Any, Any]:
        with tracer.start_span("parent") as parent:
            return parent, await asyncio.create_task(worker())

    parent, seen = asyncio.run(main())

    named = by_name(rows())
    assert seen is parent
    assert is_child_of(named["async worker"], named["parent"])


def test_to_thread_work_nests_under_the_awaiting_span_without_setup_threads(logger, rows):
    def blocking() -> Any:
        start_child("to_thread worker")
        return tracer.current_span()

    async def main() -> tuple[Any, Any]:
        with tracer.start_span("parent") as parent:
            return parent, await asyncio.to_thread(blocking)

    parent, seen = asyncio.run(main())

    named = by_name(rows())
    assert seen is parent
    assert is_child_of(named["to_thread worker"], named["parent"])


def test_to_thread_work_still_nests_under_the_awaiting_span_after_setup_threads(
        logger, rows, threads_set_up):
    async def main() -> None:
        with tracer.start_span("parent"):
            await asyncio.to_thread(start_child, "to_thread worker")

    asyncio.run(main())

    named = by_name(rows())
    assert is_child_of(named["to_thread worker"], named["parent"])


def test_concurrent_tasks_each_nest_under_the_span_that_made_them(logger, rows):
    async def task(i: int) -> None:
        with tracer.start_span(f"task {i}"):
            await asyncio.sleep(0.01)

    async def main() -> None:
        with tracer.start_span("root"):
            await asyncio.gather(*(asyncio.create_task(task(i)) for i in range(5)))

    asyncio.run(main())

    named = by_name(rows())
    assert len(named) == 6
    for i in range(5):
        assert is_child_of(named[f"task {i}"], named["root"])


def test_task_group_children_nest_under_the_enclosing_span(logger, rows):
    task_group = getattr(asyncio, "TaskGroup", None)
    if task_group is None:
        pytest.skip("asyncio.TaskGroup is new in Python 3.11")

    async def child(i: int) -> None:
        with tracer.start_span(f"child {i}"):
            await asyncio.sleep(0.001)

    async def main() -> None:
        with tracer.start_span("root"):
            async with task_group() as group:
                for i in range(3):
                    group.create_task(child(i))

    asyncio.run(main())

    named = by_name(rows())
    for i in range(3):
        assert is_child_of(named[f"child {i}"], named["root"])


def test_traced_async_functions_nest_under_their_caller(logger, rows):
    @tracer.traced
    async def child_function() -> str:
        await asyncio.sleep(0.01)
        return "child result"

    @tracer.traced
    async def parent_function() -> str:
        return await child_function()

    assert asyncio.run(parent_function()) == "child result"

    named = by_name(rows())
    assert is_child_of(named["child_function"], named["parent_function"])


def test_spans_started_without_with_across_awaits_all_share_the_root(logger, rows):
    # start_span() outside a `with` does not become current: each level is a child of the root.
    async def nested(depth: int) -> None:
        span = tracer.start_span(f"depth {depth}")
        if depth > 0:
            await nested(depth - 1)
        span.end()

    async def main() -> None:
        with tracer.start_span("root"):
            await nested(10)

    asyncio.run(main())

    got = rows()
    assert len(got) == 12  # the root, and depths 10 down to 0
    root = by_name(got)["root"]
    assert all(row["root_span_id"] == root["span_id"] for row in got)


# -- nesting and exceptions in one thread -------------------------------------------------------


def test_nested_spans_make_each_level_current_and_restore_the_outer_one_on_leaving(
        logger, rows):
    with tracer.start_span("root") as root:
        assert tracer.current_span() is root
        with tracer.start_span("child") as child:
            assert tracer.current_span() is child
            with tracer.start_span("grandchild") as grandchild:
                assert tracer.current_span() is grandchild
            assert tracer.current_span() is child
        assert tracer.current_span() is root
    assert not tracer.current_span()

    named = by_name(rows())
    assert is_a_root(named["root"])
    assert is_child_of(named["child"], named["root"])
    assert is_child_of(named["grandchild"], named["child"])


def test_the_parent_is_current_again_after_an_exception_leaves_a_child_span(logger, rows):
    def failing() -> None:
        with tracer.start_span("failing span") as span:
            assert tracer.current_span() is span
            raise ValueError("expected error")

    with tracer.start_span("parent") as parent:
        with pytest.raises(ValueError):
            failing()
        assert tracer.current_span() is parent

    named = by_name(rows())
    assert is_child_of(named["failing span"], named["parent"])
    assert named["failing span"]["error"].startswith("ValueError: expected error\n")


# -- generators ---------------------------------------------------------------------------------


def test_spans_started_while_consuming_a_sync_generator_nest_under_the_consumer(logger, rows):
    def numbers() -> Iterator[int]:
        yield from range(3)

    with tracer.start_span("parent"):
        for i in numbers():
            tracer.start_span(f"item {i}").end()

    named = by_name(rows())
    assert len(named) == 4
    for i in range(3):
        assert is_child_of(named[f"item {i}"], named["parent"])


def test_an_async_generator_holding_a_span_nests_it_under_the_consumer(logger, rows):
    async def source() -> AsyncIterator[str]:
        for i in range(3):
            await asyncio.sleep(0.001)
            yield f"item {i}"

    async def stream_wrapper() -> AsyncIterator[str]:
        with tracer.start_span("stream source"):
            async for item in source():
                yield item

    async def main() -> None:
        with tracer.start_span("consumer"):
            async for item in stream_wrapper():
                tracer.start_span(f"process {item}").end()

    asyncio.run(main())

    named = by_name(rows())
    assert len(named) == 5
    assert is_child_of(named["stream source"], named["consumer"])
    for i in range(3):
        assert named[f"process item {i}"]["root_span_id"] == named["consumer"]["span_id"]


def test_an_async_generator_span_ended_in_finally_is_stored_with_the_consumers_spans(
        logger, rows):
    async def generate() -> AsyncIterator[int]:
        span = tracer.start_span("generator span")
        try:
            for i in range(3):
                yield i
                await asyncio.sleep(0.001)
        finally:
            span.end()

    async def main() -> list[int]:
        results = []
        with tracer.start_span("consumer"):
            async for value in generate():
                results.append(value)
                tracer.start_span(f"process {value}").end()
        return results

    assert asyncio.run(main()) == [0, 1, 2]

    named = by_name(rows())
    assert len(named) == 5
    assert is_child_of(named["generator span"], named["consumer"])


def test_an_async_generator_closed_after_its_first_item_still_ends_its_span(logger, rows):
    async def generate() -> AsyncGenerator[int, None]:
        span = tracer.start_span("generator with finally")
        try:
            yield 1
            yield 2
        finally:
            span.end()

    async def main() -> None:
        with tracer.start_span("consumer"):
            gen = generate()
            await gen.__anext__()
            await gen.aclose()

    asyncio.run(main())

    named = by_name(rows())
    assert len(named) == 2
    assert named["generator with finally"]["metrics"].get("end") is not None


def test_breaking_out_of_an_async_generator_early_raises_nothing_and_keeps_both_spans(
        logger, rows):
    async def long_stream() -> AsyncIterator[str]:
        for i in range(100):
            await asyncio.sleep(0.001)
            yield f"chunk {i}"

    async def stream_wrapper() -> AsyncIterator[str]:
        with tracer.start_span("wrapped stream"):
            count = 0
            async for chunk in long_stream():
                yield chunk
                count += 1
                if count >= 3:
                    break

    async def main() -> None:
        with tracer.start_span("consumer"):
            count = 0
            async for _ in stream_wrapper():
                count += 1
                if count >= 2:
                    break

    asyncio.run(main())  # the generator is closed later, in another context: no ValueError

    named = by_name(rows())
    assert is_child_of(named["wrapped stream"], named["consumer"])
    assert named["wrapped stream"]["metrics"].get("end") is not None
