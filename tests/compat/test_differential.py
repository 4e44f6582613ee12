"""The differential test: every scenario of ``scenarios.py`` run under the reference SDK
(``braintrust``'s in-memory logger, no network) and under tracer (the real aggregator and
SQLite store), their rows compared field by field, ids and times aside (``differential.py``).

Every field that differs is either fixed or listed in ``KNOWN_DIFFERENCES`` with its reason,
and every listed difference is named in the README's "Differences from the reference SDK". The
table is kept honest both ways: a difference missing from it fails, and so does an entry that
no longer differs (remove it, and its README line if no scenario has it any more).
"""

from __future__ import annotations

import os
import re

from ..conftest import ROOT, clean_env, python_command
from .differential import (
    NO_ROW,
    compare,
    describe,
    normalise_error,
    normalise_pairs,
    pair_rows,
    run_both,
)
from .scenarios import SCENARIOS

# -- the differences we know of -------------------------------------------------------------

# Deliberate: what we chose to do otherwise, and why.
CONTEXT = (
    "deliberate: we do not record the caller's location (`context`: caller_functionname, "
    "caller_filename, caller_lineno, and the SDK's span_origin) on every span: a frame walk "
    "and a dict on the caller's thread and its packing, 0.4-1.4 us per span (on a per-span "
    "caller cost of ~3.4 us), and 117 more bytes per row (scripts/bench/caller_location_cost.py)")
SELF = (
    "deliberate: a traced method's input leaves out `self`/`cls` (README, \"Using it\"): the "
    "instance is not an argument of the call, and describing it costs a repr per call")
DATETIME = (
    "deliberate: a datetime is stored in ISO 8601 with a \"T\", as the reference writes it when "
    "orjson (its `performance` extra) is installed; the reference as `pip install braintrust` "
    "installs it writes str(datetime), with a space")
ERROR_ORDER = (
    "deliberate: the exception's line first, then the traceback, as the reference's current "
    "source (braintrust-sdk-python 0.7.0, whose tests are our specification) writes it; "
    "braintrust 0.48.1 on PyPI writes the traceback first")
ORIGIN = (
    "deliberate: every span row records the host and process it came from (`origin`: host, "
    "pid), set by the aggregator from the record's sender, so that a fleet's trace in one "
    "server says where each span ran (README, \"Uploading to a trace server\")")
BYTES = (
    "deliberate: bytes are stored as \"<bytes: N bytes b'...'>\" (their length, and the repr "
    "of the first 64 bytes), not as their whole repr: a row stays small")

KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    **{(scenario, "context"): CONTEXT for scenario in SCENARIOS},
    **{(scenario, "origin"): ORIGIN for scenario in SCENARIOS},
    ("traced_method", "input.self"): SELF,
    ("stand_ins", "output.datetime"): DATETIME,
    ("stand_ins", "output.bytes"): BYTES,
    **{(scenario, "error"): ERROR_ORDER
       for scenario in ("traced_function_raises", "traced_generator_raises", "span_body_raises")},
}

README_SECTION = "## Differences from the reference SDK"


# -- the test ---------------------------------------------------------------------------------


def test_every_difference_from_the_reference_sdk_is_known(tmp_path) -> None:
    """Both sides run every scenario (each side in one fresh interpreter, at once); every
    differing field path is in KNOWN_DIFFERENCES, and every entry there still differs."""
    reference, ours = run_both(str(tmp_path), python_command, clean_env())
    assert set(reference) == set(ours) == set(SCENARIOS)

    found: dict[tuple[str, str], list] = {}
    for scenario in SCENARIOS:
        for path, values in compare(reference[scenario], ours[scenario]).items():
            found[(scenario, path)] = values

    unexpected = [describe(s, p, v) for (s, p), v in sorted(found.items())
                  if (s, p) not in KNOWN_DIFFERENCES]
    stale = [f"{s}: {p} ({KNOWN_DIFFERENCES[(s, p)]})"
             for (s, p) in sorted(KNOWN_DIFFERENCES) if (s, p) not in found]
    message = []
    if unexpected:
        message.append("fields that differ from the reference SDK and are not in "
                       "KNOWN_DIFFERENCES (fix them, or list them with a reason):\n"
                       + "\n".join(unexpected))
    if stale:
        message.append("entries of KNOWN_DIFFERENCES that no longer differ (remove them, and "
                       "their README line once no entry has that field):\n  "
                       + "\n  ".join(stale))
    assert not message, "\n\n".join(message)


