"""Request bodies of the ingest routes: read within a bound, decompressed within a bound,
decoded (msgpack or JSON) with limits. Nothing here trusts what the client says about sizes.

- ``read_body``: the body as sent, refused (``BodyError`` 413) when ``Content-Length`` says it
  is over the limit, and again while reading when it turns out to be (chunked, or lying).
- ``decompress``: ``Content-Encoding`` ``gzip`` or ``zstd`` (or none, ``identity``), never
  producing more than its limit (413: a small body that inflates to gigabytes is refused
  once the limit is passed, not after).
- ``decode``: ``application/msgpack`` (strings as ``str``, binary as ``bytes``, extension types
  refused, maps with any hashable keys as the wire has them, arrays as tuples) or
  ``application/json``; one value, nothing after it.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import msgpack
from starlette.requests import Request

MSGPACK_TYPES = frozenset(("application/msgpack", "application/x-msgpack",
                           "application/vnd.msgpack"))
JSON_TYPES = frozenset(("application/json",))
ENCODINGS = frozenset(("identity", "gzip", "x-gzip", "zstd"))
_CHUNK = 64 * 1024


class BodyError(Exception):
    """A body the route will not take: ``status`` (400, 413, 415) and the message; ``limit``
    for a 413."""

    def __init__(self, status: int, message: str, limit: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.limit = limit


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def content_encoding(request: Request) -> str:
    """The request's ``Content-Encoding`` (``identity`` without one); 415 for one we do not
    decode (one coding only: no ``gzip, zstd`` chains)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower() or "identity"
    if encoding not in ENCODINGS:
        raise BodyError(415, f"Content-Encoding {encoding[:40]!r}: gzip, zstd or none")
    return encoding


async def read_body(request: Request, limit: int) -> bytes:
    """The body as sent, at most ``limit`` bytes (else 413)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BodyError(400, "Content-Length: not a number")
        if int(declared) > limit:
            raise BodyError(413, f"the body is {int(declared)} bytes; this server takes at most "
                                 f"{limit}", limit)
    parts = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"the body is over {limit} bytes, the most this server takes",
                            limit)
        parts.append(chunk)
    return b"".join(parts)


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """``data`` decoded from ``encoding``, at most ``limit`` bytes of it (else 413); 400 for
    data that is not in that encoding."""
    if encoding == "identity":
        return data
    if encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = decoder.decompress(data, limit + 1)
        except zlib.error as exc:
            raise BodyError(400, f"the body is not gzip: {exc}") from None
        if len(out) > limit or decoder.unconsumed_tail:
            raise BodyError(413, f"the body decompresses to over {limit} bytes", limit)
        if not decoder.eof:
            raise BodyError(400, "the body is not gzip: it ends early")
        if decoder.unused_data:
            raise BodyError(400, "the body has data after its gzip stream")
        return out
    try:
        import zstandard
    except ImportError:  # (a server extra without it: said as what it is)
        raise BodyError(415, "Content-Encoding zstd: this server cannot decode it (no "
                             "zstandard module); send gzip") from None
    try:
        with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
            out = reader.read(limit + 1)
            while len(out) <= limit:
                more = reader.read(limit + 1 - len(out))
                if not more:
                    break
                out += more
    except zstandard.ZstdError as exc:
        raise BodyError(400, f"the body is not zstd: {exc}") from None
    if len(out) > limit:
        raise BodyError(413, f"the body decompresses to over {limit} bytes", limit)
    return out


def check_media_type(kind: str) -> None:
    """415 unless ``decode`` takes ``kind`` (checked before a body is read)."""
    if kind not in MSGPACK_TYPES and kind not in JSON_TYPES:
        raise BodyError(415, f"Content-Type {kind[:60]!r}: application/msgpack or "
                             "application/json")


def _no_extensions(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not taken here")


def decode(data: bytes, kind: str) -> Any:
    """The one value ``data`` holds: ``kind`` is one of ``MSGPACK_TYPES`` or ``JSON_TYPES``
    (415 for anything else); 400 for what does not decode."""
    if kind in MSGPACK_TYPES:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=False,
                                    ext_hook=_no_extensions, max_buffer_size=max(len(data), 1))
        try:
            unpacker.feed(data)
            value = unpacker.unpack()
        except msgpack.OutOfData:
            raise BodyError(400, "the body is not msgpack: it ends early") from None
        except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
            raise BodyError(400, f"the body is not msgpack this server takes: {exc}") from None
        if unpacker.tell() != len(data):
            raise BodyError(400, "the body has data after its msgpack value")
        return value
    check_media_type(kind)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
        raise BodyError(400, f"the body is not JSON: {exc}"[:300]) from None
