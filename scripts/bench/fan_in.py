"""Fan-in, end to end: A aggregators x P producer processes x M spans into one store.

    python scripts/bench/fan_in.py [--producers 1,2,4] [--spans 50000] [--paced 2000]
                                   [--aggregators 1,4] [--store sqlite,postgresql]

For each store, aggregator count and producer count: A standalone aggregators on one fresh
store, then P producer processes for each aggregator (its own: A x P in all) that each call a
``@traced`` function M times as fast as they can (the default blocking policy: a producer waits
when its aggregator falls behind) and flush. Reported per run:

- offered spans/s: spans created / the longest producer's time from its first call to its last;
- committed spans/s: spans stored / the time from the first span's start to the last commit;
- latency from a span's end to its commit (the row's ``updated`` time), p50 and p99;
- CPU time per span (user + system, all threads) of the aggregator and of all producers together
  (a producer's last reading, sampled every 20 ms, before it exits);
- peak RSS of the aggregator and of the largest producer (psutil, sampled every 20 ms);
- committed == created (every span, checked in the store).

``--store`` names the stores to run, one after the other, each with every aggregator and
producer count: ``sqlite`` (a new file per run, the default), ``postgresql`` (a PostgreSQL
server started for this invocation with ``tests/postgres.py``'s helper, ``fsync`` on) or a
``postgresql://`` URL of a server to use (a new database is made on it per run: the user needs
CREATEDB). CPU and RSS are the aggregators' (summed, largest): a PostgreSQL server's own CPU is
not in them.

``--search-index MODE`` sets the aggregator's ``TRACER_SEARCH_INDEX`` (``all``, ``roots``,
``off``). ``--paced R`` adds one unsaturated run: one producer at R spans/s, for the end-to-commit
latency when the aggregator keeps up. ``--profile FILE`` records the aggregator of the largest
run with py-spy (``pip install py-spy``) into FILE (speedscope JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import child_env, cpu_seconds, machine, percentile, rss  # noqa: E402
from postgres_server import new_database, postgres_for_bench  # noqa: E402

from tracer import config  # noqa: E402
from tracer.stats_client import ask_stats  # noqa: E402

PRODUCER = """
import json, sys, time, tracer

@tracer.traced
def work(i, text):
    return len(text)

spans, rate = int(sys.argv[1]), float(sys.argv[2])
text = "x" * 100
tracer.init_logger("fan-in")
start = time.perf_counter()
if rate:
    for i in range(spans):
        work(i, text)
        delay = start + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
else:
    for i in range(spans):
        work(i, text)
