"""Plot the benchmark results: spans/s against producer count, and per-span cost per system.

    python scripts/bench/caller_cost.py --json caller.json
    python scripts/bench/fan_in.py --json fan_in.json
    python scripts/bench/plot.py caller.json fan_in.json -o docs/benchmarks.png

Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("caller", help="JSON written by caller_cost.py --json")
    p.add_argument("fan_in", help="JSON written by fan_in.py --json")
    p.add_argument("-o", "--output", default="docs/benchmarks.png", help="PNG to write")
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    with open(args.caller) as f:
        caller = json.load(f)
    with open(args.fan_in) as f:
        fan_in = json.load(f)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))

    runs = [r for r in fan_in["results"] if not r.get("paced_rate")]
    producers = [r["producers"] for r in runs]
    left.plot(producers, [r["offered_spans_per_s"] for r in runs], "o--", label="offered")
    left.plot(producers, [r["committed_spans_per_s"] for r in runs], "o-", label="committed")
    left.axhline(100_000, color="grey", linestyle=":", label="target (100k/s committed)")
    left.set_xticks(producers)
    left.set_xlabel("producer processes")
    left.set_ylabel("spans/s")
    left.set_yscale("log")
    left.set_title("Fan-in into one aggregator (SQLite sink)")
    left.set_ylim(top=400_000)  # room for the legend above the lines
    left.legend(loc="upper right")

    def median(result: dict, key: str) -> float:
        return result["timings"][key]["median_us"]

    systems = [("bare call", caller["bare"]["g"]["median_us"]),
               ("tracer, no logger", median(caller["nologger"], "g")),
               ("tracer, logger", median(caller["logger"], "g"))]
    for mode, label in (("otel", "OpenTelemetry SDK"), ("braintrust", "braintrust SDK")):
        result = caller.get("anchors", {}).get(mode, {})
        if "timings" in result:
            systems.append((label, median(result, "g")))
    names = [name for name, _ in systems]
    costs = [cost for _, cost in systems]
    bars = right.barh(names, costs, color=["grey", "tab:blue", "tab:blue", "tab:orange",
                                           "tab:red"][:len(systems)])
    right.bar_label(bars, labels=[f"{c:.2f} µs" for c in costs], padding=3)
    right.set_xscale("log")
    right.set_xlabel("µs per call, 1 KB input (median, log scale)")
    right.set_title("Caller-side cost per traced call")
    right.invert_yaxis()

    machine = caller.get("machine", {})
    fig.suptitle(f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
                 f"{machine.get('python', '?')}, source {machine.get('source', '?')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
