#!/usr/bin/env python
"""How many of the reference SDK's own tracing tests pass, assertions unchanged, against tracer.

    PYTHONPATH=. python scripts/compat/run_reference_tests.py \\
        --reference /path/to/braintrust-sdk-python [--against tracer|braintrust|braintrust-src] \\
        [--json out.json] [-k EXPR] [--keep] [--verbose]

What it measures: the reference SDK (Braintrust's Python SDK) tests its tracing API in three
files, ``py/src/braintrust/test_logger.py``, ``test_context.py`` and
``wrappers/test_openai.py`` (whose OpenAI calls replay VCR cassettes). This script copies them,
unchanged, into a temporary directory and runs pytest on them in a subprocess with ``import
braintrust`` answered by ``tracer``; it prints, per file, how many passed, failed or errored,
classifies every failure by the first line of its error, and sets apart the tests that depend on
the hosted service (the ``HOSTED`` list below): "the target" is every other test passing.

How ``braintrust`` becomes ``tracer`` (``--against tracer``, the default; see ``refshim.py``):

- ``braintrust``, ``braintrust.logger``, ``braintrust.wrappers.openai``, ``braintrust.oai``,
  ``braintrust.wrappers.threads``... are modules of a shim that look each name up in ``tracer``'s
  public API (then in the tracer modules that play the reference module's part). A name tracer
  lacks, and every private name (``logger._state``), is a stand-in that raises ``NotProvided:
  braintrust.logger.X is not provided by tracer`` when used, so the file imports and only the
  tests that use the name fail: the honest measurement of what exists at run time.
- The reference's test doubles are replaced, nothing else: its memory logger (the
  ``with_memory_logger`` and ``memory_logger`` fixtures, ``logger._internal_with_memory_
  background_logger()``) by one whose ``pop()`` calls ``tracer.flush()`` and returns the rows our
  store holds that are new or changed since the last ``pop()``, in the underlying format;
  ``init_test_logger(name)`` by ``tracer.init_logger(name, store=<temp store>)``;
  ``init_test_exp`` by ``tracer.init(...)``; ``simulate_login``/``simulate_logout``/
  ``with_simulate_login``/``assert_logged_out`` by no-ops (there is no login); its conftest's
  state reset by one of tracer's state. Its pure helpers (``assert_dict_matches``,
  ``wrappers/test_utils.py``) and the rest of its conftest are its own files, unchanged.
- Every ``init_logger()`` of the run writes to one temporary store (``TRACER_STORE``), through
  one aggregator; ``TRACER_*``/``BRAINTRUST_*`` variables of the caller are not passed on.

``--against braintrust`` runs the same files against the installed ``braintrust`` package with
its own fixtures (a check of the harness; names the installed version lacks get the same
stand-ins), and ``--against braintrust-src`` against the reference's own source (``py/src``, the
version the tests were written for).

``--reference`` is a checkout of braintrust-sdk-python, its ``py/src/braintrust`` directory, or a
git mirror of it (a bare repository, or a directory holding one as ``repo``; ``--rev`` picks the
commit, default HEAD).

Needs, beside tracer's own dependencies: pytest, pytest-asyncio, pytest-vcr (vcrpy),
pytest-forked (``test_context.py`` forks its ``setup_threads`` tests, as the reference runs
them), openai and pydantic, and optionally pytest-timeout. They are the harness's needs, not the
project's: ``pip install pytest-asyncio pytest-vcr pytest-forked``.
"""

from __future__ import annotations

import argparse
import ast
import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))

# The three files, relative to the reference package (py/src/braintrust).
TEST_FILES = ("test_logger.py", "test_context.py", "wrappers/test_openai.py")
# The reference's helper files the tests import (as braintrust.conftest, .test_helpers,
# .wrappers.test_utils): copied as they are.
HELPER_FILES = ("conftest.py", "test_helpers.py", "wrappers/test_utils.py", "version.py")
PACKAGE = "py/src/braintrust"

