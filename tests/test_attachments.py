"""Attachments, end to end: logged anywhere in an event, stored beside the row through the real
recorder, spool, aggregator and store, and read back through the real command line."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
from typing import Any

import pytest

import tracer
from tracer.attachments import blob_path, spool_dir
from tracer.stats_client import ask_stats
from workers.attachments import references

from . import attachment_tasks, programs
from .conftest import Store, by_name, clean_env, lookup_attachments, run_cli, run_function

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def recorded(store_path: str, key: str) -> dict | None:
    """What the store's attachments table says about ``key``."""
    with Store(store_path) as store:
        return lookup_attachments(store.conn, [key]).get(key)


def stored_bytes(store_path: str, key: str) -> bytes:
    """The stored content of the attachment ``key`` (which must be stored)."""
    info = recorded(store_path, key)
    assert info is not None and info["status"] == "done", info
    with open(blob_path(store_path, info["sha256"]), "rb") as blob:
        return blob.read()


def refs_of(row: dict) -> list[dict]:
    return list(references(row))


def row_of(store: str, project: str) -> dict:
    with Store(store) as reader:
        (row,) = reader.rows(project=project)
    return row


# -- the reference and the bytes -------------------------------------------------------------


def test_bytes_and_path_attachments_nested_at_several_depths_round_trip_byte_exact(
        logger, rows, store_path, tmp_path):
    big = os.urandom(3 * 2**20 + 17)  # over several of the writer's 1 MiB chunks
    small = os.urandom(1000)
    on_disk = tmp_path / "photo.jpg"
    on_disk.write_bytes(os.urandom(2 * 2**20 + 5))
    with tracer.start_span("nested", input={"top": tracer.Attachment(small, filename="s.bin")}
                           ) as span:
        span.log(output=[[{"deep": {"deeper": tracer.Attachment(str(on_disk))}}]],
                 metadata={"files": [tracer.Attachment(big, filename="big.bin")]})

    (row,) = rows()

    top = row["input"]["top"]
    deeper = row["output"][0][0]["deep"]["deeper"]
    (listed,) = row["metadata"]["files"]
    assert stored_bytes(store_path, top["key"]) == small
    assert stored_bytes(store_path, deeper["key"]) == on_disk.read_bytes()
    assert stored_bytes(store_path, listed["key"]) == big


def test_the_row_holds_the_reference_sdks_reference_in_place_of_the_attachment(logger, rows):
    attachment = tracer.Attachment(b"content", filename="notes.txt", content_type="text/plain")
    with tracer.start_span("referenced") as span:
        span.log(input={"question": "what is this?", "context": attachment})

    (row,) = rows()

    assert row["input"] == {"question": "what is this?", "context": {
        "type": "braintrust_attachment", "filename": "notes.txt", "content_type": "text/plain",
        "key": attachment.key}}


def test_attachment_get_writes_the_stored_bytes_to_a_file(logger, rows, store_path, tmp_path):
    content = os.urandom(50_000)
    with tracer.start_span("fetched") as span:
        span.log(output=tracer.Attachment(content, filename="blob.bin"))
    (row,) = rows()

    proc = run_cli("attachment", "get", row["output"]["key"], "-o", str(tmp_path / "out"),
                   "--store", store_path)

    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").read_bytes() == content


def test_the_same_content_logged_twice_is_stored_once(logger, rows, store_path, tmp_path):
    content = os.urandom(200_000)
    copy_on_disk = tmp_path / "copy.bin"
    copy_on_disk.write_bytes(content)
    with tracer.start_span("first") as span:
        span.log(output=tracer.Attachment(content, filename="a.bin"))
    with tracer.start_span("second") as span:
        span.log(output=tracer.Attachment(str(copy_on_disk)))

    named = by_name(rows())

    first, second = named["first"]["output"], named["second"]["output"]
    assert first["key"] != second["key"]
    first_info = recorded(store_path, first["key"])
    second_info = recorded(store_path, second["key"])
    assert first_info is not None and second_info is not None
    sha = first_info["sha256"]
    assert second_info["sha256"] == sha
    blobs = os.path.dirname(blob_path(store_path, sha))
    assert [name for name in os.listdir(blobs) if name.startswith(sha)] == [sha]
    assert not [name for name in os.listdir(spool_dir(store_path))
                if name.startswith((first["key"], second["key"]))]


