"""A traced program's own aggregator writing to PostgreSQL (``TRACER_STORE=postgresql://...``):
the rows land in the database; the aggregator's log (in the store's local directory,
``config.local_path``) never holds the password. Runs against the real server of
``tests/postgres.py``."""

from __future__ import annotations

import pathlib
import stat

from tracer import config
from workers.store import open_store

from . import programs
from .conftest import clean_env, run_function
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
