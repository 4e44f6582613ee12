"""The trace server's ingest API (docs/fleet.md): a real ``tracer serve`` on loopback, batches
posted with httpx as an uploading aggregator posts them, read back through the server's JSON
API and through the store itself."""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgpack
import pytest
import zstandard

from tracer import wire
from workers.store import open_store

from .conftest import TraceServer
from .helpers import wait_until

KEY = "tr_ingest-test-key"
PROJECT = "ingest-test"
LOGS = wire.logs_container(PROJECT)
TRACE = 0x1234_5678_9ABC_DEF0


def span_row(span: int, name: str, parent: int | None = None, **fields: Any) -> dict:
    """A span's row as an aggregator makes it (ids formatted as ours are)."""
    span_id = wire.format_id(TRACE, span)
    parents = None if parent is None else [wire.format_id(TRACE, parent)]
    row: dict[str, Any] = {
        "id": span_id, "span_id": span_id, "root_span_id": wire.format_id(TRACE, 1),
        "span_parents": parents, "span_attributes": {"name": name, "type": "task"},
        "metrics": {"start": 1_700_000_000.0 + span, "end": 1_700_000_010.0}}
    row["metrics"].update(fields.pop("metrics", {}))
    row.update(fields)
    return row


def trace_batch() -> list[dict]:
    """One trace: a root and two children, with bytes, scores and metadata."""
    return [
        {"container": LOGS, "row": span_row(2, "retrieve", 1, input="lookup",
                                            output=["doc a", b"\x00\xffraw"])},
        {"container": LOGS, "row": span_row(3, "answer", 1, output="in Antarctica",
                                            metrics={"tokens": 12})},
        {"container": LOGS, "row": span_row(1, "request", input={"question": "penguins?"},
                                            output="answer", scores={"quality": 0.75},
                                            metadata={"model": "m1"})},
    ]


def post_rows(server: TraceServer, entries: list[dict] | None = None, *, key: str | None = KEY,
              body: bytes | None = None, content_type: str = "application/msgpack",
              encoding: str | None = None, headers: dict[str, str] | None = None,
              timeout: float = 60) -> httpx.Response:
    """POST /api/v1/rows: ``entries`` packed as ``content_type`` (or ``body`` as it is)."""
    if body is None:
        document = {"rows": entries if entries is not None else trace_batch(), "batch": "t-1"}
        body = (json.dumps(document).encode() if content_type == "application/json"
                else msgpack.packb(document))
        if encoding == "gzip":
            body = gzip.compress(body)
        elif encoding == "zstd":
            body = zstandard.ZstdCompressor().compress(body)
    sent = {"Content-Type": content_type, **(headers or {})}
    if encoding is not None:
        sent["Content-Encoding"] = encoding
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    return httpx.post(server.url + "/api/v1/rows", content=body, headers=sent, timeout=timeout)


def stored(store: str) -> list[dict]:
    """Every row of the store as its reader gives it, by id ([] without a store)."""
    try:
        with open_store(store, readonly=True) as reader:
            return sorted(reader.rows(), key=lambda row: row["id"])
    except FileNotFoundError:
        return []


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "served.db")


@pytest.fixture
def server(trace_server, store) -> TraceServer:
    """``tracer serve --api-key KEY`` over a store that does not exist yet."""
    served: TraceServer = trace_server(store, "--api-key", KEY)
    return served


