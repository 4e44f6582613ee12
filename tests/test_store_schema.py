"""The store's schema version: new stores get the current one, older stores are upgraded by a
writer and read as they are by a reader, newer ones are refused; ``open_store`` picks a backend."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tracer import wire
from workers.queue import Pending
from workers.rows import Container, project_id
from workers.store import SchemaVersionError, open_store, schema
from workers.store.sqlite import SQLiteReader, SQLiteWriter

from .conftest import run_cli

# The tables as every store written before schema versions had them (version 0), with the index
# on `updated` of the oldest ones and a row as JSON text; no attachments table.
VERSION_0 = """
CREATE TABLE rows (container TEXT NOT NULL, id TEXT NOT NULL, span_id TEXT, root_span_id TEXT,
    name TEXT, type TEXT, start REAL, end REAL, has_error INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL, updated REAL NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (container, id));
CREATE INDEX rows_by_root ON rows (root_span_id, start);
CREATE INDEX rows_by_time ON rows (container, start);
CREATE INDEX rows_by_update ON rows (updated);
CREATE TABLE containers (id TEXT PRIMARY KEY, kind TEXT NOT NULL, project_id TEXT NOT NULL,
    project_name TEXT NOT NULL, experiment_id TEXT, experiment_name TEXT, created TEXT NOT NULL);
CREATE TABLE aggregator_runs (run_id TEXT PRIMARY KEY, pid INTEGER, host TEXT, endpoint TEXT,
    started TEXT, updated TEXT, ended TEXT, counters TEXT);
"""


def make_version_0(path: str) -> None:
    container = f"logs:{project_id('old')}"
    row = {"id": "r", "project_id": project_id("old"), "log_id": "g", "output": "kept",
           "created": "2026-01-01T00:00:00+00:00", "span_attributes": {"name": "old"}}
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(VERSION_0)
    conn.execute("INSERT INTO containers VALUES (?, 'project_logs', ?, 'old', NULL, NULL, ?)",
                 (container, project_id("old"), row["created"]))
    conn.execute("INSERT INTO rows (container, id, name, has_error, created, updated, data) "
                 "VALUES (?, 'r', 'old', 0, ?, 0, ?)", (container, row["created"], json.dumps(row)))
    conn.close()


def user_version(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def objects(path: str) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


def pending(project: str, row_id: str, **fields: object) -> Pending:
    container = Container(wire.logs_container(project))
    row = dict(fields, id=row_id, **container.columns)
    return Pending((container.id, row_id), row, 10, 0, container)


def test_a_new_store_has_the_current_schema_version(tmp_path):
    path = str(tmp_path / "traces.db")
    with open_store(path) as writer:
        writer.write([pending("new", "a", output=1)])
        assert writer.schema_version() == schema.VERSION

    assert user_version(path) == schema.VERSION
    assert {"rows", "containers", "aggregator_runs", "attachments"} <= objects(path)


def test_a_new_store_appears_with_its_whole_schema_and_nothing_beside_it(tmp_path):
    """A reader polling for the file while a writer makes it never finds it without its tables
    (the schema is written beside it, then linked into place). The watcher reads the version
    the moment the file appears: before the fix it often read 0 (tables not written yet)."""
    import os
    import threading
    import time

    for attempt in range(10):
        path = str(tmp_path / f"store-{attempt}.db")
        seen: list[int] = []

        def watch(path: str = path, seen: list[int] = seen) -> None:
            deadline = time.monotonic() + 30
            while not os.path.exists(path) and time.monotonic() < deadline:
                pass
            seen.append(user_version(path))

        watcher = threading.Thread(target=watch)
        watcher.start()
        with open_store(path) as writer:
            writer.write([pending("new", "a", output=1)])
        watcher.join(30)
        assert seen == [schema.VERSION]
    leftovers = [name for name in os.listdir(tmp_path) if not name.startswith("store-")]
    assert leftovers == []


def test_a_writer_upgrades_a_version_0_store_and_its_rows_stay(tmp_path):
    path = str(tmp_path / "traces.db")
    make_version_0(path)

    with open_store(path) as writer:
        writer.write([pending("old", "r", metadata={"added": 1})])

    assert user_version(path) == schema.VERSION
    assert "attachments" in objects(path)
    assert "rows_by_update" not in objects(path)
    with open_store(path, readonly=True) as reader:
        [row] = list(reader.rows(project="old"))
        assert reader.attachments(["0" * 32]) == {}
    assert row["output"] == "kept"
    assert row["metadata"] == {"added": 1}
    assert row["created"] == "2026-01-01T00:00:00+00:00"


def test_a_reader_reads_a_version_0_store_as_it_is(tmp_path):
    path = str(tmp_path / "traces.db")
    make_version_0(path)

    with open_store(path, readonly=True) as reader:
        assert reader.schema_version() == 0
        assert [row["output"] for row in reader.rows()] == ["kept"]
        assert reader.attachments(["0" * 32]) == {}  # no attachments table yet

    assert user_version(path) == 0


def test_a_store_of_a_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "traces.db")
    with open_store(path) as writer:
        writer.write([pending("new", "a")])
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    conn.close()
    expected = (f"store {path} has schema version {schema.VERSION + 1}; this tracer knows up to "
                f"{schema.VERSION}: upgrade tracer")

    with pytest.raises(SchemaVersionError) as raised:
        open_store(path, readonly=True)
    assert str(raised.value) == expected
    writer = open_store(path)
    with pytest.raises(SchemaVersionError):
        writer.write([pending("new", "b")])
    writer.close()
    out = run_cli("export", "--store", path)
    assert out.returncode == 2
    assert expected in out.stderr


def test_open_store_picks_the_backend_by_url(tmp_path):
    path = str(tmp_path / "traces.db")

    assert isinstance(open_store(path), SQLiteWriter)
    assert isinstance(open_store(f"sqlite:///{path}"), SQLiteWriter)
    with open_store(f"sqlite:///{path}") as writer:
        writer.write([pending("p", "a")])
    with open_store(path, readonly=True) as reader:
        assert isinstance(reader, SQLiteReader)
        assert reader.location == path
    with pytest.raises(ValueError, match="mysql://...: no backend"):
        open_store("mysql://user:pw@db/traces")  # (the password is not repeated)
