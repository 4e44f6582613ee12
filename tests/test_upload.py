"""Uploading to a trace server: traced programs with ``TRACER_API_URL`` pointing at a real
``tracer serve`` on loopback, through the real aggregator, its HTTP sink and its spool; the
server stopped, restarted, refusing the key, or answering 503 over a locked store (README,
"Uploading to a trace server"; docs/fleet.md)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracer import wire
from tracer.stats_client import ask_stats
from workers.http_sink import HttpWriter, Rejected, Unavailable
from workers.queue import Pending
from workers.rows import Container
from workers.store import Refused
from workers.store.sqlite import SQLiteReader

from . import upload_programs
from .conftest import (
    TraceServer,
    clean_env,
    free_port,
    python_command,
    run_cli,
    run_function,
)
from .helpers import wait_until

KEY = "tr_upload-tests-key-0123456789"
HOST = socket.gethostname()


@pytest.fixture
def server(tmp_path) -> Iterator[TraceServer]:
    """``tracer serve --api-key KEY`` over ``tmp_path/server.db``."""
    with TraceServer(str(tmp_path / "server.db"), str(tmp_path / "serve.log"), "--api-key", KEY,
                     ) as running:
        yield running


def uploading_env(tmp_path, url: str, key: str = KEY, **extra: str) -> dict[str, str]:
    """A clean environment that uploads to ``url`` with ``key``; ``HOME`` in ``tmp_path`` (the
    aggregator's directory, ``~/.tracer/api/...``, and its spool go there)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return clean_env(HOME=str(home), TRACER_API_URL=url, TRACER_API_KEY=key, **extra)


def server_rows(server: TraceServer, project: str) -> list[dict]:
    path = server.store
    if not os.path.exists(path):
        return []
    with SQLiteReader(path) as store:
        return list(store.rows(project=project))


def wait_for_rows(server: TraceServer, project: str, count: int, timeout: float = 60
                  ) -> list[dict]:
    return wait_until(lambda: (lambda found: found if len(found) >= count else None)(
        server_rows(server, project)), timeout,
        lambda: f"the server has {len(server_rows(server, project))} of {count} rows")


def spool_files(tmp_path) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(tmp_path / "home")
            for n in names if n.endswith(".batch")]


