"""Running the scenarios (``tests/compat/scenarios.py``) under the reference SDK and under
tracer, and comparing their rows field by field.

Each side runs every scenario in one fresh interpreter of its own (``run_side`` through
``tests/conftest.py``'s ``python_command``), each scenario logging into a project named after
it, and writes ``{scenario: {"rows": [...]}}`` (or ``{"raised": "..."}``) as JSON to a file
(with the connections the reference side tried, which must be none):

- the reference (as ``pip install braintrust`` installs it: without orjson, see
  ``_reference_runner``): ``braintrust.test_helpers.init_test_logger(project)`` inside
  ``braintrust.logger._internal_with_memory_background_logger()``, so nothing touches the
  network; the rows are what its memory logger's ``pop()`` returns after a flush, that is the
  logged writes merged per row id the way its server merges them (``merge_row_batch``: later
  ``_is_merge`` writes merged into the first), each serialised with ``bt_dumps`` as its HTTP
  logger would upload it;
- tracer: ``tracer.init_logger(project, store=...)``, ``tracer.flush()``, and the rows read
  back from the SQLite store through the real aggregator.

``normalise_pairs`` then makes the two comparable (ids become labels that keep the structure, times
become "present", fields of the hosted service go: each by a rule named below) and ``compare``
lists the field paths that differ. Only the standard library is imported here at the top; each
side imports its SDK in its own interpreter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

# -- the two sides (each in a fresh interpreter) ----------------------------------------------


class _Side:
    """A ``scenarios.Side``: the module under test, the scenario's logger, and ``snapshot``."""

    def __init__(self, bt: Any, logger: Any, snapshot: Callable[[], list[dict]]) -> None:
        self.bt = bt
        self.logger = logger
        self._snapshot = snapshot
        self.snapshot_rows: list[dict] | None = None

    def snapshot(self) -> list[dict]:
        self.snapshot_rows = self._snapshot()
        return self.snapshot_rows


def run_side(side: str, out_path: str, store: str) -> None:
    """Run every scenario under ``side`` ("reference" or "tracer") and write the rows of each
    to ``out_path`` as JSON. ``store`` is tracer's store (unused by the reference)."""
    from .scenarios import SCENARIOS

    network: list[str] = []
    if side == "reference":
        _forbid_network(network)
        runner = _reference_runner()
    elif side == "reference-http":
        _forbid_network(network, allow_loopback=True)
        runner = _reference_http_runner(store)
    else:
        runner = _tracer_runner(store)
    results: dict[str, dict[str, Any]] = {}
    for name, program in SCENARIOS.items():
        try:
            results[name] = {"rows": runner(name, program)}
        except Exception:
            # A scenario one side cannot run is itself a difference: record it and go on.
            results[name] = {"raised": traceback.format_exc(limit=-3)}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"scenarios": results, "network": network}, f)


def _forbid_network(attempts: list[str], allow_loopback: bool = False) -> None:
    """Make every connection of this process fail, noting where it was going (with
    ``allow_loopback``, every connection but to 127.0.0.1: the reference's HTTP side talks to
    ``tracer serve`` there).

    Only for the reference's interpreter (ours talks to its aggregator over a socket): its
    in-memory logger must keep everything in the process, and a connection it tries anyway
    (a login, an upload from a background thread) would be swallowed there, so it is noted
    and the test fails on it.
    """
    import socket

    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(address: Any) -> bool:
        return allow_loopback and isinstance(address, tuple) and address[0] == "127.0.0.1"

    def refuse(sock: socket.socket, address: Any) -> Any:
        if allowed(address):
            return connect(sock, address)
        attempts.append(repr(address))
        raise OSError(f"the differential test's reference side tried to connect to {address!r}")

    def refuse_ex(sock: socket.socket, address: Any) -> Any:
        if allowed(address):
            return connect_ex(sock, address)
        return refuse(sock, address)

    socket.socket.connect = refuse  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = refuse_ex  # type: ignore[method-assign, assignment]


Runner = Callable[[str, Callable[[Any], None]], list[dict]]


