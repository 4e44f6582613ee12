"""The trace server's ingest rate: rows/s one ``tracer serve`` commits from uploading clients.

    python scripts/bench/ingest.py [--clients 4] [--batch 1000] [--seconds 20]
                                   [--encoding gzip] [--store PATH|postgresql://...] [--json FILE]

Starts ``tracer serve --api-key`` on a free loopback port over a new SQLite store (or
``--store``), then ``--clients`` threads, each with its own keep-alive ``httpx.Client``, post
``POST /api/v1/rows`` batches of ``--batch`` span rows (msgpack, ``--encoding`` gzip, zstd or
none: as an uploading aggregator sends them; each row ~600 bytes: a name, a text input and
output, metadata, metrics) for ``--seconds``, each client sending its next batch once the last
was answered (the first ``--prepare`` batches are packed before the clock starts). A 429 or
503 is waited out (``Retry-After``) and counted. Prints the rows
committed per second, the requests' p50/p95 times and the refusals; the rows are then counted
in the store.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
import msgpack  # noqa: E402
from common import child_env, machine, percentile, positive  # noqa: E402

from tracer import wire  # noqa: E402
from workers.store import open_store  # noqa: E402

KEY = "tr_bench-ingest-key"
CONTAINER = wire.logs_container("ingest-bench")


def batch_body(client: int, number: int, size: int, encoding: str) -> bytes:
    """One batch of ``size`` rows: a trace of a root and its children, unique ids."""
    trace = (client << 40) | number
    rows = []
    for span in range(1, size + 1):
        span_id = wire.format_id(trace, span)
        rows.append({"container": CONTAINER, "row": {
            "id": span_id, "span_id": span_id, "root_span_id": wire.format_id(trace, 1),
            "span_parents": None if span == 1 else [wire.format_id(trace, 1)],
            "span_attributes": {"name": f"step {span}", "type": "task" if span == 1 else "tool"},
            "metrics": {"start": 1_790_000_000.0 + span, "end": 1_790_000_001.0 + span},
            "input": {"question": f"what is item {span} of batch {number}?" * 3},
            "output": f"the answer to {span} is {span * 7}" * 4,
            "metadata": {"client": client, "model": "gpt-4o-mini"},
            "origin": {"host": f"bench-{client}", "pid": 1000 + client}}})
    body = msgpack.packb({"rows": rows, "batch": f"{client}-{number}"})
    if encoding == "gzip":
        return gzip.compress(body, 1)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=1).compress(body)
    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=positive, default=4)
    parser.add_argument("--batch", type=positive, default=1000)
    parser.add_argument("--seconds", type=positive, default=20)
    parser.add_argument("--encoding", choices=("gzip", "zstd", "none"), default="gzip")
    parser.add_argument("--prepare", type=positive, default=40,
                        help="batches each client packs before the clock starts")
    parser.add_argument("--store", help="store to serve (default: a new SQLite file)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="ingest-bench-")
    store = args.store or os.path.join(workdir, "traces.db")
    port = _free_port()
    with open(os.path.join(workdir, "serve.log"), "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", "--store", store, "--port",
             str(port), "--api-key", KEY], env=child_env(), stdout=subprocess.DEVNULL,
            stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url)
        # Bodies made in advance (packing is the client's cost, not the server's); beyond
        # these, each client makes its next one between requests.
        bodies = {c: [batch_body(c, n, args.batch, args.encoding) for n in range(args.prepare)]
                  for c in range(args.clients)}
        times: list[float] = []
        committed = [0] * args.clients
        refused: dict[int, int] = {}
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/msgpack"}
        if args.encoding != "none":
            headers["Content-Encoding"] = args.encoding

        def client(c: int) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                for n in itertools.count():
                    if time.monotonic() >= stop_at:
                        return
                    body = (bodies[c][n] if n < args.prepare
                            else batch_body(c, n, args.batch, args.encoding))
                    started = time.monotonic()
                    response = http.post("/api/v1/rows", content=body)
                    took = time.monotonic() - started
                    with lock:
                        times.append(took)
                        if response.status_code == 200:
                            committed[c] += response.json()["committed"]
                        else:
                            refused[response.status_code] = refused.get(
                                response.status_code, 0) + 1
                    if response.status_code in (429, 503):
                        time.sleep(float(response.headers.get("retry-after", "1")))

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
        total = sum(committed)
        times.sort()
        with open_store(store, readonly=True) as reader:
            stored = sum(1 for _ in reader.rows(project="ingest-bench"))
        result = {"clients": args.clients, "batch": args.batch, "encoding": args.encoding,
                  "seconds": round(elapsed, 1), "rows_committed": total,
                  "rows_stored": stored, "rows_per_second": round(total / elapsed),
                  "request_p50_ms": round(percentile(times, 50) * 1000, 1),
                  "request_p95_ms": round(percentile(times, 95) * 1000, 1),
                  "refused": refused, "store": "sqlite" if not args.store else "given",
                  "machine": machine()}
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    finally:
        server.terminate()
        server.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/login", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("tracer serve did not answer within 30 s")


if __name__ == "__main__":
    sys.exit(main())
