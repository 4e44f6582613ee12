"""The trace server's JSON API (docs/server.md): thin endpoints over the store reader.

Every endpoint is a GET, answers JSON and reads through ``workers.store.base.StoreReader``
(never SQL). Each checks its parameters and answers ``{"error": "<message>"}`` with 400 for a
bad one, 404 for what does not exist, 503 for a store of a schema it cannot serve (replaced
while serving) or a database it cannot reach (the message names it without its password; the
reader connects again once it is back); nothing a client sends reaches a traceback (``app``
answers any other failure with a bare 500).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from tracer import attachments as tracer_attachments

from ..attachments import REFERENCE_KEY, references, status
from ..store import SchemaVersionError, StoreError, StoreReader
from ..store.base import Cursor, SearchOff, TraceFilter, UpgradeRequired
from ..store.summary import TYPE_BITS

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_TEXT = 1000  # characters of a filter's text
FIELD_BOUND = 64 * 1024  # bytes of a row field's JSON beyond which it is cut (?full=1: not)
PREVIEW_BYTES = 4096
_SCORE = re.compile(r"(.+):(gt|lt):([^:]+)", re.DOTALL)
_ROW_FIELDS_KEPT = frozenset(("id", "span_id", "root_span_id", "span_parents", "created"))


class BadRequest(Exception):
    """A parameter the API cannot take: 400 with this message."""


class NotFound(Exception):
    """What was asked for does not exist: 404 with this message."""


class JSON(Response):
    """A JSON response. Non-finite floats (NaN logged by a user) are written as strings, which
    JSON can carry; compact, UTF-8."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False,
                              separators=(",", ":"))
        except ValueError:
            text = json.dumps(_finite(content), ensure_ascii=False, separators=(",", ":"))
        # Lone surrogates (from bytes a user logged as text) cannot be UTF-8: replaced.
        return text.encode("utf-8", "replace")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def error(status_code: int, message: str) -> JSON:
    """The API's error answer."""
    return JSON({"error": message}, status_code=status_code)


def _reader(request: Request) -> StoreReader | None:
    """The store reader of this thread (None while the store does not exist)."""
    reader: StoreReader | None = request.app.state.stores.reader()
    return reader


Endpoint = Callable[[Request, StoreReader], Any]


def endpoint(empty: dict | Callable[[Request], dict] | None = None
             ) -> Callable[[Endpoint], Callable[[Request], Response]]:
    """An API endpoint: ``fn(request, reader)`` returns what to answer as JSON (or a
    Response); ``BadRequest`` and ``NotFound`` become 400 and 404. While there is no store yet
    the answer is ``empty``, or without one a 404."""

    def wrap(fn: Endpoint) -> Callable[[Request], Response]:
        def run(request: Request) -> Response:
            try:
                reader = _reader(request)
                if reader is None:
                    if empty is not None:
                        return JSON(empty(request) if callable(empty) else empty)
                    raise NotFound(f"no store yet at {request.app.state.stores.path}")
                result = fn(request, reader)
            except (BadRequest, SearchOff) as exc:
                return error(400, str(exc))
            except NotFound as exc:
                return error(404, str(exc))
            except (UpgradeRequired, SchemaVersionError) as exc:  # the store was replaced
                return error(503, str(exc))
            except StoreError as exc:  # a database away (PostgreSQL): until it is back
                return error(503, str(exc))
            return result if isinstance(result, Response) else JSON(result)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    return wrap


# -- parameters ------------------------------------------------------------------------------


def text_param(request: Request, name: str, bound: int = MAX_TEXT) -> str | None:
    """A text parameter: None if absent; 400 if too long or not text."""
    value = request.query_params.get(name)
    if value is None:
        return None
    return checked_text(value, name, bound)


def checked_text(value: str, what: str, bound: int = MAX_TEXT) -> str:
    """``value``, if it is text SQLite and JSON can hold, of at most ``bound`` characters."""
    if len(value) > bound:
        raise BadRequest(f"{what}: at most {bound} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what}: not valid text") from None
    return value


def number_param(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"{name}: not a number: {value[:50]!r}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name}: not a finite number")
    return number


