"""``wrap_openai`` with the real ``openai`` client, pointed at the loopback server of
tests/openai_server.py, checked in the rows stored by a real aggregator."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import time

import openai
import pydantic
import pytest

import tracer

from . import openai_tasks, programs
from .conftest import by_name, clean_env, free_port, run_function, run_python
from .openai_server import (
    CHAT_USAGE_METRICS,
    CREATED,
    EMBEDDING,
    REPLY,
    REPLY_CHUNKS,
    RESPONSES_USAGE_METRICS,
    TOOL_ARGUMENTS,
)

MODEL = "test-model"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {"type": "function",
                "function": {"name": "weather", "parameters": {"type": "object"}}}


class City(pydantic.BaseModel):
    city: str
    population: int


def sync_client(server, **options) -> openai.OpenAI:
    return tracer.wrap_openai(openai.OpenAI(base_url=server.base_url, api_key="test-key",
                                            max_retries=0, **options))


def async_client(server, **options) -> openai.AsyncOpenAI:
    return tracer.wrap_openai(openai.AsyncOpenAI(base_url=server.base_url, api_key="test-key",
                                                 max_retries=0, **options))


def llm_row(rows, name: str = "Chat Completion") -> dict:
    """The one row of the test, checked to be an ended LLM span named ``name``."""
    (row,) = rows()
    assert row["span_attributes"] == {"name": name, "type": "llm"}
    assert row["metrics"]["start"] <= row["metrics"]["end"]
    return row


def chat_choices(content: str = REPLY) -> list[dict]:
    """A non-streamed chat completion's choices as the server sends them."""
    return [{"index": 0, "message": {"role": "assistant", "content": content},
             "logprobs": None, "finish_reason": "stop"}]


def streamed_choices(content: str | None = REPLY, finish_reason: str | None = "stop") -> list:
    """A chat stream's choices as wrap_openai assembles them."""
    return [{"index": 0, "message": {"role": "assistant", "content": content, "tool_calls": None},
             "logprobs": None, "finish_reason": finish_reason}]


def tokens(metrics: dict) -> dict:
    """The metrics a call logged from the API's usage: all but the timings."""
    return {k: v for k, v in metrics.items()
            if k not in ("start", "end", "time_to_first_token")}


def assert_first_token_time(row: dict) -> None:
    assert isinstance(row["metrics"]["time_to_first_token"], float)
    assert row["metrics"]["time_to_first_token"] > 0


def assert_error(row: dict, error_type: str, message: str = "") -> None:
    first_line, _, traceback = row["error"].partition("\n\n")
    assert first_line.split(":")[0].endswith(error_type)
    assert message in first_line
    assert traceback.startswith("Traceback")


async def until_requests(server, count: int = 1, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(server.requests) < count:
        assert time.monotonic() < deadline, "the request never reached the server"
        await asyncio.sleep(0.01)


# -- importing ------------------------------------------------------------------------------


def test_importing_tracer_does_not_import_openai():
    run_python("""
        import sys
        import tracer
        assert callable(tracer.wrap_openai)
        assert "openai" not in sys.modules, "import tracer imported openai"
        import tracer.integrations
        assert "openai" not in sys.modules, "tracer.integrations imported openai"
    """, env=clean_env())


def test_without_a_logger_the_wrapped_client_returns_the_clients_own_objects(openai_server):
    run_function(programs.calls_a_wrapped_openai_client_without_a_logger,
                 openai_server.base_url, REPLY, env=clean_env())


def test_wrap_openai_refuses_what_is_not_an_openai_client():
    with pytest.raises(TypeError, match="expected an openai.OpenAI"):
        tracer.wrap_openai(object())


# -- chat completions, sync -----------------------------------------------------------------


def test_chat_completion_is_an_llm_span_with_messages_params_output_and_tokens(
        logger, rows, openai_server):
    with sync_client(openai_server) as client:
        completion = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, temperature=0.2, max_tokens=50, seed=7,
            extra_headers={"x-secret": "not for the trace"})
    assert type(completion) is openai.types.chat.ChatCompletion
    assert completion.choices[0].message.content == REPLY
    row = llm_row(rows)
    assert row["input"] == MESSAGES
    # Parameters not given, and extra_headers (credentials), are not logged.
    assert row["metadata"] == {"model": MODEL, "temperature": 0.2, "max_tokens": 50, "seed": 7,
                               "provider": "openai"}
    assert row["output"] == chat_choices()
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert_first_token_time(row)
    assert "error" not in row
    assert row["span_parents"] is None  # no current span: the LLM call is a root