# -- tests that depend on the hosted service ---------------------------------------------------
#
# Set apart from the target, each with why. The brief's kinds: login state, organisation names
# and app URLs (links built on www.braintrust.dev's scheme), server-assigned ids and metadata
# objects, the SDK's `_state` internals, OTel id generators and exporters, datasets and BTQL,
# prompts. Two more kinds are set apart here and can be moved back if we decide otherwise:
# "internals" (tests that call the reference's private helpers by name, such as
# `_extract_attachments` or `ChatCompletionWrapper._postprocess_streaming_results`: no
# implementation of the API has them) and "test-double" (assertions on the reference memory
# logger's own bookkeeping, `upload_attempts`, by object identity, which a store in another
# process cannot reproduce).
HOSTED: dict[str, str] = {
    # datasets: `braintrust.logger.Dataset`, BTQL queries against the API
    "test_logger.py::TestInit::test_init_with_dataset_id_only": "dataset",
    "test_logger.py::TestInit::test_init_with_dataset_id_and_version": "dataset",
    "test_logger.py::test_masking_function_dataset": "dataset",
    "test_logger.py::TestDatasetInternalBtql::test_dataset_internal_btql_limit_not_overwritten":
        "dataset",
    "test_logger.py::TestDatasetInternalBtql::test_dataset_default_limit_when_not_specified":
        "dataset",
    "test_logger.py::TestDatasetInternalBtql::test_dataset_custom_batch_size_in_fetch": "dataset",
    # server-assigned ids and metadata: ObjectMetadata/lazy_metadata, a mocked app connection
    "test_logger.py::TestInit::test_init_with_repo_info_does_not_raise": "server-ids",
    "test_logger.py::test_masking_function_experiment": "server-ids",
    "test_logger.py::test_masking_function_with_error": "server-ids",
    # `log["project_id"] == PROJECT_NAME`: the id the reference's test helper fakes for the
    # server's (tracer derives its own from the name)
    "wrappers/test_openai.py::test_openai_client_error": "server-ids",
    "wrappers/test_openai.py::test_openai_client_async_error": "server-ids",
    # prompts and their templates (served by the hosted service)
    "test_logger.py::TestLogger::test_prompt_build_with_structured_output_templating": "prompt",
    "test_logger.py::TestLogger::test_lint_template_valid_variables": "prompt",
    "test_logger.py::TestLogger::test_lint_template_missing_variable": "prompt",
    "test_logger.py::TestLogger::test_prompt_build_strict_mode_enabled": "prompt",
    "test_logger.py::TestLogger::test_prompt_build_strict_mode_disabled": "prompt",
    "test_logger.py::TestLogger::test_prompt_build_nested_variables_strict": "prompt",
    "test_logger.py::TestLogger::test_prompt_build_array_variables_strict": "prompt",
    "test_logger.py::TestLogger::test_render_message_with_file_content_parts": "prompt",
    # links on the hosted app's URL scheme, org names, login state, server project ids, `_id`
    "test_logger.py::test_noop_permalink_issue_1837": "app-url",
    "test_logger.py::test_span_link_logged_out": "app-url",
    "test_logger.py::test_span_link_logged_out_org_name": "app-url",
    "test_logger.py::test_span_link_logged_out_org_name_env_vars": "app-url",
    "test_logger.py::test_span_project_id_logged_in": "app-url",
    "test_logger.py::test_span_project_name_logged_in": "app-url",
    "test_logger.py::test_span_link_with_resolved_experiment": "app-url",
    "test_logger.py::test_span_link_with_unresolved_experiment": "app-url",
    "test_logger.py::test_experiment_span_link_uses_env_vars_when_logged_out": "app-url",
    "test_logger.py::test_permalink_with_valid_span_logged_in": "app-url",
    "test_logger.py::test_span_link_in_async_context": "app-url",
    "test_logger.py::test_span_link_in_nested_async": "app-url",
    "test_logger.py::test_span_link_in_thread": "app-url",
    # login: `experiment.state.login(api_key=TEST_API_KEY, force_login=True)`
    "test_logger.py::test_nested_spans_with_export": "login",
    # the SDK's state object: `logger.state.span_cache`
    "test_logger.py::test_span_export_disables_cache": "state",
    # OTel: id generators (in `_state`), V3/V4 span component encodings, register_otel_flush
    "test_logger.py::test_otel_compatible_span_export_import": "otel",
    "test_logger.py::test_span_with_otel_ids_export_import": "otel",
    "test_logger.py::test_span_with_uuid_ids_share_root_span_id": "otel",
    "test_logger.py::test_parent_context_with_otel_ids": "otel",
    "test_logger.py::test_get_exporter_returns_v3_by_default": "otel",
    "test_logger.py::test_get_exporter_returns_v4_when_otel_enabled": "otel",
    "test_logger.py::test_experiment_export_respects_otel_compat_default": "otel",
    "test_logger.py::test_experiment_export_respects_otel_compat_enabled": "otel",
    "test_logger.py::test_logger_export_respects_otel_compat_default": "otel",
    "test_logger.py::test_logger_export_respects_otel_compat_enabled": "otel",
    "test_logger.py::test_register_otel_flush_callback": "otel",
    "test_logger.py::test_register_otel_flush_disables_span_cache": "otel",
    "test_logger.py::test_flush_otel_noop_when_no_callback": "otel",
    "test_logger.py::test_register_otel_flush_permanently_disables_cache": "otel",
    # internals: the reference's private helpers, called by name
    "test_logger.py::TestLogger::test_extract_attachments_no_op": "internals",
    "test_logger.py::TestLogger::test_extract_attachments_with_attachments": "internals",
    "test_logger.py::TestJSONAttachment::test_extract_attachments_with_json_attachment":
        "internals",
    "test_logger.py::test_attachment_identity_preserved_through_bt_safe_deep_copy": "internals",
    "test_logger.py::test_extract_attachments_collects_and_replaces": "internals",
    "test_logger.py::test_extract_attachments_preserves_identity": "internals",
    "wrappers/test_openai.py::test_openai_responses_sparse_indices": "internals",
    "wrappers/test_openai.py::TestZAICompatibleOpenAI::test_chat_completion_streaming_none_arguments":
        "internals",
    # test-double: the memory logger's `upload_attempts`, compared by identity
    "test_logger.py::test_attachment_upload_tracked_on_flush": "test-double",
    "test_logger.py::test_multiple_attachments_upload_tracked": "test-double",
    "test_logger.py::test_same_attachment_logged_twice_tracked_twice": "test-double",
    "test_logger.py::test_external_attachment_upload_tracked": "test-double",
    "test_logger.py::test_json_attachment_upload_tracked": "test-double",
    "test_logger.py::test_multiple_attachment_types_tracked": "test-double",
}

