#!/usr/bin/env python
"""Caller-side cost of plain spans while another thread logs large attachments.

Two cases, each in a fresh child process with its own aggregator and store, run alternately
``--rounds`` times:

  without  for ``--spans / --rate`` seconds (10 s by default), the main thread times batches of
           ``--calls`` calls of a traced ``g(text) -> len(text)`` (1,024-character input);
  with     the same, while a second thread logs ``--spans`` spans (default 200), each with a
           distinct ``--size`` MiB attachment (default 5), at ``--rate`` spans per second
           (default 20). ``--kind bytes`` (default) logs ``bytes`` made beforehand, ``--kind
           path`` files written beforehand, so that the thread does nothing but log.

Between batches the main thread waits, untimed, until its recorder has sent what it buffered, so
that no timed call waits for the aggregator. Reported: the median and p90 of the per-call time
over all batches of each case, and their ratio; the same over the batches during which the
attachment writer was at work; the attachment thread's own cost per attachment span; and, after
a final flush, that every span and every attachment is in the store (each blob read back and
hashed). GC is off while a batch runs.

    python scripts/bench/attachments.py
    python scripts/bench/attachments.py --kind path --json attachments.json
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from itertools import repeat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, child_env, machine, percentile  # noqa: E402

TEXT = "x" * 1024


def g(text: str) -> int:
    return len(text)


def child(args: argparse.Namespace) -> None:
    out = os.dup(1)  # our JSON channel; anything else printed goes to stderr
    os.dup2(2, 1)
    import tracer
    from tracer import attachment_writer

    store = os.path.join(args.dir, "bench.db")
    logger = tracer.init_logger("bench-attachments", store=store)
    rec = logger.recorder
    traced_g = tracer.traced(g)
    size = int(args.size * 2**20)
    base = os.urandom(size)
    contents: list[bytes | str] = []  # made beforehand: the logging thread only logs
    digests: list[str] = []
    if args.case == "with":
        for i in range(args.spans):
            content = i.to_bytes(8, "big") + base[8:]  # distinct: nothing deduplicated
            digests.append(hashlib.sha256(content).hexdigest())
            if args.kind == "path":
                path = os.path.join(args.dir, f"file-{i}.bin")
                with open(path, "wb") as f:
                    f.write(content)
                contents.append(path)
            else:
                contents.append(content)

    attachment_costs: list[float] = []

    def log_attachments() -> None:
        interval = 1 / args.rate
        start = time.perf_counter()
        for i, data in enumerate(contents):
            t0 = time.perf_counter_ns()
            with tracer.start_span(f"attachment {i}") as span:
                span.log(input={"file": tracer.Attachment(data, filename=f"f{i}.bin")})
            attachment_costs.append((time.perf_counter_ns() - t0) / 1000)
            time.sleep(max(0.0, start + (i + 1) * interval - time.perf_counter()))

    traced_g(TEXT)  # warm-up
    tracer.flush()
    worker = None
    if args.case == "with":
        worker = threading.Thread(target=log_attachments, daemon=True)
        worker.start()
        time.sleep(0.2)  # let the writer get going
    per_call: list[float] = []
    busy_batches: list[float] = []  # batches during which the attachment writer was at work
    batches = 0
    deadline = time.monotonic() + args.spans / args.rate
    while time.monotonic() < deadline:
        while rec._buffer:  # private: wait until the recorder has sent what it buffered
            time.sleep(0.005)
        busy = attachment_writer.pending()
        gc.disable()
        t0 = time.perf_counter_ns()
        for _ in repeat(None, args.calls):
            traced_g(TEXT)
        elapsed = time.perf_counter_ns() - t0
        gc.enable()
        batches += 1
        per_call.append(elapsed / args.calls / 1000)
        if busy or attachment_writer.pending():
            busy_batches.append(per_call[-1])
    if worker is not None:
        worker.join()
    flush_start = time.perf_counter()
    tracer.flush(timeout=600)
    flush_s = time.perf_counter() - flush_start

    conn = sqlite3.connect(store)
    spans = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
    stored = set()
    if args.case == "with":
        from tracer.attachments import blob_path

        for (sha,) in conn.execute("SELECT sha256 FROM attachments WHERE status = 'done'"):
            digest = hashlib.sha256()  # the blob as stored, read back
            with open(blob_path(store, sha), "rb") as blob:
                while chunk := blob.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() == sha:
                stored.add(sha)
    conn.close()
    result = {
        "case": args.case,
        "per_call_us": per_call,
        "busy_per_call_us": busy_batches,
        "attachment_span_us": attachment_costs,
        "spans_stored": spans,
        "spans_expected": 1 + batches * args.calls + (args.spans if args.case == "with"
                                                      else 0),
        "attachments_stored": len(stored & set(digests)),
        "attachments_expected": len(digests),
        "final_flush_s": flush_s,
    }
    with os.fdopen(out, "w") as channel:
        channel.write(json.dumps(result))


def run_case(case: str, args: argparse.Namespace) -> dict:
    directory = tempfile.mkdtemp(prefix=f"bench-att-{case}-")
    try:
        cmd = [sys.executable, os.path.abspath(__file__), "--mode", "child", "--case", case,
               "--dir", directory, "--calls", str(args.calls), "--spans", str(args.spans),
               "--size", str(args.size), "--rate", str(args.rate),
               "--kind", args.kind]
        env = child_env(PYTHONPATH=os.pathsep.join(
            p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"{case} case failed:\n{proc.stderr}")
        return json.loads(proc.stdout)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def summary(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), percentile(ordered, 90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="calls per timed batch")
    p.add_argument("--rounds", type=int, default=2, help="runs of each case, alternating")
    p.add_argument("--spans", type=int, default=200, help="spans with an attachment")
    p.add_argument("--size", type=float, default=5.0, help="MiB per attachment")
    p.add_argument("--rate", type=float, default=20.0, help="attachment spans per second")
    p.add_argument("--kind", choices=("bytes", "path"), default="bytes")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--mode", default="parent", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode == "child":
        child(args)
        return

    info = machine()
    runs: list[dict] = []
    for _ in range(args.rounds):
        runs += [run_case("without", args), run_case("with", args)]
    info["loadavg_end"] = os.getloadavg()

    def pooled(case: str, key: str) -> list[float]:
        return [v for r in runs if r["case"] == case for v in r[key]]

    without, with_ = summary(pooled("without", "per_call_us")), summary(pooled("with",
                                                                               "per_call_us"))
    busy = pooled("with", "busy_per_call_us")
    busy_median, busy_p90 = summary(busy) if busy else (float("nan"), float("nan"))
    att_median, att_p90 = summary(pooled("with", "attachment_span_us"))
    print("# Caller cost of plain spans while attachments are logged\n")
    print(f"- command: `{info['command']}`; library: {info['source']}")
    print(f"- machine: {info['platform']}; CPU: {info['cpu']}; cores: {info['cores']}; "
          f"{info['python']}")
    print(f"- load average: start {info['loadavg_start']}, end {info['loadavg_end']}")
    print(f"- method: batches of {args.calls} calls of a traced g(1 KB) for "
          f"{args.spans / args.rate:g} s, {args.rounds} runs per case; with: {args.spans} spans "
          f"each with a distinct {args.size:g} MiB {args.kind} attachment at {args.rate:g}/s "
          "from another thread\n")
    n_without, n_with = len(pooled("without", "per_call_us")), len(pooled("with", "per_call_us"))
    print("| case | batches | median µs per span | p90 µs per span |")
    print("|---|---:|---:|---:|")
    print(f"| plain spans alone | {n_without} | {without[0]:.3f} | {without[1]:.3f} |")
    print(f"| plain spans while attachments are logged | {n_with} | {with_[0]:.3f} | "
          f"{with_[1]:.3f} |")
    print(f"| ... of which batches while the writer was at work | {len(busy)} | "
          f"{busy_median:.3f} | {busy_p90:.3f} |")
    print(f"| ratio (all batches, with / without) | | {with_[0] / without[0]:.2f} | "
          f"{with_[1] / without[1]:.2f} |\n")
    print(f"- logging one attachment span, on its own thread: median {att_median:.1f} µs, "
          f"p90 {att_p90:.1f} µs")
    for r in runs:
        ok = r["spans_stored"] == r["spans_expected"] and \
            r["attachments_stored"] == r["attachments_expected"]
        print(f"- {r['case']}: spans {r['spans_stored']} of {r['spans_expected']}, attachments "
              f"read back byte-exact {r['attachments_stored']} of {r['attachments_expected']}, "
              f"final flush {r['final_flush_s']:.2f} s: {'OK' if ok else 'MISMATCH'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
