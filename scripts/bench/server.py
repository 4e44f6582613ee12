"""The trace server's queries on a large store: request times through the real HTTP server.

    python scripts/bench/server.py [--rows 1000000] [--repeat 30] [--store sqlite,postgresql]
                                   [--json FILE]

1. Builds a store of ``--rows`` rows (default 1,000,000) through the store writer, in batches
   of 1,000 rows, as the aggregator writes them: traces of 5 to 15 spans (about 10), a root
   task with a text question, metadata (model, user, region) and, on most roots, scores; a
   retrieval, an LLM call with chat messages, tokens and a text answer, a few functions; about
   2% of spans with an error; starts spread over 30 days. Then one trace of 10,000 spans and
   one of 100,000. An existing ``--store`` is used as it is (``--rows`` is then only a label).
2. Starts ``tracer serve`` on it, on a free loopback port.
3. Times each request ``--repeat`` times after two warm-up requests (one HTTP connection,
   kept alive): the logs page's first page, a deep page, each filter alone and two together,
   a trace's skeleton (10,000 and 100,000 spans), a span's row, the projects. The time is the
   client's, from sending the request to the last byte of the answer (loopback: the server's
   time plus well under a millisecond). Prints p50, p95 and the largest, and how many traces
   each page held.

``--store`` names the stores, measured one after the other on the same rows (the generator is
deterministic), with a table of each beside the others at the end: ``sqlite`` (a temporary
file, the default), a path (a SQLite store, built there if it does not exist, kept),
``postgresql`` (a PostgreSQL server started for the run with ``tests/postgres.py``'s helper,
``fsync`` on, its settings the defaults), or a ``postgresql://`` URL of a database (built there
if it has no store yet, kept; an existing one is used as it is).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
from common import child_env, machine, percentile  # noqa: E402

from tracer import wire  # noqa: E402
from workers.queue import Pending  # noqa: E402
from workers.rows import Container  # noqa: E402
from workers.store import open_store  # noqa: E402
from workers.store.postgres import SCHEMES  # noqa: E402

PROJECT = "bench"
BATCH = 1000
DAY = 86400.0
T0 = 1_790_000_000.0
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5", "llama-3-70b")
REGIONS = ("eu", "us", "apac")


def vocabulary(size: int = 5000) -> tuple[list[str], list[float]]:
    """Made-up words with Zipf weights (cumulative): a few common, most rare, as in real
    text."""
    rng = random.Random(1)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "zu", "pe", "qua", "dri"]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(size * 2)})
    rng.shuffle(words)
    words = words[:size]
    return words, list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))


class Generator:
    """Realistic rows, deterministic for a seed."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.words, self.weights = vocabulary()
        self.container = Container(wire.logs_container(PROJECT))
        self.next_id = 0

    def text(self, low: int, high: int) -> str:
        return " ".join(self.rng.choices(self.words, cum_weights=self.weights,
                                         k=self.rng.randint(low, high)))

    def new_id(self) -> str:
        self.next_id += 1
        return f"{self.next_id:016x}-0000-4000-8000-{self.rng.getrandbits(48):012x}"

    def pending(self, row: dict) -> Pending:
        row.update(self.container.columns)
        return Pending((self.container.id, row["id"]), row, 500, 0, self.container)

    def span(self, root: str, parent: str | None, name: str, kind: str, start: float,
             duration: float, **fields: Any) -> dict:
        span_id = root if parent is None else self.new_id()
        metrics = dict(fields.pop("metrics", {}), start=start, end=start + duration)
        row = {"id": span_id, "span_id": span_id, "root_span_id": root,
               "span_parents": [parent] if parent else None,
               "span_attributes": {"name": name, "type": kind}, "metrics": metrics, **fields}
        if self.rng.random() < 0.02:
            row["error"] = f"RuntimeError: {self.text(3, 8)}\n\nTraceback (most recent call " \
                           "last):\n  File \"app.py\", line 12, in handle\n"
        return row

    def trace(self, start: float) -> list[dict]:
        rng = self.rng
        root = self.new_id()
        spans = rng.randint(5, 15)
        question = self.text(8, 20)
        answer = self.text(20, 60)
        root_fields: dict[str, Any] = {
            "input": {"question": question}, "output": answer,
            "metadata": {"model": rng.choice(MODELS), "user": f"user-{rng.randint(1, 500)}",
                         "region": rng.choice(REGIONS)},
        }
        if rng.random() < 0.7:
            root_fields["scores"] = {"quality": round(rng.random(), 3),
                                     "relevance": round(rng.random(), 3)}
        rows = [self.span(root, None, rng.choice(("answer question", "summarize", "chat turn")),
                          "task", start, 2.0, **root_fields)]
        rows.append(self.span(root, root, "retrieve", "tool", start + 0.01, 0.2,
                              input=question, output=[self.text(10, 30) for _ in range(3)]))
        tokens = rng.randint(200, 4000)
        rows.append(self.span(
            root, root, "chat completion", "llm", start + 0.3, 1.5,
            input=[{"role": "system", "content": "You answer questions."},
                   {"role": "user", "content": question}],
            output=[{"role": "assistant", "content": answer}],
            metadata={"model": root_fields["metadata"]["model"], "temperature": 0.2},
            metrics={"prompt_tokens": tokens - 150, "completion_tokens": 150,
                     "tokens": tokens}))
        for i in range(spans - 3):
            rows.append(self.span(root, rows[rng.randint(0, len(rows) - 1)]["span_id"],
                                  f"step {i}", "function", start + 0.05 * (i + 1), 0.01,
                                  input=self.text(3, 10), output=rng.randint(0, 1000)))
        return rows

    def big_trace(self, spans: int, start: float) -> list[dict]:
        """One trace of ``spans`` spans: a root, 100 children, the rest under them."""
        root = self.new_id()
        rows = [self.span(root, None, f"batch job of {spans} spans", "task", start, 600.0,
                          input={"job": spans})]
        for i in range(1, spans):
            parent = rows[0 if i <= 100 else self.rng.randint(1, 100)]["span_id"]
            rows.append(self.span(root, parent, f"item {i}", "function", start + i * 0.001,
                                  0.0005, input=self.text(2, 6), output=i))
        return rows


