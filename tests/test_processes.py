"""Behaviour across process boundaries: no-op mode, slugs handed to other processes, the
aggregator's lifetime and its handling of garbage."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import msgpack
import zmq

import tracer
from tracer import wire
from tracer.recorder import Recorder
from workers.store.sqlite import SQLiteReader as Store

from .conftest import ROOT, by_name, clean_env, gone_within, run_python, wait_for_runs_to_end


def test_without_init_logger_nothing_is_started(tmp_path):
    """No logger in the process tree: no socket, no process, no thread, values pass through."""
    code = """
        import json, os, threading, psutil, tracer

        @tracer.traced
        def double(x):
            return 2 * x

        @tracer.traced
        async def adouble(x):
            return 2 * x

        import asyncio
        results = [double(21), asyncio.run(adouble(2))]
        with tracer.start_span("ignored") as span:
            span.log(input=1, output=2)
        span.end()
        tracer.current_span().log(metadata={"k": "v"})
        tracer.flush()
        me = psutil.Process()
        print(json.dumps({
            "results": results,
            "span": repr(tracer.current_span()),
            "export": span.export(),
            "threads": threading.active_count(),
            "os_threads": me.num_threads(),
            "children": len(me.children(recursive=True)),
            "sockets": len(me.net_connections(kind="all")),
            "zmq_loaded": "zmq" in __import__("sys").modules and
                          any(t.name.startswith("tracer") for t in threading.enumerate()),
        }))
    """
    out = json.loads(run_python(code, env=clean_env(), cwd=str(tmp_path)).stdout)
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
    code = f"""
        import tracer
        with tracer.start_span("server", type="llm", parent={slug!r}) as span:
            span.log(output="served")
        tracer.flush()
    """
    run_python(code, env=dict(os.environ))  # inherits TRACER_ENDPOINT from init_logger
    named = by_name(rows())
    assert named["server"]["span_parents"] == [named["client"]["span_id"]]
    assert named["server"]["root_span_id"] == named["client"]["root_span_id"]
    assert named["server"]["output"] == "served"


def test_slug_carries_the_trace_into_a_process_with_its_own_aggregator(
        logger, rows, store_path):
    """A child with a clean environment starts its own aggregator on the same store."""
    with tracer.start_span("origin") as origin:
        slug = origin.export()
    code = f"""
        import tracer
        tracer.update_span(exported={slug!r}, metadata={{"updated_by": "child"}})
        with tracer.start_span("remote child", parent={slug!r}):
            pass
        tracer.flush()
    """
    run_python(code, env=clean_env(TRACER_STORE=store_path))
    named = by_name(rows())
    assert named["remote child"]["span_parents"] == [named["origin"]["span_id"]]
    assert named["origin"]["metadata"] == {"updated_by": "child"}


def test_a_spawned_child_attaches_to_the_parents_aggregator_without_init_logger(logger, rows):
    with tracer.start_span("parent"):
        pass
    tracer.flush()
    code = """
        import tracer
        @tracer.traced
        def in_child():
            return "ok"
        in_child()
    """
    run_python(code, env=dict(os.environ))
    names = sorted(r["span_attributes"]["name"] for r in rows())
    assert names == ["in_child", "parent"]


def test_the_aggregator_exits_after_its_owner_is_gone(tmp_path):
    code = """
        import os, tracer
        log = tracer.init_logger("lifetime")
        with tracer.start_span("only"):
            pass
        print(os.environ["_TRACER_AGGREGATOR_PID"])
    """
    pid = int(run_python(code, env=clean_env(), cwd=str(tmp_path)).stdout)
    assert gone_within(pid, 10), f"aggregator {pid} still running 10 s after its owner exited"
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
    code = f"""
        import os, signal, sys, time, tracer
        span = tracer.start_span("interrupted", parent={slug!r}, input="work")
        time.sleep(0.5)  # long enough for the recorder to announce the running span
        os.kill(os.getpid(), signal.SIGKILL)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=dict(os.environ),
                          timeout=60)
    assert proc.returncode == -9
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        named = by_name(rows())
        if "error" in named.get("interrupted", {}):
            break
        time.sleep(0.1)
    row = by_name(rows())["interrupted"]
    assert "exited before the span ended" in row["error"]
    assert row["input"] == "work"
    assert row["span_parents"] == [parent.span_id]
    assert row["metrics"]["start"] <= row["metrics"]["end"]


