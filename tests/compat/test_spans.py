"""Spans as the reference SDK records them: names, types, errors, stand-ins, and what a flush
makes visible. Written from the reference's own tests (``test_logger.py``, ``test_context.py``);
each test reads the rows back from the store."""

from __future__ import annotations

import asyncio

import pytest

import tracer

from ..conftest import by_name


def test_an_unnamed_root_span_is_named_root(logger, rows):
    span = logger.start_span()
    assert span.name == "root"
    span.end()
    (row,) = rows()
    assert row["span_attributes"]["name"] == "root"


def test_an_unnamed_child_span_is_named_after_where_it_was_started(logger, rows):
    with logger.start_span("parent") as parent:
        child = parent.start_span()
        child.end()
    named = {r["span_attributes"]["name"] for r in rows()}
    (child_name,) = named - {"parent"}
    function, file, number = child_name.split(":")
    assert (function, file) == ("test_an_unnamed_child_span_is_named_after_where_it_was_started",
                                "test_spans.py")
    assert int(number) > 0


def test_a_traced_function_is_a_function_span(logger, rows):
    @tracer.traced
    def work():
        return 1

    work()
    (row,) = rows()
    assert row["span_attributes"] == {"name": "work", "type": "function"}


def test_a_root_span_of_a_logger_is_a_task(logger, rows):
    with logger.start_span("job"):
        pass
    (row,) = rows()
    assert row["span_attributes"] == {"name": "job", "type": "task"}


def test_a_root_span_of_an_experiment_is_an_eval(experiment, store_path):
    from ..conftest import experiment_rows

    with experiment.start_span("case"):
        pass
    (row,) = experiment_rows(store_path, experiment)
    assert row["span_attributes"] == {"name": "case", "type": "eval"}


def test_a_child_span_has_no_type_unless_given(logger, rows):
    with logger.start_span("parent") as parent:
        parent.start_span("untyped").end()
        parent.start_span("typed", type="tool").end()
    got = by_name(rows())
    assert "type" not in got["untyped"]["span_attributes"]
    assert got["typed"]["span_attributes"]["type"] == "tool"


def test_traced_takes_the_span_name_positionally(logger, rows):
    @tracer.traced("main", notrace_io=True)
    def work(x):
        return x

    work(3)
    (row,) = rows()
    assert row["span_attributes"]["name"] == "main"
    assert "input" not in row and "output" not in row


def test_traced_refuses_a_name_given_twice():
    with pytest.raises(TypeError, match="name is given twice"):
        tracer.traced("a", name="b")


def test_an_error_is_stored_as_the_exception_line_then_the_traceback(logger, rows):
    with pytest.raises(ValueError), logger.start_span("fails"):
        raise ValueError("boom")
    (row,) = rows()
    head, _, traceback = row["error"].partition("\n\n")
    assert head == "ValueError: boom"
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert 'raise ValueError("boom")' in traceback


def test_a_cycle_is_stored_as_a_circular_reference_marker(logger, rows):
    data: dict = {"key": "value"}
    data["self"] = data
    with logger.start_span("cyclic") as span:
        span.log(output=data)
    (row,) = rows()
    assert row["output"] == {"key": "value", "self": "<circular reference>"}


def test_an_object_whose_repr_raises_is_stored_as_non_serializable(logger, rows):
    class BadStr:
        def __str__(self) -> str:
            raise RuntimeError("no")

        __repr__ = __str__

    with logger.start_span("bad") as span:
        span.log(input={"test": "input"}, output={"result": BadStr()})
    (row,) = rows()
    assert row["input"] == {"test": "input"}
    assert row["output"]["result"].startswith("<non-serializable: ")


def test_nan_and_infinities_are_stored_as_their_json_names(logger, rows):
    with logger.start_span("numbers") as span:
        span.log(output={"nan": float("nan"), "inf": float("inf"), "neg": float("-inf")})
    (row,) = rows()
    assert row["output"] == {"nan": "NaN", "inf": "Infinity", "neg": "-Infinity"}


def test_a_span_still_open_at_flush_has_its_row(logger, rows):
    with logger.start_span("parent") as span:
        span.log(input="question")
        (row,) = rows()
        assert row["span_attributes"]["name"] == "parent"
        assert row["input"] == "question"
        assert "end" not in row["metrics"]
    (row,) = rows()
    assert "end" in row["metrics"]


def test_a_span_started_without_logging_anything_is_visible_after_flush(logger, rows):
    with logger.start_span("quiet"):
        (row,) = rows()
        assert row["span_attributes"]["name"] == "quiet"


def test_a_nested_open_traced_call_is_visible_after_flush(logger, rows):
    @tracer.traced
    def outer():
        return rows()

    during = outer()
    assert [r["span_attributes"]["name"] for r in during] == ["outer"]


# -- the current span ---------------------------------------------------------------------


def test_set_current_makes_a_span_current_until_unset(logger):
    span = logger.start_span("manual")
    assert tracer.current_span() is not span
    span.set_current()
    assert tracer.current_span() is span
    span.unset_current()
    assert not tracer.current_span()
    span.end()


def test_a_span_started_with_set_current_false_never_becomes_current(logger):
    first = logger.start_span("first")
    first.set_current()
    second = logger.start_span("second", set_current=False)
    second.set_current()
    assert tracer.current_span() is first
    with second:
        assert tracer.current_span() is first
    first.unset_current()
    first.end()


