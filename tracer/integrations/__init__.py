"""Integrations with other libraries. Each lives in its own module and imports its library only
when that module is imported (``import tracer`` never does)."""