def test_an_attachment_object_logged_twice_keeps_one_key(logger, rows, store_path):
    attachment = tracer.Attachment(b"twice", filename="twice.txt")
    with tracer.start_span("twice") as span:
        span.log(input=attachment, output={"again": attachment})

    (row,) = rows()

    assert row["input"]["key"] == row["output"]["again"]["key"] == attachment.key
    assert stored_bytes(store_path, attachment.key) == b"twice"


def test_an_attachment_argument_of_a_traced_function_is_stored(logger, rows, store_path):
    @tracer.traced
    def describe(image):
        return "a cat"

    describe(tracer.Attachment(PNG, filename="cat.png"))

    (row,) = rows()
    assert row["input"]["image"]["content_type"] == "image/png"
    assert stored_bytes(store_path, row["input"]["image"]["key"]) == PNG


def test_a_json_attachment_stores_the_value_as_logged_not_as_later_mutated(
        logger, rows, store_path):
    value: dict[str, Any] = {"rows": [{"i": i, "text": "x" * 10} for i in range(100)],
                             "ratio": float("nan")}
    attachment = tracer.JSONAttachment(value, filename="table.json")
    with tracer.start_span("json") as span:
        span.log(output=attachment)
    value["rows"].clear()

    (row,) = rows()

    assert row["output"]["content_type"] == "application/json"
    stored = json.loads(stored_bytes(store_path, row["output"]["key"]))
    assert stored["rows"][99] == {"i": 99, "text": "xxxxxxxxxx"}
    assert stored["ratio"] == "NaN"


def test_an_external_attachment_is_a_reference_and_nothing_is_uploaded(logger, rows, store_path):
    external = tracer.ExternalAttachment(url="https://example.com/data/report.pdf")
    with tracer.start_span("external") as span:
        span.log(input={"report": external})

    (row,) = rows()

    assert row["input"]["report"] == {
        "type": "external_attachment", "filename": "report.pdf",
        "content_type": "application/pdf", "url": "https://example.com/data/report.pdf"}
    assert not os.path.exists(os.path.join(spool_dir(store_path), "report.pdf"))


# -- what goes wrong -------------------------------------------------------------------------


def test_a_missing_file_warns_and_its_reference_says_so_and_the_row_is_kept(tmp_path):
    missing = tmp_path / "not-there.png"
    proc = run_function(programs.logs_an_attachment_of_a_missing_file, str(missing),
                        env=clean_env(), cwd=str(tmp_path))
    store = str(tmp_path / ".tracer" / "traces.db")

    row = row_of(store, "missing")

    image = row["input"]["image"]
    assert row["output"] == "answered"
    assert image["upload_status"] == "error"
    assert image["error_message"] == f"file not found: {missing}"
    assert f"file not found: {missing}" in proc.stderr
    info = recorded(store, image["key"])
    assert info is not None
    assert info["status"] == "error"


def test_an_attachment_over_the_size_limit_is_refused_with_a_warning(tmp_path):
    proc = run_function(programs.logs_an_attachment_of_5000_bytes,
                        env=clean_env(TRACER_MAX_ATTACHMENT_SIZE="4096"), cwd=str(tmp_path))
    store = str(tmp_path / ".tracer" / "traces.db")

    reference = row_of(store, "limit")["output"]

    assert reference["upload_status"] == "error"
    assert "5000 bytes is over the attachment size limit of 4096" in reference["error_message"]
    assert "TRACER_MAX_ATTACHMENT_SIZE" in proc.stderr
    info = recorded(store, reference["key"])
    assert info is not None
    assert info["status"] == "error"


