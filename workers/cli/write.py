"""The commands that put spans into a store: ``tracer import``, ``tracer import-payloads`` and
``tracer demo`` (which then shows the trace it made)."""

from __future__ import annotations

import argparse
import os
import sys

from tracer.config import without_password

from ..rows import Container
from ..store import open_store
from .tree import print_tree


def cmd_demo(args: argparse.Namespace) -> int:
    """``tracer demo``: run the demo workload into the store, then show its trace."""
    from ..demo import run_demo

    root_id, link = run_demo(args.store, args.tasks)
    with open_store(args.store, readonly=True) as reader:
        print_tree(reader, root_id)
    store = without_password(args.store)  # (what is printed never carries a password)
    print(f"\nrows stored in {store}")
    print(f"permalink: {link}")
    print(f"  (`tracer serve --store {store}` serves it; then open the permalink)")
    print(f"next: tracer show --last --store {store}   |   tracer export --root {root_id} "
          f"--store {store}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """``tracer import``: spans from JSON lines, all checked before any is written."""
    from .. import importer

    store = args.store
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
    print(f"imported {len(pending)} rows ({traces} traces) into {without_password(store)}: "
          f"{', '.join(where)}")
    return 0


def _describe_container(container: Container) -> str:
    if container.experiment_id is None:
        return f"logs of project {container.project_name!r}"
    return (f"experiment {container.experiment_name!r} ({container.experiment_id}) of project "
            f"{container.project_name!r}")


def cmd_import_payloads(args: argparse.Namespace) -> int:
    """``tracer import-payloads``: merge the rows of payload files into the store."""
    from .. import payloads

    store = args.store
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
    print(f"replayed {rows} rows from {len(names)} payload files into "
          f"{without_password(store)}")
    return 0