def test_set_current_inside_a_with_block_leaves_nothing_current_after_it(logger):
    with logger.start_span("block") as span:
        span.set_current()
        assert tracer.current_span() is span
    assert not tracer.current_span()


def test_a_span_started_under_an_exported_parent_is_its_child(logger, rows):
    with logger.start_span("outer") as outer:
        slug = outer.export()
    with logger.start_span("other") as other:
        other.start_span("forced", parent=slug).end()
    got = by_name(rows())
    assert got["forced"]["span_parents"] == [got["outer"]["span_id"]]
    assert got["forced"]["root_span_id"] == got["outer"]["root_span_id"]


def test_parent_context_makes_spans_outside_any_span_children_of_the_slug(logger, rows):
    with logger.start_span("outer") as outer:
        slug = outer.export()

    @tracer.traced("inner", notrace_io=True)
    def inner():
        tracer.start_span("child").end()

    with tracer.parent_context(slug):
        inner()
    got = by_name(rows())
    assert got["inner"]["span_parents"] == [got["outer"]["span_id"]]
    assert got["child"]["span_parents"] == [got["inner"]["span_id"]]
    assert got["child"]["root_span_id"] == got["outer"]["root_span_id"]


def test_an_explicit_parent_wins_over_the_current_span(logger, rows):
    with logger.start_span("outer") as outer:
        slug = outer.export()

    @tracer.traced("inner", notrace_io=True)
    def inner():
        tracer.start_span("forced", parent=slug).end()

    inner()
    got = by_name(rows())
    assert got["forced"]["span_parents"] == [got["outer"]["span_id"]]


# -- no-op spans and links ------------------------------------------------------------------


def test_the_noop_span_is_exported_at_top_level_with_an_empty_name():
    assert tracer.NOOP_SPAN.name == ""
    assert not tracer.NOOP_SPAN


def test_the_noop_span_links_to_the_noop_page():
    base = tracer.NOOP_SPAN.permalink().removesuffix("/noop-span")
    assert tracer.NOOP_SPAN.permalink().endswith("/noop-span")
    assert tracer.permalink(tracer.NOOP_SPAN.export()) == f"{base}/noop-span"
    assert tracer.NOOP_SPAN.link() == f"{base}/noop-span"


def test_link_is_the_permalink_and_app_url_changes_its_base(logger):
    with logger.start_span("linked") as span:
        assert span.link() == span.permalink()
        link = tracer.permalink(span.export(), org_name="ignored", app_url="http://viewer:9/")
        assert link.startswith("http://viewer:9/p/")
        assert span.span_id in link


# -- loggers and experiments ------------------------------------------------------------------


def test_init_logger_takes_project_id_as_the_projects_name(store_path):
    logger = tracer.init_logger(project_id="compat-project-id", store=store_path)
    assert logger.project == "compat-project-id"


def test_init_without_project_or_project_id_raises():
    with pytest.raises(ValueError, match="Must specify at least one of project or project_id"):
        tracer.init()


def test_init_with_open_raises_a_clear_error(store_path):
    with pytest.raises(ValueError, match="open=True"):
        tracer.init("p", "e", open=True, store=store_path, set_current=False)


def test_init_with_update_continues_one_experiment(store_path):
    first = tracer.init("p", "same", update=True, store=store_path, set_current=False)
    again = tracer.init("p", "same", update=True, store=store_path, set_current=False)
    fresh = tracer.init("p", "same", store=store_path, set_current=False)
    assert first.id == again.id != fresh.id


def test_init_checks_and_keeps_tags_and_metadata(store_path):
    exp = tracer.init("p", "tagged", tags=["b", "a"], metadata={"k": 1}, store=store_path,
                      set_current=False)
    assert (exp.tags, exp.metadata) == (["a", "b"], {"k": 1})
    with pytest.raises(TypeError, match="tags"):
        tracer.init("p", "tagged", tags="a", store=store_path, set_current=False)  # type: ignore[arg-type]


def test_a_logger_initialised_in_a_task_is_current_in_that_task_only(store_path):
    parent = tracer.init_logger("compat-parent", store=store_path)

    async def child() -> object:
        assert tracer.current_logger() is parent
        mine = tracer.init_logger("compat-child", store=store_path)
        assert tracer.current_logger() is mine
        return mine

    async def main() -> object:
        mine = await asyncio.create_task(child())
        assert tracer.current_logger() is parent
        return mine

    mine = asyncio.run(main())
    assert mine is not parent
    assert tracer.current_logger() is parent


def test_the_current_logger_is_seen_from_a_new_thread(store_path):
    import threading

    logger = tracer.init_logger("compat-thread", store=store_path)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(tracer.current_logger()))
    thread.start()
    thread.join(30)
    assert seen == [logger]


def test_init_refuses_open_and_update_together():
    with pytest.raises(ValueError, match="Cannot open and update an experiment at the same time"):
        tracer.init("p", "e", open=True, update=True)


def test_init_refuses_open_without_a_name():
    with pytest.raises(ValueError, match="Cannot open an experiment without specifying its name"):
        tracer.init("p", open=True)


def test_init_refuses_a_tag_given_twice():
    with pytest.raises(ValueError, match="duplicate tag: Exp1"):
        tracer.init("p", "e", tags=["Exp1", "Exp1"])
