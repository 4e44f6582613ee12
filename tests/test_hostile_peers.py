"""What anyone who can reach a standalone aggregator can send it, and what it does about it: a
real ``tracer aggregator`` on loopback, crafted frames from a raw ZeroMQ DEALER socket ("the
stranger"), and a real traced process whose spans must all be stored.

- Decoding is bounded: nested snapshots, strings that are not UTF-8, extension types we never
  send, messages over the size limit cost only themselves.
- Every record is checked before it joins a batch: an invalid one is rejected, counted against
  its sender and set aside, never costing another row.
- Senders cannot grow the sender table, the gap count or the log without bound.
- With a secret key (CURVE), a peer without the public key cannot deliver a frame; a bind
  beyond loopback needs a key.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import zlib
from collections.abc import Iterator

import msgpack
import pytest
import zmq

from tracer import wire
from tracer.stats_client import ask_stats

from . import programs
from .conftest import (
    CLI,
    Service,
    StandaloneAggregator,
    Store,
    clean_env,
    free_port,
    run_cli,
    run_function,
)
from .helpers import wait_until

HOST = socket.gethostname()


class Stranger:
    """A raw DEALER connected to ``endpoint`` (a CURVE client of ``server_key`` if given, with a
    key pair of its own): it sends whatever it is told."""

    def __init__(self, endpoint: str, server_key: bytes | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 5000)
        if server_key is not None:
            public, secret = zmq.curve_keypair()
            self.sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            self.sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            self.sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.events = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.sock.connect(endpoint)

    def send(self, header: bytes, body: bytes = b"") -> None:
        self.sock.send_multipart([header, body])

    def wait_for(self, event: int, timeout: float = 10) -> None:
        """Wait for the connection to be opened (EVENT_CONNECTED) or closed."""
        while self.events.poll(int(timeout * 1000)):
            if int.from_bytes(self.events.recv_multipart()[0][:2], "little") == event:
                return
        raise AssertionError(f"no socket event {event} within {timeout} s")

    def close(self) -> None:
        self.sock.disable_monitor()
        self.events.close(linger=0)
        self.sock.close()  # lingers: what was sent goes out first
        self.ctx.term()


@pytest.fixture
def stranger(standalone_aggregator) -> Iterator[Stranger]:
    peer = Stranger(standalone_aggregator.endpoint)
    yield peer
    peer.close()


def header(kind: int, seq: int = 1, arg: object = 1, host: str = "stranger", pid: int = 4242,
           gen: int = 7) -> bytes:
    return msgpack.packb([wire.VERSION, kind, host, pid, gen, seq, arg])


def record(name: str, fields: dict | None = None, project: str = "stranger",
           span: int | None = None) -> bytes:
    span = span if span is not None else zlib.crc32(name.encode()) + 1
    return msgpack.packb(wire.span_end(wire.logs_container(project), 1, span, None, span, None,
                                       name, None, 1.0, 2.0, fields, None))


def snapshot_nested(depth: int) -> msgpack.ExtType:
    value = msgpack.packb("deep")
    for _ in range(depth - 1):
        value = msgpack.packb(msgpack.ExtType(wire.SNAPSHOT, value))
    return msgpack.ExtType(wire.SNAPSHOT, value)


def counters(aggregator: StandaloneAggregator, key: str | None = None) -> dict:
    stats = ask_stats(aggregator.endpoint, 5000, key)
    assert stats is not None, f"the aggregator does not answer:\n{aggregator.log()}"
    return stats


def counted(aggregator: StandaloneAggregator, name: str, at_least: int = 1,
            key: str | None = None) -> int:
    """Wait until the aggregator's counter ``name`` reaches ``at_least``; return it."""
    return wait_until(lambda: (n := counters(aggregator, key)["counters"].get(name, 0))
                      >= at_least and n, 30,
                      lambda: f"{name} never reached {at_least}: {counters(aggregator, key)}")


def names(store: str, project: str) -> set[str]:
    """The span names of ``project`` stored so far (none before the store is made)."""
    if not os.path.exists(store):
        return set()
    with Store(store) as reader:
        return {row["span_attributes"]["name"] for row in reader.rows(project=project)}


