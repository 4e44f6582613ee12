"""Configuration: every ``TRACER_*`` variable and every argument of ``init_logger``/``init`` is
checked in the calling process before anything starts, and a bad one is a ValueError naming it
and its value (README, "Configuration").

Each test runs ``init_logger`` in a fresh interpreter (``programs.starts_refused``) with a clean
environment plus the variable under test, and checks the error, and that it left no thread and
no process behind.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from . import programs
from .conftest import clean_env, run_function


def start(tmp_path, container: str = "logger", env: dict[str, str] | None = None,
          **kwargs: str) -> dict:
    """What ``programs.starts_refused`` printed, run in ``tmp_path`` with ``env`` added to a
    clean environment."""
    proc = run_function(programs.starts_refused, container, kwargs, env=clean_env(**(env or {})),
                        cwd=str(tmp_path))
    return json.loads(proc.stdout)


def assert_refused_before_anything_started(result: dict, error: str, *named: str) -> None:
    assert result["error"] is not None, "accepted"
    assert result["error"].startswith(error + ": "), result["error"]
    for word in named:
        assert word in result["error"], result["error"]
    assert result["threads"] == ["MainThread"]
    assert result["children"] == 0


def test_an_integer_beyond_its_bound_is_refused_naming_the_variable_value_and_bound(tmp_path):
    result = start(tmp_path, env={"TRACER_QUEUE_SIZE": "99999999999999999999999"})

    assert_refused_before_anything_started(result, "ValueError", "TRACER_QUEUE_SIZE",
                                           "'99999999999999999999999'", "at most 10000000")


def test_a_value_that_is_not_an_integer_is_refused_naming_the_variable_and_value(tmp_path):
    result = start(tmp_path, env={"TRACER_MAX_INLINE_BASE64": "abc"})

    assert_refused_before_anything_started(result, "ValueError",
                                           "TRACER_MAX_INLINE_BASE64='abc'", "integer")


def test_a_boolean_other_than_the_eight_words_is_refused_naming_the_variable_and_value(
        tmp_path):
    result = start(tmp_path, env={"TRACER_DELIVER_ON_TERMINATE": "maybe"})

    assert_refused_before_anything_started(result, "ValueError",
                                           "TRACER_DELIVER_ON_TERMINATE='maybe'")


@pytest.mark.parametrize("endpoint", ["not-an-endpoint", "tcp://127.0.0.1", "tcp://host:70000",
                                      "ipc://"])
def test_an_endpoint_that_is_not_ipc_path_or_tcp_host_port_is_refused(tmp_path, endpoint):
    result = start(tmp_path, env={"TRACER_ENDPOINT": endpoint})

    assert_refused_before_anything_started(result, "ValueError", f"TRACER_ENDPOINT={endpoint!r}")


def a_directory(tmp_path) -> str:
    return str(tmp_path)


def a_device(tmp_path) -> str:
    return os.devnull


def a_file_where_no_log_can_be_written(tmp_path) -> str:
    return "/proc/version"


def a_url_of_a_database_with_no_backend(tmp_path) -> str:
    return "mysql://localhost/traces"


STORES = [a_directory, a_device, a_file_where_no_log_can_be_written,
          a_url_of_a_database_with_no_backend]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
@pytest.mark.parametrize("store", STORES, ids=[s.__name__ for s in STORES])
def test_a_store_that_cannot_be_a_database_file_with_its_log_beside_it_is_refused(
        tmp_path, store):
    value = store(tmp_path)
    result = start(tmp_path, env={"TRACER_STORE": value})

    assert_refused_before_anything_started(result, "ValueError", f"TRACER_STORE={value!r}")


ARGUMENTS = {
    "endpoint": {"endpoint": "localhost:5557"},
    "store": {"store": "."},  # the working directory
    "app_url": {"app_url": "traces.example"},
    "aggregator_key": {"aggregator_key": "not a key"},
}


@pytest.mark.parametrize("container", ["logger", "experiment"])
@pytest.mark.parametrize("kwargs", ARGUMENTS.values(), ids=ARGUMENTS.keys())
def test_a_bad_argument_is_refused_naming_the_argument_and_value(tmp_path, container, kwargs):
    result = start(tmp_path, container, **kwargs)

    ((name, value),) = kwargs.items()
    assert_refused_before_anything_started(result, "ValueError", f"{name}={value!r}")


# -- uploading to a trace server (README, "Uploading to a trace server") -----------------------


@pytest.mark.parametrize("variable", ["TRACER_API_URL", "BRAINTRUST_API_URL"])
def test_plain_http_to_another_host_is_refused_naming_the_variable(tmp_path, variable):
    result = start(tmp_path, env={variable: "http://10.20.30.40:8585"})

    assert_refused_before_anything_started(result, "ValueError",
                                           f"{variable}='http://10.20.30.40:8585'",
                                           "TRACER_API_INSECURE_HTTP")


@pytest.mark.parametrize("container", ["logger", "experiment"])
def test_plain_http_to_another_host_is_refused_as_an_argument_too(tmp_path, container):
    result = start(tmp_path, container, api_url="http://traces.example")

    assert_refused_before_anything_started(result, "ValueError",
                                           "api_url='http://traces.example'", "https://")


def test_a_malformed_api_key_is_refused_without_quoting_it(tmp_path):
    key = "tr_secret part with spaces"
    result = start(tmp_path, env={"TRACER_API_KEY": key})

    assert_refused_before_anything_started(result, "ValueError", "TRACER_API_KEY")
    assert "secret part" not in result["error"]


def test_a_ca_bundle_that_is_not_a_file_is_refused_naming_it(tmp_path):
    result = start(tmp_path, env={"TRACER_CA_BUNDLE": str(tmp_path / "missing.pem")})

    assert_refused_before_anything_started(result, "ValueError", "TRACER_CA_BUNDLE",
                                           "missing.pem")
