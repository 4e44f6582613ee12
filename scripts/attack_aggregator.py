"""Attack a standalone aggregator over the wire while a real process traces into it.

    python scripts/attack_aggregator.py [--mode both|plain|curve] [--flood 100000]

For each mode a standalone aggregator listens on a free loopback port (``plain``: no key, as
``tracer aggregator --bind tcp://127.0.0.1:PORT``; ``curve``: with ``--secret-key``, the victim
given its public key). A victim process logs spans to project ``real`` the whole time, and a
stranger opens raw ZeroMQ DEALER sockets (no key) and sends what hostile or broken peers send:
nested snapshots that used to overflow the C stack, a record with ``metrics="boom"``, a row
injected into ``real``, a flood of made-up senders, a sequence number of 2**62, malformed
handshakes, a negative pid, strings that are not UTF-8, extension types we never use, a message
over ``TRACER_MAX_MESSAGE_SIZE`` (1 MiB here), absurd self-reported counters. Before the attacks,
``--bind tcp://*:PORT`` without a key is tried once: it must be refused.

For each attack it prints what was sent and what the aggregator counted (``tracer stats``
counters). Then the victim flushes, and it checks: the aggregator survived, every legitimate
span is stored (the victim's, and a 100-span probe before and after the flood, whose flush time
is shown), every rejected input was counted. With CURVE no attack may deliver anything (the
handshake fails: ``handshakes_failed``) and nothing may be injected. Without a key on loopback,
the injected row is a valid record and is stored: a loopback port without a key trusts every
local process (see the README, "Security"). Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tracer import wire  # noqa: E402
from tracer.stats_client import ask_stats  # noqa: E402
from workers.senders import MAX_SENDERS  # noqa: E402
from workers.store import open_store  # noqa: E402

HOST = socket.gethostname()
MAX_MESSAGE_SIZE = 1024 * 1024
# Counters that grow only if an attack's messages were read (the victim's grow others).
READ_BY_ATTACKS = ("bad_messages", "bad_records", "bad_record_undecodable", "bad_record_fields",
                   "bad_sender_reports", "seq_jumps", "seq_gap_messages", "senders_seen",
                   "senders_evicted")

VICTIM = """
import os, sys, time, tracer
tracer.init_logger("real")
stop, created = sys.argv[1], 0
while not os.path.exists(stop):
    for _ in range(20):
        with tracer.start_span("real span") as span:
            span.log(input={"i": created}, metrics={"tokens": 3})
        created += 1
    time.sleep(0.01)
started = time.perf_counter()
tracer.flush(timeout=120)
print(created, time.perf_counter() - started)
"""

PROBE = """
import sys, time, tracer
tracer.init_logger("probe")
for i in range(100):
    with tracer.start_span(sys.argv[1]):
        pass
