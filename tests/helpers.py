"""Waiting for a condition, for the tests and for the programs they run in fresh interpreters
(``tests/programs.py``): only the standard library, so that importing it changes nothing in
the process under test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(condition: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """The first truthy value ``condition()`` returns within ``timeout`` seconds, else the last
    value it returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_until(condition: Callable[[], T | None], timeout: float = 10,
               message: str | Callable[[], str] = "the condition never held",
               interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail with
    ``message`` (or what it returns, when callable) if it has not within ``timeout`` seconds."""
    value = poll(condition, timeout, interval)
    if value is None or not value:
        text = message() if callable(message) else message
        raise AssertionError(f"{text} (waited {timeout:g} s)")
    return value