def log_spans(aggregator: StandaloneAggregator, project: str, n: int,
              key: str | None = None) -> None:
    """A real process logs ``n`` spans to the aggregator and flushes them."""
    env = clean_env(TRACER_ENDPOINT=aggregator.endpoint)
    if key is not None:
        env["TRACER_AGGREGATOR_KEY"] = key
    run_function(programs.logs_spans_over_tcp, project, n, env=env)


# -- decoding is bounded ---------------------------------------------------------------------


def test_a_record_of_300_nested_snapshots_is_rejected_and_the_aggregator_lives_on(
        standalone_aggregator, stranger):
    stranger.send(header(wire.DATA), record("nested", {"output": snapshot_nested(300)}))

    assert counted(standalone_aggregator, "bad_record_undecodable") == 1
    log_spans(standalone_aggregator, "victim", 20)
    assert len(names(standalone_aggregator.store, "victim")) == 20


@pytest.mark.parametrize("bad", [
    pytest.param(record("AAAA").replace(b"AAAA", b"\xff\xfe\xfd\xfc"), id="not-utf8"),
    pytest.param(record("ext", {"output": msgpack.ExtType(42, b"?")}), id="unknown-extension"),
    pytest.param(record("deep", {"output": snapshot_nested(wire.MAX_SNAPSHOT_DEPTH + 1)}),
                 id="snapshots-too-deep"),
])
def test_a_record_that_cannot_be_decoded_costs_only_itself(standalone_aggregator, stranger, bad):
    stranger.send(header(wire.DATA), record("before") + bad + record("after"))

    assert counted(standalone_aggregator, "records", 3)
    assert counted(standalone_aggregator, "bad_record_undecodable") == 1
    wait_until(lambda: names(standalone_aggregator.store, "stranger") == {"before", "after"},
               10, lambda: f"stored: {names(standalone_aggregator.store, 'stranger')}")


def test_a_record_nested_deeper_than_the_store_can_hold_costs_no_other_row(
        standalone_aggregator, stranger):
    inner: object = "bottom"  # 600 levels in each of two snapshots: each one decodes
    for _ in range(600):
        inner = [inner]
    outer: object = msgpack.ExtType(wire.SNAPSHOT, msgpack.packb(inner))
    for _ in range(600):
        outer = [outer]
    deep = record("deep", {"output": msgpack.ExtType(wire.SNAPSHOT, msgpack.packb(outer))})
    stranger.send(header(wire.DATA), record("before") + deep + record("after"))

    wait_until(lambda: names(standalone_aggregator.store, "stranger") == {"before", "after"},
               10, lambda: f"stored: {names(standalone_aggregator.store, 'stranger')}")
    assert counted(standalone_aggregator, "bad_record_too_deep") == 1


def test_a_message_over_the_size_limit_is_not_read_and_shows_as_a_gap(tmp_path):
    with StandaloneAggregator(str(tmp_path / "limited.db"), str(tmp_path / "aggregator.log"),
                              env={"TRACER_MAX_MESSAGE_SIZE": "65536"}) as aggregator:
        stranger = Stranger(aggregator.endpoint)
        try:
            stranger.wait_for(zmq.EVENT_CONNECTED)
            stranger.send(header(wire.DATA, seq=1), record("first"))
            stranger.send(header(wire.DATA, seq=2),
                          record("too big", {"input": "x" * 100_000}))
            stranger.wait_for(zmq.EVENT_DISCONNECTED)  # the aggregator closed the connection
            stranger.wait_for(zmq.EVENT_CONNECTED)  # and ZeroMQ opened another
            stranger.send(header(wire.DATA, seq=3), record("third"))
            assert counted(aggregator, "seq_gap_messages") == 1
        finally:
            stranger.close()
        wait_until(lambda: names(aggregator.store, "stranger") == {"first", "third"}, 10,
                   lambda: f"stored: {names(aggregator.store, 'stranger')}")


# -- every record is checked before it joins a batch -----------------------------------------


BOOM = record("boom", {"metrics": "boom"})


def test_a_record_with_metrics_that_are_not_numbers_costs_no_other_row(
        standalone_aggregator, stranger):
    stranger.send(header(wire.DATA), record("before") + BOOM + record("after"))
    log_spans(standalone_aggregator, "victim", 200)  # rows in the same batches

    assert len(names(standalone_aggregator.store, "victim")) == 200
    wait_until(lambda: names(standalone_aggregator.store, "stranger") == {"before", "after"},
               10, lambda: f"stored: {names(standalone_aggregator.store, 'stranger')}")
    assert counted(standalone_aggregator, "bad_record_fields") == 1