started = time.perf_counter()
tracer.flush(timeout=60)
print(time.perf_counter() - started)
"""


def header(kind: int, gen: int, seq: int = 1, arg: object = 1, host: str = "stranger",
           pid: int = 4242) -> bytes:
    return msgpack.packb([wire.VERSION, kind, host, pid, gen, seq, arg])


def record(project: str, name: str, fields: dict | None = None, span: int = 99) -> bytes:
    return msgpack.packb(wire.span_end(wire.logs_container(project), 1, span, None, span, None,
                                       name, None, 1.0, 2.0, fields, None))


def nested_snapshots(depth: int) -> bytes:
    value = msgpack.packb("deep")
    for _ in range(depth):
        value = msgpack.packb(msgpack.ExtType(wire.SNAPSHOT, value))
    return record("attacker", "nested", {"output": msgpack.ExtType(wire.SNAPSHOT, value)})


def not_utf8() -> bytes:
    bad = record("attacker", "AAAA").replace(b"AAAA", b"\xff\xfe\xfd\xfc")
    return record("attacker", "good 1", span=1) + bad + record("attacker", "good 2", span=2)


# Each is sent as one or more messages; a list of lists is a pause: the next is sent once the
# aggregator has closed the connection and ZeroMQ has connected again.
Frames = list[list[bytes]]


@dataclass
class Attack:
    name: str
    frames: Callable[[], list[Frames]]
    expect: dict[str, int]  # counters that must grow by at least this much (without CURVE)


def attacks(flood: int) -> list[Attack]:
    return [
        Attack("300 snapshots nested in one record (1.2 KB)",
               lambda: [[[header(wire.DATA, 1), nested_snapshots(300)]]],
               {"bad_record_undecodable": 1}),
        Attack("a 40-byte record with metrics='boom'",
               lambda: [[[header(wire.DATA, 2), record("attacker", "boom", {"metrics": "boom"})]]],
               {"bad_record_fields": 1}),
        Attack("a row injected into project 'real'",
               lambda: [[[header(wire.DATA, 3), record("real", "INJECTED by a stranger")]]],
               {"senders_seen": 1}),  # read and stored: a valid record (see the summary)
        Attack(f"{flood:,} DATA headers of made-up senders on this host",
               lambda: [[[header(wire.DATA, i, host=HOST, pid=100_000 + i), b""]
                         for i in range(flood)]],
               {}),  # as many as ZeroMQ takes: see run()
        Attack("seq = 2**62 after seq = 1",
               lambda: [[[header(wire.DATA, 5, seq=1), b""],
                         [header(wire.DATA, 5, seq=2**62), b""]]],
               {"seq_jumps": 1}),
        Attack("20,000 malformed SYNC messages",
               lambda: [[[header(wire.SYNC, 6, arg="not [token, level]"), b""]] * 20_000],
               {"bad_messages": 20_000}),
        Attack("a header claiming pid -1 on this host",
               lambda: [[[header(wire.DATA, 7, host=HOST, pid=-1), b""]]],
               {"bad_messages": 1}),
        Attack("a record that is not UTF-8 between two good ones",
               lambda: [[[header(wire.DATA, 8), not_utf8()]]],
               {"bad_record_undecodable": 1}),
        Attack("an extension type nothing of ours sends",
               lambda: [[[header(wire.DATA, 9),
                          record("attacker", "ext", {"output": msgpack.ExtType(42, b"?")})]]],
               {"bad_record_undecodable": 1}),
        Attack(f"a {2 * MAX_MESSAGE_SIZE >> 20} MiB message (limit {MAX_MESSAGE_SIZE >> 20} MiB) "
               "between two small ones",
               lambda: [[[header(wire.DATA, 10, seq=1), b""],
                         [header(wire.DATA, 10, seq=2), b"\x00" * (2 * MAX_MESSAGE_SIZE)]],
                        [[header(wire.DATA, 10, seq=3), b""]]],
               {"seq_gap_messages": 1}),
        Attack("a report of 10**18 records dropped",
               lambda: [[[header(wire.DATA, 11, arg=[0, {"dropped_queue_full": 10**18}]), b""]]],
               {"bad_sender_reports": 1}),
    ]


def curve_client(sock: zmq.Socket, server_key: str | None) -> None:
    """Make ``sock`` a CURVE client of ``server_key`` (nothing without one)."""
    if server_key is not None:
        public, secret = zmq.curve_keypair()
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


class Stranger:
    """A fresh DEALER with no key: ``send`` sends each batch of messages; between batches it
    waits for the aggregator to close the connection and ZeroMQ to open it again. Close it only
    once the aggregator has read what it needed to: ZeroMQ drops what a closed socket still
    queues."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.SNDTIMEO, 5000)
        self.sock.setsockopt(zmq.SNDHWM, 200_000)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
        self.sock.connect(endpoint)

    def send(self, batches: list[Frames]) -> tuple[int, int]:
        """Returns the messages and bytes ZeroMQ took (a peer that never completes the
        handshake takes at most its queue's worth)."""
        messages = sent = 0
        try:
            for number, batch in enumerate(batches):
                if number:
                    for event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CONNECTED):
                        while self.monitor.poll(10_000) and int.from_bytes(
                                self.monitor.recv_multipart()[0][:2], "little") != event:
                            pass
                for parts in batch:
                    self.sock.send_multipart(parts)
                    messages += 1
                    sent += sum(len(p) for p in parts)
        except zmq.Again:
            pass
        return messages, sent

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()


