"""Celery: traces that follow tasks from the code that publishes them into a prefork worker fleet.

Call ``instrument(app)`` in the module that defines the Celery app (the publisher and the workers
both import it)::

    app = Celery("shop", broker="redis://127.0.0.1:6379/0")
    instrument(app, project="shop")  # the worker logs to project "shop"

Publishing (``apply_async``, ``delay``, chains, groups, chords, retries) inside a span puts that
span's export slug in the task message's ``tracer_parent`` header and records a producer span,
``publish <task name>``, under it. The worker runs each task inside a span named after the task
(type ``task``) whose parent is the slug from the header; the task's own ``@traced`` functions
nest under it. A task published outside any span starts its own trace, in the worker's project
(a worker with no logger of its own only continues traces it is handed).

Processes. ``project=`` (or ``store=``/``endpoint=``) makes the worker's main process call
``tracer.init_logger`` when the worker starts (``worker_init``), before the prefork pool forks its
children: the children inherit the logger, and the recorder's fork hook gives each a fresh
socket and buffer. With ``TRACER_ENDPOINT`` set in the worker's environment, that logger attaches
to a standalone aggregator (one store for the fleet and its publishers); otherwise the worker
starts its own aggregator (``store=``), and a trace published elsewhere continues in the worker's
store under the publisher's ids. Each task hands its spans to the aggregator before its result
goes back (one round trip), so a child recycled by ``--max-tasks-per-child`` or stopped by a warm
shutdown has nothing left to lose; ``worker_process_shutdown`` and ``worker_shutdown`` close the
recorders (bounded) for anything recorded outside a task.

Requires Celery's default message protocol (2).
"""

from __future__ import annotations

import functools
import os
import sys
from contextvars import ContextVar
from typing import Any, NamedTuple

from celery import Celery, signals

from .. import api, registry, slug
from ..context import current
from ..span import NoopSpan, Span, error_of

HEADER = "tracer_parent"  # the message header carrying the parent span's export slug
DELIVER_TIMEOUT = 30.0  # seconds a task waits, after it ran, for the aggregator to take its spans


class _Run(NamedTuple):
    """A task running in this process: its span, the context token that made the span current,
    and the slug it was published under."""

    span: Span
    token: Any
    parent: str | None


_running: dict[str | None, _Run] = {}  # task id -> the run of that task in this process
_publishing: dict[str | None, Span] = {}  # task id -> its producer span, until published
# Task ids published by the innermost wrapped ``send_task`` call, so that a publish that raises
# (after_task_publish never fires) still ends its producer span.
_opened: ContextVar[list | None] = ContextVar("tracer_celery_opened", default=None)
_worker_logger: dict[str, str | None] = {}  # init_logger arguments for workers, if given
_warned: set[str] = set()


def instrument(app: Celery, *, project: str | None = None, store: str | None = None,
               endpoint: str | None = None) -> Celery:
    """Trace ``app``'s tasks from publisher to worker; returns ``app``.

    Connects Celery's signals (once per process) and watches ``app.send_task`` so that a
    publish that fails still ends its producer span. ``project``, ``store`` and ``endpoint``
    are passed to ``tracer.init_logger`` in a worker's main process when it starts; without
    them, a worker traces only if it calls ``tracer.init_logger`` itself or inherits
    ``TRACER_ENDPOINT``. They change nothing in a publishing process: it logs wherever its own
    ``init_logger`` says.
    """
    if not isinstance(app, Celery):
        raise TypeError(f"instrument: expected a Celery app, got {type(app).__name__}")
    if project is not None or store is not None or endpoint is not None:
        _worker_logger.update(project=project, store=store, endpoint=endpoint)
    _connect()
    _watch_send_task(app)
    return app


def _connect() -> None:
    # dispatch_uid makes connecting idempotent; weak=False because these are module functions
    # that would otherwise be held weakly (and they live as long as the module anyway).
    for signal, receiver in (
            (signals.before_task_publish, _on_before_publish),
            (signals.after_task_publish, _on_after_publish),
            (signals.task_prerun, _on_prerun),
            (signals.task_failure, _on_failure),
            (signals.task_retry, _on_retry),
            (signals.task_postrun, _on_postrun),
            (signals.worker_init, _on_worker_init),
            (signals.worker_process_init, _on_process_init),
            (signals.worker_process_shutdown, _on_process_shutdown),
            (signals.worker_shutdown, _on_worker_shutdown)):
        signal.connect(receiver, weak=False, dispatch_uid=f"tracer.{receiver.__name__}")