# What the pytest run needs (module, package): the harness's needs, not the project's.
NEEDS = (("pytest", "pytest"), ("pytest_asyncio", "pytest-asyncio"), ("vcr", "vcrpy"),
         ("pytest_vcr", "pytest-vcr"), ("pytest_forked", "pytest-forked"), ("openai", "openai"),
         ("pydantic", "pydantic"))
OK = ("passed", "xfailed", "xpassed")
COLUMNS = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


# -- the reference ---------------------------------------------------------------------------


class Reference:
    """The reference package's files, from a checkout or from a git mirror."""

    def __init__(self, path: str, rev: str) -> None:
        path = os.path.abspath(path)
        self.git_dir: str | None = None
        self.package: str | None = None
        if os.path.isfile(os.path.join(path, "logger.py")):
            self.package = path
        elif os.path.isdir(os.path.join(path, PACKAGE)):
            self.package = os.path.join(path, PACKAGE)
        else:
            for candidate in (path, os.path.join(path, "repo"), os.path.join(path, ".git")):
                if os.path.isfile(os.path.join(candidate, "HEAD")) and os.path.isdir(
                        os.path.join(candidate, "objects")):
                    self.git_dir = candidate
                    break
        if self.package is None and self.git_dir is None:
            raise SystemExit(f"--reference {path}: neither a checkout of the reference SDK (with "
                             f"{PACKAGE}), its package directory, nor a git mirror of it")
        self.rev = rev
        self.where = self.package or f"{self.git_dir}@{rev}"

    def _git(self, *args: str) -> bytes:
        assert self.git_dir is not None
        return subprocess.run(["git", "--git-dir", self.git_dir, *args], check=True,
                              capture_output=True).stdout

    def read(self, rel: str) -> bytes:
        if self.package is not None:
            with open(os.path.join(self.package, rel), "rb") as f:
                return f.read()
        return self._git("show", f"{self.rev}:{PACKAGE}/{rel}")

    def files(self) -> list[str]:
        """Every file of the package, relative to it."""
        if self.package is not None:
            found = []
            for root, dirs, names in os.walk(self.package):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                found += [os.path.relpath(os.path.join(root, n), self.package) for n in names]
            return found
        out = self._git("ls-tree", "-r", "--name-only", self.rev, f"{PACKAGE}/").decode()
        return [line[len(PACKAGE) + 1:] for line in out.splitlines() if line]

    def extract_source(self, dest: str) -> str:
        """A directory to put on sys.path for ``import braintrust`` to be the reference's source."""
        if self.package is not None:
            return os.path.dirname(self.package)
        archive = self._git("archive", "--format=tar", self.rev, f"{PACKAGE}/")
        os.makedirs(dest, exist_ok=True)
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
        return os.path.join(dest, "py", "src")

    def version(self) -> str:
        found = re.search(rb'VERSION\s*=\s*"([^"]+)"', self.read("version.py"))
        return found.group(1).decode() if found else "?"


