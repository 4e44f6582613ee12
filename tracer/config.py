"""Settings from the environment: ``VARIABLES``, one table of every variable we read.

Each row names a variable (read as ``TRACER_<NAME>``; the reference's tuning variables also as
``BRAINTRUST_<NAME>``, the TRACER_ one winning), how its text is read and bounded, its default and
its meaning. Everything follows the table: ``load()`` reads and checks every row (``init_logger``
and ``init`` call it in the calling process before anything starts, so a bad value is a
ValueError naming the variable and the value, never a failure later in a thread or another
process), the keyword arguments of ``init_logger``/``init`` go through the same checks
(``keyword``), and the README's Configuration table is ``markdown_table()`` (a test compares
them). A new variable is one row, read with ``value_or_default(NAME)`` where raising is not
allowed (our threads, process hooks), or as a field of ``Settings`` (the row's ``field``, which
``Settings`` then declares with its type; a test checks the two agree).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import os
import re
import socket
import stat
import sys
import tempfile
import urllib.parse
from collections.abc import Mapping
from typing import Any

from zmq.utils import z85

DEFAULT_APP_URL = "http://127.0.0.1:8585"
DEFAULT_STORE = os.path.join(".tracer", "traces.db")

# Private variables a process that started (or attached to) an aggregator leaves for its
# children, so that spawn/forkserver children attach without calling init_logger.
ENV_AGGREGATOR_PID = "_TRACER_AGGREGATOR_PID"
ENV_AGGREGATOR_STORE = "_TRACER_AGGREGATOR_STORE"
ENV_AGGREGATOR_OWNER = "_TRACER_AGGREGATOR_OWNER"
ENV_CONTAINER = "_TRACER_CONTAINER"

# Counts of rows a process or an aggregator holds: beyond this a queue is a misconfiguration
# (at ~3 KB per held row, 10 million rows is 30 GB), not a wish.
MAX_ROWS = 10_000_000
MAX_ROW_BYTES = 1_000_000_000  # SQLite's largest string or blob: a bigger row cannot be stored
MAX_FILE_BYTES = 2**40  # attachments are files: 1 TiB
# A Unix socket path holds at most this many bytes (sun_path, less its terminating NUL).
MAX_IPC_PATH = 107 if sys.platform.startswith("linux") else 103


def _shown(text: object) -> str:
    """``text`` as an error message quotes it: its repr, cut short if long."""
    if isinstance(text, str) and len(text) > 200:
        text = text[:200] + "..."
    return repr(text)


def refused(label: str, value: object, problem: str) -> ValueError:
    """The error for a bad ``label=value`` (a variable or a keyword argument)."""
    return ValueError(f"{label}={_shown(value)}: {problem}")


# -- kinds of value: how a variable's text is read and checked ---------------------------------


class Kind:
    """How a variable's text is read and checked: ``parse`` returns the value or raises
    ValueError naming ``label`` (the variable, or the keyword argument) and the text."""

    def parse(self, label: str, text: str) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """What the README's "values" column says."""
        raise NotImplementedError

    def keyword(self, label: str, value: object) -> Any:
        """Check a keyword argument that stands for the variable."""
        if not isinstance(value, str):
            raise TypeError(f"{label} must be a string, got {type(value).__name__} {value!r}")
        return self.parse(label, value)


_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclasses.dataclass(frozen=True)
class _Bounded(Kind):
    """A number in [minimum, maximum]."""

    minimum: float
    maximum: float

    def within(self, label: str, text: str, number: float) -> None:
        if number < self.minimum:
            raise refused(label, text, f"must be at least {self.minimum}")
        if number > self.maximum:
            raise refused(label, text, f"must be at most {self.maximum}")


@dataclasses.dataclass(frozen=True)
class Integer(_Bounded):
    """A whole number in [minimum, maximum]."""

    minimum: int
    maximum: int

    def parse(self, label: str, text: str) -> int:
        if not _INTEGER.fullmatch(text):
            raise refused(label, text, "expected an integer")
        try:
            number = int(text)
        except ValueError:  # more digits than Python converts: far beyond any bound anyway
            number = self.maximum + 1 if text[0] != "-" else self.minimum - 1
        self.within(label, text, number)
        return number

    def describe(self) -> str:
        return f"integer, {self.minimum:,} to {self.maximum:,}"