def api_get(server: TraceServer, path: str) -> Any:
    response = server.get(path, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


# -- rows in, rows out ------------------------------------------------------------------------


def test_rows_posted_are_committed_and_read_back_through_the_api(server, store):
    response = post_rows(server)
    assert response.status_code == 200, response.text
    assert response.json() == {"committed": 3}

    root = wire.format_id(TRACE, 1)
    traces = api_get(server, f"/api/projects/{PROJECT}/traces")["traces"]
    assert [(t["root_span_id"], t["spans"], t["name"]) for t in traces] == [(root, 3, "request")]
    skeleton = api_get(server, f"/api/traces/{root}")
    assert sorted(s["name"] for s in skeleton["spans"]) == ["answer", "request", "retrieve"]
    row = api_get(server, f"/api/traces/{root}/spans/{root}")["row"]
    assert row["scores"] == {"quality": 0.75} and row["metadata"] == {"model": "m1"}


def test_rows_are_stored_as_the_aggregator_would_store_them(server, store):
    assert post_rows(server).status_code == 200
    rows = {row["span_attributes"]["name"]: row for row in stored(store)}
    assert rows["retrieve"]["output"][1] == "<bytes: 5 bytes b'\\x00\\xffraw'>"  # bytes kept
    assert rows["answer"]["metrics"] == {"start": 1_700_000_003.0, "end": 1_700_000_010.0,
                                         "tokens": 12}
    assert {row["project_name"] for row in rows.values()} == {PROJECT}
    assert {row["log_id"] for row in rows.values()} == {"g"}  # set from the container


def test_a_batch_delivered_twice_changes_nothing(server, store):
    assert post_rows(server).status_code == 200
    first = stored(store)
    second = post_rows(server)
    assert second.status_code == 200 and second.json() == {"committed": 3}
    assert stored(store) == first
    traces = api_get(server, f"/api/projects/{PROJECT}/traces")["traces"]
    assert [t["spans"] for t in traces] == [3]


def test_partial_rows_merge_into_what_is_stored(server, store):
    root = span_row(1, "request", input="q")
    assert post_rows(server, [{"container": LOGS, "row": root}]).status_code == 200
    update = {"id": root["id"], "output": "a", "metadata": {"later": True}}
    assert post_rows(server, [{"container": LOGS, "row": update}]).status_code == 200
    [row] = stored(store)
    assert (row["input"], row["output"], row["metadata"]) == ("q", "a", {"later": True})


@pytest.mark.parametrize("content_type,encoding", [
    ("application/json", None), ("application/json", "gzip"),
    ("application/msgpack", "gzip"), ("application/msgpack", "zstd"),
    ("application/json", "zstd"),
])
def test_json_msgpack_gzip_and_zstd_bodies_are_taken(server, store, content_type, encoding):
    entries = [{"container": LOGS, "row": span_row(1, "request", input="q")}]
    response = post_rows(server, entries, content_type=content_type, encoding=encoding)
    assert response.status_code == 200, response.text
    assert [row["input"] for row in stored(store)] == ["q"]


def test_an_experiments_rows_go_to_the_experiment(server, store):
    container = wire.experiment_container(PROJECT, "exp-1", "baseline")
    row = {"id": "r1", "span_id": "r1", "root_span_id": "r1", "input": "q",
           "scores": {"accuracy": 1}}
    assert post_rows(server, [{"container": container, "row": row}]).status_code == 200
    experiments = api_get(server, f"/api/projects/{PROJECT}/experiments")["experiments"]
    assert [(e["id"], e["name"], e["scores"]) for e in experiments] == [
        ("exp-1", "baseline", {"accuracy": 1})]


def test_an_empty_batch_commits_nothing(server, store):
    response = post_rows(server, [])
    assert response.status_code == 200 and response.json() == {"committed": 0}


# -- bad batches: 400, nothing applied --------------------------------------------------------

BAD_ROWS = {
    "no id": {"span_id": "x"},
    "an id that is not a string": {"id": 12},
    "an unknown field": {"id": "x", "secret_column": 1},
    "a score out of range": {"id": "x", "scores": {"accuracy": 2}},
    "metrics that are not numbers": {"id": "x", "metrics": {"start": "yesterday"}},
    "tags that are not strings": {"id": "x", "tags": [1]},
    "metadata that is not a map": {"id": "x", "metadata": [1, 2]},
    "parents that are not ids": {"id": "x", "span_parents": "p"},
    "a row that is not a map": ["id", "x"],
}


@pytest.mark.parametrize("what", list(BAD_ROWS))
def test_one_bad_row_refuses_the_whole_batch_naming_it(server, store, what):
    entries = trace_batch()
    entries.insert(1, {"container": LOGS, "row": BAD_ROWS[what]})
    response = post_rows(server, entries)
    assert response.status_code == 400, response.text
    assert response.json()["row"] == 1
    assert stored(store) == []


def test_a_json_integer_too_large_to_store_is_400_naming_the_row(server, store):
    entries = [{"container": LOGS, "row": span_row(1, "request")},
               {"container": LOGS, "row": {"id": "x", "output": 2**70}}]
    response = post_rows(server, entries, content_type="application/json")
    assert response.status_code == 400, response.text
    assert response.json()["row"] == 1
    assert stored(store) == []


@pytest.mark.parametrize("levels", [1500, 5000])
def test_a_row_nested_too_deep_to_store_is_refused(server, store, levels):
    deep = '{"d":' * levels + '"bottom"' + "}" * levels
    row = '{"id":"x","input":' + deep + "}"
    body = '{"rows":[{"container":' + json.dumps(LOGS) + ',"row":' + row + "}]}"
    response = post_rows(server, body=body.encode(), content_type="application/json")
    assert response.status_code == 400, response.text
    assert stored(store) == []


@pytest.mark.parametrize("container", ["not a container key", "L\x1f", 12])
def test_a_bad_container_key_is_400_naming_the_row(server, store, container):
    entries = trace_batch() + [{"container": container, "row": {"id": "x"}}]
    response = post_rows(server, entries)
    assert response.status_code == 400, response.text
    assert response.json()["row"] == 3
    assert "container" in response.json()["error"]
    assert stored(store) == []


@pytest.mark.parametrize("body", [
    b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"rows": "many"}),
    msgpack.packb({"rows": [], "extra": 1}), msgpack.packb({"rows": []}) + b"\x00",
    msgpack.packb({"rows": [msgpack.ExtType(5, b"x")]}),
])
def test_a_body_that_is_not_a_batch_is_400(server, store, body):
    response = post_rows(server, body=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_text_that_is_not_utf8_is_400(server, store):
    body = msgpack.packb({"rows": [{"container": LOGS, "row": {"id": "x"}}]})
    body = body.replace(b"\xa1x", b"\xa1\xff")  # the id, as a str that is not UTF-8
    assert post_rows(server, body=body).status_code == 400


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "wrong-key", KEY + "x", KEY[:-1]])
def test_no_key_or_a_wrong_key_is_401(server, store, key):
    response = post_rows(server, key=key)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert stored(store) == []


