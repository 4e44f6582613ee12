"""Traces that follow tasks through a real Celery fleet: a real Redis broker, real ``celery
worker`` processes with the prefork pool, the test process as the publisher.

Two topologies. "Separate aggregators": the publisher (this process) logs to its own store and
the worker starts its own aggregator for its store, as on two hosts; the trace spans both stores
and the worker's task spans point at the publisher's spans by id. "Shared": publisher and worker
both attach to one standalone aggregator (``tracer aggregator --bind tcp://...``) and the whole
trace is in one store.
"""

from __future__ import annotations

import os
from collections import Counter
from types import SimpleNamespace

import pytest
from celery import chain, chord, group

import tracer

from . import celery_tasks
from .conftest import (
    StandaloneAggregator,
    Store,
    clean_env,
    free_port,
    run_python,
    wait_for_runs_to_end,
)
from .helpers import poll, wait_until

ADD, TOTAL, FAIL, FLAKY, WORK, SLOW, WAIT_FOR = (f"{celery_tasks.NAME}.{name}" for name in
                                       ("add", "total", "fail", "flaky", "work", "slow",
                                        "wait_for"))
WORKER_PROJECT = "celery-worker"  # where a worker's own traces (tasks published untraced) go


@pytest.fixture(scope="module")
def fleet(celery_workers, tmp_path_factory):
    """A worker with its own aggregator and store (separate aggregators)."""
    store = str(tmp_path_factory.mktemp("celery-fleet") / "worker.db")
    worker = celery_workers(TRACER_TEST_PROJECT=WORKER_PROJECT, TRACER_TEST_STORE=store)
    return SimpleNamespace(worker=worker, store=store,
                           app=celery_tasks.make_app(worker.broker))


@pytest.fixture(scope="module")
def shared_fleet(celery_workers, tmp_path_factory):
    """A standalone aggregator, and a worker attached to it through ``TRACER_ENDPOINT`` alone:
    no logger in the worker's main process, so its pool children make their recorders after
    the fork (the other fleets' children inherit one)."""
    directory = tmp_path_factory.mktemp("celery-shared")
    with StandaloneAggregator(str(directory / "shared.db"),
                              str(directory / "aggregator.log")) as aggregator:
        worker = celery_workers(TRACER_ENDPOINT=aggregator.endpoint)
        yield SimpleNamespace(worker=worker, store=aggregator.store, endpoint=aggregator.endpoint,
                              app=celery_tasks.make_app(worker.broker))
        worker.stop()


def test_importing_tracer_never_imports_celery():
    run_python("""
        import sys
        import tracer
        import tracer.integrations
        assert "celery" not in sys.modules and "kombu" not in sys.modules, sorted(sys.modules)
    """, env=clean_env())


def name(row: dict) -> str:
    return row["span_attributes"]["name"]


def celery_meta(row: dict) -> dict:
    return (row.get("metadata") or {}).get("celery") or {}


def trace_in(store: str, root_span_id: str, expected: int, timeout: float = 60) -> list[dict]:
    """The rows of one trace in ``store`` once ``expected`` of them are there and ended
    (workers commit on their own schedule); what is there at the timeout otherwise."""

    def stored() -> list[dict]:
        if not os.path.exists(store):
            return []
        with Store(store) as reader:
            return list(reader.rows(root_span_id=root_span_id))

    def complete() -> list[dict]:
        got = stored()
        return got if len(got) >= expected and all(ended(row) for row in got) else []

    return poll(complete, timeout, interval=0.1) or stored()


def ended(row: dict) -> bool:
    return (row.get("metrics") or {}).get("end") is not None


def tasks_named(rows: list[dict], task: str) -> list[dict]:
    return [r for r in rows if name(r) == task and r["span_attributes"].get("type") == "task"]


def assert_producers_pair_with_tasks(rows: list[dict]) -> None:
    """Every producer span (``publish <task>``) has the task span of the message it published
    beside it: same task id, same parent (the span current at publish)."""
    tasks = {celery_meta(r)["task_id"]: r for r in rows if r["span_attributes"].get("type")
             == "task" and "task_id" in celery_meta(r) and celery_meta(r).get("retries", 0) == 0}
    for row in rows:
        if row["span_attributes"].get("type") == "function" and name(row).startswith("publish "):
            meta = celery_meta(row)
            task = tasks[meta["task_id"]]
            assert name(row) == f"publish {name(task)}"
            assert row["span_parents"] == task["span_parents"], name(row)
            assert ended(row)


