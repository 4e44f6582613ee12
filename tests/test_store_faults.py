"""Faults under the aggregator: a log that cannot be written, a full disk, a store removed or
replaced while in use, a thread that dies. The aggregator goes on, every row is committed or
counted and set aside, and a flush tells the cause.

The store is a real SQLite file (on a real 2 MB tmpfs for the full disk); the aggregator is the
real one an application starts, but for the thread that dies: an uploader of this process, with
a real queue and store, ended by an exception raised in it. SQLite only: these are faults of a
store file (a PostgreSQL database that goes away is tests/test_postgres_sink.py's).
"""

from __future__ import annotations

import ctypes
import json
import os
import sqlite3
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from tracer import config
from workers import payloads
from workers.queue import RowQueue
from workers.rows import Container
from workers.supervision import revive
from workers.uploader import Uploader

from . import programs
from .conftest import SQLiteSink, Store, clean_env, run_function
from .helpers import wait_until


def printed_counters(stdout: str) -> dict:
    """The counters a program of ``programs`` printed last."""
    return json.loads(stdout.strip().splitlines()[-1])


def stored_names(store_path: str, project: str = "faults") -> set[str]:
    with Store(store_path) as store:
        return {row["span_attributes"]["name"] for row in store.rows(project=project)}


def spans(n: int, prefix: str = "span") -> set[str]:
    return {f"{prefix} {i}" for i in range(n)}


def set_aside_names(directory) -> list[str]:
    """The span names of the rows in the payload files under ``directory``."""
    if not os.path.isdir(directory):
        return []
    return [p.row["span_attributes"]["name"] for name in payloads.files(str(directory))
            for p in payloads.read(name)]


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[str]:
    """A directory on a file system of its own with 2 MB of room: a real tmpfs, mounted for
    the test and unmounted after it."""
    path = tmp_path / "tiny"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a tmpfs we may mount (as root): {mounted.stderr.strip()}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


# -- the aggregator's log ----------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_an_aggregator_whose_log_cannot_be_written_commits_everything_and_counts_the_lost_lines(
        tmp_path):
    (tmp_path / ".tracer").mkdir()
    os.symlink("/dev/full", tmp_path / ".tracer" / "aggregator.log")  # every write: ENOSPC

    proc = run_function(programs.logs_spans_and_prints_the_counters, 20,
                        env=clean_env(TRACER_DEBUG="1"), cwd=str(tmp_path))

    assert "flushed" in proc.stdout, proc.stdout + proc.stderr
    assert stored_names(str(tmp_path / ".tracer" / "traces.db")) == spans(20)
    counters = printed_counters(proc.stdout)
    assert counters["log_lines_dropped"] >= 1  # "listening on ...", at least
    assert not any(name.startswith("thread_restarts") for name in counters)


def test_an_aggregator_log_that_cannot_be_opened_leaves_the_messages_on_the_applications_stderr(
        tmp_path):
    (tmp_path / ".tracer" / "aggregator.log").mkdir(parents=True)  # a directory in its place

    proc = run_function(programs.logs_spans_and_prints_the_counters, 20,
                        env=clean_env(TRACER_DEBUG="1"), cwd=str(tmp_path))

    assert "flushed" in proc.stdout, proc.stdout + proc.stderr
    assert stored_names(str(tmp_path / ".tracer" / "traces.db")) == spans(20)
    assert "cannot open" in proc.stderr and "aggregator.log" in proc.stderr
    assert "tracer-aggregator[" in proc.stderr  # its own lines: "listening on ..."


# -- a full disk -------------------------------------------------------------------------------


def test_a_full_disk_under_the_store_sets_the_rest_aside_and_the_flush_names_it(tmp_path,
                                                                                 tiny_disk):
    failed = tmp_path / "failed"  # on a disk with room
    store = os.path.join(tiny_disk, "traces.db")  # aggregator.log beside it: full too

    proc = run_function(programs.logs_spans_and_prints_the_counters, 3000, 1000, store,
                        env=clean_env(TRACER_NUM_RETRIES="1", TRACER_DEFAULT_BATCH_SIZE="200",
                                      TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(failed)),
                        cwd=str(tmp_path), timeout=180)

    assert "FlushError:" in proc.stdout and "No space left on device" in proc.stdout, \
        proc.stdout + proc.stderr
    counters = printed_counters(proc.stdout)
    stored = stored_names(store)
    set_aside = set_aside_names(failed)
    assert counters["dropped_sink_failed"] > 0
    assert counters.get("rows_committed", 0) == len(stored)
    assert counters["payload_rows_sink_failed"] == counters["dropped_sink_failed"] \
        == len(set_aside)
    assert stored | set(set_aside) == spans(3000)  # each committed or set aside
    assert len(stored) + len(set_aside) == 3000  # and never both


