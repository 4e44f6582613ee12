"""The trace server's ingest API (docs/fleet.md): a real ``tracer serve`` on loopback, batches
posted with httpx as an uploading aggregator posts them, read back through the server's JSON
API and through the store itself."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgpack
import pytest
import zstandard

import tracer
from tracer import attachments as tracer_attachments
from tracer import wire
from workers.store import open_store

from .conftest import TraceServer, run_cli
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
    msgpack.packb({"rows": [], "batch": 5}), msgpack.packb({"rows": [], "batch": "b" * 201}),
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


# -- API keys kept in the store (tracer keys) -------------------------------------------------


def make_key(store: str, name: str, *projects: str) -> str:
    """``tracer keys create --name NAME [--project P ...] --store STORE``: the key printed."""
    args = [arg for project in projects for arg in ("--project", project)]
    done = run_cli("keys", "create", "--name", name, *args, "--store", store)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("tr_") and len(key) == 46  # tr_ and 32 bytes of URL-safe base64
    return key


def ping(server: TraceServer, key: str) -> httpx.Response:
    return server.get("/api/v1/ping", headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
def keyless(trace_server, store_url) -> TraceServer:
    """``tracer serve`` without --api-key over a store of each backend (not made yet): only the
    store's keys are taken."""
    served: TraceServer = trace_server(store_url)
    return served


def test_a_key_made_with_tracer_keys_create_is_taken(keyless, store_url):
    key = make_key(store_url, "uploader")
    wait_until(lambda: ping(keyless, key).status_code == 200, 30, "the key made was never taken")
    response = ping(keyless, key)
    assert response.json() == {"ok": True, "version": tracer.__version__, "key": "uploader"}
    committed = post_rows(keyless, key=key)
    assert committed.status_code == 200, committed.text
    assert len(stored(store_url)) == 3
    traces = keyless.get(f"/api/projects/{PROJECT}/traces").json()["traces"]  # the viewer's
    assert [(t["name"], t["spans"]) for t in traces] == [("request", 3)]


def test_a_batch_delivered_twice_changes_nothing_on_either_backend(keyless, store_url):
    key = make_key(store_url, "uploader")
    assert post_rows(keyless, key=key).status_code == 200
    first = stored(store_url)
    assert post_rows(keyless, key=key).status_code == 200
    assert stored(store_url) == first and len(first) == 3


def test_a_revoked_key_is_refused_within_seconds(keyless, store_url):
    key = make_key(store_url, "leaving")
    wait_until(lambda: ping(keyless, key).status_code == 200, 30)
    done = run_cli("keys", "revoke", "leaving", "--store", store_url)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: ping(keyless, key).status_code == 401, 30,
               "the revoked key was still taken after 30 s")
    assert post_rows(keyless, key=key).status_code == 401


def test_a_key_limited_to_projects_is_403_for_a_row_of_another(keyless, store_url):
    key = make_key(store_url, "team-a", PROJECT, "other")
    wait_until(lambda: ping(keyless, key).status_code == 200, 30)
    elsewhere = {"container": wire.logs_container("not-theirs"), "row": span_row(7, "x")}
    response = post_rows(keyless, [*trace_batch(), elsewhere], key=key)
    assert response.status_code == 403, response.text
    assert response.json()["row"] == 3 and "not-theirs" in response.json()["error"]
    assert stored(store_url) == []  # the whole batch refused
    assert post_rows(keyless, key=key).status_code == 200  # its own projects: taken


def test_the_store_keeps_only_a_hash_of_the_key(store):
    key = make_key(store, "hashed")
    with open(store, "rb") as f:
        assert key.encode() not in f.read()
    with open_store(store, readonly=True) as reader:
        [record] = reader.api_keys()
    assert record["hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert (record["name"], record["projects"], record["revoked"]) == ("hashed", None, None)


def test_tracer_keys_list_shows_names_and_projects_never_a_key(store):
    key = make_key(store, "listed", "p1")
    run_cli("keys", "revoke", "listed", "--store", store)
    make_key(store, "other")
    listing = run_cli("keys", "list", "--store", store)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "REVOKED", "PROJECTS"]
    assert lines[1].startswith("listed ") and lines[1].endswith("p1")
    assert lines[2].startswith("other ") and lines[2].endswith("(any)")
    assert key not in listing.stdout + listing.stderr


