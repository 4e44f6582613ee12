"""The ``tracer`` command line: demo, export, import, show, stats, import-payloads, attachment,
aggregator."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
from collections import defaultdict

from tracer import config
from tracer.event import SPAN_TYPES
from tracer.stats_client import ask_stats

from . import attachment_cli
from .store import STORE_ERRORS, StoreReader, open_store

# A bad argument or a store that cannot be read: a message and exit status 2, no traceback.
_FAILURES: tuple[type[Exception], ...] = (FileNotFoundError, ValueError, *STORE_ERRORS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tracer",
        description="Multiprocessing-safe tracing: every span from every process in one trace.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo", help="run a small traced workload and print its trace",
        description="Run a small realistic traced workload (a root task fanning out over a "
                    "process pool and a thread pool, nested functions, a caught error, a fake "
                    "LLM call), then print the trace tree and where the rows are stored. "
                    "Needs no network.")
    demo.add_argument("--store", help="store to write to (default: TRACER_STORE or "
                                      ".tracer/traces.db)")
    demo.add_argument("--tasks", type=int, default=8, help="items to fan out (default: 8)")

    export = commands.add_parser(
        "export", help="print rows in the underlying format (JSON lines, JSON or CSV)",
        description="Print one JSON object per row, in the reference's underlying format "
                    "(id, span_id, root_span_id, span_parents, span_attributes, input, output, "
                    "expected, error, scores, metadata, metrics, tags, created, container ids "
                    "and names), in the order the spans started. tracer import reads it back.")
    scope = export.add_mutually_exclusive_group()
    scope.add_argument("--project", help="only rows of this project's logs and experiments")
    scope.add_argument("--experiment", metavar="NAME_OR_ID",
                       help="only rows of this experiment (its name or its id)")
    export.add_argument("--root", metavar="ID", help="only the trace with this root_span_id")
    export.add_argument("--type", choices=SPAN_TYPES, help="only spans of this type")
    export.add_argument("--errors", action="store_true", help="only spans with an error")
    export.add_argument("--since", metavar="TIME", type=parse_time,
                        help="only spans that started at or after TIME (ISO 8601, UTC unless "
                             "it says otherwise, or epoch seconds)")
    export.add_argument("--until", metavar="TIME", type=parse_time,
                        help="only spans that started before TIME")
    export.add_argument("--format", choices=("jsonl", "json", "csv"), default="jsonl",
                        help="jsonl: one object per line (default); json: one array; csv: one "
                             "column per top-level field, nested values as JSON text")
    _store_arg(export)
    attachment_cli.add_export_option(export)

    importer = commands.add_parser(
        "import", help="write spans from JSON lines into a store",
        description="Read JSON lines and write them as spans: nested span trees (input, output, "
                    "expected, error, scores, metadata, metrics, tags, name, type, children) get "
                    "fresh ids, parents and roots; rows in the underlying format (with id and "
                    "span_id, as tracer export prints them) keep theirs, so export -> import -> "
                    "export gives the same rows. The whole input is checked before anything is "
                    "written.")
    importer.add_argument("file", metavar="FILE", help="a file of JSON lines, or - for stdin")
    importer.add_argument("--project", help="into this project's logs (with --experiment: the "
                                            "experiment's project). Default: a row's own "
                                            "container; trees go to the project 'default'")
    importer.add_argument("--experiment", metavar="NAME",
                          help="into this experiment (added to if the store has one of that "
                               "name in the project, else new)")
    _store_arg(importer, "store to write to")

    show = commands.add_parser(
        "show", help="print a trace as an indented tree",
        description="Print a trace as a tree with durations; spans with an error are marked.")
    which = show.add_mutually_exclusive_group(required=True)
    which.add_argument("root", nargs="?", metavar="ROOT_SPAN_ID", help="the trace to show")
    which.add_argument("--last", action="store_true", help="the most recently written trace")
    _store_arg(show)

    stats = commands.add_parser(
        "stats", help="counters of the running aggregator (or the last one)",
        description="Ask a running aggregator for its counters: received, committed, dropped by "
                    "reason, per-sender gaps, queue depth, RSS and CPU. Without a live "
                    "aggregator, print the counters stored by the last ones that ran.")
    stats.add_argument("--endpoint", help="aggregator to ask (default: TRACER_ENDPOINT, else the "
                                          "live aggregators recorded in the store)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    _store_arg(stats)

    replay = commands.add_parser(
        "import-payloads", help="replay payload files into a store",
        description="Merge the rows of payload files (written to FAILED_PUBLISH_PAYLOADS_DIR "
                    "or ALL_PUBLISH_PAYLOADS_DIR by an aggregator, or by a recorder dropping "
                    "records) into a store. Replaying is idempotent: rows merge by id, so a file "
                    "replayed twice changes nothing.")
    replay.add_argument("path", metavar="PATH", help="a payload file, or a directory of them "
                                                     "(searched recursively)")
    replay.add_argument("--delete", action="store_true",
                        help="delete each file once its rows are committed")
    _store_arg(replay, "store to write to")

    attachment_cli.add_commands(commands)

    commands.add_parser("aggregator", add_help=False,
                        help="run a standalone aggregator (see tracer aggregator --help)")

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "aggregator":
        from .aggregator import main as aggregator_main

        return aggregator_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "attachment":
        return attachment_cli.run(args)
    try:
        return {"demo": cmd_demo, "export": cmd_export, "import": cmd_import, "show": cmd_show,
                "stats": cmd_stats, "import-payloads": cmd_import_payloads}[args.command](args)
    except _FAILURES as exc:
        print(f"tracer {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def _store_arg(p: argparse.ArgumentParser, what: str = "store to read") -> None:
    p.add_argument("--store", help=f"{what} (default: TRACER_STORE or .tracer/traces.db)")


def _open_store(args: argparse.Namespace) -> StoreReader:
    return open_store(config.store_path(args.store or config.load().store), readonly=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    store = config.store_path(args.store or config.load().store)
    root_id = run_demo(store, args.tasks)
    with open_store(store, readonly=True) as reader:
        print_tree(reader, root_id)
    print(f"\nrows stored in {store}")
    print(f"next: tracer show --last --store {store}   |   tracer export --root {root_id} "
          f"--store {store}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        rows = store.rows(project=args.project, experiment=args.experiment,
                          root_span_id=args.root, span_type=args.type, errors=args.errors,
                          since=args.since, until=args.until)
        if args.with_attachments:
            rows = attachment_cli.saving(store, rows, args.with_attachments)
        if args.format == "csv":
            write_csv(list(rows), sys.stdout)
            return 0
        if args.format == "json":
            print("[", end="")
            for i, row in enumerate(rows):
                print(("\n" if i == 0 else ",\n") + json.dumps(row, sort_keys=True), end="")
            print("\n]")
            return 0
        for row in rows:
            print(json.dumps(row, sort_keys=True))
    return 0


# The underlying format's fields, in the order CSV columns show them; any others follow.
CSV_COLUMNS = ("id", "span_id", "root_span_id", "span_parents", "span_attributes", "input",
               "output", "expected", "error", "scores", "metadata", "metrics", "tags", "created",
               "project_id", "project_name", "log_id", "experiment_id", "experiment_name")


def write_csv(rows: list[dict], out) -> None:
    """One column per top-level field; strings as they are, other values as JSON text, a
    missing field or null as an empty cell."""
    extra = sorted({key for row in rows for key in row} - set(CSV_COLUMNS))
    columns = list(CSV_COLUMNS) + extra
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def parse_time(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC unless it names its offset), as epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch seconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def cmd_import(args: argparse.Namespace) -> int:
    from . import importer

    store = config.store_path(args.store or config.load().store)
    if args.file == "-":
        entries = list(importer.read_lines(sys.stdin, "<stdin>"))
    else:
        with open(args.file, encoding="utf-8") as f:
            entries = list(importer.read_lines(f, args.file))
    sink = open_store(store)
    try:
        target = importer.Target(sink, args.project, args.experiment)
        pending, traces = importer.to_pending(entries, target)
        importer.write(pending, sink)
    finally:
        sink.close()
    where = sorted({_describe_container(p.container) for p in pending})
    print(f"imported {len(pending)} rows ({traces} traces) into {store}: {', '.join(where)}")
    return 0


def _describe_container(container) -> str:
    if container.experiment_id is None:
        return f"logs of project {container.project_name!r}"
    return (f"experiment {container.experiment_name!r} ({container.experiment_id}) of project "
            f"{container.project_name!r}")


def cmd_import_payloads(args: argparse.Namespace) -> int:
    from . import payloads

    store = config.store_path(args.store or config.load().store)
    names = payloads.files(args.path)
    sink = open_store(store)
    rows = 0
    try:
        for name in names:
            rows += payloads.replay(name, sink)[1]
            if args.delete:
                os.unlink(name)
    finally:
        sink.close()
    print(f"replayed {rows} rows from {len(names)} payload files into {store}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        root = store.last_root() if args.last else args.root
        if root is None:
            print("the store has no traces yet", file=sys.stderr)
            return 1
        if not print_tree(store, root):
            print(f"no trace with root_span_id {root}", file=sys.stderr)
            return 1
    return 0


def print_tree(store: StoreReader, root_span_id: str) -> bool:
    """Print one trace as an indented tree; False if it has no rows."""
    rows = list(store.rows(root_span_id=root_span_id))
    if not rows:
        return False
    by_span = {row["span_id"]: row for row in rows}
    children = defaultdict(list)
    tops = []
    for row in rows:
        parents = [p for p in (row.get("span_parents") or []) if p in by_span]
        if parents:
            children[parents[0]].append(row)
        else:
            tops.append(row)
    errors = sum(1 for row in rows if row.get("error"))
    print(f"trace {root_span_id}: {len(rows)} spans, {errors} with errors")

    def walk(row: dict, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        text = describe_span(row)
        # A span with several parents is drawn under the first; the others are named.
        others = [by_span[p] for p in (row.get("span_parents") or [])[1:] if p in by_span]
        if others:
            names = ", ".join(repr((o.get("span_attributes") or {}).get("name")) for o in others)
            text += f"  (also under {names})"
        print(prefix + branch + text)
        kids = sorted(children[row["span_id"]], key=_start)
        extension = "" if top else ("   " if last else "│  ")
        for line in attachment_cli.span_lines(store, row):
            print(prefix + extension + ("│  " if kids else "   ") + line)
        for i, kid in enumerate(kids):
            walk(kid, prefix + extension, i == len(kids) - 1, False)

    for top in sorted(tops, key=_start):
        walk(top, "", True, True)
    return True


def describe_span(row: dict) -> str:
    attrs = row.get("span_attributes") or {}
    text = attrs.get("name") or "(unnamed)"
    if attrs.get("type"):
        text += f" [{attrs['type']}]"
    metrics = row.get("metrics") or {}
    start, end = metrics.get("start"), metrics.get("end")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        text += f"  {_duration(end - start)}"
    elif start is not None:
        text += "  (not ended)"
    tokens = metrics.get("total_tokens")
    if tokens is not None:
        text += f"  {tokens} tokens"
    error = row.get("error")
    if error:
        if isinstance(error, dict):
            error = f"{error.get('type', 'error')}: {error.get('message', '')}"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "error"
        text += f"  ✗ {first_line[:120]}"
    return text


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _start(row: dict) -> float:
    start = (row.get("metrics") or {}).get("start")
    return start if isinstance(start, (int, float)) else 0.0


def cmd_stats(args: argparse.Namespace) -> int:
    endpoints = [args.endpoint or os.environ.get("TRACER_ENDPOINT")]
    runs: list[dict] = []
    store_path = config.store_path(args.store or config.load().store)
    if os.path.exists(store_path):
        with open_store(store_path, readonly=True) as store:
            runs = store.runs()
    if endpoints[0] is None:
        endpoints = [run["endpoint"] for run in runs if run["ended"] is None]
    live = [stats for stats in (ask_stats(e) for e in endpoints if e) if stats is not None]
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


if __name__ == "__main__":
    sys.exit(main())
