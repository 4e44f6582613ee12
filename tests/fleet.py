"""A fleet on many hosts for the fleet tests: one trace server, a Redis broker, Celery workers,
a publisher, each on a host of its own (``tests/netns.py``), every worker host with its own
aggregator uploading to the server over HTTPS with an API key.

Where network namespaces cannot be made, ``Fleet`` falls back to processes on this machine's
loopback, each "host" an aggregator of its own (its own ``HOME``), and says so
(``Fleet.fallback`` is the reason): the hosts then share one name, so rows tell them apart by
``origin.pid`` only, and a host cannot be cut off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from . import netns
from .conftest import ROOT, Store, clean_env, free_port
from .helpers import poll, wait_until

KEY = "fleet-test-key-0123456789"
PROJECT = "fleet"
WORKERS = ("worker-1", "worker-2", "worker-3")
PORT = 8585
REDIS_PORT = 6379
CELERY = [sys.executable, "-m", "celery", "-A", "tests.celery_tasks", "worker", "--pool",
          "prefork", "--concurrency", "2", "--loglevel", "INFO", "--without-heartbeat",
          "--without-gossip", "--without-mingle"]

# The publisher: one root span, a group of tasks (to the queue given, or any worker), the
# results awaited; prints the root's id. Arguments: broker, task count, seconds per task, queue.
PUBLISH = """
import json, sys
import tracer
from tests import celery_tasks
broker, count, seconds, queue = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
app = celery_tasks.make_app(broker)
tracer.init_logger(project="fleet")
options = {"queue": queue} if queue != "-" else {}
with tracer.start_span(name="fleet-run") as root:
    results = [app.tasks["tracer_tests.slow"].apply_async((i, seconds), **options)
               for i in range(count)]
    values = [r.get(timeout=600) for r in results]
print(json.dumps({"root": root.root_span_id, "tasks": len(values)}), flush=True)
tracer.flush()
"""
SPANS_PER_TASK = 3  # the publisher's "publish" span, the task span, its check() span


class LocalHost:
    """A stand-in host on this machine's loopback (the fallback): processes run as they are."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.address = "127.0.0.1"
        self.processes: list[subprocess.Popen[bytes]] = []

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(list(args), start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def run(self, args: Sequence[str], timeout: float = 60, **kwargs: Any
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              **kwargs)

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 20) -> int | None:
        return netns.Host.stop(self, process, sig, timeout)  # type: ignore[arg-type]


