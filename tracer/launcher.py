"""Finding or starting the aggregator a process sends to.

One aggregator per process tree and store (design point 5): the first ``init_logger()`` starts it
as a plain subprocess (``python -m workers.aggregator``; never a fork of a threaded process) and
leaves its address in the environment, where children, spawned or forked, find it. Resolution:

1. ``endpoint=`` given: attach to it (a standalone ``tracer aggregator --bind ...``).
2. no ``store=`` given and ``TRACER_ENDPOINT`` set: attach to it (a parent's or a fleet's).
3. ``store=`` is the store of the inherited aggregator: attach to that one.
4. otherwise: the aggregator this process already started for that store, or a new one.
"""

from __future__ import annotations

import os
import secrets
import sys

from . import config
from .recorder import Recorder

_by_endpoint: dict[str, Recorder] = {}
_by_store: dict[str, Recorder] = {}


def recorder_for(settings: config.Settings, store: str | None = None,
                 endpoint: str | None = None) -> Recorder:
    """The recorder for the given store/endpoint, starting an aggregator if needed."""
    if endpoint:
        return attach(endpoint, None, settings)
    env_endpoint = os.environ.get("TRACER_ENDPOINT")
    if store is None and env_endpoint:
        return attach(env_endpoint, _env_pid(), settings)
    path = config.store_path(store if store is not None else settings.store)
    if env_endpoint and os.environ.get(config.ENV_AGGREGATOR_STORE) == path:
        return attach(env_endpoint, _env_pid(), settings)
    rec = _by_store.get(path)
    if rec is None or rec.aggregator_dead():
        endpoint, pid = start_aggregator(path)
        rec = Recorder(endpoint, pid, owner=True, max_buffer=settings.queue_size)
        _by_store[path] = rec
        _by_endpoint[endpoint] = rec
    return rec


def export_to_children(rec: Recorder, store: str | None) -> None:
    """Leave this recorder's aggregator in the environment for child processes."""
    os.environ["TRACER_ENDPOINT"] = rec.endpoint
    if rec.aggregator_pid is not None:
        os.environ[config.ENV_AGGREGATOR_PID] = str(rec.aggregator_pid)
    else:
        os.environ.pop(config.ENV_AGGREGATOR_PID, None)
    for path, known in _by_store.items():
        if known is rec:
            os.environ[config.ENV_AGGREGATOR_STORE] = path
            break
    else:
        if store is None:
            os.environ.pop(config.ENV_AGGREGATOR_STORE, None)


def attach(endpoint: str, pid: int | None = None,
           settings: config.Settings | None = None) -> Recorder:
    """The recorder sending to the aggregator at ``endpoint`` (created on first use)."""
    rec = _by_endpoint.get(endpoint)
    if rec is None:
        settings = settings or config.load()
        rec = Recorder(endpoint, pid, owner=False, max_buffer=settings.queue_size)
        _by_endpoint[endpoint] = rec
    return rec


def _env_pid() -> int | None:
    value = os.environ.get(config.ENV_AGGREGATOR_PID)
    return int(value) if value and value.isdigit() else None


def start_aggregator(store_path: str) -> tuple[str, int]:
    """Start an aggregator for ``store_path`` on a fresh ipc endpoint; returns (endpoint, pid).

    The aggregator runs in its own session, so a Ctrl-C meant for the application does not kill
    it before it has committed; it exits by itself once this process and every process that sent
    to it are gone.
    """
    endpoint = f"ipc://{config.runtime_dir()}/agg-{os.getpid()}-{secrets.token_hex(4)}.sock"
    cmd = [sys.executable, "-m", "workers.aggregator", "--bind", endpoint, "--store", store_path,
           "--owner", str(os.getpid())]
    env = dict(os.environ)
    # Let the child import ``workers`` from wherever this process found ``tracer``.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # The aggregator outlives its owner by a moment: it must not hold the owner's stdout/stderr
    # open (a pipe reader, `cmd | tee` or subprocess.run(capture_output=True), would wait for
    # it), so it logs to a file beside the store. posix_spawn rather than subprocess: no Popen
    # object to warn about the child outliving it; Python's own descriptors are non-inheritable.
    log = aggregator_log(store_path)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600),
    ]
    pid = os.posix_spawn(sys.executable, cmd, env, setsid=True, file_actions=actions)
    return endpoint, pid


def aggregator_log(store_path: str) -> str:
    """Where an aggregator started by init_logger writes its messages."""
    return os.path.join(os.path.dirname(store_path), "aggregator.log")
