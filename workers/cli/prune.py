"""``tracer prune --older-than 30d [--project P] [--dry-run]``: retention
(``workers.retention``): the traces that started before the cutoff removed, then the
attachments nothing refers to any more."""

from __future__ import annotations

import argparse
import datetime
import time

from tracer import config

from .. import retention

#: Seconds between progress lines on a long prune.
PROGRESS_EVERY = 2.0


def duration(label: str):
    """An argparse ``type`` reading a duration (``retention.parse_duration``); a bad one is
    argparse's error (exit status 2, the message naming the option)."""

    def parse(text: str) -> float:
        try:
            return retention.parse_duration(text, label)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_arguments(commands: argparse._SubParsersAction) -> None:
    prune = commands.add_parser(
        "prune", help="remove traces older than a duration, and attachments nothing refers to",
        description="Remove every trace that started more than DURATION ago (its rows, its "
                    "summary, its text index entries), a few hundred traces per transaction so "
                    "that writers go on meanwhile; then the attachment records no remaining row "
                    "refers to and the blobs of the store's attachment area no record names, "
                    "kept for a grace period after they were stored (--attachment-grace): a "
                    "row may land after its attachment. Durations: a number and a unit, s, m, "
                    "h, d or w (90m, 12h, 30d).")
    prune.add_argument("--older-than", metavar="DURATION", required=True,
                       type=duration("--older-than"),
                       help="remove the traces that started more than this long ago")
    prune.add_argument("--project", help="only the traces of this project (its logs and its "
                                         "experiments)")
    prune.add_argument("--dry-run", action="store_true",
                       help="remove nothing: say what would be removed")
    prune.add_argument("--attachment-grace", metavar="DURATION",
                       type=duration("--attachment-grace"), default=retention.ATTACHMENT_GRACE,
                       help="keep attachment records and blobs younger than this, referred to "
                            "or not (default: 24h)")
    prune.add_argument("--store", help="store to prune (default: TRACER_STORE or "
                                       ".tracer/traces.db)")


def cmd_prune(args: argparse.Namespace) -> int:
    """``tracer prune``: 0 once done (or, with ``--dry-run``, said)."""
    now = time.time()
    cutoff = datetime.datetime.fromtimestamp(now - args.older_than, datetime.timezone.utc)
    shown = config.without_password(args.store)
    scope = f" of project {args.project!r}" if args.project else ""
    verb = "would remove" if args.dry_run else "removing"
    print(f"tracer prune: {verb} the traces{scope} that started before "
          f"{cutoff.isoformat(timespec='seconds')} from {shown}", flush=True)
    last = [time.monotonic()]

    def progress(counts: dict[str, int]) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY:
            print(f"  {counts['traces']} traces ({counts['rows']} rows) removed so far",
                  flush=True)
            last[0] = time.monotonic()

    counts = retention.prune(args.store, args.older_than, args.project, dry_run=args.dry_run,
                             grace=args.attachment_grace, progress=progress, now=now)
    print(("would remove " if args.dry_run else "removed ") + describe(counts))
    return 0


def describe(counts: dict[str, int]) -> str:
    """The counts of a prune as a line."""
    return (f"{counts['traces']} traces ({counts['rows']} rows), {counts['attachments']} "
            f"attachment records, {counts['blobs']} attachment blobs "
            f"({counts['blob_bytes']} bytes)")
