"""Attachments: files and bytes logged anywhere in an event, stored apart from the row.

Place an ``Attachment`` (a file path, read later, or bytes), an ``ExternalAttachment`` (a URL:
nothing is uploaded) or a ``JSONAttachment`` (a large JSON value) anywhere in a logged value, at
any depth of dicts and lists, in ``input``, ``output``, ``expected`` or ``metadata``. The row
stores the attachment's *reference*, the reference SDK's shape::

    {"type": "braintrust_attachment", "filename": ..., "content_type": ..., "key": ...}
    {"type": "external_attachment", "filename": ..., "content_type": ..., "url": ...}

and the bytes go round the row pipeline: when a logged value is snapshotted on the caller's
thread, each attachment in it becomes its reference and is handed to this process's attachment
writer (``tracer.attachment_writer``), whose own thread reads, hashes and writes the content into
the store's spool directory; the aggregator moves it into the store's content-addressed blob area
and records ``key -> sha256, size, status`` (``workers.attachments``). The caller never reads,
hashes or writes the content; a path attachment costs it one ``os.stat`` and one ``os.access``
when it is made (about 3 us), so that a missing, unreadable or oversized file is warned about at
once (a WARNING on the ``tracer`` logger, as the reference warns on its own) and said in the
row's reference itself (``upload_status: "error"`` and ``error_message``).

This module is imported by ``tracer.serialize`` and must stay free of the recorder.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Any

from . import config
from .serialize import pack, snapshot_to_json

BRAINTRUST_ATTACHMENT = "braintrust_attachment"
EXTERNAL_ATTACHMENT = "external_attachment"
REFERENCE_TYPES = (BRAINTRUST_ATTACHMENT, EXTERNAL_ATTACHMENT)

OCTET_STREAM = "application/octet-stream"

# Where an attachment that cannot be stored is warned about when it is made.
_log = logging.getLogger("tracer")

# Common types without mimetypes' first-call cost (it reads the system's tables, ~ms).
_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".svg": "image/svg+xml", ".bmp": "image/bmp", ".pdf": "application/pdf",
    ".json": "application/json", ".txt": "text/plain", ".csv": "text/csv", ".md": "text/markdown",
    ".html": "text/html", ".mp3": "audio/mpeg", ".wav": "audio/wav", ".ogg": "audio/ogg",
    ".flac": "audio/flac", ".mp4": "video/mp4", ".webm": "video/webm", ".zip": "application/zip",
}

_max_size: int | None = None


def max_size() -> int:
    """The largest attachment stored, in bytes (``TRACER_MAX_ATTACHMENT_SIZE``, read once)."""
    global _max_size
    if _max_size is None:
        _max_size = config.value_or_default("MAX_ATTACHMENT_SIZE")
    return _max_size


def guess_type(filename: str) -> str:
    """The MIME type of ``filename`` by its extension; ``application/octet-stream`` if unknown."""
    ext = os.path.splitext(filename)[1].lower()
    found = _TYPES.get(ext)
    if found is None and ext:
        import mimetypes

        found = mimetypes.guess_type(filename, strict=False)[0]
    return found or OCTET_STREAM


def new_key() -> str:
    """A fresh attachment key: 128 random bits as 32 hex digits (never reused across processes:
    os.urandom, not a generator a fork child would share)."""
    return os.urandom(16).hex()


class BaseAttachment:
    """What every attachment kind shares: a reference that the row stores in its place."""

    __slots__ = ("filename", "content_type")

    @property
    def reference(self) -> dict[str, Any]:
        """The dict the row stores in this attachment's place (a new dict at each access)."""
        raise NotImplementedError