def test_a_chain_is_one_trace_across_the_publishers_and_the_workers_stores(
        fleet, logger, rows, project):
    add = fleet.app.tasks[ADD]
    with tracer.start_span("a chain") as root:
        result = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    assert result.get(timeout=60) == 10
    task_ids = [result.parent.parent.id, result.parent.id, result.id]

    # The publisher's store: the root and the producer span of the chain's first message.
    published = rows()
    assert Counter(name(r) for r in published) == {"a chain": 1, f"publish {ADD}": 1}
    (producer,) = [r for r in published if name(r) == f"publish {ADD}"]
    assert producer["span_parents"] == [root.span_id]
    assert celery_meta(producer)["task_id"] == task_ids[0]

    # The worker's store: three task spans, each link under the one that published it, each
    # with its @traced function under it, and the producer spans of links 2 and 3.
    got = trace_in(fleet.store, root.root_span_id, expected=3 + 3 + 2)
    assert Counter(name(r) for r in got) == {ADD: 3, "compute": 3, f"publish {ADD}": 2}
    assert {r["root_span_id"] for r in got} == {root.span_id}
    assert {r["project_name"] for r in got} == {project}  # the publisher's project
    links = {celery_meta(r)["task_id"]: r for r in tasks_named(got, ADD)}
    first, second, third = (links[i] for i in task_ids)
    assert first["span_parents"] == [root.span_id]  # a span stored in the other store
    assert second["span_parents"] == [first["span_id"]]
    assert third["span_parents"] == [second["span_id"]]
    # A link's input is the previous result followed by its own arguments.
    assert [r["input"] for r in (first, second, third)] == [
        {"args": [1, 2], "kwargs": {}}, {"args": [3, 3], "kwargs": {}},
        {"args": [6, 4], "kwargs": {}}]
    assert [r["output"] for r in (first, second, third)] == [3, 6, 10]
    for link in (first, second, third):
        meta = celery_meta(link)
        assert (meta["task_name"], meta["retries"], meta["state"]) == (ADD, 0, "SUCCESS")
        assert not link.get("error")
    by_span = {r["span_id"]: r for r in got}
    for row in got:
        if name(row) == "compute":
            (parent,) = row["span_parents"]
            assert name(by_span[parent]) == ADD
            assert row["output"] == by_span[parent]["output"]
    assert_producers_pair_with_tasks(got + published)


def test_a_group_and_a_chord_make_one_trace_in_a_shared_aggregator(shared_fleet, project):
    logger = tracer.init_logger(project, endpoint=shared_fleet.endpoint, set_current=False)
    add, total = shared_fleet.app.tasks[ADD], shared_fleet.app.tasks[TOTAL]
    try:
        with logger.start_span("fan out") as root:
            members = group(add.s(i, i) for i in range(4)).apply_async()
            summed = chord([add.s(i, 1) for i in range(3)])(total.s())
        assert members.get(timeout=60) == [0, 2, 4, 6]
        assert summed.get(timeout=60) == 6
    finally:
        # Committed, and closed: later tests' tracer.flush() must not wait on an aggregator
        # that this module stops.
        logger.recorder.close()

    # One store holds everything: the root, 4 + 3 + 1 task spans with a compute span under each
    # add, and a producer span per message (the chord's body is published by a worker).
    got = trace_in(shared_fleet.store, root.root_span_id, expected=1 + 8 + 7 + 8)
    assert Counter(name(r) for r in got) == {
        "fan out": 1, ADD: 7, TOTAL: 1, "compute": 7, f"publish {ADD}": 7,
        f"publish {TOTAL}": 1}
    assert {r["project_name"] for r in got} == {project}
    adds = {celery_meta(r)["task_id"]: r for r in tasks_named(got, ADD)}
    group_ids = [r.id for r in members.results]
    header_ids = [r.id for r in summed.parent.results]
    for task_id in group_ids + header_ids:
        assert adds[task_id]["span_parents"] == [root.span_id]
    assert sorted(adds[i]["output"] for i in group_ids) == [0, 2, 4, 6]
    (body,) = tasks_named(got, TOTAL)
    assert celery_meta(body)["task_id"] == summed.id
    # The chord's body is published by whichever header task finished last, inside its span.
    assert body["span_parents"][0] in {adds[i]["span_id"] for i in header_ids}
    assert sorted(body["input"]["args"][0]) == [1, 2, 3]
    assert body["output"] == 6
    assert_producers_pair_with_tasks(got)


