#!/usr/bin/env python
"""Delivery from process boundaries: the fraction of a pool's child spans each system delivers.

    python scripts/bench/pool_delivery.py [--tasks 2000] [--processes 4]
        [--start-methods fork,spawn,forkserver] [--maxtasksperchild K] [--json FILE]

The workload is the same for the three systems. A fresh Python process (this script with a
hidden ``--child`` flag, one per system x start method x pool, its environment stripped of
TRACER_*, BRAINTRUST_* and OTEL_* settings by ``common.child_env``) opens a root span and,
inside it, runs what users write::

    with Pool(processes) as pool:          # the with block ends in pool.terminate()
        pool.map(handle, range(tasks))     # map's default chunksize

``handle(i)`` is a traced function that calls another traced function, ``parse(i)``: each task
makes 2 child spans, so 2 x tasks are expected, plus the root (counted separately). The process
then does what each system documents before exit and exits normally; the spans are counted
after it has exited. Tracing is set up at import time of this module (each SDK's documented
module-level setup), so spawn and forkserver workers, which import the main module again, set it
up too; fork workers inherit the parent's. Beyond that there is no fork or exit handling: we
measure what users get.

- ours (``tracer``): ``tracer.init_logger(store=<tmp>)`` in the run's main process only (pool
  workers find the aggregator through ``TRACER_ENDPOINT``), ``@tracer.traced`` tasks, with
  ``tracer.TracedPool`` (the documented way) and with a plain ``multiprocessing`` Pool (what users
  of the anchors write); ``tracer.flush()`` at the end. Delivered: rows with an end time in the
  SQLite store, read with ``workers.store.open_store`` once the aggregator has exited.
- OpenTelemetry SDK: ``TracerProvider`` + ``BatchSpanProcessor`` (defaults) + an exporter that
  appends one JSON line per exported span to ``spans-<pid>.jsonl``; tasks decorated with
  ``tracer.start_as_current_span(name)``; plain Pool; ``provider.shutdown()`` at the end.
  Delivered: distinct span ids in those files (the span reached an exporter).
- braintrust (the reference SDK): ``@braintrust.traced`` tasks, plain Pool, its real HTTP
  background logger with ``BRAINTRUST_ALL_PUBLISH_PAYLOADS_DIR`` set: the logger writes every
  payload it publishes to that directory just before POSTing it. Login is faked as braintrust's
  ``test_helpers.init_test_logger`` does (fake project metadata), and the logger's connection
  is pointed at a closed loopback port through ``login_replace_api_conn``, the hook a real login
  uses: nothing logs in, nothing leaves the machine, every POST fails with "connection refused"
  *after* its payload file is written. ``BRAINTRUST_NUM_RETRIES=0`` spares the retry sleeps
  (retries come after the file is written, so they cannot change the count).
  ``braintrust.flush()`` at the end. Delivered: distinct span ids with a row carrying
  ``metrics.end`` in the payload files; a span whose start row went out but whose end did not
  is counted as partial, not delivered; dumps of rows dropped from a full queue (the SDK writes
  them to the same directory) and files cut short by ``terminate()`` while being written (their
  POST would have come after) are excluded and reported in the JSON.

Controls: each system's same tasks called ``tasks`` times in one process, no pool, counted the
same way. They must deliver 100%; otherwise the harness, not the SDK, is at fault, and the
script exits 1. Otherwise it exits 0 whatever the fractions: this is a measurement, not a check.

"in the root's trace" counts the delivered child spans whose trace (``root_span_id``, OTel's
``trace_id``) is the root's; the spans of a worker that has no parent context start traces of
their own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, child_env, machine, positive  # noqa: E402

PROJECT = "pool-delivery"
CHILD_NAMES = ("handle", "parse")
RUN_TIMEOUT = 300  # seconds for one run; beyond it the harness has failed (a hang is a finding)
# Set by the harness in a run's environment, read at import time by the run and its workers.
SYSTEM_VAR, OUT_VAR, URL_VAR = "POOL_DELIVERY_SYSTEM", "POOL_DELIVERY_OUT", "POOL_DELIVERY_URL"


# -- the systems --------------------------------------------------------------------------------
# Each has: setup() in every process that imports this module in a run (the module-level setup
# users write), traced(fn), start() and finish() in the run's main process only, root(),
# trace_of(root), and, in the harness after the run has exited, count(out) -> {span id: Seen}.


@dataclass
class Seen:
    """One span that got out of the process it was made in."""

    name: str | None
    trace: str | None
    complete: bool = True


class System(Protocol):
    """What each system below provides (the comment at the head of this section)."""

    label: ClassVar[str]  # the row label in the table
    package: ClassVar[str]  # a module whose absence means "not installed"

    def setup(self, out: str) -> None: ...
    def traced(self, fn: Callable) -> Callable: ...
    def start(self) -> dict: ...
    def root(self) -> AbstractContextManager: ...
    def trace_of(self, root: Any) -> str: ...
    def pool(self, kind: str, ctx: Any, processes: int, maxtasks: int | None) -> Any: ...
    def finish(self) -> None: ...

    @staticmethod
    def count(out: str) -> tuple[dict[str, Seen], dict]: ...


class Ours:
    label: ClassVar[str] = "ours (tracer)"
    package: ClassVar[str] = "tracer"

    def setup(self, out: str) -> None:
        import tracer

        self.tracer = tracer
        self.store = os.path.join(out, "traces.db")

    def traced(self, fn: Callable) -> Callable:
        return self.tracer.traced(fn)

    def start(self) -> dict:
        logger = self.tracer.init_logger(PROJECT, store=self.store)
        return {"aggregator_pid": getattr(logger.recorder, "aggregator_pid", None)}

    def root(self) -> AbstractContextManager:
        return self.tracer.start_span("root")

    def trace_of(self, root: Any) -> str:
        return root.root_span_id

    def pool(self, kind: str, ctx: Any, processes: int, maxtasks: int | None) -> Any:
        if kind == "TracedPool":
            return self.tracer.TracedPool(processes, maxtasksperchild=maxtasks, context=ctx)
        return ctx.Pool(processes, maxtasksperchild=maxtasks)

    def finish(self) -> None:
        self.tracer.flush(timeout=120)

    @staticmethod
    def count(out: str) -> tuple[dict[str, Seen], dict]:
        from workers.store import open_store

        seen = {}
        with open_store(os.path.join(out, "traces.db"), readonly=True) as store:
            for row in store.rows(project=PROJECT):
                seen[row["span_id"]] = Seen(row["span_attributes"].get("name"),
                                            row["root_span_id"],
                                            (row.get("metrics") or {}).get("end") is not None)
            runs = store.runs()
        return seen, {"aggregator_counters": [json.loads(r["counters"] or "{}") for r in runs]}


class Otel:
    label: ClassVar[str] = "OpenTelemetry SDK"
    package: ClassVar[str] = "opentelemetry.sdk"

    def setup(self, out: str) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class JsonLines(SpanExporter):
            """Appends each exported span to this process's file: reaching here is delivery."""

            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                # The pid is read at each export: a fork child writes its own file.
                with open(os.path.join(out, f"spans-{os.getpid()}.jsonl"), "a") as fh:
                    for s in spans:
                        fh.write(json.dumps({
                            "name": s.name, "span_id": format(s.context.span_id, "016x"),
                            "trace_id": format(s.context.trace_id, "032x")}) + "\n")
                return SpanExportResult.SUCCESS

        self.provider = TracerProvider()
        self.provider.add_span_processor(BatchSpanProcessor(JsonLines()))
        trace.set_tracer_provider(self.provider)
        self.otel = trace.get_tracer(PROJECT)

    def traced(self, fn: Callable) -> Callable:
        # The same as writing @otel.start_as_current_span("parse") above the function.
        return self.otel.start_as_current_span(fn.__name__)(fn)

    def start(self) -> dict:
        return {}

    def root(self) -> AbstractContextManager:
        return self.otel.start_as_current_span("root")

    def trace_of(self, root: Any) -> str:
        return format(root.get_span_context().trace_id, "032x")

    def pool(self, kind: str, ctx: Any, processes: int, maxtasks: int | None) -> Any:
        return ctx.Pool(processes, maxtasksperchild=maxtasks)

    def finish(self) -> None:
        self.provider.force_flush()
        self.provider.shutdown()

    @staticmethod
    def count(out: str) -> tuple[dict[str, Seen], dict]:
        seen, files = {}, 0
        for name in os.listdir(out):
            if name.startswith("spans-") and name.endswith(".jsonl"):
                files += 1
                with open(os.path.join(out, name)) as fh:
                    for line in fh:
                        span = json.loads(line)
                        seen[span["span_id"]] = Seen(span["name"], span["trace_id"])
        return seen, {"exporting_processes": files}