def _reference_runner() -> Runner:
    # Rule "the reference as `pip install braintrust` installs it": without orjson, which only
    # its `performance` extra brings. With orjson its stand-ins differ (a datetime is written by
    # orjson, in ISO 8601 with a "T"; without, as str(datetime)), so a machine that happens to
    # have orjson would compare against another reference than CI's fresh venv does. A None in
    # sys.modules makes its `import orjson` fail as if orjson were not installed.
    sys.modules["orjson"] = None  # type: ignore[assignment]
    import braintrust
    from braintrust import logger as bt_logger
    from braintrust.bt_json import bt_dumps
    from braintrust.test_helpers import init_test_logger

    def popped(memory: Any) -> list[dict]:
        braintrust.flush()
        # bt_dumps is how the reference's HTTP logger serialises each row it uploads.
        return [json.loads(bt_dumps(row)) for row in memory.pop()]

    def run(project: str, program: Callable[[Any], None]) -> list[dict]:
        bt_logger._state.reset_parent_state()
        with bt_logger._internal_with_memory_background_logger() as memory:
            side = _Side(braintrust, init_test_logger(project), lambda: popped(memory))
            program(side)
            rows = popped(memory)
        bt_logger._state.reset_parent_state()
        return rows if side.snapshot_rows is None else side.snapshot_rows

    return run


def _reference_http_runner(store: str) -> Runner:
    """The reference SDK's own HTTP logger, logging into ``tracer serve`` (``BRAINTRUST_*``
    in the environment point at it); the rows read back from the server's SQLite store
    (``store``) once the SDK's flush returned (the server answers once they are committed)."""
    # Without orjson, as _reference_runner says why.
    sys.modules["orjson"] = None  # type: ignore[assignment]
    import braintrust
    from braintrust import logger as bt_logger

    from workers.store.sqlite import SQLiteReader

    def stored(project: str) -> list[dict]:
        braintrust.flush()
        with SQLiteReader(store) as reader:
            return list(reader.rows(project=project))

    def run(project: str, program: Callable[[Any], None]) -> list[dict]:
        bt_logger._state.reset_parent_state()
        side = _Side(braintrust, braintrust.init_logger(project=project),
                     lambda: stored(project))
        program(side)
        rows = stored(project)
        bt_logger._state.reset_parent_state()
        return rows if side.snapshot_rows is None else side.snapshot_rows

    return run


def _tracer_runner(store: str) -> Runner:
    import tracer
    from workers.store.sqlite import SQLiteReader

    def stored(project: str) -> list[dict]:
        tracer.flush(timeout=30)
        with SQLiteReader(store) as reader:
            return list(reader.rows(project=project))

    def run(project: str, program: Callable[[Any], None]) -> list[dict]:
        side = _Side(tracer, tracer.init_logger(project, store=store), lambda: stored(project))
        program(side)
        rows = stored(project)
        return rows if side.snapshot_rows is None else side.snapshot_rows

    return run


def run_both(workdir: str, command: Callable[..., list[str]], env: dict[str, str],
             timeout: float = 60) -> tuple[dict, dict]:
    """Run both sides at once, each in a fresh interpreter (``command(run_side, *args)`` is
    ``tests/conftest.py``'s ``python_command``); returns (reference results, tracer results),
    each ``{scenario: {"rows": [...]} or {"raised": "..."}}``. Fails if the reference side
    tried to reach the network."""
    store = os.path.join(workdir, "traces.db")
    results = run_sides(workdir, command, {"reference": (env, store), "tracer": (env, store)},
                        timeout)
    return results["reference"], results["tracer"]


def run_sides(workdir: str, command: Callable[..., list[str]],
              sides: dict[str, tuple[dict[str, str], str]], timeout: float = 60
              ) -> dict[str, dict]:
    """Run the sides named (``run_side``'s: ``{side: (environment, store)}``) at once, each in
    a fresh interpreter; returns each side's results. Fails if a side tried to reach the
    network it may not."""
    procs = {}
    for side, (env, store) in sides.items():
        out = os.path.join(workdir, f"{side}.json")
        cmd = command(run_side, side, out, store)
        procs[side] = (out, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True))
    results = {}
    for side, (out, proc) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise AssertionError(f"the {side} side failed ({proc.returncode}):\n{stderr}")
        with open(out, encoding="utf-8") as f:
            written = json.load(f)
        if written["network"]:
            raise AssertionError(f"the {side} side tried to reach the network: "
                                 f"{written['network']}")
        results[side] = written["scenarios"]
    return results


