"""N producer processes x M spans against a small queue whose sink is down, once per policy.

    python scripts/stress_queue_full.py [--procs 4] [--spans 10000] [--queue-sizes 1000,20000]
                                        [--outage 3] [--payload-bytes 1024] [--bytes-case]

For each queue size and each policy (block, drop-when-full, drop-exceeding-maxsize) the script
starts a standalone aggregator on a fresh store, locks the store (the sink is down) for
``--outage`` seconds while the producers log their spans, then lets go. It prints created,
committed, dropped by reason, wall time, and the peak RSS of the aggregator and of the largest
producer (psutil, sampled every 20 ms), and checks ``committed + dropped == created`` (PASS/FAIL).
Exits 1 if any run fails the check.

``--bytes-case`` runs large spans instead (each logs ``--large-bytes`` of output, packed by the
caller) under the blocking policy, once with ``TRACER_QUEUE_MAX_BYTES`` at ``--max-bytes`` and
once with no practical byte bound (1 TiB), to show what the bound does to memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts", "bench"))

from common import rss  # noqa: E402

from tracer import config  # noqa: E402
from tracer.stats_client import ask_stats  # noqa: E402

POLICIES = {
    "block": {},
    "drop-when-full": {"TRACER_QUEUE_DROP_WHEN_FULL": "1"},
    "drop-exceeding-maxsize": {"TRACER_QUEUE_DROP_EXCEEDING_MAXSIZE": "{size}"},
}

# One record per span: @traced sends input, output and timing together when the call ends, so
# spans, records and rows count the same. (Drops are counted in records, that is partial rows:
# a span that calls log() twice is three records.)
PRODUCER = """
import sys, tracer

@tracer.traced
def work(i, payload):
    return i

spans, payload = int(sys.argv[1]), "x" * int(sys.argv[2])
tracer.init_logger("stress")
for i in range(spans):
    work(i, payload)
try:
    tracer.flush(timeout=600)
except tracer.FlushError as exc:  # drop policies: the flush says what this process lost
    print(f"flush: {exc}", file=sys.stderr)
"""

# Large spans: the output is packed on the caller's thread (span.log), so each record is a new
# buffer of that size, as a real large value would be.
LARGE_PRODUCER = """
import sys, tracer

spans, payload = int(sys.argv[1]), "x" * int(sys.argv[2])
tracer.init_logger("stress")
for i in range(spans):
    with tracer.start_span("large") as span:
        span.log(output=payload)
try:
    tracer.flush(timeout=600)
except tracer.FlushError as exc:
    print(f"flush: {exc}", file=sys.stderr)