class Braintrust:
    label: ClassVar[str] = "braintrust SDK"
    package: ClassVar[str] = "braintrust"

    def setup(self, out: str) -> None:
        import braintrust
        from braintrust import logger as bt
        from braintrust.api._transport import HTTPConnection
        from braintrust.util import LazyValue

        # As braintrust/test_helpers.py::init_test_logger does: fake project metadata, so
        # neither init_logger nor a span ever logs in or registers the project.
        # Its signature is _compute_logger_metadata's, which it replaces (state and
        # project_group_name unused).
        def metadata(project_name: str | None = None, project_id: str | None = None,
                     state: object = None, project_group_name: str | None = None,
                     **_: Any) -> Any:
            name = project_id or project_name or PROJECT
            return bt.OrgProjectMetadata(org_id="bench-org", project=bt.ObjectMetadata(
                id=name, name=project_name or name, full_info={}))

        self.braintrust = braintrust
        self.logger = braintrust.init_logger(project=PROJECT)
        self.logger._lazy_metadata = LazyValue(lambda: metadata(PROJECT), use_mutex=False)
        bt._compute_logger_metadata = metadata
        # The real HTTP background logger, given the connection a login would give it (no
        # retries inside requests), to a closed loopback port. It writes each payload to
        # BRAINTRUST_ALL_PUBLISH_PAYLOADS_DIR before sending, so sends may fail.
        bt._state.login_replace_api_conn(HTTPConnection(os.environ[URL_VAR]))

    def traced(self, fn: Callable) -> Callable:
        return self.braintrust.traced(fn)

    def start(self) -> dict:
        return {}

    def root(self) -> AbstractContextManager:
        return self.braintrust.start_span(name="root")

    def trace_of(self, root: Any) -> str:
        return root.root_span_id

    def pool(self, kind: str, ctx: Any, processes: int, maxtasks: int | None) -> Any:
        return ctx.Pool(processes, maxtasksperchild=maxtasks)

    def finish(self) -> None:
        self.braintrust.flush()

    @staticmethod
    def count(out: str) -> tuple[dict[str, Seen], dict]:
        seen: dict[str, Seen] = {}
        files = dropped = truncated = 0
        payloads = os.path.join(out, "payloads")
        for name in sorted(os.listdir(payloads)) if os.path.isdir(payloads) else []:
            files += 1
            with open(os.path.join(payloads, name)) as fh:
                try:
                    payload = json.load(fh)
                except ValueError:
                    # The worker was killed (terminate()) while writing the file; its POST
                    # comes after the write, so these rows never left: not delivered.
                    truncated += 1
                    continue
            if "rows" not in payload:  # {"data": ..., "attachments": ...}: dropped, not sent
                dropped += len(payload.get("data", {}).get("rows", []))
                continue
            # A span is logged as partial rows (start, then end) that may go out in different
            # payloads: merge them by span id.
            for row in payload["rows"]:
                span = seen.setdefault(row["span_id"], Seen(None, None, False))
                span.name = span.name or (row.get("span_attributes") or {}).get("name")
                span.trace = span.trace or row.get("root_span_id")
                span.complete = span.complete or (row.get("metrics") or {}).get("end") is not None
        return seen, {"payload_files": files, "truncated_payload_files": truncated,
                      "rows_in_dropped_dumps": dropped}