def test_wrapped_client_passes_for_the_client_and_derived_clients_are_traced(
        logger, rows, openai_server):
    with sync_client(openai_server) as client:
        assert isinstance(client, openai.OpenAI)
        assert str(client.base_url) == openai_server.base_url + "/"
        assert client.models is not None  # untraced resources are the client's own
        derived = client.with_options(timeout=5.0)
        derived.chat.completions.create(model=MODEL, messages=MESSAGES)
    llm_row(rows)


def test_the_llm_span_is_current_while_the_request_runs_and_not_after(
        logger, rows, openai_server):
    seen = []
    http = openai.DefaultHttpxClient(
        event_hooks={"request": [lambda request: seen.append(tracer.current_span().name)]})
    client = sync_client(openai_server, http_client=http)
    with client, tracer.start_span("outer") as outer:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        assert tracer.current_span() is outer  # a stream is consumed later, outside
        list(stream)
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert tracer.current_span() is outer
    assert seen == ["Chat Completion", "Chat Completion"]
    got = rows()
    assert len(got) == 3


def test_chat_stream_with_usage_records_the_assembled_message_tokens_and_first_token_time(
        logger, rows, openai_server):
    with sync_client(openai_server) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
        assert isinstance(stream, openai.Stream)
        assert stream.response.status_code == 200
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage.total_tokens == 18  # the caller gets every chunk, usage too
    row = llm_row(rows)
    assert row["input"] == MESSAGES
    assert row["metadata"] == {"model": MODEL, "stream": True,
                               "stream_options": {"include_usage": True}, "provider": "openai"}
    assert row["output"] == streamed_choices()
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert_first_token_time(row)
    assert "error" not in row


def test_chat_stream_without_usage_records_no_token_counts_but_first_token_time(
        logger, rows, openai_server):
    with sync_client(openai_server) as client:
        for _ in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            pass
    row = llm_row(rows)
    assert row["output"] == streamed_choices()
    assert tokens(row["metrics"]) == {}
    assert_first_token_time(row)


def test_chat_stream_assembles_tool_calls_for_every_choice(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, n=2,
                                            tools=[WEATHER_TOOL]))
    row = llm_row(rows)
    call = {"id": "call_test", "type": "function",
            "function": {"name": "weather", "arguments": TOOL_ARGUMENTS}}
    assert row["output"] == [
        {"index": i, "message": {"role": "assistant", "content": "", "tool_calls": [call]},
         "logprobs": None, "finish_reason": "tool_calls"} for i in range(2)]
    assert row["metadata"]["tools"] == [WEATHER_TOOL]
    assert row["metadata"]["n"] == 2


def test_chat_stream_closed_early_ends_the_span_with_what_arrived(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        next(stream)  # the role
        next(stream)  # the first piece of text
        stream.close()
        assert stream.response.is_closed
    row = llm_row(rows)
    assert row["output"] == streamed_choices(REPLY_CHUNKS[0], finish_reason=None)
    assert_first_token_time(row)
    assert "error" not in row


def test_chat_stream_used_as_a_context_manager_ends_the_span_at_exit(
        logger, rows, openai_server):
    with sync_client(openai_server) as client:
        with client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                            stream=True) as stream:
            assert isinstance(stream, openai.Stream)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content == REPLY_CHUNKS[1]:
                    break  # leave before the end
        assert stream.response.is_closed
    row = llm_row(rows)
    assert row["output"] == streamed_choices("".join(REPLY_CHUNKS[:2]), finish_reason=None)


def test_abandoned_chat_stream_ends_its_span_when_collected(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        next(stream)
        next(stream)
        last_used = time.time()
        del stream
        gc.collect()
    row = llm_row(rows)
    assert row["output"] == streamed_choices(REPLY_CHUNKS[0], finish_reason=None)
    assert row["metrics"]["end"] <= last_used  # ended when last used, not when collected
    assert "error" not in row


def test_error_in_the_middle_of_a_stream_sets_error_and_reaches_the_caller(
        logger, rows, openai_server):
    openai_server.break_stream_next(after=2)
    with sync_client(openai_server) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="the stream broke"):
            for _ in stream:
                pass
    row = llm_row(rows)
    assert_error(row, "APIError", "the stream broke")
    assert row["output"] == streamed_choices(REPLY_CHUNKS[0], finish_reason=None)


