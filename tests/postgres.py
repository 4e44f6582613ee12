"""A real PostgreSQL server for the tests: ``initdb`` into a temporary directory, started with
``pg_ctl`` as the ``postgres`` user (PostgreSQL refuses to run as root) on a free loopback port,
stopped and removed at the end. Each test gets a database of its own (``database``).

When PostgreSQL is missing and we are root, Debian's ``postgresql`` is installed (what
``.ci/run`` does too); otherwise the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from .helpers import wait_until

#: The password in the URLs the tests use (the server trusts loopback connections: it is only
#: there to show that no message or log carries it).
PASSWORD = "s3cret-Pw"
_installed_once: list[bool] = []


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _install() -> str | None:
    """Debian's PostgreSQL, installed once per process when we are root; its bin directory."""
    if _bin_dir() is None and os.geteuid() == 0 and not _installed_once:
        _installed_once.append(True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=False, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _bin_dir()


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, listening on ``127.0.0.1:port``."""

    def __init__(self, bin_dir: str, port: int) -> None:
        import psycopg  # the `postgres` extra (the test extra has it)

        self._psycopg = psycopg
        self.bin_dir = bin_dir
        self.port = port
        self.directory = tempfile.mkdtemp(prefix="tracer-pg-")
        self.data = os.path.join(self.directory, "data")
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._ids = itertools.count(1)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.start()
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE tracer LOGIN SUPERUSER PASSWORD '{PASSWORD}'")

    def start(self) -> None:
        """Start the server (again, after ``shut_down``) and wait until it accepts connections."""
        # Sockets in our own directory (not /var/run/postgresql, which may not exist), fsync
        # off (a test cluster need not survive a crash), enough connections for the
        # concurrency tests.
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.directory, "log"), "-w",
                  "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c max_connections=200", "start")
        wait_until(self._accepts, 30, "PostgreSQL never accepted connections")

    def shut_down(self) -> None:
        """Stop the server as an administrator does (``pg_ctl stop -m fast``: every session
        ended, every open transaction rolled back), keeping its data for ``start``."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [os.path.join(self.bin_dir, tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=self.directory)

    def _accepts(self) -> bool:
        try:
            self._psycopg.connect(self.admin, connect_timeout=2).close()
        except self._psycopg.OperationalError:
            return False
        return True

    def database(self) -> str:
        """A new, empty database; its URL (with the tests' password in it)."""
        name = f"t{os.getpid()}_{next(self._ids)}"
        with self._psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER tracer")
        return f"postgresql://tracer:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def start(port: int) -> PostgresServer:
    """A running server, or skip (PostgreSQL or psycopg missing, and not installable)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[postgres]')")
    bin_dir = _install()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql) and we "
                    "are not root to install it")
    return PostgresServer(bin_dir, port)
