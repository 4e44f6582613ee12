"""A fleet for real: Celery workers on three hosts, each with its own aggregator uploading over
HTTPS to one trace server on a fourth, the broker on a fifth and the publisher on a sixth
(network namespaces: tests/netns.py, tests/fleet.py). One trace holds every host's spans, and
neither a server killed mid-run nor a host cut off for a minute loses or duplicates a span."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from .fleet import SPANS_PER_TASK, WORKERS, Fleet, host_of
from .helpers import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    made = Fleet(str(tmp_path_factory.mktemp("fleet")))
    try:
        for name in WORKERS:
            made.start_worker(name)
        yield made
    finally:
        made.close()


def assert_whole(rows: list[dict], tasks: int) -> None:
    """Every span of a publish of ``tasks`` tasks stored once, ended, under one root."""
    ids = Counter(row["span_id"] for row in rows)
    assert not [i for i, n in ids.items() if n > 1], "a span stored twice"
    assert len(rows) == 1 + SPANS_PER_TASK * tasks, Counter(
        row["span_attributes"]["name"] for row in rows)
    roots = [row for row in rows if not row.get("span_parents")]
    assert len(roots) == 1 and roots[0]["span_attributes"]["name"] == "fleet-run"
    known = set(ids)
    assert all(set(row["span_parents"]) <= known for row in rows if row.get("span_parents"))


def task_spans(rows: list[dict]) -> list[dict]:
    """The spans of the tasks the workers ran (the publisher's root is a task span too)."""
    return [r for r in rows if r["span_attributes"]["name"] == "tracer_tests.slow"]


@pytest.mark.timeout(400)
def test_one_trace_holds_the_publisher_and_every_worker_host_each_row_naming_its_host(
        fleet) -> None:
    root = fleet.publish(tasks=24, seconds=0.2)
    rows = fleet.trace(root, 1 + SPANS_PER_TASK * 24)
    assert_whole(rows, 24)
    tasks = task_spans(rows)
    if fleet.fallback is None:
        assert {host_of(r) for r in tasks} == set(WORKERS)
        assert {host_of(r) for r in rows if r["span_attributes"]["name"] == "fleet-run"} == \
            {"publisher"}
    else:
        assert len({(r.get("origin") or {}).get("pid") for r in tasks}) >= 2
    assert all(host_of(r) for r in rows), "a row without its host"


@pytest.mark.timeout(600)
def test_the_server_killed_mid_run_and_restarted_stores_every_span_exactly_once(fleet) -> None:
    publisher = fleet.publish_in_background(tasks=40, seconds=0.25)
    wait_until(lambda: fleet.stored_rows() > 10, 120, "no rows reached the server")
    fleet.kill_server()
    # The publisher finishes during the outage: its flush returns once its rows are spooled,
    # and its aggregator, left without an owner, keeps trying to deliver them while it exits.
    assert publisher.wait(600) == 0, fleet.log("publisher")
    time.sleep(3)  # an outage, not a blip
    fleet.start_server()
    root = fleet.published_root()
    assert_whole(fleet.trace(root, 1 + SPANS_PER_TASK * 40), 40)


@pytest.mark.timeout(600)
def test_a_host_cut_off_from_the_server_for_a_minute_spools_and_delivers_everything_once(
        fleet) -> None:
    if fleet.net is None:
        pytest.skip(f"no network namespaces ({fleet.fallback}): a host cannot be cut off")
    worker, server = fleet.hosts["worker-1"], fleet.hosts["server"]
    fleet.net.block(worker, server)
    cut_at = time.monotonic()
    try:
        root = fleet.publish(tasks=20, seconds=0.1, queue="worker-1")  # its own queue
        stored = [r for r in fleet.rows(root) if host_of(r) == "worker-1"]
        assert stored == [], "worker-1 reached the server through the cut"
        time.sleep(max(0.0, 60 - (time.monotonic() - cut_at)))
    finally:
        fleet.net.unblock(worker, server)
    rows = fleet.trace(root, 1 + SPANS_PER_TASK * 20, timeout=180)
    assert_whole(rows, 20)
    assert {host_of(r) for r in task_spans(rows)} == {"worker-1"}


def test_a_wrong_api_key_is_a_clear_error_on_the_worker_counted_and_not_retried_forever(
        fleet) -> None:
    program = ("import tracer\n"
               "tracer.init_logger(project='fleet')\n"
               "with tracer.start_span(name='wrong-key'):\n    pass\n"
               "try:\n    tracer.flush()\n"
               "except tracer.FlushError as exc:\n    print('FLUSH-ERROR', exc)\n")
    started = time.monotonic()
    done = fleet.hosts["worker-3"].run(
        [sys.executable, "-c", program], timeout=120,
        env=fleet.env("worker-3-badkey", TRACER_API_KEY="not-the-key-at-all"))
    assert time.monotonic() - started < 110
    assert "FLUSH-ERROR" in done.stdout, done.stderr
    assert fleet.url in done.stdout
    assert "not-the-key-at-all" not in done.stdout + done.stderr
    assert "401" in done.stdout or "unauthorized" in done.stdout.lower()


@pytest.fixture
def throttled(tmp_path_factory) -> Iterator[Fleet]:
    made = Fleet(str(tmp_path_factory.mktemp("fleet-throttled")), ingest_queue=200)
    try:
        yield made
    finally:
        made.close()


SPANS = """
import tracer
tracer.init_logger(project="fleet")
with tracer.start_span(name="burst") as root:
    for i in range(3000):
        with root.start_span(name=f"s{i}") as span:
            span.log(output="x" * 200)
tracer.flush()
print(root.root_span_id, flush=True)
"""


@pytest.mark.timeout(600)
def test_uploaders_throttled_by_the_server_back_off_and_every_span_arrives(throttled) -> None:
    launched = []
    for name in WORKERS:
        with open(throttled.log_path(f"burst-{name}"), "wb") as log:
            launched.append(throttled.hosts[name].popen(
                [sys.executable, "-c", SPANS], env=throttled.env(name),
                cwd=throttled.directory, stdout=log))
    for process in launched:
        assert process.wait(300) == 0
    for name in WORKERS:
        root = throttled.log(f"burst-{name}").split()[-1]
        assert len(throttled.trace(root, 3001)) == 3001
    assert throttled.throttled() > 0, "the server never answered 429: the test proves nothing"
