"""OTLP out (``TRACER_OTLP_ENDPOINT``): traced programs whose aggregator exports to a real
``tracer serve``'s OTLP receiver (``POST /v1/traces``) on loopback. What arrived is read from
that server's store, where its receiver wrote what it decoded (``workers/otlp.py``, with
opentelemetry-proto), and compared with the rows the same aggregator stored locally: the round
trip keeps the tree, the times, the errors and the fields. Then what a receiver that is down,
that refuses the headers, or that rejects spans does to the exporter. The mapping's details are
tests/unit/test_otlp_export.py's, the assembly of spans in pieces
tests/unit/test_otlp_assembly.py's."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tracer import w3c
from workers.store import open_store

from . import otlp_programs
from .conftest import TraceServer, clean_env, free_port, python_command, run_function, runs_in
from .helpers import wait_until

KEY = "tr_otlp-out-test-key"
PROJECT = "otlp-out"
#: ``metadata.otel`` is what the receiver keeps of the OTLP span itself (kind, status, ids,
#: resource, scope): not a field of ours, compared apart.
COMPARED = ("id", "span_id", "root_span_id", "span_parents", "span_attributes", "metrics",
            "input", "output", "expected", "error", "scores", "tags", "origin")


@pytest.fixture
def served(tmp_path) -> str:
    """The store of the receiving server."""
    return str(tmp_path / "received.db")


@pytest.fixture
def server(trace_server, served) -> TraceServer:
    """``tracer serve --api-key KEY``: the OTLP receiver."""
    found: TraceServer = trace_server(served, "--api-key", KEY)
    return found


def exporting(tmp_path, url: str, key: str = KEY, **extra: str) -> dict[str, str]:
    """The environment of a traced program whose aggregator keeps a local store and exports
    to ``url``, presenting ``key``; its home (``~/.tracer``) and spool in ``tmp_path``."""
    env = {"TRACER_STORE": str(tmp_path / "local.db"), "TRACER_OTLP_ENDPOINT": url,
           "TRACER_OTLP_HEADERS": f"Authorization=Bearer%20{key}",
           "TRACER_SPOOL_DIR": str(tmp_path / "spool"), "HOME": str(tmp_path / "home")}
    env.update(extra)
    return clean_env(**env)


def rows_of(store: str) -> dict[str, dict]:
    """The rows of a store by span id ({} while it does not exist)."""
    if not os.path.exists(store):
        return {}
    with open_store(store, readonly=True) as reader:
        return {row["span_id"]: row for row in reader.rows()}


def spooled(tmp_path) -> list[str]:
    """The batch files waiting in the exporter's spool."""
    found = []
    for directory, _, files in os.walk(tmp_path / "spool"):
        found += [os.path.join(directory, f) for f in files if f.endswith(".batch")]
    return found


def counters(store: str) -> dict[str, int]:
    """The counters of the aggregator runs recorded in ``store``, summed (a run's record is
    written as it goes and as it exits)."""
    total: dict[str, int] = {}
    for run in runs_in(store):
        for name, value in json.loads(run["counters"] or "{}").get("counters", {}).items():
            total[name] = total.get(name, 0) + value
    return total


# -- the round trip ----------------------------------------------------------------------------


@pytest.fixture
def round_trip(tmp_path, server, served) -> tuple[dict[str, dict], dict[str, dict]]:
    """``answer_a_question`` run with its aggregator exporting to the server: the rows it
    stored locally and those the server received, by span id."""
    run_function(otlp_programs.answer_a_question, PROJECT, env=exporting(tmp_path, server.url),
                 cwd=str(tmp_path))
    local = rows_of(str(tmp_path / "local.db"))
    # The program's last flush returned once the receiver had committed the late score.
    received = rows_of(served)
    return local, received


def test_every_span_arrives_with_its_ids_and_parents(round_trip) -> None:
    local, received = round_trip
    assert len(local) == 4  # request, retrieve, Chat Completion, lookup
    assert received.keys() == local.keys()
    for span_id, row in local.items():
        assert (received[span_id]["root_span_id"], received[span_id]["span_parents"]) == (
            row["root_span_id"], row["span_parents"])


