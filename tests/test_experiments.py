"""Experiments (``tracer.init``): isolation from logs and from each other, ``Experiment.log``,
scores, and ``summarize()``, through the real aggregator and store."""

from __future__ import annotations

import math
import os

import pytest

import tracer
from workers.rows import project_id

from . import programs
from .conftest import by_name, experiment_rows, run_function

# -- containers: experiments beside logs -----------------------------------------------------


def test_experiment_rows_carry_the_experiments_ids_and_names(experiment, store_path, project):
    experiment.log(input="question", output="answer")

    (row,) = experiment_rows(store_path, experiment)
    assert row["experiment_id"] == experiment.id
    assert row["experiment_name"] == "exp"
    assert row["project_name"] == project
    assert row["project_id"] == project_id(project)
    assert "log_id" not in row


def test_experiment_rows_and_project_logs_never_mix(logger, experiment, rows, store_path):
    with logger.start_span("in the logs"):
        pass
    with experiment.start_span("in the experiment"):
        pass

    in_experiment = experiment_rows(store_path, experiment)
    in_logs = [row for row in rows() if row.get("log_id") == "g"]
    assert [row["span_attributes"]["name"] for row in in_experiment] == ["in the experiment"]
    assert [row["span_attributes"]["name"] for row in in_logs] == ["in the logs"]


def test_two_experiments_of_one_project_never_mix_rows_even_under_one_name(store_path, project):
    first = tracer.init(project, "same name", store=store_path, set_current=False)
    second = tracer.init(project, "same name", store=store_path, set_current=False)
    first.log(output="first")
    second.log(output="second")

    assert first.id != second.id
    assert [row["output"] for row in experiment_rows(store_path, first)] == ["first"]
    assert [row["output"] for row in experiment_rows(store_path, second)] == ["second"]


def test_an_experiment_name_is_generated_when_not_given(store_path, project):
    first = tracer.init(project, store=store_path, set_current=False)
    second = tracer.init(project, store=store_path, set_current=False)
    first.log(output="x")

    assert first.name.startswith("experiment-") and second.name.startswith("experiment-")
    assert first.name != second.name
    (row,) = experiment_rows(store_path, first)
    assert row["experiment_name"] == first.name


def test_spans_outside_any_span_go_to_the_current_experiment_before_the_logger(
        logger, experiment: tracer.Experiment, rows, store_path):
    @tracer.traced
    def traced_root():
        return 1

    traced_root()
    with tracer.start_span("started root"):
        pass

    assert tracer.current_experiment() is experiment
    assert tracer.current_logger() is logger
    names = {row["span_attributes"]["name"] for row in experiment_rows(store_path, experiment)}
    assert names == {"traced_root", "started root"}
    assert [row for row in rows() if row.get("log_id")] == []


def test_a_child_process_traces_into_its_parents_experiment(experiment, store_path):
    # The child inherits this process's environment, where init() left the experiment.
    run_function(programs.traces_into_the_inherited_experiment, experiment.id,
                 env=dict(os.environ))

    names = [row["span_attributes"]["name"] for row in experiment_rows(store_path, experiment)]
    assert names == ["in the child"]


# -- Experiment.log, update_span, logged times ----------------------------------------------


def test_experiment_log_records_one_root_row_and_returns_its_id(experiment, store_path):
    row_id = experiment.log(input={"q": "1+1"}, output="2", expected="2", scores={"exact": 1},
                            metadata={"model": "m"}, metrics={"tokens": 3}, id="row-1")

    (row,) = experiment_rows(store_path, experiment)
    assert row_id == row["id"] == "row-1"
    assert row["span_parents"] is None
    assert (row["input"], row["output"], row["expected"]) == ({"q": "1+1"}, "2", "2")
    assert row["scores"] == {"exact": 1}
    assert row["metadata"] == {"model": "m"}
    assert row["metrics"]["tokens"] == 3


def test_experiment_update_span_merges_into_a_logged_row(experiment, store_path):
    row_id = experiment.log(output="draft", metadata={"a": 1})
    experiment.flush()
    experiment.update_span(id=row_id, output="final", scores={"quality": 0.25},
                           metadata={"b": 2})

    (row,) = experiment_rows(store_path, experiment)
    assert row["output"] == "final"
    assert row["scores"] == {"quality": 0.25}
    assert row["metadata"] == {"a": 1, "b": 2}


def test_a_logged_start_and_end_replace_the_spans_own_times(experiment, store_path):
    with experiment.start_span("imported") as span:
        span.log(metrics={"start": 100.0, "end": 101.5})
    with experiment.start_span("started at", metrics={"start": 200.0}):
        pass

    named = by_name(experiment_rows(store_path, experiment))
    assert (named["imported"]["metrics"]["start"], named["imported"]["metrics"]["end"]) == \
        (100.0, 101.5)
    assert named["started at"]["metrics"]["start"] == 200.0
    assert named["started at"]["metrics"]["end"] > 200.0


# -- scores: validation ---------------------------------------------------------------------

