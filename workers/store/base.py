"""The store interface: what every backend offers, written before any backend.

A store holds the rows the aggregator commits, the containers (project logs and experiments)
they belong to, the aggregators' runs and counters, and the record of stored attachments. It
comes in two halves, because no user needs both and a backend opens them differently:

- ``StoreWriter``: merges batches of partial rows, records containers, runs and attachments.
  Used by one thread at a time (the aggregator's uploader; its attachment mover has a writer
  of its own; ``tracer import`` and ``tracer import-payloads``). A writer opens its store on
  first use and tries again at each call until it opens, so a store that cannot be opened
  fails each write (into the uploader's retries and payload files), never the constructor.
  Opening upgrades a store of an older schema to the current one.
- ``StoreReader``: rows with the filters ``tracer export`` has, containers, the last trace,
  runs and attachment records; and what the trace server shows (``tracer serve``): projects,
  trace summaries (filtered, newest first, in pages), a trace's skeleton, a span's row,
  experiments with their score means, two experiments compared. Read-only: it takes no write
  lock, migrates nothing (it reads older schemas as they are; the trace server's queries need
  version 2, ``UpgradeRequired``) and works on a store its reader may not write; the store
  must exist.

Both are ``StoreHandle``s (where the store is, its schema version, ``close``, ``with``), and both
refuse a store whose schema is newer than this code knows (``SchemaVersionError``) rather than
misread it. ``workers.store.open_store`` picks the backend for a path or URL; the SQLite
backend is ``workers.store.sqlite``.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tracer import wire

from ..rows import Container, Key
from .pruning import PRUNE_BATCH

_Handle = TypeVar("_Handle", bound="StoreHandle")


class RowUpdate(Protocol):
    """One partial row for ``StoreWriter.write``: ``workers.queue.Pending`` is one."""

    key: Key  # (container id, row id)
    row: dict  # the partial row, in the underlying format
    container: Container  # where the row belongs
    # An update may also have ``replace`` (read with ``getattr``, default False): true when it
    # replaces the stored row whole rather than merging into it (``StoreWriter.write``).


class Write:
    """A ``RowUpdate`` made outside the aggregator's queue (which hands the writer its own
    ``workers.queue.Pending``): one partial row of a container, merged into the stored row or,
    with ``replace``, replacing it whole."""

    __slots__ = ("container", "key", "replace", "row")

    def __init__(self, container: Container, row: dict, replace: bool = False) -> None:
        self.container = container
        self.row = row
        self.key: Key = (container.id, row["id"])
        self.replace = replace

    def __repr__(self) -> str:
        return f"<Write {self.key!r} replace={self.replace}>"


class SchemaVersionError(ValueError):
    """The store was written by a newer version of this code, with a schema it does not know."""

    def __init__(self, location: str, version: int, known: int) -> None:
        super().__init__(f"store {location} has schema version {version}; this tracer knows up "
                         f"to {known}: upgrade tracer")
        self.location = location
        self.version = version
        self.known = known


class SearchOff(ValueError):
    """Text search asked of a store whose text index is off (``TRACER_SEARCH_INDEX=off``)."""

    def __init__(self, location: str) -> None:
        super().__init__(f"text search (q=) is off for store {location}: its aggregator runs "
                         "with TRACER_SEARCH_INDEX=off. Set TRACER_SEARCH_INDEX=all (every span) "
                         "or roots (root and llm spans) for the aggregator: the index is built "
                         "from the stored rows when it next opens the store")
        self.location = location


class StoreError(Exception):
    """A failure of a store's database driver, raised as this by a backend whose driver is
    imported only when a store of its kind is opened (PostgreSQL's psycopg), so that callers
    can catch it without importing the driver; the driver's error is its ``__cause__``.
    ``failed``: whether the store failed as a whole (unreachable, shut down, full, a lock or
    serialization failure) rather than what was written (``StoreWriter.store_failed``)."""

    def __init__(self, message: str, failed: bool) -> None:
        super().__init__(message)
        self.failed = failed


class Refused(Exception):
    """A remote destination refused the writer itself (HTTP 401/403: a wrong, revoked or
    limited API key; 404: no trace server at that URL): writing the batch again, or in smaller
    pieces, would be refused again. The uploader neither retries nor splits it: it counts the
    batch under ``dropped_<reason>``, sets it aside in the failed payload dir and reports the
    message (which names the URL and the key by its first characters, never whole) to the
    flushes waiting for it."""

    def __init__(self, message: str, reason: str = "unauthorized") -> None:
        super().__init__(message)
        self.reason = reason


class KeyExists(ValueError):
    """An API key of that name is in the store already (``StoreWriter.add_api_key``)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an API key named {name!r} exists already (tracer keys list): give "
                         "another --name")
        self.name = name


