"""The OTLP sink: the aggregator's rows exported to an OpenTelemetry collector or backend.

Two pieces, stacked as the aggregator builds the sink (``workers.sinks``)::

    EndedSpans  ->  SpoolingWriter  ->  OtlpWriter  ->  POST <endpoint>/v1/traces

- ``EndedSpans`` (a ``StoreWriter`` in front of the spool) turns the uploader's batches of
  *partial* rows into whole rows of spans that have ended. A span lasting longer than a batch
  reaches the aggregator in pieces (its input logged in one batch, its output and end in a
  later one), and OTLP has no partial spans: the pieces of a span still running are held and
  merged here (``SpanAssembler``) and the span goes out once, whole, when its end arrives. A
  change after the end (``update_span``, scores logged later, a span marked unfinished because
  its process died) exports the whole row again, with the same ids.
- ``OtlpWriter`` POSTs rows mapped by ``workers.otlp_export`` as protobuf.
"""

from __future__ import annotations

import gzip
import json
import ssl
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence

import httpx
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import tracer
from tracer import config

from . import log
from .http_sink import (
    CONNECT_TIMEOUT,
    MAX_ERROR_TEXT,
    READ_TIMEOUT,
    Rejected,
    Unavailable,
    classify,
)
from .otlp_export import exportable, to_request
from .rows import Container, Key, merge, pack_row
from .store.base import RowUpdate, StoreWriter

PROTOBUF = "application/x-protobuf"
LOG_EVERY = 10.0
# gzip, the one compression OTLP receivers must take; level 1: on logged text, a third of level
# 5's time for a body 2% larger (scripts/bench/otlp_export.py).
GZIP_LEVEL = 1

#: Spans still running whose pieces are held (beyond either bound the oldest is let go of:
#: counted, ``otlp_open_evicted``; its end then exports what arrives with it).
MAX_OPEN_ROWS = 10_000
MAX_OPEN_BYTES = 64 * 2**20
#: Spans exported lately, kept to export whole again when a change arrives after their end
#: (past the bounds, the oldest is forgotten: a change to it then has no ids to export with,
#: counted as ``otlp_update_unmatched``).
MAX_ENDED_ROWS = 10_000
MAX_ENDED_BYTES = 32 * 2**20


class Span:
    """A span ready to export: a ``RowUpdate`` whose row is whole."""

    __slots__ = ("container", "key", "row")

    def __init__(self, key: Key, row: dict, container: Container) -> None:
        self.key = key
        self.row = row
        self.container = container


class _Held:
    __slots__ = ("container", "owned", "row", "size")

    def __init__(self, container: Container, row: dict, size: int) -> None:
        self.container = container
        self.row = row
        self.size = size
        self.owned = False  # ``row`` is the batch's, until a merge needs a copy of its own

    def own(self) -> dict:
        if not self.owned:
            self.row = _copy(self.row)
            self.owned = True
        return self.row


class SpanAssembler:
    """Partial rows in, whole rows of ended spans out (``take``), within bounded memory.

    Taking the same batch again (a retried write) gives the same spans: merges are idempotent.
    Rows handed in are never changed: what is held is a copy of their dicts.
    """

    def __init__(self, counters: Counter | None = None, max_open_rows: int = MAX_OPEN_ROWS,
                 max_open_bytes: int = MAX_OPEN_BYTES, max_ended_rows: int = MAX_ENDED_ROWS,
                 max_ended_bytes: int = MAX_ENDED_BYTES) -> None:
        self.counters: Counter = Counter() if counters is None else counters
        self._open: OrderedDict[Key, _Held] = OrderedDict()
        self._ended: OrderedDict[Key, _Held] = OrderedDict()
        self._bounds = {id(self._open): (max_open_rows, max_open_bytes),
                        id(self._ended): (max_ended_rows, max_ended_bytes)}
        self._bytes = {id(self._open): 0, id(self._ended): 0}

    def take(self, batch: Sequence[RowUpdate]) -> list[Span]:
        """The spans of ``batch`` to export, in its order: each row that has ended, merged with
        its pieces held from earlier batches (and with its row as last exported, for a change
        after the end). Pieces of spans still running are held."""
        out = []
        for update in batch:
            key = update.key
            size = getattr(update, "size", 0) or len(pack_row(update.row))
            held = self._pop(self._ended, key) or self._pop(self._open, key)
            if held is None:
                # Most spans are whole in one batch: held as they are (the batch's rows are not
                # changed once taken), copied only if a later piece is merged in.
                held = _Held(update.container, update.row, size)
            else:
                merge(held.own(), _copy(update.row))
                held.size += size
            if exportable(held.row):
                out.append(Span(key, held.row, held.container))
                self._put(self._ended, key, held)
            elif isinstance(held.row.get("span_id"), str):
                # A running span's first piece shares dicts with what the aggregator keeps of
                # it (to mark it if its process dies): held as a copy.
                held.own()
                self._put(self._open, key, held)
            else:  # a change (update_span) to a span neither held nor exported lately
                self.counters["otlp_update_unmatched"] += 1
        return out

    def open_spans(self) -> int:
        """How many spans still running have pieces held."""
        return len(self._open)

    def _pop(self, table: OrderedDict[Key, _Held], key: Key) -> _Held | None:
        held = table.pop(key, None)
        if held is not None:
            self._bytes[id(table)] -= held.size
        return held

    def _put(self, table: OrderedDict[Key, _Held], key: Key, held: _Held) -> None:
        table[key] = held
        self._bytes[id(table)] += held.size
        max_rows, max_bytes = self._bounds[id(table)]
        while len(table) > max_rows or self._bytes[id(table)] > max_bytes and len(table) > 1:
            _, oldest = table.popitem(last=False)
            self._bytes[id(table)] -= oldest.size
            if table is self._open:
                self.counters["otlp_open_evicted"] += 1