class Seconds(_Bounded):
    """A duration in seconds (a decimal number) in [minimum, maximum]."""

    def parse(self, label: str, text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isnan(number):
            raise refused(label, text, "expected a number of seconds")
        self.within(label, text, number)
        return number

    def describe(self) -> str:
        return f"seconds, {self.minimum:g} to {self.maximum:g}"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Boolean(Kind):
    """One of 1/0, true/false, yes/no, on/off, in any case; nothing else."""

    def parse(self, label: str, text: str) -> bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise refused(label, text, "expected 1/0, true/false, yes/no or on/off")

    def describe(self) -> str:
        return "boolean"


@dataclasses.dataclass(frozen=True)
class Choice(Kind):
    """One of a few words, in any case."""

    choices: tuple[str, ...]

    def parse(self, label: str, text: str) -> str:
        if text.lower() in self.choices:
            return text.lower()
        raise refused(label, text, f"expected one of {', '.join(self.choices)}")

    def describe(self) -> str:
        return " \\| ".join(f"`{c}`" for c in self.choices)


class StorePath(Kind):
    """Where rows go: a SQLite file or a PostgreSQL URL (see ``store_path``); kept as given,
    checked now."""

    def parse(self, label: str, text: str) -> str:
        store_path(text, label)
        return text

    def keyword(self, label: str, value: object) -> Any:
        return super().keyword(label, os.fspath(value) if isinstance(value, os.PathLike)
                               else value)

    def describe(self) -> str:
        return "a file path, `sqlite:///path` or `postgresql://...`"


class Directory(Kind):
    """A directory, created (mode 0700) when first needed; anything else in its place is
    refused."""

    def parse(self, label: str, text: str) -> str:
        if os.path.exists(text) and not os.path.isdir(text):
            raise refused(label, text, "exists and is not a directory")
        return text

    def describe(self) -> str:
        return "a directory path"


_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")  # a name, IPv4 or [IPv6]


class Endpoint(Kind):
    """A ZeroMQ address an aggregator listens on: ``ipc://PATH`` or ``tcp://HOST:PORT``."""

    def parse(self, label: str, text: str) -> str:
        if text.startswith("ipc://"):
            path = text[len("ipc://"):]
            if not path:
                raise refused(label, text, "ipc:// needs a socket path")
            if len(os.fsencode(path)) > MAX_IPC_PATH:
                raise refused(label, text, f"the socket path is longer than {MAX_IPC_PATH} "
                                           "bytes, the most a Unix socket takes")
            return text
        if text.startswith("tcp://"):
            host, colon, port = text[len("tcp://"):].rpartition(":")
            if (colon and _HOST.fullmatch(host) and port.isascii() and port.isdigit()
                    and len(port) <= 5 and 0 < int(port) < 65536):
                return text
            raise refused(label, text, "expected tcp://HOST:PORT, a port from 1 to 65535")
        raise refused(label, text, "expected ipc://PATH or tcp://HOST:PORT")

    def describe(self) -> str:
        return "`ipc://PATH` or `tcp://HOST:PORT`"


class Url(Kind):
    """An http:// or https:// URL, kept without its trailing slashes."""

    def parse(self, label: str, text: str) -> str:
        try:
            parts = urllib.parse.urlsplit(text)
        except ValueError:  # a malformed [IPv6] host
            parts = None
        if (parts is None or parts.scheme not in ("http", "https") or not parts.netloc
                or any(c.isspace() for c in text)):
            raise refused(label, text, "expected an http:// or https:// URL")
        return text.rstrip("/")

    def describe(self) -> str:
        return "an `http://` or `https://` URL"


class CurveKey(Kind):
    """An aggregator's CURVE public key as ``tracer keys curve`` prints it: 40 Z85 characters."""

    def parse(self, label: str, text: str) -> str:
        try:
            valid = len(text) == 40 and len(z85.decode(text)) == 32
        except Exception:  # z85 raises KeyError, ValueError or struct.error for what is not Z85
            valid = False
        if not valid:
            raise refused(label, text, "not a CURVE public key (40 characters, as "
                                       "`tracer keys curve` prints it)")
        return text

    def describe(self) -> str:
        return "a CURVE public key (40 characters)"


# -- the table ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variable:
    """One variable: ``TRACER_<name>`` (also ``BRAINTRUST_<name>`` where ``reference``)."""

    name: str
    kind: Kind
    default: Any  # when unset or empty
    meaning: str  # the README's "meaning" column (Markdown, one line)
    field: str | None = None  # the Settings attribute it fills; None: value_or_default(NAME)
    reference: bool = False  # a variable of the reference SDK: also read as BRAINTRUST_<NAME>
    keyword: str | None = None  # the keyword argument of init_logger/init that wins over it
    shown_default: str | None = None  # the README's "default" cell, when not `default`

    @property
    def names(self) -> tuple[str, ...]:
        """The variables read, the first set one winning."""
        if self.reference:
            return "TRACER_" + self.name, "BRAINTRUST_" + self.name
        return ("TRACER_" + self.name,)

    def read(self, env: Mapping[str, str]) -> Any:
        """The value ``env`` gives (the default when unset or empty); ValueError if malformed."""
        for name in self.names:
            text = env.get(name)
            if text:
                return self.kind.parse(name, text)
        return self.default


VARIABLES: tuple[Variable, ...] = (
    Variable("STORE", StorePath(), None, "where rows go: a SQLite file (not a directory nor a "
             "special file), relative to the working "
             "directory of the process that starts the aggregator, whose `aggregator.log` sits "
             "beside it. Created 0600 (its directory 0700); removed or replaced while in use, it "
             'is started again at the same path ("How it works"); or a PostgreSQL database, '
             'whose local files go to `~/.tracer/postgres/HOST-PORT-DB/` ("PostgreSQL stores"); '
             'URLs of other databases are refused',
             field="store", keyword="store", shown_default=DEFAULT_STORE),
    Variable("ENDPOINT", Endpoint(), None, "the aggregator's ZeroMQ address; set it to attach to "
             "a standalone `tracer aggregator`", field="endpoint", keyword="endpoint",
             shown_default="set by `init_logger`"),
    Variable("APP_URL", Url(), DEFAULT_APP_URL, "base of permalinks", field="app_url",
             keyword="app_url"),
    Variable("QUEUE_SIZE", Integer(0, MAX_ROWS), 15000, "rows the aggregator holds uncommitted "
             "(`0`: unbounded); it also bounds each process's send buffer and what waits in "
             "ZeroMQ's queues. When full, the calling thread blocks until there is room (never "
             "for a dead aggregator), at most `TRACER_QUEUE_BLOCK_TIMEOUT`", field="queue_size",
             reference=True),
    Variable("QUEUE_BLOCK_TIMEOUT", Seconds(0, 86400), 60.0, "seconds a calling thread may "
             "block for room under the blocking policy. Past it (an aggregator frozen or far "
             "behind), its records are dropped and counted (`dropped_queue_block_timeout`), set "
             "aside in `FAILED_PUBLISH_PAYLOADS_DIR` when set, and warned about; later records "
             "are dropped at once until the aggregator takes records again",
             field="queue_block_timeout", shown_default="60"),
    Variable("QUEUE_MAX_BYTES", Integer(1 << 20, 1 << 40), 128 * 2**20, "bytes a process holds "
             "for the aggregator (large packed records in its buffer, and messages sent but not "
             "yet committed) and the aggregator's queue holds (rows' wire sizes). Over it, the "
             "queue policy applies as for a full `QUEUE_SIZE`: block (bounded as above) or drop, "
             "counted", field="queue_max_bytes"),
    Variable("DEFAULT_BATCH_SIZE", Integer(1, 100_000), 1000, "rows per write to the store (the "
             "reference's default is 100; a local SQLite sink prefers larger batches)",
             field="batch_size", reference=True),
    Variable("MAX_REQUEST_SIZE", Integer(1024, MAX_ROW_BYTES), 6 * 1024 * 1024, "bytes per "
             "write to the store. A single row larger than this is stored with its largest "
             'fields replaced by a marker, `{"_truncated": true, "original_bytes": N, "preview": '
             '"...", "saved_to": "<file>"}`, and counted (`rows_truncated`); its full copy goes '
             "to `FAILED_PUBLISH_PAYLOADS_DIR` when set", field="max_request_size",
             reference=True),
    Variable("NUM_RETRIES", Integer(0, 100), 5, "retries of a batch whose write failed because "
             "the store did (locked, full, unreachable), with exponential backoff (0.05 s "
             "doubling, at most 5 s) and jitter, cut short at shutdown. Writes merge by row id, "
             "so a retried batch never duplicates a row. A batch still failing is counted "
             "(`dropped_sink_failed`) and set aside in `FAILED_PUBLISH_PAYLOADS_DIR` when set. A "
             "write that fails because of a row in it is not retried but split down to the rows "
             "that cannot be written, which alone are counted (`dropped_row_failed`) and set "
             "aside", field="num_retries", reference=True),
    Variable("SYNC_FLUSH", Boolean(), False, "on: rows are held in the aggregator until a "
             "`flush()` (or exit); a flush that cannot commit raises `tracer.FlushError` with "
             "the cause. If the queue fills meanwhile, it is written anyway rather than leave "
             "producers blocked", field="sync_flush", reference=True),
    Variable("QUEUE_DROP_WHEN_FULL", Boolean(), False, "on: never block; rows beyond "
             "`QUEUE_SIZE` are dropped, each counted (`dropped_queue_full` in `tracer stats`, "
             "per sender too) with a warning at most every 10 s", field="queue_drop_when_full",
             reference=True),
    Variable("QUEUE_DROP_EXCEEDING_MAXSIZE", Integer(0, MAX_ROWS), 0, "`N`: cap the queue at N "
             "rows and drop beyond it, counted as `dropped_queue_exceeding_maxsize`",
             field="queue_drop_exceeding_maxsize", reference=True),
    Variable("FAILED_PUBLISH_PAYLOADS_DIR", Directory(), None, "a directory (created mode 0700, "
             "its files 0600) for everything that did not reach the store: batches given up "
             "after all retries (`sink_failed`), rows the store could not take (`row_failed`), a "
             "batch an uploader failure left unwritten (`uploader_error`), rows and records a "
             "drop policy or the block timeout dropped (by the aggregator, and by each process's "
             "recorder), full copies of truncated rows. Put it on another disk than the store: a "
             "full disk under the store then loses nothing. Replay with `tracer import-payloads "
             "DIR`", field="failed_payloads_dir", reference=True, shown_default="unset"),
    Variable("ALL_PUBLISH_PAYLOADS_DIR", Directory(), None, "a directory that receives every "
             "batch before it is written, in the same format", field="all_payloads_dir",
             reference=True, shown_default="unset"),
    Variable("DELIVER_ON_TERMINATE", Boolean(), True, "off: a multiprocessing child killed by "
             "`terminate()` (SIGTERM) dies at once, losing the spans still in its buffer. On, it "
             "delivers them first (at most 2 s); a child busy in a long C call when SIGTERM "
             "arrives then dies when the call returns", field="deliver_on_terminate"),
    Variable("MAX_ATTACHMENT_SIZE", Integer(0, MAX_FILE_BYTES), 512 * 2**20, "bytes: a larger "
             "attachment is not stored, and its reference says so", field="max_attachment_size",
             reference=True),
    Variable("MAX_INLINE_BASE64", Integer(0, MAX_ROW_BYTES), 65536, "characters: a longer "
             "base64 data URL (or bare base64 of a known binary format) in a logged value is "
             "stored as an attachment; `0`: never", field="max_inline_base64", reference=True),
    Variable("SEARCH_INDEX", Choice(("all", "roots", "off")), "all", "what the store's text "
             "index (the trace server's `q=` search) covers, set by the aggregator writing it: "
             "`all`, every span's input and output; `roots`, root and llm spans only; `off`, "
             "none (`q=` answers 400). A store indexed otherwise is re-indexed when an "
             "aggregator opens it. Cost per span in docs/benchmarks.md, section 9"),
    Variable("DEBUG", Boolean(), False, "on: an aggregator started by `init_logger` also logs "
             "its start and exit", field="debug"),
    Variable("AGGREGATOR_KEY", CurveKey(), None, "the public key of a `tcp://` aggregator "
             "started with `--secret-key` (`tracer keys curve` prints it); passed on to child "
             "processes. Used for `tcp://` endpoints only", field="aggregator_key",
             keyword="aggregator_key", shown_default="unset"),
    Variable("MAX_GENERATOR_ITEMS", Integer(-1, MAX_ROWS), 1000, "items of a traced generator "
             "(sync or async) kept as its output. Past N, no output is logged and a warning on "
             "the `tracer` logger says so; `0`: no output is logged; `-1`: no limit. Read when "
             "the generator function is decorated", reference=True),
    Variable("MAX_MESSAGE_SIZE", Integer(64 * 1024, 1 << 40), 1 << 30, "bytes: an aggregator "
             "closes the connection of a peer sending a larger message before reading it (the "
             "sender's next message shows the gap, `seq_gap_messages`)",
             field="max_message_size"),
    Variable("INSTRUMENT_THREADS", Boolean(), False, "on: `import tracer` calls "
             "`tracer.setup_threads()`, so that the current span follows work into every "
             "`threading.Thread` and `ThreadPoolExecutor` task (see \"Across processes and "
             "threads\")", reference=True),
)
BY_NAME = {v.name: v for v in VARIABLES}
BY_KEYWORD = {v.keyword: v for v in VARIABLES if v.keyword}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every variable of ``VARIABLES`` that has a field, as ``load()`` read it: the tuning knobs
    of the reference's "Tuning parameters", plus our own."""

    store: str | None
    endpoint: str | None
    app_url: str
    queue_size: int
    batch_size: int
    max_request_size: int
    num_retries: int
    sync_flush: bool
    queue_drop_when_full: bool
    queue_drop_exceeding_maxsize: int
    failed_payloads_dir: str | None
    all_payloads_dir: str | None
    deliver_on_terminate: bool
    max_attachment_size: int
    max_inline_base64: int
    debug: bool
    queue_block_timeout: float
    queue_max_bytes: int
    aggregator_key: str | None  # the CURVE public key of a tcp:// aggregator
    max_message_size: int


def load(env: Mapping[str, str] | None = None, lenient: bool = False) -> Settings:
    """Read and check every variable in ``env`` (default: ``os.environ``); ValueError naming the
    first malformed one and its value.

    ``lenient``: for code that must not raise (a child process adopting its parent's aggregator
    in the middle of a traced call): a malformed value, which ``init_logger`` would have refused
    (the environment changed since, or it was never called), is warned about once on stderr and
    its default used.
    """
    env = os.environ if env is None else env
    read = _read_or_default if lenient else Variable.read
    fields = {}
    for variable in VARIABLES:
        found = read(variable, env)
        if variable.field is not None:
            fields[variable.field] = found
    return Settings(**fields)


def value_or_default(name: str) -> Any:
    """The value of the variable ``name``, for code that must not raise (hooks, our threads):
    as ``load(lenient=True)``, a malformed value is warned about once and the default used."""
    return _read_or_default(BY_NAME[name], os.environ)


_warned: set[str] = set()


def _read_or_default(variable: Variable, env: Mapping[str, str]) -> Any:
    try:
        return variable.read(env)
    except ValueError as exc:
        if variable.name not in _warned:
            _warned.add(variable.name)
            default = (variable.shown_default if variable.shown_default is not None
                       else repr(variable.default))
            print(f"tracer: {exc}; using the default ({default})", file=sys.stderr)
        return variable.default


def keyword(name: str, given: object) -> Any:
    """A keyword argument of ``init_logger``/``init`` (``store``, ``endpoint``, ``app_url``,
    ``aggregator_key``), checked as the variable it stands for; None stays None."""
    if given is None:
        return None
    return BY_KEYWORD[name].kind.keyword(name, given)


def markdown_table() -> str:
    """The README's Configuration table: every variable, its values, default and meaning."""
    lines = ["| variable | values | default | meaning |", "|---|---|---|---|"]
    for v in VARIABLES:
        names = " or ".join(f"`{n}`" for n in v.names)
        if v.shown_default is not None:
            default = v.shown_default if v.shown_default.startswith(("set ", "unset")) \
                else f"`{v.shown_default}`"
        elif isinstance(v.default, bool):
            default = "on" if v.default else "off"
        else:
            default = f"`{v.default}`"
        meaning = v.meaning + (f"; `init_logger({v.keyword}=...)` wins" if v.keyword else "")
        lines.append(f"| {names} | {v.kind.describe()} | {default} | {meaning} |")
    return "\n".join(lines)


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


#: URL schemes of PostgreSQL stores (``workers.store.postgres``).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def without_password(url: str) -> str:
    """A URL with its password masked, for messages."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def is_postgres(store: object) -> bool:
    """Whether ``store`` is a PostgreSQL URL (else a SQLite path or URL)."""
    return isinstance(store, str) and store.startswith(POSTGRES_SCHEMES)


def split_password(url: str) -> tuple[str, str | None]:
    """A PostgreSQL URL without its password, and the password (percent-decoded, as libpq
    reads it; None if the URL has none). The aggregator is given the first on its command
    line, which any user can read in ``ps``, and the password in ``PGPASSWORD``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url, None
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user.split(':', 1)[0]}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), \
        urllib.parse.unquote(parts.password)


