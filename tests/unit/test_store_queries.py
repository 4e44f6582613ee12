"""The trace server's store queries on a real store of each backend (SQLite, PostgreSQL),
written through the real writer:
trace summaries (counts, running traces, filters, pages that hold still while traces arrive),
skeletons, span rows, experiments' score means, compare; migration 2 on an older store."""

from __future__ import annotations

import itertools
import json
import sqlite3
from typing import Any

import pytest

from tracer import wire
from workers.queue import Pending
from workers.rows import Container, project_id
from workers.store import open_store, schema
from workers.store.base import SearchOff, StoreReader, TraceFilter, UpgradeRequired, Write
from workers.store.sqlite import SQLiteWriter

T0 = 1_800_000_000.0
_ids = itertools.count(1)


def logs(project: str = "p") -> Container:
    return Container(wire.logs_container(project))


def experiment(experiment_id: str, name: str, project: str = "p") -> Container:
    return Container(wire.experiment_container(project, experiment_id, name))


def span(container: Container, root: str, span_id: str, parents: list[str] | None = None,
         name: str | None = None, type: str = "function", start: float | None = None,
         end: float | None = None, **fields: Any) -> Pending:
    """A partial row of a span, as the aggregator hands it to the writer."""
    metrics: dict = dict(fields.pop("metrics", None) or {})
    if start is not None:
        metrics["start"] = start
    if end is not None:
        metrics["end"] = end
    row = dict(fields, id=span_id, span_id=span_id, root_span_id=root,
               span_parents=parents or None, span_attributes={"name": name or span_id,
                                                               "type": type},
               **container.columns)
    if metrics:
        row["metrics"] = metrics
    return Pending((container.id, span_id), row, 100, 0, container)


def trace(container: Container, start: float, children: int = 2, name: str = "root",
          **root_fields: Any) -> tuple[str, list[Pending]]:
    """A finished trace: a root and ``children`` child spans; returns its root id and rows."""
    root = f"t{next(_ids):06d}"
    rows = [span(container, root, root, name=name, type="task", start=start, end=start + 5,
                 **root_fields)]
    rows += [span(container, root, f"{root}-c{i}", [root], start=start + 1 + i,
                  end=start + 2 + i) for i in range(children)]
    return root, rows


@pytest.fixture
def store(store_url):
    """A store of each backend (``store_url``), written through its real writer."""
    writer = open_store(store_url)

    class Store:
        def write(self, rows: list[Pending]) -> None:
            writer.write(rows)

        def reader(self) -> StoreReader:
            return open_store(store_url, readonly=True)

    yield Store()
    writer.close()


def summaries(store, project: str = "p", **kwargs) -> list[dict]:
    with store.reader() as reader:
        page = reader.trace_summaries(project=project, **kwargs)
    assert page is not None
    return page.traces


def roots(store, **kwargs) -> list[str]:
    return [t["root_span_id"] for t in summaries(store, **kwargs)]


# -- summaries -------------------------------------------------------------------------------


def test_traces_are_listed_newest_first_with_their_counts(store):
    first, rows1 = trace(logs(), T0, children=3)
    second, rows2 = trace(logs(), T0 + 100, children=1)
    store.write(rows1 + rows2)

    listed = summaries(store)

    assert [t["root_span_id"] for t in listed] == [second, first]
    assert listed[1] == {"root_span_id": first, "row_id": first, "name": "root", "type": "task",
                         "start": T0, "end": T0 + 5, "duration": 5.0, "spans": 4,
                         "errors": 0, "running": False, "scores": {}, "tokens": None}


def test_a_trace_whose_root_has_not_ended_is_listed_as_running(store):
    root = "running-root"
    store.write([span(logs(), root, root, start=T0),
                 span(logs(), root, "child", [root], start=T0 + 1, end=T0 + 2)])

    [listed] = summaries(store)
    assert listed["running"] is True and listed["end"] is None and listed["duration"] is None

    store.write([span(logs(), root, root, end=T0 + 3)])  # its end merges in
    [listed] = summaries(store)
    assert listed["running"] is False and listed["duration"] == 3.0 and listed["spans"] == 2