def test_every_field_arrives_as_the_aggregator_stored_it(round_trip) -> None:
    local, received = round_trip
    for span_id, row in local.items():
        got = received[span_id]
        for field in COMPARED:
            assert got.get(field) == row.get(field), (row["span_attributes"]["name"], field)
        metadata = dict(got["metadata"])
        del metadata["otel"]
        assert metadata == (row.get("metadata") or {}), row["span_attributes"]["name"]
        assert got["project_name"] == PROJECT


def test_times_arrive_exactly(round_trip) -> None:
    local, received = round_trip
    for span_id, row in local.items():
        assert received[span_id]["metrics"]["start"] == row["metrics"]["start"]
        assert received[span_id]["metrics"]["end"] == row["metrics"]["end"]


def test_an_error_arrives_as_the_same_error_and_an_otlp_error_status(round_trip) -> None:
    local, received = round_trip
    [failed] = [r for r in local.values() if r.get("error")]
    assert failed["error"].startswith("ValueError: no such penguin\n\nTraceback")
    got = received[failed["span_id"]]
    assert got["error"] == failed["error"]
    assert got["metadata"]["otel"]["status"] == {"code": "ERROR",
                                                 "message": "ValueError: no such penguin"}


def test_an_llm_span_arrives_as_a_client_span_with_its_tokens_and_messages(round_trip) -> None:
    local, received = round_trip
    [llm] = [r for r in local.values() if r["span_attributes"].get("type") == "llm"]
    got = received[llm["span_id"]]
    assert got["metadata"]["otel"]["kind"] == "client"
    assert got["metrics"]["prompt_tokens"] == 12 and got["metrics"]["tokens"] == 16
    assert got["input"] == otlp_programs.MESSAGES and got["output"] == otlp_programs.CHOICES
    assert got["metadata"]["model"] == "gpt-4o-mini"


def test_a_span_that_outlived_a_batch_arrives_whole_with_its_late_score(round_trip) -> None:
    local, received = round_trip
    [root] = [r for r in local.values() if not r["span_parents"]]
    got = received[root["span_id"]]
    assert got["input"] == {"question": "Where do penguins live?"}  # committed mid-span
    assert got["metadata"]["stage"] == "retrieving" and got["output"] == "In Antarctica."
    assert got["scores"] == {"quality": 0.75, "late_review": 1.0}  # update_span after the end
    assert got["tags"] == ["otlp", "prod"]


def test_the_otlp_ids_are_the_w3c_mapping_of_ours(round_trip) -> None:
    local, received = round_trip
    for span_id, row in local.items():
        otel = received[span_id]["metadata"]["otel"]
        trace_id, otlp_span_id = w3c.from_row_ids(span_id, row["root_span_id"])
        assert (otel["trace_id"], otel["span_id"]) == (f"{trace_id:032x}", f"{otlp_span_id:016x}")
        assert otel["trace_id"] == row["root_span_id"].replace("-", "")


def test_the_resource_says_the_project_host_and_process(round_trip) -> None:
    local, received = round_trip
    for span_id, row in local.items():
        otel = received[span_id]["metadata"]["otel"]
        assert otel["resource"]["service.name"] == PROJECT
        assert otel["resource"]["host.name"] == row["origin"]["host"]
        assert otel["resource"]["process.pid"] == row["origin"]["pid"]
        assert otel["scope"]["name"] == "tracer"


# -- a receiver away, refusing, rejecting ------------------------------------------------------


