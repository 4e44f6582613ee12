"""A masking function and traced work that pool workers started with spawn import by name
(``tests/compat/test_masking.py``): only what pickles by reference works across spawn."""

from __future__ import annotations

from typing import Any

import tracer


def hide_api_keys(data: Any) -> Any:
    """Every ``api_key`` value, at any depth of dicts and lists, becomes ``"HIDDEN"``."""
    if isinstance(data, dict):
        return {k: "HIDDEN" if k == "api_key" else hide_api_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [hide_api_keys(item) for item in data]
    return data


@tracer.traced
def call_service(settings: dict) -> dict:
    """A traced task whose input and output carry an api_key."""
    return {"status": "ok", "api_key": settings["api_key"]}
