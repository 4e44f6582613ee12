"""``tracer export`` (formats and filters) and ``tracer import`` (span trees from any program,
rows in the underlying format), run as real subprocesses against real stores; and the
reference's "Importing spans" example, end to end.

What the aggregator stores goes to this process's SQLite store; the filters, the imports and
the round trips run on a store of each backend too (``store_url``: for the filters, the logged
rows are copied into the PostgreSQL one as they are first). The output formats are the same
code whatever the backend: SQLite's.

Every CLI child gets ``clean_env()``, so it never attaches to this test process's aggregator.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import tracer
from tests.conftest import ROOT, by_name, clean_env, run_cli
from tests.openai_server import CHAT_USAGE
from tracer import config
from workers.store import open_store

EXAMPLE = os.path.join(ROOT, "scripts", "import_example")
REFERENCE_SPANS = os.path.join(EXAMPLE, "spans.jsonl")  # the reference's printed output


def export(store: str, *args: str) -> str:
    """``tracer export ARGS --store STORE``'s output; fails the test if the command fails."""
    proc = run_cli("export", "--store", store, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def import_(store: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``tracer import ARGS --store STORE``, feeding ``stdin`` when given."""
    return subprocess.run([sys.executable, "-m", "workers.cli", "import", *args, "--store", store],
                          input=stdin, env=clean_env(PYTHONIOENCODING="utf-8"),
                          capture_output=True, encoding="utf-8", timeout=60)


def stored(store: str, project: str | None = None,
           experiment: str | None = None) -> list[dict]:
    with open_store(store, readonly=True) as reader:
        return list(reader.rows(project=project, experiment=experiment))


def made(store: str) -> bool:
    """Whether the store exists (a SQLite file, a database with a store's tables)."""
    try:
        open_store(store, readonly=True).close()
    except FileNotFoundError:
        return False
    return True


def copied(store_path: str, project: str, store_url: str) -> str:
    """Where the filters run: for the SQLite backend ``store_path`` itself (the aggregator's
    SQLite store), for PostgreSQL ``store_url`` with the project's rows of ``store_path``
    imported as they are."""
    if not config.is_postgres(store_url):
        return store_path
    proc = import_(store_url, "-", stdin=export(store_path, "--project", project))
    assert proc.returncode == 0, proc.stderr
    return store_url


def log_timed_spans() -> None:
    """Three root spans started at epoch 100, 200 and 300 s; the one at 200 is an llm span that
    failed."""
    for start in (100.0, 300.0):
        with tracer.start_span(f"at {start:.0f}", type="task") as span:
            span.log(metrics={"start": start, "end": start + 1})
    with tracer.start_span("at 200", type="llm") as span:
        span.log(metrics={"start": 200.0, "end": 201.0}, error="timed out")
    tracer.flush(timeout=30)


# -- export: formats and filters -------------------------------------------------------------


def test_export_json_prints_one_array_of_the_rows_jsonl_prints(logger, store_path, project):
    log_timed_spans()

    as_json = json.loads(export(store_path, "--project", project, "--format", "json"))
    as_lines = [json.loads(line) for line in
                export(store_path, "--project", project).splitlines()]

    assert as_json == as_lines
    assert [row["span_attributes"]["name"] for row in as_json] == ["at 100", "at 200", "at 300"]


def test_export_csv_has_a_column_per_top_level_field_and_nested_values_as_json(
        logger, store_path, project):
    with tracer.start_span("csv row", input="plain text", metadata={"k": [1, 2]}):
        pass
    tracer.flush(timeout=30)

    (row,) = list(csv.DictReader(io.StringIO(
        export(store_path, "--project", project, "--format", "csv"))))

    assert row["input"] == "plain text"
    assert json.loads(row["metadata"]) == {"k": [1, 2]}
    assert json.loads(row["span_attributes"]) == {"name": "csv row", "type": "task"}
    assert row["span_parents"] == "" and row["project_name"] == project
    assert row["id"] == row["span_id"] == row["root_span_id"]


def test_export_since_and_until_keep_spans_started_in_that_range(logger, store_path, project,
                                                                 store_url):
    log_timed_spans()
    store = copied(store_path, project, store_url)

    epoch = export(store, "--project", project, "--since", "150", "--until", "300")
    iso = export(store, "--project", project, "--since", "1970-01-01T00:02:30",
                 "--until", "1970-01-01T00:05:00+00:00")

    assert [json.loads(line)["span_attributes"]["name"] for line in epoch.splitlines()] == \
        ["at 200"]
    assert iso == epoch


def test_export_type_keeps_spans_of_that_type(logger, store_path, project, store_url):
    log_timed_spans()
    store = copied(store_path, project, store_url)

    out = export(store, "--project", project, "--type", "task")

    assert [json.loads(line)["span_attributes"]["name"] for line in out.splitlines()] == \
        ["at 100", "at 300"]


def test_export_errors_keeps_spans_with_an_error(logger, store_path, project, store_url):
    log_timed_spans()
    store = copied(store_path, project, store_url)

    out = export(store, "--project", project, "--errors")

    assert [json.loads(line)["error"] for line in out.splitlines()] == ["timed out"]


def test_export_experiment_takes_its_name_or_its_id(experiment, store_path, project,
                                                   store_url):
    experiment.log(output="in the experiment")
    tracer.flush(timeout=30)
    store = copied(store_path, project, store_url)

    by_name_ = export(store, "--experiment", "exp")
    by_id = export(store, "--experiment", experiment.id)

    assert by_id and [json.loads(line)["experiment_id"] for line in by_id.splitlines()] == \
        [experiment.id]
    assert experiment.id in by_name_


def test_export_rejects_a_time_it_cannot_read():
    proc = run_cli("export", "--since", "yesterday")

    assert proc.returncode == 2
    assert "'yesterday' is neither epoch seconds nor an ISO 8601 time" in proc.stderr


# -- import: span trees ----------------------------------------------------------------------


def test_import_of_span_trees_writes_spans_with_ids_parents_and_root(store_url):
    store = store_url

    proc = import_(store, REFERENCE_SPANS, "--project", "imported")

    assert proc.returncode == 0, proc.stderr
    assert "imported 4 rows (2 traces)" in proc.stdout
    rows = stored(store, project="imported")
    roots = [row for row in rows if row["span_parents"] is None]
    children = [row for row in rows if row["span_parents"]]
    assert len(roots) == len(children) == 2
    for child in children:
        (parent,) = [root for root in roots if root["span_id"] == child["span_parents"][0]]
        assert child["root_span_id"] == parent["span_id"] == parent["root_span_id"]
    for row in rows:
        assert row["id"] == row["span_id"]
        assert row["span_id"][:18] == row["root_span_id"][:18]  # one trace: one trace id
        assert row["log_id"] == "g"


def test_import_keeps_a_trees_fields_names_and_metrics(store_url):
    store = store_url
    with open(REFERENCE_SPANS) as f:
        first = json.loads(f.readline())

    assert import_(store, REFERENCE_SPANS, "--project", "imported").returncode == 0

    rows = stored(store, project="imported")
    root = next(row for row in rows if row["input"] == first["input"])
    (llm,) = [row for row in rows if row["span_parents"] == [root["span_id"]]]
    assert root["span_attributes"] == {"name": "run_input"}
    assert (root["output"], root["expected"], root["metadata"]) == \
        (first["output"], first["expected"], first["metadata"])
    child = first["children"][0]
    assert llm["span_attributes"] == {"name": "OpenAI Chat Completion"}
    assert (llm["input"], llm["output"], llm["metrics"]) == \
        (child["input"], child["output"], child["metrics"])


def test_import_reads_standard_input_when_the_file_is_a_dash(store_url):
    store = store_url
    tree = {"name": "from stdin", "output": "ok", "scores": {"good": 1},
            "children": [{"name": "child", "type": "tool"}]}

    proc = import_(store, "-", "--project", "piped", stdin=json.dumps(tree) + "\n")

    assert proc.returncode == 0, proc.stderr
    named = by_name(stored(store, project="piped"))
    assert named["from stdin"]["scores"] == {"good": 1}
    assert named["child"]["span_attributes"] == {"name": "child", "type": "tool"}


def test_import_into_an_experiment_adds_to_the_one_of_that_name(store_url):
    store = store_url

    for _ in range(2):
        proc = import_(store, REFERENCE_SPANS, "--project", "support", "--experiment", "batch")
        assert proc.returncode == 0, proc.stderr

    rows = stored(store, experiment="batch")
    assert len(rows) == 8
    assert {row["experiment_name"] for row in rows} == {"batch"}
    assert len({row["experiment_id"] for row in rows}) == 1
    assert {row["project_name"] for row in rows} == {"support"}


def test_import_rejects_a_malformed_line_naming_it_and_writes_nothing(store_url):
    store = store_url
    assert import_(store, "-", "--project", "p", stdin='{"name": "before"}\n').returncode == 0
    good = json.dumps({"name": "good"})

    proc = import_(store, "-", "--project", "p", stdin=f"{good}\n{{not json\n")

    assert proc.returncode == 2
    assert "<stdin>:2: not JSON" in proc.stderr
    assert [row["span_attributes"]["name"] for row in stored(store)] == ["before"]


def test_import_rejects_an_invalid_score_in_a_tree_naming_the_span(store_url):
    store = store_url
    tree = {"name": "root", "children": [{"name": "judge", "scores": {"accuracy": 7}}]}

    proc = import_(store, "-", "--project", "p", stdin=json.dumps(tree) + "\n")

    assert proc.returncode == 2
    assert "<stdin>:1 children[0]: scores['accuracy'] = 7 is outside [0, 1]" in proc.stderr
    assert not made(store)


def test_import_rejects_an_unknown_key_in_a_tree(store_url):
    store = store_url

    proc = import_(store, "-", "--project", "p", stdin='{"name": "x", "outptu": 1}\n')

    assert proc.returncode == 2
    assert "<stdin>:1: unknown key 'outptu'" in proc.stderr


# -- import: rows in the underlying format; round trips --------------------------------------


def log_varied_traces(experiment: tracer.Experiment, logger: tracer.Logger) -> None:
    """Logs and experiment rows: nesting, scores, errors, tags, merges, a chosen id, updates."""
    with logger.start_span("logged root", type="task", input={"q": "?"}) as root:
        root.log(metadata={"nested": {"a": [1, 2.5, None]}}, tags=["b", "a"])
        with root.start_span("child", type="llm") as child:
            child.log(output="answer", metrics={"tokens": 7}, error="partial failure")
    experiment.log(input="x", output="y", expected="y", scores={"exact": 1}, id="chosen-id")
    with experiment.start_span("scored") as span:
        span.log(scores={"similarity": 0.375, "cleared": None}, output=["é", "\u2028"])
    tracer.flush(timeout=30)
    logger.update_span(id=root.id, output="updated later")
    tracer.flush(timeout=30)


def test_export_import_export_gives_byte_for_byte_the_same_rows(logger, experiment, store_path,
                                                               project, store_url):
    log_varied_traces(experiment, logger)
    first = export(store_path, "--project", project)
    copy = store_url

    proc = import_(copy, "-", stdin=first)

    assert proc.returncode == 0, proc.stderr
    assert "imported 4 rows (3 traces)" in proc.stdout
    assert export(copy, "--project", project) == first


def test_rows_imported_as_they_are_keep_their_ids_and_containers(logger, experiment, store_path,
                                                                  project, store_url):
    log_varied_traces(experiment, logger)
    original = {row["id"]: row for row in stored(store_path, project=project)}
    copy = store_url

    assert import_(copy, "-", stdin=export(store_path, "--project", project)).returncode == 0

    imported = {row["id"]: row for row in stored(copy, project=project)}
    assert imported.keys() == original.keys()
    assert imported["chosen-id"]["experiment_id"] == experiment.id
    assert imported["chosen-id"]["created"] == original["chosen-id"]["created"]


def test_importing_the_same_export_twice_changes_nothing(logger, store_path, project, store_url):
    with tracer.start_span("once", output="only once"):
        pass
    tracer.flush(timeout=30)
    first = export(store_path, "--project", project)
    copy = store_url

    for _ in range(2):
        assert import_(copy, "-", stdin=first).returncode == 0

    assert export(copy, "--project", project) == first


def test_a_span_with_several_parents_round_trips(logger, store_path, project, store_url):
    with tracer.start_span("root") as root:
        with root.start_span("left") as left, root.start_span("right") as right:
            pass
        with tracer.start_span("join", parents=[left, right]):
            pass
    tracer.flush(timeout=30)
    first = export(store_path, "--project", project)
    copy = store_url

    assert import_(copy, "-", stdin=first).returncode == 0

    assert export(copy, "--project", project) == first
    named = by_name(stored(copy, project=project))
    assert named["join"]["span_parents"] == [named["left"]["span_id"],
                                             named["right"]["span_id"]]


def test_underlying_rows_imported_into_another_project_take_its_ids(logger, store_path, project,
                                                                     store_url):
    with tracer.start_span("moved"):
        pass
    tracer.flush(timeout=30)
    copy = store_url

    proc = import_(copy, "-", "--project", "elsewhere", stdin=export(store_path, "--project",
                                                                   project))

    assert proc.returncode == 0, proc.stderr
    (row,) = stored(copy)
    assert row["project_name"] == "elsewhere"
    assert row["span_attributes"] == {"name": "moved", "type": "task"}
    assert row["project_id"] != by_name(stored(store_path, project=project))["moved"][
        "project_id"]


# -- the reference's "Importing spans" example -----------------------------------------------


def run_script(name: str, stdin: str, env: dict[str, str], cwd: str) -> str:
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLE, name)], input=stdin, env=env,
                          cwd=cwd, capture_output=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr}"
    return proc.stdout