def test_a_failing_task_shows_its_error_and_retries_are_attempts_side_by_side(
        fleet, logger, rows):
    fail, flaky = fleet.app.tasks[FAIL], fleet.app.tasks[FLAKY]
    with tracer.start_span("failing work") as root:
        failed = fail.delay("the disk is full")
        retried = flaky.delay(2)  # fails twice, then succeeds
    failed.get(timeout=60, propagate=False)
    assert failed.state == "FAILURE"
    assert retried.get(timeout=60) == 2
    assert len(rows()) == 3  # root and two producer spans

    got = trace_in(fleet.store, root.root_span_id, expected=1 + 3 + 2)
    assert Counter(name(r) for r in got) == {FAIL: 1, FLAKY: 3, f"publish {FLAKY}": 2}
    (failure,) = tasks_named(got, FAIL)
    assert failure["span_parents"] == [root.span_id]
    assert failure["error"].startswith("ValueError: the disk is full\n\nTraceback")
    assert "raise ValueError(message)" in failure["error"]
    assert celery_meta(failure)["state"] == "FAILURE"
    assert ended(failure)

    attempts = sorted(tasks_named(got, FLAKY), key=lambda r: celery_meta(r)["retries"])
    assert [celery_meta(r)["retries"] for r in attempts] == [0, 1, 2]
    assert [celery_meta(r)["state"] for r in attempts] == ["RETRY", "RETRY", "SUCCESS"]
    assert {celery_meta(r)["task_id"] for r in attempts} == {retried.id}
    for attempt in attempts:  # every attempt under the publisher's span, not under the last
        assert attempt["span_parents"] == [root.span_id]
    assert "attempt 0 failed" in celery_meta(attempts[0])["retry_reason"]
    assert "attempt 1 failed" in celery_meta(attempts[1])["retry_reason"]
    assert attempts[2]["output"] == 2
    # Each retry is published from inside the attempt that asked for it.
    republished = sorted((r for r in got if name(r) == f"publish {FLAKY}"),
                         key=lambda r: celery_meta(r)["retries"])
    assert [r["span_parents"] for r in republished] == [[attempts[0]["span_id"]],
                                                        [attempts[1]["span_id"]]]
    assert [celery_meta(r)["retries"] for r in republished] == [1, 2]


def test_a_publish_that_fails_still_ends_its_producer_span(logger, rows):
    # A broker nobody listens on: the publish raises, after_task_publish never fires.
    app = celery_tasks.make_app(f"redis://127.0.0.1:{free_port()}/0", results=False)
    app.conf.broker_transport_options = {"max_retries": 0}  # fail now, not after retries
    with tracer.start_span("publish to nowhere") as root, pytest.raises(Exception) as raised:
        app.tasks[ADD].apply_async((1, 2), retry=False)
    got = {name(r): r for r in rows()}
    assert set(got) == {"publish to nowhere", f"publish {ADD}"}
    producer = got[f"publish {ADD}"]
    assert producer["span_parents"] == [root.span_id]
    assert ended(producer)
    assert producer["error"].startswith(type(raised.value).__module__)
    assert type(raised.value).__qualname__ in producer["error"].partition("\n")[0]


