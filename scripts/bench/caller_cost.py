#!/usr/bin/env python
"""Caller-side cost of one traced call: ours beside OpenTelemetry and the reference SDK.

Five cases, on the same two functions ``f(x) -> x`` (empty) and ``g(text) -> len(text)`` (called
with a 1024-character string), all measured in one run:

  bare        the plain functions, timed in this process;
  nologger    ``tracer.traced(f)`` / ``tracer.traced(g)`` with tracing off, in a child process
              (once ``init_logger`` has run in a process, tracing stays on for good);
  logger      the same with ``tracer.init_logger("bench", store=<tmp>/bench.db)``, i.e. a real
              aggregator process, in another child. After timing, the child flushes and checks
              that the store holds every span it recorded;
  otel        OpenTelemetry's SDK: a ``TracerProvider`` with a ``BatchSpanProcessor`` and an
              exporter that discards, the functions wrapped in ``start_as_current_span`` with
              the argument and the result set as span attributes (OpenTelemetry has no generic
              input capture: this is the least a user writes);
  braintrust  the reference SDK's ``@braintrust.traced`` (input and output captured) with its
              in-memory background logger, so nothing goes to the network.

The anchors come from the ``bench`` extra (``pip install -e '.[bench]'``); a case whose package
is missing is reported as such and skipped.

Each case times ``--repeats`` batches of ``--calls`` calls per function (with a logger, ours and
the anchors': ``--logger-repeats`` batches of ``--logger-calls``) with ``time.perf_counter_ns()``
(GC disabled while a batch runs), after one warm-up batch, and reports the median per-call time.
Children are this script run with a hidden ``--mode`` flag, in an environment stripped of
TRACER_*, _TRACER_* and BRAINTRUST_* variables; they print JSON.

    python scripts/bench/caller_cost.py              # defaults: 200000 calls x 7 repeats;
                                                     # with a logger 10000 x 31
    python scripts/bench/caller_cost.py --calls 50000 --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import child_env, machine, positive  # noqa: E402

PROJECT = "bench"
TEXT = "x" * 1024
TARGET_LOGGER_US = 2.5  # per span, input/output captured, logger on
TARGET_NOLOGGER_ADDED_US = 0.3  # added per call, tracing off


# -- the functions under test ----------------------------------------------------------------


def f(x):
    return x


def g(text):
    return len(text)


def redact(data):
    """The masking function of ``--mask``: every ``api_key`` value hidden, at any depth (the
    inputs here have none: it walks each field, as a user's mask would)."""
    if isinstance(data, dict):
        return {k: "HIDDEN" if k == "api_key" else redact(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


BARE = {"f": f, "g": g}  # functools.wraps keeps __name__: the reference for each wrapper


# -- timing ------------------------------------------------------------------------------------


def time_batch(fn: Callable, arg: Any, calls: int) -> int:
    """Nanoseconds for ``calls`` calls of ``fn(arg)``, GC disabled meanwhile."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in repeat(None, calls):
            fn(arg)
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def measure(pairs: dict[str, tuple[Callable, Any]], calls: int, repeats: int,
            warmup: int, between: Callable[[], Any] | None = None) -> dict[str, dict]:
    """Warm up each function once, then time ``repeats`` batches of each, interleaved;
    ``between`` runs, untimed, after each batch.

    The first warm-up call of each function is checked against the bare function, so a broken
    wrapper cannot produce a fast number; it counts as one of the ``warmup`` calls.
    """
    for fn, arg in pairs.values():
        expect = BARE[fn.__name__](arg)
        if fn(arg) != expect:
            raise SystemExit(f"caller_cost: {fn!r}({arg!r:.20}) returned a wrong result")
        if warmup > 1:
            time_batch(fn, arg, warmup - 1)
        if between is not None:
            between()
    batches: dict[str, list[int]] = {key: [] for key in pairs}
    for _ in range(repeats):
        for key, (fn, arg) in pairs.items():
            batches[key].append(time_batch(fn, arg, calls))
            if between is not None:
                between()
    out = {}
    for key, ns in batches.items():
        per_call = [t / calls / 1000 for t in ns]
        out[key] = {
            "median_us": statistics.median(per_call),
            "min_us": min(per_call),
            "max_us": max(per_call),
            "per_repeat_us": per_call,
            "batch_ns": ns,
        }
    return out


# -- child modes -------------------------------------------------------------------------------


def _json_channel() -> int:
    """A private fd for the child's JSON; fd 1 then points at stderr.

    Defensive: were the aggregator that ``init_logger`` starts to inherit fd 1 (the parent's
    pipe), the parent would wait for the aggregator to exit before seeing EOF, and anything it
    printed would mix with the JSON.
    """
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    return fd


def _emit(fd: int, result: dict) -> None:
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(result) + "\n")


def child_nologger(args: argparse.Namespace) -> None:
    fd = _json_channel()
    import tracer

    state: object = None
    try:
        from tracer.context import state  # internal: only to report that tracing is off
    except ImportError:
        pass
    tf, tg = tracer.traced(f), tracer.traced(g)
    timed = measure({"f": (tf, 0), "g": (tg, TEXT), "bare_f": (f, 0), "bare_g": (g, TEXT)},
                    args.calls, args.repeats, args.warmup)
    _emit(fd, {
        "mode": "nologger",
        "tracing_active": getattr(state, "active", "unknown"),
        "logger": repr(tracer.current_logger()),
        "timings": timed,
    })


def child_logger(args: argparse.Namespace) -> None:
    fd = _json_channel()
    import tracer

    store = os.path.join(args.store_dir, "bench.db")
    logger = tracer.init_logger(PROJECT, store=store)
    if args.mask:  # the caller's path is the same; its flusher, on the same GIL, does more
        tracer.set_masking_function(redact)
    rec = logger.recorder
    tf, tg = tracer.traced(f), tracer.traced(g)
    # The caller's own cost: batches that fit in the recorder's buffer, each flushed (untimed)
    # before the next, so no call waits for the aggregator.
    calls = args.logger_calls
    timed = measure({"f": (tf, 0), "g": (tg, TEXT)}, calls, args.logger_repeats, args.warmup,
                    between=lambda: tracer.flush(timeout=300))
    # Sustained: one long batch, paced by the aggregator once the buffer is full (the default
    # blocking policy).
    t0 = time.perf_counter()
    sustained_ns = time_batch(tg, TEXT, args.calls)
    t1 = time.perf_counter()
    flush_error = None
    try:
        tracer.flush(timeout=300)
    except tracer.FlushError as exc:
        flush_error = str(exc)
    t2 = time.perf_counter()
    expected = {"f": args.warmup + args.logger_repeats * calls,
                "g": args.warmup + args.logger_repeats * calls + args.calls}
    delivered, sample = count_rows(store)
    _emit(fd, {
        "mode": "logger",
        "store": store,
        "aggregator_pid": getattr(rec, "aggregator_pid", None),
        "timings": timed,
        "flush_seconds": t2 - t1,
        "flush_error": flush_error,
        "expected": expected,
        "delivered": delivered,
        "sample_g_row": sample,
        "sustained_calls": args.calls,
        "sustained_us_per_call": sustained_ns / args.calls / 1000,
        "sustained_spans_per_s": args.calls / (sustained_ns / 1e9),
        "sustained_end_to_end_spans_per_s": args.calls / (t2 - t0),
        "recorder_counters": dict(getattr(rec, "counters", {})),
        "max_buffer": getattr(rec, "max_buffer", None),
    })


def child_otel(args: argparse.Namespace) -> None:
    fd = _json_channel()
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError as exc:
        _emit(fd, {"mode": "otel", "missing": str(exc)})
        return

    class Discard(SpanExporter):
        exported = 0

        def export(self, spans):
            Discard.exported += len(spans)
            return SpanExportResult.SUCCESS

        def shutdown(self):
            pass

    provider = TracerProvider()
    # A queue that holds a whole timed batch: the default (2048) drops spans, silently, which
    # would time the cheaper drop path.
    queue = max(2048, 2 * args.logger_calls)
    processor = BatchSpanProcessor(Discard(), max_queue_size=queue)
    provider.add_span_processor(processor)
    otel = provider.get_tracer("bench")

    def traced(fn: Callable) -> Callable:
        name = fn.__name__

        @functools.wraps(fn)
        def wrapper(arg):
            with otel.start_as_current_span(name) as span:
                span.set_attribute("input", arg)
                out = fn(arg)
                span.set_attribute("output", out)
                return out
        return wrapper

    timed = measure({"f": (traced(f), 0), "g": (traced(g), TEXT)}, args.logger_calls,
                    args.logger_repeats, args.warmup,
                    between=lambda: processor.force_flush(60_000))
    processor.force_flush(60_000)
    expected = 2 * (args.warmup + args.logger_repeats * args.logger_calls)
    _emit(fd, {"mode": "otel", "timings": timed, "max_queue_size": queue,
               "exported": Discard.exported, "expected": expected})


def child_braintrust(args: argparse.Namespace) -> None:
    fd = _json_channel()
    try:
        import braintrust
        from braintrust import logger as bt
        from braintrust.util import LazyValue
    except ImportError as exc:
        _emit(fd, {"mode": "braintrust", "missing": str(exc)})
        return
    # What braintrust's own test helpers do (init_test_logger + the memory logger fixture):
    # fake project metadata so that nothing logs in, and an in-memory background logger.
    memory = bt._MemoryBackgroundLogger()
    bt._state._override_bg_logger.logger = memory
    in_memory = LazyValue(lambda: memory, use_mutex=False)
    # A private slot meant for the HTTP logger: the memory logger stands in for it, as in
    # braintrust's own tests.
    bt._state._global_bg_logger = in_memory
    metadata = bt.OrgProjectMetadata(
        org_id="bench-org", project=bt.ObjectMetadata(id=PROJECT, name=PROJECT, full_info={}))
    logger = braintrust.init_logger(project=PROJECT)
    logger._lazy_metadata = LazyValue(lambda: metadata, use_mutex=False)
    bt._compute_logger_metadata = lambda *a, **k: metadata
    logged = 0

    def drain() -> None:  # untimed, between batches: what the HTTP logger's thread would do
        nonlocal logged
        logged += len(memory.pop())

    timed = measure({"f": (braintrust.traced(f), 0), "g": (braintrust.traced(g), TEXT)},
                    args.logger_calls, args.logger_repeats, args.warmup, between=drain)
    drain()
    expected = 2 * (args.warmup + args.logger_repeats * args.logger_calls)
    _emit(fd, {"mode": "braintrust", "timings": timed, "logged": logged, "expected": expected,
               "version": getattr(braintrust, "__version__", None) or _version("braintrust")})


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def count_rows(store: str) -> tuple[dict[str, int], dict | None]:
    """Rows per span name in the bench project, and whether a ``g`` row holds its input/output."""
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        query = ("SELECT r.name, COUNT(*) FROM rows r JOIN containers c ON c.id = r.container "
                 "WHERE c.project_name = ? GROUP BY r.name")
        counts = {name: n for name, n in conn.execute(query, (PROJECT,))}
        found = conn.execute(
            "SELECT r.data FROM rows r JOIN containers c ON c.id = r.container "
            "WHERE c.project_name = ? AND r.name = 'g' LIMIT 1", (PROJECT,)).fetchone()
    finally:
        conn.close()
    sample = None
    if found is not None:
        from tracer.wire import unpack_stored

        row = unpack_stored(found[0])
        if not isinstance(row, dict):
            raise SystemExit(f"caller_cost: a stored row is a {type(row).__name__}, not a map")
        text = (row.get("input") or {}).get("text")
        sample = {"input_text_len": len(text) if isinstance(text, str) else None,
                  "output": row.get("output")}
    return counts, sample


# -- the parent ---------------------------------------------------------------------------------


def run_child(mode: str, args: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode,
           "--calls", str(args.calls), "--logger-calls", str(args.logger_calls),
           "--repeats", str(args.repeats), "--logger-repeats", str(args.logger_repeats),
           "--warmup", str(args.warmup), *extra]
    proc = subprocess.run(cmd, env=child_env(), stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"caller_cost: child {mode!r} failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"caller_cost: child {mode!r} printed no JSON")
    return json.loads(lines[-1])


def wait_gone(pid: int | None, timeout: float = 30.0) -> bool:
    """Wait for the (reparented) aggregator to exit, so its store can be removed."""
    if pid is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return True
        time.sleep(0.05)
    return False


def side_files(directory: str, limit: int = 2000) -> dict[str, str]:
    """The tails of non-empty files beside the store (the aggregator's log, if it writes one)."""
    tails = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if name.startswith("bench.db") or os.path.getsize(path) == 0:
                continue
            with open(path, errors="replace") as fh:
                tails[os.path.relpath(path, directory)] = fh.read()[-limit:]
    return tails


def main_run(args: argparse.Namespace) -> int:
    info = machine()
    print("# Caller-side cost per traced call\n")
    print(f"- command: `{info['command']}`")
    print(f"- machine: {info['platform']}; CPU: {info['cpu']}; cores: {info['cores']} "
          f"(usable: {info['usable_cores']})")
    print(f"- Python {info['python']}; pyzmq {info['pyzmq']} (libzmq {info['libzmq']}); "
          f"msgpack {info['msgpack']} ({info['msgpack_impl']})")
    print(f"- library: {info['source']}")
    print("- load average at start: " + " ".join(f"{x:.2f}" for x in info["loadavg_start"]))
    print(f"- method: {args.repeats} repeats x {args.calls} calls per function, after a "
          f"{args.warmup}-call warm-up; median of the per-call times; GC off while timing. "
          f"With a logger (ours and the anchors): {args.logger_repeats} batches of "
          f"{args.logger_calls} calls (within the recorder's buffer), flushed between batches, "
          f"untimed; then, ours only, one sustained batch of {args.calls} calls"
          + ("; ours with a masking function set (--mask)" if args.mask else ""))
    print(flush=True)

    bare = measure({"f": (f, 0), "g": (g, TEXT)}, args.calls, args.repeats, args.warmup)
    nolog = run_child("nologger", args, [])
    anchors = {mode: run_child(mode, args, []) for mode in ("otel", "braintrust")}
    with tempfile.TemporaryDirectory(prefix="caller_cost-") as tmp:
        logged = run_child("logger", args, ["--store-dir", tmp, *(["--mask"] if args.mask
                                                                   else [])])
        if not wait_gone(logged.get("aggregator_pid")):
            print(f"(note: aggregator {logged['aggregator_pid']} still running; "
                  "its temp store is removed anyway)", file=sys.stderr)
        logged["side_files"] = side_files(tmp)
    info["loadavg_end"] = os.getloadavg()

    def med(result: dict, key: str) -> float:
        return result["timings"][key]["median_us"]

    rows = [
        ("bare call", med({"timings": bare}, "f"), med({"timings": bare}, "g")),
        ("@traced, no logger", med(nolog, "f"), med(nolog, "g")),
        ("@traced, with logger (caller's cost)" + (", masking" if args.mask else ""),
         med(logged, "f"), med(logged, "g")),
    ]
    added_nolog = (rows[1][1] - rows[0][1], rows[1][2] - rows[0][2])
    added_log = (rows[2][1] - rows[0][1], rows[2][2] - rows[0][2])
    rows.append(("added by @traced (no logger)", *added_nolog))
    rows.append(("added by @traced (logger)", *added_log))

    print("| case | empty fn µs | 1 KB input µs |")
    print("|---|---:|---:|")
    for label, a, b in rows:
        print(f"| {label} | {a:.3f} | {b:.3f} |")
    print()

    print("Anchors, the same functions and method (per-call µs; ratio = anchor / ours with a "
          "logger):\n")
    print("| system | empty fn µs | 1 KB input µs | ratio (empty) | ratio (1 KB) |")
    print("|---|---:|---:|---:|---:|")
    ratios = {}
    for mode, label in (("otel", "OpenTelemetry SDK, BatchSpanProcessor, discarding exporter"),
                        ("braintrust", "braintrust SDK @traced, in-memory logger")):
        result = anchors[mode]
        if "missing" in result:
            print(f"| {label} | not installed ({result['missing']}) | | | |")
            continue
        a, b = med(result, "f"), med(result, "g")
        ratios[mode] = (a / rows[2][1], b / rows[2][2])
        print(f"| {label} | {a:.3f} | {b:.3f} | {ratios[mode][0]:.1f}x | "
              f"{ratios[mode][1]:.1f}x |")
    print()
    if "missing" not in anchors["otel"]:
        o = anchors["otel"]
        print(f"- OpenTelemetry: {o['exported']} of {o['expected']} spans exported "
              f"(max_queue_size={o['max_queue_size']})")
    if "missing" not in anchors["braintrust"]:
        br = anchors["braintrust"]
        print(f"- braintrust {br['version']}: {br['logged']} of {br['expected']} rows logged")
    print()

    print("Spread (min-max per-call µs over repeats):")
    for label, result in (("bare", {"timings": bare}), ("no logger", nolog),
                          ("logger", logged)):
        t = result["timings"]
        print(f"- {label}: f {t['f']['min_us']:.3f}-{t['f']['max_us']:.3f}, "
              f"g {t['g']['min_us']:.3f}-{t['g']['max_us']:.3f}")
    t = nolog["timings"]
    print(f"- control, bare calls timed inside the no-logger child: "
          f"f {t['bare_f']['median_us']:.3f}, g {t['bare_g']['median_us']:.3f}")
    print(f"- no-logger child: tracing active = {nolog['tracing_active']}, "
          f"current_logger() = {nolog['logger']}")
    print()

    print("Logger case:")
    for name in ("f", "g"):
        got, expected = logged["delivered"].get(name, 0), logged["expected"][name]
        status = "OK" if got == expected else "SHORT" if got < expected else "EXTRA"
        print(f"- delivered: {got} of {expected} ({name}) {status}")
    others = {k: v for k, v in logged["delivered"].items() if k not in ("f", "g")}
    if others:
        print(f"- unexpected rows by name: {others}")
    print(f"- sample g row: {logged['sample_g_row']}")
    if logged["flush_error"]:
        print(f"- flush FAILED after {logged['flush_seconds']:.3f} s: {logged['flush_error']}")
    else:
        print(f"- flush wall time: {logged['flush_seconds']:.3f} s")
    print(f"- sustained ({logged['sustained_calls']} calls of g in one batch, paced by the "
          f"aggregator once the buffer is full): {logged['sustained_us_per_call']:.2f} µs per "
          f"call, {logged['sustained_spans_per_s']:,.0f} spans/s; end to end with the final "
          f"flush {logged['sustained_end_to_end_spans_per_s']:,.0f} spans/s")
    print(f"- recorder: max_buffer={logged['max_buffer']}, counters={logged['recorder_counters']}")
    for name, tail in logged["side_files"].items():
        print(f"- {name} (tail):")
        for line in tail.rstrip().splitlines():
            print(f"    {line}")
    print("- load average at end: " + " ".join(f"{x:.2f}" for x in info["loadavg_end"]))
    print()

    worst_log = max(rows[2][1], rows[2][2])
    worst_nolog = max(added_nolog)
    print("Targets (for context):")
    print(f"- with logger, caller's cost per span with input/output capture: {worst_log:.3f} µs "
          f"(target <= {TARGET_LOGGER_US}) -> "
          f"{'met' if worst_log <= TARGET_LOGGER_US else 'NOT met'}")
    for mode, target in (("otel", 10), ("braintrust", 50)):
        if mode in ratios:
            worst = min(ratios[mode])
            print(f"- {mode} / ours: {worst:.1f}x (target >= {target}x) -> "
                  f"{'met' if worst >= target else 'NOT met'}")
    print(f"- added with no logger: {worst_nolog:.3f} µs "
          f"(target <= {TARGET_NOLOGGER_ADDED_US}) -> "
          f"{'met' if worst_nolog <= TARGET_NOLOGGER_ADDED_US else 'NOT met'}")

    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": info, "calls": args.calls, "repeats": args.repeats,
                       "logger_calls": args.logger_calls, "logger_repeats": args.logger_repeats,
                       "warmup": args.warmup, "bare": bare, "nologger": nolog,
                       "logger": logged, "anchors": anchors,
                       "added_nologger_us": {"f": added_nolog[0], "g": added_nolog[1]},
                       "added_logger_us": {"f": added_log[0], "g": added_log[1]}}, out, indent=2)
        print(f"\nraw numbers written to {args.json}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Measure the caller-side cost per traced call: bare, @tracer.traced with no "
                    "logger and with a live logger and aggregator, OpenTelemetry's SDK and the "
                    "braintrust SDK (each in a child process). Prints Markdown tables.")
    p.add_argument("--calls", type=positive, default=200_000,
                   help="calls per timed batch (default: %(default)s)")
    p.add_argument("--logger-calls", type=positive, default=10_000,
                   help="calls per timed batch with a logger; keep it within the recorder's "
                        "buffer (TRACER_QUEUE_SIZE, default 15000) to time the caller's own "
                        "cost rather than the aggregator's pace (default: %(default)s)")
    p.add_argument("--repeats", type=positive, default=7,
                   help="timed batches per function and case; the median is reported "
                        "(default: %(default)s)")
    p.add_argument("--logger-repeats", type=positive, default=31,
                   help="timed batches per function with a logger, ours and the anchors': "
                        "short batches vary more, so more of them (default: %(default)s)")
    p.add_argument("--warmup", type=positive, default=20_000,
                   help="calls in the untimed warm-up batch (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers to PATH")
    p.add_argument("--mask", action="store_true",
                   help="with a logger, set a masking function (tracer.set_masking_function: "
                        "one that hides an api_key at any depth): the caller's cost while its "
                        "flusher masks every record")
    p.add_argument("--mode", choices=("main", "nologger", "logger", "otel", "braintrust"),
                   default="main",
                   help=argparse.SUPPRESS)
    p.add_argument("--store-dir", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.mode in ("nologger", "otel", "braintrust"):
        {"nologger": child_nologger, "otel": child_otel,
         "braintrust": child_braintrust}[args.mode](args)
        return 0
    if args.mode == "logger":
        if not args.store_dir:
            raise SystemExit("caller_cost: --mode logger needs --store-dir")
        child_logger(args)
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