class Stats:
    """Questions to the aggregator's counters over one connection (``tracer stats`` opens one
    per question, and each would count as a connection closed)."""

    def __init__(self, endpoint: str, server_key: str | None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        curve_client(self.sock, server_key)
        self.sock.connect(endpoint)
        self.token = 0

    def counters(self, timeout: float = 30) -> dict:
        self.token += 1
        self.sock.send_multipart([wire.header(wire.STATS, (HOST, os.getpid(), 0), 0,
                                              self.token), b""])
        deadline = time.monotonic() + timeout
        while self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            _kind, token, payload, _first = wire.unpack_reply(self.sock.recv())
            if token == self.token and isinstance(payload, dict):
                return payload["counters"] | {"_rss": payload["rss_bytes"],
                                              "_cpu": payload["cpu_seconds"]}
        raise RuntimeError("the aggregator does not answer")

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class Aggregator:
    """A standalone aggregator in a subprocess, its log in the work directory."""

    def __init__(self, workdir: str, args: list[str], env: dict[str, str]) -> None:
        self.log_path = os.path.join(workdir, "aggregator.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "workers.aggregator", *args], env=env, cwd=ROOT,
                stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACER_", "_TRACER_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def wildcard_refused(workdir: str) -> bool:
    """Whether ``--bind tcp://*:PORT`` without a key is refused (exit 2, saying why)."""
    agg = Aggregator(workdir, ["--bind", f"tcp://*:{free_port()}", "--store",
                               os.path.join(workdir, "wildcard.db")], base_env())
    try:
        code = agg.proc.wait(30)
    except subprocess.TimeoutExpired:
        agg.stop()
        return False
    return code == 2 and "--secret-key" in agg.log()


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stored(store: str, project: str) -> dict[str, int]:
    """How many rows of each span name ``project`` has in the store."""
    names: dict[str, int] = {}
    with open_store(store, readonly=True) as reader:
        for row in reader.rows(project=project):
            name = row["span_attributes"]["name"]
            names[name] = names.get(name, 0) + 1
    return names


def probe(env: dict[str, str], name: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, name], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return float(out.stdout)


@dataclass
class Outcome:
    line: str  # the attack's row of the table
    counted: bool
    flood: str | None = None  # what the flood cost, for the flood


def attack_once(attack: Attack, endpoint: str, key: str | None, stats: Stats,
                sender_env: dict[str, str]) -> Outcome:
    """Send one attack from a new stranger and wait (at most 60 s) for the aggregator to
    count it: as expected without a key; with one, as a failed handshake, nothing read."""
    before = stats.counters()
    started = time.monotonic()
    stranger = Stranger(endpoint)
    messages, sent = stranger.send(attack.frames())
    flood = "made-up senders" in attack.name
    if key is not None:  # nothing may get through: refused at the handshake
        expect = {"handshakes_failed": 1}
    elif flood:  # as many as ZeroMQ took
        expect = {"senders_seen": messages, "senders_evicted": max(0, messages - MAX_SENDERS)}
    else:
        expect = attack.expect
    grew: dict[str, int] = {}

    def met() -> bool:
        now = stats.counters()
        grew.clear()
        grew.update({k: v - before.get(k, 0) for k, v in now.items()
                     if not k.startswith("_") and v != before.get(k, 0)})
        return all(grew.get(name, 0) >= n for name, n in expect.items())

    counted = wait_for(met, 60)
    read = time.monotonic()
    stranger.close()
    if key is not None:  # and nothing of it was read
        counted = counted and not any(grew.get(name) for name in READ_BY_ATTACKS)
    shown = ", ".join(f"{k} +{v:,}" for k, v in sorted(grew.items())
                      if k in expect or k in READ_BY_ATTACKS)
    line = (f"| {attack.name} | {messages:,}, {sent:,} | {shown or '-'} | "
            f"{'counted' if counted else 'NOT COUNTED'} |")
    if not flood:
        return Outcome(line, counted)
    during = stats.counters()
    time.sleep(2)  # a measurement of what the flood leaves behind, not a wait
    after = stats.counters()
    took = read - started
    cost = (f"aggregator CPU {(during['_cpu'] - before['_cpu']) / took:.0%} while it was sent "
            f"and read ({took:.1f} s), {(after['_cpu'] - during['_cpu']) / 2:.0%} in the 2 s "
            f"after; RSS {before['_rss'] / 2**20:.0f} -> {after['_rss'] / 2**20:.0f} MiB; a "
            f"100-span flush then took {probe(sender_env, 'probe after'):.3f} s")
    return Outcome(line, counted, cost)


def run(mode: str, flood: int) -> bool:
    """Attack an aggregator without a key (``plain``) or with one (``curve``) while a victim
    traces into it; print what happened; whether every check held."""
    workdir = tempfile.mkdtemp(prefix=f"attack-{mode}-")
    store = os.path.join(workdir, "traces.db")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = ["--bind", endpoint, "--store", store]
    key = None
    if mode == "curve":
        made = subprocess.run([sys.executable, "-m", "workers.cli", "keys",
                               os.path.join(workdir, "aggregator")], env=base_env(), cwd=ROOT,
                              capture_output=True, text=True, check=True)
        key = made.stdout.split("TRACER_AGGREGATOR_KEY='")[1].split("'")[0]
        args += ["--secret-key", os.path.join(workdir, "aggregator.key_secret")]
    agg_env = base_env(TRACER_MAX_MESSAGE_SIZE=str(MAX_MESSAGE_SIZE),
                       TRACER_FAILED_PUBLISH_PAYLOADS_DIR=os.path.join(workdir, "failed"))
    print(f"\n**{mode}**: aggregator on {endpoint}"
          f"{' with a secret key; the stranger has none' if key else ', no key'}\n")
    agg = Aggregator(workdir, args, agg_env)
    sender_env = base_env(TRACER_ENDPOINT=endpoint, **({"TRACER_AGGREGATOR_KEY": key}
                                                         if key else {}))
    stop_file = os.path.join(workdir, "stop")
    victim = stats = None
    ok = True
    try:
        if not wait_for(lambda: ask_stats(endpoint, 500, key) is not None, 30):
            raise RuntimeError(f"the aggregator did not start:\n{agg.log()}")
        stats = Stats(endpoint, key)
        before_flush = probe(sender_env, "probe before")
        seen = stats.counters().get("senders_seen", 0)
        victim = subprocess.Popen([sys.executable, "-c", VICTIM, stop_file], env=sender_env,
                                  stdout=subprocess.PIPE, text=True)
        if not wait_for(lambda: stats.counters().get("senders_seen", 0) > seen, 60):
            raise RuntimeError("the victim never sent anything")
        print("| attack | messages, bytes sent | counted | check |")
        print("|---|---:|---|---|")
        flood_cost = None
        for attack in attacks(flood):
            try:
                outcome = attack_once(attack, endpoint, key, stats, sender_env)
            except RuntimeError:  # it does not answer
                print(f"| {attack.name} | | the aggregator died: exit status "
                      f"{agg.proc.poll()} | FAIL |")
                ok = False
                return ok
            print(outcome.line)
            ok &= outcome.counted
            flood_cost = outcome.flood or flood_cost
        alive = agg.proc.poll() is None
        with open(stop_file, "w"):
            pass
        out, _ = victim.communicate(timeout=180)
        created, victim_flush = int(out.split()[0]), float(out.split()[1])
        rows, probes = stored(store, "real"), sum(stored(store, "probe").values())
        real, injected = rows.get("real span", 0), rows.get("INJECTED by a stranger", 0)
        print()
        print(f"- aggregator survived: {'yes' if alive else 'NO'}")
        print(f"- victim: {created:,} spans created, {real:,} stored, flush {victim_flush:.2f} s")
        print(f"- probes: {probes} of 200 spans stored; a 100-span flush took "
              f"{before_flush:.3f} s before the attacks")
        if flood_cost:
            print(f"- the flood: {flood_cost}")
        print(f"- rejected records set aside in FAILED_PUBLISH_PAYLOADS_DIR: "
              f"{stats.counters().get('payload_records_rejected', 0)}; log lines about "
              f"malformed messages: {agg.log().count('ignored a malformed message')}")
        print(f"- rows injected into 'real': {injected}"
              + (" (no key on loopback: local processes are trusted)" if key is None else ""))
        ok &= alive and created == real and probes == 200 and (key is None or injected == 0)
    finally:
        if victim is not None and victim.poll() is None:
            victim.kill()
        if stats is not None:
            stats.close()
        agg.stop()
        print(f"\n**{mode}: {'PASS' if ok else 'FAIL'}**: the aggregator survived, every "
              "legitimate span stored, every rejected input counted")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("both", "plain", "curve"), default="both")
    p.add_argument("--flood", type=int, default=100_000,
                   help="made-up senders in the flood (default: %(default)s)")
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="attack-")
    refused = wildcard_refused(workdir)
    print(f"`--bind tcp://*:PORT` without `--secret-key`: "
          f"{'refused' if refused else 'NOT REFUSED'}")
    ok = refused
    for mode in (("plain", "curve") if args.mode == "both" else (args.mode,)):
        ok &= run(mode, args.flood)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
