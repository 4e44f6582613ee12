"""The PostgreSQL store's reader on a real server (``tests/postgres.py``): a database that goes
away under a reader (and under ``tracer serve``) and comes back, and reading rows through a
server-side cursor, a chunk at a time. The writer's side of a database that goes away is
tests/test_postgres_sink.py's."""

from __future__ import annotations

import pytest

from tracer import wire
from workers.queue import Pending
from workers.rows import Container
from workers.store import StoreError, open_store
from workers.store.postgres import PostgresReader

from .conftest import CLI, Service, clean_env, free_port
from .helpers import wait_until
from .postgres import PASSWORD


def pending(project: str, row_id: str, **fields: object) -> Pending:
    container = Container(wire.logs_container(project))
    row = dict(fields, id=row_id, span_id=row_id, root_span_id=row_id, **container.columns)
    return Pending((container.id, row_id), row, 10, 0, container)



def test_a_reader_fails_while_its_database_is_away_and_reads_again_once_it_is_back(
        own_postgres_server):
    url = own_postgres_server.database()
    with open_store(url) as writer:
        writer.write([pending("p", "a", output=1)])
    reader = open_store(url, readonly=True)
    assert [row["output"] for row in reader.rows(project="p")] == [1]

    own_postgres_server.shut_down()
    with pytest.raises(StoreError) as raised:
        list(reader.rows(project="p"))
    own_postgres_server.start()

    assert raised.value.failed and PASSWORD not in str(raised.value)
    assert [row["output"] for row in reader.rows(project="p")] == [1]
    reader.close()


def test_tracer_serve_answers_503_while_its_database_is_away_and_serves_again_after(
        own_postgres_server, tmp_path):
    import httpx

    url = own_postgres_server.database()
    with open_store(url) as writer:
        writer.write([pending("served", "root", metrics={"start": 5.0})])
    port = free_port()

    def get() -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/projects", timeout=5)
        except httpx.TransportError:
            return None

    with Service("tracer serve", [*CLI, "serve", "--store", url, "--port", str(port)],
                 str(tmp_path / "serve.log"), clean_env()) as server:
        assert wait_until(get, 30, server.log).status_code == 200
        own_postgres_server.shut_down()
        away = get()
        own_postgres_server.start()
        back = get()

    assert away is not None and away.status_code == 503
    assert "PostgreSQL store postgresql://" in away.json()["error"]
    assert PASSWORD not in away.text and PASSWORD not in server.log()
    assert back is not None and back.status_code == 200
    assert [p["name"] for p in back.json()["projects"]] == ["served"]


def test_rows_and_stored_rows_are_read_in_chunks_through_a_server_side_cursor(postgres_url):
    with open_store(postgres_url) as writer:
        writer.write([pending("chunks", f"r{i:02d}", metrics={"start": float(i)}, output=i)
                      for i in range(10)])

    def cursors_open(reader: PostgresReader) -> int:
        found = reader.conn.execute("SELECT count(*) FROM pg_cursors WHERE name LIKE "
                                    "'tracer_rows_%'").fetchone()
        return found[0] if found else 0

    with open_store(postgres_url, readonly=True) as reader:
        assert isinstance(reader, PostgresReader)
        reader.chunk_rows = 3  # 10 rows: four fetches
        rows = reader.rows(project="chunks")
        first = next(rows)
        open_while_reading = cursors_open(reader)
        rest = list(rows)
        stored = [row["id"] for _, row in reader.stored_rows()]
        open_after = cursors_open(reader)

    assert [first["id"], *(row["id"] for row in rest)] == [f"r{i:02d}" for i in range(10)]
    assert [row["output"] for row in rest] == list(range(1, 10))
    assert stored == [f"r{i:02d}" for i in range(10)]
    assert (open_while_reading, open_after) == (1, 0)
