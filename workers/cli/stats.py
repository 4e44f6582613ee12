"""``tracer stats``: the counters of the running aggregators, or of the last ones recorded in the
store."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tracer import config
from tracer.stats_client import ask_stats

from ..store import open_store


def cmd_stats(args: argparse.Namespace) -> int:
    """``tracer stats``: the live aggregators' counters, else the stored ones; 1 if neither."""
    endpoints = [args.endpoint or os.environ.get("TRACER_ENDPOINT")]
    runs: list[dict] = []
    store_path = args.store
    if config.is_postgres(store_path) or os.path.exists(store_path):
        try:
            with open_store(store_path, readonly=True) as store:
                runs = store.runs()
        except FileNotFoundError:  # a database without a store's tables: no runs recorded
            pass
    if endpoints[0] is None:
        endpoints = [run["endpoint"] for run in runs if run["ended"] is None]
    key = config.load().aggregator_key  # a tcp:// aggregator with a secret key wants it
    live = [stats for stats in (ask_stats(e, server_key=key) for e in endpoints if e)
            if stats is not None]
    if live:
        _print_stats(live, args.json, "live aggregator")
        return 0
    stored = [json.loads(run["counters"]) for run in runs[:5]]
    if not stored:
        print("no running aggregator answered and the store has no recorded runs",
              file=sys.stderr)
        return 1
    _print_stats(stored, args.json, "stored counters of a past aggregator run")
    return 0


def _print_stats(all_stats: list[dict], as_json: bool, what: str) -> None:
    if as_json:
        print(json.dumps(all_stats if len(all_stats) > 1 else all_stats[0], indent=2,
                         sort_keys=True))
        return
    for stats in all_stats:
        print(f"{what}: pid {stats.get('pid')} at {stats.get('endpoint')}")
        print(f"  store: {stats.get('store')}")
        if stats.get("upload"):
            print(f"  uploading to: {stats['upload']}")
        if stats.get("otlp"):
            print(f"  exporting OTLP to: {stats['otlp']}")
        for name in ("spool", "otlp_spool"):
            spool = stats.get(name)
            if isinstance(spool, dict):
                age = spool.get("oldest_age")
                print(f"  {name.replace('_', ' ')}: {spool.get('bytes')} bytes in "
                      f"{spool.get('batches')} batches"
                      + (f", the oldest {age:.1f} s old" if isinstance(age, (int, float)) else "")
                      + f" ({spool.get('directory')}, at most {spool.get('max_bytes')} bytes)")
        counters = stats.get("counters", {})
        for name in sorted(counters):
            print(f"  {name:28} {counters[name]}")
        print(f"  {'queue_depth':28} {stats.get('queue_depth')} / {stats.get('queue_size') or '∞'}")
        print(f"  {'live_senders':28} {stats.get('live_senders')}")
        gaps = stats.get("senders_with_gaps") or {}
        print(f"  {'senders_with_gaps':28} {gaps or 'none'}")
        rss = stats.get("rss_bytes")
        if rss is not None:
            print(f"  {'rss':28} {rss / 2**20:.1f} MiB, cpu {stats.get('cpu_seconds', 0):.2f} s")
