"""``tracer import``: JSON lines from any program, written to a store as proper spans.

Each line is one JSON object of one of two shapes:

* **a nested span tree**, as the reference's "Generating spans" example prints it:
  ``input``, ``output``, ``expected``, ``error``, ``scores``, ``metadata``, ``metrics``,
  ``tags`` (all optional, validated like ``span.log()``), ``name``, ``type`` and ``children``
  (a list of trees). Each node becomes a row with fresh ids in our format (``trace:span``
  formatted as a UUID), ``span_parents``, ``root_span_id`` and ``span_attributes``;
  ``metrics.start``/``end`` are kept as given.
* **a row in the underlying format** (it has a ``span_id``), as ``tracer export`` prints it:
  written as it is, ids, parents and ``created`` included, so export -> import -> export gives
  the same rows. Without ``--project``/``--experiment`` it goes back to its own container
  (``project_name``, and ``experiment_id``/``experiment_name`` or ``log_id``).

Rows are merged into the store by a store writer, as the aggregator's are and as ``tracer
import-payloads`` does: a row whose id is already stored in that container is merged into it.
The whole input is read and checked before anything is written, so a malformed line writes
nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tracer import event, wire
from tracer.ids import new_id, new_trace_id

from .queue import Pending
from .rows import Container, to_json
from .store import StoreWriter

TREE_KEYS = frozenset(event.FIELDS) | {"name", "type", "children"}
# Export adds these from the store's containers table; they are not part of a row's data.
CONTAINER_NAMES = ("project_name", "experiment_name")
CONTAINER_COLUMNS = ("project_id", "log_id", "experiment_id")
BATCH_ROWS = 1000


class Target:
    """Where imported rows go: ``project`` and ``experiment`` from the command line (None: a
    row in the underlying format keeps its own container; a tree goes to ``default``)."""

    def __init__(self, sink: StoreWriter, project: str | None = None,
                 experiment: str | None = None) -> None:
        self.sink = sink
        self.project = project
        self.experiment = experiment
        self._experiment_ids: dict[str, str] = {}  # project -> id of `experiment` in it
        self._containers: dict[str, Container] = {}

    def forced(self, project: str | None) -> Container | None:
        """The container the command line asks for (None if it asks for none)."""
        if self.project is None and self.experiment is None:
            return None
        project = self.project or project or "default"
        if self.experiment is None:
            return self.container(wire.logs_container(project))
        if project not in self._experiment_ids:
            self._experiment_ids[project] = self._experiment_id(project, self.experiment)
        return self.container(wire.experiment_container(project, self._experiment_ids[project],
                                                         self.experiment))

    def own(self, row: dict, where: str) -> Container:
        """The container a row in the underlying format names."""
        project = row.get("project_name")
        if not isinstance(project, str) or not project:
            raise ValueError(f"{where}: the row has no project_name; pass --project or "
                             "--experiment to say where it goes")
        experiment_id = row.get("experiment_id")
        if experiment_id is None:
            return self.container(wire.logs_container(project))
        name = row.get("experiment_name") or experiment_id
        return self.container(wire.experiment_container(project, str(experiment_id), name))

    def _experiment_id(self, project: str, name: str) -> str:
        # An experiment of that name already in the store is added to; otherwise a new one.
        return self.sink.find_experiment(project, name) or str(uuid.uuid4())

    def container(self, key: str) -> Container:
        try:
            container = self._containers.get(key) or Container(key)
        except ValueError:
            raise ValueError(f"a project or experiment name cannot contain \\x1f: {key!r}") \
                from None
        self._containers[key] = container
        return container


def read_lines(stream: TextIO, name: str) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` for each non-blank line of JSON; ValueError naming the line."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc})") from None


def to_pending(entries: Iterable[tuple[str, Any]], target: Target) -> tuple[list[Pending], int]:
    """Every row the entries make, checked, ready for the sink; and how many traces."""
    pending: list[Pending] = []
    traces = 0
    for where, obj in entries:
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "span_id" in obj:
            container, row = _underlying_row(obj, target, where)
            rows = [row]
            traces += not row.get("span_parents")
        else:
            container = target.forced(None) or target.container(wire.logs_container("default"))
            rows = tree_rows(obj, where)
            traces += 1
        for row in rows:
            row.update(container.columns)
            pending.append(Pending((container.id, row["id"]), row, len(to_json(row)), 0,
                                   container))
    return pending, traces


def _underlying_row(obj: dict, target: Target, where: str) -> tuple[Container, dict]:
    for key in ("id", "span_id", "root_span_id"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise ValueError(f"{where}: a row in the underlying format needs a non-empty "
                             f"string {key!r}")
    parents = obj.get("span_parents")
    if parents is not None and not (isinstance(parents, list)
                                    and all(isinstance(p, str) for p in parents)):
        raise ValueError(f"{where}: span_parents must be null or a list of span ids")
    for key in ("span_attributes", "metrics"):  # the store reads columns out of these
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise ValueError(f"{where}: {key} must be null or an object")
    row = {k: v for k, v in obj.items() if k not in CONTAINER_NAMES}
    forced = target.forced(obj.get("project_name"))
    if forced is None:
        return target.own(obj, where), row
    for key in CONTAINER_COLUMNS:  # the ids of the container it came from
        row.pop(key, None)
    return forced, row


def tree_rows(tree: dict, where: str) -> list[dict]:
    """The rows of one nested span tree: one trace, with fresh ids."""
    metrics = tree.get("metrics")
    start = metrics.get("start") if isinstance(metrics, dict) else None
    # Trace ids sort by time (see tracer.ids): a tree's by the time it started, when known.
    trace = new_trace_id(start if isinstance(start, (int, float)) else time.time())
    root = new_id()
    rows = []
    stack: list[tuple[dict, int, int | None, str]] = [(tree, root, None, where)]
    while stack:
        node, span, parent, path = stack.pop()
        if not isinstance(node, dict):
            raise ValueError(f"{path}: a span must be a JSON object, got {type(node).__name__}")
        unknown = sorted(set(node) - TREE_KEYS)
        if unknown:
            raise ValueError(f"{path}: unknown key {unknown[0]!r} in a span; expected "
                             f"{', '.join(sorted(TREE_KEYS))} (or a row in the underlying "
                             "format, with id and span_id)")
        fields = {k: v for k, v in node.items() if k in event.FIELDS}
        try:
            event.check(fields, path)
            event.check_name(node.get("name"), path)
            event.check_type(node.get("type"), path)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        span_id = wire.format_id(trace, span)
        attributes = {"name": node.get("name")}
        if node.get("type") is not None:
            attributes["type"] = node["type"]
        row = {"id": span_id, "span_id": span_id, "root_span_id": wire.format_id(trace, root),
               "span_parents": None if parent is None else [wire.format_id(trace, parent)],
               "span_attributes": attributes}
        row.update(fields)
        rows.append(row)
        children = node.get("children") or []
        if not isinstance(children, list):
            raise ValueError(f"{path}: children must be a list of spans")
        for i in reversed(range(len(children))):  # popped in order
            stack.append((children[i], new_id(), span, f"{path} children[{i}]"))
    return rows


def write(pending: list[Pending], sink: StoreWriter) -> None:
    for start in range(0, len(pending), BATCH_ROWS):
        sink.write(pending[start:start + BATCH_ROWS])
