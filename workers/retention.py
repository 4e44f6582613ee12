"""Retention: the traces older than a cutoff removed from a store, then the attachments no row
refers to any more (``tracer prune``; ``tracer serve --prune-older-than``, whose thread is
``workers.server.retention``).

``prune`` does it in two steps:

1. **Traces** (``StoreWriter.prune``): every trace that started before the cutoff, whole (its
   rows, its summary, its text index entries), a batch of traces per transaction.
2. **Attachments**: the attachment records that no row refers to any more
   (``StoreWriter.collect_attachments``), then the blobs of the store's local attachment area
   (``tracer.attachments.store_dir``: ``blobs/<sha[:2]>/<sha>``) that no record names. Only
   what is older than the grace period (``ATTACHMENT_GRACE``, a day by default) goes: an
   attachment is stored (spool -> blob -> record) on its own, before or after the row that
   refers to it lands, and a row may land long after (a store that failed for a while, a
   payload file replayed later). A record recorded within the grace, a blob modified within it
   (the attachment mover touches a blob whenever it stores the same content again), and
   anything a spooled attachment names are kept. A row that lands after its attachment was
   collected (a payload file replayed more than the grace after its attachment was stored)
   finds it missing (``upload_status`` ``error``: "the stored blob is missing").

A blob is taken out of the way (renamed ``<sha>.collecting``) before it is removed, and looked
at once more: one stored again meanwhile (the mover touched it before the rename, or wrote it
anew after it) or recorded again is put back. A ``.collecting`` file left by a prune that died
is put back by the next. Each host keeps its own blob area (a PostgreSQL store's is in
``~/.tracer/postgres/...`` of the host that stored it): a prune removes the records from the
database and the blobs of its own host's area.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable

from tracer import attachments as tracer_attachments
from tracer import config

from .attachments import KEY, SHA256
from .store import StoreWriter, open_store
from .store.sqlite import STORE_SEARCH_INDEX, SQLiteWriter

#: Seconds an attachment record or blob is kept, whatever refers to it (see the module).
ATTACHMENT_GRACE = 24 * 3600.0

#: The suffix of a blob taken out of the way, before it is removed or put back.
COLLECTING = ".collecting"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")
MAX_DURATION = 100 * 365 * 86400.0  # a century: anything longer is a mistake


def parse_duration(text: str, label: str = "duration") -> float:
    """Seconds for a duration written as a number and a unit: ``90m``, ``12h``, ``30d``
    (``s``, ``m``, ``h``, ``d``, ``w``). ValueError, naming ``label``, for anything else."""
    found = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if found is None:
        raise ValueError(f"{label} {text!r}: expected a number and a unit (s, m, h, d or w), "
                         "such as 90m, 12h or 30d")
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if not 0 < seconds <= MAX_DURATION:
        raise ValueError(f"{label} {text!r}: expected more than 0 and at most 100 years")
    return seconds


def prune(store: str, older_than: float, project: str | None = None, *, dry_run: bool = False,
          grace: float = ATTACHMENT_GRACE,
          progress: Callable[[dict[str, int]], None] | None = None,
          now: float | None = None) -> dict[str, int]:
    """Remove from ``store`` (a path or URL) the traces that started more than ``older_than``
    seconds before ``now`` (only ``project``'s, if given), then the attachment records and
    blobs nothing refers to (see the module). Returns the counts: ``traces``, ``rows``,
    ``attachments`` (records), ``blobs`` and ``blob_bytes`` (with ``dry_run``: what would be
    removed; nothing is). FileNotFoundError if there is no store there: a prune makes none."""
    now = time.time() if now is None else now
    with open_store(store, readonly=True):  # (there is a store, of a schema this code knows)
        pass
    with _writer(store) as writer:
        counts = writer.prune(now - older_than, project, dry_run=dry_run, progress=progress)
        counts.update(collect(writer, store, grace, dry_run=dry_run, now=now,
                              pruned=(now - older_than, project) if dry_run else None))
    return counts


def _writer(store: str) -> StoreWriter:
    """A writer of ``store`` that changes nothing but what it removes: a SQLite store's text
    index stays as its aggregators set it (a writer set otherwise would rebuild it)."""
    if config.is_postgres(store):
        return open_store(store)
    return SQLiteWriter(config.store_path(store), search_index=STORE_SEARCH_INDEX)


def collect(writer: StoreWriter, store: str, grace: float = ATTACHMENT_GRACE, *,
            dry_run: bool = False, now: float | None = None,
            pruned: tuple[float, str | None] | None = None) -> dict[str, int]:
    """Remove the attachment records no row refers to and the blobs of the store's local area
    no record names, older than ``grace`` seconds (see the module): the counts
    ``attachments``, ``blobs`` and ``blob_bytes``. ``pruned``: a dry run's prune
    (``StoreWriter.collect_attachments``)."""
    now = time.time() if now is None else now
    area = tracer_attachments.store_dir(store)
    blobs_dir = os.path.join(area, "blobs")
    if not dry_run:
        _put_back_interrupted(blobs_dir)
    spooled_keys, spooled_blobs = _spooled(os.path.join(area, "spool"))
    records, named = writer.collect_attachments(now - grace, spooled_keys, dry_run=dry_run,
                                                pruned=pruned)
    keep = named | spooled_blobs
    candidates = [(path, sha, size) for path, sha, size, modified in _blobs(blobs_dir)
                  if sha not in keep and modified < now - grace]
    if dry_run:
        return {"attachments": records, "blobs": len(candidates),
                "blob_bytes": sum(size for _, _, size in candidates)}
    moved = []
    for path, sha, size in candidates:
        try:
            os.replace(path, path + COLLECTING)
        except FileNotFoundError:  # (removed meanwhile)
            continue
        moved.append((path, sha, size))
    # A last look, now that no one can store content into these blobs without making a new
    # file: referred to again meanwhile (recorded, spooled, or touched by the mover), it stays.
    recorded = writer.recorded_blobs([sha for _, sha, _ in moved]) if moved else set()
    spooled = _spooled(os.path.join(area, "spool"))[1]
    removed = removed_bytes = 0
    for path, sha, size in moved:
        aside = path + COLLECTING
        try:
            young = os.stat(aside).st_mtime >= now - grace
        except FileNotFoundError:
            continue
        if sha in recorded or sha in spooled or young:
            _put_back(aside, path)
            continue
        os.unlink(aside)
        removed += 1
        removed_bytes += size
    return {"attachments": records, "blobs": removed, "blob_bytes": removed_bytes}


def _blobs(directory: str) -> list[tuple[str, str, int, float]]:
    """Every blob of a blob area: ``(path, sha256, size, modified)``."""
    found = []
    try:
        shards = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for shard in shards:
        if not shard.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(shard.path):
            if SHA256.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((entry.path, entry.name, info.st_size, info.st_mtime))
    return found


def _spooled(spool: str) -> tuple[set[str], set[str]]:
    """The keys of the attachments waiting in the spool, and the sha256 of their content."""
    keys: set[str] = set()
    blobs: set[str] = set()
    try:
        entries = list(os.scandir(spool))
    except FileNotFoundError:
        return keys, blobs
    for entry in entries:
        key = entry.name.split(".", 1)[0]
        if not KEY.fullmatch(key):
            continue
        keys.add(key)  # (data without its metadata yet too: its record is still to come)
        if not entry.name.endswith(".json"):
            continue
        try:
            with open(entry.path, "rb") as f:
                meta = json.loads(f.read(1 << 16))
        except (OSError, ValueError):
            continue
        sha = meta.get("sha256") if isinstance(meta, dict) else None
        if isinstance(sha, str) and SHA256.fullmatch(sha):
            blobs.add(sha)
    return keys, blobs


def _put_back(aside: str, path: str) -> None:
    """A blob taken out of the way back in its place (unless the same content was stored
    there anew meanwhile)."""
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    os.unlink(aside)


def _put_back_interrupted(directory: str) -> None:
    """Blobs a prune that died left out of the way, back in their place."""
    try:
        shards = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for shard in shards:
        if shard.is_dir(follow_symlinks=False):
            for entry in os.scandir(shard.path):
                if entry.name.endswith(COLLECTING):
                    _put_back(entry.path, entry.path[:-len(COLLECTING)])
