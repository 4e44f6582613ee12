"""httpx: requests carry the current span's trace context to the services they call.

    import httpx
    from tracer.integrations.httpx import wrap_httpx

    client = wrap_httpx(httpx.Client())        # or httpx.AsyncClient()

Every request the client sends (redirects included) gets ``traceparent`` and ``tracestate``
for the span current where it is sent (``tracer.propagation.inject``), so that the service it
calls, traced with tracer or with OpenTelemetry, continues the trace under that span. Outside
any span nothing is added. The client opens no span of its own: wrap the call in ``@traced`` or
``start_span`` for one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from .. import propagation

C = TypeVar("C", httpx.Client, httpx.AsyncClient)


def _inject(request: httpx.Request) -> None:
    propagation.inject(request.headers)


async def _ainject(request: httpx.Request) -> None:
    propagation.inject(request.headers)


def wrap_httpx(client: C) -> C:
    """Add the trace context of the current span to every request ``client`` sends (an
    ``httpx.Client`` or ``httpx.AsyncClient``: an event hook on ``request``). Idempotent;
    returns ``client``."""
    if isinstance(client, httpx.AsyncClient):
        hook: Callable[..., Any] = _ainject
    elif isinstance(client, httpx.Client):
        hook = _inject
    else:
        raise TypeError(f"wrap_httpx: expected an httpx.Client or httpx.AsyncClient, got "
                        f"{type(client).__name__}")
    hooks: dict[str, list[Callable[..., Any]]] = dict(client.event_hooks)
    if hook not in hooks["request"]:
        hooks["request"] = [*hooks["request"], hook]
        client.event_hooks = hooks
    return client
