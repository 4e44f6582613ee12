"""The user-facing API, end to end through the real aggregator and store."""

from __future__ import annotations

import asyncio
import time

import pytest

import tracer
from tracer import wire

from .conftest import by_name
from .helpers import wait_until


def test_traced_records_bound_arguments_as_input_and_return_value_as_output(logger, rows):
    @tracer.traced
    def add(a, b, scale=1):
        return (a + b) * scale

    assert add(2, b=3) == 5
    (row,) = rows()
    assert row["span_attributes"] == {"name": "add", "type": "function"}
    assert row["input"] == {"a": 2, "b": 3}
    assert row["output"] == 5
    assert row["span_parents"] is None
    assert row["root_span_id"] == row["span_id"] == row["id"]


def test_traced_leaves_self_out_of_a_methods_input(logger, rows):
    class Greeter:
        @tracer.traced
        def greet(self, name):
            return f"hi {name}"

    assert Greeter().greet("ada") == "hi ada"
    (row,) = rows()
    assert row["input"] == {"name": "ada"}


def test_traced_with_varargs_binds_them_by_parameter_name(logger, rows):
    @tracer.traced
    def collect(first, *rest, flag=False, **extra):
        return len(rest)

    collect(1, 2, 3, flag=True, colour="red")
    (row,) = rows()
    assert row["input"] == {"first": 1, "rest": [2, 3], "flag": True,
                            "extra": {"colour": "red"}}


def test_traced_accepts_name_type_and_notrace_io(logger, rows):
    @tracer.traced(name="renamed", type="tool", notrace_io=True)
    def secret(password):
        return password[::-1]

    assert secret("hunter2") == "2retnuh"
    (row,) = rows()
    assert row["span_attributes"] == {"name": "renamed", "type": "tool"}
    assert "input" not in row and "output" not in row


def test_nested_traced_calls_form_a_tree(logger, rows):
    @tracer.traced
    def leaf(x):
        return x

    @tracer.traced
    def middle(x):
        return leaf(x) + leaf(x)

    @tracer.traced
    def top():
        return middle(1)

    top()
    got = rows()
    assert len(got) == 4
    spans = {r["span_id"]: r for r in got}
    root = next(r for r in got if r["span_attributes"]["name"] == "top")
    for row in got:
        assert row["root_span_id"] == root["span_id"]
        if row is not root:
            (parent,) = row["span_parents"]
            assert parent in spans
    mid = next(r for r in got if r["span_attributes"]["name"] == "middle")
    leaves = [r for r in got if r["span_attributes"]["name"] == "leaf"]
    assert [leaf["span_parents"] for leaf in leaves] == [[mid["span_id"]]] * 2
    assert mid["span_parents"] == [root["span_id"]]


def test_traced_logs_an_exception_in_error_and_reraises_it(logger, rows):
    @tracer.traced
    def fails(x):
        raise KeyError(f"missing {x}")

    with pytest.raises(KeyError):
        fails("thing")
    (row,) = rows()
    # As the reference writes it: the exception's line, then the traceback.
    assert row["error"].startswith("KeyError: 'missing thing'\n\nTraceback (most recent call")
    assert 'in fails\n    raise KeyError(f"missing {x}")' in row["error"]
    assert "output" not in row


def test_metrics_start_and_end_are_epoch_seconds(logger, rows):
    before = time.time()

    @tracer.traced
    def work():
        time.sleep(0.01)  # the work takes time: the span's duration is checked below

    work()
    after = time.time()
    (row,) = rows()
    start, end = row["metrics"]["start"], row["metrics"]["end"]
    assert before <= start < end <= after
    assert end - start >= 0.01


def test_rows_belong_to_the_project_logs_container(logger, rows, project):
    with tracer.start_span("one"):
        pass
    (row,) = rows()
    assert row["log_id"] == "g"
    assert row["project_name"] == project
    assert row["project_id"] == logger_project_id(project)
    assert row["created"].endswith("+00:00")


def logger_project_id(project: str) -> str:
    from workers.rows import project_id

    return project_id(project)


# -- async ----------------------------------------------------------------------------------


