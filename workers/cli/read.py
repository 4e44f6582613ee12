"""The commands that read traces out of a store: ``tracer export`` and ``tracer show``."""

from __future__ import annotations

import argparse
import json
import sys

from ..store import open_store
from .attachments import saving
from .csv_writer import write_csv
from .tree import print_tree


def cmd_export(args: argparse.Namespace) -> int:
    """``tracer export``: the rows the filters keep, as JSON lines, JSON or CSV."""
    with open_store(args.store, readonly=True) as store:
        rows = store.rows(project=args.project, experiment=args.experiment,
                          root_span_id=args.root, span_type=args.type, errors=args.errors,
                          since=args.since, until=args.until)
        if args.with_attachments:
            rows = saving(store, rows, args.with_attachments)
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


def cmd_show(args: argparse.Namespace) -> int:
    """``tracer show``: one trace as a tree; 1 if there is none to show."""
    with open_store(args.store, readonly=True) as store:
        root = store.last_root() if args.last else args.root
        if root is None:
            print("the store has no traces yet", file=sys.stderr)
            return 1
        if not print_tree(store, root):
            print(f"no trace with root_span_id {root}", file=sys.stderr)
            return 1
    return 0
