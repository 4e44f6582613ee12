"""The writer's trace-summary step alone: ``summary.apply`` over a batch of changes.

    python scripts/bench/summary_apply.py [--traces 2000] [--children 9] [--repeat 15]

An in-memory SQLite database with the ``traces`` table; each repetition applies one batch of
new rows (a root and ``--children`` children per trace, the text index off) in a transaction it
then rolls back. Prints the median and the best time per change. What the SQLite writer adds
per row to keep the summaries (docs/interop.md: the root rule's cost was measured with it).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from workers.store import summary  # noqa: E402


def changes(traces: int, children: int) -> list[summary.Change]:
    made = []
    for t in range(traces):
        root = f"r{t}"
        metrics = {"start": 1.0 + t, "end": 2.0 + t}
        made.append(summary.Change("c", root, None, {
            "span_id": root, "root_span_id": root, "span_parents": None, "metrics": metrics,
            "span_attributes": {"name": "root", "type": "task"}}))
        for i in range(children):
            made.append(summary.Change("c", f"{root}-{i}", None, {
                "span_id": f"{root}-{i}", "root_span_id": root, "span_parents": [root],
                "metrics": metrics, "span_attributes": {"name": "child", "type": "function"}}))
    return made


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--traces", type=int, default=2000)
    p.add_argument("--children", type=int, default=9)
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args()
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(summary.TRACES)
    batch = changes(args.traces, args.children)
    times = []
    for _ in range(args.repeat):
        conn.execute("BEGIN")
        start = time.perf_counter()
        summary.apply(conn, batch, 0.0, "off")
        times.append(time.perf_counter() - start)
        conn.execute("ROLLBACK")
    times.sort()
    per = 1e6 / len(batch)
    print(f"summary.apply, {len(batch):,} changes ({args.children} children a root): "
          f"median {times[len(times) // 2] * per:.3f} µs/change, best {times[0] * per:.3f}")


if __name__ == "__main__":
    main()
