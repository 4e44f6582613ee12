"""Retention on a store of each backend (``store_url``): ``StoreWriter.prune`` and
``workers.retention.prune`` (old traces removed whole, with their summaries and text index
entries; then the attachment records and blobs nothing refers to, after a grace period),
``tracer prune`` run as a subprocess, and ``tracer serve --prune-older-than`` pruning by
itself. Time is the stores' own: traces are written with starts in the past, and a prune
asked to act as at a later ``now`` sees records and blobs as that much older."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import threading
import time
from typing import Any

import psycopg
import pytest

from tracer import attachments as tracer_attachments
from tracer import config, wire
from workers import retention
from workers.attachments import _reuse
from workers.queue import Pending
from workers.rows import Container
from workers.store import open_store, summary
from workers.store.base import TraceFilter
from workers.store.sqlite import SQLiteWriter

from .conftest import CLI, Service, clean_env, free_port, run_cli
from .helpers import wait_until
from .postgres import PASSWORD

DAY = 86400.0
NOW = time.time()
OLD = NOW - 40 * DAY  # older than the 30 days the tests prune
NEW = NOW - 1 * DAY
_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> str:
    """A HOME of the test's own: a PostgreSQL store's attachment area is under it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return str(tmp_path)


def span(project: str, root: str, span_id: str, start: float, **fields: Any) -> Pending:
    container = Container(wire.logs_container(project))
    row = dict(fields, id=span_id, span_id=span_id, root_span_id=root,
               span_parents=[root] if span_id != root else None,
               span_attributes={"name": span_id, "type": "task"},
               metrics={"start": start, "end": start + 1}, **container.columns)
    return Pending((container.id, span_id), row, 100, 0, container)


def trace(project: str, start: float, spans: int = 2, **root_fields: Any) -> list[Pending]:
    """A trace of ``spans`` spans starting at ``start`` (the root has ``root_fields``)."""
    root = f"t{next(_ids):06d}"
    return [span(project, root, root, start, **root_fields)] + [
        span(project, root, f"{root}-{i}", start + i) for i in range(1, spans)]


def write(store_url: str, *traces: list[Pending]) -> list[str]:
    """Write the traces; their root span ids."""
    with open_store(store_url) as writer:
        for rows in traces:
            writer.write(rows)
    return [rows[0].row["root_span_id"] for rows in traces]


def roots(store_url: str, project: str = "p") -> list[str]:
    """The traces of a project's logs, as the trace list shows them, oldest first."""
    with open_store(store_url, readonly=True) as reader:
        page = reader.trace_summaries(project=project, limit=1000)
    return [] if page is None else sorted(t["root_span_id"] for t in page.traces)


def stored(store_url: str, project: str = "p") -> list[str]:
    with open_store(store_url, readonly=True) as reader:
        return sorted(row["id"] for row in reader.rows(project=project))


def indexed(store_url: str, word: str) -> int:
    """How many rows the store's text index has under ``word`` (its entries, not through the
    rows: SQLite's index is a table of its own)."""
    if config.is_postgres(store_url):
        with psycopg.connect(store_url) as conn:
            found = conn.execute("SELECT count(*) FROM rows WHERE search @@ "
                                 "plainto_tsquery('simple', %s)", (word,)).fetchone()
            return int(found[0]) if found else 0
    index = sqlite3.connect(store_url)
    try:
        return len(index.execute("SELECT rowid FROM rows_fts WHERE rows_fts MATCH ?",
                                 (word,)).fetchall())
    finally:
        index.close()


def prune(store_url: str, **kwargs: Any) -> dict[str, int]:
    with open_store(store_url) as writer:
        return writer.prune(NOW - 30 * DAY, **kwargs)


# -- traces ----------------------------------------------------------------------------------


def test_old_traces_go_whole_and_newer_ones_stay(store_url):
    old = write(store_url, *(trace("p", OLD + i, spans=3) for i in range(3)))
    new = write(store_url, *(trace("p", NEW + i, spans=2) for i in range(2)))

    counts = prune(store_url)

    assert counts == {"traces": 3, "rows": 9}
    assert roots(store_url) == sorted(new)
    assert set(stored(store_url)) == {*new, *(f"{r}-1" for r in new)}
    assert not set(old) & set(roots(store_url))


