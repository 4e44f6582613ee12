"""Settings from the environment.

Each setting is read as ``TRACER_<NAME>`` and, for users migrating from the reference SDK, as
``BRAINTRUST_<NAME>``; the TRACER_ name wins. Keyword arguments to ``init_logger``/``init`` win
over both. A malformed value raises ValueError naming the variable.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import socket
import stat
import tempfile
from collections.abc import Mapping

DEFAULT_APP_URL = "http://127.0.0.1:8585"
DEFAULT_STORE = os.path.join(".tracer", "traces.db")

# Private variables a process that started (or attached to) an aggregator leaves for its
# children, so that spawn/forkserver children attach without calling init_logger.
ENV_AGGREGATOR_PID = "_TRACER_AGGREGATOR_PID"
ENV_AGGREGATOR_STORE = "_TRACER_AGGREGATOR_STORE"
ENV_AGGREGATOR_OWNER = "_TRACER_AGGREGATOR_OWNER"
ENV_CONTAINER = "_TRACER_CONTAINER"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The tuning knobs of the reference's "Tuning parameters", plus our own."""

    sync_flush: bool = False
    max_request_size: int = 6 * 1024 * 1024
    batch_size: int = 1000
    num_retries: int = 5
    queue_size: int = 15000
    queue_drop_when_full: bool = False
    queue_drop_exceeding_maxsize: int = 0
    # Seconds a caller may wait for room under the blocking policy before its records are
    # dropped, counted and set aside (TRACER_QUEUE_BLOCK_TIMEOUT).
    queue_block_timeout: float = 60.0
    # Bytes a recorder holds (packed, not yet committed) and an aggregator's queue holds before
    # the queue policy applies, as for QUEUE_SIZE rows (TRACER_QUEUE_MAX_BYTES).
    queue_max_bytes: int = 128 * 1024 * 1024
    failed_payloads_dir: str | None = None
    all_payloads_dir: str | None = None
    store: str | None = None
    endpoint: str | None = None
    app_url: str = DEFAULT_APP_URL


def _raw(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for prefix in ("TRACER_", "BRAINTRUST_"):
        value = env.get(prefix + name)
        if value is not None and value != "":
            return prefix + name, value
    return None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    found = _raw(env, name)
    if found is None:
        return default
    var, value = found
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{var}={value!r}: expected 1/0, true/false, yes/no or on/off")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    found = _raw(env, name)
    if found is None:
        return default
    var, value = found
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{var}={value!r}: expected an integer") from None
    if number < minimum:
        raise ValueError(f"{var}={value!r}: must be >= {minimum}")
    return number


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    found = _raw(env, name)
    if found is None:
        return default
    var, value = found
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{var}={value!r}: expected a number of seconds") from None
    if not 0 <= seconds <= 86400:
        raise ValueError(f"{var}={value!r}: must be between 0 and 86400 seconds")
    return seconds


def _str(env: Mapping[str, str], name: str) -> str | None:
    found = _raw(env, name)
    return None if found is None else found[1]


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    return Settings(
        sync_flush=_bool(env, "SYNC_FLUSH", False),
        max_request_size=_int(env, "MAX_REQUEST_SIZE", Settings.max_request_size, 1024),
        batch_size=_int(env, "DEFAULT_BATCH_SIZE", Settings.batch_size, 1),
        num_retries=_int(env, "NUM_RETRIES", Settings.num_retries, 0),
        queue_size=_int(env, "QUEUE_SIZE", Settings.queue_size, 0),
        queue_drop_when_full=_bool(env, "QUEUE_DROP_WHEN_FULL", False),
        queue_drop_exceeding_maxsize=_int(env, "QUEUE_DROP_EXCEEDING_MAXSIZE", 0, 0),
        queue_block_timeout=_seconds(env, "QUEUE_BLOCK_TIMEOUT", Settings.queue_block_timeout),
        queue_max_bytes=_int(env, "QUEUE_MAX_BYTES", Settings.queue_max_bytes, 1024 * 1024),
        failed_payloads_dir=_str(env, "FAILED_PUBLISH_PAYLOADS_DIR"),
        all_payloads_dir=_str(env, "ALL_PUBLISH_PAYLOADS_DIR"),
        store=env.get("TRACER_STORE") or None,
        endpoint=env.get("TRACER_ENDPOINT") or None,
        app_url=(env.get("TRACER_APP_URL") or DEFAULT_APP_URL).rstrip("/"),
    )


def queue_policy(settings: Settings) -> tuple[int, str | None]:
    """The queue bound in rows (0: none) and, when full rows are dropped rather than waited for,
    the reason the drops are counted under (None: the caller blocks until there is room).

    ``QUEUE_DROP_EXCEEDING_MAXSIZE=N`` caps the queue at N and drops beyond it;
    ``QUEUE_DROP_WHEN_FULL=1`` drops beyond ``QUEUE_SIZE`` instead of blocking.
    """
    if settings.queue_drop_exceeding_maxsize:
        return settings.queue_drop_exceeding_maxsize, "queue_exceeding_maxsize"
    if settings.queue_drop_when_full and settings.queue_size:
        return settings.queue_size, "queue_full"
    return settings.queue_size, None


def store_path(store: str | None) -> str:
    """The absolute SQLite path for a ``store`` setting.

    Accepts a plain path or a URL in SQLAlchemy's spelling: ``sqlite:///relative.db``,
    ``sqlite:////absolute/path.db``.
    """
    if store is None:
        store = DEFAULT_STORE
    if store.startswith("sqlite:///"):
        store = store[len("sqlite:///") :]
    elif "://" in store:
        raise ValueError(f"store={store!r}: only SQLite stores (a path or sqlite:///path) exist")
    if not store:
        raise ValueError("store: empty path")
    return os.path.abspath(os.path.expanduser(store))


def runtime_dir() -> str:
    """A directory only this user can enter, for ipc sockets; created if missing.

    Refuses (RuntimeError) a directory owned by someone else or open to others, since a socket
    there could be hijacked.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base):
        base = tempfile.gettempdir()
    path = os.path.join(base, f"tracer-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{path} is not a directory owned by uid {os.getuid()}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise RuntimeError(f"{path} is accessible to other users (mode {info.st_mode:o})")
    return path


_payload_files = itertools.count(1)  # next() is atomic: unique names across threads


def write_payload_file(directory: str, reason: str, suffix: str, data: bytes) -> str:
    """Write ``data`` as a new file in a payload directory (created private to the user if
    missing); returns its path.

    Names start with the UTC time, so sorting them replays in the order written. The file
    appears whole or not at all (written aside, then renamed), so a replay running at the same
    time never reads half of one.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    name = f"{stamp}-{socket.gethostname()}-{os.getpid()}-{next(_payload_files):06d}-{reason}"
    path = os.path.join(directory, name + suffix)
    with os.fdopen(open_private(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    return path


PRIVATE_FILE = 0o600


def open_private(path: str, flags: int) -> int:
    """``os.open(path, flags)`` for a file of ours: one we create is the user's alone (0600),
    whatever the umask (which could leave it open to others, or keep even us from opening it
    again). A file of ours that already exists is made 0600 too. Returns the descriptor (not
    inherited by child processes)."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != PRIVATE_FILE \
                and info.st_uid == os.geteuid():
            os.fchmod(fd, PRIVATE_FILE)
    except OSError:
        os.close(fd)
        raise
    return fd