def test_children_stored_before_their_root_make_a_trace_that_the_root_completes(store):
    root = "late-root"
    store.write([span(logs(), root, "child", [root], start=T0 + 1, end=T0 + 2)])
    [early] = summaries(store)
    assert (early["row_id"], early["name"], early["start"], early["running"]) == (
        None, None, T0 + 1, True)

    store.write([span(logs(), root, root, name="main", start=T0, end=T0 + 9)])
    [complete] = summaries(store)
    assert (complete["row_id"], complete["name"], complete["start"], complete["spans"]) == (
        root, "main", T0, 2)


def test_errors_and_tokens_count_each_span_once_however_often_it_is_merged(store):
    root, rows = trace(logs(), T0)
    llm = span(logs(), root, "llm", [root], type="llm", start=T0 + 1,
               metrics={"tokens": 30})
    store.write([*rows, llm])
    store.write([span(logs(), root, "llm", error="RuntimeError: boom")])
    store.write([span(logs(), root, "llm", error="RuntimeError: again",
                      metrics={"tokens": 40})])
    store.write([*rows, llm])  # the same batch again (a retry, a replay)

    [listed] = summaries(store)
    assert (listed["spans"], listed["errors"], listed["tokens"]) == (4, 1, 30)


def test_a_span_updated_before_it_arrives_joins_its_trace_once_it_does(store):
    root, rows = trace(logs(), T0, children=1)
    early = Pending((logs().id, "late"), {"id": "late", "metadata": {"reviewed": True}}, 10, 0,
                    logs())
    store.write([*rows, early])
    assert summaries(store)[0]["spans"] == 2

    store.write([span(logs(), root, "late", [root], start=T0 + 3, end=T0 + 4)])
    assert summaries(store)[0]["spans"] == 3


# -- traces begun elsewhere (OpenTelemetry): no row's span_id is the root_span_id -------------


def foreign_trace(container: Container, start: float, name: str = "GET /") -> tuple[
        str, str, list[Pending]]:
    """A trace begun by another system (docs/interop.md): its first span has no parents but a
    span_id other than the root_span_id. Returns (root_span_id, first span's id, rows)."""
    n = next(_ids)
    root, first = f"foreign{n:06d}", f"foreign{n:06d}-first"
    rows = [span(container, root, first, name=name, type="task", start=start, end=start + 4),
            span(container, root, f"{first}-c", [first], start=start + 1, end=start + 2)]
    return root, first, rows


def test_a_trace_begun_elsewhere_has_its_span_without_parents_as_root(store):
    root, first, rows = foreign_trace(logs(), T0)
    store.write(rows)

    [listed] = summaries(store)
    assert listed == {"root_span_id": root, "row_id": first, "name": "GET /", "type": "task",
                      "start": T0, "end": T0 + 4, "duration": 4.0, "spans": 2, "errors": 0,
                      "running": False, "scores": {}, "tokens": None}


def test_a_parentless_root_stored_after_its_children_and_then_ended_completes_its_trace(store):
    root, first, rows = foreign_trace(logs(), T0)
    store.write([rows[1]])
    store.write([span(logs(), root, first, name="GET /", start=T0)])  # still running
    [running] = summaries(store)
    assert (running["row_id"], running["running"]) == (first, True)

    store.write([span(logs(), root, first, end=T0 + 7)])
    [ended] = summaries(store)
    assert (ended["row_id"], ended["end"], ended["duration"], ended["spans"]) == (
        first, T0 + 7, 7.0, 2)


@pytest.mark.parametrize("order", ["root_first", "parentless_first", "one_batch"])
def test_a_root_by_id_wins_over_a_span_without_parents_whatever_the_order(store, order):
    root, rows = trace(logs(), T0, children=0, name="ours")
    stray = span(logs(), root, "stray", name="stray", start=T0 - 1, end=T0 + 1)
    if order == "root_first":
        store.write(rows)
        store.write([stray])
    elif order == "parentless_first":
        store.write([stray])
        store.write(rows)
    else:
        store.write([stray, *rows])

    [listed] = summaries(store)
    assert (listed["row_id"], listed["name"], listed["spans"]) == (root, "ours", 2)


