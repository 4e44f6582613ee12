"""Programs the tests run in a fresh interpreter: ``run_function(programs.NAME, *args)`` in
``tests/conftest.py`` runs ``NAME(*args)`` under ``python -c`` (arguments through JSON), so that
process start and exit (fork, ``os._exit``, ``atexit``, signals) are real.

What a program prints on stdout is what its test reads. Only the standard library and ``tracer``
are imported here at the top, as a user's script would; anything else is imported by the program
that needs it, where the program text used to, so that no program runs with modules loaded that
it did not load itself.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sqlite3
import threading
import time

import tracer

from .helpers import wait_until

# -- a process with no logger ----------------------------------------------------------------


def traces_without_a_logger() -> None:
    """Trace, log and flush with no logger anywhere; print what that started."""
    import asyncio
    import sys

    import psutil

    @tracer.traced
    def double(x: int) -> int:
        return 2 * x

    @tracer.traced
    async def adouble(x: int) -> int:
        return 2 * x

    results = [double(21), asyncio.run(adouble(2))]
    with tracer.start_span("ignored") as span:
        span.log(input=1, output=2)
    span.end()
    tracer.current_span().log(metadata={"k": "v"})
    tracer.flush()
    me = psutil.Process()
    print(json.dumps({
        "results": results,
        "span": repr(tracer.current_span()),
        "export": span.export(),
        "threads": threading.active_count(),
        "os_threads": me.num_threads(),
        "children": len(me.children(recursive=True)),
        "sockets": len(me.net_connections(kind="all")),
        "zmq_loaded": "zmq" in sys.modules and
                      any(t.name.startswith("tracer") for t in threading.enumerate()),
    }))


def calls_a_wrapped_openai_client_without_a_logger(base_url: str, reply: str) -> None:
    """The wrapped client's results are the client's own objects when nothing is traced."""
    import openai

    client = tracer.wrap_openai(openai.OpenAI(base_url=base_url, api_key="test-key",
                                              max_retries=0))
    stream = client.chat.completions.create(model="m", messages=[], stream=True)
    assert type(stream) is openai.Stream, type(stream)
    assert [c.choices[0].delta.content for c in stream if c.choices][1] == "Hello"
    completion = client.chat.completions.create(model="m", messages=[])
    assert completion.choices[0].message.content == reply


# -- children of a traced process ------------------------------------------------------------


def logs_a_server_span_under(slug: str) -> None:
    with tracer.start_span("server", type="llm", parent=slug) as span:
        span.log(output="served")
    tracer.flush()


def updates_and_continues_an_exported_span(slug: str) -> None:
    tracer.update_span(exported=slug, metadata={"updated_by": "child"})
    with tracer.start_span("remote child", parent=slug):
        pass
    tracer.flush()


def calls_a_traced_function() -> None:
    @tracer.traced
    def in_child() -> str:
        return "ok"

    in_child()


def traces_into_the_inherited_experiment(experiment_id: str) -> None:
    with tracer.start_span("in the child"):
        pass
    experiment = tracer.current_experiment()
    assert experiment is not None and experiment.id == experiment_id
    tracer.flush(timeout=30)


def is_killed_in_a_running_span(slug: str) -> None:
    running = tracer.start_span("interrupted", parent=slug, input="work")
    time.sleep(0.5)  # long enough for the recorder to announce the running span
    os.kill(os.getpid(), signal.SIGKILL)
    running.end()  # never reached: the span is held, running, until the kill


# -- a process whose configuration is refused -----------------------------------------------


def starts_refused(container: str, kwargs: dict) -> None:
    """Call ``init_logger`` (``container="logger"``) or ``init`` with ``kwargs`` in this
    environment, expecting a refusal; print the error it raised (null if none), the threads
    running and how many child processes were started."""
    import psutil

    start = tracer.init_logger if container == "logger" else tracer.init
    try:
        start("refused", **kwargs)
        error = None
    except (ValueError, TypeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({
        "error": error,
        "threads": [t.name for t in threading.enumerate()],
        "children": len(psutil.Process().children(recursive=True)),
    }))


# -- a process that owns its aggregator ------------------------------------------------------


def logs_one_span(project: str, name: str) -> None:
    """Log one span into ``project`` (starting an aggregator); print the aggregator's endpoint
    and pid."""
    tracer.init_logger(project)
    with tracer.start_span(name):
        pass
    print(os.environ["TRACER_ENDPOINT"], os.environ["_TRACER_AGGREGATOR_PID"])


def sends_a_message_claiming_another_host() -> None:
    """Log a span, send a message from a sender on another host, print the aggregator pid."""
    import msgpack
    import zmq

    tracer.init_logger("claims")
    with tracer.start_span("real"):
        pass
    tracer.flush()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(os.environ["TRACER_ENDPOINT"])
    sock.send_multipart([msgpack.packb([1, 1, "another-host", 999999, 1, 1, 0]), b""])
    sock.close(linger=1000)
    ctx.term()
    print(os.environ["_TRACER_AGGREGATOR_PID"])


def logs_a_span_from_a_later_exit_handler() -> None:
    def last_words() -> None:  # registered first, so it runs after tracer's own exit handler
        with tracer.start_span("from atexit"):
            pass

    atexit.register(last_words)
    tracer.init_logger("late")
    with tracer.start_span("during the run"):
        pass


def logs_a_span_after_the_flusher_went_idle() -> None:
    from tracer import recorder

    tracer.init_logger("idle")
    with tracer.start_span("early"):
        pass
    wait_until(lambda: not any(t.name == "tracer-flusher" for t in threading.enumerate()),
               recorder.IDLE_EXIT + 30, "the flusher thread never went idle")
    with tracer.start_span("late"):
        pass


def forks_a_child_that_records_and_leaves_through_os_exit() -> None:
    # The parent never recorded, so nothing was armed at fork: the child arms its own exit.
    pid = os.fork()
    if pid == 0:
        tracer.init_logger("child-only")
        with tracer.start_span("from the child"):
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def logs_a_span_over_tcp() -> None:
    """Log one span to ``TRACER_ENDPOINT`` (a standalone aggregator)."""
    tracer.init_logger("standalone")
    with tracer.start_span("remote span") as span:
        span.log(input="sent over tcp")
    tracer.flush(timeout=30)


def logs_spans_over_tcp(project: str, n: int) -> None:
    """Log ``n`` spans (with input and metrics) to ``TRACER_ENDPOINT`` and flush."""
    tracer.init_logger(project)
    for i in range(n):
        with tracer.start_span(f"real {i}") as span:
            span.log(input={"i": i}, metrics={"tokens": i}, scores={"ok": 1})
    tracer.flush(timeout=30)


def maps_over_a_spawned_pool_with_the_key_as_an_argument(endpoint: str, key: str) -> None:
    """``init_logger(endpoint=..., aggregator_key=...)`` (the key in no variable), then a
    TracedPool of spawned workers maps ``boundary_tasks.work`` under a span; flush."""
    import multiprocessing

    from . import boundary_tasks

    tracer.init_logger("spawned", endpoint=endpoint, aggregator_key=key)
    with tracer.start_span("pool parent"), \
            tracer.TracedPool(2, context=multiprocessing.get_context("spawn")) as pool:
        pool.map(boundary_tasks.work, range(4))
    tracer.flush(timeout=30)


# -- faults ----------------------------------------------------------------------------------


def flush_printing_the_error(timeout: float) -> bool:
    """``tracer.flush``, printing a FlushError ("FlushError: <why>") rather than raising it;
    whether the flush succeeded."""
    try:
        tracer.flush(timeout=timeout)
    except tracer.FlushError as exc:
        print("FlushError:", exc)
        return False
    return True


def flush_reporting_losses(timeout: float) -> tuple[str | None, dict[str, int]]:
    """``tracer.flush``, returning the FlushError's message and the losses it counted (records
    dropped or lost since the previous flush, by reason) rather than raising it."""
    try:
        tracer.flush(timeout=timeout)
    except tracer.FlushError as exc:
        return str(exc), exc.losses
    return None, {}


def logs_under_load_for_3_seconds() -> None:
    """Print the aggregator pid, log spans from a pool and this process for 3 s, flush; print
    how many spans were created and how long the flush took."""
    from tests import boundary_tasks as tasks

    tracer.init_logger("under-load")
    print(os.environ["_TRACER_AGGREGATOR_PID"], flush=True)
    created = 0
    with tracer.TracedPool(2) as pool:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with tracer.start_span("batch"):
                pool.map(tasks.work, range(20))
                for i in range(20):
                    tasks.work(i)
            created += 1 + 4 * 20
    finished = time.monotonic()
    tracer.flush(timeout=30)
    print(json.dumps({"created": created, "flush_seconds": time.monotonic() - finished}),
          flush=True)


def logs_50_spans_and_is_killed() -> None:
    logger = tracer.init_logger("killed-owner")
    for i in range(50):
        with tracer.start_span(f"span {i}"):
            pass
    print(os.environ["_TRACER_AGGREGATOR_PID"], flush=True)
    # The flusher sends within 0.1 s, on a quiet machine: wait (bounded) until it has handed
    # everything to the socket, then give ZeroMQ's I/O thread a moment to put it on the wire.
    # No flush, no exit handler: what this shows is that sent records outlive their sender.
    recorder = logger.recorder
    deadline = time.monotonic() + 30
    while (recorder._buffer or recorder._channel.seq == 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


def kills_its_aggregator_whose_replacements_die_as_they_start() -> None:
    tracer.init_logger("doomed")
    tracer.flush()
    os.environ["TRACER_QUEUE_SIZE"] = "not a number"  # every replacement dies as it starts
    os.kill(int(os.environ["_TRACER_AGGREGATOR_PID"]), signal.SIGKILL)
    for i in range(6):
        with tracer.start_span(f"span {i}"):
            pass
        flush_printing_the_error(timeout=30)


# -- a store that cannot be written ----------------------------------------------------------


def lock_the_store(timeout: float = 5.0) -> sqlite3.Connection:
    """Hold an exclusive lock on ``.tracer/traces.db`` (the sink cannot commit) until the
    connection returned rolls back; ``timeout`` is how long to wait for the lock."""
    lock = sqlite3.connect(os.path.join(".tracer", "traces.db"), timeout=timeout,
                           isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    return lock


def aggregator_counters() -> dict:
    """The counters of the aggregator this process logs to, asked over the socket."""
    from tracer.stats_client import ask_stats

    stats = ask_stats(os.environ["TRACER_ENDPOINT"])
    assert stats is not None, "the aggregator did not answer"
    return stats["counters"]


def log_while_the_store_is_locked(project: str, n: int) -> sqlite3.Connection:
    """Log ``n`` spans ("span <i>", output i) into ``project`` while the store is locked;
    returns the lock."""
    logger = tracer.init_logger(project)
    logger.flush()  # a real handshake: the aggregator is up and its store exists
    lock = lock_the_store()
    for i in range(n):
        with tracer.start_span(f"span {i}") as span:
            span.log(output=i)
    return lock


def logs_while_the_store_fails_twice_then_recovers(project: str, n: int) -> None:
    lock = log_while_the_store_is_locked(project, n)
    wait_until(lambda: aggregator_counters().get("write_retries", 0) >= 2, 60,
               "the aggregator never retried a write twice", interval=0.1)
    lock.execute("ROLLBACK")  # the sink recovers
    tracer.flush(timeout=60)
    print(json.dumps(aggregator_counters()))


def logs_while_the_store_stays_locked_past_every_retry(project: str, n: int) -> None:
    lock = log_while_the_store_is_locked(project, n)
    try:
        tracer.flush(timeout=120)
    except tracer.FlushError:
        pass  # expected: the store stays locked past every retry
    stats = aggregator_counters()
    lock.execute("ROLLBACK")
    print(json.dumps(stats))


def produces_n_spans_while_the_store_is_locked(n: int) -> None:
    """Produce ``n`` spans from a thread while the store is locked; after 1.5 s let go and
    flush. Print how many were created and whether the producer was blocked meanwhile."""
    logger = tracer.init_logger("policy")
    logger.flush()  # a real handshake: the aggregator is up and its store exists
    lock = lock_the_store(timeout=30)
    created = 0
    done = threading.Event()

    def produce() -> None:
        nonlocal created
        for i in range(n):
            with tracer.start_span(f"span {i}"):
                pass
            created += 1
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(1.5)  # time for a producer that is not blocked to finish
    blocked_while_locked = not done.is_set()
    lock.execute("ROLLBACK")
    lock.close()
    producer.join(120)
    _error, losses = flush_reporting_losses(120)
    print(json.dumps({"created": created, "blocked_while_locked": blocked_while_locked,
                      "finished": done.is_set(), "flush_reported_losses": losses}))


def stored_rows_count() -> int:
    conn = sqlite3.connect(os.path.join(".tracer", "traces.db"), timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
    finally:
        conn.close()


def counts_the_rows_stored_before_and_after_flush() -> None:
    logger = tracer.init_logger("held")
    logger.flush()  # the aggregator is up and its store exists
    for i in range(20):
        with tracer.start_span(f"span {i}"):
            pass
    time.sleep(1.0)  # far past the usual 0.1 s batching delay
    before = stored_rows_count()
    tracer.flush()
    print(json.dumps({"before": before, "after": stored_rows_count()}))


def flushes_while_the_store_is_locked() -> None:
    logger = tracer.init_logger("failing")
    logger.flush()
    lock = lock_the_store()  # locked for the whole flush
    with tracer.start_span("doomed"):
        pass
    if flush_printing_the_error(timeout=60):
        print("no error")
    lock.execute("ROLLBACK")


def copies_every_batch() -> None:
    tracer.init_logger("copied")
    for i in range(30):
        with tracer.start_span(f"span {i}", type="task") as span:
            span.log(output=i, metadata={"i": i})
    tracer.update_span(span.export(), tags=["last"])  # a second partial of one row
    tracer.flush()


def logs_a_row_over_max_request_size() -> None:
    tracer.init_logger("oversized")
    with tracer.start_span("huge") as span:
        span.log(output="x" * 100_000, metadata={"kept": True})
    with tracer.start_span("small") as span:
        span.log(output="fine")
    tracer.flush()


def flushes_into_a_store_that_is_not_a_database() -> None:
    from tracer.processes import process_alive

    tracer.init_logger("unwritable")
    with tracer.start_span("kept aside"):
        pass
    flush_printing_the_error(timeout=60)
    print("aggregator alive:", process_alive(int(os.environ["_TRACER_AGGREGATOR_PID"])))


# -- attachments -----------------------------------------------------------------------------


def logs_an_attachment_of_a_missing_file(path: str) -> None:
    tracer.init_logger("missing")
    with tracer.start_span("with a missing file") as span:
        span.log(input={"image": tracer.Attachment(path)}, output="answered")
    tracer.flush()


def logs_an_attachment_of_5000_bytes() -> None:
    tracer.init_logger("limit")
    with tracer.start_span("too big") as span:
        span.log(output=tracer.Attachment(b"x" * 5000, filename="big.bin"))
    tracer.flush()


def logs_an_attachment_that_cannot_be_written() -> None:
    """Print the aggregator's counters after the flush."""
    tracer.init_logger("unwritable")
    with tracer.start_span("kept") as span:
        span.log(input=tracer.Attachment(b"lost bytes", filename="lost.bin"), output=42)
    tracer.flush()
    print(json.dumps(aggregator_counters()))


