"""``tracer.config``: the table of variables, how each kind of value is read and checked, and
the README's Configuration table made from it. No process, no socket."""

from __future__ import annotations

import dataclasses
import os

import pytest
import zmq

from tracer import config

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "README.md")


def test_the_readme_configuration_table_is_made_from_the_table_of_variables():
    with open(README, encoding="utf-8") as f:
        readme = f.read()

    assert config.markdown_table() in readme, (
        "README's Configuration table differs from tracer.config.VARIABLES; replace it with:\n"
        + config.markdown_table())


def test_every_settings_field_is_filled_by_exactly_one_variable():
    fields = [v.field for v in config.VARIABLES if v.field is not None]

    assert sorted(fields) == sorted(f.name for f in dataclasses.fields(config.Settings))


def test_unset_and_empty_variables_give_every_default():
    settings = config.load({"TRACER_QUEUE_SIZE": ""})

    for variable in config.VARIABLES:
        if variable.field is not None:
            assert getattr(settings, variable.field) == variable.default


def test_a_tracer_variable_wins_over_its_braintrust_name():
    env = {"TRACER_NUM_RETRIES": "2", "BRAINTRUST_NUM_RETRIES": "9"}

    assert config.load(env).num_retries == 2


def test_a_braintrust_name_is_read_for_the_reference_variables_only():
    env = {"BRAINTRUST_NUM_RETRIES": "9", "BRAINTRUST_DEBUG": "1"}

    settings = config.load(env)
    assert (settings.num_retries, settings.debug) == (9, False)


# -- kinds of value --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "true", "YES", "On"])
def test_a_boolean_reads_as_true_from_its_four_words_in_any_case(text):
    assert config.Boolean().parse("TRACER_X", text) is True


@pytest.mark.parametrize("text", ["0", "False", "no", "OFF"])
def test_a_boolean_reads_as_false_from_its_four_words_in_any_case(text):
    assert config.Boolean().parse("TRACER_X", text) is False


@pytest.mark.parametrize("text", ["maybe", "2", "y", " 1", "enabled"])
def test_any_other_boolean_word_is_refused_naming_variable_and_value(text):
    with pytest.raises(ValueError) as raised:
        config.Boolean().parse("TRACER_X", text)

    assert str(raised.value).startswith(f"TRACER_X={text!r}: ")


@pytest.mark.parametrize("text, number", [("0", 0), ("10", 10), ("+7", 7)])
def test_an_integer_within_its_bounds_is_read(text, number):
    assert config.Integer(0, 10).parse("TRACER_X", text) == number


@pytest.mark.parametrize("text, problem", [("11", "at most 10"), ("-1", "at least 0"),
                                           ("9" * 5000, "at most 10"), ("1.5", "integer"),
                                           ("1_0", "integer"), ("0x10", "integer")])
def test_an_integer_out_of_bounds_or_malformed_is_refused_saying_why(text, problem):
    with pytest.raises(ValueError, match=problem) as raised:
        config.Integer(0, 10).parse("TRACER_X", text)

    assert str(raised.value).startswith("TRACER_X=")


def test_seconds_are_read_as_a_decimal_number_within_bounds():
    assert config.Seconds(0, 60).parse("TRACER_X", "2.5") == 2.5


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "61", "soon"])
def test_seconds_out_of_bounds_or_not_a_number_are_refused(text):
    with pytest.raises(ValueError, match=f"TRACER_X={text!r}"):
        config.Seconds(0, 60).parse("TRACER_X", text)


@pytest.mark.parametrize("text", ["ipc:///tmp/tracer-0/agg.sock", "tcp://127.0.0.1:5557",
                                  "tcp://[::1]:5557", "tcp://aggregator.internal:1"])
def test_an_ipc_or_tcp_endpoint_is_read_as_given(text):
    assert config.Endpoint().parse("TRACER_ENDPOINT", text) == text


@pytest.mark.parametrize("text", ["127.0.0.1:5557", "tcp://*:5557", "tcp://host:port",
                                  "tcp://:5557", "ipc://" + "x" * 200, "inproc://name"])
