"""Images and large base64 content in rows, handled by the aggregator as rows come in.

The reference's viewer renders a string as an image when it is an image URL or a base64 data URL
(``data:image/png;base64,...``), and any ``{"image_url": {"url": ...}}`` as one. We keep such
values exactly as logged and flag them in a row field of our own, ``_images``: a dict from the
value's JSON pointer (RFC 6901, e.g. ``/input/0/content/1/image_url/url``) to how it was
recognised: ``"url"`` (an http(s) URL whose path ends in an image extension), ``"data_url"``,
``"image_url"`` (nested under ``image_url``, whatever the URL looks like) or ``"attachment"`` (an
image that was extracted, below). Being a dict, it merges across ``log()`` calls like any row
field; it is a hint, so a viewer should check the value is still there.

Very large base64 strings become attachments: a string longer than ``TRACER_MAX_INLINE_BASE64``
characters (the aggregator's settings; default 65,536, 0 turns this off) that is a base64 data
URL, or bare base64 whose decoded content starts like a known binary format (PNG, JPEG, GIF,
WebP, PDF, WAV, MP3, Ogg, FLAC, MP4), is decoded here, handed to the attachment mover (content
addressed, like any attachment) and replaced in the row by its reference. Bare base64 of
unknown content stays as it is: a long run of letters and digits is not necessarily base64.

Cost: the aggregator is the pipeline's bottleneck, so rows are only walked when they may hold
something. A DATA body is searched once for ``image`` and ``://`` (two C searches, about 0.3 us
per span); in a body that has one, a record is walked only if it contains ``image`` (every data
URL and ``image_url``), or ``://`` and an image extension; a walk costs some microseconds. Only
records larger than the inline limit are searched for long strings.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from tracer import attachments

FIELDS = ("input", "output", "expected", "metadata")
HINTS = (b"image", b"://")  # in every data:image/ URL, image_url key and http(s) URL
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".svg", ".avif", ".heic")

# Leading bytes of formats worth storing as attachments when they arrive as bare base64.
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"WAVE", 8, "audio/wav"),
    (b"%PDF-", 0, "application/pdf"),
    (b"ID3", 0, "audio/mpeg"),
    (b"OggS", 0, "audio/ogg"),
    (b"fLaC", 0, "audio/flac"),
    (b"ftyp", 4, "video/mp4"),
)
_EXTENSIONS = {mime: ext for ext, mime in reversed(attachments._TYPES.items())}

Adopt = Callable[[bytes, str, str], str]  # (content, filename, content_type) -> key


def may_hold_images(body: bytes) -> bool:
    """Whether a DATA body may hold an image worth flagging (cheap: two C searches)."""
    return any(hint in body for hint in HINTS)


def hinted(body: bytes, start: int, end: int) -> bool:
    """Whether the record at ``body[start:end]`` may hold an image worth flagging."""
    if body.find(b"image", start, end) != -1:
        return True
    if body.find(b"://", start, end) == -1:
        return False
    record = body[start:end].lower()
    return any(ext.encode() in record for ext in IMAGE_EXTENSIONS)


class _Walk:
    __slots__ = ("mark_images", "limit", "adopt", "flags", "adopted")

    def __init__(self, mark_images: bool, limit: int, adopt: Adopt | None) -> None:
        self.mark_images = mark_images
        self.limit = limit  # 0: extract nothing
        self.adopt = adopt
        self.flags: dict[str, str] = {}
        self.adopted = 0


def mark_and_extract(partial: dict, *, mark_images: bool, extract_over: int,
                     adopt: Adopt | None) -> int:
    """In place: mark the images in ``partial`` (when ``mark_images``) and move base64 strings
    longer than ``extract_over`` characters into attachments through ``adopt`` (when both are
    given); returns how many were moved."""
    walk = _Walk(mark_images, extract_over if adopt is not None else 0, adopt)
    for field in FIELDS:
        if field in partial:
            partial[field] = _value(partial[field], (None, field), walk)
    if walk.flags:
        images = partial.get("_images")
        if isinstance(images, dict):
            images.update(walk.flags)
        else:
            partial["_images"] = walk.flags
    return walk.adopted


def _value(value: Any, path: tuple, walk: _Walk) -> Any:
    """``value`` with its long base64 strings extracted; ``path`` is (parent path, key)."""
    if isinstance(value, str):
        return _string(value, path, walk)
    if isinstance(value, dict):
        if value.get("type") in attachments.REFERENCE_TYPES:
            return value  # an attachment's reference: the viewer knows what it is
        for key, item in list(value.items()):
            if isinstance(item, (int, float, bool)) or item is None:
                continue
            new = _value(item, (path, key), walk)
            if new is not item:
                value[key] = new
        nested = value.get("image_url")
        if walk.mark_images and isinstance(nested, dict) and isinstance(nested.get("url"), str):
            walk.flags.setdefault(_pointer(((path, "image_url"), "url")), "image_url")
        return value
    if isinstance(value, (list, tuple)):
        changed = None
        for i, item in enumerate(value):
            new = _value(item, (path, i), walk)
            if new is not item:
                if changed is None:
                    changed = list(value)
                changed[i] = new
        return value if changed is None else changed
    return value


def _string(text: str, path: tuple, walk: _Walk) -> Any:
    if walk.limit and len(text) > walk.limit:
        found = _decode(text)
        if found is not None and walk.adopt is not None:  # a limit is set only with adopt
            content, content_type = found
            kind = content_type.split("/", 1)[0]
            filename = (kind if kind in ("image", "audio", "video") else "file") + \
                _EXTENSIONS.get(content_type, ".bin")
            key = walk.adopt(content, filename, content_type)
            walk.adopted += 1
            if walk.mark_images and kind == "image":
                walk.flags[_pointer(path)] = "attachment"
            return {"type": attachments.BRAINTRUST_ATTACHMENT, "filename": filename,
                    "content_type": content_type, "key": key}
    if walk.mark_images:
        if text.startswith("data:image/"):
            walk.flags[_pointer(path)] = "data_url"
        elif text.startswith(("http://", "https://")) and _image_url(text):
            walk.flags[_pointer(path)] = "url"
    return text


def _image_url(url: str) -> bool:
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    return path.endswith(IMAGE_EXTENSIONS)


def _decode(text: str) -> tuple[bytes, str] | None:
    """(content, content type) of a base64 data URL, or of bare base64 of a known format."""
    if text.startswith("data:"):
        head, comma, payload = text.partition(",")
        if not comma or not head.endswith(";base64") or len(head) > 256:
            return None
        content_type = head[5:-7].split(";", 1)[0] or attachments.OCTET_STREAM
        content = _b64(payload)
        return None if content is None else (content, content_type)
    start = _b64(text[:16])
    sniffed = _sniff(start) if start is not None else None
    if sniffed is None:
        return None
    content = _b64(text)
    return None if content is None else (content, sniffed)


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _sniff(start: bytes) -> str | None:
    for magic, offset, content_type in MAGIC:
        if start[offset:offset + len(magic)] == magic:
            return content_type
    return None


def _pointer(path: tuple) -> str:
    """The JSON pointer (RFC 6901) of a (parent path, key) chain."""
    parts = []
    while path is not None:
        path, key = path
        parts.append(str(key).replace("~", "~0").replace("/", "~1"))
    return "/" + "/".join(reversed(parts))
