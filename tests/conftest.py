"""Shared fixtures: a real aggregator process over real sockets, its SQLite store, subprocesses.

The test process calls ``init_logger`` for real: the aggregator it starts is the one every test in
this process sends to. Each test logs under its own project name, so tests never see each other's
rows.

The project's internals that the tests use beyond its public API are imported here, and the
tests import them from here: when one moves, this is the one place to change.
"""

from __future__ import annotations

import gc
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import psutil
import pytest

import tracer
from tracer.processes import process_alive as process_alive
from tracer.thread_context import _undo as undo_setup_threads  # noqa: F401 (for the tests)
from workers.store.sqlite import SQLiteReader as Store
from workers.store.sqlite import SQLiteWriter as SQLiteSink  # noqa: F401 (for the tests)
from workers.store.sqlite import lookup_attachments as lookup_attachments

from . import postgres
from .helpers import poll, wait_until
from .postgres import PostgresServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "workers.cli"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for this test process (``tests/postgres.py``)."""
    server = postgres.start(free_port())
    yield server
    server.stop()


@pytest.fixture
def own_postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, for a test that stops and starts it
    (``shut_down``, ``start``): the session's server stays up for the others."""
    server = postgres.start(free_port())
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty PostgreSQL database (password included)."""
    return postgres_server.database()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    """A store of each backend, not made yet: a SQLite path, a PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "traces.db")
    return request.getfixturevalue("postgres_url")


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
def experiment(store_path, project) -> Iterator[tracer.Experiment]:
    """A current experiment named "exp" of the test's project; afterwards spans outside any
    span go to the current logger again, as other tests expect."""
    exp = tracer.init(project, "exp", store=store_path)
    yield exp
    forget_current_experiment()


def forget_current_experiment() -> None:
    from tracer.config import ENV_CONTAINER
    from tracer.context import scoped_parent, state

    state.experiment = None
    scoped_parent.set((state.logger, None))
    state.parent_object = None if state.scoped else state.logger
    if state.logger is not None:
        os.environ[ENV_CONTAINER] = state.logger.container


def stored_rows(store_path: str, **filters: str) -> list[dict]:
    """The rows of the store that ``filters`` select; none while nothing was ever committed
    (the aggregator makes its store on first write: a test that logs nothing, run first in its
    xdist worker, finds no file)."""
    if not os.path.exists(store_path):
        return []
    with Store(store_path) as store:
        return list(store.rows(**filters))  # type: ignore[arg-type]


def experiment_rows(store_path: str, experiment: tracer.Experiment) -> list[dict]:
    """The stored rows of ``experiment``, after flushing this process."""
    tracer.flush(timeout=30)
    return stored_rows(store_path, experiment=experiment.id)


@pytest.fixture
def rows(store_path, project):
    """``rows()`` flushes this process and returns the test project's stored rows."""

    def read(flush: bool = True, project_name: str = project) -> list[dict]:
        if flush:
            tracer.flush(timeout=30)
        return stored_rows(store_path, project=project_name)

    return read


def by_name(rows: list[dict]) -> dict[str, dict]:
    """Rows keyed by span name (the name must be unique among them)."""
    named = {}
    for row in rows:
        name = row["span_attributes"]["name"]
        assert name not in named, f"two rows named {name!r}"
        named[name] = row
    return named