def store_key(store: str) -> str:
    """What tells one store from another: a SQLite store's absolute path, a PostgreSQL URL
    without its password (one aggregator per database, whichever password reached it)."""
    return split_password(store)[0] if is_postgres(store) else store


#: Where the local files of PostgreSQL stores go (one directory per database; see local_path).
POSTGRES_STATE_DIR = os.path.join("~", ".tracer", "postgres")


def local_path(store: str) -> str:
    """Where the files a store keeps on this host are anchored: for a SQLite store the file
    itself (its ``aggregator.log`` and ``<name>.attachments/`` sit beside it); for a
    PostgreSQL store ``~/.tracer/postgres/<host>-<port>-<database>/store``, a name never
    created whose directory (0700) holds the aggregator's log and ``store.attachments/``. The
    directory is named from the URL without its user and password: every user's processes on
    this host that write to one database share one attachment area and log."""
    if not is_postgres(store):
        return store
    parts = urllib.parse.urlsplit(store)
    query = urllib.parse.parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["localhost"])[0]
    try:
        port = parts.port or int(query.get("port", ["5432"])[0])
    except ValueError:  # a malformed port: the database refuses it, but the name must not fail
        port = 5432
    database = parts.path.lstrip("/") or query.get("dbname", [parts.username or "postgres"])[0]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{host}-{port}-{database}").lstrip(".")
    return os.path.join(os.path.expanduser(POSTGRES_STATE_DIR), name, "store")