def test_the_viewers_session_cookie_is_not_taken_for_ingest(server, store):
    signed_in = httpx.post(server.url + "/login", data={"key": KEY, "next": "/"})
    cookies = signed_in.cookies
    assert cookies.get("tracer_session"), "the login form sets the session cookie"
    assert server.get("/api/projects", cookies=cookies).status_code == 200
    body = msgpack.packb({"rows": trace_batch()})
    response = httpx.post(server.url + "/api/v1/rows", content=body, cookies=cookies,
                          headers={"Content-Type": "application/msgpack"})
    assert response.status_code == 401
    assert stored(store) == []


def test_a_server_without_a_key_takes_no_rows_and_still_serves_the_viewer(trace_server, store):
    server = trace_server(store)
    assert post_rows(server, key="anything").status_code == 401
    assert server.get("/api/projects").json() == {"projects": []}


# -- limits -----------------------------------------------------------------------------------


@pytest.fixture
def small(trace_server, store) -> TraceServer:
    """A server whose bodies are limited to 4 KB."""
    served: TraceServer = trace_server(store, "--api-key", KEY, "--max-body", "4K")
    return served


def big_batch(size: int) -> list[dict]:
    return [{"container": LOGS, "row": span_row(1, "request", input="x" * size)}]


def test_a_body_over_the_limit_is_413_with_the_limit(small, store):
    response = post_rows(small, big_batch(8000))
    assert response.status_code == 413, response.text
    assert response.json()["limit"] == 4096
    assert stored(store) == []