def flag_param(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value is None or value in ("", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise BadRequest(f"{name}: 1 or 0")


def limit_param(request: Request) -> int:
    value = request.query_params.get("limit")
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise BadRequest(f"limit: a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def encode_cursor(cursor: Cursor | None) -> str | None:
    """A page position as the API gives it: opaque text."""
    if cursor is None:
        return None
    raw = json.dumps([cursor[0], cursor[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None, name: str) -> Cursor | None:
    if text is None or text == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest(f"{name}: not a cursor this API gave") from None
    if (not isinstance(value, list) or len(value) != 2 or isinstance(value[0], bool)
            or not isinstance(value[0], (int, float)) or not math.isfinite(value[0])
            or not isinstance(value[1], str)):
        raise BadRequest(f"{name}: not a cursor this API gave")
    return float(value[0]), checked_text(value[1], name)


def trace_filter(request: Request) -> TraceFilter:
    """The filters of a traces request."""
    span_type = text_param(request, "type")
    if span_type is not None and span_type != "" and span_type not in TYPE_BITS:
        raise BadRequest(f"type: one of {', '.join(TYPE_BITS)}")
    scores = []
    for value in request.query_params.getlist("score"):
        found = _SCORE.fullmatch(checked_text(value, "score"))
        if found is None:
            raise BadRequest("score: <name>:<gt|lt>:<number>")
        try:
            threshold = float(found[3])
        except ValueError:
            raise BadRequest("score: <name>:<gt|lt>:<number>") from None
        if not math.isfinite(threshold):
            raise BadRequest("score: not a finite number")
        scores.append((found[1], found[2], threshold))
    metadata = []
    for value in request.query_params.getlist("meta"):
        key, sep, wanted = checked_text(value, "meta").partition("=")
        if not sep or not key:
            raise BadRequest("meta: <key>=<value>")
        metadata.append((key, wanted))
    return TraceFilter(
        since=number_param(request, "since"), until=number_param(request, "until"),
        name=text_param(request, "name") or None, span_type=span_type or None,
        errors=flag_param(request, "errors"), scores=tuple(scores), metadata=tuple(metadata),
        text=text_param(request, "q") or None)


def path_text(request: Request, name: str) -> str:
    return checked_text(str(request.path_params[name]), name)


# -- endpoints -------------------------------------------------------------------------------


@endpoint(empty={"projects": []})
def projects(request: Request, reader: StoreReader) -> dict:
    """``GET /api/projects``: every project with its counts."""
    return {"projects": reader.projects()}


def _traces(request: Request, reader: StoreReader, project: str | None,
            experiment_id: str | None) -> dict:
    after_text = text_param(request, "after")
    after = decode_cursor(after_text, "after")
    page = reader.trace_summaries(
        project=project, experiment_id=experiment_id, filters=trace_filter(request),
        limit=limit_param(request), before=decode_cursor(text_param(request, "before"), "before"),
        after=after)
    if page is None:
        raise NotFound(f"no project {project!r}" if experiment_id is None
                       else f"no experiment {experiment_id!r}")
    newest = (encode_cursor((page.traces[0]["start"], page.traces[0]["root_span_id"]))
              if page.traces else (after_text or None))
    return {"traces": page.traces, "next": encode_cursor(page.next), "newest": newest}


@endpoint()
def project_traces(request: Request, reader: StoreReader) -> dict:
    """``GET /api/projects/{project}/traces``: a page of a project's logs."""
    return _traces(request, reader, path_text(request, "project"), None)


@endpoint()
def experiment_traces(request: Request, reader: StoreReader) -> dict:
    """``GET /api/experiments/{experiment_id}/traces``: a page of an experiment's traces."""
    return _traces(request, reader, None, path_text(request, "experiment_id"))


@endpoint()
def trace(request: Request, reader: StoreReader) -> Response:
    """``GET /api/traces/{root_span_id}``: the trace's skeleton (JSON the store wrote)."""
    root = path_text(request, "root_span_id")
    found = reader.trace_skeleton_json(root)
    if found is None:
        raise NotFound(f"no trace {root!r}")
    return Response(found.encode("utf-8", "replace"), media_type="application/json")


@endpoint()
def span(request: Request, reader: StoreReader) -> dict:
    """``GET /api/traces/{root_span_id}/spans/{span_id}``: one span's row, fields over 64 KB
    cut (``?full=1``: whole), and the state of each attachment it refers to."""
    root, span_id = path_text(request, "root_span_id"), path_text(request, "span_id")
    row = reader.span_row(root, span_id)
    if row is None:
        raise NotFound(f"no span {span_id!r} in trace {root!r}")
    states = _attachment_states(reader, row)
    if not flag_param(request, "full"):
        row = {name: (value if name in _ROW_FIELDS_KEPT else _bounded(value))
               for name, value in row.items()}
    return {"row": row, "attachments": states}


def _bounded(value: Any) -> Any:
    """A row field, or what stands for it when its JSON is over ``FIELD_BOUND`` bytes."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and len(value) * 4 < FIELD_BOUND:  # short: under the bound
        return value
    encoded = json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "replace")
    if len(encoded) <= FIELD_BOUND:
        return value
    return {"truncated": True, "bytes": len(encoded),
            "preview": encoded[:PREVIEW_BYTES].decode("utf-8", "ignore")}


def _attachment_states(reader: StoreReader, row: dict) -> dict[str, dict]:
    refs = [ref for ref in references(row) if isinstance(ref.get("key"), str)]
    if not refs:
        return {}
    recorded = reader.attachments([ref["key"] for ref in refs])
    states = {}
    for ref in refs:
        state = status(reader.location, ref, recorded.get(ref["key"]))
        state.pop("path", None)  # where the blob is stays on the server
        states[ref["key"]] = state
    return states


@endpoint()
def experiments(request: Request, reader: StoreReader) -> dict:
    """``GET /api/projects/{project}/experiments``: a project's experiments and score means."""
    project = path_text(request, "project")
    found = reader.experiments(project)
    if found is None:
        raise NotFound(f"no project {project!r}")
    return {"experiments": found}


@endpoint()
def compare(request: Request, reader: StoreReader) -> dict:
    """``GET /api/compare?a=<experiment id>&b=<experiment id>``: b against a, row by row."""
    a, b = text_param(request, "a"), text_param(request, "b")
    if not a or not b:
        raise BadRequest("a and b: the ids of the two experiments to compare")
    found = reader.compare_experiments(a, b)
    if found is None:
        raise NotFound(f"no experiment {a!r} or {b!r}")
    for row in found["rows"]:
        for side in ("a", "b"):
            if row[side] is not None:
                row[side]["input"] = _bounded(row[side]["input"])
                row[side]["output"] = _bounded(row[side]["output"])
    return found


def _ingest(request: Request) -> dict:
    ingest = getattr(request.app.state, "ingest", None)
    return {} if ingest is None else dict(ingest.snapshot())


@endpoint(empty=lambda request: {"runs": [], "ingest": _ingest(request)})
def stats(request: Request, reader: StoreReader) -> dict:
    """``GET /api/stats``: the aggregator runs recorded in the store (those of aggregators
    uploading to this server too), with their counters; and ``ingest``, this server's
    ingest counters and write queue (``workers.server.ingest.Ingest.snapshot``)."""
    runs = []
    for run in reader.runs():
        run = dict(run)
        try:
            run["counters"] = json.loads(run["counters"]) if run["counters"] else {}
        except ValueError:
            run["counters"] = {}
        runs.append(run)
    return {"runs": runs, "ingest": _ingest(request)}


# Attachment content types that a browser would run or apply if a page of ours loaded them:
# sent as text, so that a logged file can never become a script or a style of the viewer.
_ACTIVE_TYPES = re.compile(r"(java|ecma)script|css|wasm", re.IGNORECASE)
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[\w.+-]+")
# What fetches an attachment may answer: never a script, a style sheet or a worker.
_REFUSED_DESTINATIONS = frozenset(("script", "style", "worker", "sharedworker", "serviceworker",
                                   "audioworklet", "paintworklet", "xslt"))


@endpoint()
def attachment(request: Request, reader: StoreReader) -> Response:
    """``GET /api/attachments/{key}``: an attachment's bytes with its recorded content type
    (``?download=1``: as a download under its recorded file name). The key must be 32 hex
    digits (or a UUID: the reference SDK's keys) and the blob is found by the sha256 the store
    recorded: no path comes from the request."""
    key = str(request.path_params["key"])
    if not REFERENCE_KEY.fullmatch(key):
        raise NotFound("not an attachment key (32 hex digits, or a UUID)")
    if request.headers.get("sec-fetch-dest", "") in _REFUSED_DESTINATIONS:
        raise BadRequest("attachments are not scripts or style sheets")
    recorded = reader.attachments([key]).get(key)
    state = status(reader.location,
                   {"type": tracer_attachments.BRAINTRUST_ATTACHMENT, "key": key}, recorded)
    path = state.get("path")
    if recorded is None or path is None:
        raise NotFound(f"attachment {key}: " + (state.get("error_message") or "not stored"))
    blobs = os.path.realpath(tracer_attachments.store_dir(reader.location))
    if not os.path.realpath(path).startswith(blobs + os.sep):
        raise NotFound(f"attachment {key}: not stored")
    content_type = recorded.get("content_type") or ""
    if not _CONTENT_TYPE.fullmatch(content_type):
        content_type = "application/octet-stream"
    elif _ACTIVE_TYPES.search(content_type):
        content_type = "text/plain"
    headers = {"Cache-Control": "private, max-age=3600"}
    if flag_param(request, "download"):
        headers["Content-Disposition"] = _disposition(recorded.get("filename"), key)
    response = FileResponse(path, media_type=content_type, headers=headers)
    # Opened on its own (a new tab), an attachment is a sandboxed document: no script runs,
    # whatever it holds (this policy adds to the one every response carries).
    response.raw_headers.append((b"content-security-policy", b"sandbox"))
    return response


def _disposition(filename: Any, key: str) -> str:
    from urllib.parse import quote

    name = os.path.basename(str(filename or "").replace("\\", "/")) or f"{key}.bin"
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", name)[:150] or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name[:150], safe='')}"
