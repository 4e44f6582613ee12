"""SYNC_FLUSH=1: nothing is stored until flush(); a flush that cannot commit raises the cause."""

from __future__ import annotations

import json

from .conftest import clean_env, run_python

COUNT = """
def stored():
    import sqlite3
    conn = sqlite3.connect(".tracer/traces.db", timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    finally:
        conn.close()
"""


def test_with_sync_flush_nothing_is_stored_before_flush_and_everything_after(tmp_path):
    code = COUNT + """
import json, time, tracer
logger = tracer.init_logger("held")
logger.flush()  # the aggregator is up and its store exists
for i in range(20):
    with tracer.start_span(f"span {i}"):
        pass
time.sleep(1.0)  # far past the usual 0.1 s batching delay
before = stored()
tracer.flush()
print(json.dumps({"before": before, "after": stored()}))
"""
    out = run_python(code, env=clean_env(TRACER_SYNC_FLUSH="1"), cwd=str(tmp_path)).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"before": 0, "after": 20}


def test_with_sync_flush_a_flush_that_cannot_commit_raises_the_cause(tmp_path):
    code = """
import os, sqlite3, tracer
logger = tracer.init_logger("failing")
logger.flush()
lock = sqlite3.connect(os.path.join(".tracer", "traces.db"), isolation_level=None)
lock.execute("BEGIN EXCLUSIVE")  # the store stays locked for the whole flush
with tracer.start_span("doomed"):
    pass
try:
    tracer.flush(timeout=60)
except tracer.FlushError as exc:
    print("FlushError:", exc)
else:
    print("no error")
lock.execute("ROLLBACK")
"""
    out = run_python(code, env=clean_env(TRACER_SYNC_FLUSH="1", TRACER_NUM_RETRIES="1"),
                     cwd=str(tmp_path), timeout=120).stdout
    assert "FlushError:" in out and "locked" in out, out
