"""Retries, payload dirs and oversized rows: a sink that fails never loses a row for good.

The failing sink is the real SQLite store held locked by the producing child process (a
PostgreSQL store that fails is tests/test_postgres_sink.py's); the replays go through the real
``tracer import-payloads`` command. What a replay does to a store is checked on a store of each
backend (``store_url``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from workers import payloads
from workers.queue import Pending
from workers.rows import Container
from workers.store import open_store

from . import programs
from .conftest import clean_env, run_cli, run_function


def run_locked_child(tmp_path, program: Callable[[str, int], None], project: str, n: int,
                     **settings: str) -> dict:
    """Run ``program(project, n)``, which logs n spans ("span <i>" with output i) into
    ``project`` while its store is locked and prints one JSON line last; returns that line."""
    proc = run_function(program, project, n, env=clean_env(**settings), cwd=str(tmp_path),
                        timeout=180)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stored_rows(store_path: str, project: str) -> list[dict]:
    """A store's rows of a project (none if the store was never made), by id; the store is a
    SQLite path or a PostgreSQL URL."""
    try:
        with open_store(store_path, readonly=True) as store:
            return sorted(store.rows(project=project), key=lambda row: row["id"])
    except FileNotFoundError:
        return []


def outputs_by_name(rows: list[dict]) -> dict[str, object]:
    return {row["span_attributes"]["name"]: row.get("output") for row in rows}


def expected_outputs(n: int) -> dict[str, int]:
    return {f"span {i}": i for i in range(n)}


def payload_rows(directory) -> list[Pending]:
    return [row for name in payloads.files(str(directory)) for row in payloads.read(name)]


def test_a_sink_failing_twice_then_recovering_loses_and_duplicates_nothing(tmp_path):
    counters = run_locked_child(
        tmp_path, programs.logs_while_the_store_fails_twice_then_recovers, "retried", 200)

    rows = stored_rows(str(tmp_path / ".tracer" / "traces.db"), "retried")
    assert counters["write_retries"] >= 2
    assert outputs_by_name(rows) == expected_outputs(200)
    assert len(rows) == 200
    assert counters["rows_committed"] == 200
    assert not [name for name in counters if name.startswith("dropped")]


def test_writing_a_batch_twice_leaves_each_row_as_written_once(store_url):
    container = Container("L\x1fidempotent")
    rows: list[dict[str, Any]] = [
        {"id": f"row-{i}", "span_id": f"row-{i}", "root_span_id": "row-0",
         "output": {"value": i, "items": [i, i]}, "metrics": {"start": 1.0, "end": 2.0},
         **container.columns} for i in range(5)]
    batch = [Pending((container.id, row["id"]), row, 100, 0, container) for row in rows]
    sink = open_store(store_url)

    sink.write(batch)
    once = stored_rows(store_url, "idempotent")
    sink.write(batch)  # what a retry after an unknown outcome does
    twice = stored_rows(store_url, "idempotent")
    sink.close()

    assert len(once) == 5
    assert twice == once


def test_batches_given_up_go_to_the_failed_dir_and_import_payloads_restores_them(tmp_path):
    failed = tmp_path / "failed"
    counters = run_locked_child(
        tmp_path, programs.logs_while_the_store_stays_locked_past_every_retry, "given-up", 40,
        TRACER_NUM_RETRIES="0", TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(failed))
    store = str(tmp_path / ".tracer" / "traces.db")

    assert counters["dropped_sink_failed"] == 40
    assert counters["payload_rows_sink_failed"] == 40
    assert len(payload_rows(failed)) == 40
    assert stored_rows(store, "given-up") == []

    proc = run_cli("import-payloads", str(failed), "--store", store)

    assert proc.returncode == 0, proc.stderr
    assert "replayed 40 rows" in proc.stdout
    assert outputs_by_name(stored_rows(store, "given-up")) == expected_outputs(40)


def test_import_payloads_twice_changes_nothing(store_url, tmp_path):
    store = store_url
    directory = tmp_path / "payloads"
    container = Container("L\x1ftwice")
    rows = [{"id": f"r{i}", "span_id": f"r{i}", "root_span_id": "r0", "output": i,
             "created": "2026-01-01T00:00:00+00:00", **container.columns} for i in range(10)]
    payloads.write(str(directory), [(container, row) for row in rows], "batch")

    assert run_cli("import-payloads", str(directory), "--store", store).returncode == 0
    once = stored_rows(store, "twice")
    assert run_cli("import-payloads", str(directory), "--store", store).returncode == 0

    assert len(once) == 10
    assert stored_rows(store, "twice") == once


def test_every_batch_goes_to_the_all_payloads_dir_and_replays_into_an_equal_store(tmp_path):
    every = tmp_path / "every"
    run_function(programs.copies_every_batch,
                 env=clean_env(TRACER_ALL_PUBLISH_PAYLOADS_DIR=str(every)), cwd=str(tmp_path))
    replayed = str(tmp_path / "replayed.db")

    proc = run_cli("import-payloads", str(every), "--store", replayed)

    assert proc.returncode == 0, proc.stderr
    original = stored_rows(str(tmp_path / ".tracer" / "traces.db"), "copied")
    assert len(original) == 30
    assert stored_rows(replayed, "copied") == original


def test_a_row_over_max_request_size_is_stored_truncated_and_its_full_copy_set_aside(tmp_path):
    failed = tmp_path / "failed"
    run_function(programs.logs_a_row_over_max_request_size,
                 env=clean_env(TRACER_MAX_REQUEST_SIZE="4096",
                               TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(failed)),
                 cwd=str(tmp_path))
    store = str(tmp_path / ".tracer" / "traces.db")
    rows = {row["span_attributes"]["name"]: row for row in stored_rows(store, "oversized")}

    marker = rows["huge"]["output"]
    assert marker["_truncated"] is True
    assert marker["original_bytes"] == 100_002  # the JSON string, quotes included
    assert marker["preview"].startswith('"xxx')
    assert os.path.exists(marker["saved_to"])
    assert rows["huge"]["metadata"] == {"kept": True}
    assert rows["small"]["output"] == "fine"
    assert len(json.dumps(rows["huge"])) < 4096

    assert run_cli("import-payloads", marker["saved_to"], "--store", store).returncode == 0
    restored = {row["span_attributes"]["name"]: row for row in stored_rows(store, "oversized")}
    assert restored["huge"]["output"] == "x" * 100_000


def test_import_payloads_refuses_a_malformed_file_naming_it_and_writes_nothing(store_url,
                                                                             tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tracer_payload": 1, "reason": "batch", "rows": 2}\n'
                   '{"container": "L\\u001fbad", "row": {"id": "a", "output": 1}}\n'
                   'not json\n')

    proc = run_cli("import-payloads", str(bad), "--store", store_url)

    assert proc.returncode == 2
    assert f"{bad}:3" in proc.stderr
    assert stored_rows(store_url, "bad") == []


def test_a_store_that_is_not_a_database_fails_the_flush_with_the_cause_and_keeps_the_rows(
        tmp_path):
    failed = tmp_path / "failed"
    (tmp_path / ".tracer").mkdir()
    (tmp_path / ".tracer" / "traces.db").write_bytes(b"not a database " * 400)
    out = run_function(programs.flushes_into_a_store_that_is_not_a_database,
                       env=clean_env(TRACER_NUM_RETRIES="1",
                                     TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(failed)),
                       cwd=str(tmp_path)).stdout

    assert "FlushError: DatabaseError: file is not a database" in out
    assert "aggregator alive: True" in out
    assert [p.row["span_attributes"]["name"] for p in payload_rows(failed)] == ["kept aside"]
