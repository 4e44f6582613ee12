"""Shared fixtures: a real aggregator process over real sockets, its SQLite store, subprocesses.

The test process calls ``init_logger`` for real: the aggregator it starts is the one every test in
this process sends to. Each test logs under its own project name, so tests never see each other's
rows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import tracer
from tracer.recorder import process_alive
from workers.sinks.sqlite import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "workers.cli"]


@pytest.fixture(scope="session")
def store_path(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("store") / "traces.db")


@pytest.fixture
def project(request) -> str:
    """A project name unique to the test."""
    return "test-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)


@pytest.fixture
def logger(store_path, project) -> tracer.Logger:
    return tracer.init_logger(project, store=store_path)


@pytest.fixture
def experiment(store_path, project) -> tracer.Experiment:
    """A current experiment named "exp" of the test's project; afterwards spans outside any
    span go to the current logger again, as other tests expect."""
    exp = tracer.init(project, "exp", store=store_path)
    yield exp
    forget_current_experiment()


def forget_current_experiment() -> None:
    from tracer.config import ENV_CONTAINER
    from tracer.context import state

    state.experiment = None
    state.parent_object = state.logger
    if state.logger is not None:
        os.environ[ENV_CONTAINER] = state.logger.container


def experiment_rows(store_path: str, experiment: tracer.Experiment) -> list[dict]:
    """The stored rows of ``experiment``, after flushing this process."""
    tracer.flush(timeout=30)
    with Store(store_path) as store:
        return list(store.rows(experiment=experiment.id))


@pytest.fixture
def rows(store_path, project):
    """``rows()`` flushes this process and returns the test project's stored rows."""

    def read(flush: bool = True, project_name: str = project) -> list[dict]:
        if flush:
            tracer.flush(timeout=30)
        with Store(store_path) as store:
            return list(store.rows(project=project_name))

    return read


def by_name(rows: list[dict]) -> dict[str, dict]:
    """Rows keyed by span name (the name must be unique among them)."""
    named = {}
    for row in rows:
        name = row["span_attributes"]["name"]
        assert name not in named, f"two rows named {name!r}"
        named[name] = row
    return named


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would attach a child to our aggregator."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACER_", "_TRACER_", "BRAINTRUST_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def gone_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` exits (or is a zombie) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60,
               cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (``python -c``); fails the test if it fails."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``tracer ARGS...`` in a fresh interpreter; returns the finished process."""
    return subprocess.run([*CLI, *args], env=env or clean_env(PYTHONIOENCODING="utf-8"),
                          capture_output=True, encoding="utf-8", timeout=timeout)


def wait_for_runs_to_end(store_path: str, timeout: float = 15) -> list[dict]:
    """The aggregator runs recorded in the store, once none of them is still running (a killed
    one never records its end)."""
    deadline = time.monotonic() + timeout
    while True:
        with Store(store_path) as store:
            runs = store.runs()
        running = [r for r in runs if not r["ended"] and process_alive(r["pid"])]
        if runs and not running or time.monotonic() > deadline:
            return runs
        time.sleep(0.1)


@pytest.fixture(scope="session")
def _fake_openai_server():
    from .openai_server import FakeOpenAI

    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def openai_server(_fake_openai_server):
    """An OpenAI-compatible server on loopback (tests/openai_server.py), fresh for each test:
    no request recorded, nothing planned."""
    _fake_openai_server.reset()
    return _fake_openai_server
