"""The store writer alone: rows/s of ``StoreWriter.write``, SQLite beside PostgreSQL in one run.

    python scripts/bench/store_write.py [--store postgresql://...] [--rows 20000] [--repeat 3]
                                        [--variants shipped,advisory,rowlocks,jsonb] [--json FILE]

Three workloads, each written in batches of 1,000 rows (the uploader's default) into a new store
(a new SQLite file; a new PostgreSQL database), one batch written first outside the timing (the
connection and the schema):

- ``fan-in``: the rows the aggregator makes of ``@traced`` calls with a 100-character input,
  every span a trace of its own (``fan_in.py``'s producers): DATA bodies decoded and turned into
  partial rows by the real ``Aggregator._apply_records``;
- ``realistic``: ``server.py``'s traces (5 to 15 spans: a root task with a question, metadata and
  scores, a retrieval, an LLM call with chat messages, functions), 10 spans a trace on average;
- ``merges``: the realistic rows stored first (untimed), then a partial row for every one of them
  (an output, ``metrics.end``, a score, a metadata key: what a span's end or an ``update_span``
  brings to a row already stored), merged into the stored rows.

For each workload and writer: the wall time of the ``write`` calls (rows/s), this process's CPU
per row, and for PostgreSQL the server's CPU per row (the connection's backend process, read with
psutil): the best of ``--repeat`` runs by wall time. ``--variants`` names the PostgreSQL write
paths to compare (``scripts/bench/pg_variants.py``); ``shipped`` is ``PostgresWriter`` as it is.

Without ``--store``, a PostgreSQL server is started for the run (``tests/postgres.py``'s helper,
in a temporary directory) with ``fsync`` on, as a real server runs (the tests' servers run
without it); SQLite runs as the aggregator runs it (WAL, ``synchronous=NORMAL``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
from common import machine, positive  # noqa: E402
from pg_variants import VARIANTS, new_database, postgres_for_bench  # noqa: E402
from server import Generator  # noqa: E402

from workers.queue import Pending  # noqa: E402
from workers.store.base import StoreWriter  # noqa: E402
from workers.store.sqlite import SQLiteWriter  # noqa: E402

BATCH = 1000
TEXT = "x" * 100


def fan_in_rows(count: int) -> list[Pending]:
    """``count`` one-span traces as the aggregator queues them: DATA bodies of ``@traced``
    roots with a 100-character input, through ``Aggregator._apply_records``."""
    from tracer import serialize, wire
    from tracer.ids import new_id, new_trace_id
    from workers.aggregator import Aggregator
    from workers.queue import RowQueue
    from workers.senders import Sender

    container = wire.logs_container("fan-in")
    records = []
    for i in range(count):
        now = time.time()
        trace, root = new_trace_id(now), new_id()
        records.append(wire.span_end(container, trace, root, None, root, None, "work", None,
                                     now, now + 0.0001, {"output": 100},
                                     (("i", "text"), ((i, TEXT), None))))
    workdir = tempfile.mkdtemp(prefix="store-write-")
    try:
        agg = Aggregator("ipc:///nonexistent", os.path.join(workdir, "unused.db"))
        agg.queue = RowQueue()
        sender = Sender("store-write", 1, 0)
        for i in range(0, len(records), 64):
            agg._apply_records(serialize.pack_records(records[i:i + 64]), sender)
        queued = agg.queue.take(count, 1 << 40, 0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if queued is None or len(queued) != count:
        raise SystemExit(f"store_write: {0 if queued is None else len(queued)} rows queued of "
                         f"{count}")
    return list(queued)


def realistic_rows(count: int, seed: int = 7) -> list[Pending]:
    """About ``count`` rows of ``server.py``'s traces (whole traces: a few more)."""
    gen = Generator(seed)
    rows: list[Pending] = []
    traces = 0
    while len(rows) < count:
        start = 1_790_000_000.0 + traces * 30.0
        rows += [gen.pending(row) for row in gen.trace(start)]
        traces += 1
    return rows[:count]


def merge_rows(stored: Sequence[Pending]) -> list[Pending]:
    """A partial row for each stored row: what a span's end or ``update_span`` brings."""
    out = []
    for i, p in enumerate(stored):
        row = {"id": p.row["id"], "output": f"revised answer {i}",
               "metrics": {"end": 1_790_000_100.0 + i}, "scores": {"reviewed": (i % 10) / 10},
               "metadata": {"reviewer": f"user-{i % 50}"}, **p.container.columns}
        out.append(Pending(p.key, row, 200, 0, p.container))
    return out


