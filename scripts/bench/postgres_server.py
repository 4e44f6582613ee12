"""PostgreSQL for the benchmarks: a server started for a run (or one given by URL), and new
databases on it."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

_names = itertools.count(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def postgres_for_bench(url: str | None) -> Iterator[str]:
    """``url`` as it is, or a server started for the run (``tests/postgres.py``'s helper: initdb
    in a temporary directory, on a free loopback port), with ``fsync`` on (the tests' servers
    run without it: a benchmark measures what a real server does), stopped at the end."""
    if url:
        yield url
        return
    import psycopg

    from tests.postgres import PostgresServer, _install

    bin_dir = _install()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (Debian: apt-get install postgresql); "
                         "or give --store postgresql://...")
    server = PostgresServer(bin_dir, _free_port())
    # Stopped on SIGTERM too (the default handler would leave the server running).
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with psycopg.connect(server.admin, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET fsync = on")
            conn.execute("SELECT pg_reload_conf()")
        yield server.admin.replace("postgres@", "tracer:" + _password() + "@", 1)
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _password() -> str:
    from tests.postgres import PASSWORD

    return PASSWORD


def new_database(url: str) -> str:
    """A new, empty database on the server of ``url``; its URL."""
    import psycopg

    name = f"bench_{os.getpid()}_{next(_names)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))
