"""Every span from every process, with the trace tree intact.

One matrix over start methods (fork, spawn, forkserver) and the ways work leaves a process: pools,
executors, plain processes, bare ``os.fork()``. For each case: exactly as many rows as spans were
created, every child under the right parent, one ``root_span_id``, unique ids, and no aggregator
but the test process's one.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import psutil
import pytest

import tracer

from . import boundary_tasks as tasks
from .conftest import Store
from .helpers import poll

N = 12  # tasks per case; each makes two spans (work -> inner)


def aggregator_pids(store_path: str) -> set[int]:
    """The aggregators of this test session: writing to its store, or started by a process
    that inherited its endpoint. Others on the machine (a parallel test run) are none of ours."""
    ours = os.environ.get("TRACER_ENDPOINT")
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "workers.aggregator" not in cmdline:
            continue
        try:
            inherited = ours is not None and proc.environ().get("TRACER_ENDPOINT") == ours
        except psutil.Error:
            inherited = False
        if store_path in cmdline or inherited:
            found.add(proc.pid)
    return found


def run_pool_map(ctx):
    with tracer.TracedPool(2, context=ctx) as pool:  # exits through terminate()
        assert pool.map(tasks.work, range(N)) == [2 * i + 1 for i in range(N)]


def run_imap(ctx):
    with tracer.TracedPool(2, context=ctx) as pool:
        assert list(pool.imap(tasks.work, range(N))) == [2 * i + 1 for i in range(N)]


def run_imap_unordered(ctx):
    with tracer.TracedPool(2, context=ctx) as pool:
        assert sorted(pool.imap_unordered(tasks.work, range(N))) == [2 * i + 1 for i in range(N)]


def run_apply_async(ctx):
    with tracer.TracedPool(2, context=ctx) as pool:
        results = [pool.apply_async(tasks.work, (i,)) for i in range(N)]
        assert [r.get(60) for r in results] == [2 * i + 1 for i in range(N)]


def run_starmap(ctx):
    with tracer.TracedPool(2, context=ctx) as pool:
        assert pool.starmap(tasks.work_pair, [(i, 0) for i in range(N)]) == [
            2 * i + 1 for i in range(N)]


def run_maxtasksperchild(ctx):
    pool = tracer.TracedPool(2, maxtasksperchild=1, context=ctx)
    try:
        assert pool.map(tasks.work, range(N), chunksize=1) == [2 * i + 1 for i in range(N)]
    finally:
        pool.close()
        pool.join()


def run_process_pool_executor(ctx):
    with tracer.TracedProcessPoolExecutor(2, mp_context=ctx) as pool:
        assert list(pool.map(tasks.work, range(N))) == [2 * i + 1 for i in range(N)]


def run_bare_process(ctx):
    proc = ctx.Process(target=tasks.work_under, args=(tracer.current_span().export(), N))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


def run_os_fork(ctx):
    pid = os.fork()
    if pid == 0:  # the child inherits the current span; it leaves through os._exit
        for i in range(N):
            tasks.work(i)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


CASES = {
    "pool_map": run_pool_map,
    "imap": run_imap,
    "imap_unordered": run_imap_unordered,
    "apply_async": run_apply_async,
    "starmap": run_starmap,
    "maxtasksperchild_1": run_maxtasksperchild,
    "process_pool_executor": run_process_pool_executor,
    "bare_process": run_bare_process,
    "os_fork_os_exit": run_os_fork,
}
MATRIX = [(method, case) for method in ("fork", "spawn", "forkserver") for case in CASES
          if case != "os_fork_os_exit" or method == "fork"]


@pytest.mark.parametrize(("method", "case"), MATRIX)
def test_every_span_from_every_process_lands_in_one_intact_tree(
        logger, rows, store_path, method, case):
    ctx = multiprocessing.get_context(method)
    aggregators_before = aggregator_pids(store_path)
    logger.flush()  # a real handshake: the aggregator is up and its store exists
    with Store(store_path) as store:
        runs_before = len(store.runs())

    with tracer.start_span("case") as root:
        CASES[case](ctx)

    got = rows()
    assert_tree(got, root, continued=(case == "bare_process"))
    assert aggregator_pids(store_path) <= aggregators_before, "a second aggregator was started"
    with Store(store_path) as store:
        assert len(store.runs()) == runs_before


def assert_tree(got: list[dict], root: tracer.Span | tracer.NoopSpan,
                continued: bool = False) -> None:
    expected = 1 + 2 * N + (1 if continued else 0)
    assert len(got) == expected, f"{len(got)} rows for {expected} spans"
    assert len({r["id"] for r in got}) == len(got), "duplicate row ids"
    assert {r["root_span_id"] for r in got} == {root.span_id}
    by_span = {r["span_id"]: r for r in got}
    parent_of_work = root.span_id
    if continued:
        (cont,) = [r for r in got if r["span_attributes"]["name"] == "continued"]
        assert cont["span_parents"] == [root.span_id]
        parent_of_work = cont["span_id"]
    works = [r for r in got if r["span_attributes"]["name"] == "work"]
    inners = [r for r in got if r["span_attributes"]["name"] == "inner"]
    assert sorted(w["input"]["i"] for w in works) == list(range(N))
    for w in works:
        assert w["span_parents"] == [parent_of_work]
    for i in inners:
        (parent,) = i["span_parents"]
        assert by_span[parent]["span_attributes"]["name"] == "work"
        assert by_span[parent]["input"]["i"] == i["input"]["i"]


def test_traced_thread_pool_executor_keeps_every_task_under_the_submitting_span(logger, rows):
    with tracer.start_span("case") as root, tracer.TracedThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(tasks.work, range(N))) == [2 * i + 1 for i in range(N)]
    assert_tree(rows(), root)


def test_nested_thread_pools_keep_the_tree(logger, rows):
    @tracer.traced
    def fan_out(k):
        with tracer.TracedThreadPoolExecutor(2) as inner_pool:
            return sum(inner_pool.map(tasks.work, range(k * 3, k * 3 + 3)))

    with tracer.start_span("case") as root, tracer.TracedThreadPoolExecutor(2) as pool:
        list(pool.map(fan_out, range(4)))
    got = rows()
    assert len(got) == 1 + 4 + 2 * 12
    by_span = {r["span_id"]: r for r in got}
    for row in got:
        name = row["span_attributes"]["name"]
        if name == "fan_out":
            assert row["span_parents"] == [root.span_id]
        elif name == "work":
            (parent,) = row["span_parents"]
            fan = by_span[parent]
            assert fan["span_attributes"]["name"] == "fan_out"
            assert row["input"]["i"] // 3 == fan["input"]["k"]


def test_a_pool_initializer_calling_init_logger_attaches_to_the_running_aggregator(
        logger, rows, project, store_path):
    ctx = multiprocessing.get_context("spawn")
    before = aggregator_pids(store_path)
    with tracer.start_span("case") as root, \
            tracer.TracedPool(2, initializer=tracer.init_logger, initargs=(project,),
                              context=ctx) as pool:
        pool.map(tasks.work, range(N))
    assert_tree(rows(), root)
    assert aggregator_pids(store_path) <= before


def test_a_plain_fork_pool_ended_by_terminate_delivers_every_span_into_the_trace(logger, rows):
    # multiprocessing.Pool, not TracedPool: the workers are killed with SIGTERM right after the
    # last result, before their flusher's next turn.
    with tracer.start_span("case") as root, \
            multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(tasks.work, range(N)) == [2 * i + 1 for i in range(N)]

    assert_tree(rows(), root)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_plain_pool_of_fresh_interpreters_ended_by_terminate_delivers_every_span(
        logger, rows, store_path, method):
    started = time.time()
    with tracer.start_span("case"), multiprocessing.get_context(method).Pool(2) as pool:
        assert pool.map(tasks.work, range(N)) == [2 * i + 1 for i in range(N)]

    rows()  # flushed
    # Delivered, though not in the trace: nothing carries the span into a fresh interpreter
    # (TracedPool does), and a forkserver's workers log to the project that was current when
    # the forkserver started (an earlier test's): so, every project's rows since we began.
    expected = sorted(["case"] + ["work", "inner"] * N)

    def names() -> list[str]:
        with Store(store_path) as store:
            return sorted(row["span_attributes"]["name"] for row in store.rows()
                          if row["metrics"]["start"] >= started)

    # A terminated worker waits at most TERMINATE_TIMEOUT for its records to be committed:
    # on a loaded machine they may be received, and committed, after it is gone.
    poll(lambda: names() == expected, 30)
    assert names() == expected


@pytest.mark.parametrize(("setting", "default_action_kept"), [("1", False), ("0", True)])
def test_deliver_on_terminate_setting_decides_the_workers_sigterm_handler(
        logger, monkeypatch, setting, default_action_kept):
    monkeypatch.setenv("TRACER_DELIVER_ON_TERMINATE", setting)  # the fork children inherit it
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(tasks.sigterm_is_default_after_a_span, [0]) == [default_action_kept]


def blocked_signals(thread) -> set[int]:
    """The signals ``thread`` blocks, from its kernel status (Linux)."""
    with open(f"/proc/self/task/{thread.native_id}/status") as status:
        mask = int(next(line for line in status if line.startswith("SigBlk:")).split()[1], 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


def running_thread(name: str):
    return next(t for t in threading.enumerate() if t.name == name)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")
def test_the_flusher_leaves_termination_signals_to_the_main_thread(logger):
    # Otherwise the kernel may hand a pool worker's SIGTERM to the flusher while the main thread
    # waits on the task queue's lock, which Pool.terminate() never releases: the handler would
    # never run and the worker would never exit.
    with tracer.start_span("wakes the flusher"):
        pass

    blocked = blocked_signals(running_thread("tracer-flusher"))

    assert {signal.SIGTERM, signal.SIGINT} <= blocked
    assert signal.SIGTERM not in blocked_signals(threading.main_thread())


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc (Linux)")
def test_the_attachment_writer_leaves_termination_signals_to_the_main_thread(logger):
    with tracer.start_span("starts the writer") as span:
        span.log(input=tracer.Attachment(data=b"x" * 100, filename="x.bin"))

    blocked = blocked_signals(running_thread("tracer-attachments"))

    assert {signal.SIGTERM, signal.SIGINT} <= blocked


def test_a_worker_whose_sigterm_lands_on_another_thread_still_delivers_and_dies(logger, rows):
    # The main thread sits in a semaphore wait that only a signal it takes itself would end,
    # as a pool worker after Pool.terminate() took the task queue's lock.
    ctx = multiprocessing.get_context("fork")
    lock = ctx.Lock()
    lock.acquire()
    with tracer.start_span("case"):
        child = ctx.Process(target=tasks.waits_on_a_lock_while_another_thread_takes_sigterm,
                            args=(lock,))
        child.start()
        child.join(20)
    if child.exitcode is None:
        child.kill()
        child.join()

    assert child.exitcode == -signal.SIGTERM
    assert sorted(row["span_attributes"]["name"] for row in rows()) == ["case", "inner", "work"]