def _copy(row: dict) -> dict:
    """``row`` with its dicts copied (merges change dicts only: other values are shared)."""
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in row.items()}


class EndedSpans(StoreWriter):
    """A sink that hands ``inner`` the spans of each batch that have ended, whole
    (``SpanAssembler``); everything else passes through to ``inner``."""

    def __init__(self, inner: StoreWriter, assembler: SpanAssembler | None = None) -> None:
        self.inner = inner
        self.assembler = assembler if assembler is not None else SpanAssembler()
        self.location = inner.location

    @property
    def counters(self) -> Counter:
        return self.assembler.counters

    def store_failed(self, exc: BaseException) -> bool:
        return self.inner.store_failed(exc)

    def retry_after(self, exc: BaseException) -> float | None:
        return self.inner.retry_after(exc)

    def write(self, batch: Sequence[RowUpdate]) -> None:
        spans = self.assembler.take(batch)
        if spans:
            self.inner.write(spans)

    def schema_version(self) -> int:
        return self.inner.schema_version()

    def close(self) -> None:
        running = self.assembler.open_spans()
        if running:  # OTLP has no running span: these never ended while we ran
            self.assembler.counters["otlp_unfinished_at_close"] += running
        self.inner.close()

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        self.inner.record_run(run_id, info, counters, ended)

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None:
        self.inner.record_attachment(key, sha256=sha256, size=size, filename=filename,
                                     content_type=content_type, error=error, source=source,
                                     logged=logged)

    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        return self.inner.find_experiment(project_name, experiment_name)

    def import_containers(self, containers: Sequence[dict]) -> None:
        self.inner.import_containers(containers)

    def import_run(self, run: dict) -> None:
        self.inner.import_run(run)


