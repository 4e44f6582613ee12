"""Queue policies (QUEUE_SIZE, QUEUE_DROP_WHEN_FULL, QUEUE_DROP_EXCEEDING_MAXSIZE): block by
default, or drop and count exactly what was offered beyond the bound.

Each test runs a child process whose sink cannot write for a while: the child holds an
exclusive lock on the SQLite store (a real, locked database) while it produces spans, then lets
go and flushes.
"""

from __future__ import annotations

import json

from workers import payloads

from . import programs
from .conftest import Store, clean_env, run_cli, run_function, wait_for_runs_to_end


def run_policy(tmp_path, n: int, **settings: str) -> tuple[dict, int, dict]:
    """Run the producer; returns its report, the rows stored and the drop counters."""
    proc = run_function(programs.produces_n_spans_while_the_store_is_locked, n,
                        env=clean_env(**settings), cwd=str(tmp_path), timeout=180)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    store_path = str(tmp_path / ".tracer" / "traces.db")
    runs = wait_for_runs_to_end(store_path)
    with Store(store_path) as store:
        stored = len(list(store.rows(project="policy")))
    drops: dict[str, int] = {}
    for run in runs:
        for name, value in json.loads(run["counters"])["counters"].items():
            if "dropped" in name:
                drops[name] = drops.get(name, 0) + value
    return report, stored, drops


def test_the_default_policy_blocks_the_producer_and_loses_nothing(tmp_path):
    report, stored, drops = run_policy(tmp_path, 5000, TRACER_QUEUE_SIZE="50")
    assert report["blocked_while_locked"], "the producer went on while the queue was full"
    assert report["finished"]
    assert stored == report["created"] == 5000
    assert drops == {}
    assert report["flush_reported_losses"] == {}


def test_drop_when_full_drops_exactly_what_exceeds_the_queue(tmp_path):
    report, stored, drops = run_policy(tmp_path, 300, TRACER_QUEUE_SIZE="50",
                                       TRACER_QUEUE_DROP_WHEN_FULL="1")
    assert not report["blocked_while_locked"]  # the producer never waited
    assert stored == 50
    assert set(drops) <= {"dropped_queue_full", "senders_dropped_queue_full"}
    assert sum(drops.values()) == 300 - 50


def test_a_flush_after_drops_raises_saying_how_many_records_were_dropped_and_why(tmp_path):
    report, stored, _drops = run_policy(tmp_path, 300, TRACER_QUEUE_SIZE="50",
                                        TRACER_QUEUE_DROP_WHEN_FULL="1")
    losses = report["flush_reported_losses"]
    assert sum(losses.values()) == 300 - stored == 250
    assert set(losses) <= {"dropped_queue_full", "aggregator_dropped_queue_full"}


def test_drop_exceeding_maxsize_caps_the_queue_at_that_size(tmp_path):
    report, stored, drops = run_policy(tmp_path, 300,
                                       TRACER_QUEUE_DROP_EXCEEDING_MAXSIZE="40")
    assert not report["blocked_while_locked"]
    assert stored == 40
    assert set(drops) <= {"dropped_queue_exceeding_maxsize",
                          "senders_dropped_queue_exceeding_maxsize"}
    assert sum(drops.values()) == 300 - 40


def test_the_reference_sdks_variable_names_work_too(tmp_path):
    report, stored, drops = run_policy(tmp_path, 100, BRAINTRUST_QUEUE_SIZE="30",
                                       BRAINTRUST_QUEUE_DROP_WHEN_FULL="true")
    assert stored == 30
    assert sum(drops.values()) == 100 - 30


def test_rows_a_policy_drops_are_set_aside_and_import_payloads_restores_them(tmp_path):
    failed = tmp_path / "failed"
    report, stored, drops = run_policy(tmp_path, 300, TRACER_QUEUE_SIZE="50",
                                       TRACER_QUEUE_DROP_WHEN_FULL="1",
                                       TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(failed))
    set_aside = [row for name in payloads.files(str(failed)) for row in payloads.read(name)]
    assert stored == 50
    assert len(set_aside) == sum(drops.values()) == 300 - 50

    store = str(tmp_path / ".tracer" / "traces.db")
    proc = run_cli("import-payloads", str(failed), "--store", store)

    assert proc.returncode == 0, proc.stderr
    with Store(store) as reader:
        names = {row["span_attributes"]["name"] for row in reader.rows(project="policy")}
    assert names == {f"span {i}" for i in range(300)}