def logs_an_attachment_that_is_not_stored() -> None:
    tracer.init_logger("unstored")
    with tracer.start_span("kept") as span:
        span.log(input=tracer.Attachment(b"lost bytes", filename="lost.bin"))
    tracer.flush()


def logs_an_attachment_and_exits_without_flush() -> None:
    """Print the attachment's key."""
    tracer.init_logger("no flush")
    attachment = tracer.Attachment(b"stored at exit" * 1000, filename="exit.bin")
    with tracer.start_span("last words") as span:
        span.log(output=attachment)
    print(attachment.key)


def logs_an_attachment_over_tcp() -> None:
    """Log to ``TRACER_ENDPOINT``; print the attachment's key."""
    tracer.init_logger("remote")
    attachment = tracer.Attachment(b"over tcp", filename="tcp.txt")
    with tracer.start_span("remote span") as span:
        span.log(output=attachment)
    tracer.flush(timeout=30)
    print(attachment.key)


def logs_while_the_aggregator_is_frozen(n: int, pid_file: str) -> None:
    """Freeze this process's aggregator (SIGSTOP), start ``n`` spans, flush, then exit: none of
    it may hang. Leaves the aggregator's pid in ``pid_file`` for the test to clean up."""
    logger = tracer.init_logger("frozen")
    logger.flush()  # the aggregator is up
    pid = logger.recorder.aggregator_pid
    assert pid is not None
    with open(pid_file, "w") as f:
        f.write(str(pid))
    os.kill(pid, signal.SIGSTOP)
    for i in range(n):
        with tracer.start_span(f"span {i}") as span:
            span.log(output="x" * 1000)  # more than the kernel's socket buffers hold
    error, losses = flush_reporting_losses(2)
    print(json.dumps({"created": n, "flush_error": error, "losses": losses}), flush=True)


