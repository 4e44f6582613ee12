"""Every command of the ``tracer`` CLI that reads or writes a store, on a PostgreSQL store
named by ``--store postgresql://...`` and by ``TRACER_STORE=postgresql://...``; and
``Experiment.summarize()`` of an experiment stored there. The store is written by a real
traced program through its aggregator (``programs.traces_spans_an_experiment_and_an_attachment``:
a trace with an attachment in the project ``migrated``, a scored case in its experiment
``exp``); the commands run as subprocesses. Nothing any of them prints carries the password."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from workers import payloads
from workers.rows import Container
from workers.store import open_store

from . import programs
from .conftest import clean_env, run_cli, run_function
from .helpers import wait_until
from .postgres import PASSWORD, PostgresServer

#: How a command is told its store: the option, or the environment.
HOW = ["--store", "TRACER_STORE"]


@dataclass(frozen=True)
class Written:
    url: str  # the store (its password included)
    home: str  # HOME of the program that wrote it: the store's local attachment area is there


@pytest.fixture(scope="module")
def written(postgres_server: PostgresServer, tmp_path_factory) -> Written:
    """A PostgreSQL store written by a traced program, its aggregator's run ended."""
    home = str(tmp_path_factory.mktemp("pg-cli-home"))
    url = postgres_server.database()
    run_function(programs.traces_spans_an_experiment_and_an_attachment, url,
                 env=clean_env(HOME=home), cwd=home)

    def ended() -> bool:
        with open_store(url, readonly=True) as reader:
            return all(run["ended"] for run in reader.runs())

    wait_until(ended, 30, "the aggregator never recorded the end of its run")
    return Written(url, home)


def tracer(how: str, url: str, home: str, *args: str):
    """``tracer ARGS...`` told its store by ``how``; fails the test if it prints the
    password."""
    env = clean_env(HOME=home, PYTHONIOENCODING="utf-8")
    if how == "--store":
        args = (*args, "--store", url)
    else:
        env["TRACER_STORE"] = url
    proc = run_cli(*args, env=env)
    assert PASSWORD not in proc.stdout + proc.stderr
    return proc


def exported(how: str, written: Written, *args: str) -> list[dict]:
    proc = tracer(how, written.url, written.home, "export", *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def attachment_key(written: Written) -> str:
    (child,) = [row for row in exported("--store", written, "--project", "migrated")
                if row["span_attributes"]["name"] == "child"]
    return child["output"]["file"]["key"]


@pytest.mark.parametrize("how", HOW)
def test_export_prints_the_rows_of_a_postgres_store(how, written):
    rows = exported(how, written, "--project", "migrated")

    by_name = {row["span_attributes"]["name"]: row for row in rows}
    assert sorted(by_name) == ["case", "child", "root"]
    assert by_name["root"]["output"] == "everything"
    assert by_name["case"]["experiment_name"] == "exp"
    assert [row["span_attributes"]["name"] for row in
            exported(how, written, "--experiment", "exp")] == ["case"]


@pytest.mark.parametrize("how", HOW)
def test_export_with_attachments_writes_the_blobs_of_a_postgres_store(how, written, tmp_path):
    key = attachment_key(written)

    rows = exported(how, written, "--project", "migrated",
                    "--with-attachments", str(tmp_path / "files"))

    assert (tmp_path / "files" / f"{key}-a.bin").read_bytes() == b"migrated bytes"
    (child,) = [row for row in rows if row["span_attributes"]["name"] == "child"]
    assert child["output"]["file"]["upload_status"] == "done"


@pytest.mark.parametrize("how", HOW)
def test_attachment_get_writes_an_attachment_of_a_postgres_store(how, written, tmp_path):
    key = attachment_key(written)

    proc = tracer(how, written.url, written.home, "attachment", "get", key,
                  "-o", str(tmp_path / "out"))

    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").read_bytes() == b"migrated bytes"
    unknown = tracer(how, written.url, written.home, "attachment", "get", "0" * 32)
    assert unknown.returncode == 1
    assert "no attachment with this key in postgresql://tracer:***@" in unknown.stderr


@pytest.mark.parametrize("how", HOW)
def test_show_draws_a_trace_of_a_postgres_store_with_its_attachment(how, written):
    (root,) = [row for row in exported("--store", written, "--project", "migrated")
               if row["span_attributes"]["name"] == "root"]

    proc = tracer(how, written.url, written.home, "show", root["root_span_id"])
    last = tracer(how, written.url, written.home, "show", "--last")

    assert proc.returncode == 0, proc.stderr
    assert "root" in proc.stdout and "child" in proc.stdout
    assert "attachment a.bin (application/octet-stream, 14 B) done" in proc.stdout
    assert last.returncode == 0, last.stderr
    assert "case" in last.stdout  # the experiment's trace was written last


@pytest.mark.parametrize("how", HOW)
def test_stats_prints_the_counters_a_past_aggregator_stored_in_postgres(how, written):
    proc = tracer(how, written.url, written.home, "stats", "--json")

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counters"]["rows_committed"] == 3


@pytest.mark.parametrize("how", HOW)
def test_import_writes_spans_into_a_postgres_store(how, postgres_url, tmp_path):
    lines = tmp_path / "spans.jsonl"
    lines.write_text(json.dumps({"name": "imported root", "input": "q", "output": "a",
                                 "children": [{"name": "imported child"}]}) + "\n")

    proc = tracer(how, postgres_url, str(tmp_path), "import", str(lines), "--project", "in")

    assert proc.returncode == 0, proc.stderr
    assert "imported 2 rows (1 traces) into postgresql://tracer:***@" in proc.stdout
    with open_store(postgres_url, readonly=True) as reader:
        assert sorted(row["span_attributes"]["name"] for row in reader.rows(project="in")) \
            == ["imported child", "imported root"]


@pytest.mark.parametrize("how", HOW)
def test_import_payloads_replays_a_payload_file_into_a_postgres_store(how, postgres_url,
                                                                       tmp_path):
    container = Container("L\x1freplayed")
    rows = [{"id": f"r{i}", "span_id": f"r{i}", "root_span_id": "r0", "output": i,
             **container.columns} for i in range(5)]
    payloads.write(str(tmp_path / "payloads"), [(container, row) for row in rows], "batch")

    proc = tracer(how, postgres_url, str(tmp_path), "import-payloads", str(tmp_path / "payloads"))

    assert proc.returncode == 0, proc.stderr
    assert "replayed 5 rows from 1 payload files" in proc.stdout
    with open_store(postgres_url, readonly=True) as reader:
        assert sorted(row["output"] for row in reader.rows(project="replayed")) == list(range(5))


def test_summarize_reads_an_experiment_back_from_a_postgres_store(postgres_url, tmp_path):
    out = run_function(programs.summarizes_an_experiment, postgres_url,
                       env=clean_env(HOME=str(tmp_path)), cwd=str(tmp_path)).stdout
    summary = json.loads(out.strip().splitlines()[-1])

    assert (summary["spans"], summary["traces"], summary["errors"]) == (4, 2, 1)
    assert summary["scores"] == {"accuracy": 0.75}
    assert summary["tokens"] == 42
    assert summary["store"] == postgres_url.replace(PASSWORD, "***")
    assert PASSWORD not in summary["text"]