def test_of_two_spans_without_parents_the_first_stored_stays_the_root(store):
    root, first, rows = foreign_trace(logs(), T0, name="first")
    store.write(rows)
    store.write([span(logs(), root, "second", name="second", start=T0 - 5, end=T0 + 9)])
    store.write([span(logs(), root, first, name="first", metadata={"again": True})])  # merged

    [listed] = summaries(store)
    assert (listed["row_id"], listed["name"], listed["spans"], listed["start"]) == (
        first, "first", 3, T0 - 5)


# -- pages -----------------------------------------------------------------------------------


def test_pages_hold_still_while_new_traces_arrive(store):
    made = []
    for i in range(10):
        root, rows = trace(logs(), T0 + i * 10)
        store.write(rows)
        made.append(root)

    seen: list[str] = []
    before = None
    while True:
        with store.reader() as reader:
            page = reader.trace_summaries(project="p", limit=3, before=before)
        assert page is not None
        seen += [t["root_span_id"] for t in page.traces]
        # Newer traces arrive between pages, and one that started earlier than them all.
        newer = [trace(logs(), T0 + 1000 + len(seen))[1] for _ in range(2)]
        store.write([row for rows in newer for row in rows])
        if page.next is None:
            break
        before = page.next

    assert seen[:10] == list(reversed(made))


def test_after_a_cursor_only_newer_traces_are_listed(store):
    old, rows = trace(logs(), T0)
    store.write(rows)
    with store.reader() as reader:
        page = reader.trace_summaries(project="p")
    assert page is not None
    newest = (page.traces[0]["start"], page.traces[0]["root_span_id"])

    new, rows = trace(logs(), T0 + 50)
    store.write(rows)

    assert roots(store, after=newest) == [new]
    assert roots(store) == [new, old]


def test_the_last_page_says_there_is_no_next(store):
    for i in range(4):
        store.write(trace(logs(), T0 + i)[1])
    with store.reader() as reader:
        first = reader.trace_summaries(project="p", limit=2)
        assert first is not None and first.next is not None
        second = reader.trace_summaries(project="p", limit=2, before=first.next)
        assert second is not None and second.next is None and len(second.traces) == 2


def test_an_unknown_project_or_experiment_has_no_page(store):
    store.write(trace(logs(), T0)[1])
    with store.reader() as reader:
        assert reader.trace_summaries(project="nope") is None
        assert reader.trace_summaries(experiment_id="nope") is None


# -- filters ---------------------------------------------------------------------------------


def test_since_and_until_keep_traces_that_started_in_between(store):
    made = [trace(logs(), T0 + i * 10) for i in range(5)]
    store.write([row for _, rows in made for row in rows])

    assert roots(store, filters=TraceFilter(since=T0 + 10, until=T0 + 30)) == [
        made[2][0], made[1][0]]


def test_name_keeps_roots_named_so_or_starting_so(store):
    answer, rows1 = trace(logs(), T0, name="answer question")
    other, rows2 = trace(logs(), T0 + 1, name="ingest")
    store.write(rows1 + rows2)

    assert roots(store, filters=TraceFilter(name="answer")) == [answer]
    assert roots(store, filters=TraceFilter(name="answer question")) == [answer]
    assert roots(store, filters=TraceFilter(name="nswer")) == []


def test_type_keeps_traces_with_a_span_of_that_type_anywhere(store):
    with_llm, rows = trace(logs(), T0)
    rows.append(span(logs(), with_llm, "deep-llm", [f"{with_llm}-c0"], type="llm",
                     start=T0 + 2))
    without, rows2 = trace(logs(), T0 + 1)
    store.write(rows + rows2)

    assert roots(store, filters=TraceFilter(span_type="llm")) == [with_llm]
    assert set(roots(store, filters=TraceFilter(span_type="function"))) == {with_llm, without}


def test_errors_keeps_traces_with_an_error_in_any_span(store):
    clean, rows = trace(logs(), T0)
    failed, rows2 = trace(logs(), T0 + 1)
    rows2.append(span(logs(), failed, "bad", [failed], start=T0 + 2, error="ValueError: x"))
    store.write(rows + rows2)

    assert roots(store, filters=TraceFilter(errors=True)) == [failed]


