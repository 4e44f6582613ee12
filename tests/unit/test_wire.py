"""``tracer.wire``, the format between recorders and the aggregator: no socket, no process."""

from __future__ import annotations

import json

import msgpack
import pytest

from tracer import wire

SENDER = ("host-a", 4242, 7)


# -- headers and replies ---------------------------------------------------------------------


def test_a_header_is_version_kind_sender_seq_and_arg_in_that_order():
    header = wire.header(wire.SYNC, SENDER, 12, [99, wire.COMMITTED])

    assert msgpack.unpackb(header) == [wire.VERSION, wire.SYNC, "host-a", 4242, 7, 12,
                                       [99, wire.COMMITTED]]


@pytest.mark.parametrize("fields", [
    pytest.param({"pid": -1}, id="negative-pid"),
    pytest.param({"pid": 2**31}, id="pid-over-a-c-int"),
    pytest.param({"pid": True}, id="boolean-pid"),
    pytest.param({"gen": -1}, id="negative-gen"),
    pytest.param({"seq": -1}, id="negative-seq"),
    pytest.param({"host": "h" * 256}, id="host-over-255"),
])
def test_unpack_header_rejects_a_sender_that_cannot_exist(fields):
    header = dict(version=wire.VERSION, kind=wire.DATA, host="h", pid=1, gen=1, seq=1, arg=0)
    header.update(fields)

    with pytest.raises(ValueError, match="malformed sender"):
        wire.unpack_header(msgpack.packb(list(header.values())))


def test_unpack_header_rejects_a_frame_too_large_to_be_a_header_without_decoding_it():
    with pytest.raises(ValueError, match="header of"):
        wire.unpack_header(b"\x90" * (wire.MAX_HEADER_BYTES + 1))


def test_a_header_without_arg_carries_none():
    assert msgpack.unpackb(wire.header(wire.BYE, SENDER, 3))[-1] is None


def test_a_reply_round_trips_through_unpack_reply():
    packed = wire.reply(wire.STATS_REPLY, 5, {"records": 3}, first_seq=1)

    assert wire.unpack_reply(packed) == (wire.STATS_REPLY, 5, {"records": 3}, 1)


def test_a_reply_defaults_to_no_payload_and_first_seq_0():
    assert wire.unpack_reply(wire.reply(wire.ACK, 8)) == (wire.ACK, 8, None, 0)


def test_unpack_reply_rejects_bytes_that_are_not_msgpack():
    with pytest.raises(ValueError, match="undecodable reply"):
        wire.unpack_reply(b"\xc1 not msgpack")


def test_unpack_reply_rejects_a_truncated_reply():
    with pytest.raises(ValueError, match="undecodable reply"):
        wire.unpack_reply(wire.reply(wire.ACK, 1)[:-1])


def test_unpack_reply_rejects_another_wire_version():
    packed = msgpack.packb([wire.VERSION + 1, wire.ACK, 1, None, 0])

    with pytest.raises(ValueError, match="not a reply of this wire version"):
        wire.unpack_reply(packed)


@pytest.mark.parametrize("obj", [[wire.VERSION, wire.ACK, 1, None], {"kind": wire.ACK}, 1],
                         ids=["four-elements", "a-map", "an-int"])
def test_unpack_reply_rejects_msgpack_of_another_shape(obj):
    with pytest.raises(ValueError, match="not a reply of this wire version"):
        wire.unpack_reply(msgpack.packb(obj))


def test_a_header_is_not_a_reply():
    with pytest.raises(ValueError):
        wire.unpack_reply(wire.header(wire.DATA, SENDER, 1, 0))


# -- ids -------------------------------------------------------------------------------------


def test_format_id_writes_trace_and_span_as_one_uuid_shaped_string():
    assert wire.format_id(0x0123456789ABCDEF, 0xFEDCBA9876543210) == \
        "01234567-89ab-cdef-fedc-ba9876543210"


def test_format_id_pads_small_ids_with_zeros():
    assert wire.format_id(1, 2) == "00000000-0000-0001-0000-000000000002"


@pytest.mark.parametrize("trace, span", [(0, 0), (1, 2**64 - 1), (2**64 - 1, 1),
                                         (0x0123456789ABCDEF, 0xFEDCBA9876543210)])