class OtlpWriter(StoreWriter):
    """Exports rows as OTLP/HTTP protobuf (gzip) to ``<endpoint>/v1/traces`` (see
    ``config.otlp_traces_url``), with ``headers`` (secrets: never logged, never in a message,
    which names them by name only). One thread at a time (the uploader, or the spool's drain
    thread through ``SpoolingWriter``).

    What the receiver answers is classified as ``HttpWriter``'s answers are (``classify``):
    unreachable, 408/425/429 and 5xx are ``Unavailable`` (retried; spooled), with the
    receiver's ``Retry-After``; 401/403 (the headers) and 404/405 (no receiver there) are
    ``Refused`` (neither retried nor split: the flushes raise it, naming the URL); anything
    else (400, 413) is ``Rejected`` (the batch is split down to the spans refused). Spans a
    receiver refuses in an accepted request (``partial_success``) are counted as
    ``dropped_otlp_rejected`` and its message logged; OTLP says not to send them again.
    """

    def __init__(self, endpoint: str, headers: dict[str, str] | None = None, *,
                 service_name: str | None = None, ca_bundle: str | None = None,
                 max_request_size: int = config.BY_NAME["MAX_REQUEST_SIZE"].default,
                 counters: Counter | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.location = config.otlp_traces_url(endpoint)
        self.service_name = service_name
        self.max_request_size = max_request_size
        self.counters: Counter = Counter() if counters is None else counters
        headers = dict(headers or {})
        # Named in messages by their names only: their values are credentials.
        self._credentials = (f"the headers {', '.join(sorted(headers))} (TRACER_OTLP_HEADERS)"
                             if headers else "no headers (set TRACER_OTLP_HEADERS)")
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=ca_bundle)
                                         if ca_bundle else True)
        self._client = httpx.Client(
            headers={"User-Agent": f"tracer-aggregator/{tracer.__version__}", **headers},
            verify=verify, timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            follow_redirects=False)

    # -- the StoreWriter interface ------------------------------------------------------------

    def store_failed(self, exc: BaseException) -> bool:
        return isinstance(exc, Unavailable)

    def retry_after(self, exc: BaseException) -> float | None:
        return exc.retry_after if isinstance(exc, Unavailable) else None

    def schema_version(self) -> int:
        return 0  # a receiver has no schema of ours

    def write(self, batch: Sequence[RowUpdate]) -> None:
        """POST the batch's ended spans (rows that have not ended are not spans: ``EndedSpans``
        holds them), as one request or, over ``max_request_size``, several in order."""
        rows = [(u.container, u.row) for u in batch if exportable(u.row)]
        for request, spans in self._requests(rows):
            self._export(request, spans)

    def _requests(self, rows: list[tuple[Container, dict]]
                  ) -> Iterator[tuple[ExportTraceServiceRequest, int]]:
        pieces = [rows] if rows else []
        while pieces:  # a stack: halves of a request too large, oldest first
            piece = pieces.pop()
            try:
                request = to_request(piece, self.service_name)
            except (ValueError, TypeError) as exc:
                raise Rejected(f"a row cannot be exported to {self.location}: {exc}") from None
            if len(piece) > 1 and request.ByteSize() > self.max_request_size:
                middle = len(piece) // 2
                pieces += [piece[middle:], piece[:middle]]
                continue
            yield request, len(piece)

    def _export(self, request: ExportTraceServiceRequest, spans: int) -> None:
        body = gzip.compress(request.SerializeToString(), GZIP_LEVEL)
        self.counters["otlp_requests"] += 1
        try:
            response = self._client.post(self.location, content=body, headers={
                "Content-Type": PROTOBUF, "Content-Encoding": "gzip"})
        except httpx.HTTPError as exc:  # refused, reset, timed out, TLS: may work later
            raise Unavailable(f"{self.location}: {type(exc).__name__}: "
                              f"{exc or 'no detail'}") from None
        self.counters["otlp_bytes_sent"] += len(body)
        problem = classify(
            response, self.location, None, credentials=self._credentials,
            error=_status_message(response),
            not_found="no OTLP/HTTP traces receiver there; TRACER_OTLP_ENDPOINT is the "
                      "receiver's base URL (/v1/traces is added) or its traces URL")
        if problem is not None:
            raise problem
        rejected, message = _partial_success(response)
        rejected = min(max(rejected, 0), spans)
        self.counters["otlp_spans_exported"] += spans - rejected
        if rejected:
            self.counters["dropped_otlp_rejected"] += rejected
            log.log(f"{self.location} rejected {rejected} of {spans} spans: "
                    f"{message[:MAX_ERROR_TEXT] or 'no reason given'}",
                    key="otlp-rejected", every=LOG_EVERY)

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        """Nothing: an OTLP receiver has no aggregator runs (``tracer stats`` has them)."""

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None:
        """Nothing: OTLP carries no attachments (a row's reference to one is exported as the
        row has it)."""

    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        raise NotImplementedError(_NOT_OVER_OTLP)

    def import_containers(self, containers: Sequence[dict]) -> None:
        raise NotImplementedError(_NOT_OVER_OTLP)

    def import_run(self, run: dict) -> None:
        raise NotImplementedError(_NOT_OVER_OTLP)

    def close(self) -> None:
        self._client.close()


_NOT_OVER_OTLP = "an OTLP receiver takes spans only: tracer import and migrate need a store"


def _partial_success(response: httpx.Response) -> tuple[int, str]:
    """``(rejected spans, message)`` of an accepted export's answer (protobuf or JSON, as the
    receiver chose); ``(0, "")`` for an empty or unreadable answer."""
    if not response.content:
        return 0, ""
    if "json" in response.headers.get("content-type", ""):
        try:
            found = json.loads(response.content)
            partial = found.get("partialSuccess") or found.get("partial_success") or {}
            rejected = partial.get("rejectedSpans", partial.get("rejected_spans", 0))
            message = partial.get("errorMessage", partial.get("error_message", ""))
            return int(rejected or 0), message if isinstance(message, str) else ""
        except (ValueError, TypeError, AttributeError):
            return 0, ""
    try:
        answer = ExportTraceServiceResponse.FromString(response.content)
    except (DecodeError, ValueError):
        return 0, ""
    return answer.partial_success.rejected_spans, answer.partial_success.error_message


def _status_message(response: httpx.Response) -> str | None:
    """The message of a refusal's ``google.rpc.Status`` body (protobuf: field 2), as OTLP/HTTP
    receivers answer errors; None when the body is not one (``classify`` then reads JSON or
    text)."""
    if "protobuf" not in response.headers.get("content-type", ""):
        return None
    data, at = response.content[:64 * 1024], 0
    try:
        while at < len(data):
            tag, at = _varint(data, at)
            field, kind = tag >> 3, tag & 7
            if kind == 0:
                _, at = _varint(data, at)
            elif kind == 2:
                length, at = _varint(data, at)
                if field == 2:
                    return data[at:at + length].decode("utf-8", "replace")[:MAX_ERROR_TEXT]
                at += length
            else:
                return None
    except IndexError:
        return None
    return None


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80 or shift > 63:
            return value, at
        shift += 7
