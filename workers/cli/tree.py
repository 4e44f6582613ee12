"""``tracer show`` and ``tracer demo``'s output: a trace as an indented tree of its spans, with
durations, errors and attachments."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from ..store import StoreReader
from .attachments import span_lines

# Levels drawn indented. A span deeper than this is drawn at this indentation, its level
# written before it, so that a chain thousands of levels deep stays readable (and its lines do
# not grow with the depth).
MAX_INDENT = 64


def print_tree(store: StoreReader, root_span_id: str) -> bool:
    """Print one trace as an indented tree; False if it has no rows. Any depth is drawn (the
    tree is walked with a stack of its own, not by recursion)."""
    rows = list(store.rows(root_span_id=root_span_id))
    return print_rows(rows, root_span_id, extra_lines=lambda row: span_lines(store, row))


def print_rows(rows: list[dict], root_span_id: str,
               extra_lines: Callable[[dict], list[str]] | None = None,
               label: Callable[[dict], str] | None = None) -> bool:
    """``print_tree`` for rows got elsewhere (a server's API): ``extra_lines`` gives the lines
    drawn under a span (its attachments), ``label`` a column drawn left of each span (where it
    ran). False if there are no rows."""
    if not rows:
        return False
    labels = {row["span_id"]: label(row) for row in rows} if label is not None else {}
    width = max((len(text) for text in labels.values()), default=0)

    def column(row: dict | None) -> str:
        if label is None:
            return ""
        return (labels.get(row["span_id"], "") if row is not None else "").ljust(width) + "  "
    by_span = {row["span_id"]: row for row in rows}
    children = defaultdict(list)
    tops = []
    for row in rows:
        parents = [p for p in (row.get("span_parents") or []) if p in by_span]
        if parents:
            children[parents[0]].append(row)
        else:
            tops.append(row)
    errors = sum(1 for row in rows if row.get("error"))
    print(f"trace {root_span_id}: {len(rows)} spans, {errors} with errors")

    # (row, prefix, last child of its parent, top of the tree, level), the next to draw last
    stack = [(top, "", True, True, 0) for top in reversed(sorted(tops, key=_start))]
    drawn: set[str] = set()  # a span is drawn once, even where parents make a cycle
    while stack:
        row, prefix, last, top, level = stack.pop()
        if row["span_id"] in drawn:
            continue
        drawn.add(row["span_id"])
        branch = "" if top else ("└─ " if last else "├─ ")
        text = describe_span(row)
        if level > MAX_INDENT:
            text = f"[level {level}] {text}"
        # A span with several parents is drawn under the first; the others are named.
        others = [by_span[p] for p in (row.get("span_parents") or [])[1:] if p in by_span]
        if others:
            names = ", ".join(repr((o.get("span_attributes") or {}).get("name")) for o in others)
            text += f"  (also under {names})"
        print(column(row) + prefix + branch + text)
        kids = sorted(children[row["span_id"]], key=_start)
        extension = "" if top else ("   " if last else "│  ")
        for line in (extra_lines(row) if extra_lines is not None else []):
            print(column(None) + prefix + extension + ("│  " if kids else "   ") + line)
        if kids and level == MAX_INDENT:
            print(column(None) + prefix + f"┆  deeper than {MAX_INDENT} levels: drawn at this "
                  "indentation, each with its level")
        inner = prefix + extension if level < MAX_INDENT else prefix
        stack += [(kid, inner, i == len(kids) - 1, False, level + 1)
                  for i, kid in reversed(list(enumerate(kids)))]
    return True


def describe_span(row: dict) -> str:
    attrs = row.get("span_attributes") or {}
    text = attrs.get("name") or "(unnamed)"
    if attrs.get("type"):
        text += f" [{attrs['type']}]"
    metrics = row.get("metrics") or {}
    start, end = metrics.get("start"), metrics.get("end")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        text += f"  {_duration(end - start)}"
    elif start is not None:
        text += "  (not ended)"
    # The reference's wrappers store the total as ``tokens``; its guide for spans logged by hand
    # also shows ``total_tokens``.
    tokens = metrics.get("tokens", metrics.get("total_tokens"))
    if tokens is not None:
        text += f"  {tokens} tokens"
    error = row.get("error")
    if error:
        if isinstance(error, dict):
            error = f"{error.get('type', 'error')}: {error.get('message', '')}"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "error"
        text += f"  ✗ {first_line[:120]}"
    return text


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _start(row: dict) -> float:
    start = (row.get("metrics") or {}).get("start")
    return start if isinstance(start, (int, float)) else 0.0
