#!/usr/bin/env python
"""What recording the reference's ``context`` field (the caller's function, file and line) on
every span would cost us: the figure behind the ``context`` entry of "Differences from the
reference SDK" in the README.

The reference SDK walks the stack on every span it starts (``braintrust.util.
get_caller_location``: up from its own frames to the first frame outside ``braintrust.``) and
logs ``{"caller_functionname", "caller_filename", "caller_lineno"}`` in the row. Ours would
need at least, per span:

  walk    on the caller's thread: ``sys._getframe(1)`` from the @traced wrapper (the cheapest
          case: one frame up; ``start_span`` inside a helper needs more) and the dict;
  pack    on the flusher's thread, which shares the GIL with the caller: packing a span's
          end record with the dict in it, less packing it without (this file's path as the
          file name: an application's paths are as long);

and the aggregator stores the packed bytes in every row. For comparison, ``reference`` times
the reference's own walk called from four frames of a module named ``braintrust.*`` (as in
``@traced`` -> ``start_span`` -> ``_start_span_impl`` -> ``SpanImpl.__init__``); it needs the
reference SDK (the ``bench`` or ``test`` extra) and is skipped without it.

Compare with the per-span caller cost in docs/benchmarks.md (``caller_cost.py``: ~3.4 us median
per span with input and output captured).

    python scripts/bench/caller_location_cost.py [--calls 200000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from typing import Any

import msgpack


def walk() -> dict[str, Any]:
    """The caller's location, one frame up from the wrapper that calls this."""
    frame = sys._getframe(2)  # 0: walk, 1: the wrapper, 2: the wrapper's caller
    code = frame.f_code
    return {"caller_functionname": code.co_name, "caller_filename": code.co_filename,
            "caller_lineno": frame.f_lineno}


def wrapper() -> dict[str, Any]:
    """Stands for @traced's wrapper."""
    return walk()


# A span-end record as the recorder packs it (tracer/wire.py's span_end): kind, container, trace,
# span, parents, root, row id, name, type, start, end, fields, input.
RECORD = (1, "L\x1fbench", 2**62 + 12345, 2**63 + 77, None, 2**63 + 77, None, "handle",
          "function", 1704873600.123456, 1704873600.123789, {"output": "42"},
          {"question": "What is the answer?"})


def reference_case() -> Callable[[], object] | None:
    """The reference's own walk from four frames of a ``braintrust.*`` module; None without
    the reference SDK."""
    try:
        from braintrust.util import get_caller_location
    except ImportError:
        return None
    namespace: dict[str, Any] = {"__name__": "braintrust.bench",
                                 "get_caller_location": get_caller_location}
    exec("def d(): return get_caller_location()\n"
         "def c(): return d()\n"
         "def b(): return c()\n"
         "def a(): return b()\n", namespace)
    user_call: Callable[[], object] = namespace["a"]
    return user_call


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """The median over ``repeats`` batches of ``calls`` calls, in microseconds per call."""
    fn()  # warm up
    return statistics.median(timeit.repeat(fn, number=calls, repeat=repeats)) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    location = wrapper()
    with_location = (*RECORD, location)
    added_bytes = len(msgpack.packb(with_location)) - len(msgpack.packb(RECORD))
    walk_us = per_call_us(wrapper, args.calls, args.repeats)
    pack_us = (per_call_us(lambda: msgpack.packb(with_location), args.calls, args.repeats)
               - per_call_us(lambda: msgpack.packb(RECORD), args.calls, args.repeats))
    print(f"{'walk':10} {walk_us:6.3f} us per span (caller's thread)")
    print(f"{'pack':10} {pack_us:6.3f} us per span (flusher's thread, same GIL)")
    print(f"{'total':10} {walk_us + pack_us:6.3f} us per span")
    print(f"{'bytes':10} {added_bytes:6d} more packed bytes per record and row "
          f"(file name {len(location['caller_filename'])} characters)")
    reference = reference_case()
    if reference is None:
        print(f"{'reference':10} skipped: the reference SDK is not installed")
    else:
        print(f"{'reference':10} {per_call_us(reference, args.calls, args.repeats):6.3f} us "
              "per span (its own walk, for comparison)")


if __name__ == "__main__":
    main()
