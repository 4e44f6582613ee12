"""The ``tracer`` command line, run as a real subprocess.

Every child gets ``clean_env()``, so it never attaches to this test process's aggregator unless
a test hands it an endpoint explicitly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import tracer
from tests import programs
from tests.conftest import Store, clean_env, run_cli, run_function

UNKNOWN_ROOT = "00000000-0000-0000-0000-000000000000"


def log_nested_trace_with_caught_error() -> str:
    """outer > middle > inner, inner failing (caught); returns the trace's root_span_id."""
    with tracer.start_span("outer", type="task") as outer, tracer.start_span("middle"):
        try:
            with tracer.start_span("inner", type="tool"):
                raise RuntimeError("inner went wrong")
        except RuntimeError:
            pass
    tracer.flush(timeout=30)
    return outer.root_span_id


def line_naming(output: str, name: str) -> str:
    """The one line of a printed tree that shows the span ``name``."""
    (line,) = [line for line in output.splitlines()
               if line.lstrip("└├─│ ").startswith(name + " ")]
    return line


# -- help ------------------------------------------------------------------------------------


def test_help_exits_zero_and_lists_every_command():
    proc = run_cli("--help")

    assert proc.returncode == 0, proc.stderr
    assert "Multiprocessing-safe tracing" in proc.stdout
    for command in ("demo", "export", "import", "show", "stats", "import-payloads", "prune",
                    "aggregator"):
        assert command in proc.stdout


COMMAND_DESCRIPTIONS = {
    "demo": "traced workload",
    "export": "JSON object per row",
    "import": "write them as spans",
    "show": "trace as a tree",
    "stats": "counters",
    "import-payloads": "payload files",
    "prune": "started more than DURATION ago",
    "aggregator": "Run an aggregator",
}


@pytest.mark.parametrize("command, description", COMMAND_DESCRIPTIONS.items(),
                         ids=COMMAND_DESCRIPTIONS.keys())
def test_command_help_exits_zero_and_describes_the_command(command, description):
    proc = run_cli(command, "--help")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: tracer " + command)
    assert description in proc.stdout


