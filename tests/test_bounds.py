"""The bounds a traced process can count on: how long a caller blocks, how many bytes are held,
that exit never hangs, and that ``flush()`` reports every loss.

Each test runs a real traced program in a fresh interpreter against its own aggregator, with a
real fault: an aggregator frozen with SIGSTOP, or a store another connection holds locked.
"""

from __future__ import annotations

import json
import os
import signal

from workers import payloads

from . import programs
from .conftest import Store, clean_env, run_function, wait_for_runs_to_end

MiB = 1 << 20


def test_a_frozen_aggregator_blocks_callers_only_for_the_block_timeout_and_exit_does_not_hang(
        tmp_path):
    pid_file = tmp_path / "aggregator.pid"
    failed = tmp_path / "failed"
    env = clean_env(TRACER_QUEUE_SIZE="100", TRACER_QUEUE_BLOCK_TIMEOUT="1",
                    TRACER_FAILED_PUBLISH_PAYLOADS_DIR=str(failed))
    try:
        # Without the bound, the program never gets past its spans: run_function times out.
        proc = run_function(programs.logs_while_the_aggregator_is_frozen, 2000, str(pid_file),
                            env=env, cwd=str(tmp_path), timeout=90)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["flush_error"] and "timed out" in report["flush_error"]
    assert "TRACER_QUEUE_BLOCK_TIMEOUT" in proc.stderr  # warned about
    dropped = report["losses"]["dropped_queue_block_timeout"]  # counted, reported by flush
    set_aside = [record for name in payloads.files(str(failed))
                 for record in payloads.read(name)]
    assert dropped > 0 and len(set_aside) == dropped


def test_the_bytes_a_process_and_its_aggregator_hold_are_bounded(tmp_path):
    env = clean_env(TRACER_QUEUE_MAX_BYTES=str(4 * MiB), TRACER_QUEUE_BLOCK_TIMEOUT="1")
    proc = run_function(programs.logs_large_spans_while_the_store_is_locked, 150, MiB,
                        env=env, cwd=str(tmp_path), timeout=180)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # 150 MiB were logged while nothing could be committed: each process held a few MiB of it
    # (the bound, a frame, ZeroMQ's copies of what is in flight, decoding), not 150.
    assert report["growth"]["producer"] < 40 * MiB, report
    assert report["growth"]["aggregator"] < 40 * MiB, report
    with Store(str(tmp_path / ".tracer" / "traces.db")) as store:
        stored = len(list(store.rows(project="large")))
    # What could not be held was dropped, counted and reported by the flush (two records a
    # span: its log and its end).
    dropped = report["losses"].get("dropped_queue_block_timeout", 0)
    assert dropped > 0 and stored < 150


def test_the_loss_counts_a_process_sent_survive_the_death_of_its_aggregator(tmp_path):
    env = clean_env(TRACER_QUEUE_SIZE="20", TRACER_QUEUE_DROP_WHEN_FULL="1")
    proc = run_function(programs.drops_records_then_loses_its_aggregator, 20000, env=env,
                        cwd=str(tmp_path), timeout=120)
    dropped_here = json.loads(proc.stdout.strip().splitlines()[-1])["losses"].get(
        "dropped_queue_full", 0)
    assert dropped_here > 0
    runs = wait_for_runs_to_end(str(tmp_path / ".tracer" / "traces.db"))
    # The killed aggregator recorded nothing (its store was locked); the counts it had been
    # sent reach its replacement with the messages resent to it.
    reported = sum(json.loads(run["counters"])["counters"].get("senders_dropped_queue_full", 0)
                   for run in runs)
    assert reported == dropped_here