def test_parse_id_reads_back_what_format_id_wrote(trace, span):
    assert wire.parse_id(wire.format_id(trace, span)) == (trace, span)


def test_format_id_stays_right_for_more_traces_than_it_caches():
    traces = range(1, 5000 * 7919, 7919)  # 5,000 distinct traces, more than the cache holds

    assert all(wire.parse_id(wire.format_id(trace, trace + 1)) == (trace, trace + 1)
               for trace in traces)


@pytest.mark.parametrize("text", ["", "01234567-89ab-cdef-fedc-ba987654321",
                                  "01234567-89ab-cdef-fedc-ba98765432100"],
                         ids=["empty", "one-digit-short", "one-digit-long"])
def test_parse_id_rejects_a_text_of_the_wrong_length_naming_it(text):
    with pytest.raises(ValueError, match="not a span id"):
        wire.parse_id(text)


def test_parse_id_rejects_a_text_that_is_not_hexadecimal():
    with pytest.raises(ValueError):
        wire.parse_id("0123456z-89ab-cdef-fedc-ba9876543210")


# -- container keys --------------------------------------------------------------------------


def test_a_logs_container_key_is_l_and_the_project():
    assert wire.logs_container("my project") == "L\x1fmy project"


def test_an_experiment_container_key_is_e_project_id_and_name():
    assert wire.experiment_container("proj", "exp-id", "exp name") == \
        "E\x1fproj\x1fexp-id\x1fexp name"


def test_split_container_reads_back_a_logs_key():
    assert wire.split_container(wire.logs_container("proj")) == (wire.PROJECT_LOGS, "proj")


def test_split_container_reads_back_an_experiment_key():
    key = wire.experiment_container("proj", "exp-id", "exp name")

    assert wire.split_container(key) == (wire.EXPERIMENT, "proj", "exp-id", "exp name")


@pytest.mark.parametrize("key", ["", "L", "L\x1fa\x1fb", "E\x1fproj\x1fid", "X\x1fproj",
                                 wire.logs_container("has\x1fseparator")],
                         ids=["empty", "kind-only", "logs-with-three-parts",
                              "experiment-with-three-parts", "unknown-kind",
                              "project-name-with-the-separator"])
def test_split_container_rejects_a_malformed_key_naming_it(key):
    with pytest.raises(ValueError, match="malformed container key"):
        wire.split_container(key)


def test_an_experiment_is_stored_under_exp_and_its_id():
    assert wire.experiment_store_id("1234") == "exp:1234"


# -- a span's input --------------------------------------------------------------------------


def test_an_input_without_parameter_names_is_the_value_itself():
    assert wire.unpack_input((None, {"question": "why?"})) == {"question": "why?"}


def test_an_input_with_parameter_names_binds_the_arguments_to_them():
    assert wire.unpack_input((("a", "b"), ((1, 2), {}))) == {"a": 1, "b": 2}


def test_parameters_without_an_argument_are_left_out_of_the_input():
    assert wire.unpack_input((("a", "b", "c"), ((1,), {}))) == {"a": 1}


def test_positional_arguments_beyond_the_parameters_are_kept_as_star_args():
    assert wire.unpack_input((("a",), ((1, 2, 3), {}))) == {"a": 1, "*args": [2, 3]}


def test_keyword_arguments_are_added_to_the_bound_input():
    assert wire.unpack_input((("a",), ((1,), {"key": "value"}))) == {"a": 1, "key": "value"}


def test_a_keyword_argument_named_like_a_parameter_replaces_the_positional_one():
    assert wire.unpack_input((("a",), ((1,), {"a": 2}))) == {"a": 2}


# -- records ---------------------------------------------------------------------------------


def unpacked(*objects: object) -> list:
    """What ``record_unpacker`` reads from ``objects`` packed back to back."""
    unpacker = wire.record_unpacker()
    unpacker.feed(b"".join(msgpack.packb(obj) for obj in objects))
    return list(unpacker)


def test_record_unpacker_reads_records_packed_back_to_back():
    assert unpacked([wire.SPAN_LOG, 1], [wire.UPDATE, 2]) == [(wire.SPAN_LOG, 1),
                                                               (wire.UPDATE, 2)]


def test_record_unpacker_reads_arrays_as_tuples():
    (record,) = unpacked([1, [2, [3]]])

    assert record == (1, (2, (3,)))


