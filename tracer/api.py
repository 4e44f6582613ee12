"""The user-facing API, as the reference (Braintrust's Python SDK) defines it.

- Containers: ``init_logger`` (a project's logs) and ``init`` (an experiment) start or attach to
  this process tree's aggregator and make the container current; ``current_logger``,
  ``current_experiment``.
- Spans: ``traced`` (functions, coroutines, generators), ``start_span``, ``current_span``;
  ``update_span`` and ``permalink`` for spans known only by their exported slug.
- ``flush``: wait until every record this process made so far is committed.

``@traced``'s synchronous wrapper is the hottest path of the package: it inlines span creation
and the SPAN_END record (see ``_Traced``). Spans are built by ``span.py``; records leave through
the process's ``Recorder``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import config, event, launcher, wire
from . import slug as _slug
from .context import current, state
from .experiment import Experiment
from .ids import new_id, new_trace_id
from .logger import Logger, SpanContainer
from .registry import sync_all
from .serialize import immutable, pack, snapshot
from .span import (
    NOOP_SPAN,
    NoopSpan,
    RemoteSpan,
    Span,
    check_start,
    error_of,
    make_permalink,
    noop_permalink,
    parent_ref,
    resolve_parents,
    start_child,
    start_root,
    start_under,
)

F = TypeVar("F", bound=Callable[..., Any])

# Where a traced generator's output past TRACER_MAX_GENERATOR_ITEMS is warned about.
_log = logging.getLogger("tracer")
# finish()'s output when none is to be logged (a traced generator's, past its limit).
_NO_OUTPUT: Any = object()

state.app_url = (os.environ.get("TRACER_APP_URL") or config.DEFAULT_APP_URL).rstrip("/")
# A spawn/forkserver child of an initialised process finds its parent's logger or experiment
# (its container key) here.
_inherited = os.environ.get(config.ENV_CONTAINER) if os.environ.get("TRACER_ENDPOINT") else None
if _inherited:
    state.active = True


def init_logger(project: str | None = None, project_id: str | None = None, *,
                api_key: str | None = None, store: str | None = None,
                endpoint: str | None = None, app_url: str | None = None,
                set_current: bool = True, aggregator_key: str | None = None,
                org_name: str | None = None, async_flush: bool = True,
                force_login: bool = False) -> Logger:
    """Start logging spans of ``project`` (default ``"default"``) and return its Logger.

    ``project_id`` names the project when ``project`` is not given: a self-hosted store has no
    server-assigned ids, so a project is known by its name. ``org_name``, ``async_flush`` and
    ``force_login`` are accepted for the reference's signature and change nothing (there is
    no organisation or login; records are always sent by a background thread, and
    ``flush()`` waits for them).

    The first call in a process tree starts one aggregator process for ``store`` (default
    ``TRACER_STORE`` or ``.tracer/traces.db``); later calls, and child processes, attach to it.
    ``endpoint`` attaches to a running aggregator instead (``tracer aggregator --bind ...``);
    ``aggregator_key`` (default ``TRACER_AGGREGATOR_KEY``) is the public key of a tcp://
    aggregator started with ``--secret-key`` (``tracer keys curve`` makes the pair).
    ``api_key`` is accepted for compatibility with the reference SDK and not used.
    Nothing here blocks: the aggregator starts in the background. Every ``TRACER_*`` variable
    and the arguments are checked first: a bad one raises ValueError (TypeError for a wrong
    type) naming it and its value, before anything starts.
    """
    del api_key, org_name, async_flush, force_login  # self-hosted: see the docstring
    project = _check_name("project", _project_name(project, project_id, "default"),
                          "init_logger")
    settings, store, endpoint, app_url = _checked_settings(store, endpoint, app_url)
    rec = launcher.recorder_for(settings, store, endpoint,
                                config.keyword("aggregator_key", aggregator_key))
    logger = Logger(project, wire.logs_container(project), rec)
    _make_current(logger, app_url, set_current)
    return logger


def init(project: str | None = None, experiment: str | None = None, *,
         api_key: str | None = None, store: str | None = None, endpoint: str | None = None,
         app_url: str | None = None, set_current: bool = True,
         aggregator_key: str | None = None, project_id: str | None = None,
         update: bool | None = None, open: bool = False, tags: list[str] | None = None,
         metadata: dict | None = None, description: str | None = None,
         org_name: str | None = None) -> Experiment:
    """Start a new experiment of ``project`` and return it.

    ``project`` or ``project_id`` (which names the project when ``project`` is not given: a
    self-hosted store has no server-assigned ids) is required, as in the reference: ValueError
    without either. ``experiment`` names it; without a name one is generated
    (``experiment-<UTC time>-<4 hex digits>``). Every call starts a new experiment with its own
    id, so rows of two experiments never mix, even under the same name; with ``update=True``
    the id is derived from the project and experiment names, so every ``update=True`` call
    with the same names continues one experiment (from any process). ``open=True`` (reading an
    experiment back) raises ValueError: read rows with ``tracer export`` instead. ``tags``,
    ``metadata`` and ``description`` are checked and kept on the Experiment object
    (``experiment.tags`` ...); ``org_name`` is accepted and ignored (no organisations).
    While it is the current experiment
    (``set_current=True``), spans started outside any span, in this process and in its child
    processes, go to it rather than to the current logger (the reference's precedence).
    ``store``, ``endpoint``, ``aggregator_key``, ``app_url`` and ``api_key`` are as for
    ``init_logger``.
    """
    del api_key, org_name
    if project is None and project_id is None:
        raise ValueError("Must specify at least one of project or project_id")
    if open and update:
        raise ValueError("Cannot open and update an experiment at the same time")
    if open and experiment is None:
        raise ValueError("Cannot open an experiment without specifying its name")
    if open:
        raise ValueError("init: open=True (reading an experiment back) is not supported; "
                         "read its rows with `tracer export --experiment NAME`")
    project = _check_name("project", _project_name(project, project_id, None), "init")
    if experiment is None:
        if update:
            raise ValueError("init: update=True needs the experiment's name")
        experiment = (f"experiment-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-"
                      f"{secrets.token_hex(2)}")
    experiment = _check_name("experiment", experiment, "init")
    if tags is not None:
        if isinstance(tags, (list, tuple)):  # a tag given twice is a mistake, as in the reference
            seen: set = set()
            for tag in tags:
                if tag in seen:
                    raise ValueError(f"duplicate tag: {tag}")
                seen.add(tag)
        tags = event.check({"tags": tags}, "init")["tags"]
    if metadata is not None:
        event.check({"metadata": metadata}, "init")
    if description is not None and not isinstance(description, str):
        raise TypeError(f"init: description must be a string, got {type(description).__name__}")
    settings, store, endpoint, app_url = _checked_settings(store, endpoint, app_url)
    rec = launcher.recorder_for(settings, store, endpoint,
                                config.keyword("aggregator_key", aggregator_key))
    experiment_id = (str(uuid.uuid5(uuid.NAMESPACE_URL, f"tracer:{project}{wire.SEP}{experiment}"))
                     if update else str(uuid.uuid4()))
    exp = Experiment(project, experiment, experiment_id, rec)
    exp.tags, exp.metadata, exp.description = tags, metadata, description
    _make_current(exp, app_url, set_current)
    return exp


def _project_name(project: str | None, project_id: str | None, default: str | None) -> object:
    """The project's name: ``project``, else ``project_id`` (a self-hosted store knows projects
    by name), else ``default``."""
    if project is not None:
        return project
    return project_id if project_id is not None else default


def _checked_settings(store: object, endpoint: object, app_url: object
                      ) -> tuple[config.Settings, str | None, str | None, str | None]:
    """The settings of every variable and the ``store``, ``endpoint`` and ``app_url`` arguments,
    all checked in the calling process before anything starts."""
    return (config.load(), config.keyword("store", store), config.keyword("endpoint", endpoint),
            config.keyword("app_url", app_url))


def _check_name(what: str, name: object, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{where}: {what} must be a non-empty string, got {name!r}")
    if wire.SEP in name:  # it separates the parts of a container key
        raise ValueError(f"{where}: {what} {name!r} contains the control character \\x1f")
    return name


def _make_current(target: SpanContainer, app_url: str | None, set_current: bool) -> None:
    if app_url is not None:
        state.app_url = app_url.rstrip("/")
    if set_current:
        if isinstance(target, Experiment):
            state.make_current(None, target)
        else:
            state.make_current(target, None)
        launcher.export_to_children(target.recorder)
        os.environ[config.ENV_CONTAINER] = state.current_container().container
    state.active = True


def current_logger() -> Logger | None:
    """The logger set by the last ``init_logger(set_current=True)``, or None."""
    if _inherited:
        _adopt_inherited()
    return state.current_logger()


def current_experiment() -> Experiment | None:
    """The experiment set by the last ``init(set_current=True)``, or None."""
    if _inherited:
        _adopt_inherited()
    return state.current_experiment()


def _parent_object() -> SpanContainer | None:
    """Where a span started outside any span goes: the current experiment, else the current
    logger, else None (nothing is traced)."""
    if _inherited:
        _adopt_inherited()
    return state.current_container()


def _adopt_inherited() -> None:
    """In a child process: make the parent's logger or experiment current here (on first use,
    not at import: the recorder would start a thread)."""
    global _inherited
    container, _inherited = _inherited, None
    if container is None or state.current_container() is not None:  # none, or chosen here
        return
    rec = launcher.recorder_for(config.load(lenient=True))  # in a traced call: never raise
    parts = wire.split_container(container)
    if parts[0] == wire.EXPERIMENT:
        state.make_current(None, Experiment(parts[1], parts[3], parts[2], rec))
    else:
        state.make_current(Logger(parts[1], container, rec), None)


def current_span() -> Span | NoopSpan:
    """The span of the innermost ``@traced`` call or ``with start_span()`` block; a no-op span
    when there is none."""
    return current.get() or NOOP_SPAN


def start_span(name: str | None = None, type: str | None = None, parent: str | None = None,
               event: dict | None = None, parents: list | None = None,
               set_current: bool | None = None, **event_fields: Any) -> Span | NoopSpan:
    """Start a span: a child of ``parent`` (a slug from ``Span.export()``, from any process),
    else of the current span, else a root in the current experiment or logger; a no-op span if
    nothing is being traced. Use it as a context manager, or end it with ``span.end()``.

    ``parents=[span_or_slug, ...]`` makes the span a child of several spans (a trace is a DAG):
    they must all be spans of one trace, else ValueError; the span joins that trace, under the
    first parent's root. ``event`` and keyword arguments are logged at start (``input=...``,
    ``metadata=...``). ``set_current=False``: the span never becomes the current span, not even
    inside its ``with`` block.

    Unnamed, a root span is named ``"root"`` and a child ``"<function>:<file>:<line>"`` of the
    caller; an untyped root span is a ``"task"`` in a logger, an ``"eval"`` in an experiment.
    """
    span = _start_span(name, type, parent, event, parents, event_fields)
    return span.never_current() if set_current is False and isinstance(span, Span) else span


def _start_span(name: str | None, type: str | None, parent: str | None, event: dict | None,
                parents: list | None, event_fields: dict) -> Span | NoopSpan:
    fields, row_id = check_start(name, type, event, event_fields, "start_span")
    if parents is not None:
        if parent is not None:
            raise TypeError("start_span: give parent= or parents=, not both")
        if isinstance(parents, (list, tuple)) and any(isinstance(p, NoopSpan) for p in parents):
            return NOOP_SPAN  # the parents were made while nothing was traced
        resolved = resolve_parents(parents, "start_span")
        rec = resolved.recorder or _recorder_for_slugs()
        return start_under(resolved, rec, name, type, fields, row_id)
    if isinstance(parent, Span):
        return start_child(parent, name, type, fields, row_id)
    ref = parent_ref(parent)
    if ref is not None:
        return start_root(_recorder_for_slugs(), ref.container, name, type, fields, row_id, ref)
    cur = current.get()
    if cur is not None:
        return start_child(cur, name, type, fields, row_id)
    target = _parent_object()
    if target is None:
        return NOOP_SPAN
    return start_root(target.recorder, target.container, name, type, fields, row_id)


def update_span(exported: str, **fields: Any) -> None:
    """Merge ``fields`` into the row of an exported span, from any process."""
    ref = _slug.decode(exported)
    event.check(fields, "update_span")
    _recorder_for_slugs().add_packed(pack(wire.update(ref.container, ref.id, fields)))


def permalink(slug: str, org_name: str | None = None, app_url: str | None = None) -> str:
    """The link ``Span.permalink()`` gives, built from an exported slug (base URL: ``app_url``,
    default ``TRACER_APP_URL``). The slug of a no-op span (``""``) links to
    ``<app url>/noop-span``, as in the reference. ``org_name`` is accepted for the reference's
    signature: a self-hosted viewer has no organisations."""
    del org_name
    if slug == "":
        return noop_permalink(app_url)
    ref = _slug.decode(slug)
    return make_permalink(ref.container, ref.trace, ref.span, ref.root, app_url)


@contextlib.contextmanager
def parent_context(parent: str | None) -> Iterator[None]:
    """Inside the block, spans started outside any span of this thread or task are children
    of ``parent`` (a slug from ``Span.export()``, from any process); spans started inside a
    span still nest under it. ``None`` or ``""`` changes nothing."""
    ref = parent_ref(parent)
    if ref is None:
        yield
        return
    # The exported span stands in as the current span, as in a worker process: whatever
    # nests under the current span nests under it, at no cost to @traced.
    token = current.set(RemoteSpan(_recorder_for_slugs(), ref))
    try:
        yield
    finally:
        current.reset(token)


def flush(timeout: float | None = 30.0) -> None:
    """Wait until every span this process ended before the call is committed to the store.

    Raises ``tracer.FlushError`` if the aggregator is gone, failed, or ``timeout`` passed, and
    if records of this process were dropped or lost since the previous flush (its ``losses``
    count them by reason; each loss is reported once).
    """
    sync_all(wire.COMMITTED, timeout)


def _recorder_for_slugs():
    # A process that never called init_logger may still continue a trace it was handed.
    target = _parent_object()
    return target.recorder if target is not None else launcher.recorder_for(config.load())


# -- @traced ---------------------------------------------------------------------------------


def traced(fn: F | str | None = None, *, name: str | None = None, type: str | None = None,
           notrace_io: bool = False) -> Any:
    """Trace every call of a function: ``@traced``, ``@traced("name")`` or
    ``@traced(name=..., type=...)``.

    Works on functions, ``async def`` functions, generators and async generators. The span is
    named after the function and typed ``"function"`` unless given; its input is the bound
    arguments (``self``/``cls`` left out), its output the return value (for generators, the
    yielded items, up to ``TRACER_MAX_GENERATOR_ITEMS``; those yielded before an exception are
    kept with it). An exception is logged in ``error`` (as the reference writes it:
    ``"ValueError: boom\n\nTraceback ..."``) and re-raised. ``notrace_io=True`` records
    neither. With no logger anywhere this costs one attribute check per call.
    """
    if isinstance(fn, str):  # @traced("name", ...): the reference takes the name first
        if name is not None:
            raise TypeError("traced: the name is given twice (positionally and as name=)")
        fn, name = None, fn
    if fn is None:
        return lambda f: traced(f, name=name, type=type, notrace_io=notrace_io)
    if not callable(fn):
        raise TypeError(f"traced: expected a function, got {fn.__class__.__name__}")
    event.check_name(name, "traced")
    event.check_type(type, "traced")
    tracer = _Traced(fn, name or str(getattr(fn, "__name__", "function")), type or "function",
                     None if notrace_io else _InputCapture(fn))
    if inspect.isasyncgenfunction(fn):
        wrapper = tracer.async_gen_wrapper()
    elif inspect.iscoroutinefunction(fn):
        wrapper = tracer.async_wrapper()
    elif inspect.isgeneratorfunction(fn):
        wrapper = tracer.gen_wrapper()
    else:
        wrapper = tracer.sync_wrapper()
    return functools.wraps(fn)(wrapper)


class _Traced:
    """The per-function part of ``@traced``: how to open and finish that function's spans.

    The synchronous wrapper inlines ``open`` and ``finish``: it is the path every traced call
    takes, and each avoided call is ~0.1 us.
    """

    def __init__(self, fn: Callable, name: str, type: str | None,
                 capture: _InputCapture | None) -> None:
        self.fn = fn
        self.name = name
        self.type = type
        self.capture = capture

    def open(self, args: tuple, kwargs: dict) -> Span | None:
        parent = current.get()
        if parent is None:
            target = state.parent_object or _parent_object()
            if target is None:
                return None
            sid, now = new_id(), time.time()
            span = Span(target.recorder, target.container, new_trace_id(now), sid, None, sid,
                        self.name, self.type, now)
        else:
            span = Span(parent._rec, parent.container, parent.trace_int, new_id(), parent.span_int,
                        parent.root_int, self.name, self.type, time.time())
        if self.capture is not None:
            span._input = self.capture.snapshot(args, kwargs)
        span._rec.open_spans.add(span)
        return span

    def finish(self, span: Span, output: Any, exc: BaseException | None) -> None:
        if span.end_time is not None:  # the function ended its own span
            return
        end = span.end_time = time.time()
        rec = span._rec
        rec.open_spans.discard(span)
        fields: dict[str, object] | None
        if exc is not None:
            fields = {"error": error_of(exc)}
            if output is not None and output is not _NO_OUTPUT and self.capture is not None:
                fields["output"] = snapshot(output)  # what a generator yielded before raising
        elif self.capture is not None and output is not _NO_OUTPUT:
            fields = {"output": snapshot(output)}
        else:
            fields = None
        # wire.span_end, inlined.
        rec.add((wire.SPAN_END, span.container, span.trace_int, span.span_int, span.parents,
                 span.root_int, span.row_id, span.name, span.type, span.start, end, fields,
                 span._input))

    def sync_wrapper(self) -> Callable:
        fn, name, span_type, capture, finish = (self.fn, self.name, self.type, self.capture,
                                                self.finish)
        capture_input = capture.snapshot if capture is not None else None

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not state.active:
                return fn(*args, **kwargs)
            # open(), inlined
            parent = current.get()
            if parent is None:
                target = state.parent_object or _parent_object()
                if target is None:
                    return fn(*args, **kwargs)
                sid, now = new_id(), time.time()
                span = Span(target.recorder, target.container, new_trace_id(now), sid, None, sid,
                            name, span_type, now)
            else:
                span = Span(parent._rec, parent.container, parent.trace_int, new_id(),
                            parent.span_int, parent.root_int, name, span_type, time.time())
            if capture_input is not None:
                span._input = capture_input(args, kwargs)
            rec = span._rec
            rec.open_spans.add(span)
            token = current.set(span)
            try:
                output = fn(*args, **kwargs)
            except BaseException as exc:
                current.reset(token)
                finish(span, None, exc)
                raise
            current.reset(token)
            if span.end_time is not None or capture_input is None:
                finish(span, output, None)
                return output
            # finish(), inlined for the common case
            end = span.end_time = time.time()
            rec.open_spans.discard(span)
            # Packed on the flusher's thread, with the output as it is now (see snapshot).
            # wire.span_end, inlined.
            rec.add((wire.SPAN_END, span.container, span.trace_int, span.span_int, span.parents,
                     span.root_int, span.row_id, span.name, span.type, span.start, end,
                     {"output": snapshot(output)}, span._input))
            return output

        return wrapper

    def async_wrapper(self) -> Callable:
        fn, open_, finish = self.fn, self.open, self.finish

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            span = open_(args, kwargs) if state.active else None
            if span is None:
                return await fn(*args, **kwargs)
            token = current.set(span)
            try:
                output = await fn(*args, **kwargs)
            except BaseException as exc:
                current.reset(token)
                finish(span, None, exc)
                raise
            current.reset(token)
            finish(span, output, None)
            return output

        return wrapper

    def gen_wrapper(self) -> Callable:
        fn, open_, finish, name = self.fn, self.open, self.finish, self.name
        # Read once, here: never per call nor per item. notrace_io keeps no items at all.
        limit = _generator_limit() if self.capture is not None else 0

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            span = open_(args, kwargs) if state.active else None
            if span is None:
                return (yield from fn(*args, **kwargs))
            items = _Yielded(limit, name)
            gen = fn(*args, **kwargs)
            # The span is current only while the generator body runs, never between yields,
            # so it does not leak into the caller's code.
            method, arg = gen.send, None
            try:
                while True:
                    token = current.set(span)
                    try:
                        item = method(arg)
                    except StopIteration as stop:
                        finish(span, items.output(), None)
                        return stop.value
                    finally:
                        current.reset(token)
                    items.add(item)
                    try:
                        arg = yield item
                        method = gen.send
                    except GeneratorExit:
                        gen.close()
                        finish(span, items.output(), None)
                        raise
                    except BaseException as exc:
                        method, arg = gen.throw, exc
            except BaseException as exc:
                finish(span, items.partial(), exc)
                raise

        return wrapper

    def async_gen_wrapper(self) -> Callable:
        fn, open_, finish, name = self.fn, self.open, self.finish, self.name
        # Read once, here: never per call nor per item. notrace_io keeps no items at all.
        limit = _generator_limit() if self.capture is not None else 0

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            span = open_(args, kwargs) if state.active else None
            if span is None:
                async for item in fn(*args, **kwargs):
                    yield item
                return
            items = _Yielded(limit, name)
            agen = fn(*args, **kwargs)
            method, arg = agen.asend, None
            try:
                while True:
                    token = current.set(span)
                    try:
                        item = await method(arg)
                    except StopAsyncIteration:
                        finish(span, items.output(), None)
                        return
                    finally:
                        current.reset(token)
                    items.add(item)
                    try:
                        arg = yield item
                        method = agen.asend
                    except GeneratorExit:
                        await agen.aclose()
                        finish(span, items.output(), None)
                        raise
                    except BaseException as exc:
                        method, arg = agen.athrow, exc
            except BaseException as exc:
                finish(span, items.partial(), exc)
                raise

        return wrapper


def _generator_limit() -> int:
    """How many items of a traced generator's output are kept: ``TRACER_MAX_GENERATOR_ITEMS``
    (or ``BRAINTRUST_MAX_GENERATOR_ITEMS``), read once per decorated function, never per item;
    ``-1`` (no limit) becomes ``sys.maxsize``. A malformed value (which ``init_logger`` refuses)
    is warned about and the default used: decorating never raises for it."""
    limit = config.value_or_default("MAX_GENERATOR_ITEMS")
    return sys.maxsize if limit < 0 else limit


class _Yielded:
    """A traced generator's output as it runs: the items it yielded while there are at most
    ``limit`` of them; past that none at all (a partial list would pass for the whole output),
    with one warning, as in the reference. ``limit`` 0 keeps nothing."""

    __slots__ = ("items", "limit", "name")

    def __init__(self, limit: int, name: str) -> None:
        self.items: list | None = [] if limit else None
        self.limit = limit
        self.name = name

    def add(self, item: Any) -> None:
        items = self.items
        if items is not None:
            if len(items) < self.limit:
                items.append(item)
            else:
                self.items = None
                _log.warning("Generator output exceeded limit of %d items, output not logged "
                             "(traced generator %r). Increase TRACER_MAX_GENERATOR_ITEMS (or "
                             "BRAINTRUST_MAX_GENERATOR_ITEMS) or set it to -1 to disable the "
                             "limit.", self.limit, self.name)

    def output(self) -> Any:
        """The output of a generator that finished (or was closed): its items, or _NO_OUTPUT
        past the limit."""
        return _NO_OUTPUT if self.items is None else self.items

    def partial(self) -> Any:
        """The output of a generator that raised: the items it yielded before, if any were
        kept (the reference logs no empty list then)."""
        return self.items or _NO_OUTPUT


class _InputCapture:
    """How a traced function's call becomes its span's input, decided once per function.

    ``snapshot(args, kwargs)`` takes what was passed as it is at call time (arguments of
    immutable types as they are, anything else packed now: see ``serialize.snapshot``); the
    aggregator turns it into the bound arguments (see ``wire.unpack_input``). For the common
    signature (positional-or-keyword parameters only) the caller ships ``(args, kwargs)`` and the
    parameter names; otherwise ``Signature.bind`` (~10x dearer) builds the dict here.
    ``self``/``cls`` are left out.
    """

    def __init__(self, fn: Callable) -> None:
        self.names: tuple | None = None
        self.skip = 0
        self.sig: Any = None  # the inspect.Signature, where binding needs it
        # Chosen once: how this function's calls are snapshotted.
        self.snapshot: Callable[[tuple, dict], tuple] = self._snapshot_unbound
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return
        params = list(sig.parameters.values())
        self.skip = 1 if params and params[0].name in ("self", "cls") else 0
        if all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
            self.names = tuple(p.name for p in params[self.skip:])
        else:
            self.sig = sig
        self.snapshot = self._snapshot_named if self.names is not None else self._snapshot_bound

    def _snapshot_unbound(self, args: tuple, kwargs: dict) -> tuple:
        return (None, snapshot({"args": list(args), "kwargs": kwargs}))

    def _snapshot_named(self, args: tuple, kwargs: dict) -> tuple:
        if self.skip:
            args = args[self.skip:]
        if not kwargs and immutable(args):
            return (self.names, (args, None))
        return (self.names, snapshot((args, kwargs or None)))

    def _snapshot_bound(self, args: tuple, kwargs: dict) -> tuple:
        try:
            bound = self.sig.bind(*args, **kwargs).arguments
        except TypeError:  # the call itself will raise; record what was passed
            return (None, snapshot({"args": list(args), "kwargs": kwargs}))
        if self.skip:
            bound.pop(next(iter(self.sig.parameters)), None)
        return (None, snapshot(dict(bound)))
