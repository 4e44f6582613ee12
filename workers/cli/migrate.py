"""``tracer migrate --from SRC --to DST``: copy a whole store into another, across backends.

What is copied: every row as it is stored (its ``created`` and every field; not the fields a
reader adds), the containers (their ``created`` kept), the aggregator runs, the attachment
records and the attachment blobs (each store keeps its blobs in a local directory,
``tracer.attachments.store_dir``: the files are copied from one to the other). The destination
must have no rows: copying into a store with rows would merge two histories, which this does
not try (the command says so and stops). The destination's trace summaries and text index are
built as its rows are written, as for any write.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable

from tracer import attachments as tracer_attachments
from tracer import config

from ..store import open_store

#: Rows per transaction in the destination: large enough that a commit costs little per row,
#: small enough that a failure loses (and a retry repeats) little.
BATCH = 500

#: Seconds between progress lines on a long copy.
PROGRESS_EVERY = 2.0


def attachment_area(store: str) -> str:
    """The local directory of the store's attachments (``store`` as the CLI resolved it)."""
    return tracer_attachments.store_dir(
        store if store.startswith(config.POSTGRES_SCHEMES) else config.store_path(store))


def copy_blobs(source: str, destination: str) -> tuple[int, int]:
    """Copy the attachment blobs of ``source``'s area into ``destination``'s: (copied, already
    there). Blobs are content addressed, so a file of the same name is the same content."""
    source_blobs = os.path.join(attachment_area(source), "blobs")
    target_blobs = os.path.join(attachment_area(destination), "blobs")
    copied = present = 0
    if not os.path.isdir(source_blobs):
        return 0, 0
    for directory, _, files in os.walk(source_blobs):
        relative = os.path.relpath(directory, source_blobs)
        target_dir = os.path.normpath(os.path.join(target_blobs, relative))
        for name in files:
            target = os.path.join(target_dir, name)
            if os.path.exists(target):
                present += 1
                continue
            tracer_attachments.make_private(target_dir)  # (attachments hold user data)
            temporary = target + ".copying"
            shutil.copyfile(os.path.join(directory, name), temporary)
            os.chmod(temporary, 0o600)
            os.replace(temporary, target)  # (never a half-copied blob under its name)
            copied += 1
    return copied, present


def copy_store(source: str, destination: str,
               say: Callable[[str], None] = print) -> dict[str, int]:
    """Copy the store ``source`` into ``destination`` (made if missing; refused if it has
    rows): the counts copied, by kind (``rows``, ``containers``, ``runs``, ``attachments``,
    ``blobs``)."""
    if os.path.abspath(attachment_area(source)) == os.path.abspath(attachment_area(destination)):
        raise ValueError("--from and --to are the same store")
    with open_store(source, readonly=True) as reader, open_store(destination) as writer:
        writer.schema_version()  # makes the destination (and its schema) if missing
        with open_store(destination, readonly=True) as target:
            if next(iter(target.rows()), None) is not None:
                raise ValueError(f"store {writer.location} has rows already: migrate copies into "
                                 "an empty or new store only (give another --to)")
        containers = reader.containers()
        by_id = {c["id"]: c for c in containers}
        writer.import_containers(containers)
        copied = 0
        shown = time.monotonic()
        batch: list[tuple[dict, dict]] = []
        for container, row in reader.stored_rows():
            record = by_id.get(container)
            if record is None:  # (a row always has its container; say so if one does not)
                raise ValueError(f"a row of container {container!r} has no container record: "
                                 "the source store is inconsistent; nothing after it copied "
                                 f"({copied} rows were)")
            batch.append((record, row))
            if len(batch) >= BATCH:
                writer.import_rows(batch)
                copied += len(batch)
                batch = []
                if time.monotonic() - shown >= PROGRESS_EVERY:
                    say(f"  {copied} rows copied so far")
                    shown = time.monotonic()
        if batch:
            writer.import_rows(batch)
            copied += len(batch)
        runs = reader.runs()
        for run in runs:
            writer.import_run(run)
        records = reader.attachment_records()
        for record in records:
            writer.import_attachment(record)
        with open_store(destination, readonly=True) as target:  # nothing lost without a count
            found = sum(1 for _ in target.stored_rows())
        if found != copied:
            raise ValueError(f"store {writer.location} has {found} rows after copying {copied}")
    blobs, present = copy_blobs(source, destination)
    return {"rows": copied, "containers": len(containers), "runs": len(runs),
            "attachments": len(records), "blobs": blobs, "blobs_present": present}


def cmd_copy(source: str, destination: str) -> int:
    """``tracer migrate --from --to``: copy, saying what, and how many of each."""
    shown_from = config.without_password(source)
    shown_to = config.without_password(destination)
    print(f"tracer migrate: copying {shown_from} into {shown_to}", flush=True)
    counts = copy_store(source, destination,
                        say=lambda line: print(line, flush=True))
    print(f"copied {counts['rows']} rows, {counts['containers']} containers, "
          f"{counts['runs']} aggregator runs, {counts['attachments']} attachment records, "
          f"{counts['blobs']} attachment blobs"
          + (f" ({counts['blobs_present']} blobs were there already)"
             if counts["blobs_present"] else ""))
    sys.stdout.flush()
    return 0
