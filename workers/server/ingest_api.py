"""The ingest API of the trace server (docs/fleet.md, "The ingest API"): ``/api/v1/...``,
what uploading aggregators send. Every route needs ``Authorization: Bearer <key>`` (a browser's
session cookie is not taken here: a web page cannot post rows with a user's cookie); the key is
checked by ``ingest_auth``. The work (decompressing, decoding, checking rows, waiting for the
commit) runs in a worker thread, never on the event loop; the write itself is
``workers.server.ingest``'s.

Answers: ``200 {"committed": n}``; ``400 {"error", "row"?}`` (a row that is not one, named by
its index: nothing applied); ``401``/``403``; ``413 {"error", "limit"}``; ``415``; ``429`` and
``503`` with ``Retry-After`` (nothing applied).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

import tracer

from ..attachments import KEY
from .api import JSON, error
from .bodies import (
    BodyError,
    check_media_type,
    content_encoding,
    decode,
    decompress,
    media_type,
    read_body,
)
from .ingest import (
    SHA256,
    BadBatch,
    BlobRefused,
    Ingest,
    IngestError,
    IngestFull,
    IngestUnavailable,
    MissingBlob,
    NotAllowed,
    Update,
)
from .ingest_auth import Principal, bearer

#: ``tracer serve --max-body``: bytes of a request body as sent (the default).
DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: ``tracer serve --max-blob``: bytes of one blob (the default).
DEFAULT_MAX_BLOB = 512 * 1024 * 1024
#: A body may decompress to this many times ``--max-body``, no more (zip bombs).
INFLATION = 4
MAX_BATCH_ID = 200  # characters of a batch's id (for logs)
MAX_ATTACHMENTS = 10_000  # attachment records in one request
MAX_TEXT = 10_000  # characters of a text field of a run or an attachment record
BLOB_WRITE = 1024 * 1024  # bytes of a blob gathered before they are written out


class Limits:
    """The ingest routes' bounds (``tracer serve --max-body``, ``--max-blob``)."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY,
                 max_blob: int = DEFAULT_MAX_BLOB) -> None:
        if max_body < 1 or max_blob < 1:
            raise ValueError(f"max_body={max_body}, max_blob={max_blob}: at least 1 byte each")
        self.max_body = max_body
        self.max_blob = max_blob


def ingest_error(exc: IngestError | BodyError) -> JSON:
    """The answer for a failure of the write path or of a body."""
    if isinstance(exc, BodyError):
        response = error(exc.status, exc.message)
        if exc.limit is not None:
            response = JSON({"error": exc.message, "limit": exc.limit}, status_code=exc.status)
        return response
    if isinstance(exc, (BadBatch, NotAllowed)):
        body: dict[str, Any] = {"error": str(exc)}
        if exc.index is not None:
            body["row"] = exc.index
        return JSON(body, status_code=exc.status)
    if isinstance(exc, MissingBlob):
        return JSON({"error": str(exc), "attachment": exc.index, "sha256": exc.sha256},
                    status_code=exc.status)
    if isinstance(exc, BlobRefused) and exc.limit is not None:
        return JSON({"error": str(exc), "limit": exc.limit}, status_code=exc.status)
    response = error(exc.status, str(exc))
    if isinstance(exc, (IngestFull, IngestUnavailable)):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


Handler = Callable[[Request, Principal], Awaitable[Response]]


