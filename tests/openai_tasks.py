"""Work that calls an OpenAI-compatible server through a wrapped client; importable, so that
spawn workers can unpickle it."""

from __future__ import annotations

import openai

import tracer


def ask(base_url: str, question: str) -> str | None:
    """One chat completion, from whatever process runs this."""
    client = tracer.wrap_openai(openai.OpenAI(base_url=base_url, api_key="test-key",
                                              max_retries=0))
    with client:
        completion = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": question}])
    return completion.choices[0].message.content