def test_stream_that_times_out_half_way_sets_error(logger, rows, openai_server):
    openai_server.break_stream_next(after=2, stall=30)
    with sync_client(openai_server, timeout=0.5) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        # openai >= 2 raises APITimeoutError here; older versions let httpx's ReadTimeout out.
        with pytest.raises(Exception, match="timed out") as raised:
            list(stream)
    error_type = type(raised.value).__name__
    assert error_type in ("APITimeoutError", "ReadTimeout")
    row = llm_row(rows)
    assert_error(row, error_type)
    assert row["output"] == streamed_choices(REPLY_CHUNKS[0], finish_reason=None)


def test_parse_with_a_pydantic_model_logs_its_schema_and_the_parsed_output(
        logger, rows, openai_server):
    openai_server.reply_next('{"city": "Paris", "population": 2100000}')
    with sync_client(openai_server) as client:
        completion = client.chat.completions.parse(model=MODEL, messages=MESSAGES,
                                                   response_format=City)
    assert completion.choices[0].message.parsed == City(city="Paris", population=2100000)
    row = llm_row(rows)
    assert row["input"] == MESSAGES
    assert row["metadata"] == {
        "model": MODEL, "provider": "openai",
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "City", "schema": City.model_json_schema()}},
    }
    (choice,) = row["output"]
    assert choice["message"]["parsed"] == {"city": "Paris", "population": 2100000}
    assert choice["message"]["content"] == '{"city": "Paris", "population": 2100000}'
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS


@pytest.mark.skipif(not hasattr(openai.resources.beta.Beta, "chat"),
                    reason="this openai version has no client.beta.chat")
def test_beta_chat_completions_parse_is_traced(logger, rows, openai_server):
    openai_server.reply_next('{"city": "Paris", "population": 2100000}')
    with sync_client(openai_server) as client:
        client.beta.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=City)
    row = llm_row(rows)
    assert row["output"][0]["message"]["parsed"] == {"city": "Paris", "population": 2100000}
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS


def test_messages_given_as_an_iterator_are_sent_and_logged(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        client.chat.completions.create(model=MODEL, messages=iter(MESSAGES))
    assert openai_server.requests[0]["messages"] == MESSAGES
    assert llm_row(rows)["input"] == MESSAGES


# -- responses and embeddings, sync ---------------------------------------------------------


RESPONSE_OUTPUT = [{"id": "msg_test", "type": "message", "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": REPLY, "annotations": []}]}]
# What the reference adds to the metadata from the response itself.
RESPONSE_METADATA = {"id": "resp_test", "object": "response", "status": "completed",
                     "created_at": CREATED, "model": MODEL}


def test_responses_create_logs_input_output_and_mapped_token_counts(
        logger, rows, openai_server):
    with sync_client(openai_server) as client:
        response = client.responses.create(model=MODEL, input="Say hello.",
                                           instructions="Be brief.", temperature=0.1)
    assert response.output_text == REPLY
    row = llm_row(rows, "openai.responses.create")
    assert row["input"] == "Say hello."
    assert row["metadata"] == {"model": MODEL, "instructions": "Be brief.", "temperature": 0.1,
                               "provider": "openai", **RESPONSE_METADATA}
    assert row["output"] == RESPONSE_OUTPUT
    assert tokens(row["metrics"]) == RESPONSES_USAGE_METRICS
    assert_first_token_time(row)