def test_a_key_name_is_made_once(store):
    make_key(store, "once")
    again = run_cli("keys", "create", "--name", "once", "--store", store)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert again.stdout == ""


def test_revoking_an_unknown_key_is_an_error(store):
    make_key(store, "known")
    done = run_cli("keys", "revoke", "unknown", "--store", store)
    assert done.returncode == 2 and "no API key named 'unknown'" in done.stderr


@pytest.mark.parametrize("action", ["create", "list", "revoke", "curve"])
def test_every_keys_subcommand_has_help(action):
    done = run_cli("keys", action, "--help")
    assert done.returncode == 0 and f"tracer keys {action}" in done.stdout


def test_tracer_keys_name_still_makes_a_curve_key_pair(tmp_path):
    done = run_cli("keys", str(tmp_path / "pair"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pair.key").exists() and (tmp_path / "pair.key_secret").exists()
    done = run_cli("keys", "curve", str(tmp_path / "second"))
    assert done.returncode == 0 and (tmp_path / "second.key").exists()


def test_no_key_is_written_to_the_servers_log(server, store):
    assert post_rows(server, key="tr_not-a-real-key-but-secret").status_code == 401
    assert post_rows(server).status_code == 200
    server.stop()
    log = server.log()
    assert KEY not in log and "tr_not-a-real-key-but-secret" not in log


# -- runs, ping ---------------------------------------------------------------------------


RUN = {"run_id": "run-on-host-b", "info": {"pid": 4242, "host": "host-b",
                                           "endpoint": "ipc:///tmp/x", "started": "2026-01-01"},
       "counters": {"counters": {"rows_committed": 12}}, "ended": False}


def post_json(server: TraceServer, path: str, document: Any, key: str = KEY) -> httpx.Response:
    return httpx.post(server.url + path, json=document, timeout=60,
                      headers={"Authorization": f"Bearer {key}"})


def test_an_uploading_aggregators_run_is_listed_by_api_stats(server, store):
    assert post_json(server, "/api/v1/runs", RUN).status_code == 200
    ended = {**RUN, "counters": {"counters": {"rows_committed": 20}}, "ended": True}
    assert post_json(server, "/api/v1/runs", ended).status_code == 200
    stats = api_get(server, "/api/stats")
    [run] = stats["runs"]
    assert (run["run_id"], run["host"], run["pid"]) == ("run-on-host-b", "host-b", 4242)
    assert run["counters"] == {"counters": {"rows_committed": 20}} and run["ended"]
    assert stats["ingest"]["queue_max_rows"] == 100_000


@pytest.mark.parametrize("document", [
    [], {"info": RUN["info"]}, {**RUN, "info": {"pid": "x"}}, {**RUN, "ended": "yes"},
    {**RUN, "counters": [1]},
])
def test_a_run_of_another_shape_is_400(server, store, document):
    assert post_json(server, "/api/v1/runs", document).status_code == 400
    assert api_get(server, "/api/stats")["runs"] == []


def test_ping_names_the_key_and_writes_nothing(server, store):
    response = ping(server, KEY)
    assert response.json() == {"ok": True, "version": tracer.__version__, "key": "server"}
    assert ping(server, "wrong").status_code == 401
    assert not os.path.exists(store)


def test_the_ingest_counters_count_refusals_by_reason(server, store):
    post_rows(server, [{"container": LOGS, "row": {"no": "id"}}])
    post_rows(server)
    counters = api_get(server, "/api/stats")["ingest"]["counters"]
    assert counters["refused_bad"] == 1 and counters["rows_committed"] == 3


# -- blobs and attachment records -------------------------------------------------------------

BLOB = b"\x89PNG not really, but bytes all the same" * 100
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
ATTACHMENT_KEY = "0123456789abcdef0123456789abcdef"


def blob(server: TraceServer, method: str, sha: str = BLOB_SHA, content: bytes | None = None,
         key: str = KEY) -> httpx.Response:
    return httpx.request(method, f"{server.url}/api/v1/blobs/{sha}", content=content,
                         timeout=60, headers={"Authorization": f"Bearer {key}",
                                              "Content-Type": "application/octet-stream"})


def test_a_blob_is_asked_for_then_put_then_had(server, store):
    assert blob(server, "HEAD").status_code == 404
    put = blob(server, "PUT", content=BLOB)
    assert put.status_code == 201, put.text
    assert blob(server, "HEAD").status_code == 200
    assert blob(server, "PUT", content=BLOB).status_code == 200  # had it already
    path = tracer_attachments.blob_path(store, BLOB_SHA)
    with open(path, "rb") as f:
        assert f.read() == BLOB
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert os.listdir(os.path.dirname(path)) == [BLOB_SHA]  # nothing left aside


def test_a_blob_whose_bytes_do_not_match_its_digest_is_400(server, store):
    response = blob(server, "PUT", content=BLOB + b"!")
    assert response.status_code == 400 and BLOB_SHA in response.json()["error"]
    assert blob(server, "HEAD").status_code == 404
    blobs = os.path.dirname(tracer_attachments.blob_path(store, BLOB_SHA))
    assert os.listdir(blobs) == []  # the bytes set aside are gone


@pytest.mark.parametrize("name", ["ABC", "0" * 63, "../" + "0" * 61, "g" * 64])
def test_a_blob_name_that_is_not_a_digest_is_400(server, store, name):
    assert blob(server, "PUT", sha=name, content=b"x").status_code in (400, 404)
    assert blob(server, "HEAD", sha=name).status_code in (400, 404)


def test_a_blob_over_max_blob_is_413(trace_server, store):
    server = trace_server(store, "--api-key", KEY, "--max-blob", "1K")
    response = blob(server, "PUT", content=BLOB)
    assert response.status_code == 413 and response.json()["limit"] == 1024

    def chunks() -> Iterator[bytes]:  # no Content-Length: found out while reading
        for start in range(0, len(BLOB), 500):
            yield BLOB[start:start + 500]

    chunked = httpx.put(f"{server.url}/api/v1/blobs/{BLOB_SHA}", content=chunks(), timeout=60,
                        headers={"Authorization": f"Bearer {KEY}"})
    assert chunked.status_code == 413
    assert blob(server, "HEAD").status_code == 404


def test_blobs_need_a_key(server, store):
    assert blob(server, "PUT", content=BLOB, key="wrong").status_code == 401
    assert blob(server, "HEAD", key="wrong").status_code == 401


def attachment_record(**changes: Any) -> dict:
    record = {"key": ATTACHMENT_KEY, "sha256": BLOB_SHA, "size": len(BLOB),
              "filename": "pixel.png", "content_type": "image/png", "error": None,
              "source": "logged", "logged": 1_700_000_000.0}
    record.update(changes)
    return record


def test_an_attachment_recorded_before_its_blob_is_409(server, store):
    response = post_json(server, "/api/v1/attachments", {"attachments": [attachment_record()]})
    assert response.status_code == 409, response.text
    assert response.json()["sha256"] == BLOB_SHA


def test_an_attachment_recorded_after_its_blob_is_served_by_the_viewer(server, store):
    assert blob(server, "PUT", content=BLOB).status_code == 201
    failed = attachment_record(key="f" * 32, sha256=None, error="the file was unreadable")
    response = post_json(server, "/api/v1/attachments",
                         {"attachments": [attachment_record(), failed]})
    assert response.status_code == 200 and response.json() == {"recorded": 2}
    got = server.get(f"/api/attachments/{ATTACHMENT_KEY}",
                     headers={"Authorization": f"Bearer {KEY}"})
    assert got.status_code == 200 and got.content == BLOB
    assert got.headers["content-type"] == "image/png"
    with open_store(store, readonly=True) as reader:
        recorded = reader.attachments([ATTACHMENT_KEY, "f" * 32])
    assert recorded["f" * 32]["status"] == "error"


@pytest.mark.parametrize("record", [
    attachment_record(key="not-a-key"), attachment_record(sha256="abc"),
    attachment_record(size=-1), attachment_record(extra=1), "a string",
])
def test_an_attachment_record_of_another_shape_is_400(server, store, record):
    assert blob(server, "PUT", content=BLOB).status_code == 201
    response = post_json(server, "/api/v1/attachments", {"attachments": [record]})
    assert response.status_code == 400, response.text


def test_tracer_serve_help_documents_the_ingest_limits():
    done = run_cli("serve", "--help")
    assert done.returncode == 0
    for option in ("--max-body", "--max-blob", "--ingest-queue"):
        assert option in done.stdout
