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

    python scripts/fleet_demo.py --hosts [--orders 4] [--keep]   # as root

``--hosts`` runs the same workload on a fleet of hosts made of Linux network namespaces on this
machine (``tests/netns.py``: a private network, nothing leaves the machine): ``tracer serve``
on a *server* host over HTTPS (a self-signed certificate made with ``openssl``, an API key), the
broker (redis-server) on a *broker* host, three *worker* hosts each running a Celery prefork
worker whose own aggregator uploads to the server (``TRACER_API_URL``, ``TRACER_API_KEY``,
``TRACER_CA_BUNDLE``; its own ``HOME``, so its own spool), and the publisher on a *publisher*
host. Once the workers have stopped it reads the trace back from the server's JSON API
(``/api/traces/{root}`` and each span's row), prints the tree with the host each span ran on
(``origin.host``) beside it and the count of spans stored against expected, and exits 1 if
any is missing. It needs root, ``ip`` and ``unshare``; without them it says so and exits 2
(run the single-host mode instead). Everything it made (processes, namespaces, its temporary
directory unless ``--keep``) is removed at the end, on Ctrl-C too.

This file is also the workers' Celery app (``celery -A fleet_demo worker``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
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


def publish(orders: int) -> tuple[str, float]:
    """The workload, under one root span: ``orders`` checkout tasks, each with its two
    sub-tasks, every result awaited. The root's id and the seconds the fan-out took."""
    started = time.perf_counter()
    with tracer.start_span("checkout batch", type="task", input={"orders": orders}) as root:
        sub_ids = group(checkout.s(i) for i in range(orders)).apply_async().get(timeout=120)
        outcomes = [app.AsyncResult(i).get(timeout=120, propagate=False)
                    for ids in sub_ids for i in ids]
        root.log(output={"sub_tasks": len(outcomes),
                         "failed": sum(isinstance(o, Exception) for o in outcomes)})
    return root.root_span_id, time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=4, help="checkout tasks to fan out (default 4)")
    p.add_argument("--store", help="the store to write (default: a temporary file; single-host "
                   "mode only: with --hosts the server's store is in the temporary directory)")
    p.add_argument("--hosts", action="store_true",
                   help="run it on a fleet of hosts made of network namespaces (needs root)")
    p.add_argument("--keep", action="store_true",
                   help="with --hosts: keep the temporary directory (logs, the server's store)")
    # What --hosts runs on the hosts it makes (this file, started in a namespace).
    p.add_argument("--as-publisher", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ping", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fetch", metavar="ROOT", help=argparse.SUPPRESS)
    p.add_argument("--skeleton-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ping or args.fetch:
        return read_server(args.fetch, args.skeleton_only)
    if Celery is None:
        print("the fleet demo needs Celery: pip install -e '.[celery]'", file=sys.stderr)
        return 2
    if args.as_publisher:
        return run_publisher(args.orders)
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("the fleet demo needs redis-server: apt-get install -y redis-server",
              file=sys.stderr)
        return 2
    if args.hosts:
        return multi_host(args.orders, redis_server, args.keep)
    return single_host(args.orders, args.store, redis_server)


def single_host(orders: int, store_path: str | None, redis_server: str) -> int:
    """Redis, a standalone aggregator and two workers on this machine's loopback."""
    workdir = tempfile.mkdtemp(prefix="fleet-demo-")
    store = os.path.abspath(store_path or os.path.join(workdir, "traces.db"))
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
        root_span_id, ran = publish(orders)
        close_all()  # everything this process sent is committed; it sends nothing more
        for worker in workers:  # warm shutdown
            stop(worker)
        stop(aggregator)  # it commits what it holds, then exits

        from workers.cli.tree import print_tree
        from workers.store import open_store

        print()
        with open_store(store, readonly=True) as reader:
            print_tree(reader, root_span_id)
            rows = list(reader.rows(root_span_id=root_span_id))
        expected = 1 + SPANS_PER_ORDER * orders
        hosts = {(r.get("metadata") or {}).get("celery", {}).get("hostname") for r in rows}
        print()
        return verdict(hosts, expected, len(rows), ran, "", [f"store             {store}"])
    finally:
        for proc in reversed(procs):
            stop(proc)

# -- --hosts: the same workload on a fleet of network-namespace hosts ---------------------------

HOST_WORKERS = ("worker-1", "worker-2", "worker-3")
SERVER_PORT = 8585
REDIS_PORT = 6379
HERE = os.path.abspath(__file__)


def multi_host(orders: int, redis_server: str, keep: bool) -> int:
    """Build the fleet (see the module's docstring), run the workload on it, read the trace
    back from the server's API, remove everything."""
    from tests import netns  # the namespace hosts the fleet tests use (see docs/fleet.md)

    why = netns.unavailable()
    if why is None and shutil.which("openssl") is None:
        why = "`openssl` is not installed (it makes the server's certificate)"
    if why is not None:
        print(f"fleet_demo --hosts: cannot make hosts here: {why}.\n"
              "Run it as root on Linux with iproute2 and util-linux, or run the single-host "
              "mode instead: python scripts/fleet_demo.py", file=sys.stderr)
        return 2

    # SIGTERM ends the demo as Ctrl-C does: through the cleanup below.
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    workdir = tempfile.mkdtemp(prefix="fleet-demo-hosts-")
    network = None
    try:
        network = netns.Network()
        hosts = {name: network.add_host(name)
                 for name in ("server", "broker", "publisher", *HOST_WORKERS)}
        return _run_fleet(network, hosts, workdir, orders, redis_server)
    except KeyboardInterrupt:
        print("\ninterrupted: removing the fleet", file=sys.stderr)
        return 130
    finally:
        if network is not None:
            network.close()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_fleet(network: object, hosts: dict, workdir: str, orders: int,
               redis_server: str) -> int:
    server, broker, publisher = hosts["server"], hosts["broker"], hosts["publisher"]
    key = secrets.token_urlsafe(24)
    url = f"https://{server.address}:{SERVER_PORT}"
    broker_url = f"redis://{broker.address}:{REDIS_PORT}/0"
    cert, cert_key = os.path.join(workdir, "server.crt"), os.path.join(workdir, "server.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                    f"/CN={server.address}", "-addext", f"subjectAltName=IP:{server.address}",
                    "-keyout", cert_key, "-out", cert], check=True, capture_output=True,
                   timeout=60)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("TRACER_", "_TRACER_", "BRAINTRUST_"))}
    base["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.dirname(HERE), ROOT, os.environ.get("PYTHONPATH")) if p)

    def env(host: str) -> dict[str, str]:
        """A host's environment: its own HOME (its aggregator's files and spool), the server's
        URL, key and certificate, the broker."""
        home = os.path.join(workdir, "homes", host)
        os.makedirs(home, mode=0o700, exist_ok=True)
        return dict(base, HOME=home, TRACER_API_URL=url, TRACER_API_KEY=key,
                    TRACER_CA_BUNDLE=cert, FLEET_DEMO_BROKER=broker_url)

    def log_path(name: str) -> str:
        return os.path.join(workdir, f"{name}.log")

    def log_has(name: str, text: str):
        def ready() -> bool:
            with open(log_path(name), encoding="utf-8", errors="replace") as f:
                return text in f.read()
        return ready

    def start(host, name: str, cmd: list[str], environ: dict[str, str]) -> subprocess.Popen:
        with open(log_path(name), "wb") as out:
            return host.popen(cmd, env=environ, cwd=workdir, stdout=out,
                              stderr=subprocess.STDOUT)

    redis_proc = start(broker, "redis", [redis_server, "--port", str(REDIS_PORT), "--bind",
                                         broker.address, "--protected-mode", "no", "--save", "",
                                         "--appendonly", "no", "--dir", workdir], base)
    wait_for("redis-server", log_has("redis", "Ready to accept connections"), redis_proc,
             log_path("redis"))
    store = os.path.join(workdir, "server", "traces.db")
    os.makedirs(os.path.dirname(store), mode=0o700)
    # The server's key comes from its environment (TRACER_API_KEY), not its command line.
    serve = start(server, "server", [sys.executable, "-m", "workers.cli", "serve", "--store",
                                     store, "--host", server.address, "--port", str(SERVER_PORT),
                                     "--tls-cert", cert, "--tls-key", cert_key],
                  dict(base, TRACER_API_KEY=key))
    ping = [sys.executable, HERE, "--ping"]
    wait_for("tracer serve", lambda: publisher.run(ping, env=env("publisher")).returncode == 0,
             serve, log_path("server"))
    workers = []
    for name in HOST_WORKERS:
        worker = start(hosts[name], name, [
            sys.executable, "-m", "celery", "-A", "fleet_demo", "worker", "--pool", "prefork",
            "--concurrency", str(CONCURRENCY), "--hostname", f"demo@{name}", "--loglevel",
            "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"], env(name))
        workers.append((hosts[name], worker))
        wait_for(f"the worker on {name}", log_has(name, " ready."), worker, log_path(name),
                 timeout=120)
    print(f"hosts on {network.subnet}.0/24 (network namespaces): "  # type: ignore[attr-defined]
          f"server {server.address} (tracer serve, {url}), broker {broker.address} (redis), "
          f"publisher {publisher.address}, "
          + ", ".join(f"{n} {hosts[n].address}" for n in HOST_WORKERS)
          + f" (a Celery worker x {CONCURRENCY} processes and its own aggregator each)")

    done = publisher.run([sys.executable, HERE, "--as-publisher", "--orders", str(orders)],
                         timeout=300, env=env("publisher"), cwd=workdir)
    if done.returncode != 0:
        print(f"the publisher failed ({done.returncode}):\n{done.stderr[-3000:]}",
              file=sys.stderr)
        return 1
    published = json.loads(done.stdout.strip().splitlines()[-1])
    root_span_id, ran = published["root"], published["seconds"]
    for host, worker in workers:  # warm shutdown: their aggregators upload what they hold
        host.stop(worker, signal.SIGTERM, timeout=60)

    expected = 1 + SPANS_PER_ORDER * orders
    fetch = [sys.executable, HERE, "--fetch", root_span_id]

    def read(skeleton_only: bool) -> dict:
        got = publisher.run(fetch + (["--skeleton-only"] if skeleton_only else []),
                            env=env("publisher"), timeout=120)
        if got.returncode != 0:
            raise SystemExit(f"reading the trace from the server failed:\n{got.stderr}")
        return json.loads(got.stdout)

    def complete() -> bool:
        spans = read(True)["skeleton"]["spans"]
        return len(spans) >= expected and not any(span["running"] for span in spans)

    deadline = time.monotonic() + 120
    while not complete() and time.monotonic() < deadline:
        time.sleep(1)
    trace = read(False)
    rows = trace["rows"]

    from workers.cli.tree import print_rows

    print()
    print(f"from the server's API: GET {url}/api/traces/{root_span_id} and each span's row "
          "(host: origin.host)")
    print_rows(rows, root_span_id, label=lambda row: (row.get("origin") or {}).get("host", "?"))
    by_host: dict[str, int] = {}
    for row in rows:
        host_name = (row.get("origin") or {}).get("host") or "?"
        by_host[host_name] = by_host.get(host_name, 0) + 1
    task_hosts = {(r.get("origin") or {}).get("host") for r in rows
                  if (r.get("span_attributes") or {}).get("type") == "task"
                  and r.get("span_parents")}
    print()
    print(f"spans by host     {', '.join(f'{h} {n}' for h, n in sorted(by_host.items()))}")
    return verdict(task_hosts, expected, len(rows), ran,
                   " (in the server's store, read over HTTPS)", [])


def verdict(task_hosts: set, expected: int, stored: int, ran: float, where: str,
            more: list[str]) -> int:
    """Print the demo's closing lines (both modes) and its exit status: 0 when every span
    expected was stored, else 1."""
    print(f"tasks ran on      {', '.join(sorted(h for h in task_hosts if h))}")
    print(f"spans expected    {expected}")
    print(f"spans stored      {stored}{where}")
    print(f"fan-out finished  in {ran:.2f} s")
    for line in more:
        print(line)
    ok = stored == expected
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def run_publisher(orders: int) -> int:
    """On the publisher host: the workload, its rows uploaded by this host's aggregator;
    prints the root's id and the fan-out's seconds as JSON."""
    tracer.init_logger(PROJECT)  # TRACER_API_URL/_KEY/CA_BUNDLE from the environment
    root_span_id, ran = publish(orders)
    tracer.flush()
    close_all()
    print(json.dumps({"root": root_span_id, "seconds": ran}), flush=True)
    return 0


def read_server(root_span_id: str | None, skeleton_only: bool) -> int:
    """On the publisher host: GET the server's API (``TRACER_API_URL``, verified with
    ``TRACER_CA_BUNDLE``, ``TRACER_API_KEY``): ``/api/v1/ping`` without a root, else the
    trace's skeleton and (unless ``skeleton_only``) every span's row, printed as JSON."""
    import ssl

    import httpx

    url = os.environ["TRACER_API_URL"]
    verify = ssl.create_default_context(cafile=os.environ["TRACER_CA_BUNDLE"])
    headers = {"Authorization": "Bearer " + os.environ["TRACER_API_KEY"]}
    with httpx.Client(base_url=url, verify=verify, headers=headers, timeout=30) as client:
        if root_span_id is None:
            client.get("/api/v1/ping").raise_for_status()
            return 0
        answer = client.get(f"/api/traces/{root_span_id}")
        if answer.status_code == 404:
            print(json.dumps({"skeleton": {"spans": []}, "rows": []}))
            return 0
        answer.raise_for_status()
        skeleton = answer.json()
        rows = [] if skeleton_only else [
            client.get(f"/api/traces/{root_span_id}/spans/{span['span_id']}").raise_for_status()
            .json()["row"] for span in skeleton["spans"]]
    print(json.dumps({"skeleton": skeleton, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