class Attachment(BaseAttachment):
    """A file or bytes to store beside the row, logged anywhere in an event.

    ``data`` is a file path (``str`` or ``os.PathLike``), read in the background shortly after
    the value is logged, or ``bytes`` (``bytearray``/``memoryview`` are copied now). ``filename``
    defaults to the path's base name (``"attachment"`` for bytes), ``content_type`` to a guess
    from the filename. Identical content is stored once, however often it is logged.

    A path that cannot be stored (missing, unreadable, not a regular file, over
    ``TRACER_MAX_ATTACHMENT_SIZE``) is looked at when the attachment is made: a WARNING goes to
    the ``tracer`` logger (``logging.getLogger("tracer")``), nothing is raised, and the row's
    reference will say why it was not stored unless the file can be read when it is logged.

    ``reference`` is the dict the row stores in its place; ``data`` the content, the file's
    bytes read on first access.
    """

    __slots__ = ("_source", "_content", "key", "_problem", "_size", "_handed", "_looked_again")

    def __init__(self, data: str | bytes | os.PathLike, filename: str | None = None,
                 content_type: str | None = None) -> None:
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif isinstance(data, os.PathLike):
            data = os.fspath(data)
        if not isinstance(data, (str, bytes)):
            raise TypeError(f"Attachment: data must be a file path or bytes, got "
                            f"{type(data).__name__}")
        if isinstance(data, str) and not data:
            raise ValueError("Attachment: data is an empty path")
        if filename is None:
            filename = os.path.basename(data) if isinstance(data, str) else "attachment"
        _check_text(filename, "filename")
        if content_type is None:
            content_type = guess_type(filename)
        _check_text(content_type, "content_type")
        self._source = data  # the path, or the bytes
        self._content: bytes | None = None  # a path's bytes, once ``data`` has read them
        self.filename = filename or "attachment"
        self.content_type = content_type
        self.key = new_key()
        self._handed = False  # given to the attachment writer (once per object)
        self._looked_again = False
        self._size: int | None = None
        # Why it cannot be stored, or None: looked at now, so that a bad path is warned about
        # where it was given (as the reference does); see check() for the second look.
        self._problem = self._look()
        if self._problem is not None and isinstance(data, str):
            _log.warning("Failed to read file for attachment %r: %s (it will not be stored "
                         "unless it can be read when logged)", self.filename, self._problem)

    @property
    def path(self) -> str | None:
        """The file path, or None for bytes."""
        return self._source if isinstance(self._source, str) else None

    @property
    def data(self) -> bytes:
        """The content: the bytes given, or the file's bytes, read on first access (not when
        the attachment was made) and kept. Raises ``OSError`` if the file cannot be read."""
        content = self._content
        if content is None:
            source = self._source
            if isinstance(source, bytes):
                return source
            with open(source, "rb") as f:
                content = f.read()
            self._content = content
        return content

    @property
    def reference(self) -> dict[str, Any]:
        """The dict the row stores in this attachment's place (a new dict at each access)."""
        return {"type": BRAINTRUST_ATTACHMENT, "filename": self.filename,
                "content_type": self.content_type, "key": self.key}

    def read(self) -> bytes:
        """The content: the bytes, or the file read now (not kept)."""
        if isinstance(self._source, bytes):
            return self._source
        with open(self._source, "rb") as f:
            return f.read()

    def check(self) -> str | None:
        """Why this attachment cannot be stored (missing, unreadable, not a file, too large), or
        None. Found when the attachment was made; a problem found then is looked at once more
        when it is first logged (the file may have been written since)."""
        if self._problem is not None and not self._looked_again:
            self._looked_again = True
            self._problem = self._look()
        return self._problem

    def _look(self) -> str | None:
        limit = max_size()
        data = self._source
        if isinstance(data, bytes):
            self._size = len(data)
        else:
            try:
                info = os.stat(data)
            except FileNotFoundError:
                return f"file not found: {data}"
            except OSError as exc:
                return f"cannot read {data}: {exc.strerror or exc}"
            if not stat.S_ISREG(info.st_mode):
                return f"not a regular file: {data}"
            if not os.access(data, os.R_OK):
                return f"permission denied: {data}"
            self._size = info.st_size
        if self._size > limit:
            return (f"{self._size} bytes is over the attachment size limit of {limit} bytes "
                    "(TRACER_MAX_ATTACHMENT_SIZE)")
        return None

    def __repr__(self) -> str:
        what = f"path={self._source!r}" if isinstance(self._source, str) else \
            f"{len(self._source)} bytes"
        return (f"<{type(self).__name__} {what} filename={self.filename!r} "
                f"content_type={self.content_type!r} key={self.key}>")


