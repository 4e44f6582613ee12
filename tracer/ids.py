"""Span and trace ids: 64-bit integers from a private random generator.

A private ``random.Random`` (seeded from os.urandom) rather than the module-level one, so that a
user's ``random.seed(0)`` in every pool worker cannot make workers draw the same ids; it is
reseeded in every fork child for the same reason. Drawing 64 bits costs ~0.1 us, against ~2 us
for uuid4; the aggregator formats ``trace:span`` as a UUID-shaped string.
"""

from __future__ import annotations

import random

from . import lifecycle

_rng = random.Random()
_MS_BITS = (1 << 40) - 1


def new_id() -> int:
    """A random, non-zero 64-bit id."""
    return _rng.getrandbits(64) or 1


def new_trace_id(now: float) -> int:
    """A trace id that sorts by creation time (``now``, epoch seconds): 40 bits of milliseconds
    (wrapping every ~35 years), then 24 random bits.

    Rows are keyed by ``trace:span``, so time-ordered trace ids make the store's inserts land
    together at the end of its indexes instead of all over them: about 3x fewer pages written
    per commit (measured with the SQLite sink). Two traces that draw the same trace id are still
    told apart by their 64-bit span ids.
    """
    return ((int(now * 1000) & _MS_BITS) << 24) | _rng.getrandbits(24)


def _reseed_after_fork() -> None:
    _rng.seed()


lifecycle.on_fork_child(_reseed_after_fork)
