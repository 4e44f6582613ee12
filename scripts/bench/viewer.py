"""How long the viewer takes to open big traces in headless Chromium.

    python scripts/bench/viewer.py [--sizes 10000 100000] [--runs 5] [--chromium PATH]

Writes one trace per size with real traced programs (a root, groups of 100 spans, leaves), starts
the real ``tracer serve`` on the store, and opens each trace's URL in a fresh page ``--runs``
times. Measured in the page (Performance API), from the navigation's start:

- ``skeleton``: the trace's span list (GET /api/traces/{root}) fetched (responseEnd);
- ``open``: the tree and timeline drawn (the viewer's ``trace-rendered`` mark), the root span
  selected: the page is interactive from then on;
- ``to last span``: then, pressing End in the tree until the last span is drawn selected
  (measured from Python, wall clock).

Prints the medians (and the spread) as a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
from common import child_env  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

CLI = [sys.executable, "-m", "workers.cli"]


def write_trace(store: str, spans: int) -> dict:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "from tests.viewer.workload import write_big_trace; "
            "write_big_trace(sys.argv[2], int(sys.argv[3]), sys.argv[4])")
    proc = subprocess.run([sys.executable, "-c", code, ROOT, store, str(spans), f"big-{spans}"],
                          env=child_env(PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=900, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    store = os.path.join(tempfile.mkdtemp(prefix="tracer-viewer-bench-"), "traces.db")
    traces = {n: write_trace(store, n) for n in args.sizes}
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*CLI, "serve", "--store", store, "--port", str(port)],
                              env=child_env(PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/api/projects", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    sys.exit("tracer serve did not start")
                time.sleep(0.1)
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            expect.set_options(timeout=120_000)
            for n, trace in traces.items():
                rows = []
                for _ in range(args.runs + 1):  # the first run warms the server's page cache
                    context = browser.new_context(base_url=base,
                                                  viewport={"width": 1440, "height": 900})
                    page = context.new_page()
                    page.goto(f"/p/big-{n}/logs?r={trace['root']}")
                    tree = page.get_by_role("tree", name="Span tree")
                    expect(tree.get_by_role("treeitem", selected=True)).to_be_visible()
                    timing = page.evaluate("""() => {
                        const mark = performance.getEntriesByName('trace-rendered')[0];
                        const skel = performance.getEntriesByType('resource')
                            .find(e => /\\/api\\/traces\\/[^/]+$/.test(e.name));
                        return {open: mark.startTime, skeleton: skel ? skel.responseEnd : null,
                                bytes: skel ? skel.encodedBodySize : null};
                    }""")
                    start = time.perf_counter()
                    tree.press("End")
                    expect(tree.get_by_role("treeitem", name="last span")).to_have_attribute(
                        "aria-selected", "true")
                    timing["last"] = (time.perf_counter() - start) * 1000
                    rows.append(timing)
                    context.close()
                results[n] = rows[1:]
            browser.close()
    finally:
        server.terminate()
        server.wait(10)

    print("| trace | skeleton fetched | tree drawn, interactive | End → last span selected "
          "| skeleton JSON |")
    print("|---|---|---|---|---|")
    for n, rows in results.items():
        size = rows[0]["bytes"]
        print(f"| {n:,} spans | {cell(rows, 'skeleton')} | {cell(rows, 'open')} | "
              f"{cell(rows, 'last')} | {size / 1e6:.1f} MB |" if size else "")


def cell(rows: list[dict], key: str) -> str:
    """The median of ``key`` over the runs (ms in, seconds out), and its range."""
    values = sorted(r[key] for r in rows if r[key] is not None)
    return (f"{statistics.median(values) / 1000:.2f} s "
            f"({values[0] / 1000:.2f}–{values[-1] / 1000:.2f})")


if __name__ == "__main__":
    main()
