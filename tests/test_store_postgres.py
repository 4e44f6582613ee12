"""The PostgreSQL store as such, on a real server (``tests/postgres.py``): its schema version
and migration, several writers on one database at once, a store that cannot be reached, and no
password in what it says. What both backends answer alike is in the tests parametrised over
``store_url`` (tests/unit/test_store_queries.py, tests/test_store_schema.py)."""

from __future__ import annotations

import random
import subprocess
import threading

import psycopg
import pytest

from tracer import wire
from workers.queue import Pending
from workers.rows import Container
from workers.store import STORE_ERRORS, SchemaVersionError, StoreError, open_store, postgres
from workers.store.postgres import PostgresReader, PostgresWriter

from .conftest import CLI, Service, clean_env, free_port, python_command, run_cli
from .helpers import wait_until
from .postgres import PASSWORD


def pending(project: str, row_id: str, **fields: object) -> Pending:
    container = Container(wire.logs_container(project))
    row = dict(fields, id=row_id, span_id=row_id, root_span_id=row_id, **container.columns)
    return Pending((container.id, row_id), row, 10, 0, container)


def test_open_store_picks_postgres_for_its_urls_and_hides_the_password(postgres_url):
    writer = open_store(postgres_url)
    writer.write([pending("p", "a", output=1)])
    reader = open_store(postgres_url.replace("postgresql://", "postgres://"), readonly=True)

    assert isinstance(writer, PostgresWriter) and isinstance(reader, PostgresReader)
    assert PASSWORD not in writer.location and PASSWORD not in reader.location
    assert writer.location == postgres_url.replace(PASSWORD, "***")
    assert [row["output"] for row in reader.rows(project="p")] == [1]
    writer.close()
    reader.close()


def test_a_new_database_gets_the_current_schema_version(postgres_url):
    with open_store(postgres_url) as writer:
        writer.write([pending("p", "a")])
        assert writer.schema_version() == postgres.VERSION
    with open_store(postgres_url, readonly=True) as reader:
        assert reader.schema_version() == postgres.VERSION


def test_writers_opening_a_new_database_at_once_migrate_it_once(postgres_url):
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            with open_store(postgres_url) as writer:
                writer.write([pending("p", f"row{n}")])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM tracer_schema").fetchall() == [
            (postgres.VERSION,)]
        assert conn.execute("SELECT count(*) FROM rows").fetchone() == (4,)


def test_a_database_of_a_newer_schema_is_refused_with_the_usual_message(postgres_url):
    with open_store(postgres_url) as writer:
        writer.write([pending("p", "a")])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE tracer_schema SET version = %s", (postgres.VERSION + 1,))
    location = postgres_url.replace(PASSWORD, "***")
    expected = (f"store {location} has schema version {postgres.VERSION + 1}; this tracer "
                f"knows up to {postgres.VERSION}: upgrade tracer")

    with pytest.raises(SchemaVersionError) as raised:
        open_store(postgres_url, readonly=True)
    assert str(raised.value) == expected
    writer = open_store(postgres_url)
    with pytest.raises(SchemaVersionError):
        writer.write([pending("p", "b")])
    assert writer.store_failed(SchemaVersionError(location, 9, 1))
    writer.close()


def test_a_database_without_a_store_is_no_store_to_read(postgres_url):
    with pytest.raises(FileNotFoundError, match="no store at"):
        open_store(postgres_url, readonly=True)


def test_an_unreachable_database_fails_each_write_as_the_store_without_the_password():
    url = f"postgresql://tracer:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    writer = open_store(url)  # opens on first use: the constructor never fails

    with pytest.raises(StoreError) as raised:
        writer.write([pending("p", "a")])

    assert isinstance(raised.value, STORE_ERRORS)
    assert writer.store_failed(raised.value)
    assert PASSWORD not in str(raised.value)
    writer.close()


def test_the_cli_reads_a_postgres_store_and_never_prints_its_password(postgres_url):
    with open_store(postgres_url) as writer:
        writer.write([pending("cli", "a", output="hello")])

    out = run_cli("export", "--store", postgres_url, "--project", "cli")

    assert '"output": "hello"' in out.stdout or '"output":"hello"' in out.stdout
    missing = run_cli("export", "--store", postgres_url.rsplit("/", 1)[0] + "/absent")
    assert missing.returncode != 0
    assert PASSWORD not in missing.stdout + missing.stderr


# -- several writers at once -----------------------------------------------------------------

KEYS = 40
ROUNDS = 6


def write_overlapping(url: str, writer: int, seed: int) -> None:
    """One of several writers: every round, every key of the shared set gets a field of this
    writer's merged into its metadata, in batches of keys in a random order (two writers'
    batches overlap on most keys, in different orders)."""
    rng = random.Random(seed)
    with open_store(url) as store:
        for round_ in range(ROUNDS):
            keys = list(range(KEYS))
            rng.shuffle(keys)
            for start in range(0, KEYS, 10):
                store.write([pending("many", f"k{k:03d}", metadata={f"w{writer}": round_},
                                     metrics={"start": 1000.0 + k},
                                     scores={f"s{writer}": 1.0})
                             for k in keys[start:start + 10]])


def test_four_writers_in_four_processes_lose_no_merge_and_duplicate_nothing(postgres_url):
    with open_store(postgres_url) as store:  # the schema first: the race under test is rows
        store.write([pending("many", "k000")])
    children = [subprocess.Popen(python_command(write_overlapping, postgres_url, w, w),
                                 env=clean_env(), stderr=subprocess.PIPE, text=True)
                for w in range(4)]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err

    with open_store(postgres_url, readonly=True) as reader:
        rows = list(reader.rows(project="many"))
        page = reader.trace_summaries(project="many", limit=1000)
    assert len(rows) == KEYS
    assert sorted(row["id"] for row in rows) == [f"k{k:03d}" for k in range(KEYS)]
    for row in rows:
        assert row["metadata"] == {f"w{w}": ROUNDS - 1 for w in range(4)}, row["id"]
        assert row["scores"] == {f"s{w}": 1.0 for w in range(4)}
    assert page is not None and len(page.traces) == KEYS
    assert all(t["spans"] == 1 and t["scores"] == {f"s{w}": 1.0 for w in range(4)}
               for t in page.traces)


def test_tracer_serve_answers_its_api_from_a_postgres_store(postgres_url, tmp_path):
    import httpx

    root = "served-root"
    with open_store(postgres_url) as writer:
        writer.write([pending("served", root, input="hello", metrics={"start": 5.0})])
    port = free_port()

    with Service("tracer serve", [*CLI, "serve", "--store", postgres_url, "--port", str(port)],
                 str(tmp_path / "serve.log"), clean_env()) as server:
        def projects() -> list | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/projects", timeout=5).json()
            except httpx.TransportError:
                return None

        listed = wait_until(projects, 30, server.log)
        traces = httpx.get(f"http://127.0.0.1:{port}/api/projects/served/traces",
                           timeout=5).json()
        skeleton = httpx.get(f"http://127.0.0.1:{port}/api/traces/{root}", timeout=5).json()

    assert [p["name"] for p in (listed["projects"] if isinstance(listed, dict) else listed)] \
        == ["served"]
    assert root in str(traces) and root in str(skeleton)
    assert PASSWORD not in server.log()
