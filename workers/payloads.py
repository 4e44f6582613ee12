"""Payload files: rows set aside as readable files, and replayed into a store later.

``FAILED_PUBLISH_PAYLOADS_DIR`` receives every batch the sink gave up on after all its retries,
every row a queue policy dropped, and the full copy of every row too large for one upload.
``ALL_PUBLISH_PAYLOADS_DIR`` receives every batch before it is written. ``tracer
import-payloads DIR`` replays them, so a failed upload is never a dead end.

A payload file is JSON lines (``*.jsonl``): a header line, then one line per row::

    {"tracer_payload": 1, "reason": "sink_failed", "error": "...", "rows": 2, "written": "..."}
    {"container": "L\\u001fmy-project", "row": {"id": "...", "span_id": "...", ...}}

``container`` is the wire's container key (project logs or an experiment). Rows are partial rows:
replaying merges them into the store exactly as the aggregator would, so replaying a file twice,
or a file whose rows were in the end also written, changes nothing.

A recorder dropping records under a drop policy writes them as they were on the wire
(``*.records.msgpack``: concatenated msgpack records); the replay decodes those too.

Records the aggregator rejected (``rows.BadRecord``, undecodable) are kept as they came, up to
``MAX_REJECTED_BYTES`` a run, in ``*-rejected.msgpack`` files: for a look, never replayed (they
cannot become rows).
"""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from tracer import config, wire

from . import log
from .queue import Pending
from .rows import Container, record_to_row, to_json
from .store import StoreWriter

VERSION = 1


