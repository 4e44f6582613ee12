"""requests: requests carry the current span's trace context to the services they call.

    import requests
    from tracer.integrations.requests import wrap_requests

    session = wrap_requests(requests.Session())

Every request the session sends (redirects included) gets ``traceparent`` and ``tracestate``
for the span current where it is sent (``tracer.propagation.inject``), so that the service it
calls, traced with tracer or with OpenTelemetry, continues the trace under that span. Outside
any span nothing is added. The session opens no span of its own: wrap the call in ``@traced``
or ``start_span`` for one. ``requests.get()`` and friends use a session of their own each time:
call through a wrapped session.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

import requests

from .. import propagation

S = TypeVar("S", bound=requests.Session)


def wrap_requests(session: S) -> S:
    """Add the trace context of the current span to every request ``session`` sends (its
    ``send``, through which requests and redirects go, wrapped on this session only).
    Idempotent; returns ``session``."""
    if not isinstance(session, requests.Session):
        raise TypeError(f"wrap_requests: expected a requests.Session, got "
                        f"{type(session).__name__}")
    send = session.send
    if getattr(send, "_tracer_injects", False):
        return session

    @functools.wraps(send)
    def send_with_context(request: requests.PreparedRequest, **kwargs: Any) -> Any:
        propagation.inject(request.headers)
        return send(request, **kwargs)

    send_with_context._tracer_injects = True  # type: ignore[attr-defined]
    session.send = send_with_context  # type: ignore[method-assign]
    return session
