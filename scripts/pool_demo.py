"""A 4-process pool running thousands of traced tasks; prints spans created vs stored.

    python scripts/pool_demo.py [--tasks 5000] [--processes 4] [--start-method fork]

Each task is a ``@traced`` function that calls another, so every task makes two spans, all under
one root span in the parent. The script counts what it created, flushes, reads the store and
prints both counts (and whether the tree is intact); it exits 1 if anything is missing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tracer  # noqa: E402
from workers.store import open_store  # noqa: E402


@tracer.traced
def parse(i: int) -> dict:
    return {"item": i, "even": i % 2 == 0}


@tracer.traced(type="task")
def handle(i: int) -> dict:
    record = parse(i)
    record["score"] = (i % 10) / 10
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--chunksize", type=int, default=50)
    p.add_argument("--start-method", default="fork", choices=["fork", "spawn", "forkserver"])
    p.add_argument("--store", help="store to use (default: a temporary file)")
    args = p.parse_args()

    store = args.store or os.path.join(tempfile.mkdtemp(prefix="pool-demo-"), "traces.db")
    tracer.init_logger("pool-demo", store=store)
    ctx = multiprocessing.get_context(args.start_method)
    started = time.perf_counter()
    with tracer.start_span("pool demo", type="task") as root, \
            tracer.TracedPool(args.processes, context=ctx) as pool:
        results = pool.map(handle, range(args.tasks), chunksize=args.chunksize)
    assert len(results) == args.tasks
    ran = time.perf_counter() - started
    tracer.flush(timeout=300)
    committed = time.perf_counter() - started

    created = 1 + 2 * args.tasks
    with open_store(store, readonly=True) as reader:
        rows = list(reader.rows(root_span_id=root.root_span_id))
    by_span = {r["span_id"]: r for r in rows}
    handles = [r for r in rows if r["span_attributes"]["name"] == "handle"]
    intact = (all(r["span_parents"] == [root.span_id] for r in handles)
              and all(by_span[r["span_parents"][0]]["span_attributes"]["name"] == "handle"
                      for r in rows if r["span_attributes"]["name"] == "parse"))
    print(f"start method     {args.start_method}, {args.processes} processes, "
          f"{args.tasks} tasks (chunksize {args.chunksize})")
    print(f"spans created    {created}")
    print(f"spans stored     {len(rows)}")
    print(f"tree intact      {'yes' if intact else 'NO'}")
    print(f"pool ran in      {ran:.2f} s; everything committed after {committed:.2f} s")
    print(f"store            {store}")
    ok = len(rows) == created and intact
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