def store_location(store: str | None, label: str = "store") -> str:
    """Where a command of the ``tracer`` CLI finds its store: a PostgreSQL URL as it is (the
    store opens it), anything else as ``store_path`` has it."""
    if isinstance(store, str) and store.startswith(POSTGRES_SCHEMES):
        return store
    return store_path(store, label)


def store_path(store: str | None, label: str = "store") -> str:
    """The absolute SQLite path for a ``store`` setting (``label`` names it in errors: the
    variable or the keyword argument it came from).

    Accepts a plain path or a URL in SQLAlchemy's spelling: ``sqlite:///relative.db``,
    ``sqlite:////absolute/path.db``. A PostgreSQL URL is returned as given (its local files go
    to ``local_path``). Refuses other URL schemes, and a path that names a directory or
    something other than a regular file: the store is one file, with the aggregator's log
    beside it.
    """
    given = DEFAULT_STORE if store is None else store
    if not isinstance(given, str):
        raise TypeError(f"{label} must be a string (a path or sqlite:///path), got "
                        f"{type(given).__name__} {given!r}")
    path = given
    if path.startswith("sqlite:///"):
        path = path[len("sqlite:///"):]
    elif "://" in path:
        scheme = path.split("://", 1)[0]
        if scheme.lower().startswith("sqlite"):
            raise refused(label, given, "expected sqlite:///relative.db or "
                                        "sqlite:////absolute.db")
        if path.startswith(POSTGRES_SCHEMES):
            return given  # the database checks it; its local files go to local_path(given)
        raise refused(label, given, f"{scheme}:// stores are not supported; only SQLite ones "
                                    "(a path or sqlite:///path)")
    if not path:
        raise refused(label, given, "empty path")
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise refused(label, given, "names a directory; name the database file, such as "
                                    f"{os.path.join(path, 'traces.db')}")
    path = os.path.abspath(os.path.expanduser(path))
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return path  # the aggregator creates it (and its directory: a failure is named then)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise refused(label, given, f"cannot be looked at ({reason})") from None
    if stat.S_ISDIR(info.st_mode):
        raise refused(label, given, "is a directory; name the database file in it, such as "
                                    f"{os.path.join(path, 'traces.db')}")
    if not stat.S_ISREG(info.st_mode):
        raise refused(label, given, "is not a regular file")
    return path


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