def test_a_failed_attachment_never_loses_the_row_and_is_counted(tmp_path):
    (tmp_path / ".tracer").mkdir()
    # The attachment area is a file: every write into it fails, retries included.
    (tmp_path / ".tracer" / "traces.attachments").write_bytes(b"in the way")
    proc = run_function(programs.logs_an_attachment_that_cannot_be_written,
                        env=clean_env(TRACER_NUM_RETRIES="1"), cwd=str(tmp_path))
    store = str(tmp_path / ".tracer" / "traces.db")

    row = row_of(store, "unwritable")

    counters = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["output"] == 42
    assert row["input"]["filename"] == "lost.bin"
    assert counters["senders_attachments_failed"] == 1
    assert counters["senders_attachment_write_retries"] == 1
    assert "could not write attachment 'lost.bin'" in proc.stderr


def test_show_and_export_say_a_failed_attachment_was_not_stored(tmp_path):
    (tmp_path / ".tracer").mkdir()
    (tmp_path / ".tracer" / "traces.attachments").write_bytes(b"in the way")
    run_function(programs.logs_an_attachment_that_is_not_stored,
                 env=clean_env(TRACER_NUM_RETRIES="0"), cwd=str(tmp_path))
    store = str(tmp_path / ".tracer" / "traces.db")

    shown = run_cli("show", "--last", "--store", store)
    exported = run_cli("export", "--store", store, "--with-attachments", str(tmp_path / "out"))

    assert "attachment lost.bin (application/octet-stream) missing" in shown.stdout
    reference = json.loads(exported.stdout)["input"]
    assert reference["upload_status"] == "missing"
    assert os.listdir(tmp_path / "out") == []


# -- images --------------------------------------------------------------------------------


def test_image_urls_and_data_urls_are_kept_as_logged_and_flagged(logger, rows):
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/photos/cat.JPG?w=200"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/render?id=7"}},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]}]
    with tracer.start_span("vision", type="llm", input=messages) as span:
        span.log(output="https://example.com/out.webp", metadata={"page": "https://example.com/"})

    (row,) = rows()

    assert row["input"] == messages
    assert row["output"] == "https://example.com/out.webp"
    assert row["_images"] == {
        "/input/0/content/1/image_url/url": "url",
        "/input/0/content/2/image_url/url": "image_url",
        "/input/0/content/3/image_url/url": "data_url",
        "/output": "url",
    }


def test_a_base64_image_over_the_inline_limit_becomes_an_attachment(logger, rows, store_path):
    image = PNG + os.urandom(100_000)
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    with tracer.start_span("big image") as span:
        span.log(input=[{"type": "image_url", "image_url": {"url": data_url}}])

    (row,) = rows()

    reference = row["input"][0]["image_url"]["url"]
    assert reference["type"] == "braintrust_attachment"
    assert reference["content_type"] == "image/png"
    assert reference["filename"] == "image.png"
    assert stored_bytes(store_path, reference["key"]) == image
    assert row["_images"] == {"/input/0/image_url/url": "attachment"}


def test_bare_base64_of_a_known_format_over_the_limit_becomes_an_attachment(
        logger, rows, store_path):
    pdf = b"%PDF-1.7\n" + os.urandom(80_000)
    with tracer.start_span("bare") as span:
        span.log(output={"document": base64.b64encode(pdf).decode()})

    (row,) = rows()

    reference = row["output"]["document"]
    assert reference["content_type"] == "application/pdf"
    assert stored_bytes(store_path, reference["key"]) == pdf


def test_long_base64_of_unknown_content_stays_in_the_row(logger, rows):
    text = base64.b64encode(os.urandom(80_000)).decode()
    with tracer.start_span("opaque") as span:
        span.log(output=text)

    (row,) = rows()

    assert row["output"] == text