INVALID_SCORES = {
    # id: (scores, error raised, words the message names)
    "above_one": ({"acc": 1.5}, ValueError, ("scores", "'acc'", "outside [0, 1]")),
    "negative": ({"acc": -0.1}, ValueError, ("scores", "'acc'", "outside [0, 1]")),
    "nan": ({"acc": math.nan}, ValueError, ("scores", "'acc'")),
    "a_string": ({"acc": "high"}, TypeError, ("scores", "'acc'", "number")),
    "not_a_mapping": ([0.5], TypeError, ("scores", "dict")),
    "key_not_a_string": ({1: 0.5}, TypeError, ("scores", "keys")),
}


@pytest.mark.parametrize(("scores", "error", "named"), list(INVALID_SCORES.values()),
                         ids=list(INVALID_SCORES))
def test_an_invalid_score_raises_at_the_call_site_and_logs_nothing(experiment, store_path,
                                                                   scores, error, named):
    with pytest.raises(error) as raised:
        experiment.log(output="scored", scores=scores)

    assert str(raised.value).startswith("Experiment.log: ")
    for word in named:
        assert word in str(raised.value)
    assert experiment_rows(store_path, experiment) == []


def test_a_none_score_clears_it_and_summarize_leaves_it_out(experiment, store_path):
    row_id = experiment.log(output="x", scores={"kept": 0.5, "cleared": 0.5})
    experiment.flush()
    experiment.update_span(id=row_id, scores={"cleared": None})

    (row,) = experiment_rows(store_path, experiment)
    assert row["scores"] == {"kept": 0.5, "cleared": None}
    assert set(experiment.summarize().scores) == {"kept"}


def test_init_with_a_bad_project_or_experiment_name_raises(store_path):
    with pytest.raises(TypeError, match="project must be a non-empty string"):
        # deliberately wrong type: the test checks the error
        tracer.init(3, store=store_path, set_current=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="experiment 'a\\\\x1fb' contains"):
        tracer.init("project", "a\x1fb", store=store_path, set_current=False)


# -- summarize ------------------------------------------------------------------------------


def log_known_experiment(experiment: tracer.Experiment) -> None:
    """Two traces: one scored 1.0 lasting 2 s with an LLM child of 30 tokens; one scored 0.5
    lasting 1 s, with a failing child of 12 tokens and an unscored child."""
    with experiment.start_span("first") as root:
        root.log(scores={"accuracy": 1.0}, metrics={"start": 1000.0, "end": 1002.0})
        with root.start_span("llm") as llm:
            llm.log(metrics={"tokens": 30, "prompt_tokens": 20})
    with experiment.start_span("second") as root:
        root.log(scores={"accuracy": 0.5, "style": 0.25}, metrics={"start": 2000.0, "end": 2001.0})
        with root.start_span("failing llm") as llm:
            llm.log(metrics={"tokens": 12, "prompt_tokens": 10}, error="rate limited")
        with root.start_span("unscored"):
            pass


def test_summarize_counts_spans_traces_and_errors(experiment):
    log_known_experiment(experiment)

    summary = experiment.summarize()

    assert (summary.spans, summary.traces, summary.errors) == (5, 2, 1)


def test_summarize_gives_the_mean_of_each_score_over_the_spans_that_have_it(experiment):
    log_known_experiment(experiment)

    scores = experiment.summarize().scores

    assert set(scores) == {"accuracy", "style"}
    assert (scores["accuracy"].score, scores["accuracy"].count) == (0.75, 2)
    assert (scores["style"].score, scores["style"].count) == (0.25, 1)


def test_summarize_totals_metrics_and_the_duration_of_traces(experiment):
    log_known_experiment(experiment)

    metrics = experiment.summarize().metrics

    assert (metrics["tokens"].total, metrics["tokens"].count) == (42, 2)
    assert metrics["prompt_tokens"].total == 30
    assert (metrics["duration"].total, metrics["duration"].count) == (3.0, 2)
    assert metrics["duration"].mean == 1.5
    assert "start" not in metrics and "end" not in metrics


def test_summary_prints_scores_metrics_and_where_the_rows_are(experiment, store_path, project):
    log_known_experiment(experiment)

    text = str(experiment.summarize())

    assert f"experiment 'exp' of project {project!r}: 5 spans in 2 traces, 1 with errors" in text
    assert "75.00% 'accuracy' score (mean of 2 spans)" in text
    assert "42 tokens (total of 2 spans, mean 21)" in text
    assert "3s duration (total of 2 traces, mean 1.5s)" in text
    assert f"tracer export --experiment {experiment.id} --store {store_path}" in text


def test_summarize_of_an_empty_experiment_reports_no_spans(experiment):
    summary = experiment.summarize()

    assert (summary.spans, summary.traces, summary.scores, summary.metrics) == (0, 0, {}, {})


def test_summarize_without_a_known_store_raises_a_clear_error(project):
    # An aggregator reached by its address only: nothing is sent, so none need be listening.
    remote = tracer.init(project, endpoint="tcp://127.0.0.1:9", set_current=False)

    with pytest.raises(RuntimeError) as raised:
        remote.summarize()

    assert "tcp://127.0.0.1:9" in str(raised.value)
    assert "does not know its store" in str(raised.value)
    assert f"tracer export --experiment {remote.id}" in str(raised.value)