# -- normalising ------------------------------------------------------------------------------

# Fields that exist only because of where the rows are kept, not because of what was traced:
# each is dropped, for the reason given.
DROPPED_FIELDS: dict[str, str] = {
    "project_id": "the container's id: the hosted service's project id (the reference's test "
                  "logger uses the project name), ours a uuid5 of the name; ids aside",
    "org_id": "the hosted service's organisation; we have none",
    "_xact_id": "the hosted service's transaction id, given when a row is written there",
    "_is_merge": "the write protocol's flag (merge this write into the row, or replace it); a "
                 "stored row no longer carries it",
    "_object_delete": "the write protocol's flag for deleting a row; not a stored field",
    "_merge_paths": "the write protocol's list of paths to replace rather than merge",
    "_parent_id": "the write protocol's older way to name a parent, replaced by span_parents",
    "project_name": "added by our store's reader to name the row's project (the reference's "
                    "row names it by project_id, dropped above)",
}

# Dropped inside span_attributes.
DROPPED_SPAN_ATTRIBUTES: dict[str, str] = {
    "exec_counter": "the reference's per-process counter of started spans, which its server "
                    "uses to order spans started in the same instant; a process-local detail",
}

# Fields holding a time: compared as present or absent, never by value.
TIME_FIELDS = ("created",)
TIME_METRICS = ("start", "end")
PRESENT = "<present>"

# An id that names no row of the scenario (a parent whose row is missing).
NO_ROW = "<a span with no row>"

_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')


def normalise_error(error: Any) -> Any:
    """A traceback string, reduced to the frames of ``scenarios.py`` and its last line.

    Rule: each SDK's traceback also names its own wrapper frames and where it is installed,
    which no user reads the same; the user's frames and the exception are what must agree.
    Anything else (a string without a traceback, a dict) is compared as it is.
    """
    if not isinstance(error, str) or "Traceback (most recent call last):" not in error:
        return error
    lines = error.rstrip("\n").split("\n")
    frames = []
    for line in lines:
        match = _FRAME.match(line)
        if match and os.path.basename(match["file"]) == "scenarios.py":
            frames.append(f"scenarios.py:{match['line']} in {match['func']}")
    return " | ".join([*frames, lines[-1]])


def pair_rows(ref_rows: list[dict], our_rows: list[dict]
              ) -> list[tuple[dict | None, dict | None]]:
    """Rows of the two sides paired: by name where one side's name is found on the other, the
    rest in their order; a row left over is paired with None."""
    def name(row: dict) -> Any:
        return (row.get("span_attributes") or {}).get("name")

    left = list(our_rows)
    pairs: list[tuple[dict | None, dict | None]] = []
    unmatched_ref: list[int] = []
    for ref in ref_rows:
        match = next((i for i, ours in enumerate(left) if name(ours) == name(ref)), None)
        if match is None:
            unmatched_ref.append(len(pairs))
            pairs.append((ref, None))
        else:
            pairs.append((ref, left.pop(match)))
    for index in unmatched_ref:
        if left:
            pairs[index] = (pairs[index][0], left.pop(0))
    pairs += [(None, ours) for ours in left]
    return pairs


def normalise_pairs(pairs: list[tuple[dict | None, dict | None]]
                    ) -> list[tuple[dict | None, dict | None]]:
    """Both sides' rows of one scenario made comparable.

    Ids (rule "ids aside, structure kept"): each pair of rows gets a number, in the reference's
    order; on each side ``id`` becomes ``row<n>`` and ``span_id`` ``span<n>``, a parent in
    ``span_parents`` the ``span<n>`` of its row (``NO_ROW`` when it has none), and
    ``root_span_id`` ``trace<m>``, traces numbered in order of appearance. So a child that
    names the wrong parent, or a span in the wrong trace, still differs.
    """
    out: list[list[dict | None]] = [[None, None] for _ in pairs]
    for side in (0, 1):
        span_label: dict[Any, str] = {}
        for n, pair in enumerate(pairs):
            row = pair[side]
            if row is not None and row.get("span_id") is not None:
                span_label[row["span_id"]] = f"span{n}"
        trace_label: dict[Any, str] = {}
        for n, pair in enumerate(pairs):
            row = pair[side]
            if row is not None:
                out[n][side] = _normalise_row(row, n, span_label, trace_label)
    return [(a, b) for a, b in out]