def module_names(files: Iterable[str]) -> list[str]:
    """The reference package's module names (``braintrust``, ``braintrust.logger``, ...)."""
    names = {"braintrust"}
    for rel in files:
        if not rel.endswith(".py"):
            continue
        parts = rel[:-3].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        for i in range(1, len(parts) + 1):
            names.add(".".join(["braintrust", *parts[:i]]))
    return sorted(names)


def tests_in(source: str) -> list[str]:
    """The tests a file defines, as pytest names them (``name`` or ``Class::name``): functions
    and methods named test*, and test* names assigned at module level (``test_x = wrap(f)``);
    fixtures named test* are not tests. Parametrised tests appear once."""

    def is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        return any("fixture" in ast.unparse(d) for d in node.decorator_list)

    names = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("test") and not is_fixture(node):
                names.append(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names += [f"{node.name}::{m.name}" for m in node.body
                      if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and m.name.startswith("test") and not is_fixture(m)]
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets
                      if isinstance(t, ast.Name) and t.id.startswith("test")]
    return names


def imported_names(sources: Iterable[str]) -> dict[str, list[str]]:
    """``from braintrust[.x] import a, b`` anywhere in these sources: {module: [names]}."""
    found: dict[str, set[str]] = collections.defaultdict(set)
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                    and (node.module == "braintrust" or node.module.startswith("braintrust."))):
                found[node.module].update(a.name for a in node.names if a.name != "*")
    return {module: sorted(names) for module, names in sorted(found.items())}


# -- the run ---------------------------------------------------------------------------------

TRACER_CONFTEST = '''\
"""Generated by scripts/compat/run_reference_tests.py (tracer target): the reference's conftest,
its state reset replaced by tracer's, and the hooks that record each test's outcome."""
import refshim

refshim.prepare()
from braintrust.conftest import *  # noqa: E402,F403  the reference's own fixtures
from refshim import (  # noqa: E402,F401
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    reset_braintrust_state,
)
'''

BRAINTRUST_CONFTEST = '''\
"""Generated by scripts/compat/run_reference_tests.py (braintrust target): the reference's own
conftest, and the hooks that record each test's outcome."""
import refshim

refshim.prepare()
from braintrust.conftest import *  # noqa: E402,F403  the reference's own fixtures
from refshim import (  # noqa: E402,F401
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)
'''