def build(path: str, rows: int) -> dict:
    """Write the store (a SQLite path or a PostgreSQL URL); returns what the queries need (ids,
    words, times)."""
    gen = Generator()
    writer = open_store(path)
    written = traces = 0
    pending: list[Pending] = []
    began = time.perf_counter()
    step = max(1, rows // 10)
    next_report = step
    total_traces = max(1, rows // 10)
    while written < rows:
        start = T0 + traces / total_traces * 30 * DAY
        for row in gen.trace(start):
            pending.append(gen.pending(row))
        traces += 1
        if len(pending) >= BATCH:
            writer.write(pending)
            written += len(pending)
            pending = []
            if written >= next_report:
                rate = written / (time.perf_counter() - began)
                print(f"  {written:,} rows, {traces:,} traces ({rate:,.0f} rows/s)", flush=True)
                next_report += step
    if pending:
        writer.write(pending)
        written += len(pending)
    big = {}
    for spans in (10_000, 100_000):
        rows_of = gen.big_trace(spans, T0 + 15 * DAY + spans)
        for i in range(0, len(rows_of), BATCH):
            writer.write([gen.pending(r) for r in rows_of[i:i + BATCH]])
        big[spans] = rows_of[0]["root_span_id"]
        print(f"  a trace of {spans:,} spans", flush=True)
    writer.close()
    elapsed = time.perf_counter() - began
    size = store_size(path)
    print(f"built {written:,} rows ({traces:,} traces) + 110,000 in two big traces in "
          f"{elapsed:.0f} s ({(written + 110_000) / elapsed:,.0f} rows/s); "
          f"{size / 2**20:,.0f} MiB", flush=True)
    info = {"rows": written, "traces": traces, "big": big, "build_s": elapsed,
            "size_mib": size / 2**20}
    if not path.startswith(SCHEMES):
        with open(path + ".bench.json", "w") as f:
            json.dump(info, f)
    return info


def store_size(path: str) -> int:
    """Bytes the store takes: the SQLite file, or the PostgreSQL database."""
    if not path.startswith(SCHEMES):
        return os.path.getsize(path)
    import psycopg

    with psycopg.connect(path) as conn:
        found = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(found[0]) if found else 0


def existing(path: str) -> dict | None:
    """What ``build`` returned for a store built before, or None if there is none at ``path``:
    the saved file beside a SQLite store; read from a PostgreSQL one (its two big traces are
    the traces of 10,000 and 100,000 spans)."""
    if not path.startswith(SCHEMES):
        if os.path.exists(path) and os.path.exists(path + ".bench.json"):
            with open(path + ".bench.json") as f:
                return dict(json.load(f))
        return None
    import psycopg

    with psycopg.connect(path) as conn:
        if conn.execute("SELECT to_regclass('traces')").fetchone() in (None, (None,)):
            return None
        big = {str(spans): root for root, spans in conn.execute(
            "SELECT root_span_id, spans FROM traces WHERE spans IN (10000, 100000)")}
        counted = conn.execute("SELECT (SELECT count(*) FROM rows), (SELECT count(*) FROM "
                               "traces)").fetchone()
    if len(big) != 2 or counted is None:
        return None
    return {"rows": counted[0] - 110_000, "traces": counted[1] - 2, "big": big,
            "build_s": None, "size_mib": store_size(path) / 2**20}


@dataclass
class Timing:
    name: str
    path: str
    times: list[float]
    found: int | None


def time_request(client: httpx.Client, name: str, path: str, repeat: int) -> Timing:
    found = None
    for _ in range(2):  # warm-up
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
        body = response.json()
        if "traces" in body:
            found = len(body["traces"])
        elif "spans" in body:
            found = len(body["spans"])
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = client.get(path)
        response.read()
        times.append(time.perf_counter() - began)
    return Timing(name, path, sorted(times), found)


def serve(store: str) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = child_env(PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH"))
                                               if p))
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "serve", "--store", store,
                             "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/api/projects", timeout=5)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError("tracer serve exited") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("tracer serve did not answer within 60 s")


