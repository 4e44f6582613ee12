"""``workers.rows``: wire records to partial rows, how partial rows merge, truncation, JSON."""

from __future__ import annotations

import json
import uuid

import pytest

from tracer import wire
from workers import rows

PROJECT = "unit-project"
LOGS = wire.logs_container(PROJECT)
EXPERIMENT = wire.experiment_container(PROJECT, "exp-1", "baseline")
TRACE, ROOT, CHILD, OTHER = 0x0123456789ABCDEF, 0x10, 0x20, 0x30


def span_id(span: int) -> str:
    return wire.format_id(TRACE, span)


def span_end(span: int = ROOT, parents: object = None, row_id: object = None,
             span_type: str | None = "task", fields: dict | None = None,
             inp: object = None, container: object = LOGS) -> tuple:
    return (wire.SPAN_END, container, TRACE, span, parents, ROOT, row_id, "name", span_type,
            1.0, 2.0, fields, inp)


def partial_of(record: tuple) -> dict:
    _container, _row_id, partial = rows.record_to_row(record, rows.Container)
    return partial


# -- merge -----------------------------------------------------------------------------------


def test_a_new_key_is_added():
    assert rows.merge({"a": 1}, {"b": 2}) == {"a": 1, "b": 2}


def test_a_plain_value_replaces_the_old_one():
    assert rows.merge({"output": "draft"}, {"output": "final"}) == {"output": "final"}


def test_a_nested_dict_merges_key_by_key():
    into = {"metadata": {"a": 1, "deep": {"x": 1, "y": 2}}}

    rows.merge(into, {"metadata": {"b": 2, "deep": {"y": 3}}})

    assert into == {"metadata": {"a": 1, "b": 2, "deep": {"x": 1, "y": 3}}}


def test_a_list_replaces_the_old_list_rather_than_extending_it():
    assert rows.merge({"tags": ["a", "b"]}, {"tags": ["c"]}) == {"tags": ["c"]}


def test_a_dict_replaces_a_value_that_is_not_a_dict():
    assert rows.merge({"output": "text"}, {"output": {"k": 1}}) == {"output": {"k": 1}}


def test_rows_nested_deeper_than_pythons_recursion_limit_merge():
    def nested(depth: int, leaf: dict) -> dict:
        value = leaf
        for _ in range(depth):
            value = {"d": value}
        return value

    merged = rows.merge(nested(1020, {"a": 1}), nested(1020, {"b": 2}))

    for _ in range(1020):
        merged = merged["d"]
    assert merged == {"a": 1, "b": 2}


def test_a_value_that_is_not_a_dict_replaces_a_dict():
    assert rows.merge({"output": {"k": 1}}, {"output": [1]}) == {"output": [1]}


def test_none_replaces_a_value():
    assert rows.merge({"error": "boom"}, {"error": None}) == {"error": None}


def test_merge_changes_the_row_in_place_and_returns_it():
    into = {"a": 1}

    assert rows.merge(into, {"a": 2}) is into
    assert into == {"a": 2}


# -- containers ------------------------------------------------------------------------------


def test_a_project_id_is_the_same_uuid_everywhere_for_one_name():
    assert rows.project_id(PROJECT) == str(uuid.uuid5(rows.PROJECT_NAMESPACE, PROJECT))
    assert rows.project_id(PROJECT) != rows.project_id(PROJECT + "-other")


def test_a_logs_container_gives_its_rows_the_project_id_and_log_id_g():
    container = rows.Container(LOGS)

    assert container.id == f"logs:{rows.project_id(PROJECT)}"
    assert container.columns == {"project_id": rows.project_id(PROJECT), "log_id": "g"}
    assert (container.project_name, container.experiment_id) == (PROJECT, None)


def test_an_experiment_container_gives_its_rows_the_project_and_experiment_ids():
    container = rows.Container(EXPERIMENT)

    assert container.id == "exp:exp-1"
    assert container.columns == {"project_id": rows.project_id(PROJECT),
                                 "experiment_id": "exp-1"}
    assert (container.experiment_id, container.experiment_name) == ("exp-1", "baseline")


def test_a_malformed_container_key_is_refused():
    with pytest.raises(ValueError, match="malformed container key"):
        rows.Container("Q\x1fnothing")


# -- record_to_row ---------------------------------------------------------------------------