def test_spans_for_a_receiver_that_is_down_are_spooled_and_sent_when_it_is_back(
        tmp_path, trace_server, served) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    program = subprocess.Popen(
        python_command(otlp_programs.spans_then_wait, PROJECT, 3), env=exporting(tmp_path, url),
        cwd=str(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert program.stdout is not None and program.stdin is not None
        assert program.stdout.readline().strip() == "flushed"  # committed: spooled on disk
        assert spooled(tmp_path)
        assert len(rows_of(str(tmp_path / "local.db"))) == 3

        trace_server(served, "--api-key", KEY, port=port)
        wait_until(lambda: len(rows_of(served)) == 3, 30,
                   "the spooled spans never reached the receiver once it was back")
        wait_until(lambda: not spooled(tmp_path), 10, "the spool was not emptied")

        program.stdin.write("go on\n")
        program.stdin.flush()
        assert program.wait(60) == 0
    finally:
        if program.poll() is None:
            program.kill()
            program.wait(10)
    names = sorted(row["span_attributes"]["name"] for row in rows_of(served).values())
    assert names == ["after the wait", "span 0", "span 1", "span 2"]


def test_spans_spooled_by_an_aggregator_that_exited_are_sent_by_the_next_one(
        tmp_path, trace_server, served) -> None:
    port = free_port()
    env = exporting(tmp_path, f"http://127.0.0.1:{port}")
    first = run_function(otlp_programs.spans_and_flush, PROJECT, 2, env=env, cwd=str(tmp_path))
    assert json.loads(first.stdout) == {"error": None}  # spooled counts as committed
    wait_until(lambda: spooled(tmp_path), 10, "nothing was spooled")

    trace_server(served, "--api-key", KEY, port=port)
    run_function(otlp_programs.spans_and_flush, "otlp-out-2", 1, env=env, cwd=str(tmp_path))
    wait_until(lambda: len(rows_of(served)) == 3, 30,
               "the next aggregator did not send what the first one spooled")
    assert sorted(r["project_name"] for r in rows_of(served).values()) == [
        "otlp-out", "otlp-out", "otlp-out-2"]


def test_refused_headers_are_counted_and_the_flush_names_the_endpoint_not_the_secret(
        tmp_path, server) -> None:
    secret = "wrong-secret-value-1234"
    env = exporting(tmp_path, server.url, key=secret)
    found = run_function(otlp_programs.spans_and_flush, PROJECT, 2, env=env, cwd=str(tmp_path))
    error = json.loads(found.stdout)["error"]
    assert error is not None and f"{server.url}/v1/traces answered 401" in error
    assert "Authorization" in error and secret not in error

    local = str(tmp_path / "local.db")
    assert len(rows_of(local)) == 2  # the store, the other destination, has them
    wait_until(lambda: counters(local).get("dropped_unauthorized") == 2, 30,
               lambda: f"not counted as refused: {counters(local)}")
    with open(tmp_path / "aggregator.log", encoding="utf-8") as f:
        assert secret not in f.read()


def test_spans_the_receiver_rejects_are_counted_as_dropped(tmp_path, server, served) -> None:
    # tracer serve takes an experiment's spans only for experiments its store knows.
    run_function(otlp_programs.an_experiment, PROJECT, env=exporting(tmp_path, server.url),
                 cwd=str(tmp_path))
    local = str(tmp_path / "local.db")
    assert len(rows_of(local)) == 2 and rows_of(served) == {}
    wait_until(lambda: counters(local).get("dropped_otlp_rejected") == 2, 30,
               lambda: f"rejected spans not counted: {counters(local)}")


# -- only ---------------------------------------------------------------------------------------


def test_exporting_only_writes_no_store_and_keeps_its_files_in_the_receivers_directory(
        tmp_path, server, served) -> None:
    env = exporting(tmp_path, server.url, TRACER_OTLP_ONLY="1")
    del env["TRACER_STORE"]
    found = run_function(otlp_programs.spans_and_flush, PROJECT, 2, env=env, cwd=str(tmp_path))
    assert json.loads(found.stdout) == {"error": None}
    assert len(rows_of(served)) == 2
    assert not os.path.exists(tmp_path / ".tracer") and not os.path.exists(tmp_path / "local.db")
    state = tmp_path / "home" / ".tracer" / "otlp" / f"127.0.0.1-{server.port}"
    wait_until(lambda: os.path.exists(state / "aggregator.log"), 10, "no aggregator log there")


def test_exporting_only_with_a_store_is_refused_before_anything_starts(tmp_path) -> None:
    env = exporting(tmp_path, "http://127.0.0.1:9", TRACER_OTLP_ONLY="1")
    proc = subprocess.run(python_command(otlp_programs.spans_and_flush, PROJECT, 1), env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "TRACER_OTLP_ONLY is on and TRACER_STORE is set" in proc.stderr
    assert not os.path.exists(tmp_path / "local.db")