def test_a_score_filter_compares_the_traces_mean_of_that_score(store):
    low, rows = trace(logs(), T0, scores={"accuracy": 0.2})
    high, rows2 = trace(logs(), T0 + 1, scores={"accuracy": 0.6})
    rows2.append(span(logs(), high, "scorer", [high], type="score", start=T0 + 2,
                      scores={"accuracy": 1.0}))
    store.write(rows + rows2)

    assert summaries(store)[0]["scores"] == {"accuracy": 0.8}
    assert roots(store, filters=TraceFilter(scores=(("accuracy", "gt", 0.5),))) == [high]
    assert roots(store, filters=TraceFilter(scores=(("accuracy", "lt", 0.5),))) == [low]
    assert roots(store, filters=TraceFilter(scores=(("missing", "gt", 0.0),))) == []


def test_meta_filters_compare_top_level_root_metadata_as_text_and_all_must_hold(store):
    a, rows = trace(logs(), T0, metadata={"model": "m-1", "temperature": 0.5, "stream": True,
                                          "odd key\"": "v"})
    b, rows2 = trace(logs(), T0 + 1, metadata={"model": "m-2", "temperature": 0.5})
    store.write(rows + rows2)

    def meta(*pairs: tuple[str, str]) -> list[str]:
        return roots(store, filters=TraceFilter(metadata=pairs))

    assert meta(("model", "m-1")) == [a]
    assert meta(("temperature", "0.5")) == [b, a]
    assert meta(("temperature", "0.5"), ("model", "m-2")) == [b]
    assert meta(("stream", "true")) == [a]
    assert meta(("odd key\"", "v")) == [a]
    assert meta(("model", "m-3")) == []


def test_text_search_finds_words_in_any_spans_input_or_output(store):
    root, rows = trace(logs(), T0)
    rows.append(span(logs(), root, "retrieve", [root], start=T0 + 1,
                     input={"query": "Where do penguins live?"},
                     output=["Antarctica", "Galápagos"]))
    other, rows2 = trace(logs(), T0 + 1, input="unrelated words")
    store.write(rows + rows2)

    def search(text: str) -> list[str]:
        return roots(store, filters=TraceFilter(text=text))

    assert search("penguins") == [root]
    assert search("galapagos antarctica") == [root]  # every word, accents folded
    assert search("pengu") == []  # whole words
    assert search("unrelated") == [other]
    assert search("penguins unrelated") == []
    assert search("penguins OR unrelated") == []  # FTS5 syntax is words like any other
    assert search('" ( * : ^') == [other, root]  # no word at all: no filter


def test_a_common_word_is_searched_chunk_by_chunk_with_the_same_answer(store, monkeypatch):
    made = []
    for i in range(9):
        root, rows = trace(logs(), T0 + i, input="common" if i % 3 else "common rare")
        store.write(rows)
        made.append(root)
    every = roots(store, filters=TraceFilter(text="common"))
    rare = roots(store, filters=TraceFilter(text="common rare"))
    # Every word is common now: each page is found a chunk of two traces at a time.
    monkeypatch.setattr("workers.store.sqlite.TEXT_SET_BOUND", 0)
    monkeypatch.setattr("workers.store.sqlite.TEXT_CHUNK", 2)

    assert roots(store, filters=TraceFilter(text="common")) == every == made[::-1]
    with_rare = [made[6], made[3], made[0]]
    assert roots(store, filters=TraceFilter(text="common rare")) == rare == with_rare
    with store.reader() as reader:
        page = reader.trace_summaries(project="p", filters=TraceFilter(text="rare"), limit=2)
        assert page is not None and page.next is not None
        rest = reader.trace_summaries(project="p", filters=TraceFilter(text="rare"),
                                      before=page.next)
    assert rest is not None
    assert [t["root_span_id"] for t in page.traces + rest.traces] == with_rare