def test_an_ended_root_span_becomes_a_row_with_its_ids_name_type_and_times():
    container, row_id, partial = rows.record_to_row(span_end(), rows.Container)

    assert container.key == LOGS
    assert row_id == span_id(ROOT)
    assert partial == {
        "id": span_id(ROOT), "span_id": span_id(ROOT), "root_span_id": span_id(ROOT),
        "span_parents": None, "project_id": rows.project_id(PROJECT), "log_id": "g",
        "span_attributes": {"name": "name", "type": "task"},
        "metrics": {"start": 1.0, "end": 2.0}}


def test_a_span_without_a_type_has_only_a_name_in_its_attributes():
    assert partial_of(span_end(span_type=None))["span_attributes"] == {"name": "name"}


def test_a_child_of_the_root_has_the_root_as_its_parent():
    partial = partial_of(span_end(span=CHILD, parents=ROOT))

    assert partial["span_parents"] == [span_id(ROOT)]
    assert partial["root_span_id"] == span_id(ROOT)


def test_a_span_with_one_parent_below_the_root_names_that_parent():
    assert partial_of(span_end(span=OTHER, parents=CHILD))["span_parents"] == [span_id(CHILD)]


def test_a_span_with_several_parents_names_them_in_order():
    partial = partial_of(span_end(span=OTHER, parents=(CHILD, ROOT)))

    assert partial["span_parents"] == [span_id(CHILD), span_id(ROOT)]


def test_an_empty_list_of_parents_is_no_parent():
    assert partial_of(span_end(span=OTHER, parents=()))["span_parents"] is None


def test_a_row_id_chosen_by_the_user_is_the_rows_id_but_not_its_span_id():
    container, row_id, partial = rows.record_to_row(span_end(row_id="mine"), rows.Container)

    assert row_id == partial["id"] == "mine"
    assert partial["span_id"] == span_id(ROOT)


def test_a_span_of_an_experiment_carries_the_experiment_id():
    partial = partial_of(span_end(container=EXPERIMENT))

    assert partial["experiment_id"] == "exp-1"
    assert "log_id" not in partial


def test_the_fields_of_an_ended_span_are_part_of_its_row():
    partial = partial_of(span_end(fields={"output": 42, "metadata": {"k": "v"}}))

    assert (partial["output"], partial["metadata"]) == (42, {"k": "v"})


def test_fields_naming_a_system_field_merge_into_it():
    partial = partial_of(span_end(fields={"metrics": {"tokens": 3}}))

    assert partial["metrics"] == {"start": 1.0, "end": 2.0, "tokens": 3}


def test_the_input_of_a_span_is_its_bound_arguments():
    partial = partial_of(span_end(inp=(("x", "y"), ((1, 2), {}))))

    assert partial["input"] == {"x": 1, "y": 2}


def test_a_span_without_input_has_no_input_field():
    assert "input" not in partial_of(span_end())


def test_a_running_span_has_a_start_and_no_end():
    record = (wire.SPAN_OPEN, LOGS, TRACE, ROOT, None, ROOT, None, "running", None, 5.0,
              {"metadata": {"k": 1}}, (None, "in"))

    partial = partial_of(record)

    assert partial["metrics"] == {"start": 5.0}
    assert partial["span_attributes"] == {"name": "running"}
    assert (partial["input"], partial["metadata"]) == ("in", {"k": 1})


def test_a_span_log_record_is_the_span_ids_and_the_logged_fields():
    record = (wire.SPAN_LOG, LOGS, TRACE, CHILD, ROOT, ROOT, None, {"output": "partial"})

    container, row_id, partial = rows.record_to_row(record, rows.Container)

    assert row_id == span_id(CHILD)
    assert partial["output"] == "partial"
    assert partial["span_parents"] == [span_id(ROOT)]
    assert "span_attributes" not in partial and "metrics" not in partial


def test_an_update_record_is_its_fields_under_the_row_id_and_container_columns():
    record = (wire.UPDATE, LOGS, "row-9", {"scores": {"quality": 1}})

    container, row_id, partial = rows.record_to_row(record, rows.Container)

    assert row_id == "row-9"
    assert partial == {"scores": {"quality": 1}, "id": "row-9",
                       "project_id": rows.project_id(PROJECT), "log_id": "g"}


def test_a_record_of_an_unknown_kind_is_refused_naming_the_kind():
    with pytest.raises(ValueError, match="unknown record kind 99"):
        rows.record_to_row((99, LOGS), rows.Container)


