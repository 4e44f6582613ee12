"""Four aggregators writing one PostgreSQL database at once, each fed by producers of its own,
the producers writing the same rows through different aggregators: an ``update_span`` from
another process (by exported slug) while the span ends, and the same row ids logged with
different fields by each. Every merge is present, nothing is duplicated, no writer deadlocks,
and the trace summaries count exactly. Runs against the real server of ``tests/postgres.py``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time

from workers.store import open_store

from .conftest import StandaloneAggregator, clean_env, python_command
from .postgres import PASSWORD

AGGREGATORS = 4
LONG_SPANS = 40  # spans the owner starts, exports, and ends while the others update them
SHARED_ROWS = 60  # row ids every producer logs, each with fields of its own
PROJECT = "fleet"


def _wait_for(path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.02)


def _log_shared(logger: object, producer: int) -> None:
    """Every shared row id, logged with a field of this producer's, in an order of its own."""
    ids = list(range(SHARED_ROWS))
    random.Random(producer).shuffle(ids)
    for k in ids:
        logger.log(id=f"shared-{k:03d}", input=f"question {k}",  # type: ignore[attr-defined]
                   metadata={f"w{producer}": k}, scores={f"q{producer}": 0.5})


def owner(workdir: str) -> None:
    """Producer 0: starts the long spans, exports them for the others, and ends them (with an
    output and a field of its own) once the others have begun updating them."""
    import tracer

    logger = tracer.init_logger(PROJECT)
    spans = [logger.start_span(name=f"long-{k:03d}", input={"k": k}) for k in range(LONG_SPANS)]
    slugs = [span.export() for span in spans]
    with open(os.path.join(workdir, "slugs.json.tmp"), "w") as f:
        json.dump(slugs, f)
    os.rename(os.path.join(workdir, "slugs.json.tmp"), os.path.join(workdir, "slugs.json"))
    for producer in range(1, AGGREGATORS):
        _wait_for(os.path.join(workdir, f"updating-{producer}"))
    for k, span in enumerate(spans):
        span.log(output=f"answer {k}", metadata={"owner": True})
        span.end()
    _log_shared(logger, 0)
    logger.flush(timeout=120)


def updater(workdir: str, producer: int) -> None:
    """Producers 1-3: update every long span by its exported slug (while the owner ends them),
    and log the shared rows."""
    import tracer

    logger = tracer.init_logger(PROJECT)
    _wait_for(os.path.join(workdir, "slugs.json"))
    with open(os.path.join(workdir, "slugs.json")) as f:
        slugs = json.load(f)
    open(os.path.join(workdir, f"updating-{producer}"), "w").close()
    order = list(range(len(slugs)))
    random.Random(producer).shuffle(order)
    for k in order:
        tracer.update_span(exported=slugs[k], metadata={f"u{producer}": k},
                           scores={f"s{producer}": 1.0})
    _log_shared(logger, producer)
    logger.flush(timeout=120)


def test_four_aggregators_writing_overlapping_rows_lose_no_merge_duplicate_nothing_and_never_deadlock(  # noqa: E501
        postgres_url, tmp_path):
    workdir = str(tmp_path)
    aggregators = [StandaloneAggregator(postgres_url, str(tmp_path / f"aggregator-{n}.log"))
                   for n in range(AGGREGATORS)]
    try:
        producers = []
        for n, aggregator in enumerate(aggregators):
            program = python_command(owner, workdir) if n == 0 \
                else python_command(updater, workdir, n)
            env = clean_env(TRACER_ENDPOINT=aggregator.endpoint, TRACER_STORE=postgres_url,
                            HOME=workdir)
            producers.append(subprocess.Popen(program, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True))
        for n, producer in enumerate(producers):
            _, err = producer.communicate(timeout=180)
            assert producer.returncode == 0, f"producer {n}:\n{err}"
    finally:
        codes = [aggregator.stop() for aggregator in aggregators]
    logs = [aggregator.log() for aggregator in aggregators]

    with open_store(postgres_url, readonly=True) as reader:
        rows = list(reader.rows(project=PROJECT))
        page = reader.trace_summaries(project=PROJECT, limit=10_000)

    assert codes == [0] * AGGREGATORS, logs
    for log in logs:
        assert "deadlock" not in log.lower()
        assert PASSWORD not in log
    # Nothing duplicated: one row per span and per shared id.
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == LONG_SPANS + SHARED_ROWS
    long_rows = {str((row.get("span_attributes") or {}).get("name")): row for row in rows
                 if not row["id"].startswith("shared-")}
    assert sorted(long_rows) == [f"long-{k:03d}" for k in range(LONG_SPANS)]
    # Every merge present: the owner's end and every updater's fields, in every long span.
    for k in range(LONG_SPANS):
        row = long_rows[f"long-{k:03d}"]
        assert row["output"] == f"answer {k}"
        assert row["input"] == {"k": k}
        assert row["metadata"] == {"owner": True, **{f"u{p}": k for p in range(1, AGGREGATORS)}}
        assert row["scores"] == {f"s{p}": 1.0 for p in range(1, AGGREGATORS)}
        assert "end" in row["metrics"]
    shared = sorted((row for row in rows if row["id"].startswith("shared-")),
                    key=lambda row: row["id"])
    for k, row in enumerate(shared):
        assert row["id"] == f"shared-{k:03d}"
        assert row["metadata"] == {f"w{p}": k for p in range(AGGREGATORS)}
        assert row["scores"] == {f"q{p}": 0.5 for p in range(AGGREGATORS)}
    # The summaries count exactly: every row in the trace its root_span_id names, once.
    assert page is not None
    spans = {t["root_span_id"]: t["spans"] for t in page.traces}
    assert sum(spans.values()) == len(rows)
    for row in rows:
        assert spans[row["root_span_id"]] == 1, row["id"]
    for row in long_rows.values():
        [summary] = [t for t in page.traces if t["root_span_id"] == row["root_span_id"]]
        assert summary["scores"] == {f"s{p}": 1.0 for p in range(1, AGGREGATORS)}
        assert summary["end"] is not None and summary["name"] == row["span_attributes"]["name"]