def queries(client: httpx.Client, info: dict) -> list[tuple[str, str]]:
    base = f"/api/projects/{PROJECT}/traces"
    words, _ = vocabulary()
    page = client.get(base).json()
    deep = None
    for _ in range(20):  # the 21st page
        deep = page["next"]
        page = client.get(f"{base}?before={deep}").json()
    first = page["traces"][0]["root_span_id"]
    skeleton = client.get(f"/api/traces/{first}").json()
    llm = next(s["span_id"] for s in skeleton["spans"] if s["type"] == "llm")
    middle = T0 + 15 * DAY
    return [
        ("logs page: first page (50 traces)", base),
        ("logs page: 21st page (before=cursor)", f"{base}?before={deep}"),
        ("live tail: after the newest (nothing new)",
         f"{base}?after={client.get(base).json()['newest']}"),
        ("errors=1", f"{base}?errors=1"),
        ("type=llm (every trace has one)", f"{base}?type=llm"),
        ("type=score (no trace has one: whole scan)", f"{base}?type=score"),
        ("name=summ (prefix)", f"{base}?name=summ"),
        ("since/until: one day", f"{base}?since={middle}&until={middle + DAY}"),
        ("score=quality:gt:0.95", f"{base}?score=quality:gt:0.95"),
        ("meta=model=claude-3-5", f"{base}?meta=model%3Dclaude-3-5"),
        ("meta model + region (two keys)", f"{base}?meta=model%3Dclaude-3-5&meta=region%3Deu"),
        (f"q={words[0]} (the commonest word)", f"{base}?q={words[0]}"),
        (f"q={words[50]} (a common word)", f"{base}?q={words[50]}"),
        (f"q={words[2000]} (a rare word)", f"{base}?q={words[2000]}"),
        (f"q={words[300]} {words[400]} (two words)", f"{base}?q={words[300]}+{words[400]}"),
        ("errors=1&type=llm&meta=region=eu", f"{base}?errors=1&type=llm&meta=region%3Deu"),
        ("projects", "/api/projects"),
        ("a span's row (an LLM span)", f"/api/traces/{first}/spans/{llm}"),
        ("skeleton of a 10-span trace", f"/api/traces/{first}"),
        ("skeleton of a 10,000-span trace", f"/api/traces/{info['big']['10000']}"),
        ("skeleton of a 100,000-span trace", f"/api/traces/{info['big']['100000']}"),
    ]


