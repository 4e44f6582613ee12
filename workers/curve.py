"""CURVE on the aggregator's side: its key pair (``tracer keys``), its secret key read back, and
which endpoints need one.

A tcp:// aggregator started with ``--secret-key`` speaks ZeroMQ's CURVE: only peers that know its
public key complete the handshake, so nobody else can deliver a frame (or read one). One bound
to anything but loopback refuses to start without a key unless told ``--insecure``. The sending
side is ``tracer.curve``.

The files are ZeroMQ's certificate format (``zmq.auth.load_certificate`` reads them, as does
czmq's ``zcert``): ``NAME.key_secret`` (both keys) and ``NAME.key`` (the public key), both mode
0600 like every file of ours: whoever holds even the public key can send.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat

import zmq
import zmq.auth

from tracer import config

SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"

_CERTIFICATE = """#   ****  Generated on {when} by tracer keys  ****
#   ZeroMQ CURVE {what} Certificate
#   {note}

metadata
curve
    public-key = "{public}"
"""


def make_pair(name: str, force: bool = False) -> tuple[str, str, str]:
    """Write a new key pair as ``NAME.key_secret`` and ``NAME.key`` (mode 0600); returns the two
    paths and the public key. Refuses (FileExistsError) to replace existing files unless
    ``force``."""
    public, secret = (k.decode("ascii") for k in zmq.curve_keypair())
    secret_path, public_path = name + SECRET_SUFFIX, name + PUBLIC_SUFFIX
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _write(secret_path, _CERTIFICATE.format(
        when=when, what="**Secret**", note="the aggregator's: give it to no one (mode 0600)",
        public=public) + f'    secret-key = "{secret}"\n', force)
    _write(public_path, _CERTIFICATE.format(
        when=when, what="Public", note="senders set TRACER_AGGREGATOR_KEY to the public-key",
        public=public), force)
    return secret_path, public_path, public


def _write(path: str, text: str, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    with os.fdopen(config.open_private(path, flags), "w", encoding="ascii") as f:
        f.write(text)


def read_secret(path: str) -> tuple[bytes, bytes]:
    """The ``(public, secret)`` keys of the secret key file at ``path``. Raises ValueError,
    naming the file, if it is not one, or if other users can read it (a secret key anyone on
    the host can copy admits anyone)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(f"--secret-key {path}: {exc.strerror}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ValueError(f"--secret-key {path}: readable by other users (mode "
                         f"{stat.S_IMODE(info.st_mode):o}); chmod 600 {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--secret-key {path}: {exc}") from None
    try:
        valid = secret is not None and zmq.curve_public(secret) == public
    except zmq.ZMQError:
        valid = False
    if not valid:
        raise ValueError(f"--secret-key {path}: not a secret key file made by `tracer keys` "
                         "(no matching secret-key and public-key)")
    assert secret is not None
    return public, secret


def loopback(endpoint: str) -> bool:
    """Whether ``endpoint`` can only be reached from this host: ipc://, inproc://, or tcp:// on
    a loopback address (127.0.0.0/8, ::1, localhost). A wildcard, an interface name or any
    other address is not."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a host name
        return False
