"""The multi-host test bed (tests/netns.py): hosts that reach each other, a cable that can be
cut, every namespace removed afterwards."""

from __future__ import annotations

import sys

import pytest

from . import netns
from .helpers import wait_until

pytestmark = pytest.mark.skipif(netns.unavailable() is not None,
                                reason=str(netns.unavailable()))

PROBE = ("import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), "
         "timeout=float(sys.argv[3])); s.sendall(b'hi'); print(s.recv(2).decode())")
ECHO = ("import socket; l = socket.socket(); "
        "l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        "l.bind(('0.0.0.0', 7000)); l.listen()\n"
        "while True:\n c, _ = l.accept(); c.sendall(c.recv(2)); c.close()")


def test_a_host_reaches_another_by_its_address_and_has_its_own_name() -> None:
    with netns.Network() as net:
        server, worker = net.add_host("server"), net.add_host("worker-1")
        server.popen([sys.executable, "-c", ECHO])
        probe = [sys.executable, "-c", "import socket; print(socket.gethostname())"]
        assert worker.run(probe).stdout.strip() == "worker-1"
        wait_until(lambda: _echoed(worker, server), timeout=30)  # once it listens


def test_a_cut_cable_stops_traffic_until_restored() -> None:
    with netns.Network() as net:
        server, worker = net.add_host("server"), net.add_host("worker-1")
        server.popen([sys.executable, "-c", ECHO])
        wait_until(lambda: _echoed(worker, server), timeout=30)
        net.cut(worker)
        assert not _echoed(worker, server)
        net.restore(worker)
        wait_until(lambda: _echoed(worker, server), timeout=30)


def test_a_blocked_host_is_unreachable_from_one_host_only() -> None:
    with netns.Network() as net:
        server, worker, other = (net.add_host(n) for n in ("server", "worker-1", "worker-2"))
        for host in (server, other):
            host.popen([sys.executable, "-c", ECHO])
        wait_until(lambda: _echoed(worker, server) and _echoed(worker, other), timeout=30)
        net.block(worker, server)
        assert not _echoed(worker, server)
        assert _echoed(worker, other)
        net.unblock(worker, server)
        wait_until(lambda: _echoed(worker, server), timeout=30)


def test_closing_the_network_removes_every_namespace_and_process() -> None:
    net = netns.Network()
    host = net.add_host("server")
    process = host.popen([sys.executable, "-c", "import time; time.sleep(600)"])
    made = net.namespaces()
    assert set(made) <= set(netns.existing_namespaces())
    net.close()
    assert process.wait(10) is not None
    assert not set(made) & set(netns.existing_namespaces())


def _echoed(client: netns.Host, server: netns.Host) -> bool:
    """Whether ``client`` reaches the echo server on ``server`` within a second."""
    probe = [sys.executable, "-c", PROBE, server.address, "7000", "1"]
    return client.run(probe).stdout.strip() == "hi"