class JSONAttachment(Attachment):
    """A JSON value stored as an attachment (``application/json``), for values too large to
    keep in the row. The value is snapshotted now, as any logged value is (later mutation does
    not change it), and encoded as JSON in the background. ``pretty`` indents it (2 spaces).
    ``data`` is the JSON text, encoded on first access."""

    __slots__ = ("pretty", "_snapshot")

    def __init__(self, data: Any, filename: str = "data.json", pretty: bool = False) -> None:
        # Before Attachment.__init__, whose _look() reads the snapshot.
        self.pretty = pretty
        self._snapshot = pack(data)  # msgpack: ~5x cheaper than JSON on the caller's thread
        super().__init__(b"", filename, "application/json")

    @property
    def data(self) -> bytes:
        """The JSON text (UTF-8), encoded on first access and kept."""
        if self._content is None:
            self._content = snapshot_to_json(self._snapshot, self.pretty)
        return self._content

    def _look(self) -> str | None:
        self._size = len(self._snapshot)  # the JSON's own size is checked when it is encoded
        return None

    def read(self) -> bytes:
        """The JSON text, encoded now."""
        return snapshot_to_json(self._snapshot, self.pretty)

    def __repr__(self) -> str:
        return f"<JSONAttachment filename={self.filename!r} key={self.key}>"


class ExternalAttachment(BaseAttachment):
    """An attachment that lives elsewhere, at ``url``: the row stores a reference to it and
    nothing is uploaded."""

    __slots__ = ("url",)

    def __init__(self, url: str, filename: str | None = None,
                 content_type: str | None = None) -> None:
        _check_text(url, "url")
        if filename is None:
            filename = os.path.basename(url.split("?", 1)[0].rstrip("/")) or "attachment"
        _check_text(filename, "filename")
        if content_type is None:
            content_type = guess_type(filename)
        _check_text(content_type, "content_type")
        self.url = url
        self.filename = filename
        self.content_type = content_type

    @property
    def reference(self) -> dict[str, Any]:
        """The dict the row stores in this attachment's place (a new dict at each access)."""
        return {"type": EXTERNAL_ATTACHMENT, "filename": self.filename,
                "content_type": self.content_type, "url": self.url}

    def __repr__(self) -> str:
        return f"<ExternalAttachment url={self.url!r} filename={self.filename!r}>"


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"attachment {name} must be a non-empty string, got {value!r}")


# -- where attachments live beside a store ---------------------------------------------------


def store_dir(store_path: str) -> str:
    """The attachment area of the store at ``store_path``: ``<store without .db>.attachments``,
    holding ``spool/`` (handed over by recorders, not yet stored) and ``blobs/`` (content
    addressed). One per store, so two stores in one directory never take each other's. A
    PostgreSQL store's is in its local directory (``config.local_path``)."""
    return os.path.splitext(config.local_path(store_path))[0] + ".attachments"


def make_private(path: str) -> None:
    """Create directory ``path`` and its missing parents, each private to the user (0700):
    attachments hold user data, like the store."""
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        make_private(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def spool_dir(store_path: str) -> str:
    return os.path.join(store_dir(store_path), "spool")


def blob_path(store_path: str, sha256: str) -> str:
    """Where content with this sha256 (64 hex digits) is stored."""
    return os.path.join(store_dir(store_path), "blobs", sha256[:2], sha256)
