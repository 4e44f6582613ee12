"""The OTLP out variables (``TRACER_OTLP_*`` in ``tracer.config``): read and checked together,
headers read as ``OTEL_EXPORTER_OTLP_HEADERS`` has them, and never a header's value in an
error. No process, no socket."""

from __future__ import annotations

import pytest

from tracer import config

SECRET = "s3cr3t-t0ken"


def load(**env: str) -> config.Settings:
    return config.load({f"TRACER_{k}": v for k, v in env.items()})


def test_headers_are_name_value_pairs_with_percent_decoded_values() -> None:
    found = load(OTLP_ENDPOINT="https://otel.example:4318",
                 OTLP_HEADERS=f"Authorization=Bearer%20{SECRET} , x-tenant=a%2Cb%3Dc,")
    assert found.otlp_headers == {"Authorization": f"Bearer {SECRET}", "x-tenant": "a,b=c"}


@pytest.mark.parametrize("text", [
    SECRET,  # no name=
    f"bad name={SECRET}",  # not a header name
    f"x-key={SECRET}%0A",  # a line break in the value
    f"x-key={SECRET}%C3%A9",  # not ASCII
    f"Content-Type={SECRET}",  # the exporter's own
    f"x-key={SECRET},X-Key={SECRET}",  # twice
])
def test_a_malformed_header_is_refused_without_showing_its_value(text: str) -> None:
    with pytest.raises(ValueError, match="TRACER_OTLP_HEADERS") as caught:
        load(OTLP_ENDPOINT="https://otel.example", OTLP_HEADERS=text)
    assert SECRET not in str(caught.value)


def test_headers_without_an_endpoint_are_refused() -> None:
    with pytest.raises(ValueError, match="TRACER_OTLP_ENDPOINT is not"):
        load(OTLP_HEADERS="x-key=1")


def test_an_endpoint_with_credentials_in_it_is_refused_without_showing_them() -> None:
    with pytest.raises(ValueError, match="TRACER_OTLP_HEADERS instead") as caught:
        load(OTLP_ENDPOINT=f"https://user:{SECRET}@otel.example")
    assert SECRET not in str(caught.value)


def test_plain_http_to_another_host_with_headers_needs_the_insecure_switch() -> None:
    with pytest.raises(ValueError, match="TRACER_OTLP_INSECURE_HTTP"):
        load(OTLP_ENDPOINT="http://collector:4318", OTLP_HEADERS=f"x-key={SECRET}")
    assert load(OTLP_ENDPOINT="http://collector:4318", OTLP_HEADERS="x-key=1",
                OTLP_INSECURE_HTTP="1").otlp_endpoint == "http://collector:4318"


def test_plain_http_without_headers_or_to_loopback_is_allowed() -> None:
    assert load(OTLP_ENDPOINT="http://collector:4318").otlp_endpoint
    assert load(OTLP_ENDPOINT="http://127.0.0.1:4318", OTLP_HEADERS="x-key=1").otlp_endpoint


def test_only_needs_an_endpoint() -> None:
    with pytest.raises(ValueError, match="nowhere to export"):
        load(OTLP_ONLY="1")


@pytest.mark.parametrize("name", ["STORE", "API_URL"])
def test_only_refuses_a_store_or_an_api_url(name: str) -> None:
    with pytest.raises(ValueError, match=f"TRACER_{name} is set"):
        load(OTLP_ONLY="1", OTLP_ENDPOINT="http://127.0.0.1:4318",
             **{name: "x.db" if name == "STORE" else "http://127.0.0.1:8585"})


def test_the_traces_url_adds_v1_traces_unless_the_endpoint_ends_so() -> None:
    assert config.otlp_traces_url("http://h:4318") == "http://h:4318/v1/traces"
    assert config.otlp_traces_url("http://h:4318/otel/") == "http://h:4318/otel/v1/traces"
    assert config.otlp_traces_url("http://h:4318/v1/traces") == "http://h:4318/v1/traces"


def test_an_otlp_only_aggregator_anchors_in_a_directory_of_the_receivers_own() -> None:
    path = config.otlp_local_path("https://otel.example:4318/otel")
    assert path.endswith("/.tracer/otlp/otel.example-4318-otel/store")


def test_the_service_name_is_printable_text() -> None:
    assert load(OTLP_SERVICE_NAME="checkout").otlp_service_name == "checkout"
    with pytest.raises(ValueError, match="TRACER_OTLP_SERVICE_NAME"):
        load(OTLP_SERVICE_NAME="a\nb")