def test_a_pruned_traces_text_index_entries_go_with_it(store_url):
    write(store_url, trace("p", OLD, input="ancient question", output="ancient answer"),
          trace("p", NEW, input="recent question", output="recent answer"))
    assert indexed(store_url, "ancient") == 1

    prune(store_url)

    assert indexed(store_url, "ancient") == 0
    assert indexed(store_url, "question") == 1
    with open_store(store_url, readonly=True) as reader:
        found = reader.trace_summaries(project="p", filters=TraceFilter(text="question"))
    assert found is not None and len(found.traces) == 1
    if not config.is_postgres(store_url):  # SQLite's contentless index took the right words
        conn = sqlite3.connect(store_url)
        conn.execute("INSERT INTO rows_fts (rows_fts) VALUES ('integrity-check')")
        conn.close()


def test_a_project_filter_prunes_only_that_projects_traces(store_url):
    write(store_url, trace("keep", OLD), trace("drop", OLD), trace("drop", NEW))

    counts = prune(store_url, project="drop")

    assert counts["traces"] == 1
    assert len(roots(store_url, "keep")) == 1
    assert len(roots(store_url, "drop")) == 1


def test_a_project_the_store_does_not_have_is_refused_by_name(store_url):
    write(store_url, trace("p", OLD))

    with pytest.raises(ValueError, match="no project 'nope' in store"):
        prune(store_url, project="nope")
    assert len(roots(store_url)) == 1


def test_a_dry_run_counts_what_would_go_and_changes_nothing(store_url):
    write(store_url, *(trace("p", OLD + i, spans=2) for i in range(4)), trace("p", NEW))
    before = stored(store_url)

    would = prune(store_url, dry_run=True)

    assert stored(store_url) == before and len(roots(store_url)) == 5
    assert would == prune(store_url) == {"traces": 4, "rows": 8}


def test_a_large_prune_goes_in_batches_reporting_progress_after_each(store_url):
    write(store_url, *(trace("p", OLD + i, spans=2) for i in range(7)), trace("p", NEW))
    told: list[dict[str, int]] = []

    counts = prune(store_url, batch=3, progress=told.append)

    assert counts == {"traces": 7, "rows": 14}
    assert [t["traces"] for t in told] == [3, 6, 7]
    assert len(roots(store_url)) == 1


def test_a_batch_holds_about_prune_rows_rows_and_never_splits_a_trace(store_url,
                                                                       monkeypatch):
    monkeypatch.setattr("workers.store.pruning.PRUNE_ROWS", 4)
    write(store_url, *(trace("p", OLD + i, spans=3) for i in range(3)), trace("p", NEW, spans=9))
    told: list[dict[str, int]] = []

    counts = prune(store_url, progress=told.append)

    assert counts == {"traces": 3, "rows": 9}
    assert [t["traces"] for t in told] == [1, 2, 3]  # 3 rows a batch: two traces would be 6


def test_rows_without_a_trace_go_by_their_created_time(store_url):
    container = Container(wire.logs_container("p"))

    def loose(row_id: str, created: float | str) -> Pending:
        when = created if isinstance(created, str) else \
            time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(created))
        return Pending((container.id, row_id), {"id": row_id, "created": when,
                                                **container.columns}, 100, 0, container)

    with open_store(store_url) as writer:
        writer.write([loose("old", OLD), loose("new", NEW), loose("undated", "whenever")])

    counts = prune(store_url)

    assert counts == {"traces": 0, "rows": 1}
    assert stored(store_url) == ["new", "undated"]


def test_a_prune_beside_a_writer_leaves_every_summary_exact(store_url):
    old = [trace("p", OLD + i, spans=3) for i in range(30)]
    write(store_url, *old)
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_writing() -> None:  # new traces, and late updates to the old ones' spans
        try:
            with open_store(store_url) as writer:
                for i in itertools.count():
                    if stop.is_set():
                        return
                    writer.write(trace("p", NEW + i, spans=2))
                    root = old[i % len(old)][1].row
                    writer.write([span("p", root["root_span_id"], root["id"], OLD + i % 30,
                                       metadata={"late": i})])
        except BaseException as exc:  # reported below
            errors.append(exc)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        prune(store_url, batch=2)
    finally:
        stop.set()
        writer.join(60)

    assert errors == []
    with open_store(store_url, readonly=True) as reader:
        counted: dict[str, int] = {}
        for row in reader.rows(project="p"):
            counted[row["root_span_id"]] = counted.get(row["root_span_id"], 0) + 1
        page = reader.trace_summaries(project="p", limit=10_000)
    assert page is not None
    assert {t["root_span_id"]: t["spans"] for t in page.traces} == counted