class UpgradeRequired(ValueError):
    """The store's schema predates what was asked of it (the trace server's queries need
    version 2): a writer upgrades it when it opens it (``tracer migrate``, or any aggregator)."""

    def __init__(self, location: str, version: int, needed: int) -> None:
        super().__init__(f"store {location} has schema version {version}; the trace server "
                         f"needs version {needed}: upgrade it with `tracer migrate --store "
                         f"{location}` (any traced program writing to it upgrades it too)")
        self.location = location
        self.version = version
        self.needed = needed


#: A position in a list of traces, newest first: ``(start, root_span_id)`` of a trace.
Cursor = tuple[float, str]


@dataclass(frozen=True)
class TraceFilter:
    """What the traces listed must have; every filter given must hold."""

    since: float | None = None  #: the trace started at or after (epoch seconds)
    until: float | None = None  #: the trace started before
    name: str | None = None  #: the root span's name is this, or starts with it
    span_type: str | None = None  #: a span of the trace has this type
    errors: bool = False  #: a span of the trace has an error
    #: ``(score, "gt" | "lt", value)``: the trace's mean of that score is above / below value
    scores: tuple[tuple[str, str, float], ...] = ()
    #: ``(key, value)``: the root's metadata has that top-level key with that value (strings as
    #: they are, other scalars as JSON: ``0.1``, ``true``)
    metadata: tuple[tuple[str, str], ...] = ()
    text: str | None = None  #: every word appears in the input or output of a span


@dataclass(frozen=True)
class TracePage:
    """One page of trace summaries, newest first, and where the next page starts (None: this
    was the last)."""

    traces: list[dict]
    next: Cursor | None


