"""``Attachment`` and ``JSONAttachment`` as the reference SDK's ``test_logger.py`` specifies
them: ``data`` (the content, a path read lazily), ``reference`` (a property), the warning for an
unreadable path, and a ``JSONAttachment``'s encoded JSON. Where an attachment is logged, the
rows and bytes are read back from the real aggregator and store."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

import tracer
from tracer.attachments import blob_path

from ..conftest import Store, lookup_attachments
from ..helpers import wait_until


def stored_bytes(store_path: str, key: str) -> bytes:
    """The content the store holds for attachment ``key``, once it is stored."""

    def stored() -> dict | None:
        with Store(store_path) as store:
            info = lookup_attachments(store.conn, [key]).get(key)
        return info if info is not None and info["status"] == "done" else None

    info = wait_until(stored, message=f"attachment {key} never stored")
    with open(blob_path(store_path, info["sha256"]), "rb") as blob:
        return blob.read()


def tracer_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tracer" and r.levelno == logging.WARNING]


# -- Attachment.data ---------------------------------------------------------------------------


def test_the_data_of_a_path_attachment_is_the_files_bytes(tmp_path):
    path = tmp_path / "attachments" / "hello.txt"
    path.parent.mkdir()
    path.write_bytes(b"hello world")

    attachment = tracer.Attachment(data=str(path), filename="hello.txt",
                                   content_type="text/plain")

    assert attachment.data == b"hello world"


def test_a_path_attachment_reads_its_file_on_first_access_not_when_made(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"when made")
    attachment = tracer.Attachment(data=str(path))
    path.write_bytes(b"when read")

    assert attachment.data == b"when read"


def test_a_path_attachment_keeps_what_it_read_on_first_access(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"first read")
    attachment = tracer.Attachment(data=str(path))
    assert attachment.data == b"first read"
    path.write_bytes(b"changed since")

    assert attachment.data == b"first read"


def test_the_data_of_a_bytes_attachment_is_the_bytes():
    attachment = tracer.Attachment(data=b"\x00binary\xff", filename="blob.bin")

    assert attachment.data == b"\x00binary\xff"


def test_the_data_of_an_attachment_of_a_missing_file_raises_oserror_when_read(tmp_path):
    attachment = tracer.Attachment(data=str(tmp_path / "not-there.txt"))

    with pytest.raises(FileNotFoundError):
        attachment.data  # noqa: B018 - the access is what raises


# -- the warning for a path that cannot be read ----------------------------------------------


def test_a_missing_file_logs_one_warning_on_the_tracer_logger_when_made_and_raises_nothing(
        caplog, tmp_path):
    missing = tmp_path / "unreadable.txt"
    with caplog.at_level(logging.WARNING, logger="tracer"):
        tracer.Attachment(data=str(missing), filename="unreadable.txt",
                          content_type="text/plain")

    (warning,) = tracer_warnings(caplog)
    assert "Failed to read file" in warning.getMessage()
    assert f"file not found: {missing}" in warning.getMessage()


def test_a_directory_given_as_the_path_logs_a_warning_when_made(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="tracer"):
        tracer.Attachment(data=str(tmp_path))

    (warning,) = tracer_warnings(caplog)
    assert f"not a regular file: {tmp_path}" in warning.getMessage()


def test_a_readable_file_logs_no_warning(caplog, tmp_path):
    path = tmp_path / "fine.txt"
    path.write_bytes(b"fine")
    with caplog.at_level(logging.DEBUG, logger="tracer"):
        tracer.Attachment(data=str(path))

    assert tracer_warnings(caplog) == []


def test_bytes_log_no_warning(caplog):
    with caplog.at_level(logging.DEBUG, logger="tracer"):
        tracer.Attachment(data=b"in memory")

    assert tracer_warnings(caplog) == []


def test_a_file_written_after_a_warning_but_before_logging_is_stored(
        logger, rows, store_path, tmp_path):
    path = tmp_path / "late.txt"
    attachment = tracer.Attachment(data=str(path))  # warned about: not there yet
    path.write_bytes(b"written in time")
    with tracer.start_span("late file") as span:
        span.log(input=attachment)

    (row,) = rows()

    assert "upload_status" not in row["input"]
    assert stored_bytes(store_path, attachment.key) == b"written in time"


# -- reference: a property ------------------------------------------------------------------


def test_the_reference_of_an_attachment_is_a_property_naming_its_key():
    attachment = tracer.Attachment(data=b"x", filename="x.txt", content_type="text/plain")

    assert attachment.reference == {"type": "braintrust_attachment", "filename": "x.txt",
                                    "content_type": "text/plain", "key": attachment.key}


def test_the_reference_of_an_external_attachment_is_a_property():
    external = tracer.ExternalAttachment(url="https://example.com/a/report.pdf")

    assert external.reference == {"type": "external_attachment", "filename": "report.pdf",
                                  "content_type": "application/pdf",
                                  "url": "https://example.com/a/report.pdf"}


def test_a_logged_attachment_is_replaced_by_its_reference_in_the_row(logger, rows):
    attachment = tracer.JSONAttachment({"foo": "bar"}, filename="test.json")
    with tracer.start_span("extracted") as span:
        span.log(input={"data": attachment})

    (row,) = rows()

    assert row["input"]["data"] == attachment.reference


# -- JSONAttachment --------------------------------------------------------------------------


def test_a_json_attachment_has_the_reference_of_a_json_file():
    attachment = tracer.JSONAttachment({"foo": "bar", "nested": {"array": [1, 2, 3]}})

    reference = attachment.reference
    assert reference["type"] == "braintrust_attachment"
    assert reference["filename"] == "data.json"
    assert reference["content_type"] == "application/json"
    assert reference["key"] == attachment.key


def test_a_json_attachment_keeps_a_custom_filename():
    attachment = tracer.JSONAttachment([{"role": "user", "content": "Hello"}],
                                       filename="transcript.json")

    assert attachment.reference["filename"] == "transcript.json"


def test_the_data_of_a_json_attachment_is_the_values_json():
    value = {"foo": "bar", "nested": {"array": [1, 2, 3], "bool": True}}

    attachment = tracer.JSONAttachment(value)

    assert json.loads(attachment.data.decode("utf-8")) == value


def test_the_data_of_a_json_attachment_is_written_as_json_dumps_writes_it():
    attachment = tracer.JSONAttachment({"a": 1, "b": 2})

    assert attachment.data == b'{"a": 1, "b": 2}'


def test_the_data_of_a_pretty_json_attachment_is_indented_by_two_spaces():
    attachment = tracer.JSONAttachment({"a": 1, "b": 2}, pretty=True)

    assert attachment.data.decode("utf-8") == '{\n  "a": 1,\n  "b": 2\n}'


@pytest.mark.parametrize("value", [[1, 2, 3, 4, 5], "a very long prompt template...", 42, None])
def test_a_json_attachment_of_an_array_or_a_primitive_holds_its_json(value: Any):
    attachment = tracer.JSONAttachment(value)

    assert json.loads(attachment.data) == value


def test_the_data_of_a_json_attachment_is_the_value_when_made_not_as_later_mutated():
    value: dict[str, Any] = {"rows": [1, 2, 3]}
    attachment = tracer.JSONAttachment(value)
    value["rows"].clear()

    assert json.loads(attachment.data) == {"rows": [1, 2, 3]}


def test_a_json_attachment_stores_exactly_its_data(logger, rows, store_path):
    attachment = tracer.JSONAttachment({"transcript": [{"role": "user", "content": "Hi"}]},
                                       pretty=True)
    with tracer.start_span("json") as span:
        span.log(output=attachment)

    (row,) = rows()

    assert row["output"] == attachment.reference
    assert stored_bytes(store_path, attachment.key) == attachment.data