def test_text_search_sees_an_output_merged_in_later_and_forgets_the_one_it_replaced(store):
    root, rows = trace(logs(), T0)
    store.write(rows)
    store.write([span(logs(), root, f"{root}-c0", output="first draft")])
    store.write([span(logs(), root, f"{root}-c0", output="final answer")])

    assert roots(store, filters=TraceFilter(text="final")) == [root]
    assert roots(store, filters=TraceFilter(text="draft")) == []


# -- skeletons and rows ----------------------------------------------------------------------


def test_a_skeleton_lists_spans_in_start_order_with_every_parent(store):
    root = "diamond"
    c = logs()
    store.write([
        span(c, root, "join", [f"{root}-a", f"{root}-b"], start=T0 + 3),  # two parents
        span(c, root, f"{root}-b", [root], start=T0 + 2, end=T0 + 4, error="E: x"),
        span(c, root, f"{root}-a", [root], start=T0 + 1, end=T0 + 4),
        span(c, root, root, start=T0, end=T0 + 5, input="big " * 1000),
    ])

    with store.reader() as reader:
        skeleton = reader.trace_skeleton(root)
    assert skeleton is not None
    assert skeleton["container"] == {"kind": "project_logs", "project": "p",
                                     "experiment_id": None, "experiment_name": None}
    assert [s["span_id"] for s in skeleton["spans"]] == [root, f"{root}-a", f"{root}-b", "join"]
    join = skeleton["spans"][3]
    assert join == {"row_id": "join", "span_id": "join", "parents": [f"{root}-a", f"{root}-b"],
                    "name": "join", "type": "function", "start": T0 + 3, "end": None,
                    "error": False, "running": True}
    assert skeleton["spans"][2]["error"] is True
    assert "input" not in skeleton["spans"][0]
    with store.reader() as reader:
        assert json.loads(reader.trace_skeleton_json(root) or "") == skeleton


def test_an_unknown_trace_has_no_skeleton_and_an_unknown_span_no_row(store):
    root, rows = trace(logs(), T0)
    store.write(rows)
    with store.reader() as reader:
        assert reader.trace_skeleton("nope") is None
        assert reader.span_row(root, "nope") is None
        assert reader.span_row("nope", root) is None


def test_a_span_row_is_the_whole_merged_row(store):
    root, rows = trace(logs(), T0, input={"q": "hi"})
    store.write(rows)
    store.write([span(logs(), root, root, output="hello", metadata={"k": 1})])

    with store.reader() as reader:
        row = reader.span_row(root, root)
    assert row is not None
    assert (row["input"], row["output"], row["metadata"], row["project_name"]) == (
        {"q": "hi"}, "hello", {"k": 1}, "p")


# -- projects, experiments, compare ----------------------------------------------------------


def test_projects_count_their_log_traces_and_experiments(store):
    store.write(trace(logs("alpha"), T0)[1] + trace(logs("alpha"), T0 + 7)[1])
    store.write(trace(experiment("e1", "baseline", "alpha"), T0 + 20)[1])
    store.write(trace(logs("beta"), T0 + 3)[1])

    with store.reader() as reader:
        projects = reader.projects()
    assert projects == [
        {"name": "alpha", "id": project_id("alpha"), "traces": 2, "experiments": 1,
         "last_start": T0 + 20},
        {"name": "beta", "id": project_id("beta"), "traces": 1, "experiments": 0,
         "last_start": T0 + 3},
    ]


def test_an_experiments_score_means_are_over_its_spans_as_summarize_has_them(store):
    exp = experiment("e1", "baseline")
    _, rows = trace(exp, T0, scores={"accuracy": 1.0})
    root2, rows2 = trace(exp, T0 + 1, scores={"accuracy": 0.0, "style": 0.5})
    rows2.append(span(exp, root2, "scorer", [root2], type="score", start=T0 + 2,
                      scores={"accuracy": 0.5}))
    store.write(rows + rows2 + trace(logs(), T0)[1])

    with store.reader() as reader:
        found = reader.experiments("p")
        assert reader.experiments("nope") is None
    assert found is not None
    [listed] = found
    assert (listed["id"], listed["name"], listed["traces"], listed["spans"]) == (
        "e1", "baseline", 2, 7)
    assert listed["scores"] == {"accuracy": 0.5, "style": 0.5}  # (1 + 0 + 0.5) / 3


