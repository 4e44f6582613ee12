"""W3C trace context in headers: tracer.propagation's inject and extract (docs/interop.md)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tracer import api, propagation, slug, w3c, wire
from tracer.context import current, scoped_parent, state
from tracer.span import NOOP_SPAN, RemoteSpan, Span

CONTAINER = wire.logs_container("shop")
TRACE, SPAN, ROOT = 0x0123456789ABCDEF, 0x1111222233334444, 0x5555666677778888


def a_span(container: str = CONTAINER, row_id: str | None = None) -> Span:
    """A span that only names itself (inject reads its ids and slug; nothing is recorded)."""
    span = RemoteSpan(None, slug.SpanRef(container, TRACE, SPAN, ROOT, row_id))  # type: ignore
    return span


class _Logger:
    def __init__(self, project: str) -> None:
        self.container = wire.logs_container(project)


@pytest.fixture
def no_logger(monkeypatch) -> Iterator[None]:
    """No logger anywhere: neither process-wide nor in this context."""
    monkeypatch.setattr(state, "logger", None)
    monkeypatch.setattr(api, "_inherited", None)
    token = scoped_parent.set(None)
    yield
    scoped_parent.reset(token)


@pytest.fixture
def logger_of_project_billing() -> Iterator[None]:
    token = scoped_parent.set((_Logger("billing"), None))
    yield
    scoped_parent.reset(token)


def test_inject_writes_the_spans_w3c_ids_in_traceparent() -> None:
    headers: dict[str, str] = {}
    propagation.inject(headers, a_span())
    trace_id, span_id = w3c.to_w3c(TRACE, SPAN, ROOT)
    assert headers["traceparent"] == f"00-{trace_id:032x}-{span_id:016x}-01"


def test_inject_writes_the_spans_slug_in_tracestate() -> None:
    headers: dict[str, str] = {}
    span = a_span()
    propagation.inject(headers, span)
    assert headers["tracestate"] == f"tracer={span.export()}"


def test_inject_uses_the_current_span_by_default() -> None:
    span = a_span()
    token = current.set(span)
    try:
        headers: dict[str, str] = {}
        propagation.inject(headers)
    finally:
        current.reset(token)
    assert headers["tracestate"] == f"tracer={span.export()}"


def test_inject_writes_nothing_without_a_current_span() -> None:
    token = current.set(None)
    try:
        headers = {"accept": "*/*"}
        propagation.inject(headers)
    finally:
        current.reset(token)
    assert headers == {"accept": "*/*"}


def test_inject_writes_nothing_for_a_noop_span() -> None:
    headers: dict[str, str] = {}
    propagation.inject(headers, NOOP_SPAN)
    assert headers == {}


def test_inject_refuses_what_is_not_a_span() -> None:
    with pytest.raises(TypeError, match="span must be a tracer Span"):
        propagation.inject({}, "tr1.abc")  # type: ignore[arg-type]


def test_inject_keeps_other_vendors_entries_after_ours() -> None:
    headers = {"tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"}
    span = a_span()
    propagation.inject(headers, span)
    assert headers["tracestate"] == (f"tracer={span.export()},congo=t61rcWkgMzE,"
                                     "rojo=00f067aa0ba902b7")


def test_inject_replaces_our_previous_entry_and_headers_of_any_case() -> None:
    headers = {"Tracestate": "tracer=tr1.old,rojo=1", "TraceParent": "00-old"}
    span = a_span()
    propagation.inject(headers, span)
    assert headers == {"traceparent": headers["traceparent"],
                       "tracestate": f"tracer={span.export()},rojo=1"}


def test_inject_keeps_tracestate_to_32_entries() -> None:
    headers = {"tracestate": ",".join(f"v{i}=x" for i in range(40))}
    propagation.inject(headers, a_span())
    members = headers["tracestate"].split(",")
    assert len(members) == 32
    assert members[0].startswith("tracer=") and members[1:] == [f"v{i}=x" for i in range(31)]


def test_inject_keeps_tracestate_to_512_characters_dropping_long_entries_first() -> None:
    long = "big=" + "y" * 200
    headers = {"tracestate": ",".join([long] + [f"v{i}=" + "x" * 40 for i in range(12)])}
    propagation.inject(headers, a_span())
    state = headers["tracestate"]
    assert len(state) <= 512
    assert "big=" not in state and state.startswith("tracer=") and "v0=" in state


def test_a_slug_too_long_for_tracestate_is_left_out_and_traceparent_still_sent() -> None:
    headers = {"tracestate": "rojo=1"}
    propagation.inject(headers, a_span(wire.logs_container("p" * 300)))
    assert headers["tracestate"] == "rojo=1"
    assert w3c.parse_traceparent(headers["traceparent"]) is not None


def test_extract_gives_back_the_injected_spans_slug() -> None:
    span = a_span(row_id="my-row")
    headers: dict[str, str] = {}
    propagation.inject(headers, span)
    assert propagation.extract(headers) == span.export()


def test_extract_reads_headers_of_any_case() -> None:
    span = a_span()
    headers: dict[str, str] = {}
    propagation.inject(headers, span)
    assert propagation.extract({k.upper(): v for k, v in headers.items()}) == span.export()


def test_a_traceparent_alone_continues_in_the_current_loggers_project(
        logger_of_project_billing: None) -> None:
    trace_id, span_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    parent = propagation.extract({"traceparent": w3c.format_traceparent(trace_id, span_id)})
    assert parent is not None
    ref = slug.decode(parent)
    assert ref.container == wire.logs_container("billing")
    assert (ref.trace, ref.span, ref.root) == w3c.from_w3c(trace_id, span_id)


def test_a_traceparent_alone_without_a_logger_continues_in_the_default_project(
        no_logger: None) -> None:
    parent = propagation.extract(
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert parent is not None
    assert slug.decode(parent).container == wire.logs_container("default")


def test_a_slug_of_another_span_of_the_trace_gives_its_container_and_traceparent_the_span(
        logger_of_project_billing: None) -> None:
    # An OpenTelemetry service in between forwarded our tracestate and sent its own span.
    ours = a_span()
    trace_id, _ = w3c.to_w3c(TRACE, SPAN, ROOT)
    headers = {"traceparent": w3c.format_traceparent(trace_id, 0xABC),
               "tracestate": f"tracer={ours.export()}"}
    ref = slug.decode(propagation.extract(headers) or "")
    assert (ref.container, ref.trace, ref.span, ref.root) == (CONTAINER, TRACE, 0xABC, ROOT)


def test_a_slug_of_another_trace_is_ignored(logger_of_project_billing: None) -> None:
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
               "tracestate": f"tracer={a_span().export()}"}
    ref = slug.decode(propagation.extract(headers) or "")
    assert ref.container == wire.logs_container("billing")
    assert ref.span == 0x00F067AA0BA902B7


def test_a_trace_id_whose_high_half_is_zero_is_not_continued() -> None:
    # 64-bit trace ids padded with zeros (older tracers): trace 0 is no id of ours.
    assert propagation.extract(
        {"traceparent": "00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-01"}) is None


class _Exploding(dict):
    def get(self, key, default=None):
        raise RuntimeError("boom")


@pytest.mark.parametrize("headers", [
    {}, {"traceparent": ""}, {"traceparent": "garbage"}, {"traceparent": 42},
    {"traceparent": "00-" + "a" * 100_000}, {"traceparent": None},
    {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"},
    {"tracestate": "tracer=tr1.AAAA"}, None, 42, "traceparent", [("traceparent", "x")],
    _Exploding(),
], ids=repr)
def test_headers_without_a_valid_traceparent_give_none(headers: object) -> None:
    assert propagation.extract(headers) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("tracestate", [
    "tracer=", "tracer=tr1.", "tracer=tr1.!!!!", "tracer=tr1." + "A" * 5000,
    "tracer=" + "x" * 100_000, ",,,,", "=" * 10_000, "tracer=tr1.kwA", 17,
])
def test_a_bad_tracestate_is_ignored_and_traceparent_still_read(tracestate: object,
                                                                 no_logger: None) -> None:
    parent = propagation.extract(
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
         "tracestate": tracestate})
    assert parent is not None
    assert slug.decode(parent).container == wire.logs_container("default")


def test_extract_never_raises_on_random_headers() -> None:
    rng = random.Random(20)
    alphabet = "0123456789abcdef-=,; tracerTR1.\x00\xff"
    valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for _ in range(2000):
        def text() -> str:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(80)))
        headers = {"traceparent": rng.choice([valid, text(), valid[:rng.randrange(55)]]),
                   "tracestate": text()}
        result = propagation.extract(headers)
        assert result is None or slug.decode(result)
