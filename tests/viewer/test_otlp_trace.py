"""A trace begun by OpenTelemetry opens in the viewer: its root is the span without parents
(no span's id is the trace's root_span_id), selected when the trace opens; its llm span shows
the conversation and its failed span the error. The rows are what ``POST /v1/traces`` writes
(``workers/otlp.py`` on spans of the real OpenTelemetry SDK), stored by the real writer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from playwright.sync_api import expect

from workers import otlp
from workers.queue import Pending
from workers.rows import Container
from workers.store.sqlite import SQLiteWriter

from .conftest import PageErrors, Server

PROJECT = "otel-viewer"


def write_otel_trace(path: str) -> None:
    """An OpenTelemetry trace (a server span, an llm call, a failed step) into the store."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": PROJECT}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("viewer-test")
    with tracer.start_as_current_span("POST /ask"):
        with tracer.start_as_current_span("chat gpt-4o-mini") as llm:
            llm.set_attributes({
                "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "Capital of France?",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "Paris is the capital of France.",
                "gen_ai.usage.input_tokens": 6, "gen_ai.usage.output_tokens": 7})
        try:
            with tracer.start_as_current_span("store answer"):
                raise RuntimeError("disk quota exceeded")
        except RuntimeError:
            pass
    mapped = otlp.request_rows(encode_spans(memory.get_finished_spans()))
    assert mapped.rejected == 0, mapped.message
    with SQLiteWriter(path) as writer:
        writer.write([Pending((Container(key).id, row["id"]), row, 100, 0, Container(key))
                      for key, row in mapped.rows])


@pytest.fixture(scope="module")
def otel_viewer(tmp_path_factory) -> Iterator[str]:
    """``tracer serve`` over a store holding an OpenTelemetry trace; its URL."""
    path = str(tmp_path_factory.mktemp("otel") / "traces.db")
    write_otel_trace(path)
    log = str(tmp_path_factory.mktemp("serve") / "serve.log")
    with Server(path, log) as server:
        yield server.url


@pytest.fixture
def otel_page(browser, otel_viewer, page_errors: PageErrors) -> Iterator[Any]:
    context = browser.new_context(base_url=otel_viewer, viewport={"width": 1440, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    pg.on("pageerror", lambda exc: page_errors.errors.append(str(exc)))
    yield pg
    context.close()
    assert not page_errors.errors, f"uncaught errors in the page: {page_errors.errors}"


def open_trace(page: Any) -> Any:
    page.goto(f"/p/{PROJECT}/logs")
    page.get_by_role("table", name="Traces").get_by_role("link", name="POST /ask",
                                                         exact=True).click()
    tree = page.get_by_role("tree", name="Span tree")
    expect(tree.get_by_role("treeitem").first).to_be_visible()
    return tree


def detail(page: Any) -> Any:
    return page.get_by_role("complementary", name="Span details")


def test_an_opentelemetry_trace_opens_on_its_span_without_parents(otel_page):
    tree = open_trace(otel_page)

    expect(otel_page.get_by_role("heading", level=1)).to_contain_text("POST /ask")
    expect(detail(otel_page).get_by_role("heading", name="POST /ask")).to_be_visible()
    for name in ("POST /ask", "chat gpt-4o-mini", "store answer"):
        expect(tree.get_by_role("treeitem", name=name)).to_be_visible()


def test_an_opentelemetry_llm_span_shows_its_conversation(otel_page):
    tree = open_trace(otel_page)
    tree.get_by_role("treeitem", name="chat gpt-4o-mini").click()

    chat = detail(otel_page).get_by_role("list", name="Conversation")
    expect(chat.get_by_role("listitem", name="user message")).to_contain_text(
        "Capital of France?")
    expect(chat.get_by_role("listitem", name="assistant message")).to_contain_text(
        "Paris is the capital of France.")


def test_an_opentelemetry_exception_shows_as_the_spans_error(otel_page):
    tree = open_trace(otel_page)
    tree.get_by_role("treeitem", name="store answer").click()

    error = detail(otel_page).get_by_role("region", name="Error")
    expect(error).to_contain_text("RuntimeError: disk quota exceeded")
    expect(error.locator("pre.traceback")).to_contain_text("Traceback (most recent call last)")


def test_the_otel_metadata_is_shown_with_the_span(otel_page):
    open_trace(otel_page)
    metadata = detail(otel_page).get_by_role("region", name="Metadata")
    expect(metadata).to_contain_text("otel")