def backend_cpu(writer: StoreWriter) -> Callable[[], float]:
    """The CPU seconds so far of the server process behind ``writer`` (0 for SQLite)."""
    conn = getattr(writer, "_conn", None)
    if conn is None or not hasattr(conn, "info"):
        return lambda: 0.0
    proc = psutil.Process(conn.info.backend_pid)

    def read() -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)
    return read


def timed_writes(writer: StoreWriter, first: Sequence[Pending], rows: Sequence[Pending],
                 before: Sequence[Pending] = ()) -> dict:
    """Write ``first`` and ``before`` untimed, then ``rows`` in batches, timed."""
    writer.write(list(first))
    for i in range(0, len(before), BATCH):
        writer.write(list(before[i:i + BATCH]))
    server_cpu = backend_cpu(writer)
    batches = [list(rows[i:i + BATCH]) for i in range(0, len(rows), BATCH)]
    server0, cpu0, wall0 = server_cpu(), time.process_time(), time.perf_counter()
    for batch in batches:
        writer.write(batch)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    server = server_cpu() - server0
    return {"rows": len(rows), "wall_s": wall, "rows_per_s": len(rows) / wall,
            "client_cpu_us_per_row": cpu / len(rows) * 1e6,
            "server_cpu_us_per_row": server / len(rows) * 1e6}


def workloads(rows: int) -> dict[str, tuple[list[Pending], list[Pending], list[Pending]]]:
    """Each workload: (the untimed first batch, the rows stored before, the timed rows)."""
    fan = fan_in_rows(rows + BATCH)
    real = realistic_rows(rows + BATCH)
    base = realistic_rows(rows + BATCH, seed=11)
    return {"fan-in": (fan[:BATCH], [], fan[BATCH:]),
            "realistic": (real[:BATCH], [], real[BATCH:]),
            "merges": (base[:BATCH], base[BATCH:], merge_rows(base[BATCH:]))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", metavar="URL", help="a PostgreSQL server to use (a database is "
                   "made on it per run: the user needs CREATEDB); default: one started here")
    p.add_argument("--rows", type=positive, default=20_000, help="rows timed per workload "
                   "(default: 20,000)")
    p.add_argument("--repeat", type=positive, default=3, help="runs per figure, the fastest "
                   "kept (default: 3)")
    p.add_argument("--variants", default="shipped", help="PostgreSQL write paths, "
                   f"comma-separated, of: {', '.join(VARIANTS)} (default: shipped)")
    p.add_argument("--workloads", default="fan-in,realistic,merges")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")

    info = machine()
    print(f"store_write: {info['cpu']}, {info['cores']} cores, {info['python']}, source "
          f"{info['source']}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    data = workloads(args.rows)
    wanted = args.workloads.split(",")
    results: list[dict[str, Any]] = []
    workdir = tempfile.mkdtemp(prefix="store-write-")
    with postgres_for_bench(args.store) as server_url:
        writers: list[tuple[str, Callable[[], StoreWriter]]] = [
            ("sqlite", lambda: SQLiteWriter(os.path.join(workdir, f"{time.time_ns()}.db")))]
        for v in variants:
            writers.append((f"postgresql/{v}",
                            lambda v=v: VARIANTS[v](new_database(server_url))))  # type: ignore
        # Rounds: every writer once per round, so that a slow minute of the machine falls on
        # all of them alike.
        best: dict[tuple[str, str], dict] = {}
        for round_ in range(args.repeat):
            for workload in wanted:
                first, before, rows = data[workload]
                for name, make in writers:
                    writer = make()
                    try:
                        r = timed_writes(writer, first, rows, before)
                    finally:
                        writer.close()
                    print(f"  round {round_ + 1} {workload:>9} {name:<24} "
                          f"{r['rows_per_s']:>9,.0f} rows/s  client "
                          f"{r['client_cpu_us_per_row']:5.1f} µs/row  server "
                          f"{r['server_cpu_us_per_row']:5.1f} µs/row", flush=True)
                    key = (workload, name)
                    if key not in best or r["rows_per_s"] > best[key]["rows_per_s"]:
                        best[key] = dict(r, workload=workload, writer=name)
        results = list(best.values())
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nbest of {args.repeat}, {args.rows:,} rows per workload in batches of {BATCH:,}; "
          f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| workload | writer | rows/s | client CPU µs/row | server CPU µs/row |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['workload']} | {r['writer']} | {r['rows_per_s']:,.0f} | "
              f"{r['client_cpu_us_per_row']:.1f} | "
              f"{r['server_cpu_us_per_row']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