def test_the_container_resolver_is_asked_for_the_records_key():
    asked = []

    def resolve(key: str) -> rows.Container:
        asked.append(key)
        return rows.Container(key)

    rows.record_to_row(span_end(container=EXPERIMENT), resolve)

    assert asked == [EXPERIMENT]


# -- records from the wire are checked as the API checks its arguments -----------------------


def update(fields: object, row_id: object = "row-1") -> tuple:
    return (wire.UPDATE, LOGS, row_id, fields)


@pytest.mark.parametrize("record, reason", [
    pytest.param(["not", "a", "record"], "shape", id="unknown-kind"),
    pytest.param(span_end()[:-1], "shape", id="a-field-short"),
    pytest.param(span_end(span=-1), "ids", id="negative-span-id"),
    pytest.param(span_end(parents=1.5), "ids", id="parent-not-an-int"),
    pytest.param(span_end(parents=[1, "2"]), "ids", id="a-parent-not-an-int"),
    pytest.param(span_end(row_id=7), "row_id", id="row-id-not-a-string"),
    pytest.param(span_end(container=7), "container", id="container-not-a-string"),
    pytest.param(span_end(container="L\x1f"), "container", id="empty-project"),
    pytest.param(span_end(span_type="spaceship"), "attributes", id="unknown-span-type"),
    pytest.param(span_end(inp=("not", "an input")), "input", id="malformed-input"),
    pytest.param(span_end(fields={"metrics": "boom"}), "fields", id="metrics-not-a-map"),
    pytest.param(span_end(fields={"metrics": {"t": "1"}}), "fields", id="metric-not-a-number"),
    pytest.param(span_end(fields={"metrics": {"t": True}}), "fields", id="metric-a-boolean"),
    pytest.param(span_end(fields={"scores": {"s": 1.5}}), "fields", id="score-over-1"),
    pytest.param(span_end(fields={"scores": {"s": float("nan")}}), "fields", id="score-nan"),
    pytest.param(span_end(fields={"tags": ("a", 1)}), "fields", id="tag-not-a-string"),
    pytest.param(span_end(fields={"metadata": {("k",): 1}}), "fields", id="metadata-key"),
    pytest.param(span_end(fields={"created": "1970"}), "fields", id="a-field-never-logged"),
    pytest.param(update({"span_attributes": {"name": 1}}), "fields", id="attribute-name"),
    pytest.param(update({"span_attributes": {"type": {"a": 1}}}), "fields",
                 id="attribute-type-unhashable"),
    pytest.param(update({"output": 1}, row_id=None), "row_id", id="update-without-row-id"),
    pytest.param(update(["output", 1]), "fields", id="update-fields-not-a-map"),
])
def test_a_record_the_api_could_not_have_sent_is_refused_naming_the_reason(record, reason):
    with pytest.raises(rows.BadRecord) as refused:
        rows.record_to_row(record, rows.Container)

    assert refused.value.reason == reason


def test_a_record_of_every_field_the_api_logs_is_accepted():
    fields = {"input": 1, "output": [2], "expected": None, "error": "e", "tags": ("a", "b"),
              "scores": {"s": 1, "t": 0.5, "u": None}, "metadata": {"k": {"deep": 1}},
              "metrics": {"tokens": 3, "cost": 0.1, "none": None}}

    assert partial_of(span_end(fields=fields))["metrics"]["tokens"] == 3


def test_an_update_may_rename_a_span():
    record = update({"span_attributes": {"name": "renamed", "type": "llm"}})

    assert rows.record_to_row(record, rows.Container)[2]["span_attributes"]["type"] == "llm"


def test_a_row_nested_deeper_than_the_store_can_pack_is_refused():
    deep: object = "bottom"
    for _ in range(1100):
        deep = [deep]

    with pytest.raises(rows.BadRecord) as refused:
        rows.check_depth({"output": deep})

    assert refused.value.reason == "too_deep"


# -- truncate --------------------------------------------------------------------------------

BIG_ROW = {"id": "r", "span_id": "s", "root_span_id": "s", "span_parents": None,
           "output": "o" * 5000, "input": "i" * 3000, "metadata": {"k": "v"}}


def test_a_row_within_the_limit_is_returned_as_an_equal_copy():
    truncated = rows.truncate(BIG_ROW, 100_000)

    assert truncated == BIG_ROW and truncated is not BIG_ROW


