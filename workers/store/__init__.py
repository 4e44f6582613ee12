"""Where rows are committed and read back: ``open_store`` picks the backend for a path or URL.

The interface is ``workers.store.base`` (``StoreWriter``, ``StoreReader``); the one backend so
are SQLite (``workers.store.sqlite``, its schema in ``workers.store.schema``) and PostgreSQL
(``workers.store.postgres``, with the ``postgres`` extra). Another backend implements the
interface, adds its URL scheme to ``open_store`` and its driver's error class to
``STORE_ERRORS``.
"""

from __future__ import annotations

import sqlite3
from typing import Literal, overload

from tracer import config

from .base import Refused, RowUpdate, SchemaVersionError, StoreError, StoreReader, StoreWriter
from .sqlite import SQLiteReader, SQLiteWriter

__all__ = ["STORE_ERRORS", "Refused", "RowUpdate", "SchemaVersionError", "StoreError",
           "StoreReader", "StoreWriter", "open_store"]

#: What a backend raises when its store fails (locked, corrupt, unreachable), as opposed to a
#: bug: callers that carry on past a failing store catch these.
#: (``StoreError``: what a backend whose driver loads only when a store of its kind is opened
#: raises for its driver's errors: importing psycopg would double the aggregator's start-up.)
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreError)

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@overload
def open_store(url: str, readonly: Literal[False] = False) -> StoreWriter: ...


@overload
def open_store(url: str, readonly: Literal[True]) -> StoreReader: ...


def open_store(url: str, readonly: bool = False) -> StoreWriter | StoreReader:
    """The store at ``url``: a writer, or with ``readonly`` a reader.

    A plain path or ``sqlite:///path`` (``sqlite:////absolute/path``) is a SQLite store;
    ``postgresql://user:password@host:port/database`` (or ``postgres://``) a PostgreSQL one
    (ImportError naming the extra without its driver); anything else raises ValueError. A
    writer opens on first use; a reader now (FileNotFoundError if the store does not exist;
    ``SchemaVersionError`` if it is newer than this code; ``StoreError`` if its database cannot
    be reached).
    """
    if "://" not in url or url.startswith("sqlite:///"):
        path = config.store_path(url)
        return SQLiteReader(path) if readonly else SQLiteWriter(path)
    if url.startswith(POSTGRES_SCHEMES):
        try:
            from .postgres import PostgresReader, PostgresWriter
        except ImportError as exc:
            raise ImportError(f"a PostgreSQL store needs psycopg: pip install 'tracer[postgres]' "
                              f"({exc})") from None
        return PostgresReader(url) if readonly else PostgresWriter(url)
    scheme = url.split("://", 1)[0]  # (not the rest: it may hold a password)
    raise ValueError(f"store {scheme}://...: no backend for this URL (a SQLite store is a path or "
                     "sqlite:///path, a PostgreSQL one postgresql://...)")