def test_a_chunked_body_over_the_limit_is_413(small, store):
    def chunks() -> Iterator[bytes]:
        body = msgpack.packb({"rows": big_batch(8000)})
        for start in range(0, len(body), 1000):
            yield body[start:start + 1000]

    response = httpx.post(small.url + "/api/v1/rows", content=chunks(), timeout=60,
                          headers={"Authorization": f"Bearer {KEY}",
                                   "Content-Type": "application/msgpack"})
    assert response.status_code == 413, response.text
    assert stored(store) == []


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_compressed_body_that_inflates_past_four_times_the_limit_is_413(small, store,
                                                                           encoding):
    # 1 MB of one letter: well under 4 KB compressed, 256 times the limit once inflated.
    response = post_rows(small, big_batch(1_000_000), encoding=encoding)
    assert response.status_code == 413, response.text
    assert stored(store) == []


def test_a_compressed_body_within_the_limits_is_taken(small, store):
    response = post_rows(small, big_batch(10_000), encoding="gzip")  # 10 KB: within 4 x 4 KB
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("content_type,encoding", [
    ("text/plain", None), ("application/x-www-form-urlencoded", None),
    ("application/msgpack", "br"), ("application/msgpack", "gzip, zstd"),
])
def test_an_unknown_content_type_or_encoding_is_415(server, store, content_type, encoding):
    headers = {"Content-Encoding": encoding} if encoding else {}
    response = post_rows(server, body=msgpack.packb({"rows": trace_batch()}),
                         content_type=content_type, headers=headers)
    assert response.status_code == 415, response.text
    assert stored(store) == []


# -- a slow or failing store: 429 and 503 with Retry-After, nothing applied -------------------


@pytest.fixture
def locked(store) -> Iterator[Callable[[], None]]:
    """The store, made, then held locked by a transaction of the test; calling the fixture's
    value lets go of the lock."""
    with open_store(store) as writer:
        writer.schema_version()  # made, at the current schema
    conn = sqlite3.connect(store, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")

    def release() -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    yield release
    release()
    conn.close()


def test_a_locked_store_is_503_with_retry_after_and_nothing_applied(server, store, locked):
    response = post_rows(server)
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert "store" in response.json()["error"]
    locked()
    assert stored(store) == []
    assert post_rows(server).status_code == 200  # the store back: the retry is taken
    assert len(stored(store)) == 3


def test_a_full_write_queue_is_429_with_retry_after(trace_server, store, locked):
    server = trace_server(store, "--api-key", KEY, "--ingest-queue", "3")
    responses: list[httpx.Response] = []
    senders: list[threading.Thread] = []

    def refused() -> httpx.Response | None:
        # A batch of 3 rows fills the queue for as long as the locked store takes to fail it
        # (seconds); a batch posted meanwhile finds no room.
        if not any(sender.is_alive() for sender in senders):
            senders.append(threading.Thread(target=lambda: responses.append(post_rows(server))))
            senders[-1].start()
        responses.append(post_rows(server, [{"container": LOGS, "row": span_row(9, "late")}]))
        return next((r for r in responses if r.status_code == 429), None)

    full = wait_until(refused, 60, "no batch was refused while the queue was full")
    for sender in senders:
        sender.join(60)
    assert int(full.headers["retry-after"]) >= 1
    assert "queue" in full.json()["error"]
    locked()
    assert stored(store) == []  # neither the refused batches nor those the lock failed


def test_a_store_that_cannot_be_made_is_503(trace_server, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    server = trace_server(str(blocker / "traces.db"), "--api-key", KEY)
    response = post_rows(server)
    assert response.status_code == 503, response.text
    assert "retry-after" in response.headers