def test_a_sender_claiming_another_host_does_not_keep_an_owned_aggregator_alive(tmp_path):
    code = """
        import os, msgpack, zmq, tracer
        log = tracer.init_logger("claims")
        with tracer.start_span("real"):
            pass
        tracer.flush()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(os.environ["TRACER_ENDPOINT"])
        sock.send_multipart([msgpack.packb([1, 1, "another-host", 999999, 1, 1, 0]), b""])
        sock.close(linger=1000)
        ctx.term()
        print(os.environ["_TRACER_AGGREGATOR_PID"])
    """
    pid = int(run_python(code, env=clean_env(), cwd=str(tmp_path)).stdout)
    assert gone_within(pid, 10), f"aggregator {pid} still running 10 s after its owner exited"



def test_a_span_logged_by_a_later_exit_handler_is_still_delivered(tmp_path):
    code = """
        import atexit, tracer
        def last_words():  # registered first, so it runs after tracer's own exit handler
            with tracer.start_span("from atexit"):
                pass
        atexit.register(last_words)
        tracer.init_logger("late")
        with tracer.start_span("during the run"):
            pass
    """
    run_python(code, env=clean_env(), cwd=str(tmp_path))
    store_path = str(tmp_path / ".tracer" / "traces.db")
    with Store(store_path) as store:
        names = sorted(r["span_attributes"]["name"] for r in store.rows())
    assert names == ["during the run", "from atexit"]


def test_an_aggregator_removes_its_socket_files_when_it_exits(tmp_path):
    code = """
        import os, tracer
        tracer.init_logger("tidy")
        with tracer.start_span("x"):
            pass
        print(os.environ["TRACER_ENDPOINT"], os.environ["_TRACER_AGGREGATOR_PID"])
    """
    endpoint, pid = run_python(code, env=clean_env(), cwd=str(tmp_path)).stdout.split()
    assert gone_within(int(pid), 10)
    path = endpoint[len("ipc://"):]
    assert not [p for p in (path, path + ".pid", path + ".lock") if os.path.exists(p)]


def test_a_span_logged_after_the_flusher_went_idle_is_delivered_at_exit(tmp_path):
    """The flusher thread exits when idle; at exit (where Python >= 3.12 starts no thread) the
    last span still goes out."""
    code = """
        import time, tracer
        from tracer import recorder
        tracer.init_logger("idle")
        with tracer.start_span("early"):
            pass
        time.sleep(recorder.IDLE_EXIT + 0.6)
        with tracer.start_span("late"):
            pass
    """
    proc = run_python(code, env=clean_env(), cwd=str(tmp_path))
    assert "Traceback" not in proc.stderr, proc.stderr
    with Store(str(tmp_path / ".tracer" / "traces.db")) as store:
        assert sorted(r["span_attributes"]["name"] for r in store.rows()) == ["early", "late"]


def test_the_store_directory_created_for_traces_is_private(tmp_path):
    code = """
        import tracer
        tracer.init_logger("private")
        with tracer.start_span("x"):
            pass
    """
    run_python(code, env=clean_env(), cwd=str(tmp_path))
    assert (tmp_path / ".tracer").stat().st_mode & 0o777 == 0o700


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
    # The parent never recorded, so nothing was armed at fork: the child arms its own exit.
    code = """
        import os, tracer
        pid = os.fork()
        if pid == 0:
            tracer.init_logger("child-only")
            with tracer.start_span("from the child"):
                pass
            os._exit(0)
        os.waitpid(pid, 0)
    """
    run_python(code, env=clean_env(), cwd=str(tmp_path))
    store = str(tmp_path / ".tracer" / "traces.db")
    wait_for_runs_to_end(store)

    with Store(store) as reader:
        assert [r["span_attributes"]["name"] for r in reader.rows()] == ["from the child"]
