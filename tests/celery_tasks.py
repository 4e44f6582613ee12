"""The Celery app and tasks of the Celery tests (``celery -A tests.celery_tasks worker``).

The worker reads its configuration from the environment the tests give it: the broker
(``TRACER_TEST_BROKER``, also the result backend), the project its own traces go to
(``TRACER_TEST_PROJECT``) and, for a worker with its own aggregator, its store
(``TRACER_TEST_STORE``; without it the worker attaches to ``TRACER_ENDPOINT``). The test process
publishes through ``make_app(broker)``: tasks are found by name, so any app made here can
publish to any worker.
"""

from __future__ import annotations

import os
import time

from celery import Celery

import tracer
from tracer.integrations.celery import instrument

NAME = "tracer_tests"


@tracer.traced
def compute(x: int, y: int) -> int:
    return x + y


@tracer.traced
def check(i: int) -> int:
    return i * 2


def make_app(broker: str, project: str | None = None, store: str | None = None,
             results: bool = True) -> Celery:
    """The tests' app on ``broker`` (also its result backend, unless ``results=False``)."""
    app = Celery(NAME, broker=broker, backend=broker if results else None)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,  # a recycled child takes one task at a time
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=600,
        task_track_started=True,  # lets a test see which tasks a worker has begun
    )

    @app.task(name=f"{NAME}.add", shared=False)
    def add(x: int, y: int) -> int:
        return compute(x, y)

    @app.task(name=f"{NAME}.total", shared=False)
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name=f"{NAME}.fail", shared=False)
    def fail(message: str) -> None:
        raise ValueError(message)

    @app.task(name=f"{NAME}.flaky", shared=False, bind=True, max_retries=3)
    def flaky(self, failures: int) -> int:
        """Fails its first ``failures`` attempts, each retried at once."""
        if self.request.retries < failures:
            raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} failed"),
                             countdown=0)
        return self.request.retries

    @app.task(name=f"{NAME}.work", shared=False)
    def work(i: int) -> int:
        check(i)
        return os.getpid()

    @app.task(name=f"{NAME}.slow", shared=False)
    def slow(i: int, seconds: float) -> int:
        time.sleep(seconds)
        return check(i)

    @app.task(name=f"{NAME}.wait_for", shared=False)
    def wait_for(path: str, timeout: float) -> bool:
        """Run until ``path`` exists (at most ``timeout`` seconds): a long task."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        return os.path.exists(path)

    return instrument(app, project=project, store=store)


app = make_app(os.environ.get("TRACER_TEST_BROKER", "redis://127.0.0.1:6379/0"),
               project=os.environ.get("TRACER_TEST_PROJECT"),
               store=os.environ.get("TRACER_TEST_STORE"))
