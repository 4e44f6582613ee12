"""Experiments: the second kind of container beside a project's logs, and their summaries.

An experiment is a set of rows of one project, kept apart from its logs and from every other
experiment by its container (``E<project><experiment id><experiment name>`` on the wire,
``exp:<experiment id>`` in the store). Start one with ``tracer.init(project, experiment)``.

``Experiment.summarize()`` reads the experiment's rows back from the SQLite store with the
standard library's ``sqlite3``, after a flush; from a PostgreSQL store, through ``tracer export``
in a child process (tracer never imports the database's driver: an optional extra, and half the
aggregator's start-up; the password goes to the child in ``PGPASSWORD``, never on its command
line). The recorder knows the store whenever the aggregator is local (started by
``init``/``init_logger``, or inherited from a parent), and this keeps the wire and the
aggregator as they are. An experiment sending to a standalone aggregator
by its address alone (``endpoint=``, ``TRACER_ENDPOINT``) does not know where its rows are, and
``summarize()`` says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import sqlite3
import sys
import time
import uuid
from typing import TypeGuard, cast

from . import config, wire
from .logger import SpanContainer
from .recorder import Recorder


def generated_name() -> str:
    """The name of an experiment started without one: ``experiment-<UTC time>-<4 hex>``."""
    return f"experiment-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def experiment_id(project: str, name: str, update: bool) -> str:
    """The id of an experiment started as ``init(project, name, update=update)`` starts it (and
    as ``tracer serve`` registers the reference SDK's): new for every start, or, to continue
    one (``update``), derived from the project and experiment names, so that every start with
    ``update`` and the same names, from any process, continues the same experiment."""
    if update:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tracer:{project}{wire.SEP}{name}"))
    return str(uuid.uuid4())


@dataclasses.dataclass(frozen=True)
class ScoreSummary:
    """One score of an experiment: its mean over the spans that carry it."""

    name: str
    score: float  # the mean, in [0, 1]
    count: int  # spans with a number for this score (a score cleared with None is left out)


@dataclasses.dataclass(frozen=True)
class MetricSummary:
    """One metric of an experiment: its total over the spans that carry it.

    ``duration`` is computed from the root spans' ``metrics.start``/``end`` (seconds, one per
    trace); every other metric (``tokens``, ``prompt_tokens``, ...) is summed over every span
    that logged it.
    """

    name: str
    total: float
    count: int  # spans (traces, for duration) it was summed over
    unit: str = ""

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclasses.dataclass(frozen=True)
class ExperimentSummary:
    """What ``Experiment.summarize()`` returns; ``print()`` it for a readable report."""

    project_name: str
    experiment_name: str
    experiment_id: str
    store: str
    spans: int
    traces: int  # root spans
    errors: int  # spans with an error
    scores: dict[str, ScoreSummary]
    metrics: dict[str, MetricSummary]

    def __str__(self) -> str:
        lines = ["=" * 25 + "SUMMARY" + "=" * 25,
                 f"experiment {self.experiment_name!r} of project {self.project_name!r}: "
                 f"{self.spans} spans in {self.traces} traces, {self.errors} with errors", ""]
        for s in self.scores.values():
            lines.append(f"{s.score * 100:.2f}% {s.name!r} score (mean of {s.count} spans)")
        if self.scores:
            lines.append("")
        for m in self.metrics.values():
            what = "traces" if m.name == "duration" else "spans"
            lines.append(f"{_number(m.total)}{m.unit} {m.name} (total of {m.count} {what}, "
                         f"mean {_number(m.mean)}{m.unit})")
        if self.metrics:
            lines.append("")
        lines.append(f"rows: experiment {self.experiment_id} in {self.store}")
        lines.append(f"  tracer export --experiment {self.experiment_id} --store {self.store}")
        return "\n".join(lines)


class Experiment(SpanContainer):
    """An experiment of a project: get one from ``tracer.init(project, experiment)``.

    ``start_span``, ``log``, ``update_span`` and ``flush`` work as a ``Logger``'s do, into this
    experiment's rows; ``summarize()`` reports on them. Attributes: ``project``, ``name``,
    ``id`` (a UUID, new for every ``init``), ``container``.
    """

    def __init__(self, project: str, name: str, experiment_id: str, recorder: Recorder) -> None:
        super().__init__(project, wire.experiment_container(project, experiment_id, name),
                         recorder)
        self.name = name
        self.id = experiment_id
        # What ``init`` was given for the reference's sake (see ``tracer.init``).
        self.tags: list[str] | None = None
        self.metadata: dict | None = None
        self.description: str | None = None

    def summarize(self, summarize_scores: bool = True,
                  timeout: float | None = 30.0) -> ExperimentSummary:
        """Flush, then summarise this experiment's rows: the number of spans, traces and
        errors, the mean of each score, metric totals (duration, tokens, ...) and where the
        rows are. Every process's rows received by the aggregator before the flush count.

        Raises RuntimeError when the store is not known here (an experiment sending to a
        standalone aggregator by address), and ``tracer.FlushError`` if the flush fails.
        """
        store = self.recorder.store
        if store is None:
            raise RuntimeError(
                f"Experiment.summarize: this process sends to the aggregator at "
                f"{self.recorder.endpoint} and does not know its store; summarise where the "
                f"store is: tracer export --experiment {self.id} --store STORE")
        self.flush(timeout)
        if config.is_postgres(store):
            rows = _exported_rows(store, self.id, timeout)
            store = config.without_password(store)  # (the summary is printed)
        else:
            rows = _stored_rows(store, wire.experiment_store_id(self.id))
        return summarize_rows(rows, self.project, self.name, self.id, store, summarize_scores)

    def __repr__(self) -> str:
        return (f"<Experiment {self.name!r} project={self.project!r} id={self.id} "
                f"endpoint={self.recorder.endpoint!r}>")


def summarize_rows(rows: list[dict], project: str, name: str, experiment_id: str, store: str,
                   summarize_scores: bool = True) -> ExperimentSummary:
    """The summary of an experiment's stored rows (in the underlying format)."""
    scores: dict[str, list[float]] = {}
    totals: dict[str, list[float]] = {}
    durations: list[float] = []
    traces = errors = 0
    for row in rows:
        if row.get("error"):
            errors += 1
        metrics = row.get("metrics")
        if not isinstance(metrics, dict):
            metrics = {}
        if not row.get("span_parents"):
            traces += 1
            start, end = metrics.get("start"), metrics.get("end")
            if _is_number(start) and _is_number(end):
                durations.append(end - start)
        for metric, value in metrics.items():
            if metric not in ("start", "end") and _is_number(value):
                totals.setdefault(metric, []).append(value)
        row_scores = row.get("scores")
        if summarize_scores and isinstance(row_scores, dict):
            for score, value in row_scores.items():
                if _is_number(value):
                    scores.setdefault(score, []).append(value)
    metric_summaries = {}
    if durations:
        metric_summaries["duration"] = MetricSummary("duration", sum(durations), len(durations),
                                                     "s")
    for metric in sorted(totals):
        if metric != "duration" or not durations:  # a logged duration yields to the measured
            metric_summaries[metric] = MetricSummary(metric, sum(totals[metric]),
                                                     len(totals[metric]))
    return ExperimentSummary(
        project_name=project, experiment_name=name, experiment_id=experiment_id, store=store,
        spans=len(rows), traces=traces, errors=errors,
        scores={s: ScoreSummary(s, sum(v) / len(v), len(v)) for s, v in sorted(scores.items())},
        metrics=metric_summaries,
    )