class StoreHandle(abc.ABC):
    """What writers and readers share: where the store is, its schema version, closing."""

    #: Where the store is (a file path, or a server's URL), for messages. For a SQLite store it
    #: is also where its attachments are (``tracer.attachments.store_dir``).
    location: str

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The store's schema version: a writer's is always the current one once it has
        opened; a reader reads an older one as it is."""

    @abc.abstractmethod
    def close(self) -> None:
        """Let go of the store (a writer never opened closes without opening it)."""

    def __enter__(self: _Handle) -> _Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StoreWriter(StoreHandle):
    """Writes to a store: partial rows merged in, containers, runs and attachment records."""

    #: Called (any thread) when the writer found that the store it had open was removed or
    #: replaced (``why``: "removed" or "replaced") and let go of it, with how many rows and
    #: records it had committed there: they went with the old store. The writer's next call
    #: opens a new store in its place.
    on_replaced: Callable[[str, int], None] | None = None

    def store_failed(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by a call of this writer, is a failure of the store as a whole
        (locked, full, unreachable, corrupt: the same call may succeed later) rather than of
        what was written (a row the store cannot take: writing it again fails again)."""
        return isinstance(exc, OSError)

    def retry_after(self, exc: BaseException) -> float | None:
        """For a store failure (``store_failed``): the seconds the destination asked to wait
        before trying again (HTTP ``Retry-After``), if it said; a retry waits at least that."""
        return None

    @abc.abstractmethod
    def write(self, batch: Sequence[RowUpdate]) -> None:
        """Merge a batch of partial rows into the store, atomically: all or nothing.

        Each partial row is merged into the stored row of its key the way ``workers.rows.merge``
        merges: dicts recursively, any other value replaces what was there; a row not stored
        yet is stored as it is, given a ``created`` time if it has none, and the first
        ``created`` of a row stays. A batch may hold a key more than once: its partial rows
        merge in order. The containers of the batch are recorded (``StoreReader.containers``).
        Writing the same batch again changes nothing (retries and replays rely on it).

        An update whose ``replace`` attribute is true (the reference SDK's writes without
        ``_is_merge``, taken in by ``tracer serve``'s ``/logs3``) is not merged: it takes the
        stored row's place whole, given a ``created`` time if it has none, as a new row would
        be; later updates of the batch merge into it.
        """

    @abc.abstractmethod
    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        """Store an aggregator run's counters, so that they outlive it (``tracer stats``).

        ``info`` has the run's ``pid``, ``host``, ``endpoint`` and ``started``; recording the
        same ``run_id`` again updates its counters (and ``ended``, when it has).
        """

    @abc.abstractmethod
    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None:
        """Record what became of the attachment ``key``: stored as the blob ``sha256`` (``error``
        None) or failed with ``error``. ``source`` says how it came (``"logged"``: spooled by a
        recorder; ``"base64"``: pulled out of a row by the aggregator); ``logged`` is when, in
        epoch seconds. A key already recorded as stored stays so: a second publication of it
        (a fork child logging its parent's attachment again) can only repeat it or fail where
        the first succeeded.
        """

    # -- API keys of the trace server's ingest API (``tracer keys create``) ------------------
    # Not abstract: a writer that is no store (an uploading sink) keeps no keys.

    def add_api_key(self, name: str, digest: str, projects: Sequence[str] | None) -> None:
        """Record the API key ``name`` by ``digest`` (the SHA-256 of the key, 64 hex digits:
        the key itself is never stored), allowed to write to ``projects`` (None: any).
        ``KeyExists`` if a key of that name is recorded, revoked or not."""
        raise NotImplementedError(f"{type(self).__name__} keeps no API keys")

    def revoke_api_key(self, name: str) -> bool:
        """Revoke the API key ``name``: True if it is revoked now, False if it was already;
        ``KeyError`` if there is no such key."""
        raise NotImplementedError(f"{type(self).__name__} keeps no API keys")

    @abc.abstractmethod
    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        """The id of the oldest experiment named ``experiment_name`` in the project, if any (what
        ``tracer import --experiment`` adds to)."""

    # -- retention (``tracer prune``, ``tracer serve --prune-older-than``) ---------------------
    # Stores implement these; the aggregator's other destinations (a trace server, an OTLP
    # receiver: ``workers/sinks.py``) are not stores, and retention runs where the store is.

    def _not_a_store(self, what: str) -> str:
        return (f"{type(self).__name__} writes to {self.location}, not to a store: {what} "
                "runs on the store itself (tracer prune --store ..., or tracer serve "
                "--prune-older-than on the server)")


    def prune(self, before: float, project: str | None = None, *, dry_run: bool = False,
              batch: int = PRUNE_BATCH,
              progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, int]:
        """Remove every trace that started before ``before`` (epoch seconds): its rows, its
        summary and its rows' text index entries; with ``project``, only the traces of that
        project's logs and experiments (ValueError if the store has no such project).

        A trace's start is its summary's (``trace_summaries``: the earliest start of its
        spans); a row with no trace (no ``root_span_id``) goes by its ``created`` time (one
        that cannot be read as a time is kept). Whole traces go, ``batch`` traces a
        transaction, so that a large prune never holds the store for long: writers go on
        between batches. ``progress`` is told the counts so far after each batch. With
        ``dry_run`` nothing is removed: the counts are what would be. Returns ``traces`` and
        ``rows`` (removed, or that would be). Containers stay, even when no row is left in
        them. Attachments are ``collect_attachments``'s."""
        raise NotImplementedError(self._not_a_store("retention"))

    def collect_attachments(self, stored_before: float, keep: Collection[str] = (), *,
                            dry_run: bool = False,
                            pruned: tuple[float, str | None] | None = None
                            ) -> tuple[int, set[str]]:
        """Remove the attachment records that no stored row refers to, recorded before
        ``stored_before`` (epoch seconds: a younger record may belong to a row that has not
        landed yet) and whose key is not in ``keep`` (keys still in the spool). Returns how
        many were removed (with ``dry_run``: would be) and the sha256 of every blob a record
        that stays names (``workers.retention`` removes the other blobs). Finding the rows'
        references reads every row that holds one (the rows with none are passed over in
        the database). ``pruned``: the ``(before, project)`` of a prune that did not happen
        (a dry run's): the rows it would remove count as gone."""
        raise NotImplementedError(self._not_a_store("retention"))

    def recorded_blobs(self, sha256s: Collection[str]) -> set[str]:
        """Which of these sha256s an attachment record names now (a last look before their
        blobs are removed)."""
        raise NotImplementedError(self._not_a_store("retention"))

    # -- copying a whole store (``tracer migrate --from --to``) ------------------------------

    @abc.abstractmethod
    def import_containers(self, containers: Sequence[dict]) -> None:
        """Record containers as ``StoreReader.containers`` lists them, their ``created``
        included; a container already recorded stays as it is."""

    def import_rows(self, batch: Sequence[tuple[dict, dict]]) -> None:
        """Store ``(container record, row as stored)`` pairs as they are, atomically.

        Meant for a store that has none of these rows (``tracer migrate`` refuses a destination
        with rows): a row not stored yet is stored as it is, ``created`` included, which is what
        ``write`` does, so this is ``write`` with the rows' containers resolved from their
        records (import their records first, with ``import_containers``, to keep their
        ``created``)."""
        self.write([_Imported(container, row) for container, row in batch])

    @abc.abstractmethod
    def import_run(self, run: dict) -> None:
        """Record an aggregator run as ``StoreReader.runs`` lists it, every field as it is; a
        run already recorded stays as it is."""

    def import_attachment(self, record: dict) -> None:
        """Record an attachment as ``StoreReader.attachment_records`` lists it (its ``stored``
        time becomes now: ``record_attachment`` sets it)."""
        self.record_attachment(
            record["key"], sha256=record["sha256"], size=record["size"],
            filename=record["filename"], content_type=record["content_type"],
            error=record["error"] if record["status"] == "error" else None,
            source=record["source"], logged=record["logged"])


