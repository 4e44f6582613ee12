"""A Celery fleet traced end to end: Redis, 2 prefork workers, a fan-out of tasks with sub-tasks.

    python scripts/fleet_demo.py [--orders 4] [--store PATH]

Starts ``redis-server`` on a free loopback port, a standalone aggregator (``tracer aggregator
--bind tcp://127.0.0.1:PORT``) and two ``celery worker`` processes (prefork pool, concurrency 2)
attached to it through ``TRACER_ENDPOINT``. Under one root span it publishes a group of
``checkout`` tasks; each runs two ``@traced`` steps and publishes two sub-tasks, ``charge`` (one
order in four is declined: an error) and ``ship``. It waits for every task, stops the workers
(warm shutdown) and the aggregator, prints the trace tree from the store and the count of spans
stored against spans expected, and exits 1 if any is missing. Needs the ``celery`` extra
(``pip install -e '.[celery]'``) and ``redis-server`` (Debian: ``apt-get install redis-server``).

This file is also the workers' Celery app (``celery -A fleet_demo worker``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tracer  # noqa: E402
from tracer.registry import close_all  # noqa: E402

try:
    from celery import Celery, group
except ImportError:  # --help still works; main() says what to install
    Celery = None
else:
    from tracer.integrations.celery import instrument

PROJECT = "fleet-demo"
WORKERS = 2
CONCURRENCY = 2
SPANS_PER_ORDER = 9  # publish + checkout + 2 steps, and publish + task (+ 1 step for charge) x2

if Celery is not None:
    # The workers find the broker in the environment the demo gives them.
    broker = os.environ.get("FLEET_DEMO_BROKER", "redis://127.0.0.1:6379/0")
    app = Celery("fleet_demo", broker=broker, backend=broker)
    app.conf.update(broker_connection_retry_on_startup=True, worker_prefetch_multiplier=1)
    instrument(app, project=PROJECT)  # workers log to PROJECT, through TRACER_ENDPOINT

    @tracer.traced
    def price(order_id: int) -> float:
        return 10.0 + 2.5 * order_id

    @tracer.traced(type="tool")
    def reserve_stock(order_id: int) -> bool:
        time.sleep(0.01)
        return True

    @tracer.traced
    def fraud_check(order_id: int, amount: float) -> float:
        return 0.9 if order_id % 4 == 3 else 0.1

    @app.task(name="fleet_demo.checkout")
    def checkout(order_id: int) -> list[str]:
        amount = price(order_id)
        reserve_stock(order_id)
        # Sub-tasks published from inside this task: they nest under its span.
        return [charge.delay(order_id, amount).id, ship.delay(order_id).id]

    @app.task(name="fleet_demo.charge")
    def charge(order_id: int, amount: float) -> str:
        if fraud_check(order_id, amount) > 0.5:
            raise RuntimeError(f"card declined for order {order_id}")
        return f"charged {amount:.2f}"

    @app.task(name="fleet_demo.ship")
    def ship(order_id: int) -> str:
        return f"label-{order_id:05d}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, ready, proc: subprocess.Popen, log: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            with open(log, encoding="utf-8", errors="replace") as f:
                raise SystemExit(f"{what} did not start; its log ({log}):\n{f.read()[-3000:]}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM (a warm shutdown for a worker), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, default=4, help="checkout tasks to fan out (default 4)")
    p.add_argument("--store", help="the store to write (default: a temporary file)")
    args = p.parse_args()
    if Celery is None:
        print("the fleet demo needs Celery: pip install -e '.[celery]'", file=sys.stderr)
        return 2
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("the fleet demo needs redis-server: apt-get install -y redis-server",
              file=sys.stderr)
        return 2

    workdir = tempfile.mkdtemp(prefix="fleet-demo-")
    store = os.path.abspath(args.store or os.path.join(workdir, "traces.db"))
    url = f"redis://127.0.0.1:{free_port()}/0"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, FLEET_DEMO_BROKER=url, TRACER_ENDPOINT=endpoint,
               PYTHONPATH=os.pathsep.join(p for p in (os.path.dirname(__file__), ROOT,
                                                      os.environ.get("PYTHONPATH")) if p))
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: str) -> subprocess.Popen:
        with open(os.path.join(workdir, log), "wb") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=out,
                                    stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    def log_has(log: str, text: str):
        def ready() -> bool:
            with open(os.path.join(workdir, log), encoding="utf-8", errors="replace") as f:
                return text in f.read()
        return ready

    try:
        redis_proc = start([redis_server, "--port", url.split(":")[2].split("/")[0], "--bind",
                            "127.0.0.1", "--save", "", "--appendonly", "no"], "redis.log")
        wait_for("redis-server", log_has("redis.log", "Ready to accept connections"),
                 redis_proc, os.path.join(workdir, "redis.log"))
        aggregator = start([sys.executable, "-m", "workers.cli", "aggregator", "--bind", endpoint,
                            "--store", store], "aggregator.log")
        workers = []
        for i in range(1, WORKERS + 1):
            log = f"worker{i}.log"
            worker = start([sys.executable, "-m", "celery", "-A", "fleet_demo", "worker",
                            "--pool", "prefork", "--concurrency", str(CONCURRENCY),
                            "--hostname", f"demo{i}@%h", "--loglevel", "INFO",
                            "--without-heartbeat", "--without-gossip", "--without-mingle"], log)
            workers.append(worker)
            wait_for(f"worker {i}", log_has(log, " ready."), worker,
                     os.path.join(workdir, log))
        print(f"redis {url}, aggregator {endpoint}, {WORKERS} workers x {CONCURRENCY} "
              f"processes; logs in {workdir}")

        app.conf.broker_url = app.conf.result_backend = url
        tracer.init_logger(PROJECT, endpoint=endpoint)
        started = time.perf_counter()
        with tracer.start_span("checkout batch", type="task",
                               input={"orders": args.orders}) as root:
            sub_ids = group(checkout.s(i) for i in range(args.orders)).apply_async().get(
                timeout=120)
            outcomes = [app.AsyncResult(i).get(timeout=120, propagate=False)
                        for ids in sub_ids for i in ids]
            root.log(output={"sub_tasks": len(outcomes),
                             "failed": sum(isinstance(o, Exception) for o in outcomes)})
        ran = time.perf_counter() - started
        close_all()  # everything this process sent is committed; it sends nothing more
        for worker in workers:  # warm shutdown
            stop(worker)
        stop(aggregator)  # it commits what it holds, then exits

        from workers.cli.tree import print_tree
        from workers.store import open_store

        print()
        with open_store(store, readonly=True) as reader:
            print_tree(reader, root.root_span_id)
            rows = list(reader.rows(root_span_id=root.root_span_id))
        expected = 1 + SPANS_PER_ORDER * args.orders
        hosts = {(r.get("metadata") or {}).get("celery", {}).get("hostname") for r in rows}
        print()
        print(f"tasks ran on      {', '.join(sorted(h for h in hosts if h))}")
        print(f"spans expected    {expected}")
        print(f"spans stored      {len(rows)}")
        print(f"fan-out finished  in {ran:.2f} s")
        print(f"store             {store}")
        ok = len(rows) == expected
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        for proc in reversed(procs):
            stop(proc)


if __name__ == "__main__":
    sys.exit(main())