def test_compare_pairs_rows_by_input_then_by_name_and_says_what_changed(store):
    a, b = experiment("ea", "before"), experiment("eb", "after")
    rows = []
    # Same input, different names: paired by input. Score fell: regression.
    rows += trace(a, T0, name="x", input="q1", output="o1", scores={"acc": 0.9})[1]
    rows += trace(b, T0, name="y", input="q1", output="o1'", scores={"acc": 0.4})[1]
    # Inputs differ, names match: paired by name. Score rose: improvement.
    rows += trace(a, T0 + 1, name="named", input="q2", scores={"acc": 0.1})[1]
    rows += trace(b, T0 + 1, name="named", input="q2 changed", scores={"acc": 0.3})[1]
    # Same input (as JSON, keys in any order), same score.
    rows += trace(a, T0 + 2, input={"u": 1, "v": 2}, scores={"acc": 0.5})[1]
    rows += trace(b, T0 + 2, input={"v": 2, "u": 1}, scores={"acc": 0.5})[1]
    # Only on one side each.
    rows += trace(a, T0 + 3, name="gone", input="q3")[1]
    rows += trace(b, T0 + 3, name="new", input="q4")[1]
    store.write(rows)

    with store.reader() as reader:
        found = reader.compare_experiments("ea", "eb")
        assert reader.compare_experiments("ea", "nope") is None
    assert found is not None
    assert found["a"] == {"id": "ea", "name": "before", "project": "p"}
    assert [(r["match"], r["status"]) for r in found["rows"]] == [
        ("input", "regression"), ("name", "improvement"), ("input", "same"),
        (None, "only_a"), (None, "only_b")]
    first = found["rows"][0]
    assert (first["a"]["input"], first["b"]["output"]) == ("q1", "o1'")
    assert first["deltas"]["acc"] == pytest.approx(-0.5)
    assert found["scores"]["acc"]["a"] == pytest.approx(0.5)
    assert found["scores"]["acc"]["delta"] == pytest.approx(0.4 - 0.5)


# -- schema ----------------------------------------------------------------------------------


# SQLite only: a SQLite store of version 1 had no summaries (PostgreSQL's version 1 has them).
def test_an_older_store_gets_its_summaries_built_when_a_writer_upgrades_it(tmp_path):
    path = str(tmp_path / "traces.db")
    with SQLiteWriter(path) as writer:
        root, rows = trace(logs(), T0)
        rows.append(span(logs(), root, "found", [root], start=T0 + 1, output="needle"))
        writer.write(rows)
    # Back to what version 1 had: no summaries, no text index, no parents column.
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in ("DROP TABLE traces", "DROP TABLE rows_fts",
                      "ALTER TABLE rows DROP COLUMN parents", "PRAGMA user_version = 1"):
        conn.execute(statement)
    conn.close()
    with open_store(path, readonly=True) as reader, pytest.raises(UpgradeRequired,
                                                                   match="tracer migrate"):
        reader.trace_summaries(project="p")

    with SQLiteWriter(path) as writer:
        assert writer.schema_version() == schema.VERSION

    with open_store(path, readonly=True) as reader:
        page = reader.trace_summaries(project="p", filters=TraceFilter(text="needle"))
        skeleton = reader.trace_skeleton(root)
    assert page is not None and [t["root_span_id"] for t in page.traces] == [root]
    assert page.traces[0]["spans"] == 4
    assert skeleton is not None and skeleton["spans"][1]["parents"] == [root]


def test_summaries_match_the_rows_after_many_merges(store):
    """The summary kept by deltas equals one computed from the rows afresh."""
    c = logs()
    root = "busy"
    batches = [[span(c, root, root, start=T0)]]
    for i in range(30):
        sid = f"s{i % 7}"
        batches.append([span(c, root, sid, [root], start=T0 + i % 7,
                             error="E: x" if i % 5 == 0 else None,
                             metrics={"tokens": i}, scores={"q": i / 30})])
    for batch in batches:
        store.write(batch)

    with store.reader() as reader:
        page = reader.trace_summaries(project="p")
        assert page is not None
        [listed] = page.traces
        rows = list(reader.rows(root_span_id=root))
    assert listed["spans"] == len(rows) == 8
    assert listed["errors"] == sum(1 for r in rows if r.get("error"))
    assert listed["tokens"] == sum(r.get("metrics", {}).get("tokens", 0) for r in rows)
    qs = [r["scores"]["q"] for r in rows if r.get("scores")]
    assert listed["scores"]["q"] == pytest.approx(sum(qs) / len(qs))
    assert json.dumps(listed)  # JSON as it is