PYTEST_INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
"""


def write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def prepare(ref: Reference, against: str, work: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Lay out the work directory; return the shim's config and the pytest process's env."""
    tests_dir = os.path.join(work, "tests")
    ref_dir = os.path.join(work, "ref", "braintrust")
    files = ref.files()
    sources = {rel: ref.read(rel).decode() for rel in TEST_FILES}
    for rel, text in sources.items():
        write(os.path.join(tests_dir, rel), text)
    helpers = {rel: ref.read(rel).decode() for rel in HELPER_FILES if rel in files}
    # The auto-instrumentation scripts test_openai.py runs, and the cassettes of its tests.
    openai_source = sources["wrappers/test_openai.py"]
    for script in re.findall(r'verify_autoinstrument_script\(\s*"([^"]+)"', openai_source):
        helpers[f"wrappers/auto_test_scripts/{script}"] = ref.read(
            f"wrappers/auto_test_scripts/{script}").decode()
    for rel, text in helpers.items():
        write(os.path.join(ref_dir, rel), text)
    wanted = {name.replace("::", ".") for name in tests_in(openai_source)}
    wanted |= {os.path.splitext(os.path.basename(r))[0] for r in helpers if "auto_test" in r}
    cassettes = os.path.join(ref_dir, "wrappers", "cassettes")
    os.makedirs(cassettes, exist_ok=True)
    for rel in files:
        stem, ext = os.path.splitext(os.path.basename(rel))
        if rel.startswith("wrappers/cassettes/") and ext == ".yaml" and stem in wanted:
            write(os.path.join(cassettes, os.path.basename(rel)), ref.read(rel))
    os.symlink(cassettes, os.path.join(tests_dir, "wrappers", "cassettes"))
    write(os.path.join(tests_dir, "pytest.ini"), PYTEST_INI)
    write(os.path.join(tests_dir, "conftest.py"),
          TRACER_CONFTEST if against == "tracer" else BRAINTRUST_CONFTEST)

    path: list[str] = []
    if against == "tracer":
        shim = os.path.join(work, "shim")
        write(os.path.join(shim, "braintrust", "__init__.py"),
              '"""The tracer target\'s braintrust: see scripts/compat/refshim.py."""\n'
              "import refshim\n\nrefshim.install_tracer_shim(__name__)\n")
        path.append(shim)
        label = "tracer"
    elif against == "braintrust-src":
        path.append(ref.extract_source(os.path.join(work, "src")))
        label = f"braintrust {ref.version()} (source)"
    else:
        from importlib.metadata import version

        label = f"braintrust {version('braintrust')}"
    path.append(HERE)
    inherited = os.environ.get("PYTHONPATH")
    if inherited:
        path.append(inherited)

    cfg: dict[str, Any] = {
        "target": "tracer" if against == "tracer" else "braintrust",
        "label": label,
        "ref_dir": ref_dir,
        "ref_modules": module_names(files),
        "imports": imported_names([*sources.values(), *helpers.values()]),
        "store": os.path.join(work, "store", "traces.db"),
        "outcomes": os.path.join(work, "outcomes.json"),
    }
    write(os.path.join(work, "refrun.json"), json.dumps(cfg, indent=1))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACER_", "_TRACER_", "BRAINTRUST_"))}
    env.update(PYTHONPATH=os.pathsep.join(path), REFRUN_CONFIG=os.path.join(work, "refrun.json"),
               PYTHONDONTWRITEBYTECODE="1")
    if against == "tracer":
        env["TRACER_STORE"] = cfg["store"]
    return cfg, env


