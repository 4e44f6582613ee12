"""One process's channel to one aggregator: a ZeroMQ DEALER socket and the stream sent on it.

The channel numbers the DATA messages it sends (``seq``, from 1 per stream), keeps each one until
the aggregator says it is committed (``COMMITTED_UPTO``), and can start the stream afresh as a new
sender (a new ``gen``) when the aggregator is replaced, handing back what must be resent. It never
blocks for long: sends time out after ``SEND_TIMEOUT_MS`` (the caller decides whether to go on
waiting), and a close lingers at most the given time.

Only the recorder's flusher (or a thread doing its work inline, one at a time) uses a channel. In
a fork child the parent's socket must never be touched (ZeroMQ is not fork-safe): ``forget_parent``
sets it aside and the child opens its own on first use.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque

import zmq

from . import curve, wire

SEND_TIMEOUT_MS = 500  # a blocked send returns this often, so the caller can look around
LINGER_MS = 1000  # how long close() lets ZeroMQ deliver what is still queued

HOST = socket.gethostname()

# The parent's ZeroMQ objects as a fork child inherited them. The child must never use them, and
# letting them be garbage-collected makes pyzmq warn about unclosed sockets (it skips the close in
# a child by itself), so they are kept here, untouched, until the child exits.
_inherited: list[tuple[zmq.Context | None, zmq.Socket]] = []


class Channel:
    """The stream of messages from this process to the aggregator at ``endpoint``."""

    def __init__(self, endpoint: str, send_hwm: int | None = None,
                 server_key: str | None = None) -> None:
        self.endpoint = endpoint
        self.server_key = server_key  # the aggregator's CURVE public key (tcp:// only)
        # Messages ZeroMQ may queue before a send blocks: what sits there counts against the
        # recorder's bound (docs/architecture.md, "Bounds").
        self.send_hwm = send_hwm
        self.reset()

    def reset(self) -> None:
        """Fresh state with no socket (construction, fork child)."""
        self.pid = os.getpid()
        self.gen = int.from_bytes(os.urandom(4), "big")
        self.seq = 0  # the last DATA message sent
        self.acked_seq = 0  # the aggregator has received every DATA message up to this one
        # DATA messages sent and not known committed: (seq, body, records, the sender's counts it
        # carried), kept to be resent, counts included, to a replacement aggregator.
        self.unacked: deque[tuple[int, bytes, int, dict]] = deque()
        self.unacked_bytes = 0  # the bodies' bytes: what the recorder's byte bound counts
        self.last_reply = time.monotonic()
        self._ctx: zmq.Context | None = None
        self.sock: zmq.Socket | None = None

    def forget_parent(self) -> None:
        """In a fork child: set the parent's socket aside, untouched, and start afresh."""
        if self.sock is not None:
            _inherited.append((self._ctx, self.sock))
        self.reset()

    @property
    def sender(self) -> tuple[str, int, int]:
        return (HOST, self.pid, self.gen)

    def open(self) -> zmq.Socket:
        """The socket, connected on first use."""
        if self.sock is not None:
            return self.sock
        self._ctx = zmq.Context(io_threads=1)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, 20)
        if self.send_hwm:
            sock.setsockopt(zmq.SNDHWM, self.send_hwm)
        curve.secure(sock, self.endpoint, self.server_key)
        sock.connect(self.endpoint)
        self.sock = sock
        return sock

    def close(self, linger: int = LINGER_MS) -> None:
        sock, ctx = self.sock, self._ctx
        self.sock = self._ctx = None
        if sock is not None:
            sock.close(linger=linger)
        if ctx is not None:
            ctx.term()

    def send(self, kind: int, arg: object, body: bytes) -> int:
        """Send one message; returns the stream's seq after it (a DATA message takes the next
        one). Raises ``zmq.Again`` when the send timed out (the aggregator is not reading), or
        another ``zmq.ZMQError``."""
        sock = self.open()
        seq = self.seq + 1 if kind == wire.DATA else self.seq
        sock.send_multipart([wire.header(kind, self.sender, seq, arg), body])
        self.seq = seq
        return seq

    def say_goodbye(self, counts: dict) -> None:
        """Tell the aggregator this sender is done (with its last counters), if it can be told
        at once; then close."""
        if self.sock is not None:
            try:
                self.sock.send_multipart([wire.header(wire.BYE, self.sender, self.seq, counts),
                                          b""], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self.close()

    def keep(self, seq: int, body: bytes, records: int, counts: dict) -> None:
        """Keep a sent DATA message until the aggregator says it is committed."""
        self.unacked.append((seq, body, records, counts))
        self.unacked_bytes += len(body)

    def unacked_records(self) -> int:
        return sum(entry[2] for entry in self.unacked)

    def forget_unacked(self) -> None:
        """Give up the messages not known committed (counted as lost by the caller)."""
        self.unacked.clear()
        self.unacked_bytes = 0

    def acked(self, seq: int) -> None:
        """The aggregator has received every DATA message up to ``seq``."""
        self.acked_seq = max(self.acked_seq, seq)

    def restart_stream(self) -> list[tuple[int, bytes, int, dict]]:
        """Start afresh as a new sender on a new socket (a replacement aggregator); returns the
        messages not known committed, which the caller resends."""
        self.close(linger=0)
        self.gen = int.from_bytes(os.urandom(4), "big")
        self.seq = self.acked_seq = 0
        resend = list(self.unacked)
        self.forget_unacked()
        return resend

    def read_replies(self) -> tuple[list[tuple[object, object]], bool]:
        """Read what the aggregator has answered: the flush acknowledgements ``(token,
        payload)``, and whether the answering aggregator is a replacement that never saw the
        start of this stream (reached through a silent reconnect: what went to its predecessor
        may be lost and must be resent). Commit notices are applied here."""
        acks: list[tuple[object, object]] = []
        sock = self.sock
        if sock is None:
            return acks, False
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return acks, False
            try:
                kind, token, payload, first_seq = wire.unpack_reply(msg)
            except ValueError:
                continue
            self.last_reply = time.monotonic()
            if self.seq and first_seq != 1:
                return acks, True
            if kind == wire.COMMITTED_UPTO and isinstance(token, int):
                unacked = self.unacked
                while unacked and unacked[0][0] <= token:
                    self.unacked_bytes -= len(unacked.popleft()[1])
                self.acked(token)
            elif kind == wire.ACK:
                acks.append((token, payload))