SYSTEMS: dict[str, type[System]] = {"ours": Ours, "otel": Otel, "braintrust": Braintrust}


# -- the workload -------------------------------------------------------------------------------


def parse(i: int) -> dict:
    return {"item": i, "even": i % 2 == 0}


def handle(i: int) -> dict:
    record = parse(i)  # the module global: the traced parse once the system is set up
    record["score"] = (i % 10) / 10
    return record


# Module-level setup, in a run's main process and again in each spawn/forkserver worker (they
# import this module anew); the harness itself has no SYSTEM_VAR and stays untraced. The traced
# functions replace the plain ones under the same names, so pickling them by name works.
SYSTEM = SYSTEMS[os.environ[SYSTEM_VAR]]() if os.environ.get(SYSTEM_VAR) else None
if SYSTEM is not None:
    SYSTEM.setup(os.environ[OUT_VAR])
    parse = SYSTEM.traced(parse)
    handle = SYSTEM.traced(handle)


def child(args: argparse.Namespace) -> None:
    """One run: a root span, the pool (or, for the control, a loop), what the system documents
    before exit. Writes result.json; the spans are counted by the harness after exit."""
    assert SYSTEM is not None, f"--child needs {SYSTEM_VAR} in the environment"
    info = SYSTEM.start()
    started = time.perf_counter()
    with SYSTEM.root() as root:
        if args.pool == "none":
            results = [handle(i) for i in range(args.tasks)]
        else:
            ctx = multiprocessing.get_context(args.run_start_method)
            with SYSTEM.pool(args.pool, ctx, args.processes, args.maxtasksperchild) as pool:
                results = pool.map(handle, range(args.tasks))
    ran = time.perf_counter() - started
    SYSTEM.finish()
    info.update(root_trace=SYSTEM.trace_of(root), results=len(results), pool_s=ran,
                finish_s=time.perf_counter() - started - ran)
    with open(os.path.join(os.environ[OUT_VAR], "result.json"), "w") as fh:
        json.dump(info, fh)