class Driven:
    """``upload_programs.driven`` in a fresh interpreter: commands in, JSON lines out."""

    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(python_command(upload_programs.driven, project), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the program exited ({self.proc.wait(10)})"
        return json.loads(line)

    def ask(self, command: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask("exit")
            self.proc.wait(60)


@pytest.fixture
def driven(tmp_path) -> Iterator[Any]:
    started: list[Driven] = []

    def start(project: str, env: dict[str, str]) -> Driven:
        started.append(Driven(project, env))
        return started[-1]

    yield start
    for program in started:
        try:
            program.close()
        finally:
            if program.proc.poll() is None:
                program.proc.kill()


# -- a program uploading ---------------------------------------------------------------------


def test_a_traced_program_uploads_its_rows_to_the_server_and_links_there(tmp_path, server,
                                                                          project):
    out = json.loads(run_function(upload_programs.logs_a_trace, project, 3,
                                  env=uploading_env(tmp_path, server.url),
                                  cwd=str(tmp_path)).stdout)

    assert out["error"] is None
    rows = wait_for_rows(server, project, 4)
    assert {r["span_attributes"]["name"] for r in rows} == {"root", "child 0", "child 1",
                                                            "child 2"}
    assert all(r["root_span_id"] == out["root"] for r in rows)
    assert all(r["origin"] == {"host": HOST, "pid": out["pid"]} for r in rows)
    assert out["permalink"].startswith(server.url + "/")
    assert not os.path.exists(tmp_path / ".tracer"), "no local store without TRACER_STORE"


def test_the_aggregators_counters_reach_the_server(tmp_path, server, project):
    run_function(upload_programs.logs_a_trace, project, 1,
                 env=uploading_env(tmp_path, server.url), cwd=str(tmp_path))

    def recorded() -> list[dict]:
        with SQLiteReader(server.store) as store:
            return [r for r in store.runs() if r["ended"]]

    (run,) = wait_until(recorded, 30, "the aggregator's run never reached the server")
    assert run["host"] == HOST
    assert json.loads(run["counters"])["counters"]["rows_committed"] >= 2


def test_with_a_store_too_both_the_store_and_the_server_have_every_row(tmp_path, server,
                                                                        project):
    local = str(tmp_path / "local.db")
    run_function(upload_programs.logs_a_trace, project, 2,
                 env=uploading_env(tmp_path, server.url, TRACER_STORE=local),
                 cwd=str(tmp_path))

    uploaded = wait_for_rows(server, project, 3)
    with SQLiteReader(local) as store:
        kept = list(store.rows(project=project))
    assert sorted(r["id"] for r in kept) == sorted(r["id"] for r in uploaded)
    assert len(kept) == 3


def test_the_traced_process_loads_no_http_client_and_the_key_is_on_no_command_line(
        tmp_path, server):
    code = ("import json, os, sys, time, tracer; tracer.init_logger('quiet'); "
            "pid = int(os.environ['_TRACER_AGGREGATOR_PID']); "
            "read = lambda: open(f'/proc/{pid}/cmdline', 'rb').read().decode(); "
            "deadline = time.monotonic() + 30\n"
            "while 'workers.aggregator' not in read() and time.monotonic() < deadline: "
            "time.sleep(0.05)\n"
            "cmd = read(); "
            "key = [a for a in cmd.split('\\0') if a.endswith('.key')]; "
            "print(json.dumps({'modules': sorted(m for m in sys.modules if m.split('.')[0] in "
            "('httpx', 'zstandard', 'workers')), 'cmdline': cmd, "
            "'mode': oct(os.stat(key[0]).st_mode & 0o777) if key else None}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=uploading_env(tmp_path, server.url), timeout=60,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["modules"] == []
    assert KEY not in out["cmdline"] and "--api-key-file" in out["cmdline"]
    assert out["mode"] == "0o600"


# -- the server away -------------------------------------------------------------------------


def test_rows_logged_while_the_server_is_down_are_spooled_then_stored_once_it_is_back(
        tmp_path, project, driven):
    store = str(tmp_path / "server.db")
    port = free_port()
    first = TraceServer(store, str(tmp_path / "serve-1.log"), "--api-key", KEY, port=port)
    program = driven(project, uploading_env(tmp_path, first.url))
    assert program.ask("log 5")["error"] is None
    wait_for_rows(first, project, 6)

    first.stop()
    down = program.ask("log 20")
    assert down["error"] is None, "spooled is committed: the flush succeeds"
    assert spool_files(tmp_path), "the rows wait in the spool"
    stats = program.ask("stats")["stats"]
    assert stats["spool"]["batches"] >= 1 and stats["spool"]["bytes"] > 0
    shown = run_cli("stats", "--endpoint", program.ready["endpoint"])
    assert shown.returncode == 0, shown.stderr
    assert f"uploading to: {first.url}" in shown.stdout
    assert "batches, the oldest" in shown.stdout and "spool: " in shown.stdout

    with TraceServer(store, str(tmp_path / "serve-2.log"), "--api-key", KEY,
                     port=port) as second:
        rows = wait_for_rows(second, project, 6 + 21)
        wait_until(lambda: not spool_files(tmp_path), 30, "the spool was never drained")
        assert program.ask("log 2")["error"] is None
        rows = wait_for_rows(second, project, 6 + 21 + 3)
    names = Counter(r["span_attributes"]["name"] for r in rows)
    assert len(rows) == 30 and set(names.values()) == {1}, "every span stored, exactly once"
    assert all(r["metrics"].get("end") for r in rows)


def test_a_spool_left_by_a_killed_aggregator_is_drained_by_the_next_one(tmp_path, project,
                                                                         driven):
    store = str(tmp_path / "server.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = uploading_env(tmp_path, url)
    program = driven(project, env)
    assert program.ask("log 10")["error"] is None  # nobody listens: spooled
    assert spool_files(tmp_path)
    program.ask("kill")
    program.proc.kill()  # the program goes too: nothing of it is left to send anything
    program.proc.wait(30)

    with TraceServer(store, str(tmp_path / "serve.log"), "--api-key", KEY, port=port) as up:
        out = json.loads(run_function(upload_programs.logs_a_trace, project + "-next", 0,
                                      env=env, cwd=str(tmp_path)).stdout)
        assert out["error"] is None
        rows = wait_for_rows(up, project, 11)
        wait_until(lambda: not spool_files(tmp_path), 30, "the spool was never drained")
    assert len(rows) == 11


def test_a_full_spool_lets_the_queue_policy_apply_and_the_drops_are_counted(tmp_path, project,
                                                                             driven):
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    program = driven(project, uploading_env(
        tmp_path, url, TRACER_SPOOL_MAX_BYTES="3000", TRACER_NUM_RETRIES="1",
        TRACER_DEFAULT_BATCH_SIZE="5", TRACER_QUEUE_DROP_WHEN_FULL="1",
        TRACER_QUEUE_SIZE="20", TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(tmp_path / "failed")))
    answer = program.ask("log 200")
    stats = program.ask("stats")["stats"]
    counters = stats["counters"]
    assert counters["dropped_sink_failed"] > 0, counters
    assert stats["spool"]["bytes"] <= 3000
    assert answer["error"] is not None, "the flush says rows were lost"
    assert [name for name in os.listdir(tmp_path / "failed") if "sink_failed" in name], \
        "what could not be spooled is set aside"


# -- the server refusing ---------------------------------------------------------------------


def test_a_wrong_key_fails_the_flush_naming_the_url_and_the_keys_start_and_is_not_retried(
        tmp_path, server, project):
    wrong = "tr_wrong-key-" + "x" * 30
    failed = tmp_path / "failed"
    out = json.loads(run_function(
        upload_programs.logs_a_trace, project, 2,
        env=uploading_env(tmp_path, server.url, key=wrong,
                          TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(failed)),
        cwd=str(tmp_path)).stdout)

    assert out["error"] is not None
    assert server.url in out["error"] and "401" in out["error"]
    assert repr(wrong[:6]) in out["error"] and wrong not in out["error"]
    counters = out["stats"]["counters"]
    assert counters["dropped_unauthorized"] == 3
    assert counters.get("write_retries", 0) == 0 and counters.get("spool_batches_written", 0) == 0
    assert [name for name in os.listdir(failed) if "unauthorized" in name]
    assert server_rows(server, project) == []
    logs = [os.path.join(d, n) for d, _, names in os.walk(tmp_path / "home") for n in names
            if n == "aggregator.log"]
    assert logs and all(wrong not in Path(p).read_text(encoding="utf-8") for p in logs)


def test_a_key_made_on_the_server_uploads_its_projects_and_is_refused_for_others(
        tmp_path, server, project):
    made = run_cli("keys", "create", "--name", "workers", "--project", project, "--store",
                   server.store)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    env = uploading_env(tmp_path, server.url, key=key)

    mine = json.loads(run_function(upload_programs.logs_a_trace, project, 1, env=env,
                                   cwd=str(tmp_path)).stdout)
    other = json.loads(run_function(upload_programs.logs_a_trace, project + "-other", 1,
                                    env=env, cwd=str(tmp_path)).stdout)

    assert mine["error"] is None and len(wait_for_rows(server, project, 2)) == 2
    assert other["error"] is not None and "403" in other["error"]
    assert key[:6] in other["error"] and key not in other["error"]
    assert other["stats"]["counters"]["dropped_unauthorized"] == 2


def test_a_server_that_asks_for_a_wait_is_waited_for_and_every_span_arrives(
        tmp_path, server, project, driven):
    """No spool: the uploader's own retries honour Retry-After (503 over a locked store)."""
    program = driven(project, uploading_env(tmp_path, server.url, TRACER_SPOOL_MAX_BYTES="0",
                                            TRACER_NUM_RETRIES="50"))
    assert program.ask("log 1")["error"] is None  # the aggregator is up, the store made
    endpoint = program.ready["endpoint"]
    lock = sqlite3.connect(server.store, timeout=30, isolation_level=None,
                           check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")  # the server's writes fail, after its 2 s busy timeout
    answers: list[dict] = []
    logging = threading.Thread(target=lambda: answers.append(program.ask("log 4")))
    logging.start()
    try:
        wait_until(lambda: (ask_stats(endpoint) or {}).get("counters", {}).get(
            "retry_after_waits"), 60, "the uploader never waited as the server asked")
    finally:
        lock.execute("COMMIT")
        lock.close()
        logging.join(60)
    assert answers and answers[0]["error"] is None
    counters = program.ask("stats")["stats"]["counters"]
    assert counters.get("dropped_sink_failed", 0) == 0
    assert len(wait_for_rows(server, project, 2 + 5)) == 7


# -- attachments ------------------------------------------------------------------------------


def test_attachments_are_uploaded_by_content_once_and_recorded_on_the_server(tmp_path, server,
                                                                             project):
    env = uploading_env(tmp_path, server.url)
    first = json.loads(run_function(upload_programs.logs_attachments, project,
                                    ["alpha", "beta", "alpha"], env=env,
                                    cwd=str(tmp_path)).stdout)

    def recorded() -> dict | None:
        with SQLiteReader(server.store) as store:
            found = store.attachments(first["keys"])
        return found if len(found) == 3 else None

    records = wait_until(recorded, 30, "the attachments were never recorded on the server")
    assert {r["status"] for r in records.values()} == {"done"}
    digests = {r["sha256"] for r in records.values()}
    assert len(digests) == 2
    for key in first["keys"]:
        response = server.get(f"/api/attachments/{key}",
                              headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code == 200
        assert response.content in (b"alpha", b"beta")

    again = json.loads(run_function(upload_programs.logs_attachments, project + "-again",
                                    ["alpha"], env=env, cwd=str(tmp_path)).stdout)
    wait_until(lambda: recorded() is not None, 30)

    def uploaded_again() -> Any:
        with SQLiteReader(server.store) as store:
            return store.attachments(again["keys"]) or None

    wait_until(uploaded_again, 30, "the second attachment was never recorded")
    assert not [name for d, _, names in os.walk(tmp_path / "home") for name in names
                if name.endswith((".data", ".json", ".upload"))], "the spool is emptied"


def test_with_a_store_too_attachments_are_kept_there_and_uploaded(tmp_path, server, project):
    local = str(tmp_path / "local.db")
    out = json.loads(run_function(upload_programs.logs_attachments, project, ["gamma"],
                                  env=uploading_env(tmp_path, server.url, TRACER_STORE=local),
                                  cwd=str(tmp_path)).stdout)

    def on_server() -> Any:
        with SQLiteReader(server.store) as store:
            return store.attachments(out["keys"]) or None

    (uploaded,) = wait_until(on_server, 30, "the attachment never reached the server").values()
    with SQLiteReader(local) as store:
        (kept,) = store.attachments(out["keys"]).values()
    assert uploaded["status"] == kept["status"] == "done"
    assert uploaded["sha256"] == kept["sha256"]
    wait_until(lambda: not [n for _, _, names in os.walk(tmp_path) for n in names
                            if n.endswith(".upload")], 30, "an upload marker was left")


# -- the HTTP sink on its own, against the real server ---------------------------------------


LOGS = Container(wire.logs_container("sink-test"))


def batch(*rows: dict) -> list[Pending]:
    return [Pending((LOGS.id, row["id"]), row, 10, 0, LOGS) for row in rows]


def test_the_sink_writes_a_batch_the_server_stores_as_it_was_sent(server):
    with HttpWriter(server.url, KEY) as sink:
        sink.write(batch({"id": "a", "input": "x" * 1000, "metrics": {"start": 1.0}},
                         {"id": "b", "output": {"nested": [1, 2]}}))
    rows = {r["id"]: r for r in server_rows(server, "sink-test")}
    assert rows["a"]["input"] == "x" * 1000 and rows["b"]["output"] == {"nested": [1, 2]}


@pytest.mark.parametrize("compression", ["gzip", "zstd", "identity"])
def test_the_sink_sends_bodies_the_server_reads_however_compressed(server, compression):
    with HttpWriter(server.url, KEY, compression=compression) as sink:
        sink.write(batch({"id": compression, "output": "y" * 5000}))
    assert [r["id"] for r in server_rows(server, "sink-test")] == [compression]


def test_a_batch_over_the_request_size_goes_as_several_requests_under_it(server):
    rows = [{"id": f"r{i}", "output": "z" * 3000} for i in range(10)]
    with HttpWriter(server.url, KEY, max_request_size=8000) as sink:
        bodies = list(sink.bodies(batch(*rows), "b"))
        sink.write(batch(*rows))
    assert len(bodies) > 1 and all(len(b) <= 8000 for b in bodies)
    assert len(server_rows(server, "sink-test")) == 10


def test_a_wrong_key_is_a_refusal_naming_the_url_and_the_keys_start(server):
    wrong = "tr_not-the-key-0123456789"
    with HttpWriter(server.url, wrong) as sink, pytest.raises(Refused) as caught:
        sink.write(batch({"id": "a"}))
    message = str(caught.value)
    assert server.url + "/api/v1/rows" in message and "401" in message
    assert "'tr_not'" in message and wrong not in message
    assert not sink.store_failed(caught.value)


def test_a_row_the_server_refuses_is_a_failure_of_the_content_naming_the_row(server):
    with HttpWriter(server.url, KEY) as sink, pytest.raises(Rejected) as caught:
        sink.write(batch({"id": "fine"}, {"id": "bad", "scores": {"s": 7}}))
    assert caught.value.status == 400 and caught.value.row == 1
    assert not sink.store_failed(caught.value)
    assert server_rows(server, "sink-test") == [], "a batch is applied whole or not at all"


def test_a_server_nobody_runs_is_unavailable_a_store_failure(tmp_path):
    with HttpWriter(f"http://127.0.0.1:{free_port()}", KEY) as sink, \
            pytest.raises(Unavailable) as caught:
        sink.write(batch({"id": "a"}))
    assert sink.store_failed(caught.value) and sink.retry_after(caught.value) is None


def test_a_locked_store_is_unavailable_with_the_servers_retry_after(server):
    with HttpWriter(server.url, KEY) as sink:
        sink.write(batch({"id": "first"}))  # the store exists
        lock = sqlite3.connect(server.store, timeout=30, isolation_level=None,
                           check_same_thread=False)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(Unavailable) as caught:
                sink.write(batch({"id": "second"}))
        finally:
            lock.execute("COMMIT")
            lock.close()
    assert caught.value.status == 503 and sink.retry_after(caught.value) is not None


def test_a_full_ingest_queue_is_unavailable_with_the_servers_retry_after(tmp_path,
                                                                        trace_server):
    server = trace_server(str(tmp_path / "server.db"), "--api-key", KEY, "--ingest-queue", "1")
    with HttpWriter(server.url, KEY) as sink:
        sink.write(batch({"id": "first"}))  # the store exists
    lock = sqlite3.connect(server.store, timeout=30, isolation_level=None,
                           check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")  # a batch taken now holds the queue for the busy timeout
    failures: list[Unavailable] = []
    try:
        for _ in range(20):  # two at once: while one is held, the other finds the queue full
            writers = [threading.Thread(target=_write_noting_failure,
                                        args=(server.url, f"row-{i}", failures))
                       for i in range(2)]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join(60)
            if any(f.status == 429 for f in failures):
                break
    finally:
        lock.execute("COMMIT")
        lock.close()
    full = [f for f in failures if f.status == 429]
    assert full, f"the server never said its queue was full: {failures}"
    assert full[0].retry_after is not None and full[0].retry_after >= 1


def _write_noting_failure(url: str, row_id: str, failures: list[Unavailable]) -> None:
    with HttpWriter(url, KEY) as sink:
        try:
            sink.write(batch({"id": row_id}))
        except Unavailable as exc:
            failures.append(exc)


def test_blobs_are_asked_for_before_they_are_sent(server, tmp_path):
    import hashlib

    data = b"some bytes"
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "blob"
    path.write_bytes(data)
    with HttpWriter(server.url, KEY) as sink:
        assert not sink.has_blob(sha)
        sink.put_blob(sha, str(path))
        assert sink.has_blob(sha)
