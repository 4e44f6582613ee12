"""Where the uploader's batches go: the sinks an aggregator's configuration gives.

- a store only (``--store``; SQLite or PostgreSQL): its writer;
- a trace server only (``--api-url``): ``SpoolingWriter(HttpWriter)`` (``workers.spool``,
  ``workers.http_sink``), or the bare ``HttpWriter`` with ``TRACER_SPOOL_MAX_BYTES=0``;
- both (an API URL and ``TRACER_STORE``/``--store``): ``TeeWriter(store, server)``: a batch
  counts as committed once both have it (a failure of either fails the write, which the
  uploader retries whole: merges are idempotent, so the one that had it changes nothing).
- and, with ``TRACER_OTLP_ENDPOINT``, an OTLP receiver as well (``TeeWriter(<the above>,
  otlp)``), or alone (``TRACER_OTLP_ONLY``): ``EndedSpans(SpoolingWriter(OtlpWriter))``
  (``workers.otlp_sink``), the spool of its own (``otlp_spool_dir``).

httpx is imported only here, and only when an API URL or an OTLP endpoint is given;
opentelemetry-proto only for an OTLP endpoint.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tracer import config
from tracer.config import Settings

from .spool import Spool, SpoolingWriter

if TYPE_CHECKING:
    from .http_sink import HttpWriter
from .store import RowUpdate, StoreWriter, open_store


@dataclass
class Sinks:
    """What ``open_sinks`` made: ``writer`` for the uploader, the ``spooling`` writer inside it
    (for its drain thread and ``tracer stats``), and the ``local`` store's writer, if any."""

    writer: StoreWriter
    spooling: SpoolingWriter | None
    local: StoreWriter | None
    #: the OTLP exporter's spool (``TRACER_OTLP_ENDPOINT`` with a spool), drained by its thread
    otlp_spooling: SpoolingWriter | None = None


def http_writer(api_url: str, api_key: str | None, settings: Settings) -> HttpWriter:
    """A new ``HttpWriter`` for the server at ``api_url`` (one per thread that uses it)."""
    from .http_sink import HttpWriter  # httpx: only in an aggregator that uploads

    return HttpWriter(api_url, api_key, ca_bundle=settings.ca_bundle,
                      max_request_size=settings.max_request_size)


def spool_dir(api_url: str, settings: Settings) -> str:
    """The spool's directory: ``TRACER_SPOOL_DIR``, else ``spool/`` in the server's directory
    (``config.api_local_path``), whether or not a local store is kept too: a spool holds one
    server's batches."""
    if settings.spool_dir:
        return settings.spool_dir
    return os.path.join(os.path.dirname(config.api_local_path(api_url)), "spool")


def otlp_spool_dir(endpoint: str, settings: Settings) -> str:
    """The OTLP exporter's spool: ``TRACER_SPOOL_DIR`` (its segments name their destination,
    so that each destination drains only its own), else ``spool/`` in the receiver's
    directory, ``~/.tracer/otlp/<host>-<port>/`` (``config.otlp_local_path``)."""
    if settings.spool_dir:
        return settings.spool_dir
    return os.path.join(os.path.dirname(config.otlp_local_path(endpoint)), "spool")


def otlp_sink(settings: Settings, counters: Counter) -> tuple[StoreWriter, SpoolingWriter | None]:
    """The OTLP exporter for ``TRACER_OTLP_ENDPOINT``: ``EndedSpans(SpoolingWriter(OtlpWriter))``
    (no spool with ``TRACER_SPOOL_MAX_BYTES=0``), and its spooling writer."""
    from .otlp_sink import EndedSpans, OtlpWriter, SpanAssembler  # httpx, opentelemetry-proto

    endpoint = settings.otlp_endpoint
    assert endpoint is not None
    exporter: StoreWriter = OtlpWriter(
        endpoint, settings.otlp_headers, service_name=settings.otlp_service_name,
        ca_bundle=settings.ca_bundle, max_request_size=settings.max_request_size,
        counters=counters)
    spooling = None
    if settings.spool_max_bytes:
        spooling = SpoolingWriter(exporter, Spool(otlp_spool_dir(endpoint, settings),
                                                  config.otlp_traces_url(endpoint),
                                                  settings.spool_max_bytes),
                                  counters, settings.failed_payloads_dir)
        exporter = spooling
    return EndedSpans(exporter, SpanAssembler(counters)), spooling