def measure(store: str, rows: int, repeat: int) -> tuple[dict, list[Timing]]:
    """Build (or reuse) the store, serve it, time every query."""
    info = existing(store)
    if info is not None:
        print(f"using {display(store)}: {info['rows']:,} rows", flush=True)
    else:
        print(f"building {display(store)}: {rows:,} rows", flush=True)
        info = build(store, rows)
        info = json.loads(json.dumps(info))  # keys as the saved file has them
    proc, url = serve(store)
    results = []
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            for name, path in queries(client, info):
                timing = time_request(client, name, path, repeat)
                results.append(timing)
                print(f"  {name}: p95 {percentile(timing.times, 95) * 1000:.1f} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return info, results


def display(store: str) -> str:
    from workers.store.postgres import redact

    return redact(store) if store.startswith(SCHEMES) else store


def backend(store: str) -> str:
    return "PostgreSQL" if store.startswith(SCHEMES) else "SQLite"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000,
                   help="rows of ~10-span traces to write (default: 1,000,000)")
    p.add_argument("--repeat", type=int, default=30, help="timed requests per query "
                                                          "(default: 30)")
    p.add_argument("--store", default="sqlite", help="stores, comma-separated: sqlite, a "
                   "SQLite path (kept), postgresql, or a postgresql:// URL (kept) "
                   "(default: sqlite)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()

    info_machine = machine()
    print(f"server: {info_machine['cpu']}, {info_machine['cores']} cores, "
          f"{info_machine['python']}, source {info_machine['source']}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    import contextlib
    import shutil

    from postgres_server import new_database, postgres_for_bench

    measured: list[tuple[str, dict, list[Timing], tuple[float, ...]]] = []
    with contextlib.ExitStack() as stack:
        for spec in args.store.split(","):
            workdir = None
            if spec == "sqlite":
                workdir = tempfile.mkdtemp(prefix="server-bench-")
                store = os.path.join(workdir, "traces.db")
            elif spec == "postgresql":
                store = new_database(stack.enter_context(postgres_for_bench(None)))
            elif spec.startswith(SCHEMES):
                store = spec
            else:
                store = os.path.abspath(spec)
            info, results = measure(store, args.rows, args.repeat)
            measured.append((backend(store), info, results, os.getloadavg()))
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
    for name, info, results, load in measured:
        built = (f"built in {info['build_s']:.0f} s, " if info.get("build_s") else "") + \
            f"{info['size_mib']:,.0f} MiB"
        print(f"\n{name}: {info['rows']:,} rows ({info['traces']:,} traces) + two traces of "
              f"10,000 and 100,000 spans ({built}); {args.repeat} requests each after 2 warm-up "
              f"requests; load average after {' '.join(f'{x:.2f}' for x in load)}\n")
        print("| request | p50 | p95 | max | traces or spans answered |")
        print("|---|---:|---:|---:|---:|")
        for t in results:
            print(f"| {t.name} | {percentile(t.times, 50) * 1000:.1f} ms | "
                  f"{percentile(t.times, 95) * 1000:.1f} ms | {t.times[-1] * 1000:.1f} ms | "
                  f"{'' if t.found is None else f'{t.found:,}'} |")
    if len(measured) > 1:
        print("\n| request | " + " | ".join(f"{name} p50 | {name} p95" for name, *_ in measured)
              + " |")
        print("|---|" + "---:|---:|" * len(measured))
        for i, t in enumerate(measured[0][2]):
            cells = " | ".join(f"{percentile(m[2][i].times, 50) * 1000:.1f} ms | "
                               f"{percentile(m[2][i].times, 95) * 1000:.1f} ms"
                               for m in measured)
            print(f"| {t.name} | {cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info_machine, "stores": [
                {"backend": name, "store": info, "load_after": load, "results": [
                    {"name": t.name, "path": t.path, "found": t.found,
                     "p50_ms": percentile(t.times, 50) * 1000,
                     "p95_ms": percentile(t.times, 95) * 1000, "max_ms": t.times[-1] * 1000}
                    for t in results]} for name, info, results, load in measured]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