# -- a store removed while in use ---------------------------------------------------------------


def test_a_store_removed_between_flushes_is_started_again_with_everything_after(tmp_path):
    proc = run_function(programs.logs_before_and_after_its_store_is_removed, 500,
                        env=clean_env(), cwd=str(tmp_path))

    assert "flushed" in proc.stdout, proc.stdout + proc.stderr
    assert stored_names(str(tmp_path / ".tracer" / "traces.db")) == spans(500, "after")
    counters = printed_counters(proc.stdout)
    assert counters["store_replaced"] == 1
    assert counters["rows_in_replaced_store"] == 500  # the "before" rows, gone with the file
    log = (tmp_path / ".tracer" / "aggregator.log").read_text()
    assert "was removed while in use: 500 rows committed to the old file" in log


def test_a_store_removed_mid_stream_leaves_every_span_stored_anew_or_counted_as_gone(tmp_path):
    proc = run_function(programs.logs_while_its_store_is_removed, 20_000, env=clean_env(),
                        cwd=str(tmp_path), timeout=120)

    assert "flushed" in proc.stdout, proc.stdout + proc.stderr
    stored = stored_names(str(tmp_path / ".tracer" / "traces.db"))
    counters = printed_counters(proc.stdout)
    assert counters["store_replaced"] == 1
    assert stored <= spans(20_000)
    assert len(stored) + counters["rows_in_replaced_store"] == 20_000


# -- a row the store cannot take ----------------------------------------------------------------


def test_a_row_whose_merge_fails_costs_only_itself_not_the_rest_of_its_batch(tmp_path):
    failed = tmp_path / "failed"

    proc = run_function(programs.updates_a_row_whose_stored_copy_is_corrupt, 999,
                        env=clean_env(TRACER_SYNC_FLUSH="1",
                                      TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(failed)),
                        cwd=str(tmp_path), timeout=120)

    victim, counters = proc.stdout.strip().splitlines()[-2], printed_counters(proc.stdout)
    assert "FlushError: 1 of 1000 rows could not be written" in proc.stdout, proc.stdout
    store = sqlite3.connect(str(tmp_path / ".tracer" / "traces.db"))
    stored = {name for (name,) in store.execute("SELECT name FROM rows WHERE name != 'victim'")}
    store.close()
    assert stored == spans(999)
    assert counters["dropped_row_failed"] == counters["payload_rows_row_failed"] == 1
    assert "dropped_sink_failed" not in counters
    (set_aside,) = [p.row for name in payloads.files(str(failed)) for p in payloads.read(name)]
    assert set_aside["id"] == victim and set_aside["output"] == "cannot be merged"


# -- a thread that dies --------------------------------------------------------------------------


def end_with_system_exit(thread: threading.Thread) -> None:
    """Raise SystemExit in ``thread``: an exception no loop of ours catches, so it dies."""
    assert thread.ident is not None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                               ctypes.py_object(SystemExit))
    thread.join(10)
    assert not thread.is_alive(), "the thread did not die"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_uploader_thread_that_died_is_started_again_counted_and_commits(tmp_path):
    queue = RowQueue(100)
    counters: Counter = Counter()
    sink = SQLiteSink(str(tmp_path / "traces.db"))
    uploader = Uploader(queue, sink, config.load({}), counters, lambda finished: None,
                        lambda: None)
    uploader.start()
    end_with_system_exit(uploader.thread)

    revive({"uploader": uploader}, counters)
    container = Container("L\x1fwatched")
    row = {"id": "r1", "span_id": "r1", "root_span_id": "r1", **container.columns}
    queue.put((container.id, "r1"), row, 100, container)

    wait_until(lambda: counters["rows_committed"] == 1, 10, "the row was never committed")
    assert counters["thread_restarts_uploader"] == 1
    queue.close()
    uploader.thread.join(10)
    sink.close()
