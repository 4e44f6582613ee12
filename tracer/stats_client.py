"""Asking an aggregator for its counters (a STATS message and its reply): the one client, used
by ``tracer stats`` and by the attachment writer to learn where a standalone aggregator's store
is."""

from __future__ import annotations

import os
import socket

import zmq

from . import curve, wire


def ask_stats(endpoint: str, timeout_ms: int = 2000, server_key: str | None = None
              ) -> dict | None:
    """The counters of the aggregator at ``endpoint`` (what ``tracer stats --json`` prints);
    None if it does not answer within ``timeout_ms`` or answers something else. ``server_key``:
    its CURVE public key, for a tcp:// aggregator that has one."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        curve.secure(sock, endpoint, server_key)
        sock.connect(endpoint)
        sock.send_multipart([wire.header(wire.STATS, (socket.gethostname(), os.getpid(), 0), 0,
                                         1), b""])
        if not sock.poll(timeout_ms):
            return None
        kind, _token, payload, _first = wire.unpack_reply(sock.recv())
    except (zmq.ZMQError, ValueError):
        return None
    finally:
        sock.close(linger=0)
        ctx.term()
    return payload if kind == wire.STATS_REPLY and isinstance(payload, dict) else None