def test_the_reference_example_generates_imports_and_summarizes(tmp_path, openai_server):
    openai_server.reply_next("The sum of 1+1 is 2.")
    openai_server.reply_next("The moon, seen from here.")
    env = clean_env(OPENAI_BASE_URL=openai_server.base_url, OPENAI_API_KEY="test-key")

    generated = run_script("generate_spans.py", "", env, str(tmp_path))
    summary = run_script("import_spans.py", generated, env, str(tmp_path))

    assert len(generated.splitlines()) == 2
    assert "of project 'My Support App': 6 spans in 2 traces, 0 with errors" in summary
    assert "'factuality' score (mean of 2 spans)" in summary
    assert f"{2 * CHAT_USAGE['total_tokens']} tokens (total of 2 spans" in summary
    rows = stored(str(tmp_path / ".tracer" / "traces.db"), project="My Support App")
    tasks = [row for row in rows if row["span_attributes"]["name"] == "task"]
    assert sorted(task["scores"]["factuality"] for task in tasks)[1] == 1.0
    for task in tasks:
        assert 0 <= task["scores"]["factuality"] <= 1
        assert task["metadata"]["template"] == "Answer the following question: %s"
        assert "method" in task["metadata"]["factuality"]
        kids = {row["span_attributes"]["name"]: row for row in rows
                if row["span_parents"] == [task["span_id"]]}
        assert kids.keys() == {"OpenAI Chat Completion", "Factuality"}
        llm = kids["OpenAI Chat Completion"]
        assert llm["metrics"]["tokens"] == CHAT_USAGE["total_tokens"]
        assert llm["metrics"]["start"] < llm["metrics"]["end"] < task["metrics"]["start"]


def test_the_reference_example_imports_its_stored_input(tmp_path):
    with open(REFERENCE_SPANS) as f:
        spans = f.read()

    summary = run_script("import_spans.py", spans, clean_env(), str(tmp_path))

    assert "6 spans in 2 traces, 0 with errors" in summary
    assert "100.00% 'factuality' score (mean of 2 spans)" in summary
    assert "60 tokens (total of 2 spans, mean 30)" in summary
    assert "rows: experiment " in summary and str(tmp_path) in summary