# -- what the text index covers (TRACER_SEARCH_INDEX) ------------------------------------------
# SQLite only: the setting is SQLite's (a PostgreSQL store indexes every span).


def search_store(path: str, mode: str) -> SQLiteWriter:
    """A writer of the store at ``path`` whose text index covers what ``mode`` says."""
    return SQLiteWriter(path, search_index=mode)


def found_by(path: str, text: str) -> list[str]:
    with open_store(path, readonly=True) as reader:
        page = reader.trace_summaries(project="p", filters=TraceFilter(text=text))
    assert page is not None
    return [t["root_span_id"] for t in page.traces]


def a_trace_with_words(root_words: str, llm_words: str, child_words: str) -> tuple[str,
                                                                                 list[Pending]]:
    """A trace whose root, llm span and function span each hold their own words."""
    root, rows = trace(logs(), T0, children=0, input=root_words)
    rows.append(span(logs(), root, f"{root}-llm", [root], type="llm", start=T0 + 1,
                     output=llm_words))
    rows.append(span(logs(), root, f"{root}-fn", [root], start=T0 + 2, input=child_words))
    return root, rows


def test_search_mode_roots_indexes_root_and_llm_spans_only(tmp_path):
    path = str(tmp_path / "traces.db")
    with search_store(path, "roots") as writer:
        root, rows = a_trace_with_words("question", "answer", "helper")
        writer.write(rows)

    assert found_by(path, "question") == found_by(path, "answer") == [root]
    assert found_by(path, "helper") == []


def test_search_mode_roots_indexes_the_parentless_root_of_a_trace_begun_elsewhere(tmp_path):
    path = str(tmp_path / "traces.db")
    root, first, rows = foreign_trace(logs(), T0)
    rows[0].row["input"] = "question"
    rows[1].row["input"] = "helper"
    with search_store(path, "roots") as writer:
        writer.write(rows)

    assert found_by(path, "question") == [root]
    assert found_by(path, "helper") == []


def test_search_mode_off_makes_text_search_an_error_saying_how_to_turn_it_on(tmp_path):
    path = str(tmp_path / "traces.db")
    with search_store(path, "off") as writer:
        _, rows = a_trace_with_words("question", "answer", "helper")
        writer.write(rows)

    with open_store(path, readonly=True) as reader, pytest.raises(SearchOff,
                                                                   match="TRACER_SEARCH_INDEX=all"):
        reader.trace_summaries(project="p", filters=TraceFilter(text="question"))


def test_a_writer_set_to_another_search_mode_rebuilds_the_index_from_the_rows(tmp_path):
    path = str(tmp_path / "traces.db")
    with search_store(path, "off") as writer:
        root, rows = a_trace_with_words("question", "answer", "helper")
        writer.write(rows)
    with search_store(path, "roots") as writer:
        writer.write([])  # opens the store

    assert found_by(path, "answer") == [root]
    assert found_by(path, "helper") == []
    with search_store(path, "all") as writer:
        writer.write([])

    assert found_by(path, "helper") == [root]


def test_a_writer_follows_the_stores_search_mode_set_by_another_writer(tmp_path):
    path = str(tmp_path / "traces.db")
    roots_writer = search_store(path, "roots")
    roots_writer.write([])
    with search_store(path, "all") as writer:  # re-indexes every span, and says so in the store
        writer.write([])
    root, rows = a_trace_with_words("question", "answer", "helper")
    roots_writer.write(rows)  # the store's mode, not the one this writer was opened with
    roots_writer.close()

    assert found_by(path, "helper") == [root]