def test_an_endpoint_a_recorder_cannot_connect_to_is_refused(text):
    with pytest.raises(ValueError, match="TRACER_ENDPOINT="):
        config.Endpoint().parse("TRACER_ENDPOINT", text)


def test_a_curve_public_key_is_read_as_given():
    key = zmq.curve_keypair()[0].decode()

    assert config.CurveKey().parse("TRACER_AGGREGATOR_KEY", key) == key


@pytest.mark.parametrize("text", ["x", "~" * 40, "é" * 40, "0" * 39])
def test_anything_but_a_curve_public_key_is_refused_naming_the_variable(text):
    with pytest.raises(ValueError, match="TRACER_AGGREGATOR_KEY=.*not a CURVE public key"):
        config.CurveKey().parse("TRACER_AGGREGATOR_KEY", text)


def test_an_aggregator_key_keyword_that_is_not_a_string_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="aggregator_key must be a string"):
        config.keyword("aggregator_key", b"bytes")


def test_a_store_keyword_that_is_not_a_string_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="store must be a string"):
        config.keyword("store", 42)


def test_a_store_keyword_may_be_a_path_object(tmp_path):
    assert config.keyword("store", tmp_path / "traces.db") == str(tmp_path / "traces.db")


def test_a_store_path_ending_in_a_separator_is_refused_as_a_directory(tmp_path):
    with pytest.raises(ValueError, match="names a directory"):
        config.store_path(str(tmp_path / "missing") + os.sep, "TRACER_STORE")


def test_a_malformed_value_read_where_raising_is_not_allowed_gives_the_default_and_warns_once(
        monkeypatch, capsys):
    monkeypatch.setenv("TRACER_DELIVER_ON_TERMINATE", "maybe")
    monkeypatch.setattr(config, "_warned", set())

    first = config.value_or_default("DELIVER_ON_TERMINATE")
    second = config.value_or_default("DELIVER_ON_TERMINATE")

    assert first is second is True
    assert capsys.readouterr().err.count("TRACER_DELIVER_ON_TERMINATE='maybe'") == 1


# -- uploading ---------------------------------------------------------------------------------


def test_an_api_url_is_read_from_the_references_variable_too():
    settings = config.load({"BRAINTRUST_API_URL": "https://traces.example/",
                            "BRAINTRUST_API_KEY": "tr_abc"})
    assert settings.api_url == "https://traces.example"
    assert settings.api_key == "tr_abc"


def test_permalinks_point_at_the_api_url_unless_an_app_url_is_set():
    assert config.load({"TRACER_API_URL": "https://traces.example"}).app_url == \
        "https://traces.example"
    assert config.load({"TRACER_API_URL": "https://traces.example",
                        "TRACER_APP_URL": "https://viewer.example"}).app_url == \
        "https://viewer.example"


def test_plain_http_is_allowed_to_this_host_and_elsewhere_only_when_told():
    for url in ("http://127.0.0.1:8585", "http://localhost:8585", "http://[::1]:8585"):
        assert config.load({"TRACER_API_URL": url}).api_url == url
    with pytest.raises(ValueError, match="TRACER_API_URL='http://10.0.0.7'"):
        config.load({"TRACER_API_URL": "http://10.0.0.7"})
    assert config.load({"TRACER_API_URL": "http://10.0.0.7",
                        "TRACER_API_INSECURE_HTTP": "1"}).api_url == "http://10.0.0.7"


def test_a_key_is_named_in_messages_by_its_first_characters_only():
    key = "tr_" + "k" * 40
    label = config.key_label(key)
    assert label.startswith("'tr_kkk'") and key not in label


def test_an_uploading_aggregators_files_go_to_a_directory_per_server():
    a = config.api_local_path("https://traces.example")
    b = config.api_local_path("http://127.0.0.1:8585/")
    assert a.endswith(os.path.join(".tracer", "api", "traces.example-443", "store"))
    assert b.endswith(os.path.join(".tracer", "api", "127.0.0.1-8585", "store"))
