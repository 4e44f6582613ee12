"""Finding, starting and restarting the aggregator a process sends to.

One aggregator per process tree and destination (a store, a trace server to upload to, or
both): the first ``init_logger()`` starts it
as a plain subprocess (``python -m workers.aggregator``; never a fork of a threaded process) and
leaves its address in the environment, where children, spawned or forked, find it. Resolution:

1. ``endpoint=`` given: attach to it (a standalone ``tracer aggregator --bind ...``).
2. no ``store=`` given and ``TRACER_ENDPOINT`` set: attach to it (a parent's or a fleet's).
3. ``store=`` is the store of the inherited aggregator: attach to that one.
4. otherwise: the aggregator this process already started for that store, or a new one.

If an aggregator we know how to start (an ipc endpoint and its store) dies, the first recorder to
notice starts another on the same endpoint, under a file lock so that only one does; every
recorder then reconnects and resends what had not been committed (see ``Recorder._recover``).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import sys
import tempfile

from . import config
from .processes import process_alive, read_pid_file, write_pid_file
from .recorder import Recorder

_by_endpoint: dict[str, Recorder] = {}
_by_store: dict[str, Recorder] = {}


def recorder_for(settings: config.Settings, store: str | None = None,
                 endpoint: str | None = None, aggregator_key: str | None = None,
                 api_url: str | None = None, api_key: str | None = None) -> Recorder:
    """The recorder for the given destination (a store, a trace server, or both) or endpoint,
    starting an aggregator if needed.

    ``aggregator_key`` (else ``TRACER_AGGREGATOR_KEY``) is the CURVE public key of an aggregator
    attached to by a tcp:// endpoint; one we start ourselves listens on ipc:// and needs none.
    ``api_url`` (else ``TRACER_API_URL``): the aggregator uploads there, with ``api_key`` (else
    ``TRACER_API_KEY``); it also writes to the store only when one is given (``store`` or
    ``TRACER_STORE``).
    """
    key = aggregator_key or settings.aggregator_key
    if endpoint:
        return attach(endpoint, settings=settings, server_key=key)
    env_endpoint = os.environ.get("TRACER_ENDPOINT")
    if store is None and api_url is None and env_endpoint:
        return attach(env_endpoint, settings=settings, inherited=True, server_key=key)
    api_url = api_url or settings.api_url
    api_key = api_key or settings.api_key
    if settings.otlp_only and settings.otlp_endpoint is not None:
        if store is not None or api_url is not None:
            raise ValueError("TRACER_OTLP_ONLY is on: exporting only to OTLP writes no store "
                             "and uploads nothing, so store= and api_url= cannot be given")
        # The aggregator's files go to a directory of the OTLP receiver's own.
        label, given = "TRACER_OTLP_ENDPOINT", config.otlp_local_path(settings.otlp_endpoint)
    elif api_url is not None and store is None and not settings.store:
        # Uploading only: the aggregator's files go to a directory of the server's own.
        label, given = "TRACER_API_URL", config.api_local_path(api_url)
    else:
        # Errors name where the store came from: the argument, else the variable (or the
        # default).
        label, given = (("TRACER_STORE", settings.store) if store is None and settings.store
                        else ("store", config.DEFAULT_STORE if store is None else store))
    path = config.store_path(given, label)
    # A PostgreSQL store is known by its URL without the password: one aggregator per database
    # (and per server uploaded to).
    destination = _destination(path, api_url)
    inherited_store = os.environ.get(config.ENV_AGGREGATOR_STORE)
    if env_endpoint and inherited_store and _destination(
            inherited_store, os.environ.get(config.ENV_AGGREGATOR_API_URL)) == destination:
        return attach(env_endpoint, settings=settings, inherited=True, server_key=key)
    rec = _by_store.get(destination)
    if rec is None or rec.aggregator_dead():
        _check_store_directory(config.local_path(path), label,
                               config.without_password(given) if isinstance(given, str)
                               else given)
        endpoint = f"ipc://{config.runtime_dir()}/agg-{os.getpid()}-{secrets.token_hex(4)}.sock"
        if api_key is not None:
            _write_key_file(endpoint, api_key)
        pid = start_aggregator(endpoint, path, os.getpid(), api_url)
        bound, drop_reason = config.queue_policy(settings)
        rec = Recorder(endpoint, pid, owner=True, max_buffer=bound, drop_reason=drop_reason,
                       max_bytes=settings.queue_max_bytes,
                       block_timeout=settings.queue_block_timeout,
                       store=path, restart=restart_aggregator,
                       spool_dir=settings.failed_payloads_dir, api_url=api_url)
        _by_store[destination] = rec
        _by_endpoint[endpoint] = rec
    return rec


def _destination(store: str, api_url: str | None) -> str:
    """What tells one aggregator's destination from another's: the store (``store_key``) and
    the server uploaded to, if any."""
    return f"{config.store_key(store)}\x1f{api_url or ''}"


def key_file(endpoint: str) -> str:
    """Where the API key of the aggregator at an ipc ``endpoint`` is handed over: beside its
    socket, in the user's private runtime directory, 0600 (a command line is anyone's to read
    in ``ps``)."""
    return endpoint[len("ipc://"):] + ".key"


def _write_key_file(endpoint: str, api_key: str) -> None:
    path = key_file(endpoint)
    with os.fdopen(config.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
        f.write(api_key)


def attach(endpoint: str, pid: int | None = None, settings: config.Settings | None = None,
           inherited: bool = False, server_key: str | None = None) -> Recorder:
    """The recorder sending to the aggregator at ``endpoint`` (created on first use).

    ``inherited``: the endpoint came from the environment, which also names the aggregator's
    pid, store and owner, so this process can restart it if it dies. ``server_key``: its CURVE
    public key (used over tcp:// only; default ``TRACER_AGGREGATOR_KEY``).
    """
    rec = _by_endpoint.get(endpoint)
    if rec is None:
        settings = settings or config.load(lenient=True)  # in a pool task: never raise
        # A pool task in a spawned worker finds the key where export_to_children left it.
        server_key = server_key or settings.aggregator_key
        store = owner = None
        if inherited or endpoint == os.environ.get("TRACER_ENDPOINT"):
            pid = pid or _env_int(config.ENV_AGGREGATOR_PID)
            store = os.environ.get(config.ENV_AGGREGATOR_STORE)
            owner = _env_int(config.ENV_AGGREGATOR_OWNER)
        bound, drop_reason = config.queue_policy(settings)
        rec = Recorder(endpoint, pid, owner=False, max_buffer=bound, drop_reason=drop_reason,
                       max_bytes=settings.queue_max_bytes,
                       block_timeout=settings.queue_block_timeout,
                       store=store, aggregator_owner=owner,
                       restart=restart_aggregator if store else None,
                       spool_dir=settings.failed_payloads_dir, server_key=server_key,
                       api_url=os.environ.get(config.ENV_AGGREGATOR_API_URL) if store else None)
        _by_endpoint[endpoint] = rec
    return rec


def export_to_children(rec: Recorder) -> None:
    """Leave this recorder's aggregator (and its CURVE key) in the environment for child
    processes."""
    os.environ["TRACER_ENDPOINT"] = rec.endpoint
    if rec.server_key:
        os.environ["TRACER_AGGREGATOR_KEY"] = rec.server_key
    for name, value in ((config.ENV_AGGREGATOR_PID, rec.aggregator_pid),
                        (config.ENV_AGGREGATOR_STORE, rec.store),
                        (config.ENV_AGGREGATOR_API_URL, rec.api_url),
                        (config.ENV_AGGREGATOR_OWNER, rec.aggregator_owner)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value and value.isdigit() else None


def start_aggregator(endpoint: str, store_path: str, owner: int | None,
                     api_url: str | None = None) -> int:
    """Start an aggregator for ``store_path`` (a SQLite path or a PostgreSQL URL) listening on
    ``endpoint``; returns its pid. With ``api_url`` it uploads there, and writes to the store
    only if ``store_path`` is not the server's local directory (``config.api_local_path``), nor
    the OTLP receiver's (``config.otlp_local_path``: ``TRACER_OTLP_ONLY``); its API key is in
    the file ``key_file(endpoint)``, if there is one. It reads the ``TRACER_OTLP_*`` variables
    from the environment it inherits.

    The aggregator runs in its own session, so a Ctrl-C meant for the application does not kill
    it before it has committed; it exits by itself once ``owner`` and every process that sent
    to it are gone.
    """
    env = dict(os.environ)
    store_arg = store_path
    if config.is_postgres(store_path):
        # A command line is anyone's to read (ps): the password goes in the environment, where
        # libpq looks for it, and the aggregator never holds it in its store URL.
        store_arg, password = config.split_password(store_path)
        if password is not None:
            env["PGPASSWORD"] = password
    cmd = [sys.executable, "-m", "workers.aggregator", "--bind", endpoint]
    otlp = config.value_or_default("OTLP_ENDPOINT")
    if (api_url is not None and store_path == config.api_local_path(api_url)
            or otlp is not None and store_path == config.otlp_local_path(otlp)):
        env.pop("TRACER_STORE", None)  # uploading or exporting only: no local copy
    else:
        cmd += ["--store", store_arg]
    if api_url is not None:
        cmd += ["--api-url", api_url]
        if endpoint.startswith("ipc://") and os.path.exists(key_file(endpoint)):
            cmd += ["--api-key-file", key_file(endpoint)]
    if owner is not None:
        cmd += ["--owner", str(owner)]
    # Let the child import ``workers`` from wherever this process found ``tracer``.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    # The aggregator outlives its owner by a moment: it must not hold the owner's stdout/stderr
    # open (a pipe reader, `cmd | tee` or subprocess.run(capture_output=True), would wait for
    # it), so it logs to a file beside the store. posix_spawn rather than subprocess: no Popen
    # object to warn about the child outliving it; Python's own descriptors are non-inheritable.
    # The log is opened here, not by posix_spawn, whose failure would name the interpreter. A
    # log that cannot be opened (a directory in its place, no permission, a read-only file
    # system) must not keep the aggregator from starting: it writes to our stderr instead.
    actions: list[tuple] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    ]
    log_fd: int | None = None
    try:
        log_fd = _open_log(store_path)
    except OSError as exc:
        print(f"tracer: cannot open {aggregator_log(store_path)} ({exc.strerror}): the "
              "aggregator writes its messages to this process's stderr", file=sys.stderr)
    else:
        actions.append((os.POSIX_SPAWN_DUP2, log_fd, 2))
    try:
        return os.posix_spawn(sys.executable, cmd, env, setsid=True, file_actions=actions)
    finally:
        if log_fd is not None:
            os.close(log_fd)


def restart_aggregator(rec: Recorder) -> int | None:
    """Replace the dead aggregator of ``rec``; returns the new pid (None if impossible).

    Whoever takes the lock first starts the new aggregator and writes its pid file; the others
    find that live pid and only reconnect.
    """
    if rec.store is None or not rec.endpoint.startswith("ipc://"):
        return None
    path = rec.endpoint[len("ipc://") :]
    with os.fdopen(config.open_private(path + ".lock", os.O_WRONLY | os.O_APPEND | os.O_CREAT),
                   "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pid = read_pid_file(path)
        if pid is not None and pid != rec.aggregator_pid and process_alive(pid):
            return pid
        pid = start_aggregator(rec.endpoint, rec.store, rec.aggregator_owner, rec.api_url)
        write_pid_file(path, pid)
        return pid


def aggregator_log(store_path: str) -> str:
    """Where an aggregator started by init_logger writes its messages: beside the store (a file,
    never a directory: ``config.store_path`` refuses those), or for a PostgreSQL store in its
    local directory (``config.local_path``)."""
    return os.path.join(os.path.dirname(config.local_path(store_path)), "aggregator.log")


def _open_log(store_path: str) -> int:
    """The aggregator's log beside ``store_path``, opened for appending (OSError if impossible).
    Traces hold prompts and user data: a directory we create is the user's alone, a file 0600."""
    log = aggregator_log(store_path)
    os.makedirs(os.path.dirname(log), mode=0o700, exist_ok=True)
    return config.open_private(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def _check_store_directory(store_path: str, label: str, given: object) -> None:
    """Make sure an aggregator can be started for ``store_path``: its directory exists or is
    created, and can be written (the store, its journal and the aggregator's log go there);
    else ValueError naming ``label`` (the variable or argument the store came from) and its
    value. A log that cannot be opened in a writable directory is no reason to refuse: the
    aggregator then writes to this process's stderr (``start_aggregator``)."""
    directory = os.path.dirname(store_path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise config.refused(label, given, f"cannot create its directory ({exc.strerror}: "
                                           f"{exc.filename})") from None
    try:  # a real write: permission bits say nothing for root, nor of read-only mounts
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise config.refused(label, given, f"cannot write in its directory {directory} "
                                           f"({exc.strerror})") from None
