"""What the backends' retention (``StoreWriter.prune``, ``collect_attachments``) shares: its
batch sizes, the SQL both backends run for a project's containers, and how a row's references
to attachments and its ``created`` time are read. The orchestration (attachments' grace
period, blobs) is ``workers.retention``'s."""

from __future__ import annotations

import datetime
from collections.abc import Collection, Iterator
from typing import Any

from tracer import attachments as tracer_attachments

#: Traces removed per transaction by ``StoreWriter.prune``: a transaction of a few hundred
#: traces takes a fraction of a second, shorter than a SQLite writer waits for the lock.
PRUNE_BATCH = 200

#: Rows removed per transaction by ``StoreWriter.prune``, about: a batch ends before the trace
#: that would take it past this (a trace is never split; a larger one goes alone).
PRUNE_ROWS = 2000

#: What a stored row holds where it refers to a stored attachment (the reference's ``type``):
#: a row whose data lacks these bytes refers to none (the backends' scans skip it unread).
ATTACHMENT_MARK = tracer_attachments.BRAINTRUST_ATTACHMENT.encode()


#: Seconds a prune rests between two batches, so that writers waiting for the store get in
#: (SQLite's busy handler polls: a prune that took the lock again at once could starve them).
PRUNE_PAUSE = 0.02

#: A project's containers, in the SQL of both backends (``?``: the project's name).
PROJECT_CONTAINERS = "SELECT id FROM containers WHERE project_name = ?"


def up_to_rows(traces: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
    """The first of these traces (``(root_span_id, start, spans)``) that hold about
    ``PRUNE_ROWS`` rows between them (the first one whatever its size)."""
    total = 0
    for n, (_, _, spans) in enumerate(traces):
        total += spans
        if total > PRUNE_ROWS and n > 0:
            return traces[:n]
    return traces


def created_epoch(created: object) -> float | None:
    """A row's ``created`` (ISO 8601 text, UTC unless it says otherwise) in epoch seconds;
    None if it is not one."""
    if not isinstance(created, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


class Gone:
    """The rows with no trace that a prune would remove (``collect_attachments``'s
    ``pruned``): ``(before, project)``, and the ids of the project's containers."""

    def __init__(self, pruned: tuple[float, str | None] | None,
                 containers: Collection[str] | None) -> None:
        self.before = None if pruned is None else pruned[0]
        self.containers = containers

    def loose(self, root: object, created: object, container: str) -> bool:
        """Whether the row (``root_span_id``, ``created``, container id) would go."""
        if self.before is None or root is not None:
            return False
        if self.containers is not None and container not in self.containers:
            return False
        when = created_epoch(created)
        return when is not None and when < self.before


def attachment_keys(value: Any) -> Iterator[str]:
    """The key of every stored attachment a row (or any value in it) refers to."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == tracer_attachments.BRAINTRUST_ATTACHMENT:
                key = item.get("key")
                if isinstance(key, str):
                    yield key
                continue
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):  # (a stored row's arrays unpack as tuples)
            stack.extend(item)