def test_the_largest_field_is_replaced_first_and_the_rest_kept_once_the_row_fits():
    truncated = rows.truncate(BIG_ROW, 4000)

    assert truncated["output"]["_truncated"] is True
    assert truncated["input"] == BIG_ROW["input"]
    assert truncated["metadata"] == {"k": "v"}
    assert len(rows.to_json(truncated)) <= 4000


def test_fields_are_replaced_biggest_first_until_the_row_fits():
    truncated = rows.truncate(BIG_ROW, 1000)

    assert truncated["output"]["_truncated"] and truncated["input"]["_truncated"]
    assert truncated["metadata"] == {"k": "v"}


def test_a_truncation_marker_gives_the_original_size_and_a_preview():
    marker = rows.truncate(BIG_ROW, 4000)["output"]

    assert marker == {"_truncated": True, "original_bytes": 5002,
                      "preview": '"' + "o" * (4000 // 8 - 1)}


def test_a_preview_is_at_most_1000_characters():
    marker = rows.truncate({"output": "o" * 100_000}, 50_000)["output"]

    assert len(marker["preview"]) == 1000


def test_a_truncation_marker_names_the_file_holding_the_full_row_when_given():
    marker = rows.truncate(BIG_ROW, 4000, saved_to="/payloads/row.jsonl")["output"]

    assert marker["saved_to"] == "/payloads/row.jsonl"


def test_identity_fields_are_kept_whole_even_when_the_row_cannot_fit():
    row = {"id": "x" * 5000, "span_id": "s" * 5000, "output": "small"}

    truncated = rows.truncate(row, 100)

    assert (truncated["id"], truncated["span_id"]) == (row["id"], row["span_id"])
    assert truncated["output"]["_truncated"] is True


def test_truncate_leaves_the_row_it_is_given_unchanged():
    row = dict(BIG_ROW)

    rows.truncate(row, 1000)

    assert row == BIG_ROW


# -- to_json ---------------------------------------------------------------------------------


def test_json_is_compact():
    assert rows.to_json({"a": [1, 2], "b": {"c": None}}) == '{"a":[1,2],"b":{"c":null}}'


def test_nan_and_infinities_become_strings():
    assert json.loads(rows.to_json({"n": float("nan"), "i": float("inf"),
                                    "m": float("-inf")})) == {"n": "NaN", "i": "Infinity",
                                                              "m": "-Infinity"}


def test_bytes_become_their_length_and_a_preview():
    assert json.loads(rows.to_json({"b": b"short"})) == {"b": "<bytes: 5 bytes b'short'>"}


def test_bytes_over_64_show_the_first_64_and_an_ellipsis():
    text = json.loads(rows.to_json({"b": b"x" * 70}))["b"]

    assert text == "<bytes: 70 bytes b'" + "x" * 64 + "'...>"


def test_tuples_become_arrays():
    assert rows.to_json({"t": (1, (2, 3))}) == '{"t":[1,[2,3]]}'


def test_scalar_keys_become_their_json_text():
    assert json.loads(rows.to_json({1: "a", None: "b", 1.5: "c", False: "d"})) == {
        "1": "a", "null": "b", "1.5": "c", "false": "d"}


def test_an_array_key_becomes_its_json_text():
    assert json.loads(rows.to_json({(1, 2): "pair"})) == {"[1, 2]": "pair"}


def test_a_bytes_key_is_decoded_as_utf8():
    assert json.loads(rows.to_json({b"k\xff": 1})) == {"k\\xff": 1}


def test_a_value_json_does_not_know_becomes_its_repr():
    assert json.loads(rows.to_json({"o": {1, 2}})) == {"o": "{1, 2}"}


def test_nesting_too_deep_for_json_is_cut_at_max_depth_with_a_marker():
    value: list = []
    for _ in range(2000):
        value = [value]

    text = rows.to_json({"deep": value})

    assert text.count("[") == rows.MAX_DEPTH - 1
    assert f'"<max depth {rows.MAX_DEPTH} reached>"' in text


# -- stored rows -----------------------------------------------------------------------------


def test_a_packed_row_loads_back_as_its_json_reads():
    row = {"id": "r", "output": (1, 2), "bad": float("nan")}

    assert rows.load_row(rows.pack_row(row)) == {"id": "r", "output": [1, 2], "bad": "NaN"}


def test_a_row_stored_as_json_text_loads_too():
    assert rows.load_row('{"id": "old", "output": [1]}') == {"id": "old", "output": [1]}