def test_a_rejected_record_is_counted_against_its_sender_and_set_aside(tmp_path):
    failed = tmp_path / "failed"
    with StandaloneAggregator(str(tmp_path / "s.db"), str(tmp_path / "aggregator.log"),
                              env={"TRACER_FAILED_PUBLISH_PAYLOADS_DIR": str(failed)}
                              ) as aggregator:
        stranger = Stranger(aggregator.endpoint)
        stranger.send(header(wire.DATA, pid=4343), BOOM)
        stranger.close()
        counted(aggregator, "bad_records")
        assert counters(aggregator)["senders_rejected"] == {"stranger:4343": 1}
    kept = [f for f in os.listdir(failed) if f.endswith("-rejected.msgpack")]
    assert [(failed / f).read_bytes() for f in kept] == [BOOM]


@pytest.mark.parametrize("fields", [
    pytest.param({"scores": {"accuracy": 7}}, id="score-outside-0-1"),
    pytest.param({"tags": "not a list"}, id="tags-not-a-list"),
    pytest.param({"metadata": {1: "int key"}}, id="metadata-key-not-a-string"),
    pytest.param({"span_attributes": {"name": 5}}, id="a-field-the-api-never-logs"),
])
def test_a_record_with_a_field_the_api_would_refuse_is_rejected(
        standalone_aggregator, stranger, fields):
    stranger.send(header(wire.DATA), record("bad", fields) + record("good"))

    assert counted(standalone_aggregator, "bad_record_fields") == 1
    wait_until(lambda: names(standalone_aggregator.store, "stranger") == {"good"}, 10)


def test_a_record_with_a_negative_span_id_is_rejected(standalone_aggregator, stranger):
    stranger.send(header(wire.DATA), record("negative id", span=-1) + record("good"))

    assert counted(standalone_aggregator, "bad_record_ids") == 1
    wait_until(lambda: names(standalone_aggregator.store, "stranger") == {"good"}, 10)


# -- senders cannot grow what the aggregator keeps ------------------------------------------


def test_made_up_senders_beyond_the_bound_evict_the_least_recently_heard(
        standalone_aggregator, stranger):
    from workers.senders import MAX_SENDERS

    for pid in range(1, MAX_SENDERS + 501):
        stranger.send(header(wire.DATA, host="made-up", pid=pid))

    assert counted(standalone_aggregator, "senders_evicted", 500) == 500
    assert counters(standalone_aggregator)["live_senders"] == MAX_SENDERS
    log_spans(standalone_aggregator, "victim", 20)
    assert len(names(standalone_aggregator.store, "victim")) == 20


def test_one_message_cannot_inflate_the_gap_count(standalone_aggregator, stranger):
    stranger.send(header(wire.DATA, seq=1))
    stranger.send(header(wire.DATA, seq=2**62))

    assert counted(standalone_aggregator, "seq_jumps") == 1
    assert "seq_gap_messages" not in counters(standalone_aggregator)["counters"]


def test_a_report_of_implausible_counts_is_ignored(standalone_aggregator, stranger):
    stranger.send(header(wire.DATA, arg=[0, {"dropped_queue_full": 10**18}]))

    assert counted(standalone_aggregator, "bad_sender_reports") == 1
    assert "senders_dropped_queue_full" not in counters(standalone_aggregator)["counters"]


def test_malformed_messages_are_each_counted_but_logged_once_in_a_while(
        standalone_aggregator, stranger):
    for _ in range(1000):
        stranger.send(header(wire.SYNC, arg="not [token, level]"))

    assert counted(standalone_aggregator, "bad_messages", 1000) == 1000
    assert standalone_aggregator.log().count("ignored a malformed message") == 1


def test_a_header_claiming_a_pid_that_cannot_exist_is_refused(standalone_aggregator, stranger):
    stranger.send(header(wire.DATA, host=HOST, pid=-1))

    assert counted(standalone_aggregator, "bad_messages") == 1
    log_spans(standalone_aggregator, "victim", 20)  # after supervision turns that saw it
    assert len(names(standalone_aggregator.store, "victim")) == 20


# -- CURVE: only holders of the public key deliver a frame ------------------------------------