def test_async_spans_keep_their_parents_under_asyncio_gather(logger, rows):
    @tracer.traced
    async def fetch(i):
        await asyncio.sleep(0.01 * (3 - i))  # finish in reverse order
        return await leaf(i)

    @tracer.traced
    async def leaf(i):
        await asyncio.sleep(0)
        return i * 10

    @tracer.traced
    async def gather_all():
        return await asyncio.gather(*(fetch(i) for i in range(3)))

    assert asyncio.run(gather_all()) == [0, 10, 20]
    got = rows()
    assert len(got) == 7
    root = next(r for r in got if r["span_attributes"]["name"] == "gather_all")
    fetches = {r["input"]["i"]: r for r in got if r["span_attributes"]["name"] == "fetch"}
    leaves = {r["input"]["i"]: r for r in got if r["span_attributes"]["name"] == "leaf"}
    for i in range(3):
        assert fetches[i]["span_parents"] == [root["span_id"]]
        assert leaves[i]["span_parents"] == [fetches[i]["span_id"]]
        assert leaves[i]["output"] == i * 10


def test_start_span_inside_a_task_is_a_child_of_the_tasks_span(logger, rows):
    async def job(n):
        with tracer.start_span(f"job{n}") as span:
            await asyncio.sleep(0.001)
            assert tracer.current_span() is span

    async def main():
        with tracer.start_span("main"):
            await asyncio.gather(job(1), job(2))

    asyncio.run(main())
    named = by_name(rows())
    assert named["job1"]["span_parents"] == [named["main"]["span_id"]]
    assert named["job2"]["span_parents"] == [named["main"]["span_id"]]


# -- generators -----------------------------------------------------------------------------


def test_traced_generator_records_yielded_items_as_output(logger, rows):
    @tracer.traced
    def count(n):
        yield from range(n)

    assert list(count(3)) == [0, 1, 2]
    (row,) = rows()
    assert row["input"] == {"n": 3}
    assert row["output"] == [0, 1, 2]


def test_traced_generator_span_is_current_only_while_its_body_runs(logger, rows):
    @tracer.traced
    def inner(x):
        return x

    @tracer.traced
    def gen():
        yield inner(1)
        yield inner(2)

    seen_between_yields = []
    with tracer.start_span("outer") as outer:
        for _ in gen():
            seen_between_yields.append(tracer.current_span())
    assert seen_between_yields == [outer, outer]
    got = rows()
    gen_row = next(r for r in got if r["span_attributes"]["name"] == "gen")
    for row in got:
        if row["span_attributes"]["name"] == "inner":
            assert row["span_parents"] == [gen_row["span_id"]]


def test_traced_generator_abandoned_early_still_ends_its_span(logger, rows):
    @tracer.traced
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    g = endless()
    assert [next(g), next(g)] == [0, 1]
    g.close()
    (row,) = rows()
    assert row["output"] == [0, 1]
    assert "end" in row["metrics"]


def test_traced_generator_records_an_exception_raised_inside(logger, rows):
    @tracer.traced
    def broken():
        yield 1
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError):
        list(broken())
    (row,) = rows()
    assert row["error"].startswith("RuntimeError: mid-stream\n")


