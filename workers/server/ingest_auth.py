"""Who may write through the ingest API: the ``Authorization: Bearer <key>`` of a request
checked against the key ``tracer serve`` was started with (allowed everything) and the keys
recorded in its store (``tracer keys create``: by their SHA-256, each allowed its projects).

The store's keys are read at most once per ``KEY_TTL`` seconds (a revoked key is refused
within that; a key just made is taken within that), by whichever request finds the copy old,
and every presented key is compared with every valid one as SHA-256 digests with
``hmac.compare_digest``. A key is never logged, stored or answered whole.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

SERVER_KEY_NAME = "server"  # the name ``/api/v1/ping`` gives the server's own key
MAX_KEY_CHARS = 512  # a header longer than this is no key of ours
KEY_TTL = 3.0  # seconds the store's keys are taken as read


@dataclass(frozen=True)
class Principal:
    """A key that was presented and is valid: its ``name``, and the ``projects`` it may write
    (None: any)."""

    name: str
    projects: frozenset[str] | None = None


def digest(key: str) -> bytes:
    """The SHA-256 of a key (what is compared, and what a store keeps, in hex)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    """The keys the ingest API takes: ``server_key``, and those ``lookup`` lists (the store's
    ``StoreReader.api_keys``), read again once ``ttl`` seconds old."""

    def __init__(self, server_key: str | None,
                 lookup: Callable[[], list[dict]] | None = None, ttl: float = KEY_TTL) -> None:
        self._server = digest(server_key) if server_key else None
        self._lookup = lookup
        self._ttl = ttl
        self._lock = threading.Lock()
        self._keys: list[tuple[bytes, Principal]] = []
        self._read_at: float | None = None
        self._warned_at = -1e9

    def check(self, presented: str) -> Principal | None:
        """The principal of a presented key; None if it is not a valid key. May read the
        store: call it from a worker thread."""
        if not presented or len(presented) > MAX_KEY_CHARS:
            return None
        found = digest(presented)
        if self._server is not None and hmac.compare_digest(found, self._server):
            return Principal(SERVER_KEY_NAME)
        match = None
        for known, principal in self._store_keys():  # every one compared: no early exit
            if hmac.compare_digest(found, known):
                match = principal
        return match

    def _store_keys(self) -> list[tuple[bytes, Principal]]:
        if self._lookup is None:
            return []
        with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self._ttl:
                return self._keys
            self._read_at = now
            try:
                records = self._lookup()
            except Exception as exc:  # the store away: the last keys read stand meanwhile
                if now - self._warned_at > 60:
                    self._warned_at = now
                    print(f"tracer serve: could not read the API keys of the store "
                          f"({type(exc).__name__}: {exc}); the last ones read stand",
                          file=sys.stderr, flush=True)
                return self._keys
            keys = []
            for record in records:
                if record.get("revoked"):
                    continue
                try:
                    known = bytes.fromhex(record["hash"])
                except (TypeError, ValueError, KeyError):
                    continue  # not a digest we wrote: matches nothing
                projects = record.get("projects")
                keys.append((known, Principal(
                    str(record["name"]),
                    None if projects is None else frozenset(map(str, projects)))))
            self._keys = keys
            return keys


def presented_key(request: Request) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, if there is one."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def bearer(request: Request) -> Principal | None:
    """The principal of the request's Bearer key (None: no valid one). May read the store:
    call it from a worker thread."""
    key = presented_key(request)
    if key is None:
        return None
    ring: KeyRing = request.app.state.keys
    return ring.check(key)
