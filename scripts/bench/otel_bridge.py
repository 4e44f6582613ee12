#!/usr/bin/env python
"""Cost per OpenTelemetry span on the caller's thread: through our bridge
(``tracer.integrations.opentelemetry``) beside plain OpenTelemetry.

One span shape for every case: ``with tracer.start_as_current_span("work") as span:
span.set_attribute("item", i)``, what an instrumentation does per operation. Cases, each in a
child process of its own (the bridge changes process-wide OpenTelemetry state):

  sdk          OpenTelemetry's SDK TracerProvider with no span processor: the SDK's own cost,
               the floor under every other case;
  simple       + a ``SimpleSpanProcessor`` whose exporter discards (it exports on the caller's
               thread: for reference);
  batch        + a ``BatchSpanProcessor`` whose exporter discards (OpenTelemetry's usual
               choice), its queue large enough to hold a timed batch (the default 2048 drops
               spans, which would time the cheaper drop path);
  bridge       ``tracer.init_logger`` (a real aggregator and store) and
               ``tracer.integrations.opentelemetry.setup()``: our processor on the SDK provider
               it makes; the spans become rows, which are counted in the store afterwards;
  bridge-under the same, every span started inside one of our spans (OpenTelemetry then sees
               our span through the bridged context).

Each case times ``--repeats`` batches of ``--spans`` spans with ``time.perf_counter_ns()`` (GC
disabled while a batch runs), after a warm-up batch, flushing between batches (untimed: for
``batch``, ``force_flush``; for the bridge, ``tracer.flush``), and reports the median per-span
time. The background threads (BatchSpanProcessor's worker, our recorder's flusher) run during
the batches as they would in an application, on the same GIL. Children run in an environment
stripped of TRACER_*, _TRACER_*, BRAINTRUST_* and OTEL_* variables and print JSON.

    python scripts/bench/otel_bridge.py                  # 10000 spans x 31 repeats per case
    python scripts/bench/otel_bridge.py --spans 5000 --json /tmp/otel_bridge.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import count

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, child_env, machine, positive  # noqa: E402

CASES = ("sdk", "simple", "batch", "bridge", "bridge-under")
LABELS = {
    "sdk": "OpenTelemetry SDK, no span processor (the SDK alone)",
    "simple": "OpenTelemetry SDK + SimpleSpanProcessor, discarding exporter",
    "batch": "OpenTelemetry SDK + BatchSpanProcessor, discarding exporter",
    "bridge": "OpenTelemetry SDK + our bridge (tracer's recorder, aggregator, store)",
    "bridge-under": "the same, each span inside one of our spans",
}
PROJECT = "otel-bridge-bench"


def time_batch(work: Callable[[], None], spans: int) -> tuple[int, int]:
    """Wall-clock and this thread's CPU nanoseconds for ``spans`` calls of ``work()``, GC
    disabled meanwhile."""
    gc.collect()
    gc.disable()
    try:
        cpu = time.thread_time_ns()
        start = time.perf_counter_ns()
        for _ in range(spans):
            work()
        return time.perf_counter_ns() - start, time.thread_time_ns() - cpu
    finally:
        gc.enable()


def measure(work: Callable[[], None], args: argparse.Namespace,
            between: Callable[[], object]) -> dict:
    time_batch(work, args.warmup)
    between()
    walls, cpus = [], []
    for _ in range(args.repeats):
        wall, cpu = time_batch(work, args.spans)
        walls.append(wall / args.spans / 1000)
        cpus.append(cpu / args.spans / 1000)
        between()
    return {"median_us": statistics.median(walls), "min_us": min(walls),
            "max_us": max(walls), "cpu_median_us": statistics.median(cpus),
            "cpu_min_us": min(cpus), "cpu_max_us": max(cpus), "per_repeat_us": walls,
            "per_repeat_cpu_us": cpus}


def expected_spans(args: argparse.Namespace) -> int:
    return args.warmup + args.repeats * args.spans


# -- child modes -------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> dict:
    # The BatchSpanProcessor warns once per span it drops: never here (its queue holds a batch).
    logging.getLogger("opentelemetry").setLevel(logging.ERROR)
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discard(SpanExporter):
        exported = 0

        def export(self, spans):
            Discard.exported += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self):
            pass

    result: dict = {"mode": args.mode}
    between: Callable[[], object] = lambda: None  # noqa: E731
    if args.mode in ("bridge", "bridge-under"):
        import tracer
        from tracer.integrations import opentelemetry as tracer_otel

        store = os.path.join(args.store_dir, "bench.db")
        logger = tracer.init_logger(PROJECT, store=store)
        tracer_otel.setup()
        provider = trace.get_tracer_provider()
        result["store"] = store
        result["aggregator_pid"] = logger.recorder.aggregator_pid

        def between() -> None:
            tracer.flush(timeout=300)
    else:
        provider = TracerProvider()
        if args.mode == "simple":
            provider.add_span_processor(SimpleSpanProcessor(Discard()))
        elif args.mode == "batch":
            queue = max(2048, 2 * max(args.spans, args.warmup))
            processor = BatchSpanProcessor(Discard(), max_queue_size=queue)
            provider.add_span_processor(processor)
            result["max_queue_size"] = queue

            def between() -> None:
                processor.force_flush(60_000)
    otel = provider.get_tracer("bench")
    items = count()

    def work() -> None:
        with otel.start_as_current_span("work") as span:
            span.set_attribute("item", next(items))

    if args.mode == "bridge-under":
        import tracer

        with tracer.start_span("ours", type="task"):
            result["timings"] = measure(work, args, between)
    else:
        result["timings"] = measure(work, args, between)
    between()
    if args.mode in ("simple", "batch"):
        result["exported"] = Discard.exported
    if args.mode in ("bridge", "bridge-under"):
        result["delivered"] = count_rows(result["store"])
        result["flusher_us"] = flusher_cost(otel)
    result["expected"] = expected_spans(args)
    return result


def flusher_cost(otel: object) -> dict:
    """What the recorder's flusher does per span of ``work()``, timed alone: the record made
    from the finished span (``tracer.otel_mapping``), then packed."""
    from opentelemetry.sdk.trace import TracerProvider

    import tracer
    from tracer import wire
    from tracer.integrations.opentelemetry import TracerSpanProcessor, _Finished, _record
    from tracer.serialize import pack_records

    finished: list = []

    class Keep(TracerSpanProcessor):
        def on_end(self, span: object) -> None:
            finished.append(span)

    provider = TracerProvider()
    provider.add_span_processor(Keep())
    tracer_ = provider.get_tracer("bench")
    for item in range(5000):
        with tracer_.start_as_current_span("work") as span:
            span.set_attribute("item", item)
    container = wire.logs_container(PROJECT)
    logger = tracer.current_logger()
    assert logger is not None
    builds, packs = [], []
    for _ in range(5):
        cpu = time.thread_time_ns()
        records = [_record(_Finished(s, container, logger.recorder)) for s in finished]
        built = time.thread_time_ns()
        pack_records(records)
        builds.append((built - cpu) / len(finished) / 1000)
        packs.append((time.thread_time_ns() - built) / len(finished) / 1000)
    return {"record_us": statistics.median(builds), "pack_us": statistics.median(packs)}


def count_rows(store: str) -> int:
    """Rows named "work" in the store (each of the bridge's spans must be there)."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        import msgpack

        total = 0
        for (data,) in db.execute("SELECT data FROM rows"):
            row = msgpack.unpackb(data) if isinstance(data, bytes) else json.loads(data)
            if (row.get("span_attributes") or {}).get("name") == "work":
                total += 1
        return total


# -- the parent ---------------------------------------------------------------------------------


def run_child(mode: str, args: argparse.Namespace, store_dir: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--spans", str(args.spans),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--store-dir", store_dir]
    env = child_env(PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH"))
                                               if p))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"otel_bridge: child {mode!r} failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"otel_bridge: child {mode!r} printed no JSON")
    return json.loads(lines[-1])