def test_responses_stream_logs_the_final_response(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        events = list(client.responses.create(model=MODEL, input=MESSAGES[1:], stream=True))
    assert events[-1].type == "response.completed"
    row = llm_row(rows, "openai.responses.create")
    assert row["input"] == MESSAGES[1:]
    assert row["metadata"] == {"model": MODEL, "stream": True, "provider": "openai",
                               **RESPONSE_METADATA}
    assert row["output"] == RESPONSE_OUTPUT
    assert tokens(row["metrics"]) == RESPONSES_USAGE_METRICS
    assert_first_token_time(row)


def test_responses_stream_closed_early_logs_the_text_so_far(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        stream = client.responses.create(model=MODEL, input="hi", stream=True)
        with stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    break
    row = llm_row(rows, "openai.responses.create")
    # As the reference assembles an unfinished stream: the items announced, with their text.
    assert row["output"] == [{"id": "msg_test", "type": "message", "role": "assistant",
                              "content": [{"type": "output_text", "text": REPLY_CHUNKS[0]}]}]
    assert tokens(row["metrics"]) == {}


def test_embeddings_create_logs_input_shape_and_tokens(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        result = client.embeddings.create(model="test-embedder", input=["one", "two"])
    assert [d.embedding for d in result.data] == [EMBEDDING, EMBEDDING]
    row = llm_row(rows, "Embedding")
    assert row["input"] == ["one", "two"]
    assert row["metadata"] == {"model": "test-embedder", "provider": "openai"}
    assert row["output"] == {"embeddings": 2, "embedding_length": len(EMBEDDING)}
    assert tokens(row["metrics"]) == {"prompt_tokens": 5, "tokens": 5}


# -- failures, sync -------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error_type"), [(400, "BadRequestError"),
                                                     (429, "RateLimitError")])
def test_a_4xx_answer_sets_error_and_the_exception_reaches_the_caller(
        logger, rows, openai_server, status, error_type):
    openai_server.fail_next(status, "no such thing")
    with sync_client(openai_server) as client, pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert type(raised.value).__name__ == error_type
    assert raised.value.status_code == status
    row = llm_row(rows)
    assert_error(row, error_type, f"Error code: {status}")
    assert "no such thing" in row["error"]
    assert row["input"] == MESSAGES
    assert row["metadata"] == {"model": MODEL, "provider": "openai"}
    assert "output" not in row


def test_a_5xx_answer_sets_error(logger, rows, openai_server):
    openai_server.fail_next(500)
    with sync_client(openai_server) as client, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    row = llm_row(rows)
    assert_error(row, "InternalServerError", "Error code: 500")
    assert "output" not in row


def test_a_timeout_sets_error(logger, rows, openai_server):
    openai_server.stall_next()
    client = sync_client(openai_server, timeout=0.5)
    with client, pytest.raises(openai.APITimeoutError):
        client.embeddings.create(model="test-embedder", input="one")
    assert_error(llm_row(rows, "Embedding"), "APITimeoutError", "timed out")


def test_a_refused_connection_sets_error(logger, rows):
    client = tracer.wrap_openai(openai.OpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1",
                                              api_key="test-key", max_retries=0))
    with client, pytest.raises(openai.APIConnectionError):
        client.responses.create(model=MODEL, input="anyone there?")
    row = llm_row(rows, "openai.responses.create")
    assert_error(row, "APIConnectionError")
    assert row["input"] == "anyone there?"


# -- with_raw_response, sync ----------------------------------------------------------------


def test_with_raw_response_returns_the_raw_response_and_logs_the_parsed_output(
        logger, rows, openai_server):
    with sync_client(openai_server) as client:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert type(raw) is openai._legacy_response.LegacyAPIResponse
        assert raw.headers["x-request-id"] == "req_test"
        assert raw.parse().choices[0].message.content == REPLY
    row = llm_row(rows)
    assert row["output"] == chat_choices()
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert row["metadata"] == {"model": MODEL, "provider": "openai"}


def test_with_raw_response_stream_records_the_chunks_parsed_from_it(
        logger, rows, openai_server):
    with sync_client(openai_server) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
        assert isinstance(raw, openai._legacy_response.LegacyAPIResponse)
        assert raw.status_code == 200
        stream = raw.parse()
        assert isinstance(stream, openai.Stream)
        assert raw.parse() is stream
        list(stream)
    row = llm_row(rows)
    assert row["output"] == streamed_choices()
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert_first_token_time(row)


def test_with_raw_response_embeddings_and_responses_are_traced(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        client.embeddings.with_raw_response.create(model="test-embedder", input="one")
        client.responses.with_raw_response.create(model=MODEL, input="hi")
    named = by_name(rows())
    assert named["Embedding"]["output"] == {"embeddings": 1, "embedding_length": len(EMBEDDING)}
    assert named["openai.responses.create"]["output"] == RESPONSE_OUTPUT


# -- nesting, threads, processes ------------------------------------------------------------


def test_llm_calls_in_a_traced_function_are_its_children(logger, rows, openai_server):
    client = sync_client(openai_server)

    @tracer.traced
    def answer(question: str) -> str:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        client.embeddings.create(model="test-embedder", input=text)
        return text

    with client:
        assert answer("hi") == REPLY
    named = by_name(rows())
    root = named["answer"]
    for name in ("Chat Completion", "Embedding"):
        assert named[name]["span_parents"] == [root["span_id"]]
        assert named[name]["root_span_id"] == root["span_id"]
    assert root["output"] == REPLY


def test_calls_from_a_thread_pool_nest_under_the_submitting_span(logger, rows, openai_server):
    client = sync_client(openai_server)
    questions = [f"question {i}" for i in range(4)]

    def ask(question: str) -> str | None:
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}])
        return completion.choices[0].message.content

    with (client, tracer.start_span("fan-out") as root,
          tracer.TracedThreadPoolExecutor(max_workers=2) as pool):
        assert list(pool.map(ask, questions)) == [REPLY] * 4
    got = rows()
    calls = [r for r in got if r["span_attributes"]["name"] == "Chat Completion"]
    assert sorted(r["input"][0]["content"] for r in calls) == questions
    for row in calls:
        assert row["span_parents"] == [root.span_id]
        assert row["output"] == chat_choices()


