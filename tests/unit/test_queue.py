"""``workers.queue``: rows received and not yet committed, merged by key, bounded, taken in
arrival order, with flush markers that finish once what was queued before them is committed.

``take`` is called only when a batch is due (``max_delay=0``: the oldest row is due at once),
or in a thread the test ends by closing the queue, so that no test waits on a clock.
"""

from __future__ import annotations

import threading

from workers.queue import Pending, RowQueue

CONTAINER = object()  # the queue carries the container along and never looks at it
SOON = 5.0  # seconds a thread's take() may need to return once the queue lets it


def key(name: str) -> tuple[str, str]:
    return ("container", name)


def put(queue: RowQueue, name: str, partial: dict | None = None, size: int = 10,
        may_drop: bool = False) -> bool:
    return queue.put(key(name), {"id": name} if partial is None else partial, size, CONTAINER,
                     may_drop)


def take_now(queue: RowQueue, max_rows: int = 100, max_bytes: int = 10**9) -> list[Pending]:
    batch = queue.take(max_rows, max_bytes, max_delay=0)
    assert batch is not None
    return batch


def ids(batch: list[Pending] | None) -> list[str]:
    assert batch is not None, "the queue was closed and empty"
    return [pending.key[1] for pending in batch]


class Taker:
    """``queue.take(...)`` in a thread, for takes that must wait."""

    def __init__(self, queue: RowQueue, max_rows: int = 100, max_delay: float = 60) -> None:
        self.batch: list[Pending] | None = None
        self.thread = threading.Thread(
            target=self._take, args=(queue, max_rows, max_delay), daemon=True)
        self.thread.start()

    def _take(self, queue: RowQueue, max_rows: int, max_delay: float) -> None:
        self.batch = queue.take(max_rows, 10**9, max_delay)

    def returned_within(self, seconds: float) -> bool:
        self.thread.join(seconds)
        return not self.thread.is_alive()


def assert_still_waiting(taker: Taker, queue: RowQueue) -> None:
    """``taker``'s take has not returned after 0.2 s (closing the queue then releases it)."""
    assert not taker.returned_within(0.2)
    queue.close()
    assert taker.returned_within(SOON)


# -- putting rows ----------------------------------------------------------------------------


def test_a_put_of_a_new_key_queues_one_row():
    queue = RowQueue()

    assert put(queue, "a") is True
    assert queue.depth() == 1


def test_puts_for_the_same_key_merge_into_one_row():
    queue = RowQueue()

    put(queue, "a", {"id": "a", "metadata": {"x": 1}, "output": "draft"})
    put(queue, "a", {"metadata": {"y": 2}, "output": "final"})

    (pending,) = take_now(queue)
    assert queue.depth() == 1  # in flight
    assert pending.row == {"id": "a", "metadata": {"x": 1, "y": 2}, "output": "final"}


def test_the_size_of_a_merged_row_is_the_sum_of_its_puts():
    queue = RowQueue()

    put(queue, "a", size=10)
    put(queue, "a", {"more": 1}, size=32)

    (pending,) = take_now(queue)
    assert pending.size == 42


def test_each_new_row_gets_the_next_sequence_number_and_merges_keep_theirs():
    queue = RowQueue()

    for name in ("a", "b", "a", "c"):
        put(queue, name)

    assert [pending.seq for pending in take_now(queue)] == [1, 2, 3]


def test_a_pending_row_carries_its_key_container_and_arrival_time():
    pending = Pending(key("a"), {"id": "a"}, 10, 1, CONTAINER, since=123.0)

    assert (pending.key, pending.container, pending.since) == (key("a"), CONTAINER, 123.0)


def test_put_many_returns_nothing_when_every_item_is_queued():
    queue = RowQueue()

    refused = queue.put_many([(key("a"), {}, 1, CONTAINER), (key("b"), {}, 1, CONTAINER)])

    assert refused == []
    assert queue.depth() == 2


def test_put_many_merges_items_with_the_same_key_among_themselves():
    queue = RowQueue()

    queue.put_many([(key("a"), {"x": 1}, 1, CONTAINER), (key("a"), {"y": 2}, 1, CONTAINER)])

    (pending,) = take_now(queue)
    assert pending.row == {"x": 1, "y": 2}