def _stored_rows(store: str, container_id: str) -> list[dict]:
    if not os.path.exists(store):  # nothing was ever committed there
        return []
    conn = sqlite3.connect(pathlib.Path(store).as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        return [cast(dict, wire.unpack_stored(data)) for (data,) in
                conn.execute("SELECT data FROM rows WHERE container = ?", (container_id,))]
    finally:
        conn.close()


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def _exported_rows(store: str, experiment_id: str, timeout: float | None) -> list[dict]:
    """The rows of an experiment in a PostgreSQL store, read by ``tracer export`` in a child
    process (see the module); RuntimeError, naming the store without its password, if it
    fails."""
    import subprocess  # (here: import tracer stays light)

    url, password = config.split_password(store)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    # The child imports ``workers`` from wherever this process found ``tracer``.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "workers.cli", "export", "--experiment", experiment_id,
           "--store", url]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, encoding="utf-8",
                              timeout=max(timeout or 0.0, 60.0), check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"Experiment.summarize: reading {config.without_password(store)} "
                           "took too long") from None
    if proc.returncode != 0:
        raise RuntimeError(f"Experiment.summarize: reading {config.without_password(store)} "
                           f"failed: {proc.stderr.strip()}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line]
    # (--experiment matches a name too: only this experiment's rows count)
    return [row for row in rows if row.get("experiment_id") == experiment_id]