def write(directory: str, rows: Iterable[tuple[Container, dict]], reason: str,
          error: str | None = None) -> str:
    """Write ``(container, row)`` pairs as one payload file; returns its path."""
    lines = [f'{{"container":{json.dumps(c.key)},"row":{to_json(row)}}}\n' for c, row in rows]
    header = {"tracer_payload": VERSION, "reason": reason, "rows": len(lines),
              "written": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    if error is not None:
        header["error"] = error
    text = json.dumps(header) + "\n" + "".join(lines)
    return config.write_payload_file(directory, reason, ".jsonl", text.encode("utf-8"))


def save(directory: str, rows: list[tuple[Container, dict]], reason: str, counters: Counter,
         error: str | None = None) -> str | None:
    """``write``, counting the rows saved (``payload_rows_<reason>``) or the failure
    (``payload_write_errors``, reported on stderr); never raises. Returns the path, if written."""
    try:
        path = write(directory, rows, reason, error)
    except Exception as exc:  # a full disk, or rows that cannot be written out: counted
        counters["payload_write_errors"] += 1
        log.log(f"could not write {len(rows)} rows ({reason}) to {directory}: {exc}",
                key="payload-write", every=10.0)
        return None
    counters[f"payload_rows_{reason}"] += len(rows)
    return path


class DroppedRows:
    """Rows a queue policy dropped, saved as payload files of ``batch_size`` rows (and whatever
    is left at each ``save``), so that ``tracer import-payloads`` can bring them back. Without a
    directory they are only counted, as the dropping already was."""

    def __init__(self, directory: str | None, reason: str | None, batch_size: int,
                 counters: Counter) -> None:
        self.directory = directory
        self.reason = reason  # the drop counter's name, dropped_<reason>; None: nothing drops
        self.batch_size = max(1, batch_size)
        self.counters = counters
        self._rows: list[tuple[Container, dict]] = []  # dropped, not yet in a payload file

    def extend(self, rows: Iterable[tuple[Container, dict]]) -> None:
        """Set aside ``(container, row)`` pairs just dropped."""
        if self.directory is None:
            return
        self._rows.extend(rows)
        while len(self._rows) >= self.batch_size:
            batch, self._rows = self._rows[:self.batch_size], self._rows[self.batch_size:]
            self._write(batch)

    def save(self) -> None:
        """Write what is set aside now (the aggregator does at each supervision turn and at
        exit)."""
        if self._rows:
            batch, self._rows = self._rows, []
            self._write(batch)

    def _write(self, batch: list[tuple[Container, dict]]) -> None:
        if self.directory is not None and self.reason is not None:
            save(self.directory, batch, self.reason, self.counters)


MAX_REJECTED_BYTES = 16 * 1024 * 1024  # kept per aggregator run; beyond, only counted


class RejectedRecords:
    """Records the aggregator rejected, kept as they came (see the module) when there is a
    directory, up to ``max_bytes`` a run; beyond that counted (``rejected_not_kept``)."""

    def __init__(self, directory: str | None, counters: Counter,
                 max_bytes: int = MAX_REJECTED_BYTES) -> None:
        self.directory = directory
        self.counters = counters
        self.room = max_bytes
        self._records: list[bytes] = []

    def add(self, data: bytes) -> None:
        """Keep one rejected record (its bytes as received), if there is room."""
        if self.directory is None:
            return
        if len(data) > self.room:
            self.counters["rejected_not_kept"] += 1
            return
        self.room -= len(data)
        self._records.append(data)

    def save(self) -> None:
        """Write what is kept now into one file (at each supervision turn and at exit)."""
        if not self._records or self.directory is None:
            return
        records, self._records = self._records, []
        try:
            config.write_payload_file(self.directory, "rejected", ".msgpack", b"".join(records))
        except Exception as exc:  # a full disk: counted, and the receiving loop goes on
            self.counters["payload_write_errors"] += 1
            log.log(f"could not write {len(records)} rejected records to {self.directory}: "
                    f"{exc}", key="payload-write", every=10.0)
            return
        self.counters["payload_records_rejected"] += len(records)


def files(path: str) -> list[str]:
    """The payload files at ``path`` (a file, or a directory searched recursively), in order."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no payload file or directory at {path}")
    found = []
    for directory, _dirs, names in os.walk(path):
        found += [os.path.join(directory, n) for n in names
                  if n.endswith((".jsonl", ".records.msgpack"))]
    return sorted(found, key=os.path.basename)  # names start with the time written


def read(path: str) -> Iterator[Pending]:
    """The rows of one payload file, ready for a store writer's ``write``. Raises ValueError,
    naming the file and line, for anything that is not a payload."""
    containers: dict[str, Container] = {}

    def container_of(key: str) -> Container:
        if key not in containers:
            containers[key] = Container(key)
        return containers[key]

    if path.endswith(".records.msgpack"):
        yield from _read_records(path, container_of)
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                entry = json.loads(line)
                if number == 1:
                    if entry.get("tracer_payload") != VERSION:
                        raise ValueError("not a tracer payload file (no tracer_payload header)")
                    continue
                container, row = container_of(entry["container"]), entry["row"]
                yield Pending((container.id, row["id"]), row, len(line), 0, container)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None


def _read_records(path: str, container_of: Callable[[str], Container]) -> Iterator[Pending]:
    with open(path, "rb") as f:
        unpacker = wire.record_unpacker(f)
        for number, record in enumerate(unpacker, 1):
            try:
                container, row_id, row = record_to_row(record, container_of)
            except (ValueError, TypeError, IndexError) as exc:
                raise ValueError(f"{path}: record {number}: {exc!r}") from None
            yield Pending((container.id, row_id), row, 0, 0, container)


def replay(path: str, sink: StoreWriter, batch_size: int = 1000) -> tuple[int, int]:
    """Merge every row of the payload files at ``path`` into ``sink``; returns (files, rows).

    A file is read whole before any of it is written, so a malformed file writes nothing.
    """
    done_files = done_rows = 0
    for name in files(path):
        rows = list(read(name))
        for start in range(0, len(rows), batch_size):
            sink.write(rows[start:start + batch_size])
        done_files += 1
        done_rows += len(rows)
    return done_files, done_rows
