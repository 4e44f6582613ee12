"""Tracing for third-party libraries: ``wrap_openai`` and ``patch_openai`` here,
``tracer.integrations.celery`` for Celery. Each integration imports its library only when it is
used, so that ``import tracer`` never pulls in (or requires) an optional dependency."""

from __future__ import annotations

from typing import TypeVar

C = TypeVar("C")


def wrap_openai(client: C) -> C:
    """Trace every LLM call made through an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` client.

    Returns a wrapper that behaves like ``client`` (same methods, same return types) and logs
    each ``chat.completions.create``/``parse``, ``responses.create``/``parse`` and
    ``embeddings.create`` call (also under ``with_raw_response`` and ``with_streaming_response``),
    streaming or not, as a span of type ``llm``: the messages (or ``input``) as input, the other
    request parameters in metadata, the response as output, and token counts in metrics under
    the reference's names (``prompt_tokens``, ``completion_tokens``, ``tokens``). Spans nest
    under the current span. Needs the ``openai`` extra (``pip install 'tracer[openai]'``); see
    README.md, "LLM calls".
    """
    from .openai import wrap_openai as wrap

    return wrap(client)


def patch_openai() -> bool:
    """Trace every ``openai.OpenAI`` and ``openai.AsyncOpenAI`` client made from now on, as
    ``wrap_openai`` does, without wrapping each one.

    Patches the ``__init__`` of the classes ``openai.OpenAI`` and ``openai.AsyncOpenAI`` name now
    (another library's subclasses, if it patched them first: both patches then run), so that
    each new client, and each one derived from it (``with_options``), is traced in place.
    Clients made before the call are not. Idempotent; ``wrap_openai`` on a patched client
    returns it as it is. Returns False when ``openai`` is not installed, else True.
    """
    try:
        from .openai import patch_openai as patch
    except ImportError:
        return False
    return patch()


# The reference's auto_instrument() knows these libraries; we trace only OpenAI (and Celery,
# which is set up per app: tracer.integrations.celery.instrument). The others are reported as
# not instrumented, as the reference reports a library that is not installed.
_UNSUPPORTED = ("anthropic", "litellm", "pydantic_ai", "google_genai", "agno",
                "claude_agent_sdk", "dspy", "adk")


def auto_instrument(*, openai: bool = True, **others: bool) -> dict[str, bool]:
    """Trace every supported library that is installed, in one call (the reference's
    ``auto_instrument``); safe to call again. Returns, for each library asked for, whether it is
    traced now: ``openai`` by ``patch_openai()``; the reference's other libraries (``anthropic``,
    ``litellm``, ``pydantic_ai``, ``google_genai``, ``agno``, ``claude_agent_sdk``, ``dspy``,
    ``adk``) are accepted and always False (no integration here). Any other keyword raises
    TypeError.
    """
    unknown = sorted(set(others) - set(_UNSUPPORTED))
    if unknown:
        raise TypeError(f"auto_instrument: unknown library {unknown[0]!r}; known: openai, "
                        f"{', '.join(_UNSUPPORTED)}")
    results = {"openai": patch_openai()} if openai else {}
    results.update({name: False for name in _UNSUPPORTED if others.get(name, True)})
    return results