class Fleet:
    """The hosts, the services on them, and what the tests ask of them."""

    def __init__(self, directory: str, ingest_queue: int | None = None) -> None:
        self.directory = directory
        self.fallback = netns.unavailable()
        self.net: netns.Network | None = None
        names = ("server", "broker", "publisher", *WORKERS)
        if self.fallback is None:
            self.net = netns.Network()
            self.hosts: dict[str, Any] = {n: self.net.add_host(n) for n in names}
            self.port, self.redis_port = PORT, REDIS_PORT
        else:
            print(f"fleet tests: network namespaces unavailable ({self.fallback}): falling "
                  "back to aggregators on loopback", file=sys.stderr)
            self.hosts = {n: LocalHost(n) for n in names}
            self.port, self.redis_port = free_port(), free_port()
        self.server_host = self.hosts["server"]
        self.store = os.path.join(directory, "server", "traces.db")
        os.makedirs(os.path.dirname(self.store), exist_ok=True)
        self.cert, self.cert_key = self._certificate()
        self.url = f"https://{self.server_host.address}:{self.port}"
        self.broker = f"redis://{self.hosts['broker'].address}:{self.redis_port}/0"
        self.ingest_queue = ingest_queue
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        try:
            self._start_redis()
            self.start_server()
        except BaseException:
            self.close()
            raise

    # -- the services ---------------------------------------------------------------------

    def _certificate(self) -> tuple[str, str]:
        """A self-signed certificate for the server's address (the workers' CA bundle)."""
        cert = os.path.join(self.directory, "server.crt")
        key = os.path.join(self.directory, "server.key")
        address = self.server_host.address
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                        f"/CN={address}", "-addext", f"subjectAltName=IP:{address}",
                        "-keyout", key, "-out", cert], check=True, capture_output=True,
                       timeout=60)
        return cert, key

    def log_path(self, name: str) -> str:
        return os.path.join(self.directory, f"{name}.log")

    def log(self, name: str) -> str:
        with open(self.log_path(name), encoding="utf-8", errors="replace") as f:
            return f.read()

    def _start_redis(self) -> None:
        import redis

        from .conftest import _redis_server_binary

        host = self.hosts["broker"]
        workdir = os.path.join(self.directory, "redis")
        os.makedirs(workdir, exist_ok=True)
        with open(self.log_path("redis"), "wb") as log:
            host.popen([_redis_server_binary(), "--port", str(self.redis_port), "--bind",
                        host.address, "--protected-mode", "no", "--save", "",
                        "--appendonly", "no", "--dir", workdir], stdout=log,
                       stderr=subprocess.STDOUT)
        if self.fallback is not None:
            wait_until(lambda: _pings(redis, self.broker), 30, "redis did not start")
        else:  # reachable from the publisher's host only through the network
            probe = [sys.executable, "-c", f"import redis; redis.Redis.from_url("
                     f"{self.broker!r}, socket_timeout=1).ping()"]
            wait_until(lambda: self.hosts["publisher"].run(probe).returncode == 0, 30,
                       lambda: f"redis did not start:\n{self.log('redis')}")

    def start_server(self) -> None:
        """``tracer serve`` on the server host: the fleet's store, HTTPS, the API key."""
        args = [sys.executable, "-m", "workers.cli", "serve", "--store", self.store, "--host",
                self.server_host.address if self.fallback is None else "127.0.0.1",
                "--port", str(self.port), "--api-key", KEY, "--tls-cert", self.cert,
                "--tls-key", self.cert_key]
        if self.ingest_queue is not None:
            args += ["--ingest-queue", str(self.ingest_queue)]
        with open(self.log_path("server"), "ab") as log:
            self.server = self.server_host.popen(args, stdout=log, stderr=subprocess.STDOUT,
                                                 env=clean_env(), cwd=ROOT)
        wait_until(self._server_answers, 60,
                   lambda: f"tracer serve did not answer:\n{self.log('server')}")

    def _server_answers(self) -> bool:
        assert self.server is not None
        if self.server.poll() is not None:
            raise AssertionError(f"tracer serve exited:\n{self.log('server')}")
        probe = [sys.executable, "-c", "import httpx, ssl, sys; httpx.get(sys.argv[1], "
                 "verify=ssl.create_default_context(cafile=sys.argv[2]), timeout=2, "
                 "headers={'Authorization': 'Bearer ' + sys.argv[3]}).raise_for_status()",
                 f"{self.url}/api/v1/ping", self.cert, KEY]
        return self.hosts["publisher"].run(probe).returncode == 0

    def kill_server(self) -> None:
        assert self.server is not None
        self.server_host.stop(self.server, signal.SIGKILL)

    def env(self, host: str, **extra: str) -> dict[str, str]:
        """A host's environment: its own HOME (its aggregator's files, its spool), the
        server's URL, key and certificate."""
        home = os.path.join(self.directory, "homes", host)
        os.makedirs(home, mode=0o700, exist_ok=True)
        values = {"HOME": home, "TRACER_API_URL": self.url, "TRACER_API_KEY": KEY,
                  "TRACER_CA_BUNDLE": self.cert, "TRACER_TEST_BROKER": self.broker,
                  "TRACER_TEST_PROJECT": PROJECT}
        values.update(extra)
        return clean_env(**values)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """A Celery prefork worker on host ``name``, consuming the shared queue and its own."""
        with open(self.log_path(name), "wb") as log:
            worker = self.hosts[name].popen(
                [*CELERY, "--hostname", f"{name}@{name}", "-Q", f"celery,{name}"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env(name), cwd=ROOT)
        self.workers[name] = worker
        wait_until(lambda: " ready." in self.log(name) or worker.poll() is not None, 90)
        if " ready." not in self.log(name):
            raise AssertionError(f"the worker on {name} did not start:\n{self.log(name)}")
        return worker

    def publish(self, tasks: int, seconds: float, queue: str = "-",
                timeout: float = 600) -> str:
        """Publish from the publisher host and wait for the results; the trace's root id."""
        done = self.hosts["publisher"].run(
            [sys.executable, "-c", PUBLISH, self.broker, str(tasks), str(seconds), queue],
            timeout=timeout, env=self.env("publisher"), cwd=ROOT)
        if done.returncode != 0:
            raise AssertionError(f"the publisher failed ({done.returncode}):\n{done.stderr}")
        return str(json.loads(done.stdout.strip().splitlines()[-1])["root"])

    def publish_in_background(self, tasks: int, seconds: float, queue: str = "-"
                              ) -> subprocess.Popen[bytes]:
        with open(self.log_path("publisher"), "wb") as log:
            return self.hosts["publisher"].popen(
                [sys.executable, "-c", PUBLISH, self.broker, str(tasks), str(seconds), queue],
                stdout=log, stderr=subprocess.STDOUT, env=self.env("publisher"), cwd=ROOT)

    # -- what the server stored -----------------------------------------------------------

    def rows(self, root: str) -> list[dict]:
        if not os.path.exists(self.store):
            return []
        with Store(self.store) as reader:
            return list(reader.rows(root_span_id=root))

    def stored_rows(self) -> int:
        """How many rows the server's store holds (0 before it exists)."""
        if not os.path.exists(self.store):
            return 0
        with Store(self.store) as reader:
            return sum(1 for _ in reader.rows())

    def published_root(self) -> str:
        """The root id a background publisher printed once it finished."""
        return str(json.loads(self.log("publisher").strip().splitlines()[-1])["root"])

    def trace(self, root: str, expected: int, timeout: float = 120) -> list[dict]:
        """The trace's rows once ``expected`` are stored, all ended; what is there at the
        timeout otherwise."""
        def complete() -> list[dict] | None:
            rows = self.rows(root)
            ended = [r for r in rows if (r.get("metrics") or {}).get("end") is not None]
            return rows if len(ended) >= expected else None

        return poll(complete, timeout, interval=0.5) or self.rows(root)

    def throttled(self) -> int:
        """How many batches the server refused with 429 since it started (its ingest
        counters, ``/api/stats``)."""
        return int(server_get(self, "/api/stats")["ingest"]["counters"].get("refused_full", 0))

    def close(self) -> None:
        for name, worker in self.workers.items():
            if worker.poll() is None:
                self.hosts[name].stop(worker, signal.SIGTERM, timeout=30)
        if self.net is not None:
            self.net.close()
        else:
            for host in self.hosts.values():
                for process in host.processes:
                    if process.poll() is None:
                        host.stop(process, signal.SIGKILL, timeout=10)


def _pings(redis: Any, url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def host_of(row: dict) -> str | None:
    return (row.get("origin") or {}).get("host")


def server_get(fleet: Fleet, path: str) -> Any:
    """GET the server's API from the publisher's host (the only way in, over the network)."""
    probe = [sys.executable, "-c", "import httpx, ssl, sys; r = httpx.get(sys.argv[1], "
             "verify=ssl.create_default_context(cafile=sys.argv[2]), timeout=30, headers="
             "{'Authorization': 'Bearer ' + sys.argv[3]}); r.raise_for_status(); "
             "print(r.text)", fleet.url + path, fleet.cert, KEY]
    done = fleet.hosts["publisher"].run(probe)
    if done.returncode != 0:
        raise AssertionError(f"GET {path}: {done.stderr}")
    return json.loads(done.stdout)
