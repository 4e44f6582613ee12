"""``workers.senders``: the table of senders stays bounded whatever senders claim to be."""

from __future__ import annotations

from collections import Counter

from workers import senders
from workers.rows import Container
from workers.senders import Senders

LOGS = Container("L\x1fproject")


def test_a_sender_heard_again_is_the_same_sender():
    table = Senders(Counter())

    assert table.heard("h", 1, 1) is table.heard("h", 1, 1)


def test_past_the_bound_the_least_recently_heard_sender_is_evicted():
    counters: Counter = Counter()
    table = Senders(counters, max_senders=2)
    table.heard("h", 1, 1)
    table.heard("h", 2, 1)
    table.heard("h", 1, 1)  # heard again: now the most recent

    table.heard("h", 3, 1)

    assert sorted(s.pid for s in table.snapshot()) == [1, 3]
    assert counters["senders_evicted"] == 1


def test_a_gap_is_counted_in_messages():
    counters: Counter = Counter()
    table = Senders(counters)
    sender = table.heard("h", 1, 1)
    table.numbered(sender, 1)

    table.numbered(sender, 4)

    assert (sender.gaps, counters["seq_gap_messages"]) == (2, 2)


def test_a_jump_no_loss_explains_is_counted_once_and_not_as_a_gap():
    counters: Counter = Counter()
    table = Senders(counters)
    sender = table.heard("h", 1, 1)
    table.numbered(sender, 1)

    table.numbered(sender, 2**62)

    assert (sender.gaps, counters["seq_jumps"]) == (0, 1)
    assert "seq_gap_messages" not in counters


def test_reported_counts_a_sender_could_have_made_are_added():
    counters: Counter = Counter()
    table = Senders(counters)

    table.reported(table.heard("h", 1, 1), {"dropped_queue_full": 3, "aggregator_restarts": 1})

    assert counters["senders_dropped_queue_full"] == 3
    assert counters["senders_aggregator_restarts"] == 1


def test_implausible_reported_counts_are_ignored_and_counted():
    counters: Counter = Counter()
    table = Senders(counters)

    table.reported(table.heard("h", 1, 1), {"lost": 10**18, "Not A Name": 1, "ok": -1})

    assert counters == Counter({"senders_seen": 1, "bad_sender_reports": 3})


def test_running_spans_are_kept_up_to_the_byte_bound_and_the_rest_counted():
    counters: Counter = Counter()
    table = Senders(counters, max_open_bytes=100)
    sender = table.heard("h", 1, 1)

    table.track_open(sender, ("c", "a"), LOGS, {"id": "a"}, 60)
    table.track_open(sender, ("c", "b"), LOGS, {"id": "b"}, 60)

    assert list(sender.open) == [("c", "a")]
    assert counters["open_spans_untracked"] == 1


def test_a_span_that_ends_frees_its_room():
    table = Senders(Counter(), max_open_bytes=100)
    sender = table.heard("h", 1, 1)
    table.track_open(sender, ("c", "a"), LOGS, {"id": "a"}, 60)

    table.ended(sender, ("c", "a"))
    table.track_open(sender, ("c", "b"), LOGS, {"id": "b"}, 60)

    assert list(sender.open) == [("c", "b")]
    assert table.open_bytes == 60


def test_a_forgotten_sender_frees_the_room_of_its_running_spans():
    table = Senders(Counter(), max_open_bytes=100)
    sender = table.heard("h", 1, 1)
    table.track_open(sender, ("c", "a"), LOGS, {"id": "a"}, 60)

    table.forget(("h", 1, 1))

    assert table.open_bytes == 0


def test_the_default_bounds_hold_a_fleet():
    assert senders.MAX_SENDERS >= 10_000
    assert senders.MAX_OPEN_BYTES >= 64 * 1024 * 1024