def logs_large_spans_while_the_store_is_locked(n: int, size: int) -> None:
    """Log ``n`` spans of ``size`` bytes each while the store is locked; report how much this
    process's and its aggregator's resident memory grew, and what the flush after the lock
    said."""
    import psutil

    logger = tracer.init_logger("large")
    logger.flush()
    assert logger.recorder.aggregator_pid is not None
    processes = {"producer": psutil.Process(), "aggregator":
                 psutil.Process(logger.recorder.aggregator_pid)}
    lock = lock_the_store(timeout=30)
    blob = os.urandom(size)  # one object: only what tracing holds of it can grow
    before = {name: p.memory_info().rss for name, p in processes.items()}
    peak = dict(before)
    for i in range(n):
        with tracer.start_span(f"span {i}") as span:
            span.log(output=blob)
        for name, p in processes.items():
            peak[name] = max(peak[name], p.memory_info().rss)
    lock.execute("ROLLBACK")
    lock.close()
    _error, losses = flush_reporting_losses(120)
    print(json.dumps({"growth": {name: peak[name] - before[name] for name in processes},
                      "losses": losses}))


def drops_records_then_loses_its_aggregator(n: int) -> None:
    """Drop records (a small buffer, a drop policy) while the store is locked, so that every
    message carrying the count sits uncommitted; kill the aggregator, let its replacement take
    the resent messages, then flush. Prints the losses the flush reported."""
    logger = tracer.init_logger("survive")
    logger.flush()
    lock = lock_the_store(timeout=30)
    for i in range(n):
        with tracer.start_span(f"span {i}"):
            pass
    time.sleep(0.5)  # the flusher sends what it holds, with the drop counts, within 0.1 s
    first = logger.recorder.aggregator_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: logger.recorder.aggregator_pid not in (None, first), 30,
               "no replacement aggregator")
    lock.execute("ROLLBACK")
    lock.close()
    _error, losses = flush_reporting_losses(60)
    print(json.dumps({"losses": losses}))


