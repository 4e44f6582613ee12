"""The store's schema version: new stores get the current one, older stores are upgraded by a
writer and read as they are by a reader (a store written by an older tracer, kept in
``tests/fixtures/``, included), newer ones are refused by every way in, on both backends;
``open_store`` picks a backend."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from tracer import config, wire
from workers.queue import Pending
from workers.rows import Container, project_id
from workers.store import SchemaVersionError, open_store, postgres, schema
from workers.store.base import TraceFilter
from workers.store.sqlite import SQLiteReader, SQLiteWriter

from .conftest import clean_env, run_cli
from .postgres import PASSWORD

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

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


def test_a_new_store_has_the_current_schema_version(store_url):
    current = postgres.VERSION if config.is_postgres(store_url) else schema.VERSION
    with open_store(store_url) as writer:
        writer.write([pending("new", "a", output=1)])
        assert writer.schema_version() == current

    with open_store(store_url, readonly=True) as reader:
        assert reader.schema_version() == current
        assert [row["output"] for row in reader.rows(project="new")] == [1]
    if not config.is_postgres(store_url):
        assert user_version(store_url) == schema.VERSION
        assert {"rows", "containers", "aggregator_runs", "attachments"} <= objects(store_url)


# SQLite only, from here to the older stores: how a store file comes to be, the versions
# before PostgreSQL stores existed, a path or a sqlite:/// URL.
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


# -- a store written by an older tracer -------------------------------------------------------


@pytest.fixture
def version_1_store(tmp_path) -> str:
    """A copy of ``fixtures/store-v1.db`` (and its attachment area): written by tracer at
    6d8b2fc, schema version 1 (``fixtures/make_store_v1.py``): in the project ``old-project``
    a trace of three spans (an attachment in one), a failed span, and two scored cases of the
    experiment ``old-experiment``."""
    shutil.copyfile(os.path.join(FIXTURES, "store-v1.db"), tmp_path / "store-v1.db")
    shutil.copytree(os.path.join(FIXTURES, "store-v1.attachments"),
                    tmp_path / "store-v1.attachments")
    return str(tmp_path / "store-v1.db")


def test_a_store_written_by_an_older_tracer_is_upgraded_with_its_rows_intact(version_1_store):
    with open_store(version_1_store, readonly=True) as reader:
        assert reader.schema_version() == 1
        before = list(reader.rows())

    with open_store(version_1_store) as writer:
        assert writer.schema_version() == schema.VERSION

    assert user_version(version_1_store) == schema.VERSION
    with open_store(version_1_store, readonly=True) as reader:
        assert list(reader.rows()) == before
    assert len(before) == 6
    by_name = {row["span_attributes"]["name"]: row for row in before}
    assert by_name["llm call"]["output"] == "andromeda"
    assert by_name["failing"]["error"] == "ZeroDivisionError: division by zero"
    assert by_name["case 2"]["scores"] == {"accuracy": 0.5}


def test_an_upgraded_older_store_has_its_trace_summaries_and_text_index(version_1_store):
    with open_store(version_1_store) as writer:
        writer.schema_version()

    with open_store(version_1_store, readonly=True) as reader:
        page = reader.trace_summaries(project="old-project")
        found = reader.trace_summaries(project="old-project",
                                       filters=TraceFilter(text="galaxy"))
        errors = reader.trace_summaries(project="old-project", filters=TraceFilter(errors=True))
    assert page is not None and found is not None and errors is not None
    summaries = {t["name"]: t for t in page.traces}
    assert sorted(summaries) == ["ask", "failing"]
    assert (summaries["ask"]["spans"], summaries["ask"]["tokens"]) == (3, 12)
    assert [t["name"] for t in found.traces] == ["ask"]
    assert [t["name"] for t in errors.traces] == ["failing"]


def test_the_trace_servers_queries_answer_from_an_upgraded_older_store(version_1_store):
    with open_store(version_1_store) as writer:
        writer.schema_version()

    with open_store(version_1_store, readonly=True) as reader:
        projects = reader.projects()
        page = reader.trace_summaries(project="old-project")
        assert page is not None
        ask = next(t for t in page.traces if t["name"] == "ask")
        skeleton = reader.trace_skeleton(ask["root_span_id"])
        experiments = reader.experiments("old-project")
        assert skeleton is not None and experiments is not None
        llm = next(s for s in skeleton["spans"] if s["name"] == "llm call")
        row = reader.span_row(ask["root_span_id"], llm["span_id"])
        (experiment,) = experiments
        compared = reader.compare_experiments(experiment["id"], experiment["id"])

    assert [(p["name"], p["traces"], p["experiments"]) for p in projects] == [
        ("old-project", 2, 1)]
    assert [s["name"] for s in skeleton["spans"]] == ["ask", "llm call", "attach"]
    assert row is not None and row["output"] == "andromeda"
    assert (experiment["name"], experiment["traces"]) == ("old-experiment", 2)
    assert experiment["scores"] == {"accuracy": 0.75}
    assert compared is not None and [r["status"] for r in compared["rows"]] == ["same", "same"]


def test_an_attachment_of_an_older_store_is_still_got(version_1_store, tmp_path):
    with open_store(version_1_store) as writer:
        writer.schema_version()
    with open_store(version_1_store, readonly=True) as reader:
        (record,) = reader.attachment_records()

    proc = run_cli("attachment", "get", record["key"], "-o", str(tmp_path / "out"),
                   "--store", version_1_store)

    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").read_bytes() == b"old chart bytes"


# -- a store newer than this code, on both backends ----------------------------------------


def make_newer(store_url: str) -> tuple[int, str]:
    """A store of each backend, its schema version then set one past what this code knows;
    that version and the message that refuses it."""
    with open_store(store_url) as writer:
        writer.write([pending("new", "a")])
        location = writer.location
    if config.is_postgres(store_url):
        import psycopg

        newer = postgres.VERSION + 1
        with psycopg.connect(store_url, autocommit=True) as database:
            database.execute("UPDATE tracer_schema SET version = %s", (newer,))
    else:
        newer = schema.VERSION + 1
        conn = sqlite3.connect(store_url, isolation_level=None)
        conn.execute(f"PRAGMA user_version = {newer}")
        conn.close()
    return newer, (f"store {location} has schema version {newer}; this tracer knows up to "
                   f"{newer - 1}: upgrade tracer")


def test_a_newer_store_is_refused_by_the_reader_and_the_writer(store_url):
    _, message = make_newer(store_url)

    with pytest.raises(SchemaVersionError) as by_reader:
        open_store(store_url, readonly=True)
    writer = open_store(store_url)
    with pytest.raises(SchemaVersionError) as by_writer:
        writer.write([pending("new", "b")])
    writer.close()

    assert str(by_reader.value) == str(by_writer.value) == message
    assert PASSWORD not in message


@pytest.mark.parametrize("command", [("serve", "--port", "0"), ("migrate",), ("export",),
                                     ("prune", "--older-than", "30d")])
def test_a_newer_store_is_refused_by_the_commands_with_exit_2_and_the_message(
        store_url, command, tmp_path):
    _, message = make_newer(store_url)

    proc = run_cli(*command, "--store", store_url, env=clean_env(HOME=str(tmp_path)))

    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_newer_store_is_refused_as_the_source_of_a_copy(store_url, tmp_path):
    _, message = make_newer(store_url)

    proc = run_cli("migrate", "--from", store_url, "--to", str(tmp_path / "copy.db"),
                   env=clean_env(HOME=str(tmp_path)))

    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