# -- the harness --------------------------------------------------------------------------------


@dataclass
class Run:
    system: str
    start_method: str  # "-" for a control
    pool: str  # "TracedPool", "Pool" or "none" (the control)
    maxtasksperchild: int | None = None
    expected: int = 0
    delivered: int | None = None  # None: the system is not installed
    in_root_trace: int = 0
    root_delivered: bool = False
    partial: int = 0  # started but never ended, as far as the store/exporter saw
    wall_s: float = 0.0
    child: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return (self.delivered or 0) / self.expected if self.expected else float("nan")

    @property
    def pool_label(self) -> str:
        if self.pool == "none":
            return "none (control: one process)"
        label = f"`{self.pool}`"
        return label + (f", maxtasksperchild={self.maxtasksperchild}"
                        if self.maxtasksperchild else "")


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def execute(run: Run, args: argparse.Namespace, workdir: str) -> None:
    """Runs ``run`` in a fresh process and counts what came out of it."""
    run.expected = len(CHILD_NAMES) * args.tasks
    if importlib.util.find_spec(SYSTEMS[run.system].package) is None:
        return
    out = tempfile.mkdtemp(prefix=f"{run.system}-{run.start_method}-{run.pool}-", dir=workdir)
    pythonpath = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = child_env(**{SYSTEM_VAR: run.system, OUT_VAR: out, "PYTHONPATH": pythonpath})
    if run.system == "braintrust":
        env.update({URL_VAR: f"http://127.0.0.1:{closed_port()}",
                    "BRAINTRUST_ALL_PUBLISH_PAYLOADS_DIR": os.path.join(out, "payloads"),
                    "BRAINTRUST_NUM_RETRIES": "0"})
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--tasks", str(args.tasks),
           "--processes", str(args.processes), "--pool", run.pool]
    if run.pool != "none":
        cmd += ["--run-start-method", run.start_method]
    if run.maxtasksperchild:
        cmd += ["--maxtasksperchild", str(run.maxtasksperchild)]
    started = time.perf_counter()
    code: int | str  # the exit code, or why there is none
    # Output goes to a file, not a pipe: a process that outlives the run (an aggregator, a
    # stray worker) must not keep the harness waiting for EOF. Its own session lets a run that
    # hangs be killed with its workers.
    with open(os.path.join(out, "output.log"), "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = f"killed after {RUN_TIMEOUT} s"
    run.wall_s = time.perf_counter() - started
    result = os.path.join(out, "result.json")
    if code != 0 or not os.path.exists(result):
        with open(os.path.join(out, "output.log"), errors="replace") as fh:
            tail = fh.read()[-3000:]
        raise HarnessError(f"{run.system} / {run.start_method} / {run.pool_label}: exit {code}"
                           f"\n{tail}\n(run directory kept: {out})")
    with open(result) as fh:
        run.child = json.load(fh)
    if run.child["results"] != args.tasks:
        raise HarnessError(f"{run.system} / {run.start_method}: {run.child['results']} results "
                           f"for {args.tasks} tasks")
    # Our aggregator outlives the run to commit what it received: count once it has exited,
    # as the anchors' files are counted once their writers have exited.
    wait_gone(run.child.get("aggregator_pid"))
    try:
        seen, run.extra = SYSTEMS[run.system].count(out)
    except Exception as exc:  # the harness cannot read what it wrote: its failure, not the SDK's
        raise HarnessError(f"{run.system} / {run.start_method} / {run.pool_label}: counting "
                           f"failed: {exc!r} (run directory kept: {out})") from exc
    children = [s for s in seen.values() if s.name in CHILD_NAMES]
    run.delivered = sum(s.complete for s in children)
    run.partial = sum(not s.complete for s in children)
    run.in_root_trace = sum(s.complete and s.trace == run.child["root_trace"] for s in children)
    run.root_delivered = any(s.name == "root" and s.complete for s in seen.values())
    with open(os.path.join(out, "output.log"), errors="replace") as fh:
        run.extra["output_lines"] = sum(1 for _ in fh)
    shutil.rmtree(out, ignore_errors=True)


class HarnessError(Exception):
    pass


def wait_gone(pid: int | None, timeout: float = 30.0) -> None:
    """Waits for our (reparented) aggregator to exit."""
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def plan(args: argparse.Namespace) -> list[Run]:
    runs = [Run(system, "-", "none") for system in SYSTEMS]
    for method in args.start_methods:
        for system, pool in (("ours", "TracedPool"), ("ours", "Pool"), ("otel", "Pool"),
                             ("braintrust", "Pool")):
            for maxtasks in (None, args.maxtasksperchild) if args.maxtasksperchild else (None,):
                runs.append(Run(system, method, pool, maxtasks))
    return runs


def table(runs: list[Run]) -> str:
    lines = ["| system | start method | pool | child spans expected | delivered | fraction | "
             "in the root's trace | root delivered |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in runs:
        label = SYSTEMS[r.system].label
        if r.delivered is None:
            lines.append(f"| {label} | {r.start_method} | {r.pool_label} | {r.expected:,} | "
                         "not installed | | | |")
            continue
        partial = f" (+{r.partial:,} partial)" if r.partial else ""
        lines.append(f"| {label} | {r.start_method} | {r.pool_label} | {r.expected:,} | "
                     f"{r.delivered:,}{partial} | {r.fraction:.1%} | {r.in_root_trace:,} | "
                     f"{'yes' if r.root_delivered else 'no'} |")
    return "\n".join(lines)


def main_run(args: argparse.Namespace) -> int:
    info = machine()
    print("# Delivery from process boundaries\n")
    print(f"- command: `{info['command']}`")
    print(f"- machine: {info['platform']}; CPU: {info['cpu']}; cores: {info['cores']} "
          f"(usable: {info['usable_cores']}); Python {info['python']}")
    print(f"- library: {info['source']}; anchors: {versions()}")
    print(f"- workload: a root span, then `with Pool({args.processes}) as pool: "
          f"pool.map(handle, range({args.tasks}))`; `handle` and the `parse` it calls are "
          f"traced: {2 * args.tasks:,} child spans expected per run")
    print("- load average at start: " + " ".join(f"{x:.2f}" for x in info["loadavg_start"]))
    print(flush=True)

    workdir = tempfile.mkdtemp(prefix="pool-delivery-")
    runs = plan(args)
    try:
        for run in runs:
            execute(run, args, workdir)
            print(f"  {run.system} / {run.start_method} / {run.pool_label}: {run.delivered} of "
                  f"{run.expected} in {run.wall_s:.1f} s", file=sys.stderr, flush=True)
    except HarnessError as exc:
        print(f"pool_delivery: the harness failed: {exc}", file=sys.stderr)
        return 2
    shutil.rmtree(workdir, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()

    print(table(runs))
    print()
    short = [r for r in runs if r.pool == "none" and r.delivered is not None
             and (r.delivered != r.expected or not r.root_delivered)]
    print("- controls (one process, no pool, counted the same way): "
          + ("all 100% with the root: the counting is sound" if not short else
             "SHORT for " + ", ".join(r.system for r in short) + ": the harness is at fault"))
    print("- braintrust: delivered = spans with an end row in a payload file its HTTP background "
          "logger wrote before POSTing (to a closed loopback port, so every POST failed)")
    print("- load average at end: " + " ".join(f"{x:.2f}" for x in info["loadavg_end"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "tasks": args.tasks, "processes": args.processes,
                       "anchors": versions(),
                       "runs": [asdict(r) | {"fraction": r.fraction} for r in runs]}, fh,
                      indent=2)
        print(f"\nraw numbers written to {args.json}")
    return 1 if short else 0


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("opentelemetry-sdk", "braintrust"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def start_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = set(methods) - set(multiprocessing.get_all_start_methods())
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown here: {', '.join(sorted(unknown)) or '(none given)'}; available: "
            f"{', '.join(multiprocessing.get_all_start_methods())}")
    return methods


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="The fraction of a multiprocessing pool's child spans that ours, "
                    "OpenTelemetry's SDK and the braintrust SDK deliver, per start method. "
                    "Prints a Markdown table.")
    p.add_argument("--tasks", type=positive, default=2000,
                   help="tasks mapped over the pool; 2 child spans each (default: %(default)s)")
    p.add_argument("--processes", type=positive, default=4,
                   help="pool processes (default: %(default)s)")
    p.add_argument("--start-methods", type=start_methods, default="fork,spawn,forkserver",
                   help="comma-separated multiprocessing start methods (default: %(default)s)")
    p.add_argument("--maxtasksperchild", type=positive, metavar="K",
                   help="also run every pool with maxtasksperchild=K (a task is one chunk of "
                        "map); workers then exit between tasks, through os._exit")
    p.add_argument("--json", metavar="FILE", help="also write the raw numbers to FILE")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pool", choices=("TracedPool", "Pool", "none"), help=argparse.SUPPRESS)
    p.add_argument("--run-start-method", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.child:
        child(args)
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