# -- a full disk, a log that cannot be written, a store removed ------------------------------


def logs_spans_and_prints_the_counters(n: int, size: int = 0, store: str | None = None) -> None:
    """Log ``n`` spans ("span <i>", an input of ``size`` bytes) into the project "faults",
    flush (printing a FlushError), and print the aggregator's counters, asked over the socket."""
    tracer.init_logger("faults", store=store)
    for i in range(n):
        with tracer.start_span(f"span {i}") as span:
            if size:
                span.log(input="x" * size)
    if flush_printing_the_error(timeout=60):
        print("flushed")
    print(json.dumps(aggregator_counters()))


def updates_a_row_whose_stored_copy_is_corrupt(n: int) -> None:
    """Log a span ("victim") and flush; spoil its stored row (its data no longer a map, so no
    update merges into it); then log ``n`` spans and an update of the victim, all written in one
    batch (run with TRACER_SYNC_FLUSH=1); flush (printing a FlushError). Print the victim's id,
    then the aggregator's counters."""
    import msgpack

    tracer.init_logger("faults")
    with tracer.start_span("victim") as victim:
        pass
    tracer.flush()
    store = sqlite3.connect(os.path.join(".tracer", "traces.db"), timeout=30)
    with store:
        store.execute("UPDATE rows SET data = ? WHERE id = ?", (msgpack.packb([1, 2]), victim.id))
    store.close()
    for i in range(n):
        with tracer.start_span(f"span {i}"):
            pass
    tracer.update_span(victim.export(), output="cannot be merged")
    flush_printing_the_error(timeout=60)
    print(victim.id)
    print(json.dumps(aggregator_counters()))