def run_pytest(work: str, against: str, env: dict[str, str], args: argparse.Namespace) -> int:
    tests_dir = os.path.join(work, "tests")
    cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-c", "pytest.ini", "--rootdir", ".",
           "-o", "addopts=", "-p", "no:cacheprovider", "--vcr-record=none", "-q", "-rN",
           "--tb=short"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={args.timeout}")
    if against != "braintrust":  # the installed wheel's pytest plugin: not this braintrust's
        cmd += ["-p", "no:braintrust"]
    if args.k:
        cmd += ["-k", args.k]
    log_path = os.path.join(work, "pytest.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tests_dir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if args.verbose:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
        return proc.wait()


# -- the report --------------------------------------------------------------------------------


def cause(reason: str) -> str:
    """The group a failure's first line falls into: a missing name, or its line with ids and
    addresses blanked."""
    missing = re.search(r"NotProvided: (\S+) is not provided", reason)
    if missing:
        return f"not provided: {missing.group(1)}"
    reason = re.sub(r"0x[0-9a-f]+|\b[0-9a-f]{16,}\b|\b[0-9a-f-]{36}\b", "<id>", reason)
    return reason


def collect(sources: dict[str, str], outcomes: dict[str, Any],
            expect_all: bool = True) -> list[dict[str, Any]]:
    """One entry per test the files define (each parametrisation its own), with its outcome; a
    test pytest never reported is an error when its file failed to import, or when every test
    was meant to run (``expect_all``: no ``-k``)."""
    by_name: dict[str, list[tuple[str, dict[str, Any]]]] = collections.defaultdict(list)
    for nodeid, entry in outcomes["tests"].items():
        base = re.sub(r"\[.*\]$", "", nodeid)
        by_name[base].append((nodeid, entry))
    collect_errors = {e["nodeid"]: e["reason"] for e in outcomes["collect_errors"]}

    def test(test_id: str, nodeid: str, entry: dict[str, Any]) -> dict[str, Any]:
        return {"id": test_id, "nodeid": nodeid, "file": test_id.split("::")[0],
                "outcome": entry["outcome"] or "error", "reason": entry["reason"],
                "xfail": entry.get("xfail"), "hosted": HOSTED.get(test_id),
                "duration": round(entry["duration"], 3)}

    tests = []
    for rel, source in sources.items():
        for name in tests_in(source):
            test_id = f"{rel}::{name}"
            reported = by_name.pop(test_id, [])
            if not reported:
                if rel not in collect_errors and not expect_all:
                    continue
                why = collect_errors.get(rel, "not reported by pytest")
                reported = [(test_id, {"outcome": "error", "reason": f"not collected: {why}",
                                       "duration": 0.0})]
            tests += [test(test_id, nodeid, entry) for nodeid, entry in reported]
    for base, reported in by_name.items():  # reported but not found by tests_in(): keep them
        tests += [test(base, nodeid, entry) for nodeid, entry in reported]
    return tests


def table(rows: list[tuple[str, collections.Counter]]) -> str:
    head = ("file", "tests", *COLUMNS)
    body = [(name, str(sum(c.values())), *(str(c[k]) for k in COLUMNS)) for name, c in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = []
    for i, r in enumerate([head, *body]):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths, strict=True))))
        if i == 0 or i == len(body) - 1:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summarize(tests: list[dict[str, Any]]) -> dict[str, Any]:
    target = [t for t in tests if not t["hosted"] and t["outcome"] != "skipped"]
    hosted = [t for t in tests if t["hosted"]]
    return {
        "total": len(tests),
        "passing": sum(t["outcome"] in OK for t in tests),
        "outcomes": dict(collections.Counter(t["outcome"] for t in tests)),
        "hosted": len(hosted),
        "hosted_passing": sum(t["outcome"] in OK for t in hosted),
        "hosted_by_kind": dict(collections.Counter(t["hosted"] for t in hosted)),
        "skipped_not_hosted": sum(1 for t in tests
                                  if not t["hosted"] and t["outcome"] == "skipped"),
        "target_total": len(target),
        "target_passing": sum(t["outcome"] in OK for t in target),
    }


