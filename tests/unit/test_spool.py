"""``workers.spool``: batches kept on a real file system while their destination is away: whole
or absent, private, bounded, in order, adopted from aggregators that are gone (real processes
holding and dropping real ``flock`` locks), and the spooling writer in front of a real
``HttpWriter`` whose server does not answer (a loopback port nobody listens on)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest

from tracer import wire
from workers.http_sink import HttpWriter
from workers.queue import Pending
from workers.rows import Container
from workers.spool import FORMAT, Spool, SpoolFull, SpoolingWriter

from ..conftest import ROOT, free_port

DESTINATION = "https://traces.example:8585"
LOGS = wire.logs_container("spool-test")


def rows(*names: str, **fields: object) -> list[tuple[str, dict]]:
    return [(LOGS, {"id": name, **fields}) for name in names]


def spooled(spool: Spool) -> list[list[str]]:
    """The row ids of each batch in the spool, oldest first (left where they are)."""
    out = []
    for file in list(spool._files):
        out.append([row["id"] for _, row in Spool.read(file)])
    return out


def drain(spool: Spool) -> list[list[str]]:
    """Every batch's row ids, oldest first, each removed once read."""
    out = []
    while (file := spool.first()) is not None:
        out.append([row["id"] for _, row in Spool.read(file)])
        spool.remove(file)
    return out


def test_a_batch_is_read_back_as_it_was_written_bytes_and_nesting_included(tmp_path):
    spool = Spool(str(tmp_path / "spool"), DESTINATION, 0)
    batch = [(LOGS, {"id": "a", "input": {"deep": [1, {"x": b"\x00\xff"}]}, "output": "é"})]
    spool.append(batch)
    file = spool.first()
    assert file is not None
    assert Spool.read(file) == batch


