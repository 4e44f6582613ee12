"""Hosts for multi-host tests, made of Linux network namespaces on this machine.

``Network`` makes a private IPv4 network: a switch (a bridge in a namespace of its own) and any
number of hosts, each a namespace with one interface (``eth0``, ``10.<n>.0.<i>/24``) cabled to
the switch by a veth pair. Nothing touches the machine's own namespace or leaves it: addresses
are private to these namespaces and the switch has no uplink. A host runs its processes in its
namespace and in a UTS namespace of its own, so that ``socket.gethostname()`` there is the
host's name (rows name the host they came from). ``cut``/``restore`` take a host's cable out
and put it back (its switch-side end down/up). ``close`` kills every process started on a host
and removes every namespace; namespaces left by a test run that died (their owner pid gone)
are removed by the next ``Network``.

Needs root and ``ip`` (iproute2) and ``unshare`` (util-linux); ``unavailable()`` says why not.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence

PREFIX = "trn"  # every namespace and interface we make starts with it
_networks = itertools.count()


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"{PREFIX}{os.getpid()}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()[:200]}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, netns: str | None = None, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    command = ["ip", *args] if netns is None else ["ip", "-n", netns, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done


def _remove_orphans() -> None:
    """Namespaces of ours whose creating process is gone (a run killed before its cleanup)."""
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    for line in listed:
        name = line.split(" ")[0]
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX):].split("-")[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            _kill_namespace_processes(name)
            _ip("netns", "del", name, check=False)


def _kill_namespace_processes(netns: str) -> None:
    pids = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


class Host:
    """One host of a ``Network``: a namespace, its address and name, the processes it runs."""

    def __init__(self, network: Network, name: str, index: int) -> None:
        self.network = network
        self.name = name
        self.netns = f"{network.tag}-{name}"
        self.address = f"{network.subnet}.{index}"
        # the cable's switch end, in the switch's namespace (so names never meet the machine's)
        self.switch_end = f"port{index}"
        self.processes: list[subprocess.Popen[bytes]] = []

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run in this host's namespace, with its hostname."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *args]

    def popen(self, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``args`` on this host (in a session of its own, killed by ``Network.close``)."""
        process = subprocess.Popen(self.command(args), start_new_session=True,  # type: ignore[call-overload]
                                   **kwargs)
        self.processes.append(process)
        return process

    def run(self, args: Sequence[str], timeout: float = 60, **kwargs: object
            ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` on this host to completion, output captured as text."""
        return subprocess.run(self.command(args), capture_output=True, text=True,  # type: ignore[call-overload]
                              timeout=timeout, **kwargs)

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 20) -> int | None:
        """Send ``sig`` to a process started here (its whole session) and wait for it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return process.wait(10)


class Network:
    """A private network of hosts (see the module's docstring). Use as a context manager."""

    def __init__(self) -> None:
        _remove_orphans()
        self.number = next(_networks)
        self.tag = f"{PREFIX}{os.getpid()}-{self.number}"
        # 10.77.x.0/24 for the x-th network of this process: private, never routed anywhere
        self.subnet = f"10.77.{self.number % 250}"
        self.switch = f"{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.switch)
        _ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        _ip("link", "set", "br0", "up", netns=self.switch)

    def add_host(self, name: str) -> Host:
        """A new host named ``name``, cabled to the switch, its interface and loopback up."""
        host = Host(self, name, len(self.hosts) + 1)
        _ip("netns", "add", host.netns)
        self.hosts[name] = host
        # made inside the two namespaces: the cable never exists in the machine's own
        _ip("link", "add", "eth0", "type", "veth", "peer", "name", host.switch_end, "netns",
            self.switch, netns=host.netns)
        _ip("link", "set", host.switch_end, "master", "br0", netns=self.switch)
        _ip("link", "set", host.switch_end, "up", netns=self.switch)
        _ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
        _ip("link", "set", "eth0", "up", netns=host.netns)
        _ip("link", "set", "lo", "up", netns=host.netns)
        return host

    def cut(self, host: Host) -> None:
        """Take ``host``'s cable out: nothing reaches it or leaves it until ``restore``."""
        _ip("link", "set", host.switch_end, "down", netns=self.switch)

    def restore(self, host: Host) -> None:
        _ip("link", "set", host.switch_end, "up", netns=self.switch)

    def block(self, host: Host, other: Host) -> None:
        """Make ``other`` unreachable from ``host`` (a blackhole route: packets vanish, as on a
        cut link), while ``host`` still reaches every other host."""
        _ip("route", "add", "blackhole", f"{other.address}/32", netns=host.netns)

    def unblock(self, host: Host, other: Host) -> None:
        _ip("route", "del", "blackhole", f"{other.address}/32", netns=host.netns)

    def namespaces(self) -> list[str]:
        return [self.switch, *(host.netns for host in self.hosts.values())]

    def close(self) -> None:
        """Kill every process of every host and remove every namespace (and so every cable)."""
        for host in self.hosts.values():
            for process in host.processes:
                if process.poll() is None:
                    host.stop(process, signal.SIGKILL, timeout=10)
            _kill_namespace_processes(host.netns)
        for netns in self.namespaces():
            _ip("netns", "del", netns, check=False)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def network() -> Iterator[Network]:
    made = Network()
    try:
        yield made
    finally:
        made.close()


def existing_namespaces() -> list[str]:
    """Our namespaces that exist now (for tests that check the cleanup)."""
    return [line.split(" ")[0] for line in _ip("netns", "list", check=False).stdout.split("\n")
            if line.startswith(PREFIX)]