emitted = time.perf_counter()
tracer.flush(timeout=600)
print(json.dumps({"emit_s": emitted - start, "flush_s": time.perf_counter() - emitted}))
"""


def last_json_line(proc: subprocess.Popen[str]) -> dict:
    """The report a producer printed last (its stdout is a pipe)."""
    assert proc.stdout is not None, "the producer was started without stdout=PIPE"
    return json.loads(proc.stdout.read().strip().splitlines()[-1])


def stored_spans(store: str) -> tuple[list[tuple[float, float]], float, float]:
    """The ``(end, updated)`` of every ``work`` span in the store, the first span's start and
    the last commit."""
    rows_sql = 'SELECT "end", updated FROM rows WHERE name = \'work\''
    span_sql = "SELECT MIN(start), MAX(updated) FROM rows WHERE name = 'work'"
    if store.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(store) as pg:
            rows = pg.execute(rows_sql).fetchall()
            first_start, last_commit = pg.execute(span_sql).fetchone() or (0.0, 0.0)
    else:
        conn = sqlite3.connect(store)
        rows = conn.execute(rows_sql).fetchall()
        first_start, last_commit = conn.execute(span_sql).fetchone()
        conn.close()
    return rows, first_start, last_commit


def run(producers: int, spans: int, rate: float = 0.0, profile: str | None = None,
        search_index: str = "all", store: str = "sqlite", aggregators: int = 1) -> dict:
    """One run; ``store`` is ``sqlite`` (a new file) or the URL of a new PostgreSQL database."""
    workdir = tempfile.mkdtemp(prefix="fan-in-")
    target = os.path.join(workdir, "traces.db") if store == "sqlite" else store
    endpoints = [f"ipc://{config.runtime_dir()}/fan-in-{os.getpid()}-{producers}-{a}.sock"
                 for a in range(aggregators)]
    procs_of: list[subprocess.Popen[bytes]] = []
    for endpoint in endpoints:
        env = child_env(TRACER_ENDPOINT=endpoint, PYTHONPATH=ROOT,
                        TRACER_SEARCH_INDEX=search_index)
        procs_of.append(subprocess.Popen([sys.executable, "-m", "workers.aggregator", "--bind",
                                          endpoint, "--store", target], env=env))
    deadline = time.monotonic() + 60
    for endpoint in endpoints:
        while ask_stats(endpoint, 500) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("an aggregator did not start")
    spy = None
    if profile:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(procs_of[0].pid), "--format",
                                "speedscope", "--output", profile, "--rate", "200"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [subprocess.Popen([sys.executable, "-c", PRODUCER, str(spans), str(rate)],
                              env=child_env(TRACER_ENDPOINT=endpoint, PYTHONPATH=ROOT),
                              stdout=subprocess.PIPE, text=True)
             for endpoint in endpoints for _ in range(producers)]
    peak_aggregator = peak_producer = 0
    producer_cpu: dict[int, float] = {}  # the last reading before each producer exits
    while any(p.poll() is None for p in procs):
        peak_aggregator = max([peak_aggregator] + [rss(a.pid) for a in procs_of])
        peak_producer = max([peak_producer] + [rss(p.pid) for p in procs])
        for p in procs:
            producer_cpu[p.pid] = cpu_seconds(p.pid) or producer_cpu.get(p.pid, 0.0)
        time.sleep(0.02)
    reports = [last_json_line(p) for p in procs]
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT, not SIGTERM
        spy.wait(60)
    counters: dict[str, int] = {}
    cpu = {"user": 0.0, "system": 0.0}
    for endpoint, aggregator in zip(endpoints, procs_of, strict=True):
        stats = ask_stats(endpoint, 5000)
        if stats is None:
            raise RuntimeError("an aggregator did not answer the final stats request")
        for k, v in stats["counters"].items():
            if isinstance(v, int):
                counters[k] = counters.get(k, 0) + v
        times = psutil.Process(aggregator.pid).cpu_times()
        cpu["user"] += times.user
        cpu["system"] += times.system
    for aggregator in procs_of:
        aggregator.terminate()
    for aggregator in procs_of:
        aggregator.wait(120)

    rows, first_start, last_commit = stored_spans(target)
    latencies = sorted(updated - end for end, updated in rows)
    created = aggregators * producers * spans
    return {
        "store": "sqlite" if store == "sqlite" else "postgresql",
        "aggregators": aggregators,
        "producers": producers, "spans_per_producer": spans, "paced_rate": rate or None,
        "created": created, "committed": len(rows), "complete": len(rows) == created,
        "offered_spans_per_s": created / max(r["emit_s"] for r in reports),
        "committed_spans_per_s": len(rows) / (last_commit - first_start),
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "peak_rss_aggregator_mib": peak_aggregator / 2**20,
        "peak_rss_producer_mib": peak_producer / 2**20,
        "aggregator_cpu_s": cpu,
        "aggregator_cpu_us_per_span": (cpu["user"] + cpu["system"]) / created * 1e6,
        "producer_cpu_us_per_span": sum(producer_cpu.values()) / created * 1e6,
        "dropped": {k: v for k, v in counters.items() if "dropped" in k or "lost" in k},
        "loadavg_end": os.getloadavg(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--producers", default="1,2,4", help="producer counts (default: 1,2,4)")
    p.add_argument("--spans", type=int, default=50000, help="spans per producer (default: 50000)")
    p.add_argument("--paced", type=float, default=2000,
                   help="spans/s of the unsaturated run, one producer (0: skip; default: 2000)")
    p.add_argument("--profile", metavar="FILE", help="py-spy profile of the largest run's "
                                                      "aggregator (speedscope JSON)")
    p.add_argument("--search-index", choices=("all", "roots", "off"), default="all",
                   help="the aggregator's TRACER_SEARCH_INDEX (default: all)")
    p.add_argument("--aggregators", default="1", help="aggregator counts, each aggregator fed "
                   "by --producers producers of its own (default: 1)")
    p.add_argument("--store", default="sqlite", help="stores to run, comma-separated: sqlite, "
                   "postgresql (a server started here) or a postgresql:// URL (default: sqlite)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()
    stores = args.store.split(",")
    for store in stores:
        if store not in ("sqlite", "postgresql") and not store.startswith(
                ("postgresql://", "postgres://")):
            p.error(f"--store {store!r}: expected sqlite, postgresql or a postgresql:// URL")

    info = machine()
    print(f"fan-in: {info['cpu']}, {info['cores']} cores, {info['python']}, source "
          f"{info['source']}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    counts = [int(n) for n in args.producers.split(",")]
    aggregator_counts = [int(n) for n in args.aggregators.split(",")]
    results = []
    server_url = next((s for s in stores if s.startswith(("postgresql://", "postgres://"))),
                      None)
    wants_server = any(s != "sqlite" for s in stores)
    with contextlib.ExitStack() as stack:
        for store in stores:
            if store != "sqlite" and wants_server and server_url is None:
                server_url = stack.enter_context(postgres_for_bench(None))
            for a in aggregator_counts:
                for n in counts:
                    target = "sqlite" if store == "sqlite" else new_database(str(server_url))
                    results.append(run(n, args.spans,
                                       profile=args.profile if n == max(counts) else None,
                                       search_index=args.search_index, store=target,
                                       aggregators=a))
                    r = results[-1]
                    print(f"  {r['store']}, {a} aggregator(s) x {n} producer(s): "
                          f"{r['committed_spans_per_s']:,.0f} spans/s committed", flush=True)
            if args.paced:
                target = "sqlite" if store == "sqlite" else new_database(str(server_url))
                results.append(run(1, int(args.paced * 5), rate=args.paced,
                                   search_index=args.search_index, store=target))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| store | aggregators | producers each | spans | offered spans/s | "
          "committed spans/s | p50 end→commit | p99 end→commit | CPU µs/span aggregators | "
          "CPU µs/span producers | peak RSS aggregator | peak RSS producer | "
          "committed == created |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        label = f"{r['producers']}" + (f" (paced {r['paced_rate']:.0f}/s)" if r["paced_rate"]
                                       else "")
        print(f"| {r['store']} | {r['aggregators']} | {label} | {r['created']:,} | "
              f"{r['offered_spans_per_s']:,.0f} | "
              f"{r['committed_spans_per_s']:,.0f} | {r['latency_p50_ms']:.0f} ms | "
              f"{r['latency_p99_ms']:.0f} ms | {r['aggregator_cpu_us_per_span']:.1f} | "
              f"{r['producer_cpu_us_per_span']:.1f} | {r['peak_rss_aggregator_mib']:.1f} MiB | "
              f"{r['peak_rss_producer_mib']:.1f} MiB | "
              f"{'yes' if r['complete'] else 'NO: ' + str(r['committed'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=2)
    return 0 if all(r["complete"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