def remove_the_store() -> None:
    """Remove ``.tracer/traces.db`` and its -wal and -shm files, as ``rm`` would."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(os.path.join(".tracer", "traces.db") + suffix)
        except FileNotFoundError:
            pass


def logs_before_and_after_its_store_is_removed(n: int) -> None:
    """Log ``n`` spans ("before <i>") and flush; remove the store; log ``n`` more ("after
    <i>") and flush (printing a FlushError). Print the aggregator's counters."""
    tracer.init_logger("faults")
    for i in range(n):
        with tracer.start_span(f"before {i}"):
            pass
    tracer.flush()
    remove_the_store()
    for i in range(n):
        with tracer.start_span(f"after {i}"):
            pass
    if flush_printing_the_error(timeout=60):
        print("flushed")
    print(json.dumps(aggregator_counters()))


def logs_while_its_store_is_removed(n: int) -> None:
    """Log ``n`` spans ("span <i>") while a thread removes the store once the aggregator has
    committed some; flush (printing a FlushError). Print the aggregator's counters."""
    tracer.init_logger("faults")

    def remove_once_committed() -> None:
        wait_until(lambda: aggregator_counters().get("rows_committed"), 60,
                   "the aggregator never committed a row", interval=0.01)
        remove_the_store()

    remover = threading.Thread(target=remove_once_committed)
    remover.start()
    for i in range(n):
        with tracer.start_span(f"span {i}"):
            pass
    remover.join(60)
    if flush_printing_the_error(timeout=60):
        print("flushed")
    print(json.dumps(aggregator_counters()))


# -- files we create -------------------------------------------------------------------------


def creates_its_files_under_umask(umask: int) -> None:
    """Under ``umask``: log a span with an attachment (run with TRACER_ALL_PUBLISH_PAYLOADS_DIR
    set, so batches are written as payload files too) and flush; kill the aggregator so that a
    replacement is started under the lock file; log and flush again. Print the mode of every
    file under the working directory and of the aggregator's pid and lock files."""
    import stat

    os.umask(umask)
    tracer.init_logger("private")
    with tracer.start_span("with a file") as span:
        span.log(input=tracer.Attachment(b"secret bytes", filename="secret.bin"))
    tracer.flush()
    os.kill(int(os.environ["_TRACER_AGGREGATOR_PID"]), signal.SIGKILL)
    with tracer.start_span("after the restart"):
        pass
    tracer.flush(timeout=30)
    socket = os.environ["TRACER_ENDPOINT"][len("ipc://"):]
    files = [os.path.join(top, name) for top, _dirs, names in os.walk(".") for name in names]
    files += [socket + ".pid", socket + ".lock"]
    print(json.dumps({path: stat.S_IMODE(os.stat(path).st_mode) for path in files}))


# -- a traced program writing to a PostgreSQL store (TRACER_STORE=postgresql://...) ------------


def logs_nested_spans_and_a_span_with_metadata(project: str) -> None:
    """Log a nested @traced call and a start_span with metadata into ``project``; flush."""
    logger = tracer.init_logger(project)

    @tracer.traced
    def inner(x: int) -> int:
        return x * 2

    @tracer.traced
    def outer(x: int) -> int:
        return inner(x) + 1

    outer(3)
    with logger.start_span("with-metadata", metadata={"model": "m1", "n": 2}) as span:
        span.log(input="q", output="a")
    logger.flush()


def traces_spans_an_experiment_and_an_attachment(store: str) -> None:
    """Log a trace of nested spans with an attachment into a project's logs and a scored trace
    into an experiment, in ``store`` (what ``tracer migrate --from --to`` copies)."""
    tracer.init_logger("migrated", store=store)
    with tracer.start_span("root", type="task") as root:
        root.log(input={"question": "what moves?"}, metadata={"model": "m1"})
        with tracer.start_span("child", type="llm") as child:
            child.log(output={"file": tracer.Attachment(b"migrated bytes", filename="a.bin")},
                      metrics={"tokens": 7})
        root.log(output="everything", scores={"quality": 0.5})
    experiment = tracer.init("migrated", "exp", store=store, set_current=False)
    with experiment.start_span("case", type="eval") as case:
        case.log(input={"n": 1}, output={"n": 2}, scores={"accuracy": 1.0})
    tracer.flush(timeout=30)


def logs_while_its_database_goes_away(project: str, n: int) -> None:
    """Driven by its test over stdin and stdout, a line at a time: log "before" into
    ``project`` (a PostgreSQL store) and flush, then say ``ready``; once told ``stopped`` (the
    database is down) log ``n`` spans "during <i>" and flush, printing the FlushError and the
    aggregator's counters as a JSON line; once told ``started`` (it is back) log "after" and
    flush, printing the counters again."""
    import sys

    tracer.init_logger(project)
    with tracer.start_span("before"):
        pass
    tracer.flush(timeout=30)
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "stopped"
    for i in range(n):
        with tracer.start_span(f"during {i}") as span:
            span.log(output=i)
    error = None
    try:
        tracer.flush(timeout=120)
    except tracer.FlushError as exc:
        error = str(exc)
    print(json.dumps({"error": error, "counters": aggregator_counters()}), flush=True)
    assert sys.stdin.readline().strip() == "started"
    with tracer.start_span("after"):
        pass
    tracer.flush(timeout=60)
    print(json.dumps({"counters": aggregator_counters()}), flush=True)


def summarizes_an_experiment(store: str) -> None:
    """Log two traces into an experiment in ``store`` (scores 1.0 and 0.5, 30 and 12 tokens,
    one error) and print its ``summarize()`` as a JSON line: spans, traces, errors, score
    means, the token total, the store named and the summary's text."""
    experiment = tracer.init("summarized", "exp", store=store)
    with experiment.start_span("first") as root:
        root.log(scores={"accuracy": 1.0})
        with root.start_span("llm") as llm:
            llm.log(metrics={"tokens": 30})
    with experiment.start_span("second") as root:
        root.log(scores={"accuracy": 0.5})
        with root.start_span("failing llm") as llm:
            llm.log(metrics={"tokens": 12}, error="rate limited")
    summary = experiment.summarize()
    print(json.dumps({"spans": summary.spans, "traces": summary.traces,
                      "errors": summary.errors,
                      "scores": {k: v.score for k, v in summary.scores.items()},
                      "tokens": summary.metrics["tokens"].total, "store": summary.store,
                      "text": str(summary)}))
