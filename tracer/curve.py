"""CURVE on the sending side: a socket to a tcp:// aggregator that has a secret key.

ZeroMQ's CURVE (built into libzmq) encrypts a connection and authenticates the server: a peer
that does not know the aggregator's public key cannot complete the handshake, so not one of its
frames reaches the aggregator. Senders get that key from ``TRACER_AGGREGATOR_KEY`` or
``init_logger(aggregator_key=...)``; each connection makes a throwaway key pair of its own. ipc://
sockets use none: they live in a directory only their user can enter (``config.runtime_dir``).
"""

from __future__ import annotations

import zmq


def applies(endpoint: str, server_key: str | None) -> bool:
    """Whether a connection to ``endpoint`` uses CURVE: a key is known and it is tcp://."""
    return bool(server_key) and endpoint.startswith("tcp://")


def secure(sock: zmq.Socket, endpoint: str, server_key: str | None) -> None:
    """Make ``sock`` (not yet connected) a CURVE client of the aggregator at ``endpoint`` whose
    public key is ``server_key`` (see ``applies``; nothing to do otherwise)."""
    if not applies(endpoint, server_key):
        return
    assert server_key is not None
    public, secret = zmq.curve_keypair()
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode("ascii"))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
