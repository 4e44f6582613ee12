"""Work that logs attachments, importable so that spawn and fork pool workers can run it."""

from __future__ import annotations

import tracer


def log_bytes(content: bytes) -> str:
    """Log ``content`` as an attachment in a span of this process; returns its key."""
    attachment = tracer.Attachment(content, filename="from-worker.bin")
    with tracer.start_span("worker attachment") as span:
        span.log(output={"file": attachment})
    return attachment.key
