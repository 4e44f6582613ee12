"""OTLP out's cost on the aggregator's uploader thread, per span, in process (no network).

    python scripts/bench/otlp_export.py [--spans 20000] [--repeat 5] [--payload 200]

Rows as the aggregator makes them (``record_to_row`` of span-end records: a name, a type,
times, an input and an output of ``--payload`` characters each (hex of random bytes),
metadata, an ``origin``), in batches of 1,000 (the default ``TRACER_DEFAULT_BATCH_SIZE``),
through what the OTLP sink does to each batch: ``SpanAssembler.take`` (whole ended spans),
``otlp_export.to_request`` (the mapping), ``SerializeToString`` and gzip. Prints the best of
``--repeat`` runs per step, in microseconds per span, and the bytes per span sent.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time

from tracer import wire
from workers import otlp_export
from workers.otlp_sink import GZIP_LEVEL, SpanAssembler
from workers.queue import Pending
from workers.rows import Container, record_to_row

BATCH = 1000


def batches(spans: int, payload: int) -> list[list[Pending]]:
    container = wire.logs_container("bench")
    out: list[list[Pending]] = []
    for first in range(0, spans, BATCH):
        batch = []
        for span in range(first + 2, min(first + BATCH, spans) + 2):
            record = wire.span_end(container, 9, span, 1, 1, None, "work", "function",
                                   1.7e9, 1.7e9 + 0.01,
                                   {"output": {"answer": _text(payload), "n": span},
                                    "metadata": {"user": "ada"}},
                                   (None, {"question": _text(payload)}))
            found, row_id, row = record_to_row(record, Container)
            row["origin"] = {"host": "web-1", "pid": 4242}
            batch.append(Pending((found.id, row_id), row, 2 * payload + 200, 0, found))
        out.append(batch)
    return out


def _text(size: int) -> str:
    """Text that compresses about as logged text does (hex of random bytes: 2 to 1), not to
    nothing as repeated characters would."""
    return os.urandom(size // 2 + 1).hex()[:size]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spans", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--payload", type=int, default=200)
    args = p.parse_args()
    best = {"assemble": float("inf"), "map": float("inf"), "serialize": float("inf"),
            "gzip": float("inf")}
    sizes = (0, 0)
    for _ in range(args.repeat):
        work = batches(args.spans, args.payload)
        assembler = SpanAssembler()
        took = dict.fromkeys(best, 0.0)
        raw = packed = 0
        for batch in work:
            t0 = time.perf_counter()
            spans = assembler.take(batch)
            t1 = time.perf_counter()
            request = otlp_export.to_request([(s.container, s.row) for s in spans])
            t2 = time.perf_counter()
            body = request.SerializeToString()
            t3 = time.perf_counter()
            zipped = gzip.compress(body, GZIP_LEVEL)
            t4 = time.perf_counter()
            for step, seconds in zip(took, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                took[step] += seconds
            raw, packed = raw + len(body), packed + len(zipped)
        for step in best:
            best[step] = min(best[step], took[step] / args.spans * 1e6)
        sizes = (raw // args.spans, packed // args.spans)
    total = sum(best.values())
    print(" ".join(f"{step} {us:.1f} us" for step, us in best.items())
          + f"; total {total:.1f} us/span ({1e6 / total:,.0f} spans/s on one thread); "
          f"{sizes[0]} bytes/span encoded, {sizes[1]} gzip'd")


if __name__ == "__main__":
    main()
