"""The HTTP sink: an aggregator uploading to a trace server (``tracer serve``'s ingest API).

``HttpWriter`` is a ``StoreWriter`` whose store is a server (docs/fleet.md, "Design and
contract"): ``write`` POSTs a batch to ``/api/v1/rows`` as msgpack (zstd when ``zstandard`` is
importable, else gzip), ``record_run`` to ``/api/v1/runs``, ``record_attachment`` to
``/api/v1/attachments``; ``has_blob``/``put_blob`` ask for and send attachment bytes
(``/api/v1/blobs/{sha256}``). Every request carries ``Authorization: Bearer <key>``.

Its exceptions tell the caller what to do (``classify``, shared with other remote sinks):

- ``Unavailable`` (``store_failed``: True): the server could not take it now (connection
  refused or reset, a timeout, 408/425/429, any 5xx); ``retry_after`` carries the server's
  ``Retry-After`` seconds, which a retry waits at least.
- ``Refused`` (``workers.store.base``): the server refused the writer itself (401/403: the key;
  404/405: no ingest API at that URL). Neither retried nor split. Its message names the URL and
  the key by its first characters (``config.key_label``), never the whole key.
- ``Rejected``: the server refused what was sent (400 naming a row, 413, ...): a failure of the
  content, which the uploader splits down to the rows that fail.

A batch whose encoded rows exceed ``max_request_size`` (``MAX_REQUEST_SIZE``) is sent as several
requests, in order, each under it (a single row always goes alone: the uploader has truncated
any row over the limit). Merges are idempotent, so a batch retried after some of its requests
were committed changes nothing twice.

HTTPS is verified (certifi's CAs, or ``TRACER_CA_BUNDLE``); there is no switch to turn that
off. httpx is imported only by an aggregator that uploads: ``import tracer`` never loads it.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import os
import ssl
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import msgpack

import tracer
from tracer import config

from .store.base import Refused, RowUpdate, StoreWriter

zstandard: Any
try:  # zstd is faster and smaller than gzip; gzip is always there
    import zstandard
except ImportError:  # pragma: no cover - the upload extra installs it
    zstandard = None

CONNECT_TIMEOUT = 5.0  # seconds
READ_TIMEOUT = 30.0
MAX_RETRY_AFTER = 300.0  # a server asking for longer is waited for this long at most
ENVELOPE = 128  # bytes of a rows body besides its rows (map, keys, batch id)
MAX_ERROR_TEXT = 300  # characters of a server's error message quoted in ours
GZIP_LEVEL = 5
ZSTD_LEVEL = 3


class Unavailable(Exception):
    """The server could not take the request now; the same request may succeed later."""

    def __init__(self, message: str, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class Rejected(Exception):
    """The server refused what was sent (``row``: the index it named, in the request)."""

    def __init__(self, message: str, status: int | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.row = row


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header's seconds (a number, or an HTTP date), within
    [0, ``MAX_RETRY_AFTER``]; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _server_error(response: httpx.Response) -> tuple[str, dict]:
    """The server's ``{"error": ...}`` text (bounded) and the whole JSON body, if it has one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"][:MAX_ERROR_TEXT], body
    text = response.text[:MAX_ERROR_TEXT].strip() if response.content else ""
    return text or response.reason_phrase, body if isinstance(body, dict) else {}


