"""The store's format: rows are written as msgpack, and stores from before that still work."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import msgpack

import tracer
from tracer import wire
from tracer.wire import unpack_stored
from workers.queue import Pending
from workers.rows import Container, project_id

from .conftest import SQLiteSink, Store


def stored_data(store_path: str, row_id: str) -> tuple[str, bytes | str]:
    conn = sqlite3.connect(store_path)
    try:
        return conn.execute("SELECT typeof(data), data FROM rows WHERE id = ?",
                            (row_id,)).fetchone()
    finally:
        conn.close()


def test_rows_are_stored_as_msgpack(logger, store_path, rows):
    with tracer.start_span("new") as span:
        span.log(output={"answer": 42})
    [row] = rows()

    kind, data = stored_data(store_path, row["id"])

    assert kind == "blob"
    unpacked = unpack_stored(data)
    assert isinstance(unpacked, dict)
    assert unpacked["output"] == {"answer": 42}


def test_a_row_stored_as_json_text_is_read_and_merged_into(logger, store_path, project, rows):
    """Stores written before msgpack hold JSON text: readers and merges take both."""
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



def test_one_batch_holding_a_row_twice_merges_both(tmp_path):
    """Imports and payload replays can hand the sink one row twice in a batch (rows go in many
    to a statement)."""
    container = Container(wire.logs_container("twice"))
    parts: list[dict[str, Any]] = [{"id": "a", "output": 1, "metadata": {"x": 1}},
                                   {"id": "a", "metadata": {"y": 2}}]
    path = str(tmp_path / "traces.db")
    sink = SQLiteSink(path)
    sink.write([Pending((container.id, "a"), dict(part, **container.columns), 10, 0, container)
                for part in parts])
    sink.close()

    with Store(path) as store:
        [row] = list(store.rows(project="twice"))

    assert row["output"] == 1
    assert row["metadata"] == {"x": 1, "y": 2}


def test_a_batch_rolled_back_leaves_its_new_container_to_be_recorded_by_the_next_write(tmp_path):
    store_path = str(tmp_path / "traces.db")
    old, new = Container("L\x1fold"), Container("L\x1fnew")

    def pending(container: Container, row_id: str) -> Pending:
        row = {"id": row_id, "span_id": row_id, "root_span_id": row_id, "output": row_id,
               **container.columns}
        return Pending((container.id, row_id), row, 100, 0, container)

    sink = SQLiteSink(store_path)
    sink.write([pending(old, "spoiled")])
    conn = sqlite3.connect(store_path, isolation_level=None)
    conn.execute("UPDATE rows SET data = ? WHERE id = 'spoiled'", (msgpack.packb([1]),))
    conn.close()
    try:  # rolled back: the stored copy of "spoiled" takes no merge
        sink.write([pending(new, "first"), pending(old, "spoiled")])
    except sqlite3.Error:
        pass
    sink.write([pending(new, "second")])
    sink.close()

    with Store(store_path) as store:
        assert [row["id"] for row in store.rows(project="new")] == ["second"]