def _watch_send_task(app: Celery) -> None:
    """Wrap ``app.send_task`` (every publish goes through it: tasks, canvas, retries) so that
    producer spans whose publish raised are ended, with the error, rather than left open."""
    original = app.send_task
    if getattr(original, "_tracer_watched", False):
        return

    @functools.wraps(original)
    def send_task(*args: Any, **kwargs: Any) -> Any:
        opened: list[str] = []
        token = _opened.set(opened)
        error = None
        try:
            return original(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _opened.reset(token)
            for task_id in opened:
                producer = _publishing.pop(task_id, None)
                if producer is not None:  # after_task_publish did not come
                    if error is not None:
                        producer.log(error=error_of(error))
                    producer.end()

    send_task._tracer_watched = True  # type: ignore[attr-defined]
    app.send_task = send_task


# -- publishing --------------------------------------------------------------------------------


def _on_before_publish(sender: Any = None, body: Any = None, headers: dict | None = None,
                       exchange: Any = None, routing_key: str | None = None, **_: Any) -> None:
    if headers is None:
        return
    task_id = headers.get("id")
    task_name = headers.get("task") or sender
    if task_id is None:  # message protocol 1: nowhere to put a header the worker reads
        return
    span = current.get()
    run = _running.get(task_id)
    if run is not None:
        # Task.retry() republishes the running task: the next attempt belongs beside this one,
        # under the same parent (or under this attempt, when this one is a root).
        parent = run.parent or run.span.export()
    elif span is not None:
        parent = span.export()
    else:
        return  # published outside any span: the task starts its own trace
    headers[HEADER] = parent
    if span is None:
        return
    meta = {"task_id": task_id, "task_name": task_name, "routing_key": routing_key,
            "retries": headers.get("retries") or 0}
    if headers.get("eta"):
        meta["eta"] = headers["eta"]
    producer = span.start_span(name=f"publish {task_name}", type="function",
                               metadata={"celery": meta})
    _publishing[task_id] = producer
    opened = _opened.get()
    if opened is not None:
        opened.append(task_id)


def _on_after_publish(headers: dict | None = None, **_: Any) -> None:
    producer = _publishing.pop((headers or {}).get("id"), None)
    if producer is not None:
        producer.end()


# -- running -----------------------------------------------------------------------------------


def _on_prerun(task_id: str | None = None, task: Any = None, args: Any = None,
               kwargs: Any = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    request = task.request
    parent = getattr(request, HEADER, None) or (getattr(request, "headers", None) or {}).get(
        HEADER)
    if parent is not None:
        try:
            slug.decode(parent)
        except (TypeError, ValueError) as exc:
            _warn("header", f"tracer: task {task.name}[{task_id}] carries a bad {HEADER} "
                            f"header ({exc}); it starts its own trace")
            parent = None
    if api.current_logger() is None:
        # Without a logger a task can still continue a trace it was handed, through the
        # aggregator in TRACER_ENDPOINT; it cannot start one (no project to start it in). With
        # neither, continuing would start an aggregator in every pool child: say so instead.
        if parent is None:
            return
        if not os.environ.get("TRACER_ENDPOINT"):
            _warn("logger", "tracer: a traced task reached a Celery worker that has no logger; "
                            "pass instrument(app, project=...), call tracer.init_logger() in "
                            "the worker or set TRACER_ENDPOINT")
            return
    span = api.start_span(name=task.name, type="task", parent=parent,
                          input={"args": list(args or ()), "kwargs": dict(kwargs or {})},
                          metadata={"celery": _task_metadata(task, task_id)})
    if isinstance(span, NoopSpan):
        return
    # Current for the task body, so that its @traced functions and the tasks it publishes
    # (chain links, chord bodies, sub-tasks) nest under it.
    _running[task_id] = _Run(span, current.set(span), parent)


def _task_metadata(task: Any, task_id: str) -> dict:
    request = task.request
    meta = {"task_id": task_id, "task_name": task.name, "retries": request.retries or 0,
            "state": "STARTED"}
    for key in ("hostname", "root_id", "parent_id", "group"):
        value = getattr(request, key, None)
        if value is not None and value != task_id:
            meta[key] = value
    queue = (request.delivery_info or {}).get("routing_key")
    if queue:
        meta["queue"] = queue
    return meta


def _on_failure(task_id: str | None = None, exception: BaseException | None = None,
                einfo: Any = None, **_: Any) -> None:
    run = _running.get(task_id)
    if run is None or exception is None:
        return
    # Celery's traceback is taken before it clears the frames.
    run.span.log(error=error_of(exception, getattr(einfo, "traceback", None) or None))


def _on_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    run = _running.get(getattr(request, "id", None))
    if run is not None:
        run.span.log(metadata={"celery": {"retry_reason": str(reason)}})


def _on_postrun(task_id: str | None = None, retval: Any = None, state: str | None = None,
                **_: Any) -> None:
    run = _running.pop(task_id, None)
    if run is None:
        return
    fields: dict[str, Any] = {"metadata": {"celery": {"state": state}}}
    if state == "SUCCESS":
        fields["output"] = retval
    run.span.log(**fields)
    try:
        current.reset(run.token)
    except ValueError:  # not the context prerun ran in: nothing of ours to restore
        pass
    run.span.end()
    # Hand this task's spans to the aggregator before its result goes back: the child may be
    # recycled or stopped right after, and billiard children leave through os._exit.
    # Every recorder of the process, not only the task span's: the task may log elsewhere too.
    registry.deliver_all(DELIVER_TIMEOUT)


# -- worker processes --------------------------------------------------------------------------


def _on_worker_init(**_: Any) -> None:
    # The worker's main process, before the prefork pool forks: children inherit the logger.
    if _worker_logger:
        api.init_logger(_worker_logger["project"], store=_worker_logger["store"],
                        endpoint=_worker_logger["endpoint"])


def _on_process_init(**_: Any) -> None:
    # A pool child. The recorder's fork hook already gave it fresh recorders; what is left is
    # our own per-process state, and a logger for a child that did not inherit one (a pool
    # started as fresh interpreters).
    _running.clear()
    _publishing.clear()
    if _worker_logger and api.current_logger() is None:
        api.init_logger(_worker_logger["project"], store=_worker_logger["store"],
                        endpoint=_worker_logger["endpoint"])


def _on_process_shutdown(**_: Any) -> None:
    # A pool child about to os._exit (recycled, or the pool is stopping). Billiard runs neither
    # atexit handlers nor multiprocessing's finalizers there: close here (bounded), whatever
    # else runs.
    registry.close_all()


def _on_worker_shutdown(**_: Any) -> None:
    registry.close_all()


def _warn(reason: str, message: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        print(message, file=sys.stderr)