# -- the bound and the drop policy -----------------------------------------------------------


def test_an_unbounded_queue_is_never_full():
    queue = RowQueue(max_rows=0)

    for i in range(1000):
        put(queue, str(i))

    assert not queue.full()


def test_a_queue_is_full_once_it_holds_max_rows():
    queue = RowQueue(max_rows=2)

    put(queue, "a")
    assert not queue.full()
    put(queue, "b")
    assert queue.full()


def test_without_may_drop_a_full_queue_still_takes_a_new_row_over_the_bound():
    # The blocking policy is the aggregator's: it stops reading while the queue is full.
    queue = RowQueue(max_rows=1)
    put(queue, "a")

    assert put(queue, "b") is True
    assert queue.depth() == 2


def test_with_may_drop_a_full_queue_refuses_a_new_row():
    queue = RowQueue(max_rows=1)
    put(queue, "a")

    assert put(queue, "b", may_drop=True) is False
    assert queue.depth() == 1


def test_with_may_drop_a_full_queue_still_merges_into_a_row_it_holds():
    queue = RowQueue(max_rows=1)
    put(queue, "a", {"x": 1})

    assert put(queue, "a", {"y": 2}, may_drop=True) is True
    (pending,) = take_now(queue)
    assert pending.row == {"x": 1, "y": 2}


def test_put_many_returns_exactly_the_items_a_full_queue_refused():
    queue = RowQueue(max_rows=2)
    items = [(key(name), {"id": name}, 1, CONTAINER) for name in ("a", "b", "c", "a", "d")]

    refused = queue.put_many(items, may_drop=True)

    assert [item[0] for item in refused] == [key("c"), key("d")]
    assert queue.depth() == 2


def test_rows_in_flight_count_against_the_bound_until_done():
    queue = RowQueue(max_rows=2)
    put(queue, "a")
    put(queue, "b")
    take_now(queue, max_rows=1)

    assert queue.full()
    assert put(queue, "c", may_drop=True) is False
    queue.done()
    assert not queue.full()


# -- taking batches --------------------------------------------------------------------------


def test_a_batch_is_taken_oldest_first():
    queue = RowQueue()
    for name in ("c", "a", "b"):
        put(queue, name)

    assert ids(take_now(queue)) == ["c", "a", "b"]


def test_a_merge_keeps_the_row_in_its_first_arrival_position():
    queue = RowQueue()
    for name in ("a", "b", "a"):
        put(queue, name)

    assert ids(take_now(queue)) == ["a", "b"]


def test_a_batch_holds_at_most_max_rows():
    queue = RowQueue()
    for name in "abcde":
        put(queue, name)

    assert ids(take_now(queue, max_rows=2)) == ["a", "b"]
    queue.done()
    assert ids(take_now(queue, max_rows=2)) == ["c", "d"]


def test_a_batch_stops_before_the_row_that_would_take_it_over_max_bytes():
    queue = RowQueue()
    for name in "abc":
        put(queue, name, size=40)

    assert ids(take_now(queue, max_bytes=100)) == ["a", "b"]


def test_a_row_bigger_than_max_bytes_is_taken_alone():
    queue = RowQueue()
    put(queue, "huge", size=1000)
    put(queue, "small", size=1)

    assert ids(take_now(queue, max_bytes=100)) == ["huge"]


def test_a_batch_is_due_once_max_rows_are_waiting():
    queue = RowQueue()
    taker = Taker(queue, max_rows=2)

    put(queue, "a")
    put(queue, "b")

    assert taker.returned_within(SOON)
    assert ids(taker.batch) == ["a", "b"]


def test_a_batch_is_not_due_before_max_rows_or_max_delay():
    queue = RowQueue()
    put(queue, "a")
    taker = Taker(queue, max_rows=2, max_delay=60)

    assert_still_waiting(taker, queue)


def test_closing_hands_out_what_is_left_then_none():
    queue = RowQueue()
    put(queue, "a")
    queue.close()

    assert ids(queue.take(100, 10**9, max_delay=60)) == ["a"]
    queue.done()
    assert queue.take(100, 10**9, max_delay=60) is None


