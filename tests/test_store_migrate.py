"""``tracer migrate --from SRC --to DST``: a store copied SQLite -> PostgreSQL -> SQLite reads
back the same (``tracer export`` byte-equal; the trace server's summaries alike); a destination
with rows is refused."""

from __future__ import annotations

import os

from workers.store import open_store

from . import programs
from .conftest import clean_env, run_cli, run_function
from .postgres import PASSWORD


def _counts_line(stdout: str) -> str:
    """The line of ``tracer migrate``'s output that counts what it copied."""
    return next(line for line in stdout.splitlines() if line.startswith("copied "))


def _summaries(store: str) -> dict:
    """What the trace server lists for the project's logs and its experiments."""
    with open_store(store, readonly=True) as reader:
        logs = reader.trace_summaries(project="migrated")
        experiments = reader.experiments("migrated")
        assert logs is not None and experiments is not None
        pages = {e["name"]: reader.trace_summaries(experiment_id=e["id"]) for e in experiments}
        return {"logs": logs.traces, "projects": reader.projects(),
                "experiments": experiments,
                "experiment_traces": {name: page.traces if page else None
                                      for name, page in pages.items()}}


def test_a_store_copied_to_postgres_and_back_exports_byte_equal(tmp_path, postgres_url):
    env = clean_env(HOME=str(tmp_path / "home"), PYTHONIOENCODING="utf-8")
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    run_function(programs.traces_spans_an_experiment_and_an_attachment, str(a), env=env)

    there = run_cli("migrate", "--from", f"sqlite:///{a}", "--to", postgres_url, env=env)
    assert there.returncode == 0, there.stderr
    back = run_cli("migrate", "--from", postgres_url, "--to", f"sqlite:///{b}", env=env)
    assert back.returncode == 0, back.stderr

    # The same counts both ways: 3 spans, 2 containers, 1 aggregator run, 1 attachment and
    # its blob. The password is never printed.
    assert _counts_line(there.stdout) == _counts_line(back.stdout)
    assert _counts_line(there.stdout).startswith("copied 3 rows, 2 containers, 1 aggregator "
                                                 "runs, 1 attachment records, 1 attachment blobs")
    assert PASSWORD not in there.stdout + there.stderr + back.stdout + back.stderr

    exported = [run_cli("export", "--store", str(store), env=env) for store in (a, b)]
    assert all(proc.returncode == 0 for proc in exported), [p.stderr for p in exported]
    assert exported[0].stdout == exported[1].stdout and exported[0].stdout.count("\n") == 3
    assert _summaries(str(a)) == _summaries(postgres_url) == _summaries(str(b))
    with open_store(str(a), readonly=True) as source, open_store(str(b), readonly=True) as copy:
        assert copy.containers() == source.containers()
        # (The source's aggregator may have updated its run's counters since it was copied.)
        fields = ("run_id", "pid", "host", "endpoint", "started")
        assert [[r[f] for f in fields] for r in copy.runs()] == \
            [[r[f] for f in fields] for r in source.runs()]
        records = source.attachment_records()
        assert [dict(r, stored=None) for r in copy.attachment_records()] == \
            [dict(r, stored=None) for r in records]
    (record,) = records
    blob = tmp_path / "b.attachments" / "blobs"
    assert [name for _, _, names in os.walk(blob) for name in names] != []

    # The attachment reads back from the copy.
    got = run_cli("attachment", "get", record["key"], "-o", str(tmp_path / "out"),
                  "--store", str(b), env=env)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out").read_bytes() == b"migrated bytes"


def test_a_destination_with_rows_is_refused(tmp_path):
    env = clean_env(HOME=str(tmp_path / "home"), PYTHONIOENCODING="utf-8")
    a = tmp_path / "a.db"
    run_function(programs.traces_spans_an_experiment_and_an_attachment, str(a), env=env)
    assert run_cli("migrate", "--from", str(a), "--to", str(tmp_path / "b.db"),
                   env=env).returncode == 0

    again = run_cli("migrate", "--from", str(a), "--to", str(tmp_path / "b.db"), env=env)
    assert again.returncode == 2
    assert "has rows already" in again.stderr
    alone = run_cli("migrate", "--from", str(a), env=env)
    assert alone.returncode == 2 and "--from and --to go together" in alone.stderr


def test_migrate_store_still_upgrades_in_place(tmp_path):
    proc = run_cli("migrate", "--store", str(tmp_path / "new.db"))
    assert proc.returncode == 0, proc.stderr
    assert "upgraded to schema version" in proc.stdout