def test_console_script_runs_the_cli():
    script = shutil.which("tracer", path=os.path.dirname(sys.executable)) or shutil.which("tracer")
    assert script is not None, "the tracer console script is not installed"

    proc = subprocess.run([script, "--help"], env=clean_env(PYTHONIOENCODING="utf-8"),
                          capture_output=True, encoding="utf-8", timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: tracer")


# -- demo ------------------------------------------------------------------------------------


def test_demo_prints_the_trace_tree_with_its_caught_error_and_the_store(tmp_path):
    store = str(tmp_path / "demo.db")

    proc = run_cli("demo", "--store", store, "--tasks", "4", timeout=60)

    assert proc.returncode == 0, proc.stderr
    for name in ("demo pipeline", "process_document", "fake LLM"):
        assert name in proc.stdout
    assert any("✗" in line for line in proc.stdout.splitlines())
    assert store in proc.stdout


def test_demo_prints_the_permalink_of_its_trace_and_how_to_serve_it(tmp_path):
    store = str(tmp_path / "demo.db")

    proc = run_cli("demo", "--store", store, "--tasks", "2", timeout=60)

    assert proc.returncode == 0, proc.stderr
    root = proc.stdout.split("trace ", 1)[1].split(":", 1)[0]
    assert f"permalink: http://127.0.0.1:8585/p/demo/logs?r={root}&s={root}" in proc.stdout
    assert f"tracer serve --store {store}" in proc.stdout


# -- export ----------------------------------------------------------------------------------

EXPORT_KEYS = {"id", "span_id", "root_span_id", "span_parents", "span_attributes", "project_id",
               "log_id", "created", "metrics", "project_name"}


def log_two_traces() -> tuple[str, str]:
    with tracer.start_span("first root") as first, tracer.start_span("first child") as child:
        child.log(input="question", output="answer")
    with tracer.start_span("second root") as second:
        second.log(metadata={"n": 2})
    tracer.flush(timeout=30)
    return first.root_span_id, second.root_span_id


def test_export_prints_one_json_object_per_stored_row(logger, rows, store_path, project):
    log_two_traces()

    proc = run_cli("export", "--store", store_path, "--project", project)

    assert proc.returncode == 0, proc.stderr
    exported = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {row["id"] for row in exported} == {row["id"] for row in rows()}


def test_export_rows_carry_the_underlying_format_keys(logger, store_path, project):
    log_two_traces()

    proc = run_cli("export", "--store", store_path, "--project", project)

    assert proc.returncode == 0, proc.stderr
    exported = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(exported) == 3
    for row in exported:
        assert row.keys() >= EXPORT_KEYS, EXPORT_KEYS - row.keys()
        assert row["project_name"] == project


def test_export_root_filters_to_that_trace(logger, rows, store_path, project):
    first_root, _ = log_two_traces()

    proc = run_cli("export", "--store", store_path, "--project", project, "--root", first_root)

    assert proc.returncode == 0, proc.stderr
    exported = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = {row["id"] for row in rows() if row["root_span_id"] == first_root}
    assert {row["id"] for row in exported} == expected
    assert {row["span_attributes"]["name"] for row in exported} == {"first root", "first child"}


# -- show ------------------------------------------------------------------------------------


def test_show_prints_nested_names_indented_by_depth(logger, store_path):
    root = log_nested_trace_with_caught_error()

    proc = run_cli("show", root, "--store", store_path)

    assert proc.returncode == 0, proc.stderr
    outer, middle, inner = (line_naming(proc.stdout, name) for name in ("outer", "middle", "inner"))
    assert outer.index("outer") < middle.index("middle") < inner.index("inner")


def test_show_marks_the_errored_span(logger, store_path):
    root = log_nested_trace_with_caught_error()

    proc = run_cli("show", root, "--store", store_path)

    assert proc.returncode == 0, proc.stderr
    assert "✗" in line_naming(proc.stdout, "inner")
    assert "inner went wrong" in line_naming(proc.stdout, "inner")
    assert "✗" not in line_naming(proc.stdout, "outer")
    assert "✗" not in line_naming(proc.stdout, "middle")


def test_show_last_prints_the_most_recently_written_trace(logger, store_path):
    root = log_nested_trace_with_caught_error()

    proc = run_cli("show", "--last", "--store", store_path)

    assert proc.returncode == 0, proc.stderr
    assert root in proc.stdout.splitlines()[0]
    assert "inner" in proc.stdout


def test_show_draws_a_trace_1200_levels_deep_with_the_deep_levels_numbered(logger, store_path):
    spans = [tracer.start_span("level 0")]
    for level in range(1, 1200):  # a chain: each span the only child of the one before
        spans.append(spans[-1].start_span(f"level {level}"))
    for span in reversed(spans):
        span.end()
    tracer.flush(timeout=30)

    proc = run_cli("show", spans[0].root_span_id, "--store", store_path)

    assert proc.returncode == 0, proc.stderr
    assert "1200 spans" in proc.stdout.splitlines()[0]
    for level in (0, 1, 64, 65, 1199):
        assert f"level {level} " in proc.stdout
    assert "[level 1199] level 1199 " in proc.stdout
    assert "deeper than 64 levels" in proc.stdout
    deepest = [line for line in proc.stdout.splitlines() if "level 1199 " in line]
    assert len(deepest) == 1 and len(deepest[0]) < 400  # indentation stops growing


def test_show_unknown_root_exits_1_with_message_on_stderr(logger, store_path):
    log_nested_trace_with_caught_error()  # the store exists and has traces

    proc = run_cli("show", UNKNOWN_ROOT, "--store", store_path)

    assert proc.returncode == 1
    assert UNKNOWN_ROOT in proc.stderr
    assert proc.stdout == ""


def test_show_missing_store_exits_2_with_clear_message(tmp_path):
    missing = str(tmp_path / "missing.db")

    proc = run_cli("show", "--last", "--store", missing)

    assert proc.returncode == 2
    assert "no store" in proc.stderr and missing in proc.stderr


# -- stats -----------------------------------------------------------------------------------


def test_stats_json_reports_live_aggregator_counters(logger, store_path):
    with tracer.start_span("counted") as span:
        span.log(output="something to count")
    tracer.flush(timeout=30)

    proc = run_cli("stats", "--store", store_path, "--json",
                   "--endpoint", os.environ["TRACER_ENDPOINT"])

    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["counters"]["records"] > 0
    assert stats["counters"]["rows_committed"] > 0
    assert "queue_depth" in stats


# -- standalone aggregator -------------------------------------------------------------------


def test_standalone_aggregator_commits_a_remote_span_and_exits_0_on_sigterm(
        standalone_aggregator):
    run_function(programs.logs_a_span_over_tcp,
                 env=clean_env(TRACER_ENDPOINT=standalone_aggregator.endpoint))

    assert standalone_aggregator.stop(timeout=10) == 0, standalone_aggregator.log()
    with Store(standalone_aggregator.store) as reader:
        stored = list(reader.rows(project="standalone"))
    assert [row["span_attributes"]["name"] for row in stored] == ["remote span"]
    assert stored[0]["input"] == "sent over tcp"


def test_show_draws_a_span_with_several_parents_under_the_first_and_names_the_others(
        logger, store_path):
    with tracer.start_span("pipeline") as pipeline:
        users, orders = pipeline.start_span("users"), pipeline.start_span("orders")
        users.end()
        orders.end()
        with tracer.start_span("join", parents=[users, orders]):
            pass
    tracer.flush(timeout=30)

    proc = run_cli("show", pipeline.root_span_id, "--store", store_path)

    assert proc.returncode == 0, proc.stderr
    assert "(also under 'orders')" in line_naming(proc.stdout, "join")
    assert line_naming(proc.stdout, "join").index("join") > \
        line_naming(proc.stdout, "users").index("users")
