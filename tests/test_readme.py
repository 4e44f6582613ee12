"""The README's complete examples (Python blocks that start with ``import tracer``) run as
written and store their spans. The OpenAI client in them finds the loopback test server through
``OPENAI_BASE_URL``, as it would find the real API."""

from __future__ import annotations

import os
import re

import pytest

from .conftest import ROOT, Store, clean_env, run_python

with open(os.path.join(ROOT, "README.md")) as _readme:
    EXAMPLES = [block for block in re.findall(r"```python\n(.*?)```", _readme.read(), re.S)
                if block.startswith("import tracer")]


def test_the_readme_has_complete_examples():
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_a_readme_example_runs_and_stores_its_spans(tmp_path, example, openai_server):
    env = clean_env(OPENAI_BASE_URL=openai_server.base_url, OPENAI_API_KEY="test-key")
    run_python(example, env=env, cwd=str(tmp_path))
    with Store(str(tmp_path / ".tracer" / "traces.db")) as store:
        stored = list(store.rows())
    assert stored
    if "wrap_openai" in example:
        assert openai_server.requests
        assert any(row["span_attributes"].get("type") == "llm"
                   and row.get("metrics", {}).get("tokens") for row in stored)
