"""A scorer that runs locally, called like autoevals' scorers: ``scorer(input=..., output=...,
expected=...)`` returns a ``Score`` with ``name``, ``score`` (in [0, 1]) and ``metadata``."""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any


@dataclasses.dataclass(frozen=True)
class Score:
    name: str
    score: float
    metadata: dict[str, Any]


class Similarity:
    """How much of ``expected`` the ``output`` says: 1.0 when the expected answer appears in
    the output (case, punctuation and spacing aside), else the ratio of difflib's
    ``SequenceMatcher`` between the two. A cheap, deterministic stand-in for an LLM judge."""

    name = "Similarity"

    def __call__(self, input: Any = None, output: Any = None, expected: Any = None) -> Score:
        said, wanted = _normalise(output), _normalise(expected)
        if wanted and wanted in said:
            return Score(self.name, 1.0, {"method": "expected answer contained in the output"})
        ratio = difflib.SequenceMatcher(None, said, wanted).ratio()
        return Score(self.name, round(ratio, 4), {"method": "difflib SequenceMatcher ratio"})


def _normalise(value: Any) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", str(value or "")).lower().split())