def test_a_call_in_a_pool_worker_nests_under_the_submitting_span(logger, rows, openai_server):
    ctx = multiprocessing.get_context("spawn")
    args = [(openai_server.base_url, f"question {i}") for i in range(2)]
    with tracer.start_span("fan-out") as root, tracer.pool.Pool(2, context=ctx) as pool:
        assert pool.starmap(openai_tasks.ask, args) == [REPLY] * 2
    got = rows()
    calls = [r for r in got if r["span_attributes"]["name"] == "Chat Completion"]
    assert len(got) == 3
    assert sorted(r["input"][0]["content"] for r in calls) == ["question 0", "question 1"]
    for row in calls:
        assert row["span_parents"] == [root.span_id]
        assert row["root_span_id"] == root.span_id
        assert row["span_attributes"]["type"] == "llm"
        assert tokens(row["metrics"]) == CHAT_USAGE_METRICS


# -- async ----------------------------------------------------------------------------------


def test_async_chat_completion_is_an_llm_span(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            assert isinstance(client, openai.AsyncOpenAI)
            return await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                        temperature=0.2)

    completion = asyncio.run(main())
    assert type(completion) is openai.types.chat.ChatCompletion
    row = llm_row(rows)
    assert row["input"] == MESSAGES
    assert row["metadata"] == {"model": MODEL, "temperature": 0.2, "provider": "openai"}
    assert row["output"] == chat_choices()
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert_first_token_time(row)
    assert "error" not in row


def test_async_chat_stream_with_usage_records_message_tokens_and_first_token_time(
        logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True,
                stream_options={"include_usage": True})
            assert isinstance(stream, openai.AsyncStream)
            return [chunk async for chunk in stream]

    chunks = asyncio.run(main())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    row = llm_row(rows)
    assert row["metadata"]["stream_options"] == {"include_usage": True}
    assert row["output"] == streamed_choices()
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert_first_token_time(row)


def test_async_chat_stream_without_usage_records_no_token_counts(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                          stream=True)
            async for _ in stream:
                pass

    asyncio.run(main())
    row = llm_row(rows)
    assert row["output"] == streamed_choices()
    assert tokens(row["metrics"]) == {}
    assert_first_token_time(row)


def test_async_chat_stream_closed_early_ends_the_span(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                          stream=True)
            await stream.__anext__()
            await stream.__anext__()
            await stream.close()

    asyncio.run(main())
    row = llm_row(rows)
    assert row["output"] == streamed_choices(REPLY_CHUNKS[0], finish_reason=None)
    assert "error" not in row


def test_async_chat_stream_used_as_a_context_manager_ends_the_span_at_exit(
        logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                          stream=True)
            async with stream as entered:
                assert entered is stream
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content == REPLY_CHUNKS[1]:
                        break

    asyncio.run(main())
    row = llm_row(rows)
    assert row["output"] == streamed_choices("".join(REPLY_CHUNKS[:2]), finish_reason=None)


def test_async_abandoned_chat_stream_ends_its_span_when_collected(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                          stream=True)
            await stream.__anext__()
            await stream.__anext__()
            del stream
            gc.collect()

    asyncio.run(main())
    row = llm_row(rows)
    assert row["output"] == streamed_choices(REPLY_CHUNKS[0], finish_reason=None)
    assert "error" not in row


def test_async_parse_with_a_pydantic_model(logger, rows, openai_server):
    openai_server.reply_next('{"city": "Oslo", "population": 700000}')

    async def main():
        async with async_client(openai_server) as client:
            return await client.chat.completions.parse(model=MODEL, messages=MESSAGES,
                                                       response_format=City)

    completion = asyncio.run(main())
    assert completion.choices[0].message.parsed == City(city="Oslo", population=700000)
    row = llm_row(rows)
    assert row["metadata"]["response_format"]["json_schema"]["name"] == "City"
    assert row["output"][0]["message"]["parsed"] == {"city": "Oslo", "population": 700000}
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS


