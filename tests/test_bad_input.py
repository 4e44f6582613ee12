"""Bad input: a clear error at the call site, and nothing else lost; unserialisable values become
readable stand-ins and never raise inside user code.

Every test logs into the real aggregator started by the ``logger`` fixture and reads the real
store back with ``rows()``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from unittest import mock

import msgpack
import pytest

import tracer
from tests.conftest import CountsItsRepr, by_name

# -- helpers ---------------------------------------------------------------------------------


def log_valid_span_after() -> None:
    """A valid span logged after a failing call: it must be stored."""
    with tracer.start_span("after", input="valid") as span:
        span.log(output="stored")


def assert_valid_span_after_stored(stored: dict[str, dict]) -> None:
    assert stored["after"]["input"] == "valid"
    assert stored["after"]["output"] == "stored"


# -- invalid fields: a clear error, nothing else lost ---------------------------------------

INVALID_FIELDS = {
    # id: (log() arguments, error raised, words the message names, field left unlogged)
    "score_above_one": ({"scores": {"acc": 1.5}}, ValueError, ("scores", "acc"), "scores"),
    "negative_score": ({"scores": {"acc": -0.1}}, ValueError, ("scores", "acc"), "scores"),
    "non_numeric_score": ({"scores": {"acc": "high"}}, TypeError, ("acc",), "scores"),
    "metadata_key_not_a_string": ({"metadata": {1: "x"}}, TypeError, ("metadata", "keys"),
                                  "metadata"),
    "metadata_not_a_dict": ({"metadata": "notadict"}, TypeError, ("metadata",), "metadata"),
    "non_numeric_metric": ({"metrics": {"tokens": "ten"}}, TypeError, ("metrics", "tokens"),
                           None),
    "tags_as_a_string": ({"tags": "a"}, TypeError, ("tags",), "tags"),
    "unknown_field": ({"foo": 1}, TypeError, ("foo",), "foo"),
}


@pytest.mark.parametrize(("fields", "error", "named", "unlogged"),
                         list(INVALID_FIELDS.values()), ids=list(INVALID_FIELDS))
def test_an_invalid_field_raises_at_the_call_site_and_loses_nothing_else(
        logger, rows, fields, error, named, unlogged):
    with tracer.start_span("victim") as span:
        with pytest.raises(error) as raised:
            span.log(**fields)
        span.log(output="still logging")
    log_valid_span_after()

    for word in named:
        assert word in str(raised.value)
    stored = by_name(rows())
    assert stored["victim"]["output"] == "still logging"
    if unlogged is not None:
        assert unlogged not in stored["victim"]
    assert "tokens" not in stored["victim"]["metrics"]
    assert_valid_span_after_stored(stored)


def test_boolean_score_is_stored_as_one(logger, rows):
    with tracer.start_span("scored") as span:
        span.log(scores={"ok": True})

    stored = by_name(rows())["scored"]["scores"]["ok"]
    assert stored == 1 and stored is not True


def test_none_score_is_accepted(logger, rows):
    with tracer.start_span("scored") as span:
        span.log(scores={"acc": None})

    assert by_name(rows())["scored"]["scores"] == {"acc": None}


# -- span types ------------------------------------------------------------------------------


def test_unknown_span_type_raises_value_error_listing_valid_types(logger, rows):
    with pytest.raises(ValueError) as raised:
        tracer.start_span("banana span", type="banana")
    log_valid_span_after()

    assert "banana" in str(raised.value)
    for span_type in tracer.SPAN_TYPES:
        assert span_type in str(raised.value)
    stored = by_name(rows())
    assert "banana span" not in stored
    assert_valid_span_after_stored(stored)


def test_traced_with_unknown_type_raises_at_decoration(logger, rows):
    with pytest.raises(ValueError) as raised:

        @tracer.traced(type="banana")
        def never_decorated() -> None:
            pass

    @tracer.traced(type="tool")
    def decorated() -> str:
        return "ran"

    assert decorated() == "ran"
    log_valid_span_after()

    assert "banana" in str(raised.value) and "llm" in str(raised.value)
    stored = by_name(rows())
    assert "never_decorated" not in stored
    assert stored["decorated"]["output"] == "ran"
    assert_valid_span_after_stored(stored)


# -- malformed slugs -------------------------------------------------------------------------

MALFORMED_SLUGS = {
    "random_string": "definitely-not-a-slug",
    "valid_prefix_invalid_base64": "tr1.!!!",
    "valid_prefix_base64_of_garbage": "tr1."
    + base64.urlsafe_b64encode(b"\x00garbage\xff\xfe bytes").rstrip(b"=").decode(),
    "valid_prefix_msgpack_of_wrong_shape": "tr1."
    + base64.urlsafe_b64encode(msgpack.packb({"not": "a span"})).rstrip(b"=").decode(),
}


@pytest.mark.parametrize("bad_slug", MALFORMED_SLUGS.values(), ids=MALFORMED_SLUGS.keys())
def test_malformed_parent_slug_raises_value_error_saying_so(logger, rows, bad_slug):
    with pytest.raises(ValueError) as raised:
        tracer.start_span("orphan", parent=bad_slug)
    log_valid_span_after()

    assert "malformed slug" in str(raised.value)
    stored = by_name(rows())
    assert "orphan" not in stored
    assert_valid_span_after_stored(stored)


def test_non_string_parent_slug_raises_type_error(logger, rows):
    with pytest.raises(TypeError) as raised:
        # deliberately wrong type: the test checks the error
        tracer.start_span("orphan", parent=12345)  # type: ignore[arg-type]
    log_valid_span_after()

    assert "slug" in str(raised.value) and "int" in str(raised.value)
    stored = by_name(rows())
    assert "orphan" not in stored
    assert_valid_span_after_stored(stored)


@pytest.mark.parametrize("bad_slug", MALFORMED_SLUGS.values(), ids=MALFORMED_SLUGS.keys())
def test_malformed_exported_slug_in_update_span_raises_value_error_saying_so(
    logger, rows, bad_slug
):
    with tracer.start_span("target") as target:
        exported = target.export()
    with pytest.raises(ValueError) as raised:
        tracer.update_span(bad_slug, output="lost")
    tracer.update_span(exported, output="updated")

    assert "malformed slug" in str(raised.value)
    stored = by_name(rows())
    assert stored["target"]["output"] == "updated"


def test_non_string_exported_slug_in_update_span_raises_type_error(logger, rows):
    with tracer.start_span("target") as target:
        exported = target.export()
    with pytest.raises(TypeError) as raised:
        # deliberately wrong type: the test checks the error
        tracer.update_span(12345, output="lost")  # type: ignore[arg-type]
    tracer.update_span(exported, output="updated")

    assert "slug" in str(raised.value) and "int" in str(raised.value)
    assert by_name(rows())["target"]["output"] == "updated"


# -- unserialisable values: readable stand-ins, never an exception ---------------------------


class Opaque:
    """A user object msgpack knows nothing about."""

    def __repr__(self) -> str:
        return "<Opaque token=7f3a>"


def cyclic_list() -> list:
    value: list = [1]
    value.append(value)
    return value


def cyclic_dict() -> dict:
    value: dict = {"a": 1}
    value["self"] = value
    return value


def nested(levels: int) -> list:
    value: object = "leaf"
    for _ in range(levels):
        value = [value]
    return value  # type: ignore[return-value]


def log_through(channel: str, value: object) -> None:
    """Log ``value`` through one channel, into a span named ``channel``."""
    if channel == "span_log":
        with tracer.start_span("span_log") as span:
            span.log(input=value, output=value, metadata={"value": value})
    elif channel == "traced_argument":

        @tracer.traced(name="traced_argument")
        def takes(value: object) -> str:
            return "done"

        takes(value)
    else:

        @tracer.traced(name="traced_return")
        def gives() -> object:
            return value

        gives()


def stored_values(channel: str, row: dict) -> list:
    """Where ``log_through`` put the value in the stored row."""
    if channel == "span_log":
        return [row["input"], row["output"], row["metadata"]["value"]]
    if channel == "traced_argument":
        return [row["input"]["value"]]
    return [row["output"]]


CHANNELS = ["span_log", "traced_argument", "traced_return"]


def equals(expected: object):
    def check(stored: object) -> None:
        assert stored == expected

    return check


def check_opaque(stored: object) -> None:
    assert isinstance(stored, str) and "<Opaque token=7f3a>" in stored


def check_set(stored: object) -> None:
    assert isinstance(stored, list) and sorted(stored) == [1, 2, 3]


def check_bytes(stored: object) -> None:
    assert isinstance(stored, str) and stored.startswith("<bytes:")


def check_cycle(stored: object) -> None:
    assert "<circular reference>" in json.dumps(stored)


def check_nested_list_stored(stored: object) -> None:
    assert isinstance(stored, list) and stored


def check_lone_surrogate(stored: object) -> None:
    assert isinstance(stored, str) and stored.startswith("a") and stored.endswith("b")


STAND_INS = {
    "custom_object_as_repr": (Opaque, check_opaque),
    "set_as_list": (lambda: {1, 2, 3}, check_set),
    "bytes_as_description": (lambda: b"\x00\x01abc", check_bytes),
    "nan_as_string": (lambda: float("nan"), equals("NaN")),
    "inf_as_string": (lambda: float("inf"), equals("Infinity")),
    "minus_inf_as_string": (lambda: float("-inf"), equals("-Infinity")),
    "cyclic_list_with_cycle_marker": (cyclic_list, check_cycle),
    "cyclic_dict_with_cycle_marker": (cyclic_dict, check_cycle),
    "500_levels_of_nesting_stored": (lambda: nested(500), check_nested_list_stored),
    "int_over_64_bits_as_decimal_string": (lambda: 2**80, equals(str(2**80))),
    "lone_surrogate_stored": (lambda: "a\udc80b", check_lone_surrogate),
}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("make, check", STAND_INS.values(), ids=STAND_INS.keys())
def test_unserialisable_value_is_stored_as_readable_stand_in(logger, rows, channel, make, check):
    log_through(channel, make())
    log_valid_span_after()

    stored = by_name(rows())
    for value in stored_values(channel, stored[channel]):
        check(value)
    assert_valid_span_after_stored(stored)


MOCKS = {"Mock": mock.Mock, "MagicMock": mock.MagicMock}


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("make", MOCKS.values(), ids=MOCKS.keys())
def test_a_mock_is_stored_as_its_repr(logger, rows, channel, make):
    value = make()
    log_through(channel, value)
    log_valid_span_after()

    stored = by_name(rows())
    for found in stored_values(channel, stored[channel]):
        assert found == repr(value)
    assert_valid_span_after_stored(stored)


def log_in_three_fields(obj: object) -> None:
    with tracer.start_span("described") as span:
        span.log(input=obj, output=[obj, obj], metadata={"value": obj})


def start_with_input(obj: object) -> None:
    with tracer.start_span("described", input=obj):
        pass


def start_with_input_and_output(obj: object) -> None:
    with tracer.start_span("described", input=[obj], output=obj):
        pass


def log_a_row_in_one_call(obj: object) -> None:
    logger = tracer.current_logger()
    assert logger is not None
    logger.log(input={"value": obj}, output=obj)


def log_inside_a_cycle(obj: object) -> None:
    cyclic: list = [obj]
    cyclic.append(cyclic)
    with tracer.start_span("described") as span:
        span.log(input=cyclic)


LOGGING_CALLS = [log_in_three_fields, start_with_input, start_with_input_and_output,
                 log_a_row_in_one_call, log_inside_a_cycle]


@pytest.mark.parametrize("log", LOGGING_CALLS, ids=[f.__name__ for f in LOGGING_CALLS])
def test_an_object_is_described_once_per_logging_call(logger, rows, log):
    obj = CountsItsRepr()
    log(obj)

    assert obj.reprs == 1
    assert "<CountsItsRepr>" in json.dumps(rows())


@dataclasses.dataclass
class Point:
    x: int
    label: str


@pytest.mark.parametrize("channel", CHANNELS)
def test_dataclass_is_stored_as_dict_of_its_fields(logger, rows, channel):
    log_through(channel, Point(1, "x"))

    for value in stored_values(channel, by_name(rows())[channel]):
        assert value == {"x": 1, "label": "x"}


@pytest.mark.parametrize("channel", CHANNELS)
def test_nesting_msgpack_can_carry_is_stored_whole(logger, rows, channel):
    log_through(channel, nested(300))

    for value in stored_values(channel, by_name(rows())[channel]):
        assert "<max depth" not in json.dumps(value)
        assert json.dumps(value).count("[") >= 300


@pytest.mark.parametrize("channel", CHANNELS)
def test_nesting_too_deep_to_serialise_is_cut_with_a_max_depth_marker(logger, rows, channel):
    log_through(channel, nested(2000))

    for value in stored_values(channel, by_name(rows())[channel]):
        assert "<max depth 200 reached>" in json.dumps(value)


@pytest.mark.parametrize("channel", CHANNELS)
def test_dict_with_tuple_keys_is_stored_with_string_keys(logger, rows, channel):
    log_through(channel, {(1, 2): "x"})
    log_valid_span_after()

    stored = by_name(rows())
    for value in stored_values(channel, stored[channel]):
        assert list(value.values()) == ["x"]
        (key,) = value
        assert isinstance(key, str) and "1" in key and "2" in key
    assert_valid_span_after_stored(stored)


@pytest.mark.parametrize("returned", [cyclic_list, lambda: "a\udc80b"],
                         ids=["cyclic_list", "lone_surrogate"])
def test_traced_input_is_kept_when_return_value_needs_repair(logger, rows, returned):
    @tracer.traced
    def repaired(value: str) -> object:
        return returned()

    repaired("plain")

    assert by_name(rows())["repaired"]["input"] == {"value": "plain"}


# -- snapshots at log time -------------------------------------------------------------------


def test_span_log_stores_a_snapshot_of_a_list_mutated_later(logger, rows):
    history = ["first"]
    with tracer.start_span("snapshot") as span:
        span.log(input=history)
        history.append("second")
        history[0] = "changed"

    assert by_name(rows())["snapshot"]["input"] == ["first"]


def test_traced_input_is_a_snapshot_taken_before_the_function_mutates_it(logger, rows):
    @tracer.traced
    def mutates(items: list) -> int:
        items.append("added by the function")
        items[0] = "changed"
        return len(items)

    history = ["first"]
    mutates(history)

    row = by_name(rows())["mutates"]
    assert row["input"] == {"items": ["first"]}
    assert row["output"] == 2


def test_traced_output_is_a_snapshot_taken_when_the_function_returns(logger, rows):
    @tracer.traced
    def returns_history() -> list:
        return history

    history = ["first"]
    returns_history().append("appended by the caller")  # before the flusher packs the record

    assert by_name(rows())["returns_history"]["output"] == ["first"]


def test_a_store_whose_directory_cannot_be_created_raises_value_error_naming_it(tmp_path):
    (tmp_path / "a-file").write_text("")
    store = str(tmp_path / "a-file" / "traces.db")

    with pytest.raises(ValueError, match=r"store=.*a-file.*cannot create its directory"):
        tracer.init_logger("nowhere", store=store)
