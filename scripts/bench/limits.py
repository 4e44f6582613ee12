#!/usr/bin/env python
"""What bounds the two missed targets: each stage of a span's path timed alone, on this machine.

    python scripts/bench/limits.py [--spans 64000] [--repeats 7] [--json FILE]

Each figure is the fastest of ``--repeats`` runs (GC off), so it is the stage's own cost with the
least interference from anything else on the machine: a floor, not what a loaded run sees.

Caller side (one process):
  floor       the least a Python decorator can do to record a span: read and set a context
              variable, draw one random id, read the clock twice, keep the arguments and the
              result by reference in a tuple appended to a list;
  ours        ``@tracer.traced`` with a logger, its recorder's ``add`` replaced by a list's
              append: the caller's own work, without the flusher;
  pack        the flusher's packing of the same records (``serialize.pack_records``, runs of 64):
              work on the caller's GIL that the caller waits for when the two overlap.

Aggregator side (the spans a ``@traced`` root/child pair records, 100-character input):
  receive     ``Aggregator._apply_records`` on DATA bodies as recorders send them: decode, check,
              turn each record into its partial row, queue it (the real ``RowQueue``);
  sink        ``SQLiteWriter.write`` of the queued rows in batches of 1,000 (the default): columns,
              msgpack, the upsert into the table and its indexes, the commit; wall and CPU time.
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import json
import os
import random
import sys
import tempfile
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, positive  # noqa: E402

TEXT = "x" * 100


def fastest(fn, number: int, repeats: int) -> float:
    """Microseconds per call of the fastest of ``repeats`` runs of ``number`` calls."""
    return min(timeit.repeat(fn, number=1, repeat=repeats)) / number * 1e6


# -- caller side -------------------------------------------------------------------------------


def floor_decorator(buffer: list):
    current: contextvars.ContextVar[int | None] = contextvars.ContextVar("current", default=None)
    rng = random.Random()

    def traced(fn):
        append, clock, draw = buffer.append, time.time, rng.getrandbits
        get, set_, reset = current.get, current.set, current.reset

        def wrapper(*args, **kwargs):
            parent = get()
            span = draw(64)
            token = set_(span)
            start = clock()
            output = fn(*args, **kwargs)
            end = clock()
            reset(token)
            append((parent, span, start, end, args, kwargs, output))
            return output

        return wrapper

    return traced


def caller(spans: int, repeats: int, store_dir: str) -> dict:
    import tracer
    from tracer import serialize

    def g(text):
        return len(text)

    kept: list = []  # both keep their records, as a recorder's buffer does until it sends them
    floor_g = floor_decorator(kept)(g)
    tracer.init_logger("limits", store=os.path.join(store_dir, "caller.db"))
    logger = tracer.current_logger()
    if logger is None:
        raise SystemExit("limits: init_logger set no current logger")
    rec = logger.recorder
    # The records are packed below, untimed. The method is shadowed on this instance only, for
    # the timing: deliberate, so the two ignores (assigned directly rather than by setattr, so
    # that mypy still checks that the method exists).
    real_add = rec.add
    rec.add = kept.append  # type: ignore[method-assign,assignment]
    ours_g = tracer.traced(g)

    def loop(fn):
        def run():
            kept.clear()
            for _ in range(spans):
                fn(TEXT)
        return run

    out = {"floor_us": fastest(loop(floor_g), spans, repeats),
           "ours_us": fastest(loop(ours_g), spans, repeats)}
    runs = [kept[i:i + 64] for i in range(0, len(kept), 64)]
    out["pack_us"] = fastest(lambda: [serialize.pack_records(r) for r in runs], len(kept),
                             repeats)
    out["bare_us"] = fastest(loop(g), spans, repeats)
    rec.add = real_add  # type: ignore[method-assign]  # put the real method back
    return out


# -- aggregator side ---------------------------------------------------------------------------


def bodies(spans: int) -> list[bytes]:
    """DATA bodies as a recorder sends them: 64 records each, a root and a child per pair."""
    from tracer import serialize, wire
    from tracer.ids import new_id, new_trace_id

    container = wire.logs_container("limits")
    records: list[tuple] = []
    for i in range(spans // 2):
        now = time.time()
        trace, root, child = new_trace_id(now), new_id(), new_id()
        inp = (("i", "text"), ((i, TEXT), None))
        records.append(wire.span_end(container, trace, child, root, root, None, "child", None,
                                     now, now, {"output": 100}, inp))
        records.append(wire.span_end(container, trace, root, None, root, None, "work", None,
                                     now, now, {"output": 100}, inp))
    return [serialize.pack_records(records[i:i + 64]) for i in range(0, len(records), 64)]


def aggregator(spans: int, repeats: int, store_dir: str) -> dict:
    from workers.aggregator import Aggregator
    from workers.queue import RowQueue
    from workers.senders import Sender
    from workers.store.sqlite import SQLiteWriter

    data = bodies(spans)
    agg = Aggregator("ipc:///nonexistent", os.path.join(store_dir, "unused.db"))
    best_receive = float("inf")
    best_wall = best_cpu = float("inf")
    for attempt in range(repeats):
        agg.queue = RowQueue()
        sender = Sender("limits", 1, 0)
        gc.collect()
        start = time.perf_counter()
        for body in data:
            agg._apply_records(body, sender)
        best_receive = min(best_receive, time.perf_counter() - start)
        queued = agg.queue.take(spans, 1 << 40, 0)
        if queued is None:  # only once the queue is closed, which nothing here does
            raise SystemExit("limits: the row queue is closed")
        if len(queued) != spans:
            raise SystemExit(f"limits: {len(queued)} rows queued of {spans}")
        sink = SQLiteWriter(os.path.join(store_dir, f"sink-{attempt}.db"))
        sink.write(queued[:1])  # schema and connection made outside the timing
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(1, spans, 1000):
            sink.write(queued[i:i + 1000])
        best_wall = min(best_wall, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        sink.close()
    return {"receive_us": best_receive / spans * 1e6,
            "sink_wall_us": best_wall / (spans - 1) * 1e6,
            "sink_cpu_us": best_cpu / (spans - 1) * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spans", type=positive, default=64_000, help="spans per run (default: "
                   "%(default)s)")
    p.add_argument("--repeats", type=positive, default=7, help="runs per figure, the fastest "
                   "kept (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = p.parse_args()
    info = machine()
    print(f"limits: {info['cpu']}, {info['cores']} cores, {info['python']}, "
          f"source {info['source']}, load {info['loadavg_start'][0]:.2f}", file=sys.stderr)
    store_dir = tempfile.mkdtemp(prefix="limits-")
    gc.disable()
    result = caller(args.spans, args.repeats, store_dir)
    result.update(aggregator(args.spans, args.repeats, store_dir))
    rows = [
        ("bare call of g(text)", result["bare_us"]),
        ("caller floor: the least a Python decorator records", result["floor_us"]),
        ("caller, ours: @traced with a logger, records discarded", result["ours_us"]),
        ("flusher: packing one record (same GIL as the caller)", result["pack_us"]),
        ("aggregator: receive, decode, partial row, queue", result["receive_us"]),
        ("aggregator: sink write, wall (columns, msgpack, upsert, commit)",
         result["sink_wall_us"]),
        ("aggregator: sink write, CPU", result["sink_cpu_us"]),
    ]
    print("| stage | µs per span (fastest run) |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.2f} |")
    caller_floor = result["ours_us"] + result["pack_us"]
    aggregator_floor = result["receive_us"] + result["sink_cpu_us"]
    print(f"\nOne span through this process's GIL: {caller_floor:.2f} µs (own work + packing).")
    print(f"One span through the aggregator: {aggregator_floor:.2f} µs of CPU, of which "
          f"{result['receive_us']:.2f} µs and the sink's Python hold the GIL; at best "
          f"{1e6 / aggregator_floor:,.0f} spans/s on one core with nothing else running.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": result}, f, indent=2)


if __name__ == "__main__":
    main()
