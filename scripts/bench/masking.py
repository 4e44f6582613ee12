#!/usr/bin/env python
"""The flusher's cost per record with and without a masking function (``tracer.masking``).

    python scripts/bench/masking.py [--records 6400] [--repeats 7] [--json FILE]

Records are made by the real API with a live logger, its recorder's ``add`` replaced by a list's
append (as ``limits.py`` does), so they are exactly what a recorder buffers; three kinds:

  traced      ``@tracer.traced g(text)`` called with a 100-character string: a tuple record
              (input and output immutable, nothing snapshotted);
  traced_dict ``@tracer.traced h(settings)`` called with a small dict and returning one: a tuple
              record carrying two snapshots;
  log         ``span.log(input=..., output=..., metadata=...)`` with small dicts: a record packed
              by the caller (bytes).

Each kind is packed as the flusher packs it (``serialize.pack_records``, runs of 64) with no
masking function, with an identity mask (``lambda v: v``: the cost of the pass itself), and
with a redacting mask (a recursive walk that hides one key, as a user would write). Each
figure is the fastest of ``--repeats`` runs (GC off), in microseconds per record. The caller's
side does not change with a mask (``caller_cost.py`` measures it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import timeit
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, positive  # noqa: E402

TEXT = "x" * 100


def redact(data: Any) -> Any:
    """A typical user mask: every ``api_key`` value hidden, at any depth."""
    if isinstance(data, dict):
        return {k: "HIDDEN" if k == "api_key" else redact(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def make_records(count: int, store_dir: str) -> dict[str, list]:
    import tracer

    logger = tracer.init_logger("masking-bench", store=os.path.join(store_dir, "bench.db"))
    rec = logger.recorder
    kept: list = []
    real_add = rec.add
    rec.add = kept.append  # type: ignore[method-assign,assignment]  # restored below

    @tracer.traced
    def g(text: str) -> int:
        return len(text)

    @tracer.traced
    def h(settings: dict) -> dict:
        return {"status": "ok", "api_key": settings["api_key"], "items": [1, 2, 3]}

    records: dict[str, list] = {}
    for _ in range(count):
        g(TEXT)
    records["traced"], kept[:] = list(kept), []
    for i in range(count):
        h({"api_key": "sk-123", "user": "ada", "n": i, "text": TEXT})
    records["traced_dict"], kept[:] = list(kept), []
    span = logger.start_span("bench")
    rec.add_packed = kept.append  # type: ignore[method-assign,assignment]  # restored below
    for i in range(count):
        span.log(input={"question": TEXT, "api_key": "sk-123"}, output={"answer": TEXT},
                 metadata={"model": "m", "n": i})
    records["log"] = list(kept)
    del rec.add_packed  # the class's method again
    rec.add = real_add  # type: ignore[method-assign]
    return records


def per_record_us(records: list, repeats: int) -> float:
    from tracer import serialize

    runs = [records[i:i + 64] for i in range(0, len(records), 64)]
    best = min(timeit.repeat(lambda: [serialize.pack_records(r) for r in runs], number=1,
                             repeat=repeats))
    return best / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=positive, default=6400, help="records of each kind")
    parser.add_argument("--repeats", type=positive, default=7, help="runs; the fastest counts")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to PATH")
    args = parser.parse_args()

    import tracer

    info = machine()
    print(f"masking: {info['cpu']}, {info['cores']} cores, {info['python']}, "
          f"source {info['source']}, load {info['loadavg_start'][0]:.2f}", file=sys.stderr)
    gc.disable()
    with tempfile.TemporaryDirectory() as store_dir:
        records = make_records(args.records, store_dir)
        masks = {"none": None, "identity": lambda v: v, "redact": redact}
        results: dict[str, dict[str, float]] = {}
        for kind, recs in records.items():
            results[kind] = {}
            for name, fn in masks.items():
                tracer.set_masking_function(fn)
                results[kind][name] = per_record_us(recs, args.repeats)
        tracer.set_masking_function(None)

    print("| record | no mask | identity mask | redacting mask |")
    print("|---|---:|---:|---:|")
    for kind, row in results.items():
        print(f"| {kind} | {row['none']:.2f} µs | {row['identity']:.2f} µs | "
              f"{row['redact']:.2f} µs |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "us_per_record": results}, f, indent=2)


if __name__ == "__main__":
    main()