def main_run(args: argparse.Namespace) -> int:
    info = machine()
    print("# Cost per OpenTelemetry span on the caller's thread: our bridge beside "
          "OpenTelemetry's processors\n")
    print(f"- command: `{info['command']}`")
    print(f"- machine: {info['platform']}; CPU: {info['cpu']}; cores: {info['cores']} "
          f"(usable: {info['usable_cores']})")
    print(f"- Python {info['python']}; library: {info['source']}")
    try:
        from importlib.metadata import version
        print(f"- opentelemetry-sdk {version('opentelemetry-sdk')}")
    except Exception:
        pass
    print("- load average at start: " + " ".join(f"{x:.2f}" for x in info["loadavg_start"]))
    print(f"- method: per case, a child process; {args.repeats} batches of {args.spans} spans "
          f"after a {args.warmup}-span warm-up, flushed between batches (untimed); median of "
          "the per-span times; GC off while timing")
    print(flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="otel_bridge-") as tmp:
        for mode in CASES:
            store_dir = os.path.join(tmp, mode)
            os.makedirs(store_dir)
            results[mode] = run_child(mode, args, store_dir)
    info["loadavg_end"] = os.getloadavg()
    cpu = {mode: r["timings"]["cpu_median_us"] for mode, r in results.items()}
    wall = {mode: r["timings"]["median_us"] for mode, r in results.items()}
    print("The caller's thread: its CPU time per span (what the span costs the code that makes "
          "it; other threads, ours or OpenTelemetry's, are not counted):\n")
    print("| case | CPU µs per span | × BatchSpanProcessor | added to the SDK alone, µs |")
    print("|---|---:|---:|---:|")
    for mode in CASES:
        print(f"| {LABELS[mode]} | {cpu[mode]:.2f} | {cpu[mode] / cpu['batch']:.2f} | "
              f"{cpu[mode] - cpu['sdk']:.2f} |")
    print()
    print("Wall-clock time per span in the same batches (the background threads, "
          "BatchSpanProcessor's worker or our recorder's flusher, run meanwhile on the same "
          "GIL, so their work shows here):\n")
    print("| case | wall µs per span | × BatchSpanProcessor |")
    print("|---|---:|---:|")
    for mode in CASES:
        print(f"| {LABELS[mode]} | {wall[mode]:.2f} | {wall[mode] / wall['batch']:.2f} |")
    print()
    for mode in ("bridge", "bridge-under"):
        flusher = results[mode]["flusher_us"]
        print(f"- {mode}: the flusher's work per span, timed alone: record "
              f"{flusher['record_us']:.2f} µs + packing {flusher['pack_us']:.2f} µs")
    print()
    print("Spread (min-max µs per span over repeats, CPU / wall):")
    for mode in CASES:
        t = results[mode]["timings"]
        print(f"- {mode}: {t['cpu_min_us']:.2f}-{t['cpu_max_us']:.2f} / "
              f"{t['min_us']:.2f}-{t['max_us']:.2f}")
    print()
    print("Delivery:")
    for mode in ("simple", "batch"):
        r = results[mode]
        print(f"- {mode}: {r['exported']} of {r['expected']} spans exported")
    for mode in ("bridge", "bridge-under"):
        r = results[mode]
        status = "OK" if r["delivered"] == r["expected"] else "SHORT"
        print(f"- {mode}: {r['delivered']} of {r['expected']} spans stored as rows {status}")
    print("- load average at end: " + " ".join(f"{x:.2f}" for x in info["loadavg_end"]))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": info, "spans": args.spans, "repeats": args.repeats,
                       "warmup": args.warmup, "results": results}, out, indent=2)
        print(f"\nraw numbers written to {args.json}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Measure the caller's cost per OpenTelemetry span through tracer's bridge "
                    "beside OpenTelemetry's own span processors (each case in a child "
                    "process). Prints Markdown.")
    p.add_argument("--spans", type=positive, default=10_000,
                   help="spans per timed batch; within the recorder's buffer (TRACER_QUEUE_SIZE, "
                        "default 15000) the bridge's caller never waits for the aggregator "
                        "(default: %(default)s)")
    p.add_argument("--repeats", type=positive, default=31,
                   help="timed batches per case; the median is reported (default: %(default)s)")
    p.add_argument("--warmup", type=positive, default=2_000,
                   help="spans in the untimed warm-up batch (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers to PATH")
    p.add_argument("--mode", choices=("main", *CASES), default="main", help=argparse.SUPPRESS)
    p.add_argument("--store-dir", help=argparse.SUPPRESS)
    return p


def main() -> int:
    args = parser().parse_args()
    if args.mode == "main":
        return main_run(args)
    fd = os.dup(1)  # the JSON goes here; anything else printed goes to stderr
    os.dup2(2, 1)
    result = child(args)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