def test_a_task_published_outside_any_span_starts_its_own_root(fleet, logger, rows):
    assert not tracer.current_span()
    result = fleet.app.tasks[ADD].delay(20, 22)
    assert result.get(timeout=60) == 42
    assert rows() == []  # no producer span: nothing was being traced here


    def stored_task() -> dict | None:
        if not os.path.exists(fleet.store):
            return None
        with Store(fleet.store) as reader:
            return next((r for r in reader.rows(project=WORKER_PROJECT)
                         if celery_meta(r).get("task_id") == result.id and ended(r)), None)

    task = wait_until(stored_task, 60, "the task's span was not stored", interval=0.1)
    assert not task["span_parents"]
    assert task["root_span_id"] == task["span_id"]
    got = trace_in(fleet.store, task["root_span_id"], expected=2)
    assert Counter(name(r) for r in got) == {ADD: 1, "compute": 1}


def test_a_long_task_is_visible_in_progress_while_it_runs(fleet, tmp_path):
    release = tmp_path / "release"
    result = fleet.app.tasks[WAIT_FOR].delay(str(release), 60)

    def stored_task(finished: bool) -> dict | None:
        """The task's row, once it has its name (the metadata logged as the task starts may
        arrive first; the span's announcement follows within the flusher's interval)."""
        if not os.path.exists(fleet.store):
            return None
        with Store(fleet.store) as reader:
            return next((r for r in reader.rows(project=WORKER_PROJECT)
                         if celery_meta(r).get("task_id") == result.id
                         and "span_attributes" in r and ended(r) == finished), None)

    running = wait_until(lambda: stored_task(False), 60, "the running task has no row",
                         interval=0.1)
    assert running["span_attributes"] == {"name": WAIT_FOR, "type": "task"}
    assert running["input"] == {"args": [str(release), 60], "kwargs": {}}
    release.touch()
    assert result.get(timeout=60) is True
    done = wait_until(lambda: stored_task(True), 60, "the task never ended", interval=0.1)
    assert done["output"] is True


@pytest.mark.slow
def test_max_tasks_per_child_1_stores_all_50_task_spans(celery_workers, tmp_path, logger, rows):
    store = str(tmp_path / "recycled.db")
    worker = celery_workers(args=("--max-tasks-per-child", "1"),
                            TRACER_TEST_PROJECT=WORKER_PROJECT, TRACER_TEST_STORE=store)
    work = celery_tasks.make_app(worker.broker).tasks[WORK]
    with tracer.start_span("fifty tasks") as root:
        results = group(work.s(i) for i in range(50)).apply_async()
    pids = results.get(timeout=300)
    # Each child ran one task and was replaced (a pid may come back once the kernel reuses it).
    assert len(set(pids)) >= 40

    got = trace_in(store, root.root_span_id, expected=100, timeout=120)
    tasks = tasks_named(got, WORK)
    assert len(tasks) == 50, f"{len(tasks)} of 50 task spans stored"
    assert sorted(r["input"]["args"][0] for r in tasks) == list(range(50))
    assert all(r["span_parents"] == [root.span_id] for r in tasks)
    assert sum(1 for r in got if name(r) == "check") == 50
    assert len(rows()) == 51  # the root and 50 producer spans
    assert worker.stop() == 0


@pytest.mark.slow
def test_a_warm_shutdown_loses_no_task_span(celery_workers, tmp_path, logger):
    store = str(tmp_path / "shutdown.db")
    worker = celery_workers(TRACER_TEST_PROJECT=WORKER_PROJECT, TRACER_TEST_STORE=store)
    slow = celery_tasks.make_app(worker.broker).tasks[SLOW]
    with tracer.start_span("interrupted") as root:
        results = [slow.delay(i, 1.0) for i in range(8)]
    wait_until(lambda: sum(r.state == "STARTED" for r in results) >= 2, 60,
               "the worker never started two tasks")
    assert worker.stop() == 0  # running tasks finish; the rest stay queued
    wait_for_runs_to_end(store)

    finished = {r.id for r in results if r.state == "SUCCESS"}
    assert len(finished) >= 2
    with Store(store) as reader:
        got = list(reader.rows(root_span_id=root.root_span_id))
    tasks = tasks_named(got, SLOW)
    assert {celery_meta(r)["task_id"] for r in tasks} == finished
    assert all(ended(r) and celery_meta(r)["state"] == "SUCCESS" for r in tasks)
    assert sum(1 for r in got if name(r) == "check") == len(finished)