def test_record_unpacker_reads_an_array_dict_key_as_a_hashable_tuple():
    (record,) = unpacked({(1, 2): "pair"})

    assert record == {(1, 2): "pair"}


def test_record_unpacker_reads_records_fed_in_pieces():
    packed = msgpack.packb([wire.SPAN_LOG, "x" * 100])
    unpacker = wire.record_unpacker()

    unpacker.feed(packed[:50])
    first = list(unpacker)
    unpacker.feed(packed[50:])

    assert first == []
    assert list(unpacker) == [(wire.SPAN_LOG, "x" * 100)]


def test_a_snapshot_inside_a_record_is_unpacked_in_place():
    snapshot = msgpack.ExtType(wire.SNAPSHOT, msgpack.packb({"logged": [1, 2]}))

    (record,) = unpacked([wire.SPAN_LOG, snapshot])

    assert record == (wire.SPAN_LOG, {"logged": (1, 2)})


def test_a_snapshot_inside_a_snapshot_is_unpacked_too():
    inner = msgpack.ExtType(wire.SNAPSHOT, msgpack.packb("inner"))
    outer = msgpack.ExtType(wire.SNAPSHOT, msgpack.packb(["outer", inner]))

    assert unpacked(outer) == [("outer", "inner")]


def test_an_unknown_extension_type_in_a_record_is_refused():
    with pytest.raises(ValueError, match="unknown msgpack extension type 42"):
        unpacked(msgpack.ExtType(42, b"opaque"))


def nested_snapshots(depth: int) -> msgpack.ExtType:
    value = msgpack.packb("deep")
    for _ in range(depth - 1):
        value = msgpack.packb(msgpack.ExtType(wire.SNAPSHOT, value))
    return msgpack.ExtType(wire.SNAPSHOT, value)


def test_snapshots_nested_as_deep_as_allowed_are_unpacked():
    assert unpacked([nested_snapshots(wire.MAX_SNAPSHOT_DEPTH)]) == [("deep",)]


def test_snapshots_nested_deeper_are_refused_before_the_c_stack_overflows():
    with pytest.raises(ValueError, match="snapshots nested more than"):
        unpacked([nested_snapshots(300)])


def test_frame_records_finds_each_record_without_decoding_it():
    good, bad = msgpack.packb([1, "ok"]), b"\x92\x01\xa2\xff\xfe"  # bad: not UTF-8
    body = good + bad + good

    frames, stop = wire.frame_records(body)

    assert frames == [(0, len(good)), (len(good), len(good) + len(bad)),
                      (len(good) + len(bad), len(body))]
    assert stop == len(body)


def test_frame_records_stops_where_the_bytes_are_not_msgpack():
    good = msgpack.packb([1, "ok"])

    frames, stop = wire.frame_records(good + b"\xc1\x00", 0)

    assert (frames, stop) == ([(0, len(good))], len(good))


def test_unpack_record_reads_one_framed_record_with_its_snapshots():
    data = msgpack.packb([wire.SPAN_LOG, nested_snapshots(1)])

    assert wire.unpack_record(memoryview(data)) == (wire.SPAN_LOG, "deep")


def test_an_unknown_extension_type_in_a_stored_row_is_left_as_it_is():
    data = msgpack.packb({"output": msgpack.ExtType(42, b"opaque")})

    assert wire.unpack_stored(data) == {"output": msgpack.ExtType(42, b"opaque")}


# -- stored rows -----------------------------------------------------------------------------


def test_a_row_stored_as_msgpack_reads_back_with_arrays_as_tuples():
    data = msgpack.packb({"id": "r", "output": [1, {"k": [2]}]})

    assert wire.unpack_stored(data) == {"id": "r", "output": (1, {"k": (2,)})}


def test_a_row_stored_as_msgpack_has_its_snapshots_unpacked():
    snapshot = msgpack.ExtType(wire.SNAPSHOT, msgpack.packb("as logged"))

    assert wire.unpack_stored(msgpack.packb({"input": snapshot})) == {"input": "as logged"}


def test_a_row_stored_as_json_text_before_msgpack_is_read_as_json():
    text = json.dumps({"id": "old", "output": [1, 2]})

    assert wire.unpack_stored(text) == {"id": "old", "output": [1, 2]}