"""


def run(policy: str, size: int, args: argparse.Namespace, program: str = PRODUCER,
        payload_bytes: int | None = None, max_bytes: int | None = None) -> dict:
    workdir = tempfile.mkdtemp(prefix="stress-queue-")
    store = os.path.join(workdir, "traces.db")
    endpoint = f"ipc://{config.runtime_dir()}/stress-{os.getpid()}-{policy}-{size}.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "_TRACER_"))}
    env.update({name: value.format(size=size) for name, value in POLICIES[policy].items()})
    env.update(TRACER_QUEUE_SIZE=str(size), TRACER_ENDPOINT=endpoint, TRACER_NUM_RETRIES="20",
               PYTHONPATH=ROOT)
    if max_bytes is not None:
        env["TRACER_QUEUE_MAX_BYTES"] = str(max_bytes)
    aggregator = subprocess.Popen([sys.executable, "-m", "workers.aggregator", "--bind", endpoint,
                                   "--store", store], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while ask_stats(endpoint, 500) is None:  # up, with its store created
        if time.monotonic() > deadline:
            raise RuntimeError("the aggregator did not start")

    lock = sqlite3.connect(store, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the sink is down
    started = time.monotonic()
    payload = args.payload_bytes if payload_bytes is None else payload_bytes
    producers = [subprocess.Popen([sys.executable, "-c", program, str(args.spans),
                                   str(payload)], env=env)
                 for _ in range(args.procs)]
    peak_aggregator = peak_producer = 0
    locked = True
    while any(p.poll() is None for p in producers):
        if locked and time.monotonic() - started >= args.outage:
            lock.execute("ROLLBACK")
            locked = False
        peak_aggregator = max(peak_aggregator, rss(aggregator.pid))
        peak_producer = max([peak_producer] + [rss(p.pid) for p in producers])
        time.sleep(0.02)
    if locked:
        lock.execute("ROLLBACK")
    lock.close()
    failed = [p.returncode for p in producers if p.returncode != 0]
    wall = time.monotonic() - started

    aggregator.terminate()  # commits what it holds, records its counters, exits
    aggregator.wait(120)
    conn = sqlite3.connect(store)
    committed = conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    counters = json.loads(conn.execute("SELECT counters FROM aggregator_runs").fetchone()[0])
    conn.close()
    # What the aggregator dropped, plus what recorders dropped or lost and reported to it.
    dropped = {name: n for name, n in counters["counters"].items()
               if name.startswith(("dropped_", "senders_dropped_", "senders_lost_"))}
    created = args.procs * args.spans
    return {"policy": policy, "queue_size": size, "max_bytes": max_bytes, "created": created,
            "committed": committed,
            "dropped": dropped, "wall_s": wall, "peak_rss_aggregator": peak_aggregator,
            "peak_rss_producer": peak_producer, "producer_failures": failed,
            "ok": not failed and committed + sum(dropped.values()) == created}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=4, help="producer processes (default: 4)")
    p.add_argument("--spans", type=int, default=10000, help="spans per producer (default: 10000)")
    p.add_argument("--queue-sizes", default="1000,20000",
                   help="comma-separated QUEUE_SIZE values to run (default: 1000,20000)")
    p.add_argument("--outage", type=float, default=3.0,
                   help="seconds the sink stays down after the producers start (default: 3)")
    p.add_argument("--payload-bytes", type=int, default=1024,
                   help="size of each span's input payload (default: 1024)")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help=f"comma-separated, from {', '.join(POLICIES)} (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object per run")
    p.add_argument("--bytes-case", action="store_true",
                   help="large spans under the blocking policy, with and without a byte bound, "
                        "instead of the policies")
    p.add_argument("--large-bytes", type=int, default=2 * 2**20,
                   help="output bytes per span in the bytes case (default: 2 MiB)")
    p.add_argument("--max-bytes", type=int, default=32 * 2**20,
                   help="TRACER_QUEUE_MAX_BYTES in the bytes case (default: 32 MiB)")
    args = p.parse_args()
    if args.bytes_case:
        return bytes_case(args)

    print(f"{args.procs} producers x {args.spans} spans ({args.payload_bytes} B input), sink "
          f"down for the first {args.outage:g} s; {os.cpu_count()} CPUs", flush=True)
    results = []
    for size in (int(s) for s in args.queue_sizes.split(",")):
        for policy in args.policies.split(","):
            result = run(policy, size, args)
            results.append(result)
            if args.json:
                print(json.dumps(result), flush=True)
                continue
            dropped = ", ".join(f"{k}={v}" for k, v in sorted(result["dropped"].items()))
            print(f"{policy:23} queue {size:>6}: created {result['created']:>7} committed "
                  f"{result['committed']:>7} dropped {sum(result['dropped'].values()):>7} "
                  f"({dropped or 'none'})  wall {result['wall_s']:5.1f} s  peak RSS "
                  f"aggregator {result['peak_rss_aggregator'] / 2**20:6.1f} MiB, producer "
                  f"{result['peak_rss_producer'] / 2**20:6.1f} MiB  "
                  f"{'PASS' if result['ok'] else 'FAIL'}", flush=True)
    return 0 if all(r["ok"] for r in results) else 1


def bytes_case(args: argparse.Namespace) -> int:
    print(f"{args.procs} producers x {args.spans} spans of {args.large_bytes / 2**20:g} MiB "
          f"output, blocking policy, sink down for the first {args.outage:g} s", flush=True)
    ok = True
    for max_bytes in (args.max_bytes, 2**40):
        result = run("block", config.BY_NAME["QUEUE_SIZE"].default, args, LARGE_PRODUCER,
                     args.large_bytes, max_bytes)
        ok = ok and result["ok"]
        if args.json:
            print(json.dumps(result), flush=True)
            continue
        bound = "none (1 TiB)" if max_bytes == 2**40 else f"{max_bytes / 2**20:g} MiB"
        print(f"TRACER_QUEUE_MAX_BYTES {bound:>12}: created {result['created']} committed "
              f"{result['committed']} dropped {sum(result['dropped'].values())}  wall "
              f"{result['wall_s']:5.1f} s  peak RSS aggregator "
              f"{result['peak_rss_aggregator'] / 2**20:7.1f} MiB, producer "
              f"{result['peak_rss_producer'] / 2**20:7.1f} MiB  "
              f"{'PASS' if result['ok'] else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
