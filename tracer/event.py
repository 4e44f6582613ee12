"""Validation of logged events at the call site.

Errors are raised where the user made them (TypeError for a wrong type, ValueError for a wrong
value), naming the field, and before anything is recorded, so a bad call logs nothing and loses
nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

FIELDS = ("input", "output", "expected", "error", "scores", "metadata", "metrics", "tags")
SPAN_TYPES = ("llm", "score", "function", "eval", "task", "tool")


def check(fields: dict, where: str) -> dict:
    """Validate the event ``fields`` logged by ``where``; returns them, normalised."""
    for key in fields:
        if key not in FIELDS:
            raise TypeError(f"{where}: unknown field {key!r}; expected one of {', '.join(FIELDS)}")
    if "scores" in fields:
        fields["scores"] = check_scores(fields["scores"], where)
    if "metadata" in fields and fields["metadata"] is not None:
        _check_keys(fields["metadata"], f"{where}: metadata")
    if "metrics" in fields and fields["metrics"] is not None:
        _check_keys(fields["metrics"], f"{where}: metrics")
        for name, value in fields["metrics"].items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise TypeError(
                    f"{where}: metrics[{name!r}] must be a number, got {type(value).__name__}"
                )
    if "tags" in fields and fields["tags"] is not None:
        tags = fields["tags"]
        if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
            raise TypeError(f"{where}: tags must be a list of strings, got {type(tags).__name__}")
        for tag in tags:
            if not isinstance(tag, str):
                raise TypeError(f"{where}: tags must be strings, got {tag!r}")
        fields["tags"] = sorted(set(tags))
    return fields


def check_scores(scores: object, where: str) -> dict | None:
    """Scores map names to numbers in [0, 1]; None clears a score."""
    if scores is None:
        return None
    _check_keys(scores, f"{where}: scores")
    assert isinstance(scores, Mapping)  # _check_keys raised otherwise
    out = {}
    for name, value in scores.items():
        if isinstance(value, bool):
            value = 1 if value else 0
        elif value is not None and not isinstance(value, (int, float)):
            raise TypeError(
                f"{where}: scores[{name!r}] must be a number between 0 and 1, "
                f"got {type(value).__name__} {value!r}"
            )
        if value is not None and (math.isnan(value) or not 0 <= value <= 1):
            raise ValueError(f"{where}: scores[{name!r}] = {value!r} is outside [0, 1]")
        out[name] = value
    return out


def check_type(span_type: object, where: str) -> None:
    if span_type is not None and span_type not in SPAN_TYPES:
        raise ValueError(
            f"{where}: type={span_type!r} is not a span type; expected one of "
            f"{', '.join(SPAN_TYPES)}"
        )


def check_name(name: object, where: str) -> None:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{where}: name must be a string, got {type(name).__name__}")


def _check_keys(value: object, what: str) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be strings, got {type(key).__name__} {key!r}")
