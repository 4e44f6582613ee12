"""Failures are normal paths: a killed aggregator, killed workers, a killed owner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tracer.recorder import process_alive
from workers.sinks.sqlite import Store

from .conftest import clean_env


def wait_for_runs_to_end(store_path: str, timeout: float = 15) -> list[dict]:
    """The aggregator runs recorded in the store, once none of them is still running (a killed
    one never records its end)."""
    deadline = time.monotonic() + timeout
    while True:
        with Store(store_path) as store:
            runs = store.runs()
        running = [r for r in runs if not r["ended"] and process_alive(r["pid"])]
        if runs and not running or time.monotonic() > deadline:
            return runs
        time.sleep(0.1)


def counted_losses(runs: list[dict]) -> dict[str, int]:
    lost: dict[str, int] = {}
    for run in runs:
        for name, value in json.loads(run["counters"])["counters"].items():
            if "lost" in name or "dropped" in name:
                lost[name] = lost.get(name, 0) + value
    return lost


@pytest.mark.slow
def test_killing_the_aggregator_under_load_loses_nothing(tmp_path):
    code = textwrap.dedent("""
        import json, os, time, tracer
        from tests import boundary_tasks as tasks

        tracer.init_logger("under-load")
        print(os.environ["_TRACER_AGGREGATOR_PID"], flush=True)
        created = 0
        with tracer.TracedPool(2) as pool:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                with tracer.start_span("batch"):
                    pool.map(tasks.work, range(20))
                    for i in range(20):
                        tasks.work(i)
                created += 1 + 4 * 20
        finished = time.monotonic()
        tracer.flush(timeout=30)
        print(json.dumps({"created": created, "flush_seconds": time.monotonic() - finished}),
              flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env(),
                            cwd=str(tmp_path))
    first_aggregator = int(proc.stdout.readline())
    time.sleep(1.0)
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
