"""Failures are normal paths: a killed aggregator, killed workers, a killed owner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from . import programs
from .conftest import Store, clean_env, gone_within, python_command, wait_for_runs_to_end
from .helpers import wait_until


def counted_losses(runs: list[dict]) -> dict[str, int]:
    lost: dict[str, int] = {}
    for run in runs:
        for name, value in json.loads(run["counters"])["counters"].items():
            if "lost" in name or "dropped" in name:
                lost[name] = lost.get(name, 0) + value
    return lost


@pytest.mark.slow
def test_killing_the_aggregator_under_load_loses_nothing(tmp_path):
    proc = subprocess.Popen(python_command(programs.logs_under_load_for_3_seconds),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(), cwd=str(tmp_path))
    assert proc.stdout is not None
    first_aggregator = int(proc.stdout.readline())
    time.sleep(1.0)  # a second into the child's 3 s of load: the kill lands mid-stream
    os.kill(first_aggregator, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["flush_seconds"] < 10, "the application hung after the crash"
    assert "took over" in err  # the recorder said what happened

    store_path = str(tmp_path / ".tracer" / "traces.db")
    runs = wait_for_runs_to_end(store_path)
    with Store(store_path) as store:
        stored = len(list(store.rows(project="under-load")))
    lost = counted_losses(runs)
    assert len(runs) == 2  # the killed aggregator and its replacement
    assert stored + sum(lost.values()) == report["created"]
    assert lost == {} or set(lost.values()) == {0}, f"counted losses: {lost}"
    assert stored == report["created"]
    counters = [json.loads(r["counters"])["counters"] for r in runs]
    assert sum(c.get("senders_aggregator_restarts", 0) for c in counters) >= 1
    assert sum(c.get("seq_gap_messages", 0) for c in counters) == 0


def test_a_pool_worker_killed_in_a_span_leaves_the_span_marked(logger, rows):
    import concurrent.futures

    import tracer

    from . import boundary_tasks as tasks

    with tracer.start_span("submitter") as parent, tracer.TracedProcessPoolExecutor(1) as pool, \
            pytest.raises(concurrent.futures.process.BrokenProcessPool):
        pool.submit(tasks.die_in_a_span, 0).result(timeout=60)

    def doomed() -> list[dict]:
        return [r for r in rows() if r["span_attributes"]["name"] == "doomed"]

    wait_until(lambda: doomed() and doomed()[0].get("error"), 10,
               "the killed worker's span was never marked")
    (row,) = doomed()
    assert "exited before the span ended" in row["error"]
    assert row["span_parents"] == [parent.span_id]
    assert row["input"] == "half done"
    assert row["metrics"]["end"] >= row["metrics"]["start"]


def test_an_owner_killed_with_sigkill_still_has_its_spans_committed(tmp_path):
    proc = subprocess.run(python_command(programs.logs_50_spans_and_is_killed),
                          capture_output=True, text=True, env=clean_env(), cwd=str(tmp_path),
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL
    aggregator = int(proc.stdout.strip())
    store_path = str(tmp_path / ".tracer" / "traces.db")
    assert gone_within(aggregator, 15), "the aggregator outlived its killed owner"
    (run,) = wait_for_runs_to_end(store_path)
    assert run["ended"] is not None  # it committed and exited by itself
    with Store(store_path) as store:
        assert len(list(store.rows(project="killed-owner"))) == 50


def test_an_aggregator_that_dies_as_it_starts_is_not_restarted_in_a_loop(tmp_path):
    proc = subprocess.run(
        python_command(programs.kills_its_aggregator_whose_replacements_die_as_they_start),
        env=clean_env(), cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    with open(tmp_path / ".tracer" / "aggregator.log") as log:
        replacements_that_died = log.read().count("TRACER_QUEUE_SIZE='not a number'")

    assert proc.returncode == 0, proc.stderr
    assert replacements_that_died == 3
    assert "not starting another" in proc.stderr
    assert "FlushError:" in proc.stdout