def test_batches_come_out_oldest_first_and_each_is_gone_once_removed(tmp_path):
    spool = Spool(str(tmp_path / "spool"), DESTINATION, 0)
    for names in (["a", "b"], ["c"], ["d", "e"]):
        spool.append(rows(*names))
    assert drain(spool) == [["a", "b"], ["c"], ["d", "e"]]
    assert spool.state()["batches"] == 0 and spool.state()["bytes"] == 0
    assert not [n for _, _, names in os.walk(tmp_path) for n in names if n.endswith(".batch")]


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_spools_files_are_private_and_its_directories_too_whatever_the_umask(tmp_path,
                                                                                  umask):
    old = os.umask(umask)
    try:
        spool = Spool(str(tmp_path / "a" / "spool"), DESTINATION, 0)
        spool.append(rows("a"))
    finally:
        os.umask(old)
    for directory, _dirs, names in os.walk(tmp_path / "a"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        for name in names:
            path = os.path.join(directory, name)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_a_batch_that_does_not_fit_is_refused_as_full_and_leaves_nothing_behind(tmp_path):
    spool = Spool(str(tmp_path / "spool"), DESTINATION, 600)
    spool.append(rows("a", output="x" * 100))
    before = spool.state()
    with pytest.raises(SpoolFull, match="TRACER_SPOOL_MAX_BYTES"):
        spool.append(rows("b", output="x" * 1000))
    assert spool.state()["bytes"] == before["bytes"] and spool.state()["batches"] == 1
    assert drain(spool) == [["a"]]


def test_the_state_tells_the_bytes_the_batches_and_the_oldest_batchs_age(tmp_path):
    spool = Spool(str(tmp_path / "spool"), DESTINATION, 1 << 20)
    assert spool.state()["oldest_age"] is None
    spool.append(rows("a"))
    spool.append(rows("b", "c"))
    state = spool.state()
    sizes = sum(f.size for f in spool._files)
    assert state["batches"] == 2 and state["bytes"] == sizes > 0
    assert state["max_bytes"] == 1 << 20
    assert 0 <= state["oldest_age"] < 3600


# Another aggregator, in a process of its own: spools batches for DESTINATION into DIRECTORY,
# then dies without letting go (os._exit), or waits for its standard input to close.
OTHER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from workers.spool import Spool
    spool = Spool(sys.argv[2], sys.argv[3], 0)
    for name in sys.argv[5].split(","):
        spool.append([("L\\x1fspool-test", {"id": name})])
    print("spooled", flush=True)
    if sys.argv[4] == "die":
        os._exit(0)
    sys.stdin.read()
""")


def other_aggregator(directory: str, names: str, destination: str = DESTINATION,
                     how: str = "die") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", OTHER, ROOT, directory, destination, how,
                             names], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "spooled"
    return proc


def test_a_spool_left_by_an_aggregator_that_died_is_adopted_and_drained_before_new_batches(
        tmp_path):
    directory = str(tmp_path / "spool")
    other_aggregator(directory, "old1,old2").wait(30)
    spool = Spool(directory, DESTINATION, 0)
    spool.append(rows("new"))  # before adoption: it still goes behind what was left
    assert spool.adopt() == 2
    assert drain(spool) == [["old1"], ["old2"], ["new"]]
    spool.close()
    assert os.listdir(directory) == [], "an adopted segment, drained, is removed"


def test_the_spool_of_an_aggregator_still_running_is_not_taken(tmp_path):
    directory = str(tmp_path / "spool")
    proc = other_aggregator(directory, "theirs", how="wait")
    try:
        spool = Spool(directory, DESTINATION, 0)
        assert spool.adopt() == 0
        assert spool.first() is None
    finally:
        proc.communicate("", timeout=30)
    assert spool.adopt() == 1, "once it is gone, its batches are the next one's to send"


def test_a_spool_left_for_another_destination_is_never_sent_here(tmp_path):
    directory = str(tmp_path / "spool")
    other_aggregator(directory, "elsewhere", destination="https://other.example").wait(30)
    spool = Spool(directory, DESTINATION, 0)
    assert spool.adopt() == 0
    assert Spool(directory, "https://other.example", 0).adopt() == 1


def test_a_batch_file_that_is_not_one_is_refused_by_name(tmp_path):
    spool = Spool(str(tmp_path / "spool"), DESTINATION, 0)
    spool.append(rows("a"))
    file = spool.first()
    assert file is not None
    with open(file.path, "wb") as f:
        f.write(b"\xc1 not msgpack")
    with pytest.raises(ValueError, match=r"\.batch: not a spooled batch"):
        Spool.read(file)
    spool.remove(file, set_aside=True)
    assert os.path.exists(file.path + ".bad") and spool.state()["batches"] == 0


def test_a_file_of_another_format_is_refused_rather_than_misread(tmp_path):
    import msgpack

    spool = Spool(str(tmp_path / "spool"), DESTINATION, 0)
    spool.append(rows("a"))
    file = spool.first()
    assert file is not None
    with open(file.path, "wb") as f:
        f.write(msgpack.packb([FORMAT + 1, [[LOGS, {"id": "a"}]]]))
    with pytest.raises(ValueError, match=f"format {FORMAT}"):
        Spool.read(file)


# -- the spooling writer, in front of a server that does not answer ---------------------------


def batch(*names: str) -> list[Pending]:
    container = Container(LOGS)
    return [Pending((container.id, name), {"id": name}, 10, 0, container) for name in names]


@pytest.fixture
def unreachable(tmp_path):
    """A SpoolingWriter whose HttpWriter's server refuses connections (nothing listens)."""
    url = f"http://127.0.0.1:{free_port()}"
    counters: Counter = Counter()
    writer = SpoolingWriter(HttpWriter(url, "a-key-for-tests"),
                            Spool(str(tmp_path / "spool"), url, 0), counters)
    yield writer, counters
    writer.stopping.set()
    writer.spool.close()


def test_a_batch_the_server_cannot_take_is_spooled_and_the_write_succeeds(unreachable):
    writer, counters = unreachable
    writer.write(batch("a", "b"))  # no exception: it is on disk, which counts as written
    assert spooled(writer.spool) == [["a", "b"]]
    assert counters["spool_batches_written"] == 1 and counters["spool_rows_written"] == 2
    assert counters["spool_direct_failures"] == 1


def test_while_the_spool_holds_batches_new_ones_go_behind_them_without_trying_the_server(
        unreachable):
    writer, counters = unreachable
    writer.write(batch("a"))
    requests = writer.inner.requests
    writer.write(batch("b"))
    writer.write(batch("c"))
    assert writer.inner.requests == requests
    assert spooled(writer.spool) == [["a"], ["b"], ["c"]]


def test_a_full_spool_fails_the_write_as_a_store_failure(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    writer = SpoolingWriter(HttpWriter(url), Spool(str(tmp_path / "spool"), url, 200),
                            Counter())
    with pytest.raises(SpoolFull) as caught:
        writer.write(batch(*[f"row-{i}" for i in range(50)]))
    assert writer.store_failed(caught.value)
    writer.spool.close()


def test_what_a_closed_writer_left_spooled_is_sent_first_by_the_next(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    first = SpoolingWriter(HttpWriter(url), Spool(str(tmp_path / "spool"), url, 0), Counter())
    first.write(batch("a"))
    first.close()  # the server never answered: the batch stays for the next one
    counters: Counter = Counter()
    second = SpoolingWriter(HttpWriter(url), Spool(str(tmp_path / "spool"), url, 0), counters)
    second.spool.adopt()
    second.write(batch("b"))
    assert spooled(second.spool) == [["a"], ["b"]]
    second.stopping.set()
    second.spool.close()


def test_the_spools_drain_thread_waits_between_tries_of_a_server_that_is_away(unreachable):
    writer, counters = unreachable
    writer.write(batch("a"))
    writer.start()
    deadline = time.monotonic() + 10
    while counters["spool_retries"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counters["spool_retries"] >= 2
    assert writer.thread.is_alive()
    assert spooled(writer.spool) == [["a"]], "nothing is lost while the server is away"