@pytest.fixture
def keys(tmp_path) -> tuple[str, str]:
    """A key pair made by ``tracer keys``: (secret key file, public key)."""
    made = run_cli("keys", str(tmp_path / "agg"))
    assert made.returncode == 0, made.stderr
    return str(tmp_path / "agg.key_secret"), made.stdout.split("TRACER_AGGREGATOR_KEY='")[1][:40]


@pytest.fixture
def curve_aggregator(tmp_path, keys) -> Iterator[StandaloneAggregator]:
    with StandaloneAggregator(str(tmp_path / "curve.db"), str(tmp_path / "aggregator.log"),
                              args=("--secret-key", keys[0])) as aggregator:
        yield aggregator


@pytest.mark.parametrize("stranger_key", [None, "another"], ids=["no-key", "another-key"])
def test_a_peer_without_the_public_key_cannot_deliver_a_frame(curve_aggregator, keys,
                                                              stranger_key):
    key = zmq.curve_keypair()[0] if stranger_key else None
    stranger = Stranger(curve_aggregator.endpoint, key)
    stranger.send(header(wire.DATA), record("INJECTED", project="victim"))
    try:
        counted(curve_aggregator, "handshakes_failed", key=keys[1])
    finally:
        stranger.close()
    log_spans(curve_aggregator, "victim", 20, key=keys[1])

    assert "INJECTED" not in names(curve_aggregator.store, "victim")
    # Each span of the real process is two records (its log and its end): nothing else came.
    assert counters(curve_aggregator, keys[1])["counters"]["records"] == 20 * 2


def test_spawned_pool_workers_reach_an_aggregator_with_a_secret_key_given_as_an_argument(
        curve_aggregator, keys):
    run_function(programs.maps_over_a_spawned_pool_with_the_key_as_an_argument,
                 curve_aggregator.endpoint, keys[1], env=clean_env())

    # The parent span, and 4 tasks of two spans each, from the workers.
    assert len(names(curve_aggregator.store, "spawned")) == 1 + 2
    with Store(curve_aggregator.store) as reader:
        assert len(list(reader.rows(project="spawned"))) == 1 + 4 * 2


def test_tracer_stats_asks_an_aggregator_with_a_secret_key_given_its_public_key(
        curve_aggregator, keys):
    out = run_cli("stats", "--endpoint", curve_aggregator.endpoint, "--json",
                  env=clean_env(TRACER_AGGREGATOR_KEY=keys[1]))

    assert out.returncode == 0, out.stderr
    assert f'"endpoint": "{curve_aggregator.endpoint}"' in out.stdout


def test_tracer_keys_makes_a_secret_key_file_only_its_owner_can_read(tmp_path, keys):
    assert stat.S_IMODE(os.stat(keys[0]).st_mode) == 0o600
    assert keys[1] in (tmp_path / "agg.key").read_text()
    assert "secret-key" not in (tmp_path / "agg.key").read_text()


def test_an_aggregator_refuses_a_secret_key_file_others_can_read(tmp_path, keys):
    os.chmod(keys[0], 0o644)
    proc = subprocess.run([*CLI, "aggregator", "--bind", f"tcp://127.0.0.1:{free_port()}",
                           "--store", str(tmp_path / "s.db"), "--secret-key", keys[0]],
                          env=clean_env(), capture_output=True, text=True, timeout=60)

    assert proc.returncode == 2
    assert "readable by other users" in proc.stderr


def test_an_aggregator_bound_beyond_loopback_refuses_to_start_without_a_secret_key(tmp_path):
    proc = subprocess.run([*CLI, "aggregator", "--bind", f"tcp://*:{free_port()}", "--store",
                           str(tmp_path / "s.db")], env=clean_env(), capture_output=True,
                          text=True, timeout=60)

    assert proc.returncode == 2
    assert "--secret-key" in proc.stderr


def test_an_aggregator_bound_beyond_loopback_with_insecure_warns(tmp_path):
    with Service("the insecure aggregator",
                 [*CLI, "aggregator", "--bind", f"tcp://*:{free_port()}", "--store",
                  str(tmp_path / "s.db"), "--insecure"],
                 str(tmp_path / "aggregator.log"), clean_env()) as aggregator:
        wait_until(lambda: "listening on" in aggregator.log(), 30, aggregator.log)
        assert "WARNING: listening on tcp://*" in aggregator.log()
