"""Tracing for third-party libraries: ``wrap_openai`` here, ``tracer.integrations.celery`` for
Celery. Each integration imports its library only when it is used, so that ``import tracer``
never pulls in (or requires) an optional dependency."""

from __future__ import annotations

from typing import TypeVar

C = TypeVar("C")


def wrap_openai(client: C) -> C:
    """Trace every LLM call made through an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client.

    Returns a wrapper that behaves like ``client`` (same methods, same return types) and logs
    each ``chat.completions.create``/``parse``, ``responses.create`` and ``embeddings.create``
    call, streaming or not, as a span of type ``llm``: the messages (or ``input``) as input, the
    other request parameters in metadata, the response as output, and token counts in metrics.
    Spans nest under the current span. Needs the ``openai`` extra (``pip install
    'tracer[openai]'``); see README.md, "LLM calls".
    """
    from .openai import wrap_openai as wrap

    return wrap(client)