def test_traced_async_generator_records_yielded_items(logger, rows):
    @tracer.traced
    async def ticks(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def consume():
        return [i async for i in ticks(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    (row,) = rows()
    assert row["output"] == [0, 1, 2]


# -- start_span, current_span, Span ---------------------------------------------------------


def test_start_span_as_context_manager_is_current_inside(logger, rows):
    with tracer.start_span("block", type="task", input="question") as span:
        assert tracer.current_span() is span
        span.log(output="answer")
    assert tracer.current_span() is not span
    (row,) = rows()
    assert row["span_attributes"] == {"name": "block", "type": "task"}
    assert row["input"] == "question"
    assert row["output"] == "answer"


def test_start_span_accepts_the_event_as_a_dict(logger, rows):
    with tracer.start_span("evented", event={"input": 1, "metadata": {"a": 1}}, expected=2):
        pass
    (row,) = rows()
    assert (row["input"], row["expected"], row["metadata"]) == (1, 2, {"a": 1})


def test_manual_span_is_recorded_when_ended(logger, rows):
    span = tracer.start_span("manual")
    assert tracer.current_span() is not span  # not current unless used with `with`
    span.log(input="in")
    child = span.start_span("child")
    child.end()
    end = span.end(end_time=1234567890.5)
    assert end == 1234567890.5
    assert span.end() == end  # idempotent
    named = by_name(rows())
    assert named["manual"]["metrics"]["end"] == 1234567890.5
    assert named["child"]["span_parents"] == [named["manual"]["span_id"]]


def test_several_log_calls_merge_into_one_row(logger, rows):
    with tracer.start_span("merged") as span:
        span.log(input={"q": "?"}, metadata={"a": 1, "nested": {"x": 1}})
        span.log(metadata={"b": 2, "nested": {"y": 2}}, scores={"s1": 0.5})
        span.log(output="first", scores={"s2": 1})
        span.log(output="second", tags=["t2", "t1"])
    (row,) = rows()
    assert row["metadata"] == {"a": 1, "b": 2, "nested": {"x": 1, "y": 2}}
    assert row["scores"] == {"s1": 0.5, "s2": 1}
    assert row["output"] == "second"
    assert row["tags"] == ["t1", "t2"]
    assert row["input"] == {"q": "?"}


def test_set_attributes_renames_and_retypes_a_span(logger, rows):
    with tracer.start_span("before") as span:
        span.set_attributes(name="after", type="eval")
    (row,) = rows()
    assert row["span_attributes"] == {"name": "after", "type": "eval"}


def test_span_ids_match_the_stored_row(logger, rows):
    with tracer.start_span("root") as root, root.start_span("kid") as kid:
        pass
    named = by_name(rows())
    assert named["root"]["id"] == root.id and named["root"]["span_id"] == root.span_id
    assert named["kid"]["root_span_id"] == kid.root_span_id == root.span_id
    assert kid.span_parents == [root.span_id]


def test_error_inside_start_span_block_is_logged_and_reraised(logger, rows):
    with pytest.raises(ZeroDivisionError), tracer.start_span("divides"):
        _ = 1 / 0
    (row,) = rows()
    assert row["error"].startswith("ZeroDivisionError: division by zero\n")
    assert "end" in row["metrics"]


def test_span_log_of_error_field_is_stored_as_given(logger, rows):
    with tracer.start_span("handled") as span:
        tracer.current_span().log(error="Input too long")
    assert isinstance(span, tracer.Span)
    assert span.end_time is not None
    (row,) = rows()
    assert row["error"] == "Input too long"


def test_current_logger_is_the_last_initialised_logger(logger):
    assert tracer.current_logger() is logger


def test_logger_log_records_a_one_span_trace(logger, rows):
    row_id = logger.log(input="x", output="y")
    (row,) = rows()
    assert row["id"] == row_id and row["output"] == "y"


def test_span_flush_and_logger_flush_commit_what_was_logged(logger, rows):
    with tracer.start_span("a") as span:
        pass
    span.flush()
    assert len(rows(flush=False)) == 1
    with tracer.start_span("b"):
        pass
    logger.flush()
    assert len(rows(flush=False)) == 2


def test_an_idle_process_delivers_an_ended_span_within_a_second_without_flush(logger, rows):
    with tracer.start_span("unflushed"):
        pass
    wait_until(lambda: rows(flush=False), 1.0, "the span was not delivered without a flush")
    assert [r["span_attributes"]["name"] for r in rows(flush=False)] == ["unflushed"]


# -- export, update_span, permalink -----------------------------------------------------------


def test_export_slug_continues_the_trace_as_a_child(logger, rows):
    with tracer.start_span("origin") as origin:
        slug = origin.export()
    with tracer.start_span("continued", parent=slug):
        pass
    named = by_name(rows())
    assert named["continued"]["span_parents"] == [named["origin"]["span_id"]]
    assert named["continued"]["root_span_id"] == named["origin"]["root_span_id"]


def test_logger_update_span_merges_into_an_existing_row_by_id(logger, rows):
    with tracer.start_span("later", metadata={"a": 1}) as span:
        pass
    rows()  # the span is committed before the update, as the reference asks
    logger.update_span(id=span.id, output="async result", metadata={"b": 2})
    (row,) = rows()
    assert row["output"] == "async result"
    assert row["metadata"] == {"a": 1, "b": 2}
    assert row["span_attributes"]["name"] == "later"


def test_update_span_by_exported_slug_merges_into_the_row(logger, rows):
    with tracer.start_span("exported") as span:
        exported = span.export()
    rows()
    tracer.update_span(exported=exported, output=42, scores={"ok": 1})
    (row,) = rows()
    assert (row["output"], row["scores"]) == (42, {"ok": 1})


def test_permalink_of_a_slug_equals_the_spans_permalink(logger):
    with tracer.start_span("linked") as span:
        link = span.permalink()
    assert tracer.permalink(span.export()) == link
    assert link.startswith("http://127.0.0.1:8585/p/")
    assert f"r={span.root_span_id}" in link and f"s={span.span_id}" in link


def test_app_url_argument_sets_the_permalink_base(store_path, project):
    from tracer.context import state

    previous = state.app_url
    try:
        tracer.init_logger(project, store=store_path, app_url="https://traces.example/")
        with tracer.start_span("x") as span:
            pass
        assert span.permalink().startswith("https://traces.example/p/")
    finally:
        state.app_url = previous


def test_user_chosen_row_id_is_kept(logger, rows):
    with tracer.start_span("chosen", id="my-row-1"):
        pass
    (row,) = rows()
    assert row["id"] == "my-row-1"


def test_span_types_are_the_references_six():
    assert set(tracer.SPAN_TYPES) == {"llm", "score", "function", "eval", "task", "tool"}


def test_span_ids_format_and_parse_round_trip():
    text = wire.format_id(0x0123456789ABCDEF, 0xFEDCBA9876543210)
    assert text == "01234567-89ab-cdef-fedc-ba9876543210"
    assert wire.parse_id(text) == (0x0123456789ABCDEF, 0xFEDCBA9876543210)


def test_span_ids_of_one_trace_share_its_half_and_differ_in_theirs():
    trace = 0x0123456789ABCDEF
    first, second = wire.format_id(trace, 1), wire.format_id(trace, 0xFFFF00000000FFFF)
    assert first == "01234567-89ab-cdef-0000-000000000001"
    assert second == "01234567-89ab-cdef-ffff-00000000ffff"


def test_trace_ids_of_later_traces_sort_later(logger):
    earlier = tracer.start_span("earlier")
    earlier.end()
    time.sleep(0.002)  # time passes between the two traces: that is the test
    later = tracer.start_span("later")
    later.end()
    assert earlier.root_span_id[:18] < later.root_span_id[:18]


# -- threads --------------------------------------------------------------------------------


def test_traced_thread_pool_executor_runs_tasks_as_children_of_the_submitting_span(logger, rows):
    @tracer.traced
    def task(i):
        return i * i

    with tracer.start_span("submitter") as parent, \
            tracer.TracedThreadPoolExecutor(max_workers=2) as pool:
        assert sorted(pool.map(task, range(4))) == [0, 1, 4, 9]
    got = rows()
    assert len(got) == 5
    for row in got:
        if row["span_attributes"]["name"] == "task":
            assert row["span_parents"] == [parent.span_id]


def test_user_chosen_row_id_is_kept_under_a_parent_too(logger, rows):
    with tracer.start_span("parent") as parent:
        with tracer.start_span("chosen child", id="child-row"):
            pass
        with parent.start_span("chosen grandchild", id="grandchild-row"):
            pass
    named = by_name(rows())
    assert named["chosen child"]["id"] == "child-row"
    assert named["chosen grandchild"]["id"] == "grandchild-row"
    assert named["chosen child"]["span_parents"] == [parent.span_id]


# -- several parents (a trace is a DAG) -------------------------------------------------------


def test_start_span_with_several_parents_records_them_all_in_order(logger, rows):
    with tracer.start_span("root") as root:
        with root.start_span("left") as left:
            pass
        with root.start_span("right") as right:
            slug = right.export()
        with tracer.start_span("join", parents=[left, slug]) as join:
            pass
    named = by_name(rows())
    assert named["join"]["span_parents"] == [named["left"]["span_id"],
                                             named["right"]["span_id"]]
    assert join.span_parents == named["join"]["span_parents"]


def test_a_span_with_several_parents_joins_their_trace_and_nests_its_children(logger, rows):
    with tracer.start_span("root") as root:
        left, right = root.start_span("left"), root.start_span("right")
        with logger.start_span("join", parents=[left, right]) as join, \
                join.start_span("below join"):
            pass
        left.end()
        right.end()
    named = by_name(rows())
    assert named["join"]["root_span_id"] == named["root"]["span_id"]
    assert named["below join"]["root_span_id"] == named["root"]["span_id"]
    assert named["below join"]["span_parents"] == [named["join"]["span_id"]]


def test_parents_in_two_traces_raise_value_error_and_log_nothing(logger, rows):
    with tracer.start_span("first trace") as first:
        pass
    with tracer.start_span("second trace") as second:
        pass

    with pytest.raises(ValueError, match="parents must all be spans of one trace"):
        tracer.start_span("across traces", parents=[first, second.export()])
    assert "across traces" not in by_name(rows())


def test_parent_and_parents_together_raise_type_error(logger):
    with tracer.start_span("only") as only:
        pass

    with pytest.raises(TypeError, match="parent= or parents=, not both"):
        tracer.start_span("both", parent=only.export(), parents=[only])
    with pytest.raises(ValueError, match="parents is empty"):
        tracer.start_span("none", parents=[])