def open_sinks(store: str | None, api_url: str | None, api_key: str | None, settings: Settings,
               counters: Counter) -> Sinks:
    """The sinks for a store (None: none), a server (None: none), or both; and an OTLP
    receiver besides (or alone) when ``settings.otlp_endpoint`` is set."""
    local = open_store(store) if store is not None else None
    writer: StoreWriter | None = local
    spooling = None
    if api_url is not None:
        remote: StoreWriter = http_writer(api_url, api_key, settings)
        if settings.spool_max_bytes:
            spooling = SpoolingWriter(remote, Spool(spool_dir(api_url, settings), api_url,
                                                    settings.spool_max_bytes),
                                      counters, settings.failed_payloads_dir)
            remote = spooling
        writer = remote if writer is None else TeeWriter(writer, remote)
    otlp_spooling = None
    if settings.otlp_endpoint is not None:
        otlp, otlp_spooling = otlp_sink(settings, counters)
        writer = otlp if writer is None else TeeWriter(writer, otlp)
    if writer is None:
        raise ValueError("an aggregator needs a store, an API URL, an OTLP endpoint, or some "
                         "of them")
    return Sinks(writer, spooling, local, otlp_spooling)


class TeeWriter(StoreWriter):
    """Writes each batch to ``first`` (the local store), then to ``second`` (the server):
    committed once both have it. Which one failed decides what a failure is (``store_failed``,
    ``retry_after``). Containers, experiments and imports are the local store's."""

    def __init__(self, first: StoreWriter, second: StoreWriter) -> None:
        self.first = first
        self.second = second
        self.location = f"{first.location} and {second.location}"
        self._failed: StoreWriter = first  # the writer whose exception is being asked about

    @property
    def on_replaced(self) -> Callable[[str, int], None] | None:
        return self.first.on_replaced

    @on_replaced.setter
    def on_replaced(self, callback: Callable[[str, int], None] | None) -> None:
        self.first.on_replaced = callback

    def store_failed(self, exc: BaseException) -> bool:
        return self._failed.store_failed(exc)

    def retry_after(self, exc: BaseException) -> float | None:
        return self._failed.retry_after(exc)

    def schema_version(self) -> int:
        return self.first.schema_version()

    def _both(self, call: Callable[[StoreWriter], object]) -> None:
        for writer in (self.first, self.second):
            try:
                call(writer)
            except Exception:
                self._failed = writer
                raise

    def write(self, batch: Sequence[RowUpdate]) -> None:
        self._both(lambda w: w.write(batch))

    def record_run(self, run_id: str, info: dict, counters: dict, ended: bool = False) -> None:
        self._both(lambda w: w.record_run(run_id, info, counters, ended))

    def record_attachment(self, key: str, *, sha256: str | None, size: int | None,
                          filename: str | None, content_type: str | None, error: str | None,
                          source: str, logged: float | None) -> None:
        self._both(lambda w: w.record_attachment(
            key, sha256=sha256, size=size, filename=filename, content_type=content_type,
            error=error, source=source, logged=logged))

    def find_experiment(self, project_name: str, experiment_name: str) -> str | None:
        return self.first.find_experiment(project_name, experiment_name)

    def import_containers(self, containers: Sequence[dict]) -> None:
        self.first.import_containers(containers)

    def import_run(self, run: dict) -> None:
        self.first.import_run(run)

    def close(self) -> None:
        try:
            self.first.close()
        finally:
            self.second.close()
