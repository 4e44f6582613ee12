"""SYNC_FLUSH=1: nothing is stored until flush(); a flush that cannot commit raises the cause."""

from __future__ import annotations

import json

from . import programs
from .conftest import clean_env, run_function


def test_with_sync_flush_nothing_is_stored_before_flush_and_everything_after(tmp_path):
    out = run_function(programs.counts_the_rows_stored_before_and_after_flush,
                       env=clean_env(TRACER_SYNC_FLUSH="1"), cwd=str(tmp_path)).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"before": 0, "after": 20}


def test_with_sync_flush_a_flush_that_cannot_commit_raises_the_cause(tmp_path):
    out = run_function(programs.flushes_while_the_store_is_locked,
                       env=clean_env(TRACER_SYNC_FLUSH="1", TRACER_NUM_RETRIES="1"),
                       cwd=str(tmp_path), timeout=120).stdout
    assert "FlushError:" in out and "locked" in out, out
