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

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

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
from .ingest import BadBatch, Ingest, IngestError, IngestFull, IngestUnavailable
from .ingest_auth import Principal, bearer

#: ``tracer serve --max-body``: bytes of a request body as sent (the default).
DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: A body may decompress to this many times ``--max-body``, no more (zip bombs).
INFLATION = 4
MAX_BATCH_ID = 200  # characters of a batch's id kept for messages


class Limits:
    """The ingest routes' bounds (``tracer serve --max-body``...)."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        if max_body < 1:
            raise ValueError(f"max_body={max_body}: at least 1 byte")
        self.max_body = max_body


def ingest_error(exc: IngestError | BodyError) -> JSON:
    """The answer for a failure of the write path or of a body."""
    if isinstance(exc, BodyError):
        response = error(exc.status, exc.message)
        if exc.limit is not None:
            response = JSON({"error": exc.message, "limit": exc.limit}, status_code=exc.status)
        return response
    if isinstance(exc, BadBatch):
        body: dict[str, Any] = {"error": exc.message}
        if exc.index is not None:
            body["row"] = exc.index
        return JSON(body, status_code=400)
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

    def work() -> int:
        data = decompress(body, encoding, INFLATION * limits.max_body)
        return ingest.submit(_entries(decode(data, kind)), projects=principal.projects)

    committed = await run_in_threadpool(work)
    return JSON({"committed": committed})
