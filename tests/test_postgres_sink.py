"""A traced program's own aggregator writing to PostgreSQL (``TRACER_STORE=postgresql://...``):
the rows land in the database; the aggregator's log (in the store's local directory,
``config.local_path``) never holds the password. Runs against the real server of
``tests/postgres.py``."""

from __future__ import annotations

import json
import pathlib
import select
import stat
import subprocess

import pytest

from tracer import config
from workers.store import open_store

from . import programs
from .conftest import clean_env, python_command, run_cli, run_function
from .postgres import PASSWORD


def log_into(postgres_url: str, home: str, project: str, **env: str) -> None:
    """Run the traced program with its store in PostgreSQL; ``home`` holds its local files."""
    run_function(programs.logs_nested_spans_and_a_span_with_metadata, project,
                 env=clean_env(TRACER_STORE=postgres_url, HOME=home, **env), cwd=home)


def test_a_traced_programs_spans_are_read_back_from_postgres(postgres_url, tmp_path):
    log_into(postgres_url, str(tmp_path), "pg-sink")

    rows = list(open_store(postgres_url, readonly=True).rows(project="pg-sink"))
    by_name = {r["span_attributes"]["name"]: r for r in rows}
    assert sorted(by_name) == ["inner", "outer", "with-metadata"]
    assert by_name["inner"]["span_parents"] == [by_name["outer"]["span_id"]]
    assert by_name["inner"]["root_span_id"] == by_name["outer"]["root_span_id"]
    assert by_name["outer"]["output"] == 7
    assert by_name["with-metadata"]["metadata"] == {"model": "m1", "n": 2}
    assert (by_name["with-metadata"]["input"], by_name["with-metadata"]["output"]) == ("q", "a")


def local_directory(postgres_url: str, home: str, monkeypatch) -> pathlib.Path:
    """The store's local directory for a process whose HOME is ``home``."""
    monkeypatch.setenv("HOME", home)
    return pathlib.Path(config.local_path(postgres_url)).parent


def test_the_aggregators_log_names_the_store_without_its_password(postgres_url, tmp_path,
                                                                  monkeypatch):
    # TRACER_DEBUG: the aggregator also notes its start, naming its store, in the log.
    log_into(postgres_url, str(tmp_path), "pg-log", TRACER_DEBUG="1")

    log = (local_directory(postgres_url, str(tmp_path), monkeypatch) / "aggregator.log")
    text = log.read_text()
    assert "store postgresql://" in text  # it did write, and said which store
    assert PASSWORD not in text


def test_the_local_directory_and_log_of_a_postgres_store_are_the_users_alone(
        postgres_url, tmp_path, monkeypatch):
    log_into(postgres_url, str(tmp_path), "pg-private")

    directory = local_directory(postgres_url, str(tmp_path), monkeypatch)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "aggregator.log").stat().st_mode) == 0o600


# -- a database that goes away mid-run -------------------------------------------------------


class Driven:
    """A program driven a line at a time over its stdin and stdout (a ``Popen`` of it)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.stdin, self.stdout, self.stderr = proc.stdin, proc.stdout, proc.stderr

    def read_line(self, timeout: float) -> str:
        """The program's next line; fails the test if none comes within ``timeout`` s."""
        ready, _, _ = select.select([self.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            pytest.fail(f"the program said nothing for {timeout} s:\n{self.stderr.read()}")
        line = self.stdout.readline()
        if not line:
            self.proc.wait(10)
            pytest.fail(f"the program ended ({self.proc.returncode}):\n{self.stderr.read()}")
        return line.strip()

    def tell(self, line: str) -> None:
        self.stdin.write(line + "\n")
        self.stdin.flush()


def test_a_database_that_goes_away_is_a_failing_sink_and_its_return_is_noticed(
        own_postgres_server, tmp_path, monkeypatch):
    url = own_postgres_server.database()
    failed = tmp_path / "failed"
    env = clean_env(TRACER_STORE=url, HOME=str(tmp_path), TRACER_NUM_RETRIES="3",
                    TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(failed))
    proc = subprocess.Popen(python_command(programs.logs_while_its_database_goes_away,
                                           "pg-gone", 20),
                            env=env, cwd=str(tmp_path), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    program = Driven(proc)
    try:
        assert program.read_line(60) == "ready"
        own_postgres_server.shut_down()
        program.tell("stopped")
        while_down = json.loads(program.read_line(120))
        own_postgres_server.start()
        program.tell("started")
        after = json.loads(program.read_line(120))
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, program.stderr.read()

    # Retried with backoff, then set aside and counted; the flush named the cause.
    assert while_down["counters"]["write_retries"] >= 3
    assert while_down["counters"]["dropped_sink_failed"] == 20
    assert while_down["counters"]["payload_rows_sink_failed"] == 20
    assert "PostgreSQL store postgresql://" in while_down["error"]
    assert "127.0.0.1" in while_down["error"]
    # The aggregator reconnected by itself: what came after is stored.
    assert after["counters"]["rows_committed"] >= 2
    with open_store(url, readonly=True) as reader:
        names = sorted(r["span_attributes"]["name"] for r in reader.rows(project="pg-gone"))
    assert names == ["after", "before"]

    replayed = run_cli("import-payloads", str(failed), "--store", url)

    assert replayed.returncode == 0, replayed.stderr
    with open_store(url, readonly=True) as reader:
        rows = {r["span_attributes"]["name"]: r for r in reader.rows(project="pg-gone")}
    assert sorted(rows) == sorted(["after", "before", *(f"during {i}" for i in range(20))])
    assert all(rows[f"during {i}"]["output"] == i for i in range(20))
    # The password is nowhere: not in the error, the log, the payload files, the CLI's output.
    log = local_directory(url, str(tmp_path), monkeypatch) / "aggregator.log"
    said = [while_down["error"], log.read_text(), replayed.stdout, replayed.stderr,
            *(path.read_text() for path in failed.rglob("*") if path.is_file())]
    assert not [text for text in said if PASSWORD in text]
