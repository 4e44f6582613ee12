"""Programs the compatibility tests run in a fresh interpreter (``run_function`` in
``tests/conftest.py``), where what happens at ``import tracer`` is real."""

from __future__ import annotations

import threading


def traces_a_thread_set_up_by_the_environment() -> None:
    """In project ``instrumented``: a span, and under it (if threads are set up) a span started
    in a plain thread; nothing here calls ``setup_threads()``."""
    import tracer

    tracer.init_logger("instrumented")

    def in_thread() -> None:
        with tracer.start_span("in thread"):
            pass

    with tracer.start_span("parent"):
        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
    tracer.flush()