class CountsItsRepr:
    """A logged object that counts how often it is described (``repr``)."""

    def __init__(self) -> None:
        self.reprs = 0

    def __repr__(self) -> str:
        self.reprs += 1
        return "<CountsItsRepr>"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would attach a child to our aggregator."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACER_", "_TRACER_", "BRAINTRUST_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (or is a zombie)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def gone_within(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` exits (or is a zombie) within ``seconds``."""
    return poll(lambda: gone(pid), seconds)


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60,
               cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (``python -c``); fails the test if it fails."""
    return run_child([sys.executable, "-c", textwrap.dedent(code)], env, timeout, cwd)


# ``python -c`` that imports a function by ``module:name`` and calls it with JSON arguments.
# ROOT goes first on sys.path without touching the environment the child is given.
_CALL = ("import importlib, json, sys; sys.path.insert(0, sys.argv[1]); "
         "module, name = sys.argv[2].split(':'); "
         "getattr(importlib.import_module(module), name)(*json.loads(sys.argv[3]))")


def python_command(program: Callable[..., object], *args: object) -> list[str]:
    """The command that runs ``program(*args)`` in a fresh interpreter: a module-level function
    (``tests/programs.py``) and arguments JSON can carry."""
    return [sys.executable, "-c", _CALL, ROOT, f"{program.__module__}:{program.__name__}",
            json.dumps(args)]


def run_function(program: Callable[..., object], *args: object,
                 env: dict[str, str] | None = None, timeout: float = 60,
                 cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``program(*args)`` in a fresh interpreter (see ``python_command``); fails the test
    if it fails."""
    return run_child(python_command(program, *args), env, timeout, cwd)