def test_async_responses_create_and_stream(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            with tracer.start_span("both"):
                await client.responses.create(model=MODEL, input="plain")
                stream = await client.responses.create(model=MODEL, input="streamed",
                                                       stream=True)
                return [event.type async for event in stream]

    assert asyncio.run(main())[-1] == "response.completed"
    got = [r for r in rows() if r["span_attributes"]["name"] == "openai.responses.create"]
    assert sorted(r["input"] for r in got) == ["plain", "streamed"]
    for row in got:
        assert row["span_attributes"]["type"] == "llm"
        assert row["output"] == RESPONSE_OUTPUT
        assert tokens(row["metrics"]) == RESPONSES_USAGE_METRICS
        assert_first_token_time(row)


def test_async_embeddings_create(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            await client.embeddings.create(model="test-embedder", input="one",
                                           encoding_format="float")

    asyncio.run(main())
    row = llm_row(rows, "Embedding")
    assert row["input"] == "one"
    assert row["metadata"] == {"model": "test-embedder", "encoding_format": "float",
                               "provider": "openai"}
    assert row["output"] == {"embeddings": 1, "embedding_length": len(EMBEDDING)}
    assert row["metrics"]["prompt_tokens"] == 5


@pytest.mark.parametrize(("status", "error_type"), [(404, "NotFoundError"),
                                                     (503, "InternalServerError")])
def test_async_error_answers_set_error(logger, rows, openai_server, status, error_type):
    openai_server.fail_next(status, "not today")

    async def main():
        async with async_client(openai_server) as client:
            with pytest.raises(openai.APIStatusError) as raised:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert type(raised.value).__name__ == error_type

    asyncio.run(main())
    row = llm_row(rows)
    assert_error(row, error_type, f"Error code: {status}")
    assert "not today" in row["error"]
    assert "output" not in row


def test_async_timeout_sets_error(logger, rows, openai_server):
    openai_server.stall_next()

    async def main():
        async with async_client(openai_server, timeout=0.5) as client:
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                     stream=True)

    asyncio.run(main())
    assert_error(llm_row(rows), "APITimeoutError")


def test_cancelled_task_waiting_for_an_answer_sets_error(logger, rows, openai_server):
    openai_server.stall_next()

    async def main():
        async with async_client(openai_server) as client:
            task = asyncio.create_task(
                client.chat.completions.create(model=MODEL, messages=MESSAGES))
            await until_requests(openai_server)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    row = llm_row(rows)
    assert_error(row, "CancelledError")
    assert "output" not in row


def test_cancelled_task_consuming_a_stream_sets_error(logger, rows, openai_server):
    openai_server.break_stream_next(after=2, stall=30)

    async def main():
        arrived = asyncio.Event()
        async with async_client(openai_server) as client:
            async def consume():
                stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                              stream=True)
                async for chunk in stream:
                    if chunk.choices[0].delta.content == REPLY_CHUNKS[0]:
                        arrived.set()  # the server sends nothing more: the task waits

            task = asyncio.create_task(consume())
            await arrived.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    row = llm_row(rows)
    assert_error(row, "CancelledError")
    assert row["output"] == streamed_choices(REPLY_CHUNKS[0], finish_reason=None)


def test_async_with_raw_response(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            raw = await client.chat.completions.with_raw_response.create(model=MODEL,
                                                                         messages=MESSAGES)
            assert type(raw) is openai._legacy_response.LegacyAPIResponse
            assert raw.parse().choices[0].message.content == REPLY
            streamed = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, stream=True)
            return [chunk async for chunk in streamed.parse()]

    asyncio.run(main())
    got = rows()
    assert len(got) == 2
    outputs = sorted((r["output"] for r in got), key=lambda o: "tool_calls" in o[0]["message"])
    assert outputs == [chat_choices(), streamed_choices()]


def test_async_calls_nest_under_their_own_tasks_spans(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            @tracer.traced
            async def ask(question: str) -> str:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": question}],
                    stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream
                                if c.choices])

            return await asyncio.gather(ask("one"), ask("two"))

    assert asyncio.run(main()) == [REPLY, REPLY]
    got = rows()
    asks = {r["input"]["question"]: r for r in got if r["span_attributes"]["name"] == "ask"}
    calls = [r for r in got if r["span_attributes"]["name"] == "Chat Completion"]
    assert len(calls) == 2
    for call in calls:
        question = call["input"][0]["content"]
        assert call["span_parents"] == [asks[question]["span_id"]]
        assert call["output"] == streamed_choices()
