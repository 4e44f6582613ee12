"""Behaviour across process boundaries: no-op mode, slugs handed to other processes, the
aggregator's lifetime and its handling of garbage."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq

import tracer
from tracer import wire
from tracer.recorder import Recorder

from . import programs
from .conftest import (
    ROOT,
    Store,
    by_name,
    clean_env,
    gone_within,
    python_command,
    run_function,
    wait_for_runs_to_end,
)
from .helpers import wait_until


def test_without_init_logger_nothing_is_started(tmp_path):
    """No logger in the process tree: no socket, no process, no thread, values pass through."""
    out = json.loads(run_function(programs.traces_without_a_logger, env=clean_env(),
                                  cwd=str(tmp_path)).stdout)
    assert out["results"] == [42, 4]
    assert out["span"] == "<NoopSpan>" and out["export"] == ""
    assert out["threads"] == 1 and out["os_threads"] == 1
    assert out["children"] == 0 and out["sockets"] == 0
    assert not out["zmq_loaded"]
    assert not (tmp_path / ".tracer").exists()


def test_slug_used_as_parent_in_a_separate_process_lands_in_the_same_trace(logger, rows):
    """The child never calls init_logger: the slug carries the container."""
    with tracer.start_span("client") as client:
        slug = client.export()
    # The child inherits TRACER_ENDPOINT from init_logger.
    run_function(programs.logs_a_server_span_under, slug, env=dict(os.environ))
    named = by_name(rows())
    assert named["server"]["span_parents"] == [named["client"]["span_id"]]
    assert named["server"]["root_span_id"] == named["client"]["root_span_id"]
    assert named["server"]["output"] == "served"


def test_slug_carries_the_trace_into_a_process_with_its_own_aggregator(
        logger, rows, store_path):
    """A child with a clean environment starts its own aggregator on the same store."""
    with tracer.start_span("origin") as origin:
        slug = origin.export()
    run_function(programs.updates_and_continues_an_exported_span, slug,
                 env=clean_env(TRACER_STORE=store_path))
    named = by_name(rows())
    assert named["remote child"]["span_parents"] == [named["origin"]["span_id"]]
    assert named["origin"]["metadata"] == {"updated_by": "child"}


def test_a_spawned_child_attaches_to_the_parents_aggregator_without_init_logger(logger, rows):
    with tracer.start_span("parent"):
        pass
    tracer.flush()
    run_function(programs.calls_a_traced_function, env=dict(os.environ))
    names = sorted(r["span_attributes"]["name"] for r in rows())
    assert names == ["in_child", "parent"]


def test_the_aggregator_exits_after_its_owner_is_gone(tmp_path):
    _endpoint, pid = run_function(programs.logs_one_span, "lifetime", "only", env=clean_env(),
                                  cwd=str(tmp_path)).stdout.split()
    assert gone_within(int(pid), 10), f"aggregator {pid} still running 10 s after its owner exited"
    with Store(str(tmp_path / ".tracer" / "traces.db")) as store:
        assert [r["span_attributes"]["name"] for r in store.rows()] == ["only"]
        (run,) = store.runs()
    assert run["ended"] is not None
    assert json.loads(run["counters"])["counters"]["rows_committed"] == 1


def test_garbage_on_the_socket_is_counted_and_ignored(logger, rows):
    endpoint = logger.recorder.endpoint
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    good_header = [1, 1, "evil-host", 999999, 1, 1, 1]
    for parts in (
        [b"\xff\xfe not msgpack", b""],  # undecodable header
        [msgpack.packb([99, 1, "h", 1, 1, 1, 1]), b""],  # wrong version
        [msgpack.packb(good_header), b"\x93\x01\x02"],  # truncated record
        [msgpack.packb(good_header), msgpack.packb("not a record")],  # wrong record shape
        [msgpack.packb({"a": 1}), b""],  # header of the wrong shape
        [b"one part only"],
    ):
        sock.send_multipart(parts)
    sock.close()
    ctx.term()
    with tracer.start_span("after garbage"):
        pass
    assert [r["span_attributes"]["name"] for r in rows()] == ["after garbage"]
    stats = _stats(endpoint)
    counters = stats["counters"]
    assert counters["bad_messages"] >= 3
    assert counters["bad_version"] >= 1
    assert counters["bad_records"] >= 2


def _stats(endpoint: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "workers.cli", "stats", "--endpoint", endpoint,
                          "--json"], capture_output=True, text=True, timeout=30,
                         env=clean_env(), cwd=ROOT, check=True)
    return json.loads(out.stdout)


def test_ids_never_collide_between_forked_children_even_with_seeded_random(logger, rows):
    import random

    @tracer.traced
    def work(i):
        return i

    with tracer.start_span("forking parent"):
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                random.seed(0)  # what a user might do in every worker
                for i in range(20):
                    work(i)
                tracer.flush(timeout=10)
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    got = rows()
    assert len(got) == 61
    assert len({r["id"] for r in got}) == 61


def test_a_span_left_running_by_a_killed_process_is_stored_marked(logger, rows):
    with tracer.start_span("parent of victim") as parent:
        slug = parent.export()
    proc = subprocess.run(python_command(programs.is_killed_in_a_running_span, slug),
                          env=dict(os.environ), timeout=60)
    assert proc.returncode == -9
    wait_until(lambda: "error" in by_name(rows()).get("interrupted", {}), 10,
               "the killed process's span was never marked")
    row = by_name(rows())["interrupted"]
    assert "exited before the span ended" in row["error"]
    assert row["input"] == "work"
    assert row["span_parents"] == [parent.span_id]
    assert row["metrics"]["start"] <= row["metrics"]["end"]


def test_a_sender_claiming_another_host_does_not_keep_an_owned_aggregator_alive(tmp_path):
    pid = int(run_function(programs.sends_a_message_claiming_another_host, env=clean_env(),
                           cwd=str(tmp_path)).stdout)
    assert gone_within(pid, 10), f"aggregator {pid} still running 10 s after its owner exited"



def test_a_span_logged_by_a_later_exit_handler_is_still_delivered(tmp_path):
    run_function(programs.logs_a_span_from_a_later_exit_handler, env=clean_env(),
                 cwd=str(tmp_path))
    store_path = str(tmp_path / ".tracer" / "traces.db")
    with Store(store_path) as store:
        names = sorted(r["span_attributes"]["name"] for r in store.rows())
    assert names == ["during the run", "from atexit"]


def test_an_aggregator_removes_its_socket_files_when_it_exits(tmp_path):
    endpoint, pid = run_function(programs.logs_one_span, "tidy", "x", env=clean_env(),
                                 cwd=str(tmp_path)).stdout.split()
    assert gone_within(int(pid), 10)
    path = endpoint[len("ipc://"):]
    assert not [p for p in (path, path + ".pid", path + ".lock") if os.path.exists(p)]


def test_a_span_logged_after_the_flusher_went_idle_is_delivered_at_exit(tmp_path):
    """The flusher thread exits when idle; at exit (where Python >= 3.12 starts no thread) the
    last span still goes out."""
    proc = run_function(programs.logs_a_span_after_the_flusher_went_idle, env=clean_env(),
                        cwd=str(tmp_path))
    assert "Traceback" not in proc.stderr, proc.stderr
    with Store(str(tmp_path / ".tracer" / "traces.db")) as store:
        assert sorted(r["span_attributes"]["name"] for r in store.rows()) == ["early", "late"]


def test_the_store_directory_created_for_traces_is_private(tmp_path):
    run_function(programs.logs_one_span, "private", "x", env=clean_env(), cwd=str(tmp_path))
    assert (tmp_path / ".tracer").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_every_file_created_for_traces_is_private_whatever_the_umask(tmp_path, umask):
    out = run_function(programs.creates_its_files_under_umask, umask, cwd=str(tmp_path),
                       env=clean_env(TRACER_ALL_PUBLISH_PAYLOADS_DIR="every")).stdout
    modes = json.loads(out.strip().splitlines()[-1])

    names = {os.path.basename(path) for path in modes}
    assert {"traces.db", "traces.db-wal", "traces.db-shm", "aggregator.log"} <= names
    assert any(path.startswith("./every/") for path in modes)  # payload files
    assert any("/blobs/" in path for path in modes)  # the attachment
    assert any(path.endswith(".pid") for path in modes)
    assert any(path.endswith(".lock") for path in modes)
    assert {path: oct(mode) for path, mode in modes.items() if mode != 0o600} == {}


def test_a_span_ended_while_the_flusher_is_being_started_neither_deadlocks_nor_is_lost(
        logger, rows, project, monkeypatch):
    # What a GC finalizer ending an abandoned span does when collection runs inside
    # Recorder._start_thread: add() re-enters on the same thread. A fresh recorder, so that
    # its flusher is started here.
    rec = Recorder(logger.recorder.endpoint, logger.recorder.aggregator_pid)
    real_start = threading.Thread.start
    flushers = []

    def start(thread):
        if thread.name == "tracer-flusher" and thread not in flushers:
            flushers.append(thread)
            if len(flushers) == 1:
                rec.add(record_of(project, "ended by a finalizer"))
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    rec.add(record_of(project, "ended normally"))
    rec.sync(timeout=30)

    assert len(flushers) == 1
    assert sorted(by_name(rows())) == ["ended by a finalizer", "ended normally"]


def record_of(project: str, name: str) -> tuple:
    """A finished root span's record, as the recorder takes it."""
    span_id = random.getrandbits(64)
    return (wire.SPAN_END, wire.logs_container(project), span_id, span_id, None,
            span_id, None, name, None, time.time(), time.time(), None, None)


def test_a_fork_child_that_starts_recording_itself_delivers_before_os_exit(tmp_path):
    run_function(programs.forks_a_child_that_records_and_leaves_through_os_exit,
                 env=clean_env(), cwd=str(tmp_path))
    store = str(tmp_path / ".tracer" / "traces.db")
    wait_for_runs_to_end(store)

    with Store(store) as reader:
        assert [r["span_attributes"]["name"] for r in reader.rows()] == ["from the child"]