class _Imported:
    """A stored row handed to ``StoreWriter.write`` by ``import_rows`` (a ``RowUpdate``)."""

    __slots__ = ("container", "key", "row")

    def __init__(self, record: dict, row: dict) -> None:
        if record["kind"] == "experiment":
            key = wire.experiment_container(record["project_name"], record["experiment_id"],
                                            record["experiment_name"])
        else:
            key = wire.logs_container(record["project_name"])
        self.container = Container(key)
        if self.container.id != record["id"]:  # (a container id is derived from its names)
            raise ValueError(f"container {record['id']!r}: its id does not follow from its "
                             "names; this store cannot be copied row by row")
        self.key: Key = (self.container.id, row["id"])
        self.row = row


class StoreReader(StoreHandle):
    """Reads a store: rows, containers, runs and attachment records."""

    @abc.abstractmethod
    def rows(self, project: str | None = None, experiment: str | None = None,
             root_span_id: str | None = None, span_type: str | None = None,
             errors: bool = False, since: float | None = None,
             until: float | None = None) -> Iterator[dict]:
        """Rows in the underlying format (plus ``project_name``, and ``experiment_name`` for an
        experiment's rows), in the order they started, then created, then id: the same store
        always lists them alike.

        Every filter given must hold: ``project`` is a project's name; ``experiment`` an
        experiment's name or id; ``root_span_id`` one trace; ``span_type`` a span type
        (``span_attributes.type``); ``errors`` keeps rows with an error; ``since``/``until``
        (epoch seconds) keep rows whose ``metrics.start`` is in ``[since, until)``.
        """

    @abc.abstractmethod
    def containers(self) -> list[dict]:
        """Every container, oldest first: ``id``, ``kind`` (``project_logs`` or
        ``experiment``), ``project_id``, ``project_name``, ``experiment_id``,
        ``experiment_name``, ``created``."""

    @abc.abstractmethod
    def last_root(self) -> str | None:
        """The ``root_span_id`` of the row written last (None for an empty store)."""

    @abc.abstractmethod
    def runs(self) -> list[dict]:
        """The aggregator runs recorded, the latest started first: ``run_id``, ``pid``, ``host``,
        ``endpoint``, ``started``, ``updated``, ``ended`` (None while it runs, or if it died)
        and ``counters`` (JSON text)."""

    @abc.abstractmethod
    def stored_rows(self) -> Iterator[tuple[str, dict]]:
        """Every row as it is stored, without the fields ``rows`` adds (``project_name``,
        ``experiment_name``), with its container's id: ``(container id, row)``, in the order
        they were first stored."""

    @abc.abstractmethod
    def attachment_records(self) -> list[dict]:
        """Every attachment record, by key: the fields of ``attachments`` and ``source``,
        ``logged``, ``stored``."""

    def api_keys(self) -> list[dict]:
        """The API keys recorded (``StoreWriter.add_api_key``), oldest first: ``name``,
        ``hash`` (the key's SHA-256, hex), ``projects`` (a list, or None: any), ``created``
        and ``revoked`` (ISO times; ``revoked`` None while valid). A store of a schema from
        before keys has none."""
        return []

    @abc.abstractmethod
    def attachments(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What the store recorded about these attachment keys, by key: ``key``, ``sha256``,
        ``size``, ``filename``, ``content_type``, ``status`` (``done`` or ``error``),
        ``error``. Keys it has no record of are left out."""

    # -- what the trace server shows (schema version 2; older: ``UpgradeRequired``) ----------

    @abc.abstractmethod
    def projects(self) -> list[dict]:
        """Every project, by name: ``name``, ``id``, ``traces`` (in its logs),
        ``experiments`` (how many) and ``last_start`` (the latest start of any trace of its
        logs or experiments; None without one)."""

    @abc.abstractmethod
    def trace_summaries(self, *, project: str | None = None, experiment_id: str | None = None,
                        filters: TraceFilter | None = None, limit: int = 50,
                        before: Cursor | None = None,
                        after: Cursor | None = None) -> TracePage | None:
        """The traces of a project's logs (``project``) or of an experiment, newest first (by
        ``(start, root_span_id)``), that ``filters`` keep: at most ``limit``, those before the
        cursor ``before`` and after ``after`` (each exclusive). A trace's ``start`` is the
        earliest start of its spans (its root's, once stored), so a page boundary never moves
        as new traces arrive. Each: ``root_span_id``, ``row_id`` (the root row's id; None until
        it is stored), ``name``, ``type``, ``start``, ``end``, ``duration`` (None while the
        root runs), ``spans``, ``errors``, ``running``, ``scores`` (the mean of each score
        over the trace's spans), ``tokens`` (their sum; None without any). None if there is
        no such project or experiment. A text filter searches what the store's text index
        covers (``TRACER_SEARCH_INDEX``): ``SearchOff`` if it covers nothing."""

    @abc.abstractmethod
    def trace_skeleton(self, root_span_id: str) -> dict | None:
        """A trace's spans without their content, in the order they started: ``root_span_id``,
        ``container`` (``kind``, ``project``, ``experiment_id``, ``experiment_name``) and
        ``spans``: each ``row_id``, ``span_id``, ``parents``, ``name``, ``type``, ``start``,
        ``end``, ``error`` (bool), ``running`` (no end yet). None if no row has this
        ``root_span_id``."""

    def trace_skeleton_json(self, root_span_id: str) -> str | None:
        """``trace_skeleton`` as JSON text (what the server sends as it is; a backend may
        write it faster than Python encodes the dicts)."""
        found = self.trace_skeleton(root_span_id)
        return None if found is None else json.dumps(found, ensure_ascii=False)

    @abc.abstractmethod
    def span_row(self, root_span_id: str, span_id: str) -> dict | None:
        """The whole row of one span of a trace, as ``rows`` gives it; None if none."""

    @abc.abstractmethod
    def experiments(self, project: str) -> list[dict] | None:
        """A project's experiments, the newest first: ``id``, ``name``, ``created``,
        ``traces``, ``spans`` and ``scores`` (each score's mean over the experiment's spans,
        as ``Experiment.summarize`` has it). None if there is no such project."""

    @abc.abstractmethod
    def compare_experiments(self, a: str, b: str) -> dict | None:
        """Experiment ``b`` against ``a`` (ids): their root rows paired by input (equal as
        JSON), the rest by root span name, each in the order they started. ``a`` and ``b``
        (``id``, ``name``, ``project``), ``scores`` (``{name: {"a", "b", "delta"}}``, means,
        delta = b - a) and ``rows``: ``match`` (``"input"``, ``"name"``, or None when only one
        side has it), ``a`` and ``b`` (``root_span_id``, ``name``, ``input``, ``output``,
        ``scores``; None on the side that lacks it), ``deltas`` (per score both have) and
        ``status``: ``regression`` (a score fell), ``improvement`` (none fell, one rose),
        ``same``, ``only_a`` or ``only_b``. None if either experiment is unknown."""
