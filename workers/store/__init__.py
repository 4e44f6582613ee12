"""Where rows are committed and read back: ``open_store`` picks the backend for a path or URL.

The interface is ``workers.store.base`` (``StoreWriter``, ``StoreReader``); the one backend so
far is SQLite (``workers.store.sqlite``), its schema in ``workers.store.schema``. Another backend
(a trace server, PostgreSQL) implements the interface, adds its URL scheme to ``open_store`` and
its driver's error class to ``STORE_ERRORS``.
"""

from __future__ import annotations

import sqlite3
from typing import Literal, overload

from tracer import config

from .base import RowUpdate, SchemaVersionError, StoreReader, StoreWriter
from .sqlite import SQLiteReader, SQLiteWriter

__all__ = ["STORE_ERRORS", "RowUpdate", "SchemaVersionError", "StoreReader", "StoreWriter",
           "open_store"]

#: What a backend raises when its store fails (locked, corrupt, unreachable), as opposed to a
#: bug: callers that carry on past a failing store catch these.
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)


@overload
def open_store(url: str, readonly: Literal[False] = False) -> StoreWriter: ...


@overload
def open_store(url: str, readonly: Literal[True]) -> StoreReader: ...


def open_store(url: str, readonly: bool = False) -> StoreWriter | StoreReader:
    """The store at ``url``: a writer, or with ``readonly`` a reader.

    A plain path or ``sqlite:///path`` (``sqlite:////absolute/path``) is a SQLite store; anything
    else raises ValueError. A writer opens on first use; a reader now (FileNotFoundError if the
    store does not exist; ``SchemaVersionError`` if it is newer than this code).
    """
    if "://" not in url or url.startswith("sqlite:///"):
        path = config.store_path(url)
        return SQLiteReader(path) if readonly else SQLiteWriter(path)
    raise ValueError(f"store {url!r}: no backend for this URL (a SQLite store is a path or "
                     "sqlite:///path)")