def readme_section() -> str:
    """The text of the README's "Differences from the reference SDK" section."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.find(README_SECTION + "\n")
    assert start >= 0, f"README.md has no {README_SECTION!r} section"
    end = text.find("\n## ", start + len(README_SECTION))
    return text[start:] if end < 0 else text[start:end]


def test_every_known_difference_is_named_in_the_readme() -> None:
    """Each field path of KNOWN_DIFFERENCES appears, in backquotes, in the README's section
    (the wording of the lines is the README's; only the paths are checked)."""
    section = readme_section()
    named = set(re.findall(r"`([^`]+)`", section))
    missing = sorted({path for _, path in KNOWN_DIFFERENCES} - named)
    assert not missing, (f"README.md's {README_SECTION!r} does not name "
                         f"{', '.join(missing)}: add a line for each")


# -- the harness itself: it must see what it is there to see ----------------------------------


def _row(name: str, span_id: str, root: str, parents: list[str] | None, **fields: object
         ) -> dict:
    return {"id": f"id-{span_id}", "span_id": span_id, "root_span_id": root,
            "span_parents": parents, "span_attributes": {"name": name},
            "metrics": {"start": 1.0, "end": 2.0}, "created": "2024-01-10T00:00:00Z", **fields}


def test_ids_and_times_are_left_aside_but_the_structure_is_compared() -> None:
    ref = [_row("a", "r1", "t1", None), _row("b", "r2", "t1", ["r1"])]
    same = [_row("a", "o1", "o1", None, project_name="p"),
            _row("b", "o2", "o1", ["o1"], created="2030-01-01T00:00:00Z")]
    assert compare({"rows": ref}, {"rows": same}) == {}

    wrong_parent = [_row("a", "o1", "o1", None), _row("b", "o2", "o1", ["o3"])]
    assert compare({"rows": ref}, {"rows": wrong_parent})["span_parents"] == [
        ("'b' (span1)", ["span0"], [NO_ROW])]

    other_trace = [_row("a", "o1", "o1", None), _row("b", "o2", "o2", ["o1"])]
    assert set(compare({"rows": ref}, {"rows": other_trace})) == {"root_span_id"}


def test_rows_pair_by_name_before_order_and_a_missing_row_is_a_difference() -> None:
    ref = [_row("a", "r1", "t1", None), _row("b", "r2", "t1", ["r1"])]
    ours = [_row("b", "o2", "o1", ["o1"])]
    pairs = normalise_pairs(pair_rows(ref, ours))
    assert [(r and r["span_attributes"]["name"], o and o["span_attributes"]["name"])
            for r, o in pairs] == [("a", None), ("b", "b")]
    differences = compare({"rows": ref}, {"rows": ours})
    assert set(differences) == {"(row)", "span_parents"}


def test_a_missing_time_and_a_missing_field_differ_and_nested_fields_are_paths() -> None:
    ref = [_row("a", "r1", "t1", None, metadata={"k": {"x": 1, "y": 2}})]
    ours = [_row("a", "o1", "o1", None, metadata={"k": {"x": 1}}, metrics={"start": 3.0})]
    assert compare({"rows": ref}, {"rows": ours}) == {
        "metadata.k.y": [("'a' (span0)", 2, "<absent>")],
        "metrics.end": [("'a' (span0)", "<present>", "<absent>")],
    }


def test_tracebacks_are_compared_by_the_scenarios_frames_and_the_exception() -> None:
    ours = ('Traceback (most recent call last):\n'
            '  File "/x/tracer/api.py", line 358, in wrapper\n    output = fn()\n'
            '  File "/y/tests/compat/scenarios.py", line 125, in fails\n    raise Boom()\n'
            'tests.compat.scenarios.Boom: failed on 3\n')
    assert normalise_error(ours) == ("scenarios.py:125 in fails | "
                                     "tests.compat.scenarios.Boom: failed on 3")
    assert normalise_error({"type": "Boom"}) == {"type": "Boom"}
    assert normalise_error("plain") == "plain"