def test_search_mode_roots_follows_a_span_that_becomes_llm_in_a_later_merge(tmp_path):
    path = str(tmp_path / "traces.db")
    with search_store(path, "roots") as writer:
        root, rows = trace(logs(), T0, children=1)
        writer.write(rows)
        # (each partial row of a span carries its parents, as the aggregator's do)
        writer.write([span(logs(), root, f"{root}-c0", [root], output="generated")])
        assert found_by(path, "generated") == []
        writer.write([span(logs(), root, f"{root}-c0", [root], type="llm")])

    assert found_by(path, "generated") == [root]


def test_a_batch_merging_other_fields_before_the_output_replaces_the_indexed_output(store):
    root, rows = trace(logs(), T0)
    store.write(rows)
    store.write([span(logs(), root, f"{root}-c0", output="first draft")])
    store.write([span(logs(), root, f"{root}-c0", metrics={"tokens": 5}),
                 span(logs(), root, f"{root}-c0", output="final answer")])

    assert roots(store, filters=TraceFilter(text="final")) == [root]
    assert roots(store, filters=TraceFilter(text="draft")) == []


def test_rewriting_the_same_text_keeps_one_index_entry(store):
    root, rows = trace(logs(), T0)
    store.write(rows)
    again = span(logs(), root, f"{root}-c0", output="same words")
    store.write([again])
    store.write([span(logs(), root, f"{root}-c0", output="same words")])
    store.write([span(logs(), root, f"{root}-c0", output="other")])

    assert roots(store, filters=TraceFilter(text="same")) == []
    assert roots(store, filters=TraceFilter(text="other")) == [root]


# -- replacing writes (the reference SDK's writes without _is_merge, through tracer serve) ----


def replacing(update: Pending) -> Write:
    """``update`` as a write that replaces the stored row whole."""
    return Write(update.container, update.row, replace=True)


def test_a_replacing_write_takes_the_stored_rows_place_whole(store):
    root, rows = trace(logs(), T0, input={"q": "hi"}, metadata={"kept": 1})
    store.write(rows)

    store.write([replacing(span(logs(), root, root, name="again", start=T0, end=T0 + 1,
                                output="new", created="2030-01-01T00:00:00+00:00"))])

    with store.reader() as reader:
        row = reader.span_row(root, root)
    assert row is not None
    assert "input" not in row and "metadata" not in row
    assert (row["output"], row["span_attributes"]["name"], row["created"]) == (
        "new", "again", "2030-01-01T00:00:00+00:00")


def test_merges_after_a_replacing_write_in_one_batch_merge_into_the_replacement(store):
    root, rows = trace(logs(), T0, metadata={"old": 1})
    store.write(rows)

    store.write([span(logs(), root, root, metadata={"before": 1}),
                 replacing(span(logs(), root, root, name="r", start=T0, end=T0 + 1,
                                metadata={"new": 1})),
                 span(logs(), root, root, metadata={"after": 1})])

    with store.reader() as reader:
        row = reader.span_row(root, root)
    assert row is not None and row["metadata"] == {"new": 1, "after": 1}


def test_a_replacing_write_moves_the_traces_summary_and_its_text(store):
    root, rows = trace(logs(), T0, children=1)
    child = f"{root}-c0"
    store.write(rows)
    store.write([span(logs(), root, child, error="boom", output="forgotten words",
                      metrics={"tokens": 7})])
    [before] = summaries(store)
    assert (before["errors"], before["tokens"]) == (1, 7)

    store.write([replacing(span(logs(), root, child, [root], start=T0 + 1, end=T0 + 2,
                                output="kept words"))])

    [after] = summaries(store)
    assert (after["spans"], after["errors"], after["tokens"]) == (2, 0, None)
    assert roots(store, filters=TraceFilter(text="kept")) == [root]
    assert roots(store, filters=TraceFilter(text="forgotten")) == []


def test_a_replacing_write_of_a_new_row_stores_it_as_it_is(store):
    root = "fresh"
    store.write([replacing(span(logs(), root, root, start=T0, end=T0 + 1, output=1))])

    [listed] = summaries(store)
    assert (listed["row_id"], listed["spans"], listed["running"]) == (root, 1, False)
