"""Who may write through the ingest API: the ``Authorization: Bearer <key>`` of a request
checked against the key ``tracer serve`` was started with (allowed everything).

Keys are compared as SHA-256 digests with ``hmac.compare_digest``; a key is never logged,
stored or answered whole.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import Request

SERVER_KEY_NAME = "server"  # the name ``/api/v1/ping`` gives the server's own key
MAX_KEY_CHARS = 512  # a header longer than this is no key of ours


@dataclass(frozen=True)
class Principal:
    """A key that was presented and is valid: its ``name``, and the ``projects`` it may write
    (None: any)."""

    name: str
    projects: frozenset[str] | None = None


def digest(key: str) -> bytes:
    """The SHA-256 of a key (what is compared, and what a store keeps)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    """The keys the ingest API takes."""

    def __init__(self, server_key: str | None) -> None:
        self._server = digest(server_key) if server_key else None

    def check(self, presented: str) -> Principal | None:
        """The principal of a presented key; None if it is not a valid key."""
        if not presented or len(presented) > MAX_KEY_CHARS:
            return None
        found = digest(presented)
        if self._server is not None and hmac.compare_digest(found, self._server):
            return Principal(SERVER_KEY_NAME)
        return None


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
