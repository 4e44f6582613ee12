"""How many rows a second one `tracer serve` commits through its ingest API.

    python scripts/bench/ingest.py [--clients 1,4] [--seconds 10] [--batch 1000]
                                   [--store PATH_OR_URL] [--encoding zstd|gzip|none]

Starts ``tracer serve`` with an API key on a free loopback port over a fresh store (a SQLite
file in a temporary directory unless ``--store`` names one: a path or ``postgresql://...``),
then, for each client count, that many processes post batches to ``POST /api/v1/rows`` for
``--seconds`` seconds, as uploading aggregators do: msgpack bodies, compressed, ``--batch`` rows
each, every batch new rows (traces of 10 spans: a root task, an llm span with messages and
tokens, functions). A batch is counted once the server answered 200 (committed); a 429 is
counted and retried after its ``Retry-After``. Prints, per client count: rows committed per
second, batches per second, the answer time's p50 and p95, and the 429s.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
import msgpack  # noqa: E402
from common import child_env, machine, percentile  # noqa: E402

from tracer import wire  # noqa: E402
from workers.rows import Container, span_identity  # noqa: E402

KEY = "bench-ingest-key"
PROJECT = "bench-ingest"
SPANS_PER_TRACE = 10


def make_rows(batch: int, rng: random.Random) -> list[dict[str, Any]]:
    """``batch`` new rows, whole traces of ``SPANS_PER_TRACE`` spans, as the aggregator makes
    them (the container's key beside each row)."""
    container = Container(wire.logs_container(PROJECT))
    out: list[dict[str, Any]] = []
    now = time.time()
    while len(out) < batch:
        trace, root = rng.getrandbits(63) | 1, rng.getrandbits(63) | 1
        for i in range(SPANS_PER_TRACE):
            span = root if i == 0 else rng.getrandbits(63) | 1
            row = span_identity(container, trace, span, None if i == 0 else root, root, None)
            kind = "task" if i == 0 else "llm" if i == 1 else "function"
            row["span_attributes"] = {"name": f"step-{i}", "type": kind}
            row["metrics"] = {"start": now + i * 0.01, "end": now + i * 0.01 + 0.005}
            row["created"] = "2026-11-28T10:00:00.000000Z"
            if kind == "llm":
                row["input"] = [{"role": "user", "content": "What is the capital of France? " * 4}]
                row["output"] = [{"role": "assistant", "content": "Paris, of course. " * 4}]
                row["metrics"].update(prompt_tokens=42, completion_tokens=12, tokens=54)
            else:
                row["input"] = {"question": f"q{i}", "n": i}
                row["output"] = {"answer": "ok", "score": rng.random()}
            out.append({"container": container.key, "row": row})
    return out[:batch]


def encode(rows: list[dict[str, Any]], encoding: str) -> tuple[bytes, dict[str, str]]:
    body = msgpack.packb({"rows": rows, "batch": os.urandom(8).hex()}, use_bin_type=True)
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {KEY}"}
    if encoding == "gzip":
        body = gzip.compress(body, 1)
        headers["Content-Encoding"] = "gzip"
    elif encoding == "zstd":
        import zstandard

        body = zstandard.ZstdCompressor(level=1).compress(body)
        headers["Content-Encoding"] = "zstd"
    return body, headers


def client(url: str, seconds: float, batch: int, encoding: str, seed: int,
           results: Any) -> None:
    """Post batches until ``seconds`` have passed; put (committed rows, answer times, 429s,
    wall-clock start, wall-clock end): rates are over the clients' own spans of time, not
    their interpreters' start-up."""
    rng = random.Random(seed)
    times: list[float] = []
    committed = throttled = 0
    with httpx.Client(timeout=60) as http:
        began = time.time()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            body, headers = encode(make_rows(batch, rng), encoding)
            while True:
                started = time.perf_counter()
                answer = http.post(f"{url}/api/v1/rows", content=body, headers=headers)
                if answer.status_code != 429:
                    break
                throttled += 1
                time.sleep(float(answer.headers.get("retry-after", "0.1")))
            if answer.status_code != 200:
                raise SystemExit(f"POST /api/v1/rows: {answer.status_code} {answer.text[:300]}")
            times.append(time.perf_counter() - started)
            committed += int(answer.json()["committed"])
        results.put((committed, times, throttled, began, time.time()))


def serve(store: str, port: int, log: Any) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "workers.cli", "serve", "--store", store,
                               "--port", str(port), "--api-key", KEY], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, env=child_env())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tracer serve exited {server.returncode}")
        try:
            httpx.get(f"{url}/api/v1/ping", headers={"Authorization": f"Bearer {KEY}"},
                      timeout=2).raise_for_status()
            return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("tracer serve did not answer within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4",
                        help="client process counts to measure, comma-separated (default 1,4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per client count")
    parser.add_argument("--batch", type=int, default=1000, help="rows per batch (default 1000)")
    parser.add_argument("--store", help="the server's store (default: a new SQLite file)")
    parser.add_argument("--encoding", choices=("zstd", "gzip", "none"), default="gzip")
    parser.add_argument("--port", type=int, default=0, help="(default: a free port)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    directory = tempfile.mkdtemp(prefix="tracer-bench-ingest-")
    store = args.store or os.path.join(directory, "traces.db")
    port = args.port or _free_port()
    print(machine())
    print(f"store: {store.split('@')[-1]}; batch {args.batch} rows; {args.encoding}; "
          f"{args.seconds:g} s per client count\n")
    with open(os.path.join(directory, "serve.log"), "wb") as log:
        server = serve(store, port, log)
        try:
            print(f"{'clients':>7} {'rows/s':>9} {'batches/s':>10} {'p50 ms':>8} {'p95 ms':>8} "
                  f"{'429s':>6}")
            for count in counts:
                results: Any = multiprocessing.get_context("spawn").Queue()
                procs = [multiprocessing.get_context("spawn").Process(
                    target=client, args=(f"http://127.0.0.1:{port}", args.seconds, args.batch,
                                         args.encoding, 1000 * count + i, results))
                    for i in range(count)]
                for p in procs:
                    p.start()
                got = [results.get(timeout=args.seconds + 300) for _ in procs]
                elapsed = max(g[4] for g in got) - min(g[3] for g in got)
                for p in procs:
                    p.join(30)
                rows = sum(g[0] for g in got)
                times = sorted(t for g in got for t in g[1])
                print(f"{count:>7} {rows / elapsed:>9,.0f} {len(times) / elapsed:>10,.1f} "
                      f"{percentile(times, 50) * 1e3:>8.1f} {percentile(times, 95) * 1e3:>8.1f} "
                      f"{sum(g[2] for g in got):>6}", flush=True)
        finally:
            server.terminate()
            server.wait(30)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
