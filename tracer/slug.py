"""Export slugs: an opaque string that lets any process continue or update a span.

A slug carries the span's container (so a process that never called ``init_logger`` knows where
its rows belong) and its ids: ``tr1.`` followed by unpadded URL-safe base64 of the msgpack array
``[container, trace, span, root, row_id]``. It contains no secret and no address.
"""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple

import msgpack

from . import wire

PREFIX = "tr1."


class SpanRef(NamedTuple):
    container: str
    trace: int
    span: int
    root: int
    row_id: str | None

    @property
    def id(self) -> str:
        return self.row_id or wire.format_id(self.trace, self.span)


def encode(container: str, trace: int, span: int, root: int, row_id: str | None) -> str:
    raw = msgpack.packb([container, trace, span, root, row_id])
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(slug: object) -> SpanRef:
    """Parse a slug made by ``Span.export()``; raises ValueError saying what is wrong."""
    if not isinstance(slug, str):
        raise TypeError(f"slug must be a string from Span.export(), got {type(slug).__name__}")
    if not slug.startswith(PREFIX):
        raise ValueError(f"malformed slug {_short(slug)}: does not start with {PREFIX!r}")
    body = slug[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        parts = msgpack.unpackb(raw)
    except (binascii.Error, ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"malformed slug {_short(slug)}: cannot decode ({exc})") from None
    if not isinstance(parts, list) or len(parts) != 5:
        raise ValueError(f"malformed slug {_short(slug)}: unexpected content")
    container, trace, span, root, row_id = parts
    ids_ok = all(type(x) is int and 0 < x < 2**64 for x in (trace, span, root))
    if not isinstance(container, str) or not ids_ok or not isinstance(row_id, (str, type(None))):
        raise ValueError(f"malformed slug {_short(slug)}: unexpected content")
    try:
        wire.split_container(container)
    except ValueError:
        raise ValueError(f"malformed slug {_short(slug)}: unknown container") from None
    return SpanRef(container, trace, span, root, row_id)


def _short(slug: str) -> str:
    return repr(slug if len(slug) <= 40 else slug[:37] + "...")
