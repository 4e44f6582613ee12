"""Two experiments compared, row by row: what ``StoreReader.compare_experiments`` returns, from
the root rows of each (backend-independent)."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from typing import Any


def _input_key(row: dict) -> str:
    """Inputs are paired when they are equal as JSON (keys in any order)."""
    return json.dumps(row.get("input"), sort_keys=True, default=repr)


def score_means(scores: dict[str, list[float]]) -> dict[str, float]:
    """``{name: [sum, count]}`` to ``{name: mean}``."""
    return {name: total / count for name, (total, count) in scores.items() if count}


def compare(a_info: dict, b_info: dict, a_rows: list[dict], b_rows: list[dict],
            a_scores: dict[str, float], b_scores: dict[str, float]) -> dict:
    """Pair the root rows of ``b`` with those of ``a`` (each list in the order they started;
    each row ``root_span_id``, ``name``, ``input``, ``output``, ``scores``): by input first,
    then by name among the rows left; the rest stand alone. Returns the comparison as
    ``StoreReader.compare_experiments`` describes it."""
    pairs: list[tuple[str | None, dict | None, dict | None]] = []
    by_input: dict[str, deque[int]] = defaultdict(deque)
    for i, row in enumerate(b_rows):
        by_input[_input_key(row)].append(i)
    taken: set[int] = set()
    matched_a: dict[int, tuple[str, int]] = {}
    for i, row in enumerate(a_rows):
        queue = by_input.get(_input_key(row))
        if queue:
            j = queue.popleft()
            taken.add(j)
            matched_a[i] = ("input", j)
    by_name: dict[Any, deque[int]] = defaultdict(deque)
    for j, row in enumerate(b_rows):
        if j not in taken:
            by_name[row.get("name")].append(j)
    for i, row in enumerate(a_rows):
        if i in matched_a:
            continue
        queue = by_name.get(row.get("name"))
        if queue:
            j = queue.popleft()
            taken.add(j)
            matched_a[i] = ("name", j)
    for i, row in enumerate(a_rows):
        if i in matched_a:
            how, j = matched_a[i]
            pairs.append((how, row, b_rows[j]))
        else:
            pairs.append((None, row, None))
    pairs += [(None, None, row) for j, row in enumerate(b_rows) if j not in taken]

    names = sorted(set(a_scores) | set(b_scores))
    return {
        "a": a_info,
        "b": b_info,
        "scores": {name: {"a": a_scores.get(name), "b": b_scores.get(name),
                          "delta": (b_scores[name] - a_scores[name]
                                    if name in a_scores and name in b_scores else None)}
                   for name in names},
        "rows": [_pair(how, a, b) for how, a, b in pairs],
    }


def _pair(how: str | None, a: dict | None, b: dict | None) -> dict:
    deltas: dict[str, float] = {}
    if a is None:
        status = "only_b"
    elif b is None:
        status = "only_a"
    else:
        a_scores, b_scores = a.get("scores") or {}, b.get("scores") or {}
        deltas = {name: b_scores[name] - a_scores[name] for name in sorted(a_scores)
                  if name in b_scores}
        if any(d < 0 for d in deltas.values()):
            status = "regression"
        elif any(d > 0 for d in deltas.values()):
            status = "improvement"
        else:
            status = "same"
    return {"match": how, "a": a, "b": b, "deltas": deltas, "status": status}
