"""The one mapping between our ids and W3C trace context's (tracer/w3c.py)."""

from __future__ import annotations

import pytest

from tracer import w3c, wire


def test_our_ids_round_trip_through_w3c_exactly() -> None:
    trace, span, root = 0x0123456789ABCDEF, 0x1111222233334444, 0x5555666677778888
    trace_id, span_id = w3c.to_w3c(trace, span, root)
    assert w3c.from_w3c(trace_id, span_id) == (trace, span, root)


def test_the_w3c_trace_id_is_the_bits_of_the_root_span_id() -> None:
    trace, span, root = 7, 9, 8
    trace_id, span_id = w3c.to_w3c(trace, span, root)
    assert f"{trace_id:032x}" == wire.format_id(trace, root).replace("-", "")
    assert span_id == span


def test_row_ids_and_back() -> None:
    span_id, root_span_id = w3c.row_ids(0xABCDEF << 64 | 0x42, 0x99)
    assert w3c.from_row_ids(span_id, root_span_id) == (0xABCDEF << 64 | 0x42, 0x99)


def test_row_ids_of_two_traces_are_refused() -> None:
    with pytest.raises(ValueError, match="not of one trace"):
        w3c.from_row_ids(wire.format_id(1, 2), wire.format_id(3, 4))


def test_a_traceparent_round_trips() -> None:
    header = w3c.format_traceparent(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    assert header == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert w3c.parse_traceparent(header) == (0x4BF92F3577B34DA6A3CE929D0E0E4736,
                                             0x00F067AA0BA902B7, 1)


@pytest.mark.parametrize("value", [
    None, 42, "", "garbage",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 with more
    "00-" + "a" * 600,
])
def test_an_invalid_traceparent_is_none(value: object) -> None:
    assert w3c.parse_traceparent(value) is None


def test_a_later_version_may_carry_more_fields() -> None:
    value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more"
    assert w3c.parse_traceparent(value) == (0x4BF92F3577B34DA6A3CE929D0E0E4736,
                                            0x00F067AA0BA902B7, 0)