def report(tests: list[dict[str, Any]], summary: dict[str, Any], label: str) -> str:
    per_file: dict[str, collections.Counter] = {}
    for t in tests:
        per_file.setdefault(t["file"], collections.Counter())[t["outcome"]] += 1
    total: collections.Counter = collections.Counter()
    for counts in per_file.values():
        total.update(counts)
    out = [f"Reference tests against {label}:", "",
           table([*per_file.items(), ("total", total)]), ""]
    s = summary
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["hosted_by_kind"].items()))
    out += [f"passing (passed, xfailed, xpassed): {s['passing']} of {s['total']}",
            f"hosted, set apart: {s['hosted']} ({kinds}); {s['hosted_passing']} of them pass",
            f"skipped, not hosted: {s['skipped_not_hosted']}",
            f"target (not hosted, not skipped): {s['target_passing']} of {s['target_total']} "
            "pass", ""]
    failing = [t for t in tests if not t["hosted"] and t["outcome"] in ("failed", "error")]
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for t in failing:
        groups[cause(t["reason"])].append(t)
    if failing:
        out.append(f"Failing tests that count towards the target ({len(failing)}), by cause:")
        for why, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            out.append(f"  [{len(members)}] {why}")
            out += [f"      {t['nodeid']}" + (" (error)" if t["outcome"] == "error" else "")
                    for t in members]
    odd = [t for t in tests if t["outcome"] == "xfailed" and not t["hosted"]
           and not re.match(r"(AssertionError\b|assert )", t["reason"])]
    if odd:
        out += ["", "Counted as passing, but xfailed by another error than a failed assertion "
                "(a plain xfail mark accepts any error):"]
        out += [f"  {t['nodeid']}: {t['reason']}" for t in odd]
    skipped = [t for t in tests if t["outcome"] == "skipped"]
    if skipped:
        out += ["", "Skipped:"]
        out += [f"  {t['nodeid']}: {t['reason']}" for t in skipped]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True,
                        help="a checkout of braintrust-sdk-python, its py/src/braintrust "
                             "directory, or a git mirror of it")
    parser.add_argument("--rev", default="HEAD", help="commit of a git mirror (default HEAD)")
    parser.add_argument("--against", choices=("tracer", "braintrust", "braintrust-src"),
                        default="tracer",
                        help="tracer (default); braintrust: the installed package with its own "
                             "fixtures; braintrust-src: the reference's own source")
    parser.add_argument("--json", metavar="FILE", help="write per-test outcomes here")
    parser.add_argument("-k", metavar="EXPR", help="only the tests pytest -k selects")
    parser.add_argument("--timeout", type=int, default=120,
                        help="seconds per test (pytest-timeout, if installed; default 120)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (files, store, pytest.log)")
    parser.add_argument("--verbose", action="store_true", help="show pytest's output as it runs")
    args = parser.parse_args(argv)

    missing = [package for module, package in NEEDS if importlib.util.find_spec(module) is None]
    if missing:
        print(f"missing what the harness needs: pip install {' '.join(missing)}", file=sys.stderr)
        return 2
    ref = Reference(args.reference, args.rev)
    work = tempfile.mkdtemp(prefix="refrun-")
    started = time.monotonic()
    aggregator: int | None = None
    try:
        cfg, env = prepare(ref, args.against, work)
        status = run_pytest(work, args.against, env, args)
        try:
            with open(cfg["outcomes"]) as f:
                outcomes = json.load(f)
            aggregator = outcomes.get("aggregator_pid")
        except FileNotFoundError:
            with open(os.path.join(work, "pytest.log"), errors="replace") as f:
                tail = f.read()[-4000:]
            print(f"pytest (exit {status}) reported no outcomes; its output ends:\n{tail}",
                  file=sys.stderr)
            return 2
        sources = {rel: ref.read(rel).decode() for rel in TEST_FILES}
        tests = collect(sources, outcomes, expect_all=not args.k)
        known = {f"{rel}::{name}" for rel, source in sources.items() for name in tests_in(source)}
        stale = sorted(set(HOSTED) - known)
        if stale:
            print(f"warning: HOSTED names tests the files do not define: {', '.join(stale)}",
                  file=sys.stderr)
        summary = summarize(tests)
        print(report(tests, summary, cfg["label"]))
        print(f"\n({time.monotonic() - started:.0f} s; pytest exit {status}; "
              f"reference {ref.where}, version {ref.version()})")
        if args.keep:
            print(f"work directory kept: {work}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"against": cfg["label"], "reference": ref.where,
                           "reference_version": ref.version(), "summary": summary,
                           "hosted_list": HOSTED, "tests": tests}, f, indent=1)
        return 0
    finally:
        if not args.keep:
            wait_for_exit(aggregator)
            shutil.rmtree(work, ignore_errors=True)


def wait_for_exit(pid: int | None, timeout: float = 30.0) -> None:
    """Wait for the run's aggregator to exit (it does once pytest is gone and all is committed):
    one still running would make the store again after the work directory is removed."""
    deadline = time.monotonic() + timeout
    while pid is not None and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:  # someone else's process by now
            return
        time.sleep(0.1)
    if pid is not None:
        print(f"warning: the run's aggregator (pid {pid}) is still running", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
