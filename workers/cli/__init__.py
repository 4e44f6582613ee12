"""The ``tracer`` command line: demo, export, import, show, stats, import-payloads, attachment,
keys, serve, migrate, prune, aggregator.

This module is the wiring: every command's arguments (``parser``) and ``main``, which resolves
``--store`` and runs the command. Each group of commands runs in a module of its own: ``read``
(export, show), ``write`` (import, import-payloads, demo), ``stats``, ``attachments`` (attachment
get, and the attachment parts of export and show), ``keys``, ``serve`` (serve, migrate),
``prune``; ``tree`` and ``csv_writer`` are their output. ``tracer aggregator`` is
``workers.aggregator.main``, with arguments of its own.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable

from tracer import config
from tracer.event import SPAN_TYPES

from ..store import STORE_ERRORS
from . import attachments, keys, prune, read, serve, stats, write

# A bad argument or a store that cannot be read: a message and exit status 2, no traceback.
_FAILURES: tuple[type[Exception], ...] = (FileNotFoundError, ValueError, *STORE_ERRORS)

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": write.cmd_demo,
    "export": read.cmd_export,
    "import": write.cmd_import,
    "show": read.cmd_show,
    "stats": stats.cmd_stats,
    "import-payloads": write.cmd_import_payloads,
    "attachment": attachments.cmd_attachment,
    "keys": keys.cmd_keys,
    "serve": serve.cmd_serve,
    "migrate": serve.cmd_migrate,
    "prune": prune.cmd_prune,
}


def main(argv: list[str] | None = None) -> int:
    """Run ``tracer ARGV...``; returns the exit status: 0, 1 (nothing to show or get) or 2 (bad
    input, or a store that cannot be read or written)."""
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "aggregator":
        from ..aggregator import main as aggregator_main

        return aggregator_main(argv[1:])
    args = parser().parse_args(keys.legacy(argv))
    name = f"tracer {args.command}"
    if args.command in ("attachment", "keys"):
        name += f" {args.action}"
    try:
        if hasattr(args, "store"):  # every command here has --store: a path, sqlite:///path
            # or postgresql://...
            args.store = (config.store_location(args.store, "--store") if args.store
                          else config.store_location(config.load().store, "TRACER_STORE"))
        return COMMANDS[args.command](args)
    except _FAILURES as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def parser() -> argparse.ArgumentParser:
    """The arguments of every command (but ``aggregator``'s: ``workers.aggregator.parser``)."""
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
    _store_arg(demo, "store to write to")
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
    export.add_argument("--with-attachments", metavar="DIR",
                        help="also write each attachment the rows refer to as DIR/<key>-<filename>"
                             " and give each reference its upload_status (done, error, "
                             "uploading, missing) and error_message")

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

    counters = commands.add_parser(
        "stats", help="counters of the running aggregator (or the last one)",
        description="Ask a running aggregator for its counters: received, committed, dropped by "
                    "reason, per-sender gaps, queue depth, RSS and CPU. Without a live "
                    "aggregator, print the counters stored by the last ones that ran.")
    counters.add_argument("--endpoint",
                          help="aggregator to ask (default: TRACER_ENDPOINT, else the live "
                               "aggregators recorded in the store)")
    counters.add_argument("--json", action="store_true", help="print JSON")
    _store_arg(counters)

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

    attachment = commands.add_parser(
        "attachment", help="retrieve the attachments of logged spans",
        description="Retrieve attachments (files and bytes logged with tracer.Attachment) from "
                    "a store by the key their reference in the row carries.")
    actions = attachment.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    get = actions.add_parser(
        "get", help="write an attachment's bytes to a file or stdout",
        description="Write the stored bytes of the attachment with this key (the \"key\" of a "
                    "braintrust_attachment reference in a row) to FILE, or to stdout.")
    get.add_argument("key", metavar="KEY", help="the attachment's key (32 hex digits)")
    get.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    _store_arg(get)

    keys.add_arguments(commands)
    serve.add_arguments(commands)
    prune.add_arguments(commands)

    commands.add_parser("aggregator", add_help=False,
                        help="run a standalone aggregator (see tracer aggregator --help)")
    return parser


def _store_arg(p: argparse.ArgumentParser, what: str = "store to read") -> None:
    p.add_argument("--store", help=f"{what} (default: TRACER_STORE or .tracer/traces.db)")


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