def _normalise_row(row: dict, n: int, span_label: dict[Any, str],
                   trace_label: dict[Any, str]) -> dict:
    row = json.loads(json.dumps(row))  # a copy, and floats such as NaN as JSON reads them
    for field in DROPPED_FIELDS:
        row.pop(field, None)
    attributes = row.get("span_attributes")
    if isinstance(attributes, dict):
        for field in DROPPED_SPAN_ATTRIBUTES:
            attributes.pop(field, None)
    if "id" in row:
        row["id"] = f"row{n}"
    if row.get("span_id") is not None:
        row["span_id"] = span_label[row["span_id"]]
    if row.get("root_span_id") is not None:
        root = row["root_span_id"]
        row["root_span_id"] = trace_label.setdefault(root, f"trace{len(trace_label)}")
    if isinstance(row.get("span_parents"), list):
        row["span_parents"] = [span_label.get(p, NO_ROW) for p in row["span_parents"]]
    for field in TIME_FIELDS:
        if row.get(field) is not None:
            row[field] = PRESENT
    metrics = row.get("metrics")
    if isinstance(metrics, dict):
        for field in TIME_METRICS:
            if metrics.get(field) is not None:
                metrics[field] = PRESENT
    if "error" in row:
        row["error"] = normalise_error(row["error"])
    return row


# -- comparing --------------------------------------------------------------------------------

ABSENT = "<absent>"
RAISED = "(raised)"  # the path of a scenario that raised on a side
ROW = "(row)"        # the path of a row found on one side only


def _same(a: Any, b: Any) -> bool:
    # Through JSON, so that NaN equals NaN and 1 equals 1.0 as they would once stored.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or a == b


def _diff(path: str, ref: Any, ours: Any, into: dict[str, tuple[Any, Any]]) -> None:
    if isinstance(ref, dict) and isinstance(ours, dict):
        for key in sorted(set(ref) | set(ours)):
            _diff(f"{path}.{key}" if path else key, ref.get(key, ABSENT), ours.get(key, ABSENT),
                  into)
    elif not _same(ref, ours):
        into[path] = (ref, ours)


def compare(ref_result: dict, our_result: dict) -> dict[str, list[tuple[str, Any, Any]]]:
    """The field paths that differ in one scenario, each with its rows' values:
    ``{path: [(row, reference value, our value), ...]}``, ``row`` naming the row (its name on
    the reference's side)."""
    if "raised" in ref_result or "raised" in our_result:
        return {RAISED: [("", ref_result.get("raised"), our_result.get("raised"))]}
    differences: dict[str, list[tuple[str, Any, Any]]] = {}
    for ref, ours in normalise_pairs(pair_rows(ref_result["rows"], our_result["rows"])):
        row = _row_name(ref if ref is not None else ours)
        if ref is None or ours is None:
            differences.setdefault(ROW, []).append((row, ref or ABSENT, ours or ABSENT))
            continue
        found: dict[str, tuple[Any, Any]] = {}
        _diff("", ref, ours, found)
        for path, (a, b) in found.items():
            differences.setdefault(path, []).append((row, a, b))
    return differences


def _row_name(row: dict | None) -> str:
    attributes = (row or {}).get("span_attributes") or {}
    return f"{attributes.get('name')!r} ({row.get('span_id') if row else None})"


def describe(scenario: str, path: str, values: list[tuple[str, Any, Any]]) -> str:
    """One difference, for a failure message or a report."""
    lines = [f"{scenario}: {path}"]
    for row, ref, ours in values:
        lines.append(f"    row {row}: reference {_short(ref)} | tracer {_short(ours)}")
    return "\n".join(lines)


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
