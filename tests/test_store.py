"""The store's format and its batches, on a store of each backend (``store_url``): rows are
written as msgpack, a batch may hold a row twice, a batch rolled back leaves nothing half
recorded; and SQLite stores from before msgpack still work."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import msgpack
import psycopg
import pytest

from tracer import config, wire
from tracer.wire import unpack_stored
from workers.queue import Pending
from workers.rows import Container, project_id
from workers.store import STORE_ERRORS, StoreReader, open_store


def stored_data(store_path: str, row_id: str) -> tuple[str, bytes | str]:
    conn = sqlite3.connect(store_path)
    try:
        return conn.execute("SELECT typeof(data), data FROM rows WHERE id = ?",
                            (row_id,)).fetchone()
    finally:
        conn.close()


def raw_data(store_url: str, row_id: str) -> bytes | str:
    """The ``data`` column of a row, as the database holds it."""
    if config.is_postgres(store_url):
        with psycopg.connect(store_url) as database:
            found = database.execute("SELECT data FROM rows WHERE id = %s",
                                     (row_id,)).fetchone()
            assert found is not None
            return found[0]
    kind, data = stored_data(store_url, row_id)
    assert kind == "blob"
    return data


def reader(store_url: str) -> StoreReader:
    return open_store(store_url, readonly=True)


def test_rows_are_stored_as_msgpack(store_url):
    container = Container(wire.logs_container("packed"))
    row = {"id": "a", "output": {"answer": 42}, **container.columns}
    with open_store(store_url) as writer:
        writer.write([Pending((container.id, "a"), row, 10, 0, container)])

    data = raw_data(store_url, "a")

    assert isinstance(data, bytes)
    unpacked = unpack_stored(data)
    assert isinstance(unpacked, dict)
    assert unpacked["output"] == {"answer": 42}


def test_a_row_stored_as_json_text_is_read_and_merged_into(logger, store_path, project, rows):
    """Stores written before msgpack hold JSON text: readers and merges take both. (SQLite
    only: no PostgreSQL store was ever written so.)"""
    row_id = "old-row"
    old = {"id": row_id, "project_id": project_id(project), "log_id": "g",
           "created": "2026-01-01T00:00:00+00:00", "output": "old",
           "metadata": {"kept": 1}, "span_attributes": {"name": "old"}}
    logger.flush()  # the aggregator is up and the store exists
    conn = sqlite3.connect(store_path, isolation_level=None)
    conn.execute("INSERT INTO rows (container, id, name, has_error, created, updated, data) "
                 "VALUES (?, ?, 'old', 0, ?, 0, ?)",
                 (f"logs:{project_id(project)}", row_id, old["created"], json.dumps(old)))
    conn.close()

    logger.update_span(id=row_id, metadata={"added": 2})
    [row] = rows()

    assert row["output"] == "old"
    assert row["metadata"] == {"kept": 1, "added": 2}
    assert row["created"] == "2026-01-01T00:00:00+00:00"
    assert stored_data(store_path, row_id)[0] == "blob"



def test_one_batch_holding_a_row_twice_merges_both(store_url):
    """Imports and payload replays can hand the sink one row twice in a batch (rows go in many
    to a statement)."""
    container = Container(wire.logs_container("twice"))
    parts: list[dict[str, Any]] = [{"id": "a", "output": 1, "metadata": {"x": 1}},
                                   {"id": "a", "metadata": {"y": 2}}]
    sink = open_store(store_url)
    sink.write([Pending((container.id, "a"), dict(part, **container.columns), 10, 0, container)
                for part in parts])
    sink.close()

    with reader(store_url) as store:
        [row] = list(store.rows(project="twice"))

    assert row["output"] == 1
    assert row["metadata"] == {"x": 1, "y": 2}


def test_a_batch_rolled_back_leaves_its_new_container_to_be_recorded_by_the_next_write(
        store_url):
    old, new = Container("L\x1fold"), Container("L\x1fnew")

    def pending(container: Container, row_id: str) -> Pending:
        row = {"id": row_id, "span_id": row_id, "root_span_id": row_id, "output": row_id,
               **container.columns}
        return Pending((container.id, row_id), row, 100, 0, container)

    sink = open_store(store_url)
    sink.write([pending(old, "spoiled")])
    spoiled = msgpack.packb([1])  # a stored row that is not a map: no merge into it succeeds
    if config.is_postgres(store_url):
        with psycopg.connect(store_url, autocommit=True) as database:
            database.execute("UPDATE rows SET data = %s WHERE id = 'spoiled'", (spoiled,))
    else:
        conn = sqlite3.connect(store_url, isolation_level=None)
        conn.execute("UPDATE rows SET data = ? WHERE id = 'spoiled'", (spoiled,))
        conn.close()
    with pytest.raises((ValueError, *STORE_ERRORS)):  # rolled back: the row takes no merge
        sink.write([pending(new, "first"), pending(old, "spoiled")])
    assert not sink.store_failed(ValueError())  # (a failure of the row, not of the store)
    sink.write([pending(new, "second")])
    sink.close()

    with reader(store_url) as store:
        assert [row["id"] for row in store.rows(project="new")] == ["second"]
        assert new.id in [c["id"] for c in store.containers()]


def test_an_attachment_recorded_as_stored_stays_so_and_one_that_failed_can_be_stored_later(
        store_url):
    def record(key: str, sha256: str | None, error: str | None) -> None:
        with open_store(store_url) as writer:
            writer.record_attachment(key, sha256=sha256, size=3, filename="a.txt",
                                     content_type="text/plain", error=error, source="logged",
                                     logged=1.0)

    record("a" * 32, "1" * 64, None)
    record("a" * 32, None, "a fork child could not read it")  # a second publication failing
    record("b" * 32, None, "not readable")
    record("b" * 32, "2" * 64, None)  # ... then stored after all

    with reader(store_url) as store:
        found = store.attachments(["a" * 32, "b" * 32, "c" * 32])
    assert sorted(found) == ["a" * 32, "b" * 32]
    assert (found["a" * 32]["status"], found["a" * 32]["sha256"]) == ("done", "1" * 64)
    assert (found["b" * 32]["status"], found["b" * 32]["error"]) == ("done", None)


def test_a_runs_counters_are_updated_in_place_and_its_end_recorded(store_url):
    info = {"pid": 42, "host": "h", "endpoint": "ipc:///x", "started": "2026-01-01T00:00:00"}
    with open_store(store_url) as writer:
        writer.record_run("run-1", info, {"rows_committed": 1})
        writer.record_run("run-1", info, {"rows_committed": 5}, ended=True)

    with reader(store_url) as store:
        (run,) = store.runs()
    assert (run["run_id"], run["pid"], run["endpoint"]) == ("run-1", 42, "ipc:///x")
    assert json.loads(run["counters"]) == {"rows_committed": 5}
    assert run["ended"] is not None


def test_find_experiment_gives_the_oldest_experiment_of_that_name_in_the_project(store_url):
    first = Container(wire.experiment_container("p", "e-1", "nightly"))
    second = Container(wire.experiment_container("p", "e-2", "nightly"))
    with open_store(store_url) as writer:
        for container in (first, second):  # recorded in this order: the first is the oldest
            row = {"id": "r", **container.columns}
            writer.write([Pending((container.id, "r"), row, 10, 0, container)])

        assert writer.find_experiment("p", "nightly") == "e-1"
        assert writer.find_experiment("p", "weekly") is None
        assert writer.find_experiment("q", "nightly") is None