def test_a_prune_keeps_a_sqlite_stores_text_index_setting(tmp_path):
    # SQLite only: what its text index covers is a setting of the store (PostgreSQL's covers
    # every span).
    path = str(tmp_path / "roots.db")
    with SQLiteWriter(path, search_index="roots") as writer:
        writer.write(trace("p", OLD))

    retention.prune(path, 30 * DAY)  # this process's TRACER_SEARCH_INDEX is the default, all

    conn = sqlite3.connect(path)
    assert summary.search_mode(conn) == "roots"
    conn.close()


# -- attachments -----------------------------------------------------------------------------


def blob(store_url: str, content: bytes, modified: float) -> str:
    """A blob in the store's attachment area, modified at ``modified``; its sha256."""
    sha = hashlib.sha256(content).hexdigest()
    path = tracer_attachments.blob_path(store_url, sha)
    tracer_attachments.make_private(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(content)
    os.utime(path, (modified, modified))
    return sha


def record(store_url: str, key: str, sha: str) -> None:
    with open_store(store_url) as writer:
        writer.record_attachment(key, sha256=sha, size=1, filename="f.bin",
                                 content_type="application/octet-stream", error=None,
                                 source="logged", logged=NOW)


def reference(key: str) -> dict:
    return {"type": "braintrust_attachment", "key": key, "filename": "f.bin",
            "content_type": "application/octet-stream"}


def blobs_left(store_url: str) -> set[str]:
    return {name for _, _, names in os.walk(os.path.join(
        tracer_attachments.store_dir(store_url), "blobs")) for name in names}


def key(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture
def attachments(store_url):
    """A store whose attachments are in every state, as a prune an hour from now sees them
    with a grace of half an hour: referred to by an old trace (A), by a new one (B), by no
    row (C); blobs with no record, untouched (E) and touched within the grace (F); a blob
    and a record whose key a spooled attachment names (G, H)."""
    later = time.time() + 3600
    shas = {name: blob(store_url, name.encode() * 10, NOW) for name in "ABCEGH"}
    shas["F"] = blob(store_url, b"F" * 10, later - 60)
    write(store_url, trace("p", OLD, output={"file": reference(key(1))}),
          trace("p", NEW, input=[reference(key(2))]))
    for n, name in ((1, "A"), (2, "B"), (3, "C"), (8, "H")):
        record(store_url, key(n), shas[name])
    spool = tracer_attachments.spool_dir(store_url)
    tracer_attachments.make_private(spool)
    with open(os.path.join(spool, key(7) + ".json"), "w") as f:
        json.dump({"key": key(7), "sha256": shas["G"]}, f)
    with open(os.path.join(spool, key(8) + ".json"), "w") as f:
        json.dump({"key": key(8), "sha256": shas["H"]}, f)
    return later, shas


def test_attachments_no_row_refers_to_go_and_referenced_ones_stay(store_url, attachments):
    later, shas = attachments

    counts = retention.prune(store_url, 30 * DAY, grace=1800, now=later)

    assert (counts["traces"], counts["attachments"], counts["blobs"]) == (1, 2, 3)
    assert counts["blob_bytes"] == 30
    assert blobs_left(store_url) == {shas[name] for name in "BFGH"}
    with open_store(store_url, readonly=True) as reader:
        assert sorted(r["key"] for r in reader.attachment_records()) == [key(2), key(8)]


def test_a_dry_run_counts_the_attachments_that_would_go_and_removes_none(store_url,
                                                                          attachments):
    later, _ = attachments
    before = blobs_left(store_url)

    would = retention.prune(store_url, 30 * DAY, grace=1800, now=later, dry_run=True)

    assert (would["traces"], would["attachments"], would["blobs"]) == (1, 2, 3)
    assert blobs_left(store_url) == before
    with open_store(store_url, readonly=True) as reader:
        assert len(reader.attachment_records()) == 4


def test_attachments_within_the_grace_period_stay_whatever_refers_to_them(store_url,
                                                                          attachments):
    counts = retention.prune(store_url, 30 * DAY, grace=1800)  # now: everything is young

    assert (counts["attachments"], counts["blobs"]) == (0, 0)
    assert len(blobs_left(store_url)) == 7


def test_a_blob_a_prune_that_died_left_out_of_the_way_is_put_back(store_url, attachments):
    later, shas = attachments
    path = tracer_attachments.blob_path(store_url, shas["B"])
    os.replace(path, path + retention.COLLECTING)

    retention.prune(store_url, 30 * DAY, grace=1800, now=later)

    assert os.path.exists(path) and not os.path.exists(path + retention.COLLECTING)


def test_storing_the_same_content_again_touches_its_blob(store_url):
    sha = blob(store_url, b"again", OLD)
    path = tracer_attachments.blob_path(store_url, sha)

    assert _reuse(path)
    assert os.stat(path).st_mtime > NOW - 60
    assert not _reuse(path + "-absent")


# -- tracer prune ----------------------------------------------------------------------------


def test_tracer_prune_removes_old_traces_and_says_how_many(store_url, home):
    write(store_url, trace("p", OLD, spans=3), trace("p", NEW))
    env = clean_env(HOME=home)

    dry = run_cli("prune", "--older-than", "30d", "--dry-run", "--store", store_url, env=env)
    done = run_cli("prune", "--older-than", "30d", "--store", store_url, env=env)

    assert dry.returncode == 0, dry.stderr
    assert "would remove 1 traces (3 rows), 0 attachment records" in dry.stdout
    assert done.returncode == 0, done.stderr
    assert "removed 1 traces (3 rows), 0 attachment records, 0 attachment blobs" in done.stdout
    assert len(roots(store_url)) == 1
    assert PASSWORD not in dry.stdout + done.stdout + done.stderr


@pytest.mark.parametrize("given", ["30", "3x", "0d", "-5d", "d", "1e3d"])
def test_tracer_prune_refuses_a_duration_it_cannot_read(given, tmp_path):
    proc = run_cli("prune", f"--older-than={given}", "--store", str(tmp_path / "t.db"))

    assert proc.returncode == 2
    assert f"--older-than {given!r}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "t.db").exists()


def test_tracer_prune_of_a_store_that_does_not_exist_makes_none(tmp_path):
    proc = run_cli("prune", "--older-than", "30d", "--store", str(tmp_path / "absent.db"))

    assert proc.returncode == 2
    assert "no store at" in proc.stderr
    assert not (tmp_path / "absent.db").exists()


def test_tracer_prune_of_an_unknown_project_exits_2_naming_it(store_url, home):
    write(store_url, trace("p", OLD))

    proc = run_cli("prune", "--older-than", "30d", "--project", "nope", "--store", store_url,
                   env=clean_env(HOME=home))

    assert proc.returncode == 2
    assert "no project 'nope'" in proc.stderr
    assert len(roots(store_url)) == 1


# -- tracer serve --prune-older-than ---------------------------------------------------------


def test_tracer_serve_prunes_its_store_at_start_and_then_periodically(store_url, home, tmp_path):
    import httpx

    write(store_url, trace("p", OLD), trace("p", NEW))
    port = free_port()
    cmd = [*CLI, "serve", "--store", store_url, "--port", str(port),
           "--prune-older-than", "30d", "--prune-every", "1s"]
    with Service("tracer serve", cmd, str(tmp_path / "serve.log"),
                 clean_env(HOME=home)) as server:
        wait_until(lambda: len(roots(store_url)) == 1, 30, server.log)
        late = write(store_url, trace("p", OLD))  # a trace from a host whose clock was off
        wait_until(lambda: late[0] not in roots(store_url), 30, server.log)
        answered = httpx.get(f"http://127.0.0.1:{port}/api/projects/p/traces", timeout=10)

    assert answered.status_code == 200
    assert len(answered.json()["traces"]) == 1
    assert "pruned" in server.log() and PASSWORD not in server.log()


def test_tracer_serve_refuses_prune_every_without_prune_older_than(tmp_path):
    proc = run_cli("serve", "--store", str(tmp_path / "t.db"), "--prune-every", "1h")

    assert proc.returncode == 2
    assert "--prune-every goes with --prune-older-than" in proc.stderr
