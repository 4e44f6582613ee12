"""``tracer.set_masking_function`` as the reference's ``set_masking_function`` behaves
(its ``test_masking_function_logger``, ``_experiment``, ``_propagates_to_spans`` and
``_with_error``; we have no datasets): every field a user logs passes through the function
before it leaves the process, and a function that fails costs the field, never the record.
Rows are read back from the real store."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tracer

from ..conftest import by_name, experiment_rows, stored_rows
from ..helpers import wait_until
from .masking_tasks import call_service, hide_api_keys


def replacing(word: str, by: str) -> Callable[[Any], Any]:
    """A mask that replaces ``word`` by ``by`` in every string, at any depth, and the value of
    every key named ``word``."""

    def mask(data: Any) -> Any:
        if isinstance(data, str):
            return data.replace(word, by)
        if isinstance(data, dict):
            return {k: by if k == word else mask(v) for k, v in data.items()}
        if isinstance(data, list):
            return [mask(item) for item in data]
        return data

    return mask


def broken_mask(data: Any) -> Any:
    """The reference's broken masking function: raises for a dict with a ``password`` key
    (ValueError, quoting it) or an ``accuracy`` key (TypeError), a string containing "secret"
    (ZeroDivisionError) and a non-empty list (IndexError)."""
    if isinstance(data, dict):
        for key in data:
            if key == "password":
                raise ValueError(f"Cannot mask sensitive field {key!r}: {data[key]}")
            if key == "accuracy":
                raise TypeError("Cannot process numeric score")
        return data
    if isinstance(data, str):
        if "secret" in data.lower():
            return 1 / 0
        return data
    if isinstance(data, list):
        if data:
            return data[100]
        return data
    return data


@pytest.fixture
def mask() -> Iterator[Callable[[Callable[[Any], Any]], None]]:
    """``mask(fn)`` sets the process's masking function; afterwards what is buffered is sent
    under it and masking is turned off, so that no other test sees it."""
    yield tracer.set_masking_function
    tracer.flush(timeout=30)
    tracer.set_masking_function(None)


def test_logger_rows_are_masked(logger, rows, mask):
    mask(replacing("sensitive", "REDACTED"))

    logger.log(input="This is a sensitive input",
               output={"message": "This contains sensitive data", "count": 42},
               metadata={"user": "sensitive_user", "safe": "normal_data"})

    (row,) = rows()
    assert row["input"] == "This is a REDACTED input"
    assert row["output"] == {"message": "This contains REDACTED data", "count": 42}
    assert row["metadata"] == {"user": "REDACTED_user", "safe": "normal_data"}


def test_experiment_rows_are_masked(experiment, store_path, mask):
    mask(replacing("password", "XXX"))

    experiment.log(input={"command": "login", "password": "secret123"},
                   output="Login successful with password validation",
                   scores={"accuracy": 0.95})

    (row,) = experiment_rows(store_path, experiment)
    assert row["input"] == {"command": "login", "password": "XXX"}
    assert row["output"] == "Login successful with XXX validation"
    assert row["scores"] == {"accuracy": 0.95}


def test_child_spans_are_masked(logger, rows, mask):
    mask(hide_api_keys)

    with logger.start_span(name="parent_span") as parent:
        parent.log(input={"api_key": "sk-12345", "query": "test"})
        with parent.start_span(name="child_span") as child:
            child.log(output={"response": "data", "api_key": "sk-67890"})

    named = by_name(rows())
    assert named["parent_span"]["input"] == {"api_key": "HIDDEN", "query": "test"}
    assert named["child_span"]["output"] == {"response": "data", "api_key": "HIDDEN"}


def test_the_input_given_to_start_span_is_masked(logger, rows, mask):
    mask(hide_api_keys)

    with tracer.start_span("call", input={"api_key": "sk-1", "q": "x"}):
        pass

    (row,) = rows()
    assert row["input"] == {"api_key": "HIDDEN", "q": "x"}


def test_traced_input_is_masked_as_the_bound_arguments(logger, rows, mask):
    seen = []

    def remember(data: Any) -> Any:
        seen.append(data)
        return hide_api_keys(data)

    mask(remember)

    @tracer.traced
    def connect(host: str, api_key: str, retries: int = 3) -> str:
        return "connected"

    connect("db.local", "sk-secret")

    (row,) = rows()
    assert row["input"] == {"host": "db.local", "api_key": "HIDDEN"}
    assert {"host": "db.local", "api_key": "sk-secret"} in seen


def test_traced_input_with_mutable_arguments_is_masked(logger, rows, mask):
    mask(hide_api_keys)

    @tracer.traced
    def connect(settings: dict, *extra: str) -> int:
        return len(extra)

    connect({"api_key": "sk-secret", "host": "db.local"}, "a", "b")

    (row,) = rows()
    assert row["input"] == {"settings": {"api_key": "HIDDEN", "host": "db.local"},
                            "extra": ["a", "b"]}


def test_traced_output_is_masked(logger, rows, mask):
    mask(hide_api_keys)

    @tracer.traced
    def issue_key(user: str) -> dict:
        return {"user": user, "api_key": "sk-new"}

    assert issue_key("ada") == {"user": "ada", "api_key": "sk-new"}

    (row,) = rows()
    assert row["output"] == {"user": "ada", "api_key": "HIDDEN"}


def test_a_traced_generators_items_are_masked(logger, rows, mask):
    mask(hide_api_keys)

    @tracer.traced
    def keys() -> Iterator[dict]:
        yield {"api_key": "sk-1"}
        yield {"api_key": "sk-2"}

    assert list(keys()) == [{"api_key": "sk-1"}, {"api_key": "sk-2"}]

    (row,) = rows()
    assert row["output"] == [{"api_key": "HIDDEN"}, {"api_key": "HIDDEN"}]


def test_the_error_of_a_traced_function_is_masked(logger, rows, mask):
    mask(replacing("4111-1111", "<card>"))

    @tracer.traced
    def charge(card: str) -> None:
        raise ValueError(f"card {card} declined")

    with pytest.raises(ValueError):
        charge("4111-1111")

    (row,) = rows()
    assert "4111-1111" not in json.dumps(row)
    assert "card <card> declined" in json.dumps(row["error"])


def test_expected_is_masked(logger, rows, mask):
    mask(hide_api_keys)

    logger.log(input="q", expected={"api_key": "sk-1", "answer": 42})

    (row,) = rows()
    assert row["expected"] == {"api_key": "HIDDEN", "answer": 42}


def test_updates_by_id_are_masked(logger, rows, mask):
    mask(hide_api_keys)

    row_id = logger.log(input="q")
    logger.update_span(id=row_id, metadata={"api_key": "sk-1", "reviewed": True})

    (row,) = rows()
    assert row["metadata"] == {"api_key": "HIDDEN", "reviewed": True}


def test_the_mask_sees_lists_as_lists(logger, rows, mask):
    seen = []

    def remember(data: Any) -> Any:
        seen.append(data)
        return data

    mask(remember)

    logger.log(input=["a", ("b", "c")])
    tracer.flush()

    assert ["a", ["b", "c"]] in seen


def test_a_value_with_a_tuple_as_a_dict_key_is_still_masked(logger, rows, mask):
    mask(hide_api_keys)

    logger.log(input={(1, 2): "point", "api_key": "sk-1"})

    (row,) = rows()
    assert row["input"]["api_key"] == "HIDDEN"


def test_tags_are_not_passed_to_the_mask(logger, rows, mask):
    mask(replacing("vip", "xxx"))

    logger.log(input="vip request", tags=["vip"])

    (row,) = rows()
    assert row["input"] == "xxx request"
    assert row["tags"] == ["vip"]


def readable_rows(store_path: str, project: str) -> list[dict]:
    """The project's stored rows, without a flush; none while the store has no tables yet (an
    aggregator that has just created the file)."""
    try:
        return stored_rows(store_path, project=project)
    except sqlite3.OperationalError:
        return []


def test_the_input_of_a_running_span_is_masked_in_its_announcement(logger, store_path, project,
                                                                    mask):
    mask(hide_api_keys)
    release = threading.Event()

    @tracer.traced
    def slow(settings: dict) -> None:
        release.wait(30)

    def announced() -> list[dict]:
        return [r for r in readable_rows(store_path, project)
                if r["span_attributes"]["name"] == "slow"]

    logger.log(input="first")  # starts this process's flusher, which announces spans
    worker = threading.Thread(target=slow, args=({"api_key": "sk-1", "n": 1},))
    worker.start()
    try:
        # Announced by the flusher once running for 0.1 s: stored before the span ends.
        (row,) = wait_until(announced, 15, "the running span was never announced")
        assert "end" not in row["metrics"]
        assert row["input"] == {"settings": {"api_key": "HIDDEN", "n": 1}}
    finally:
        release.set()
        worker.join()


def test_a_mask_that_raises_gives_each_field_the_error_string(experiment, store_path, mask):
    mask(broken_mask)

    experiment.log(input={"password": "my-password", "user": "test"},
                   output="This contains SECRET information",
                   expected=["item1", "item2"],
                   metadata={"safe": "data"},
                   scores={"score": 1.0})

    (row,) = experiment_rows(store_path, experiment)
    assert row["input"] == "ERROR: Failed to mask field 'input' - ValueError"
    assert row["output"] == "ERROR: Failed to mask field 'output' - ZeroDivisionError"
    assert row["expected"] == "ERROR: Failed to mask field 'expected' - IndexError"
    assert row["metadata"] == {"safe": "data"}
    assert row["scores"] == {"score": 1.0}


def test_a_failed_mask_never_stores_the_value_it_was_given(experiment, store_path, mask):
    mask(broken_mask)

    experiment.log(input={"password": "my-password", "user": "test"})

    (row,) = experiment_rows(store_path, experiment)
    assert "my-password" not in json.dumps(row)


def test_a_mask_that_raises_on_metadata_leaves_an_error_key(logger, rows, mask):
    mask(broken_mask)

    logger.log(input="q", metadata={"password": "hunter2"})

    (row,) = rows()
    assert row["metadata"] == {"error": "ERROR: Failed to mask field 'metadata' - ValueError"}


def test_a_mask_that_raises_on_scores_drops_them_with_an_error(experiment, store_path, mask):
    mask(broken_mask)

    experiment.log(input={"data": "test"}, output="result", scores={"accuracy": 0.95})

    (row,) = experiment_rows(store_path, experiment)
    assert "scores" not in row or row["scores"] is None
    assert row["error"] == "ERROR: Failed to mask field 'scores' - TypeError"
    assert row["output"] == "result"


def test_a_mask_that_raises_on_metrics_drops_them_with_an_error(experiment, store_path, mask):
    mask(broken_mask)

    experiment.log(input={"data": "test2"}, output="result2", scores={"score": 1.0},
                   metrics={"accuracy": 0.95})

    (row,) = experiment_rows(store_path, experiment)
    assert "accuracy" not in row["metrics"]
    assert row["scores"] == {"score": 1.0}
    assert row["error"] == "ERROR: Failed to mask field 'metrics' - TypeError"


def test_masking_errors_of_scores_and_metrics_are_joined(experiment, store_path, mask):
    mask(broken_mask)

    experiment.log(input={"data": "test3"}, output="result3", scores={"accuracy": 0.85},
                   metrics={"accuracy": 0.95})

    (row,) = experiment_rows(store_path, experiment)
    assert row["error"] == ("ERROR: Failed to mask field 'scores' - TypeError; "
                            "ERROR: Failed to mask field 'metrics' - TypeError")


def test_scores_the_store_would_refuse_are_dropped_with_an_error(experiment, store_path, mask):
    mask(lambda data: "REDACTED")

    experiment.log(input="q", scores={"accuracy": 0.5})

    (row,) = experiment_rows(store_path, experiment)
    assert row["input"] == "REDACTED"
    assert "scores" not in row or row["scores"] is None
    assert row["error"] == ("ERROR: Failed to mask field 'scores' - the masking function "
                            "returned str, not a dict")


def test_a_mask_result_that_cannot_be_serialised_is_stored_as_its_stand_in(logger, rows, mask):
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    mask(lambda data: Opaque())

    logger.log(input="q", output="a")

    (row,) = rows()
    assert row["input"] == row["output"] == "<Opaque>"


def test_a_mask_that_raises_for_every_value_keeps_every_record(logger, rows, mask):
    def always_fails(data: Any) -> Any:
        raise RuntimeError("no")

    mask(always_fails)

    for i in range(20):
        logger.log(input=i, output=i)

    got = rows()
    assert len(got) == 20
    assert {row["output"] for row in got} == {"ERROR: Failed to mask field 'output' - RuntimeError"}


def test_setting_none_turns_masking_off(logger, rows, mask):
    mask(replacing("sensitive", "REDACTED"))
    logger.log(input="sensitive one")
    tracer.flush()

    tracer.set_masking_function(None)
    logger.log(input="sensitive two")

    assert sorted(row["input"] for row in rows()) == ["REDACTED one", "sensitive two"]


def test_a_non_callable_is_refused_naming_the_argument():
    with pytest.raises(TypeError, match="masking_function must be a callable or None, got str"):
        tracer.set_masking_function("not a function")  # type: ignore[arg-type]


def test_a_refused_masking_function_leaves_the_one_set(logger, rows, mask):
    mask(hide_api_keys)

    with pytest.raises(TypeError):
        tracer.set_masking_function(42)  # type: ignore[arg-type]
    logger.log(input={"api_key": "sk-1"})

    (row,) = rows()
    assert row["input"] == {"api_key": "HIDDEN"}


def _log_in_a_forked_child() -> None:
    with tracer.start_span("in child", input={"api_key": "sk-child"}):
        pass
    tracer.flush()


def test_a_forked_child_masks_with_its_parents_function(logger, rows, mask):
    mask(lambda data: hide_api_keys(data))  # not picklable: a fork child inherits it anyway

    child = multiprocessing.get_context("fork").Process(target=_log_in_a_forked_child)
    child.start()
    child.join(60)

    assert child.exitcode == 0
    (row,) = rows()
    assert row["input"] == {"api_key": "HIDDEN"}


def test_spawned_pool_workers_mask_with_the_submitters_function(logger, rows, mask):
    mask(hide_api_keys)

    with tracer.TracedPool(1, context=multiprocessing.get_context("spawn")) as pool:
        assert pool.map(call_service, [{"api_key": "sk-1"}]) == [
            {"status": "ok", "api_key": "sk-1"}]

    (row,) = rows()
    assert row["input"] == {"settings": {"api_key": "HIDDEN"}}
    assert row["output"] == {"status": "ok", "api_key": "HIDDEN"}
