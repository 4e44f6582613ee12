"""``tracer export --format csv``: rows as CSV, one column per top-level field."""

from __future__ import annotations

import csv
import json
from typing import TextIO

# The underlying format's fields, in the order CSV columns show them; any others follow.
CSV_COLUMNS = ("id", "span_id", "root_span_id", "span_parents", "span_attributes", "input",
               "output", "expected", "error", "scores", "metadata", "metrics", "tags", "created",
               "project_id", "project_name", "log_id", "experiment_id", "experiment_name")


def write_csv(rows: list[dict], out: TextIO) -> None:
    """One column per top-level field; strings as they are, other values as JSON text, a
    missing field or null as an empty cell."""
    extra = sorted({key for row in rows for key in row} - set(CSV_COLUMNS))
    columns = list(CSV_COLUMNS) + extra
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)