# -- processes -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_pool_worker_logging_an_attachment_stores_it(logger, rows, store_path, method):
    contents = [os.urandom(10_000 + i) for i in range(3)]
    with tracer.TracedPool(2, context=multiprocessing.get_context(method)) as pool:
        keys = pool.map(attachment_tasks.log_bytes, contents)

    stored = rows()

    assert len(stored) == 3
    assert sorted(refs_of(row)[0]["key"] for row in stored) == sorted(keys)
    assert [stored_bytes(store_path, key) for key in keys] == contents


def test_a_bare_fork_child_leaving_through_os_exit_stores_its_attachment(
        logger, rows, store_path):
    content = os.urandom(30_000)
    with tracer.start_span("parent"):
        pid = os.fork()
        if pid == 0:  # no flush: os._exit itself must deliver the attachment first
            try:
                attachment_tasks.log_bytes(content)
            finally:
                os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    named = by_name(rows())

    key = named["worker attachment"]["output"]["file"]["key"]
    assert stored_bytes(store_path, key) == content


def test_a_process_exiting_without_flush_stores_its_attachments(tmp_path):
    out = run_function(programs.logs_an_attachment_and_exits_without_flush, env=clean_env(),
                       cwd=str(tmp_path)).stdout
    store = str(tmp_path / ".tracer" / "traces.db")

    assert stored_bytes(store, out.strip()) == b"stored at exit" * 1000


def test_a_standalone_aggregator_on_this_host_receives_attachments(standalone_aggregator):
    out = run_function(programs.logs_an_attachment_over_tcp,
                       env=clean_env(TRACER_ENDPOINT=standalone_aggregator.endpoint)).stdout
    standalone_aggregator.stop()

    assert stored_bytes(standalone_aggregator.store, out.strip()) == b"over tcp"


# -- the command line ------------------------------------------------------------------------


def test_show_lists_a_spans_attachments(logger, rows, store_path):
    with tracer.start_span("with files") as span:
        span.log(input=tracer.Attachment(b"x" * 3000, filename="notes.txt"),
                 output=tracer.ExternalAttachment("https://example.com/a.png"))
    (row,) = rows()

    proc = run_cli("show", row["root_span_id"], "--store", store_path)

    assert proc.returncode == 0, proc.stderr
    assert f"attachment notes.txt (text/plain, 2.9 KiB) done  key {row['input']['key']}" \
        in proc.stdout
    assert "attachment a.png (image/png) external https://example.com/a.png" in proc.stdout


def test_export_with_attachments_writes_each_as_key_dash_filename(
        logger, rows, store_path, project, tmp_path):
    with tracer.start_span("exported") as span:
        span.log(input={"a": tracer.Attachment(b"first", filename="a.txt"),
                        "b": tracer.Attachment(b"second", filename="../b.txt")})
    (row,) = rows()
    a, b = row["input"]["a"], row["input"]["b"]

    proc = run_cli("export", "--store", store_path, "--project", project,
                   "--with-attachments", str(tmp_path / "files"))

    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "files")) == sorted([f"{a['key']}-a.txt",
                                                             f"{b['key']}-b.txt"])
    assert (tmp_path / "files" / f"{a['key']}-a.txt").read_bytes() == b"first"
    (exported,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert exported["input"]["a"]["upload_status"] == "done"


def test_attachment_get_of_an_unknown_key_exits_1_saying_so(logger, rows, store_path):
    with tracer.start_span("anything"):
        pass
    rows()

    proc = run_cli("attachment", "get", "0" * 32, "--store", store_path)

    assert proc.returncode == 1
    assert "no attachment with this key" in proc.stderr
    assert proc.stdout == ""


def test_stats_count_the_attachments_stored(logger, rows):
    with tracer.start_span("counted") as span:
        span.log(output=tracer.Attachment(os.urandom(1000), filename="c.bin"))
    rows()

    stats = ask_stats(os.environ["TRACER_ENDPOINT"])
    assert stats is not None
    counters = stats["counters"]

    assert counters["attachments_stored"] >= 1
    assert counters["senders_attachments_spooled"] >= 1