def test_a_take_waiting_on_an_empty_queue_returns_none_when_it_is_closed():
    queue = RowQueue()
    taker = Taker(queue)

    queue.close()

    assert taker.returned_within(SOON)
    assert taker.batch is None


# -- markers (flushes) -----------------------------------------------------------------------


def test_a_marker_with_nothing_ahead_of_it_is_done_at_once():
    assert RowQueue().mark("flush") == [("flush", None)]


def test_a_marker_is_done_once_every_row_queued_before_it_is_committed():
    queue = RowQueue()
    put(queue, "a")
    put(queue, "b")

    assert queue.mark("flush") == []
    take_now(queue, max_rows=1)
    assert queue.done() == []
    take_now(queue, max_rows=1)
    assert queue.done() == [("flush", None)]


def test_a_marker_does_not_wait_for_rows_queued_after_it():
    queue = RowQueue()
    put(queue, "a")
    queue.mark("flush")
    put(queue, "b")

    take_now(queue, max_rows=1)

    assert queue.done() == [("flush", None)]


def test_a_marker_waits_for_a_batch_in_flight():
    queue = RowQueue()
    put(queue, "a")
    take_now(queue)

    assert queue.mark("flush") == []
    assert queue.done() == [("flush", None)]


def test_markers_finish_in_the_order_they_were_placed():
    queue = RowQueue()
    put(queue, "a")
    queue.mark("first")
    queue.mark("second")

    take_now(queue)

    assert queue.done() == [("first", None), ("second", None)]


def test_a_marker_reports_a_batch_given_up_after_it_was_placed():
    queue = RowQueue()
    put(queue, "a")
    queue.mark("flush")

    take_now(queue)

    assert queue.done("the disk is full") == [("flush", "the disk is full")]


def test_a_marker_reports_the_last_three_failures_joined():
    queue = RowQueue()
    for name in "abcd":
        put(queue, name)
    queue.mark("flush")

    for error in ("one", "two", "three"):
        take_now(queue, max_rows=1)
        assert queue.done(error) == []
    take_now(queue, max_rows=1)

    assert queue.done("four") == [("flush", "two; three; four")]


def test_a_marker_placed_after_a_failure_does_not_report_it():
    queue = RowQueue()
    put(queue, "a")
    put(queue, "b")
    queue.mark("before")
    take_now(queue, max_rows=1)
    queue.done("lost a")
    queue.mark("after")

    take_now(queue, max_rows=1)

    assert queue.done() == [("before", "lost a"), ("after", None)]


def test_an_urgent_marker_makes_a_batch_due_at_once():
    queue = RowQueue()
    put(queue, "a")
    taker = Taker(queue, max_rows=100, max_delay=60)

    queue.mark("flush", urgent=True)

    assert taker.returned_within(SOON)
    assert ids(taker.batch) == ["a"]


def test_a_marker_that_is_not_urgent_waits_like_the_rows():
    queue = RowQueue()
    put(queue, "a")
    taker = Taker(queue, max_rows=100, max_delay=60)

    queue.mark("commit notice", urgent=False)

    assert_still_waiting(taker, queue)


# -- holding rows for a flush (SYNC_FLUSH) ---------------------------------------------------


def test_a_holding_queue_keeps_rows_past_max_rows_and_max_delay():
    queue = RowQueue(hold=True)
    put(queue, "a")
    put(queue, "b")
    taker = Taker(queue, max_rows=1, max_delay=0.01)

    assert_still_waiting(taker, queue)


def test_a_holding_queue_hands_rows_out_on_a_flush():
    queue = RowQueue(hold=True)
    put(queue, "a")
    taker = Taker(queue, max_rows=1, max_delay=60)

    queue.mark("flush")

    assert taker.returned_within(SOON)
    assert ids(taker.batch) == ["a"]


def test_a_holding_queue_hands_rows_out_once_it_is_full():
    queue = RowQueue(max_rows=2, hold=True)
    put(queue, "a")
    put(queue, "b")

    taker = Taker(queue, max_rows=100, max_delay=60)

    assert taker.returned_within(SOON)
    assert ids(taker.batch) == ["a", "b"]