def classify(response: httpx.Response, url: str, api_key: str | None, *,
             credentials: str | None = None, not_found: str | None = None,
             error: str | None = None) -> Exception | None:
    """What a response means to a remote sink: None for success (2xx), else the exception to
    raise (``Unavailable``, ``Refused`` or ``Rejected``; see the module). ``url`` is the
    request's, for messages; ``api_key`` is named by its first characters only.

    Another kind of remote sink (the OTLP exporter) says what it presented instead of an API
    key (``credentials``, e.g. the names of its headers), what a 404/405 means for it
    (``not_found``), and the server's message when it reads it itself (``error``)."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    found, body = _server_error(response)
    said = f"{url} answered {status} ({found if error is None else error})"
    if status in (401, 403):
        if credentials is None:
            credentials = (f"the API key {config.key_label(api_key)}" if api_key
                           else "no API key (set TRACER_API_KEY or init_logger(api_key=...))")
        what = "refused" if status == 401 else "does not allow"
        return Refused(f"{said}: the server {what} {credentials}", "unauthorized")
    if status in (404, 405):
        return Refused(f"{said}: " + (not_found or "no ingest API there; is TRACER_API_URL the "
                                                   "base URL of a `tracer serve` of this "
                                                   "version?"), "refused")
    if status in (408, 425, 429) or status >= 500:
        return Unavailable(said, parse_retry_after(response.headers.get("retry-after")), status)
    row = body.get("row")
    return Rejected(said, status, row if isinstance(row, int) else None)


class HttpWriter(StoreWriter):
    """Uploads to the trace server at ``url`` (its base URL) with ``api_key``. One thread at a
    time (the uploader, or the spool's drain thread through ``SpoolingWriter``); the attachment
    mover has one of its own."""

    def __init__(self, url: str, api_key: str | None = None, *, ca_bundle: str | None = None,
                 max_request_size: int = config.BY_NAME["MAX_REQUEST_SIZE"].default,
                 compression: str | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.location = url.rstrip("/")
        self.api_key = api_key
        self.max_request_size = max_request_size
        if compression is None:
            compression = "zstd" if zstandard is not None else "gzip"
        if compression not in ("zstd", "gzip", "identity"):
            raise ValueError(f"compression {compression!r}: expected zstd, gzip or identity")
        self.compression = compression
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL) if compression == "zstd" \
            else None
        headers = {"User-Agent": f"tracer-aggregator/{tracer.__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=ca_bundle)
                                         if ca_bundle else True)
        self._client = httpx.Client(
            base_url=self.location + "/api/v1", headers=headers, verify=verify,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            follow_redirects=False)
        #: requests and bytes sent (as sent: compressed), for the counters
        self.requests = 0
        self.bytes_sent = 0

    # -- the StoreWriter interface ------------------------------------------------------------

    def store_failed(self, exc: BaseException) -> bool:
        return isinstance(exc, Unavailable)

    def retry_after(self, exc: BaseException) -> float | None:
        return exc.retry_after if isinstance(exc, Unavailable) else None

    def schema_version(self) -> int:
        """0: the server's store has its own schema, which it keeps up to date."""
        return 0

    def write(self, batch: Sequence[RowUpdate]) -> None:
        """POST the batch to ``/api/v1/rows``: one request, or several in order when its
        encoded rows exceed ``max_request_size``. Raises ``Unavailable``, ``Refused`` or
        ``Rejected``."""
        batch_id = uuid.uuid4().hex
        for body in self.bodies(batch, batch_id):
            self._send("POST", "/rows", body, "application/msgpack", compress=True)

    def bodies(self, batch: Sequence[RowUpdate], batch_id: str) -> Iterator[bytes]:
        """The msgpack bodies of ``/api/v1/rows`` requests carrying ``batch``, in order: each
        row encoded once, and a new body begun before one would exceed ``max_request_size``."""
        packer = msgpack.Packer()
        items: list[bytes] = []
        size = ENVELOPE
        for update in batch:
            try:
                item = packer.pack({"container": update.container.key, "row": update.row})
            except (TypeError, ValueError, OverflowError) as exc:
                raise Rejected(f"row {update.row.get('id')!r:.80} cannot be encoded: "
                               f"{exc}") from None
            if items and size + len(item) > self.max_request_size:
                yield self._body(packer, items, batch_id)
                items, size = [], ENVELOPE
            items.append(item)
            size += len(item)
        if items:
            yield self._body(packer, items, batch_id)

    @staticmethod
    def _body(packer: msgpack.Packer, items: list[bytes], batch_id: str) -> bytes:
        return b"".join((packer.pack_map_header(2), packer.pack("rows"),
                         packer.pack_array_header(len(items)), *items, packer.pack("batch"),
                         packer.pack(batch_id)))

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        body = {"run_id": run_id, "info": info, "counters": counters, "ended": ended}
        self._send("POST", "/runs", json.dumps(body).encode(), "application/json")

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None:
        record = {"key": key, "sha256": sha256, "size": size, "filename": filename,
                  "content_type": content_type, "error": error, "source": source,
                  "logged": logged}
        self._send("POST", "/attachments", json.dumps({"attachments": [record]}).encode(),
                   "application/json")

    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        raise NotImplementedError(_NOT_OVER_HTTP)

    def import_containers(self, containers: Sequence[dict]) -> None:
        raise NotImplementedError(_NOT_OVER_HTTP)

    def import_run(self, run: dict) -> None:
        raise NotImplementedError(_NOT_OVER_HTTP)

    def close(self) -> None:
        self._client.close()

    # -- attachments and checks ---------------------------------------------------------------

    def has_blob(self, sha256: str) -> bool:
        """Whether the server has the bytes whose SHA-256 is ``sha256`` (``HEAD``)."""
        response = self._request("HEAD", f"/blobs/{sha256}")
        if response.status_code == 404:
            return False
        self._raise_for(response, f"/blobs/{sha256}")
        return True

    def put_blob(self, sha256: str, path: str) -> None:
        """Send the file at ``path`` as the blob ``sha256`` (``PUT``, streamed)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            response = self._request("PUT", f"/blobs/{sha256}", content=f, headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(size)})
        self.bytes_sent += size
        self._raise_for(response, f"/blobs/{sha256}")

    def ping(self) -> dict[str, Any]:
        """``GET /api/v1/ping``: the server's version and the key's name (checks the key)."""
        response = self._request("GET", "/ping")
        self._raise_for(response, "/ping")
        found = response.json()
        return found if isinstance(found, dict) else {}

    # -- requests -------------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: bytes, content_type: str,
              compress: bool = False) -> httpx.Response:
        headers = {"Content-Type": content_type}
        if compress and self.compression != "identity":
            body = self._zstd.compress(body) if self._zstd is not None else \
                gzip.compress(body, GZIP_LEVEL)
            headers["Content-Encoding"] = self.compression
        response = self._request(method, path, content=body, headers=headers)
        self.bytes_sent += len(body)
        self._raise_for(response, path)
        return response

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.requests += 1
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:  # refused, reset, timed out, TLS: may work later
            raise Unavailable(f"{self.location}/api/v1{path}: {type(exc).__name__}: "
                              f"{exc or 'no detail'}") from None

    def _raise_for(self, response: httpx.Response, path: str) -> None:
        problem = classify(response, f"{self.location}/api/v1{path}", self.api_key)
        if problem is not None:
            raise problem


_NOT_OVER_HTTP = ("a trace server is written through its ingest API, row batches only: "
                  "tracer import and tracer migrate need a store (a path or a database URL)")
