"""``POST /v1/traces``: OpenTelemetry's OTLP/HTTP traces, received by ``tracer serve``
(docs/interop.md, "OTLP in"; the README's "Receiving OTLP").

The body is an ``ExportTraceServiceRequest`` in OTLP/protobuf (``application/x-protobuf``) or
OTLP/JSON (``application/json``), optionally gzip'd. It goes the way of the ingest API's batches
(``ingest_api``): the same key check (``Authorization: Bearer <key>``, or ``x-api-key: <key>``,
which some exporters are configured with; never the viewer's cookie), the same body bounds
(``--max-body``: 413), then in a worker thread the spans become rows (``workers/otlp.py``) and
are written whole through the server's one writer thread (``Ingest.submit``), answered once
committed. A full write queue is 429 and a failing store 503, each with ``Retry-After``
(OpenTelemetry's exporters retry both); nothing is written then.

Answers follow OTLP/HTTP: 200 with an ``ExportTraceServiceResponse`` in the request's encoding,
its ``partial_success`` counting the spans rejected (with why) while the rest were written; a
failure is its status with a ``google.rpc.Status`` body in the request's encoding (the JSON form
also carries ``error``, as the server's other answers do). A request whose content type is
neither is 415 with ``{"error"}``.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tracer import wire

from .. import otlp
from ..rows import BadRecord, Container, check_row
from .api import error
from .bodies import BodyError, content_encoding, decompress, media_type, read_body
from .ingest import (
    BadBatch,
    Ingest,
    IngestError,
    IngestFull,
    IngestUnavailable,
    container_of,
)
from .ingest_api import INFLATION, Limits
from .ingest_auth import KeyRing, Principal, presented_key

PATH = "/v1/traces"
#: Headers naming the project (``x-tracer-project``) or the reference's parent
#: (``x-bt-parent: project_name:<name>`` / ``project_id:`` / ``experiment_id:``) of every span
#: that does not name its own.
PROJECT_HEADER = "x-tracer-project"
PARENT_HEADER = "x-bt-parent"
API_KEY_HEADER = "x-api-key"

# gRPC status codes, as google.rpc.Status carries them.
INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED = 3, 7, 16
RESOURCE_EXHAUSTED, UNAVAILABLE, OUT_OF_RANGE = 8, 14, 11
_CODES = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED,
          413: OUT_OF_RANGE, 429: RESOURCE_EXHAUSTED, 503: UNAVAILABLE}
_MEDIA = {"application/x-protobuf": otlp.PROTOBUF, "application/protobuf": otlp.PROTOBUF,
          "application/json": otlp.JSON}


def status(http_status: int, message: str, encoding: str,
           retry_after: int | None = None) -> Response:
    """A failure as OTLP/HTTP answers one: a ``google.rpc.Status`` in the request's encoding."""
    response = Response(otlp.encode_status(_CODES.get(http_status, 2), message, encoding),
                        status_code=http_status, media_type=encoding)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    if http_status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def presented(request: Request) -> str | None:
    """The key of the request: ``Authorization: Bearer <key>``, else ``x-api-key``."""
    key = presented_key(request)
    if key is None:
        key = request.headers.get(API_KEY_HEADER, "").strip() or None
    return key


def principal_of(request: Request) -> Principal | None:
    """The principal of the request's key (None: no valid one). May read the store: call it
    from a worker thread."""
    key = presented(request)
    if key is None:
        return None
    ring: KeyRing = request.app.state.keys
    return ring.check(key)


def resolver(request: Request) -> otlp.Resolve:
    """``project_id`` and ``experiment_id`` values of ``braintrust.parent`` looked up among the
    store's containers (the reader of the calling thread)."""

    def resolve(kind: str, ident: str) -> str | None:
        reader = request.app.state.stores.reader()
        if reader is None:
            return None
        for c in reader.containers():
            if kind == "experiment_id" and c.get("kind") == "experiment" and \
                    c.get("experiment_id") == ident:
                return wire.experiment_container(c["project_name"], c["experiment_id"],
                                                 c["experiment_name"])
            if kind == "project_id" and c.get("project_id") == ident:
                return wire.logs_container(c["project_name"])
        return None

    return resolve


async def post_traces(request: Request) -> Response:
    """``POST /v1/traces``: OTLP spans written as rows (see the module)."""
    kind = media_type(request)
    encoding = _MEDIA.get(kind)
    if encoding is None:  # no encoding to answer in: the server's own error shape
        return error(415, f"Content-Type {kind[:60]!r}: OTLP/HTTP is application/x-protobuf "
                          "or application/json")
    principal = await run_in_threadpool(principal_of, request)
    if principal is None:
        return status(401, "OTLP in needs an API key: Authorization: Bearer <key> or "
                           "x-api-key: <key> (tracer serve --api-key, or tracer keys create)",
                      encoding)
    ingest: Ingest = request.app.state.ingest
    limits: Limits = request.app.state.limits
    project = request.headers.get(PROJECT_HEADER)
    parent = request.headers.get(PARENT_HEADER)
    try:
        coding = content_encoding(request)
        body = await read_body(request, limits.max_body)
    except BodyError as exc:
        return status(exc.status, exc.message, encoding)
    forbidden: list[str] = []
    containers: dict[str, Container] = {}

    def check(key: str, row: dict) -> None:
        container = container_of(key, containers)
        if principal.projects is not None and container.project_name not in principal.projects:
            forbidden.append(container.project_name)
            raise ValueError(f"this key may not write to project {container.project_name!r:.200}")
        try:
            check_row(row)
        except BadRecord as exc:
            raise ValueError(str(exc)) from None

    def work() -> otlp.Mapped:
        data = decompress(body, coding, INFLATION * limits.max_body)
        export = otlp.decode_request(data, encoding)
        mapped = otlp.request_rows(export, project=project, parent=parent,
                                   resolve=resolver(request), check=check)
        if mapped.rows:  # the containers parsed once: check() made them
            ingest.submit([(containers[key], row) for key, row in mapped.rows],
                          projects=principal.projects)
        return mapped

    try:
        mapped = await run_in_threadpool(work)
    except BodyError as exc:
        return status(exc.status, exc.message, encoding)
    except otlp.RequestError as exc:
        return status(400, str(exc), encoding)
    except (IngestFull, IngestUnavailable) as exc:
        return status(exc.status, str(exc), encoding, exc.retry_after)
    except BadBatch as exc:
        return status(400, exc.message, encoding)
    except IngestError as exc:
        return status(exc.status, str(exc), encoding)
    if mapped.spans and not mapped.rows and len(forbidden) == mapped.spans:
        return status(403, f"this key may not write to project {forbidden[0]!r:.200}",
                      encoding)
    return Response(otlp.encode_response(mapped.rejected, mapped.message, encoding),
                    media_type=encoding)