def authenticated(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """An ingest route: the Bearer key checked first (401 without a valid one)."""

    async def route(request: Request) -> Response:
        principal = await run_in_threadpool(bearer, request)
        if principal is None:
            response = error(401, "the ingest API needs an API key: Authorization: Bearer "
                                  "<key> (tracer serve --api-key, or tracer keys create)")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        try:
            return await handler(request, principal)
        except (IngestError, BodyError) as exc:
            return ingest_error(exc)

    route.__name__ = handler.__name__
    route.__doc__ = handler.__doc__
    return route


def _entries(document: Any) -> list[tuple[Any, Any]]:
    """The ``(container key, row)`` pairs of a rows body (``{"rows": [{"container", "row"}],
    "batch"}``); ``BadBatch`` for a body or an entry of another shape."""
    if type(document) is not dict:
        raise BadBatch("the body must be a map: {\"rows\": [...], \"batch\": \"...\"}")
    rows = document.get("rows")
    if not isinstance(rows, (list, tuple)):
        raise BadBatch("rows: must be a list of {\"container\", \"row\"}")
    unknown = set(document) - {"rows", "batch"}
    if unknown:
        raise BadBatch(f"unknown field {sorted(map(str, unknown))[0]!r:.60} in the body: rows, "
                       "batch")
    batch = document.get("batch")
    if batch is not None and (type(batch) is not str or len(batch) > MAX_BATCH_ID):
        raise BadBatch(f"batch: a string of at most {MAX_BATCH_ID} characters (the batch's id, "
                       "for logs)")
    entries = []
    for index, entry in enumerate(rows):
        if type(entry) is not dict or set(entry) != {"container", "row"}:
            raise BadBatch(f"row {index}: each entry is a map of container and row", index)
        entries.append((entry["container"], entry["row"]))
    return entries


@authenticated
async def post_rows(request: Request, principal: Principal) -> Response:
    """``POST /api/v1/rows``: a batch of partial rows, written whole once committed."""
    ingest: Ingest = request.app.state.ingest
    limits: Limits = request.app.state.limits
    kind = media_type(request)
    check_media_type(kind)  # 415 before reading anything
    encoding = content_encoding(request)
    body = await read_body(request, limits.max_body)

    def prepare() -> tuple[list[Update], str]:  # CPU work: in a worker thread
        document = decode(decompress(body, encoding, INFLATION * limits.max_body), kind)
        batch = ingest.check(_entries(document), principal.projects)
        label = f"batch {document.get('batch')!r} of {len(batch)} rows from key " \
                f"{principal.name!r}"
        return batch, label

    batch, label = await run_in_threadpool(prepare)
    # The wait for the commit holds no thread: the viewer's endpoints keep the thread pool.
    committed = await ingest.write_async(batch, what=label)
    return JSON({"committed": committed})


async def _json_body(request: Request) -> Any:
    """A small JSON (or msgpack) body of a control route, within ``--max-body``."""
    limits: Limits = request.app.state.limits
    kind = media_type(request)
    check_media_type(kind)
    encoding = content_encoding(request)
    body = await read_body(request, limits.max_body)

    def work() -> Any:
        return decode(decompress(body, encoding, INFLATION * limits.max_body), kind)

    return await run_in_threadpool(work)


def _text(value: Any, what: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if type(value) is not str or len(value) > MAX_TEXT:
        raise BadBatch(f"{what}: must be a string of at most {MAX_TEXT} characters"
                       + (" (or null)" if optional else ""))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadBatch(f"{what}: not valid text") from None
    return value


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise BadBatch(f"{what}: must be a number (or null)")
    return float(value)


@authenticated
async def ping(request: Request, principal: Principal) -> Response:
    """``GET /api/v1/ping``: whether the key is valid, without writing anything."""
    return JSON({"ok": True, "version": tracer.__version__, "key": principal.name})


@authenticated
async def post_run(request: Request, principal: Principal) -> Response:
    """``POST /api/v1/runs``: an uploading aggregator's counters (``StoreWriter.record_run``),
    listed by ``/api/stats``, the status page and ``tracer stats --store``."""
    ingest: Ingest = request.app.state.ingest
    document = await _json_body(request)
    if type(document) is not dict:
        raise BadBatch('the body must be a map: {"run_id", "info", "counters", "ended"}')
    run_id = _text(document.get("run_id"), "run_id", optional=False)
    info = document.get("info")
    if type(info) is not dict:
        raise BadBatch("info: must be a map of pid, host, endpoint, started")
    pid = info.get("pid")
    if pid is not None and (type(pid) is not int or not 0 <= pid < 2**63):
        raise BadBatch("info.pid: must be a process id")
    checked = {"pid": pid, "host": _text(info.get("host"), "info.host"),
               "endpoint": _text(info.get("endpoint"), "info.endpoint"),
               "started": _text(info.get("started"), "info.started")}
    counters = document.get("counters", {})
    if type(counters) is not dict:
        raise BadBatch("counters: must be a map")
    ended = document.get("ended", False)
    if type(ended) is not bool:
        raise BadBatch("ended: must be true or false")
    try:
        json.dumps(counters, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise BadBatch("counters: must be JSON values") from None
    assert run_id is not None
    await ingest.record_run_async(run_id, checked, counters, ended)
    return JSON({"ok": True})


_ATTACHMENT_FIELDS = frozenset(("key", "sha256", "size", "filename", "content_type", "error",
                                "source", "logged"))


def _attachment(record: Any, index: int) -> dict:
    """One attachment record of ``POST /api/v1/attachments``, checked, as
    ``record_attachment``'s arguments."""
    where = f"attachment {index}"
    if type(record) is not dict:
        raise BadBatch(f"{where}: must be a map")
    unknown = set(record) - _ATTACHMENT_FIELDS
    if unknown:
        raise BadBatch(f"{where}: unknown field {sorted(map(str, unknown))[0]!r:.60}")
    key = record.get("key")
    if type(key) is not str or not KEY.fullmatch(key):
        raise BadBatch(f"{where}: key must be 32 hex digits")
    error_text = _text(record.get("error"), f"{where}: error")
    sha256 = record.get("sha256")
    if error_text is None and (type(sha256) is not str or not SHA256.fullmatch(sha256)):
        raise BadBatch(f"{where}: sha256 must be 64 lower-case hex digits (or an error given)")
    if error_text is not None and sha256 is not None and (
            type(sha256) is not str or not SHA256.fullmatch(sha256)):
        raise BadBatch(f"{where}: sha256 must be 64 lower-case hex digits or null")
    size = record.get("size")
    if size is not None and (type(size) is not int or not 0 <= size < 2**63):
        raise BadBatch(f"{where}: size must be a number of bytes (or null)")
    source = _text(record.get("source", "logged"), f"{where}: source", optional=False)
    return {"key": key, "sha256": sha256, "size": size,
            "filename": _text(record.get("filename"), f"{where}: filename"),
            "content_type": _text(record.get("content_type"), f"{where}: content_type"),
            "error": error_text, "source": source,
            "logged": _number(record.get("logged"), f"{where}: logged")}


@authenticated
async def post_attachments(request: Request, principal: Principal) -> Response:
    """``POST /api/v1/attachments``: attachment records (``StoreWriter.record_attachment``);
    409 when one recorded as stored names a blob the server does not have."""
    ingest: Ingest = request.app.state.ingest
    document = await _json_body(request)
    records = document.get("attachments") if type(document) is dict else None
    if not isinstance(records, (list, tuple)) or len(records) > MAX_ATTACHMENTS:
        raise BadBatch(f'the body must be {{"attachments": [...]}}, at most {MAX_ATTACHMENTS}')
    checked = [_attachment(record, index) for index, record in enumerate(records)]
    recorded = await ingest.record_attachments_async(checked)
    return JSON({"recorded": recorded})


def _digest(request: Request) -> str:
    sha256 = str(request.path_params["sha256"])
    if not SHA256.fullmatch(sha256):
        raise BadBatch("the blob's name must be its SHA-256: 64 lower-case hex digits")
    return sha256


@authenticated
async def head_blob(request: Request, principal: Principal) -> Response:
    """``HEAD /api/v1/blobs/{sha256}``: 200 if the server has those bytes, 404 if not."""
    ingest: Ingest = request.app.state.ingest
    found = await run_in_threadpool(ingest.has_blob, _digest(request))
    return Response(status_code=200 if found else 404)


@authenticated
async def put_blob(request: Request, principal: Principal) -> Response:
    """``PUT /api/v1/blobs/{sha256}``: the bytes, checked against their digest and stored
    (201; 200 if the server had them)."""
    ingest: Ingest = request.app.state.ingest
    limits: Limits = request.app.state.limits
    sha256 = _digest(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_blob:
        raise BlobRefused(413, f"the blob is {int(declared)} bytes; this server takes at most "
                               f"{limits.max_blob} (--max-blob)", limits.max_blob)
    if await run_in_threadpool(ingest.has_blob, sha256):
        ingest.count("blobs_deduplicated")
        return JSON({"sha256": sha256, "stored": False})
    writer = await run_in_threadpool(ingest.blob_writer, sha256, limits.max_blob)
    try:
        pending: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= BLOB_WRITE:
                await run_in_threadpool(writer.write, b"".join(pending))
                pending, size = [], 0
        await run_in_threadpool(writer.write, b"".join(pending))
        created = await run_in_threadpool(writer.commit)
    finally:
        writer.abort()  # (after a commit: nothing left to remove)
    ingest.count("blobs_stored" if created else "blobs_deduplicated")
    return JSON({"sha256": sha256, "stored": created}, status_code=201 if created else 200)