def run_child(cmd: list[str], env: dict[str, str] | None, timeout: float,
              cwd: str | None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``tracer ARGS...`` in a fresh interpreter; returns the finished process."""
    return subprocess.run([*CLI, *args], env=env or clean_env(PYTHONIOENCODING="utf-8"),
                          capture_output=True, encoding="utf-8", timeout=timeout)


def runs_in(store_path: str) -> list[dict]:
    """The aggregator runs recorded in the store."""
    with Store(store_path) as store:
        return store.runs()


def wait_for_runs_to_end(store_path: str, timeout: float = 15) -> list[dict]:
    """The aggregator runs recorded in the store, once none of them is still running (a killed
    one never records its end); what is recorded at the timeout otherwise."""

    def ended() -> list[dict]:
        runs = runs_in(store_path)
        if any(not r["ended"] and process_alive(r["pid"]) for r in runs):
            return []
        return runs

    return poll(ended, timeout, interval=0.1) or runs_in(store_path)


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


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


S = TypeVar("S", bound="Service")


class Service:
    """A long-running subprocess of the tests (an aggregator, a Celery worker), its output going
    to ``log_path``, stopped with SIGTERM. A context manager: it is stopped on leaving."""

    def __init__(self, what: str, cmd: list[str], log_path: str, env: dict[str, str],
                 cwd: str | None = None) -> None:
        self.what = what  # how a failure names it
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log,
                                         stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a service manager stops it; returns the exit code. One that ignores
        SIGTERM for ``timeout`` seconds is killed and fails the test."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"{self.what} ignored SIGTERM for {timeout}s:\n{self.log()}")
        return self.proc.returncode

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class TraceServer(Service):
    """``tracer serve --store STORE --port PORT [ARGS...]`` on a free loopback port, answering
    once this returns (its viewer, its JSON API and its ingest API)."""

    def __init__(self, store: str, log_path: str, *args: str,
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.store = store
        self.port = port or free_port()  # a port given: a server started again where it was
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("tracer serve", [*CLI, "serve", "--store", store, "--port",
                                          str(self.port), *args],
                         log_path, clean_env(**(env or {})))
        wait_until(self._answers, 30, lambda: f"tracer serve did not answer:\n{self.log()}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"tracer serve exited {self.proc.returncode}:\n{self.log()}")
        try:
            httpx.get(self.url + "/login", timeout=2)
        except httpx.TransportError:
            return False
        return True

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def raw(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        """GET ``path`` exactly as written (no normalisation of ``..`` or escapes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return response.status, headers, response.read()
        finally:
            conn.close()


@pytest.fixture
def trace_server(tmp_path) -> Iterator[Callable[..., TraceServer]]:
    """Starts ``tracer serve`` over a store with the arguments given (``serve(store, *args,
    env=..., port=...)``; a free port unless given); every server started is stopped after the
    test."""
    started: list[TraceServer] = []

    def serve(store: str, *args: str, env: dict[str, str] | None = None,
              port: int | None = None) -> TraceServer:
        server = TraceServer(store, str(tmp_path / f"serve-{len(started)}.log"), *args, env=env,
                             port=port)
        started.append(server)
        return server

    yield serve
    for server in started:
        server.stop()


class StandaloneAggregator(Service):
    """``tracer aggregator --bind tcp://127.0.0.1:PORT --store STORE [ARGS...]``, as a fleet runs
    it on a host of its own, with ``env`` added to a clean environment; recorders reach it
    through ``endpoint``."""

    def __init__(self, store: str, log_path: str, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.store = store
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        super().__init__("the standalone aggregator",
                         [*CLI, "aggregator", "--bind", self.endpoint, "--store", store, *args],
                         log_path, clean_env(**(env or {})))


@pytest.fixture
def standalone_aggregator(tmp_path) -> Iterator[StandaloneAggregator]:
    """A standalone aggregator of the test's own, storing into ``tmp_path/standalone.db``."""
    with StandaloneAggregator(str(tmp_path / "standalone.db"),
                              str(tmp_path / "aggregator.log")) as aggregator:
        yield aggregator


# -- Celery: a real Redis broker and real worker processes -------------------------------------


def _redis_server_binary() -> str:
    """redis-server, installed with apt when it is missing and we are root (as in CI)."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("redis-server is not installed and the tests are not running as root to "
                    "install it: run `apt-get install -y redis-server` (the Celery tests need "
                    "a real Redis broker)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed ({proc.returncode}) while installing "
                        f"redis-server for the Celery tests:\n{proc.stderr[-3000:]}")
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if not found:
        pytest.fail("apt-get installed redis-server but it is not on PATH")
    return found


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the session: ``redis://127.0.0.1:PORT``
    (add ``/N`` for a database). Nothing is persisted."""
    import redis

    binary = _redis_server_binary()
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    with open(workdir / "redis.log", "wb") as log:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    if not poll(lambda: answers() or proc.poll() is not None, 30) or proc.poll() is not None:
        proc.kill()
        pytest.fail(f"redis-server did not start:\n{(workdir / 'redis.log').read_text()}")
    yield url
    # AsyncResults caught in reference cycles unsubscribe from Redis when they are collected:
    # collect them while Redis is still there.
    gc.collect()
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_redis_databases = itertools.count(1)


class CeleryWorker(Service):
    """A real ``celery -A tests.celery_tasks worker`` with the prefork pool, in a subprocess.

    ``broker`` is the Redis database it consumes from (also its result backend); ``env`` is
    added to a clean environment (see ``tests/celery_tasks.py`` for what it reads).
    """

    def __init__(self, broker: str, name: str, log_path: str, env: dict[str, str],
                 args: tuple[str, ...] = ()) -> None:
        self.broker = broker
        cmd = [sys.executable, "-m", "celery", "-A", "tests.celery_tasks", "worker",
               "--pool", "prefork", "--concurrency", "2", "--loglevel", "INFO",
               "--without-heartbeat", "--without-gossip", "--without-mingle",
               "--hostname", f"{name}@%h", *args]
        super().__init__("the celery worker", cmd, log_path,
                         clean_env(TRACER_TEST_BROKER=broker, **env), cwd=ROOT)
        poll(lambda: " ready." in self.log() or self.proc.poll() is not None, 60, interval=0.1)
        if " ready." not in self.log():
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the celery worker did not start:\n{self.log()}")

    def stop(self, timeout: float = 60) -> int:
        """Warm shutdown (SIGTERM: running tasks finish first); returns the exit code."""
        return super().stop(timeout)


@pytest.fixture(scope="module")
def celery_workers(redis_url, tmp_path_factory) -> Iterator:
    """``start(**env, args=(...))`` starts a real Celery worker on a fresh Redis database and
    returns it (a ``CeleryWorker``); workers still running at the end of the module get a warm
    shutdown."""
    import redis

    started: list[CeleryWorker] = []
    logs = tmp_path_factory.mktemp("celery-workers")

    def start(args: tuple[str, ...] = (), **env: str) -> CeleryWorker:
        broker = f"{redis_url}/{next(_redis_databases) % 16}"
        redis.Redis.from_url(broker).flushdb()  # nothing left over from an earlier worker
        name = f"tracer-tests-{len(started)}"
        worker = CeleryWorker(broker, name, str(logs / f"{name}.log"), env, args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
