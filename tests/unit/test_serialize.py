"""``tracer.serialize``: what a logged value becomes in msgpack, stand-ins included.

``pack`` is read back the way the aggregator reads records (``wire.record_unpacker``: arrays
as tuples), so every expectation below is what the aggregator sees.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import pathlib
import uuid
from collections.abc import Callable
from typing import Any
from unittest import mock

import msgpack
import pytest

from tests.conftest import CountsItsRepr
from tracer import serialize, wire


def packed(value: object) -> Any:
    """``value`` as the aggregator reads it after ``serialize.pack``."""
    unpacker = wire.record_unpacker()
    unpacker.feed(serialize.pack(value))
    (read,) = unpacker
    return read


def nested(levels: int) -> list:
    """``[[[...]]]``, ``levels`` lists deep."""
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def depth_of(value: object) -> tuple[int, object]:
    """How many single-element arrays deep ``value`` goes, and what is at the bottom."""
    levels = 0
    while isinstance(value, tuple) and value:
        (value,) = value
        levels += 1
    return levels, value


class Color(enum.Enum):
    RED = "red"
    SIZE = 3
    PAIR = (1, 2)


class Level(enum.IntEnum):
    HIGH = 9


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Segment:
    start: Point
    end: Point


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


class Unrepresentable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Long:
    def __repr__(self) -> str:
        return "x" * (serialize.MAX_REPR + 500)


class Dumps:
    """Has ``model_dump``, as a pydantic model does."""

    def model_dump(self) -> dict:
        return {"field": "dumped"}


class FailingDump:
    def model_dump(self) -> dict:
        raise RuntimeError("cannot dump")

    def __repr__(self) -> str:
        return "<FailingDump>"


class ArrayLike:
    """Has ``dtype`` and ``tolist``, as a numpy value does."""

    dtype = "int64"

    def tolist(self) -> list:
        return [1, 2, 3]


class MakesUpAttributes:
    """Answers any attribute with a method returning another such object, as a proxy or a
    ``unittest.mock.Mock`` does."""

    def __getattr__(self, name: str) -> Callable[..., MakesUpAttributes]:
        return lambda *args, **kwargs: MakesUpAttributes()

    def __repr__(self) -> str:
        return "<MakesUpAttributes>"


# -- values msgpack carries as they are ------------------------------------------------------


@pytest.mark.parametrize("value", [None, True, 0, -(2**63), 2**64 - 1, 1.5, "text", b"\x00\xff",
                                   {"k": {"n": 1}}],
                         ids=["none", "bool", "zero", "min-int64", "max-uint64", "float", "str",
                              "bytes", "dict"])
def test_a_value_msgpack_knows_packs_as_it_is(value):
    assert packed(value) == value


def test_lists_and_tuples_pack_as_arrays():
    assert packed([1, (2, 3)]) == (1, (2, 3))


def test_nan_and_infinities_pack_as_floats():
    nan, inf, minus_inf = packed([float("nan"), float("inf"), float("-inf")])

    assert nan != nan and inf == float("inf") and minus_inf == float("-inf")


def test_nesting_msgpack_can_carry_packs_whole():
    assert depth_of(packed(nested(500))) == (500, ())


# -- stand-ins -------------------------------------------------------------------------------


def test_a_set_packs_as_an_array_of_its_members():
    assert sorted(packed({3, 1, 2})) == [1, 2, 3]


def test_a_frozenset_packs_as_an_array_of_its_members():
    assert packed(frozenset(["only"])) == ("only",)


def test_a_datetime_packs_as_its_iso_string():
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=datetime.timezone.utc)

    assert packed(moment) == "2026-01-02T03:04:05.000600+00:00"


def test_a_date_and_a_time_pack_as_their_iso_strings():
    assert packed([datetime.date(2026, 1, 2), datetime.time(3, 4)]) == ("2026-01-02", "03:04:00")


def test_a_uuid_packs_as_its_string():
    assert packed(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"


def test_a_decimal_packs_as_its_string_keeping_every_digit():
    assert packed(decimal.Decimal("1.10")) == "1.10"


def test_a_path_packs_as_its_string():
    assert packed([pathlib.Path("/tmp/x.txt"), pathlib.PurePosixPath("a/b")]) == ("/tmp/x.txt",
                                                                                "a/b")


def test_an_enum_with_a_plain_value_packs_as_that_value():
    assert packed([Color.RED, Color.SIZE]) == ("red", 3)


def test_an_enum_with_another_value_packs_as_its_name():
    assert packed(Color.PAIR) == "Color.PAIR"


def test_an_int_enum_packs_as_its_int():
    assert packed(Level.HIGH) == 9


@pytest.mark.parametrize("number", [2**64, -(2**63) - 1, 10**30],
                         ids=["2**64", "below-min-int64", "10**30"])
def test_an_int_beyond_64_bits_packs_as_its_decimal_string(number):
    assert packed(number) == str(number)


def test_an_int_beyond_64_bits_inside_a_container_packs_as_its_decimal_string():
    assert packed({"big": [2**70]}) == {"big": (str(2**70),)}


def test_a_bytearray_and_a_memoryview_pack_as_bytes():
    assert packed([bytearray(b"ab"), memoryview(b"cd")]) == (b"ab", b"cd")


def test_a_dataclass_packs_as_a_dict_of_its_fields():
    assert packed(Point(1, 2)) == {"x": 1, "y": 2}


def test_a_dataclass_inside_a_dataclass_packs_as_a_dict_too():
    assert packed(Segment(Point(0, 0), Point(1, 2))) == {"start": {"x": 0, "y": 0},
                                                         "end": {"x": 1, "y": 2}}


def test_a_dataclass_class_itself_packs_as_its_repr():
    assert packed(Point) == repr(Point)


def test_an_object_with_model_dump_packs_as_what_it_dumps():
    assert packed(Dumps()) == {"field": "dumped"}


def test_an_object_whose_model_dump_raises_packs_as_its_repr():
    assert packed(FailingDump()) == "<FailingDump>"


def test_an_array_like_value_packs_as_its_tolist():
    assert packed(ArrayLike()) == (1, 2, 3)


def test_an_object_that_makes_up_attributes_packs_as_its_repr():
    assert packed(MakesUpAttributes()) == "<MakesUpAttributes>"


@pytest.mark.parametrize("make", [mock.Mock, mock.MagicMock, lambda: mock.Mock(spec=set)],
                         ids=["Mock", "MagicMock", "Mock-spec-set"])
def test_a_mock_packs_as_its_repr(make):
    value = make()

    assert packed(value) == repr(value)


def test_an_object_found_several_times_in_a_value_is_described_once():
    obj = CountsItsRepr()

    assert packed({"a": obj, "b": [obj, (obj,)]}) == {"a": "<CountsItsRepr>",
                                                       "b": ("<CountsItsRepr>",
                                                             ("<CountsItsRepr>",))}
    assert obj.reprs == 1


def test_an_object_in_a_value_that_needs_repair_is_described_once():
    obj = CountsItsRepr()
    cyclic: list = [obj]
    cyclic.append(cyclic)

    assert packed(cyclic) == ("<CountsItsRepr>", "<circular reference>")
    assert obj.reprs == 1


def test_any_other_object_packs_as_its_repr():
    assert packed({"thing": Opaque()}) == {"thing": "<Opaque thing>"}


def test_a_long_repr_is_cut_and_says_how_long_it_was():
    text = packed(Long())

    assert text == "x" * serialize.MAX_REPR + f"... ({serialize.MAX_REPR + 500} chars)"


def test_an_object_whose_repr_raises_packs_as_non_serializable_and_its_type():
    assert packed(Unrepresentable()) == "<non-serializable: Unrepresentable>"


# -- values msgpack refuses: repaired --------------------------------------------------------


def test_a_list_containing_itself_packs_with_a_cycle_marker():
    cyclic: list = [1]
    cyclic.append(cyclic)

    assert packed(cyclic) == (1, "<circular reference>")


def test_a_dict_containing_itself_packs_with_a_cycle_marker():
    cyclic: dict = {"a": 1}
    cyclic["self"] = cyclic

    assert packed(cyclic) == {"a": 1, "self": "<circular reference>"}


def test_a_value_shared_twice_is_not_a_cycle():
    shared = [1]
    cyclic: list = []
    cyclic.append(cyclic)

    assert packed({"shared": [shared, shared], "cycle": cyclic}) == {
        "shared": ((1,), (1,)), "cycle": ("<circular reference>",)}


def test_nesting_too_deep_for_msgpack_is_cut_at_max_depth_with_a_marker():
    assert depth_of(packed(nested(2000))) == (serialize.MAX_DEPTH,
                                              f"<max depth {serialize.MAX_DEPTH} reached>")


def test_a_lone_surrogate_packs_backslash_escaped():
    assert packed(["a\udc80"]) == ("a\\udc80",)


def test_a_tuple_dict_key_packs_as_an_array():
    assert packed({(1, 2): "pair"}) == {(1, 2): "pair"}


def test_a_set_dict_key_packs_as_an_array_of_its_members():
    assert packed({frozenset(["k"]): 1}) == {("k",): 1}


def test_scalar_dict_keys_survive_a_repair():
    cyclic: list = []
    cyclic.append(cyclic)

    assert packed({1: "int", None: "none", 1.5: "float", "c": cyclic}) == {
        1: "int", None: "none", 1.5: "float", "c": ("<circular reference>",)}


def test_other_dict_keys_become_their_repr_when_a_value_is_repaired():
    cyclic: list = []
    cyclic.append(cyclic)

    assert packed({(1, 2): "pair", "c": cyclic}) == {"(1, 2)": "pair",
                                                     "c": ("<circular reference>",)}


# -- snapshots -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["text", 7, 1.5, True, None, b"raw"],
                         ids=["str", "int", "float", "bool", "none", "bytes"])
def test_an_immutable_value_is_its_own_snapshot(value):
    assert serialize.snapshot(value) is value


def test_a_mutable_value_is_snapshot_as_packed_bytes():
    snapshot = serialize.snapshot([1, 2])

    assert snapshot == msgpack.ExtType(wire.SNAPSHOT, serialize.pack([1, 2]))


def test_a_snapshot_keeps_the_value_as_it_was_when_taken():
    history = [{"role": "user", "content": "hi"}]
    snapshot = serialize.snapshot(history)

    history.append({"role": "assistant", "content": "hello"})
    history[0]["content"] = "changed"

    assert wire.unpack_stored(msgpack.packb(snapshot)) == ({"role": "user", "content": "hi"},)


def test_a_subclass_of_an_immutable_type_is_snapshot_as_packed_bytes():
    class Name(str):
        pass

    assert isinstance(serialize.snapshot(Name("n")), msgpack.ExtType)


def test_values_of_immutable_types_are_immutable():
    assert serialize.immutable(("a", 1, 1.5, False, None, b"b"))


def test_no_values_are_immutable():
    assert serialize.immutable(())


def test_a_list_among_the_values_makes_them_mutable():
    assert not serialize.immutable(("a", [1]))


def test_a_subclass_of_an_immutable_type_makes_the_values_mutable():
    assert not serialize.immutable((Level.HIGH,))


# -- a DATA body from records ----------------------------------------------------------------


def body_records(body: bytes) -> list:
    unpacker = wire.record_unpacker()
    unpacker.feed(body)
    return list(unpacker)


def test_records_packed_already_are_joined_as_they_are():
    records = [msgpack.packb([wire.SPAN_LOG, i]) for i in range(3)]

    assert serialize.pack_records(records) == b"".join(records)


@pytest.mark.parametrize("count", [1, 15, 16, 70_000],
                         ids=["one", "fixarray-max", "array16", "array32"])
def test_tuple_records_are_packed_back_to_back(count):
    records = [(wire.SPAN_LOG, i) for i in range(count)]

    assert body_records(serialize.pack_records(records)) == records


def test_packed_and_tuple_records_keep_their_order():
    records = [(wire.SPAN_LOG, 0), msgpack.packb((wire.SPAN_LOG, 1)), (wire.SPAN_LOG, 2),
               (wire.SPAN_LOG, 3), msgpack.packb((wire.SPAN_LOG, 4))]

    assert body_records(serialize.pack_records(records)) == [(wire.SPAN_LOG, i)
                                                              for i in range(5)]


def test_a_record_msgpack_refuses_is_repaired_and_the_others_packed_as_they_are():
    records = [(wire.SPAN_LOG, 1), (wire.SPAN_LOG, [2**70]), (wire.SPAN_LOG, 3)]

    assert body_records(serialize.pack_records(records)) == [
        (wire.SPAN_LOG, 1), (wire.SPAN_LOG, (str(2**70),)), (wire.SPAN_LOG, 3)]


# -- describe --------------------------------------------------------------------------------


def test_describe_is_the_repr():
    assert serialize.describe(Opaque()) == "<Opaque thing>"


def test_describe_cuts_a_long_repr_saying_how_long_it_was():
    assert serialize.describe("y" * 2000) == repr("y" * 2000)[:serialize.MAX_REPR] + \
        "... (2002 chars)"


def test_describe_never_raises():
    assert serialize.describe(Unrepresentable()) == "<non-serializable: Unrepresentable>"
