"""The reference SDK's ``wrap_openai`` tests (its ``wrappers/test_openai.py``), run against ours.

Each test here is one behaviour the reference's tests check, driving the real ``openai`` client
against the loopback server of tests/openai_server.py (the reference replays recordings of
OpenAI's service instead), and asserting on the rows read back from the store. The reference's
tests that need its hosted service, its ``agents`` tracing processor or its auto-instrumentation
are left out; so are those that call its internals (``_postprocess_streaming_results``), whose
behaviours are tested here through a real stream instead. Beyond them: ``with_streaming_response``
and streams left early, closed or dropped, whose spans the reference leaves to its logger's
incremental rows.
"""

from __future__ import annotations

import asyncio
import os
import time

import openai
import pydantic
import pytest
from openai._types import NOT_GIVEN

import tracer

from ..conftest import run_python
from ..openai_server import CHAT_USAGE_METRICS, REPLY, REPLY_CHUNKS, TOOL_ARGUMENTS
from ..test_openai import (
    MODEL,
    RESPONSE_METADATA,
    RESPONSE_OUTPUT,
    async_client,
    chat_choices,
    llm_row,
    streamed_choices,
    sync_client,
    tokens,
)

PROMPT = "What's 12 + 12?"
SYSTEM_PROMPT = "You are a helpful assistant that only responds with numbers."
USER = [{"role": "user", "content": PROMPT}]
ANSWER = '{"value": 24, "reasoning": "12 + 12 = 24"}'
TOOLS = [
    {"type": "function",
     "function": {"name": "get_weather", "description": "Get the weather for a location",
                  "parameters": {"type": "object",
                                 "properties": {"location": {"type": "string"}},
                                 "required": ["location"]}}},
    {"type": "function",
     "function": {"name": "get_time", "description": "Get the current time for a timezone",
                  "parameters": {"type": "object",
                                 "properties": {"timezone": {"type": "string"}},
                                 "required": ["timezone"]}}},
]


class NumberAnswer(pydantic.BaseModel):
    value: int
    reasoning: str


def plain_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)


def assert_metrics_are_valid(metrics: dict, start: float | None = None,
                             end: float | None = None) -> None:
    """The reference's ``assert_metrics_are_valid``: token counts under its names, and the
    span's times inside the call's."""
    assert metrics
    assert metrics["tokens"] > 0
    assert metrics["prompt_tokens"] > 0
    assert metrics["completion_tokens"] > 0
    if start and end:
        assert start <= metrics["start"] <= metrics["end"] <= end
    else:
        assert metrics["start"] <= metrics["end"]


def parsed_answer(row: dict) -> dict:
    """The structured output a ``responses.parse`` row holds."""
    return row["output"][0]["content"][0]["parsed"]


# -- chat completions -----------------------------------------------------------------------


def test_openai_chat_metrics(logger, rows, openai_server):
    client = plain_client(openai_server)
    client.chat.completions.create(model=MODEL, messages=USER)
    assert rows() == []  # the client itself is not traced

    start = time.time()
    response = tracer.wrap_openai(client).chat.completions.create(model=MODEL, messages=USER)
    end = time.time()
    assert response.choices[0].message.content == REPLY
    row = llm_row(rows)
    assert_metrics_are_valid(row["metrics"], start, end)
    assert row["metrics"]["tokens"] == CHAT_USAGE_METRICS["tokens"]
    assert "total_tokens" not in row["metrics"]
    assert MODEL in row["metadata"]["model"]
    assert row["metadata"]["provider"] == "openai"
    assert PROMPT in str(row["input"])


def test_openai_chat_with_system_prompt(logger, rows, openai_server):
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, *USER]
    with sync_client(openai_server) as client:
        client.chat.completions.create(model=MODEL, messages=messages)
    assert llm_row(rows)["input"] == messages


def test_openai_client_comparison(logger, rows, openai_server):
    plain = plain_client(openai_server).chat.completions.create(
        model=MODEL, messages=USER, temperature=0, seed=42)
    wrapped = tracer.wrap_openai(plain_client(openai_server)).chat.completions.create(
        model=MODEL, messages=USER, temperature=0, seed=42)
    assert wrapped.model_dump() == plain.model_dump()
    assert len(rows()) == 1


def test_openai_client_error(logger, rows, openai_server, project):
    openai_server.fail_next(404, "The model `non-existent-model` does not exist")
    with sync_client(openai_server) as client, pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="non-existent-model", messages=USER)
    row = llm_row(rows)
    assert row["project_name"] == project
    assert "non-existent-model" in str(row)
    assert row["error"].startswith("openai.NotFoundError: ")


def test_openai_chat_streaming_sync(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        start = time.time()
        stream = client.chat.completions.create(model=MODEL, messages=USER, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        end = time.time()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    row = llm_row(rows)
    assert_metrics_are_valid(row["metrics"], start, end)
    assert row["metadata"]["stream"] is True
    assert REPLY in str(row["output"])


def test_openai_not_given_filtering(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=NOT_GIVEN, top_p=NOT_GIVEN,
            frequency_penalty=NOT_GIVEN, temperature=0.5, presence_penalty=NOT_GIVEN,
            tools=NOT_GIVEN)
    row = llm_row(rows)
    assert row["input"] == USER
    assert row["metadata"] == {"model": MODEL, "provider": "openai", "temperature": 0.5}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_parallel_tool_calls(logger, rows, openai_server, stream):
    message = "What's the weather in New York and the time in Tokyo?"
    with sync_client(openai_server) as client:
        start = time.time()
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": message}], tools=TOOLS,
            temperature=0, stream=stream,
            stream_options={"include_usage": True} if stream else None)
        if stream:
            for _ in response:
                pass
        end = time.time()
    row = llm_row(rows)
    assert row["metadata"]["stream"] is stream
    assert row["metadata"]["tools"] == TOOLS
    assert message in str(row["input"])
    assert_metrics_are_valid(row["metrics"], start, end)
    calls = row["output"][0]["message"]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["get_weather", "get_time"]
    assert [call["function"]["arguments"] for call in calls] == [TOOL_ARGUMENTS] * 2


def test_chat_completion_streaming_none_arguments(logger, rows, openai_server):
    # Some OpenAI-compatible servers (GLM-4.6) stream a tool call's arguments as nulls first.
    openai_server.null_tool_arguments_next()
    with sync_client(openai_server) as client:
        list(client.chat.completions.create(model=MODEL, messages=USER, stream=True,
                                            tools=TOOLS[:1]))
    (choice,) = llm_row(rows)["output"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_test", "type": "function",
         "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}]
    assert choice["finish_reason"] == "tool_calls"


# -- responses ------------------------------------------------------------------------------


def test_openai_responses_metrics(logger, rows, openai_server):
    client = plain_client(openai_server)
    client.responses.create(model=MODEL, input=PROMPT, instructions="Just the number please")
    assert rows() == []

    start = time.time()
    response = tracer.wrap_openai(client).responses.create(
        model=MODEL, input=PROMPT, instructions="Just the number please")
    end = time.time()
    assert response.output_text == REPLY
    row = llm_row(rows, "openai.responses.create")
    assert_metrics_are_valid(row["metrics"], start, end)
    assert row["metrics"]["prompt_cached_tokens"] >= 0
    assert row["metrics"]["completion_reasoning_tokens"] >= 0
    assert MODEL in row["metadata"]["model"]
    assert row["metadata"]["provider"] == "openai"
    assert PROMPT in str(row["input"])
    assert row["output"][0]["content"][0]["text"] == REPLY


def test_openai_responses_parse_metrics(logger, rows, openai_server):
    openai_server.reply_next(ANSWER)
    client = plain_client(openai_server)
    assert client.responses.parse(model=MODEL, input=PROMPT,
                                  text_format=NumberAnswer).output_parsed.value == 24
    assert rows() == []

    openai_server.reply_next(ANSWER)
    start = time.time()
    response = tracer.wrap_openai(client).responses.parse(model=MODEL, input=PROMPT,
                                                          text_format=NumberAnswer)
    end = time.time()
    assert response.output_parsed == NumberAnswer(value=24, reasoning="12 + 12 = 24")
    row = llm_row(rows, "openai.responses.parse")
    assert_metrics_are_valid(row["metrics"], start, end)
    assert row["metrics"]["prompt_cached_tokens"] >= 0
    assert row["input"] == PROMPT
    assert parsed_answer(row) == {"value": 24, "reasoning": "12 + 12 = 24"}


def test_openai_responses_metadata_preservation(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        response = client.responses.create(model=MODEL, input="What is 10 + 10?",
                                           instructions="Respond with just the number")
    row = llm_row(rows, "openai.responses.create")
    assert row["metadata"]["instructions"] == "Respond with just the number"
    assert row["metadata"]["provider"] == "openai"
    assert row["metadata"]["id"] == response.id
    assert row["metadata"] == {"instructions": "Respond with just the number",
                               "provider": "openai", **RESPONSE_METADATA}
    assert "time_to_first_token" in row["metrics"]


def test_openai_responses_parse_metadata_preservation(logger, rows, openai_server):
    openai_server.reply_next('{"value": 30}')

    class SimpleAnswer(pydantic.BaseModel):
        value: int

    with sync_client(openai_server) as client:
        response = client.responses.parse(model=MODEL, input="What is 15 + 15?",
                                          text_format=SimpleAnswer)
    assert response.output_parsed == SimpleAnswer(value=30)
    row = llm_row(rows, "openai.responses.parse")
    assert MODEL in row["metadata"]["model"]
    assert row["metadata"]["id"] == response.id
    assert parsed_answer(row) == {"value": 30}
    assert row["metrics"]["start"] <= row["metrics"]["end"]


def test_openai_responses_not_given_filtering(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        client.responses.create(model=MODEL, input=PROMPT, instructions="Just the number please",
                                max_output_tokens=NOT_GIVEN, tools=NOT_GIVEN, temperature=0.5,
                                top_p=NOT_GIVEN, metadata=NOT_GIVEN, store=NOT_GIVEN)
    row = llm_row(rows, "openai.responses.create")
    assert row["input"] == PROMPT
    assert row["metadata"] == {"model": MODEL, "provider": "openai", "temperature": 0.5,
                               "instructions": "Just the number please", **RESPONSE_METADATA}
    assert "NOT_GIVEN" not in str(row["metadata"])


def test_openai_responses_parse_not_given_filtering(logger, rows, openai_server):
    openai_server.reply_next(ANSWER)
    with sync_client(openai_server) as client:
        client.responses.parse(model=MODEL, input=PROMPT, text_format=NumberAnswer,
                               max_output_tokens=NOT_GIVEN, tools=NOT_GIVEN, temperature=0.7,
                               top_p=NOT_GIVEN, metadata=NOT_GIVEN, store=NOT_GIVEN)
    row = llm_row(rows, "openai.responses.parse")
    assert row["metadata"]["temperature"] == 0.7
    # The pydantic class is logged as the JSON schema sent for it.
    assert row["metadata"]["text_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "NumberAnswer", "schema": NumberAnswer.model_json_schema()}}
    for key in ("max_output_tokens", "tools", "top_p", "store"):
        assert key not in row["metadata"]
    assert "NOT_GIVEN" not in str(row["metadata"])
    assert parsed_answer(row)["value"] == 24


def _item_added(index: int = 0) -> dict:
    return {"type": "response.output_item.added", "output_index": index, "sequence_number": 0,
            "item": {"id": "msg_test", "type": "message", "role": "assistant",
                     "status": "in_progress", "content": []}}


def _text_delta(content_index: int, delta: str) -> dict:
    return {"type": "response.output_text.delta", "item_id": "msg_test", "output_index": 0,
            "content_index": content_index, "delta": delta, "logprobs": [],
            "sequence_number": 0}


def _annotation(annotation_index: int, title: str) -> dict:
    return {"type": "url_citation", "url": f"https://example.com/{annotation_index}",
            "title": title, "start_index": 0, "end_index": 4}


def test_openai_responses_sparse_content_indices(logger, rows, openai_server):
    # A stream that stopped before its final response: the text of each content part by index.
    openai_server.stream_events_next([_item_added(), _text_delta(0, "First"),
                                      _text_delta(2, "Third"), _text_delta(5, "Sixth")])
    with sync_client(openai_server) as client:
        list(client.responses.create(model=MODEL, input=PROMPT, stream=True))
    (item,) = llm_row(rows, "openai.responses.create")["output"]
    assert {key: item[key] for key in ("id", "type", "role")} == {
        "id": "msg_test", "type": "message", "role": "assistant"}
    text = {"type": "output_text"}
    assert item["content"] == [{**text, "text": "First"}, {}, {**text, "text": "Third"}, {}, {},
                               {**text, "text": "Sixth"}]


def test_openai_responses_sparse_annotation_indices(logger, rows, openai_server):
    second, fourth = _annotation(1, "Second annotation"), _annotation(3, "Fourth annotation")
    openai_server.stream_events_next([
        _item_added(), _text_delta(0, "Text"),
        {"type": "response.output_text.annotation.added", "item_id": "msg_test",
         "output_index": 0, "content_index": 0, "annotation_index": 1, "annotation": second,
         "sequence_number": 0},
        {"type": "response.output_text.annotation.added", "item_id": "msg_test",
         "output_index": 0, "content_index": 0, "annotation_index": 3, "annotation": fourth,
         "sequence_number": 0},
    ])
    with sync_client(openai_server) as client:
        list(client.responses.create(model=MODEL, input=PROMPT, stream=True))
    (item,) = llm_row(rows, "openai.responses.create")["output"]
    assert item["content"][0]["text"] == "Text"
    assert item["content"][0]["annotations"] == [{}, second, {}, fourth]


# -- embeddings -----------------------------------------------------------------------------


def test_openai_embeddings(logger, rows, openai_server):
    plain_client(openai_server).embeddings.create(model="text-embedding-ada-002",
                                                  input="This is a test")
    assert rows() == []
    with sync_client(openai_server) as client:
        response = client.embeddings.create(model="text-embedding-ada-002",
                                            input="This is a test")
    assert response.data[0].embedding
    row = llm_row(rows, "Embedding")
    assert row["metadata"]["model"] == "text-embedding-ada-002"
    assert row["metadata"]["provider"] == "openai"
    assert "This is a test" in str(row["input"])
    assert row["output"]["embedding_length"] == len(response.data[0].embedding)


# -- async ----------------------------------------------------------------------------------


def test_openai_chat_async(logger, rows, openai_server):
    async def main():
        await openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="test-key",
                                 max_retries=0).chat.completions.create(model=MODEL,
                                                                         messages=USER)
        assert rows() == []
        async with async_client(openai_server) as client:
            start = time.time()
            response = await client.chat.completions.create(model=MODEL, messages=USER)
            return start, time.time(), response

    start, end, response = asyncio.run(main())
    assert response.choices[0].message.content == REPLY
    row = llm_row(rows)
    assert_metrics_are_valid(row["metrics"], start, end)
    assert MODEL in row["metadata"]["model"]
    assert PROMPT in str(row["input"])


def test_openai_responses_async(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            start = time.time()
            response = await client.responses.create(model=MODEL, input=PROMPT,
                                                     instructions="Just the number please")
            return start, time.time(), response

    start, end, response = asyncio.run(main())
    assert response.output[0].content[0].text == REPLY
    row = llm_row(rows, "openai.responses.create")
    assert_metrics_are_valid(row["metrics"], start, end)
    assert row["metrics"]["completion_reasoning_tokens"] >= 0
    assert PROMPT in str(row["input"])


def test_openai_responses_parse_async(logger, rows, openai_server):
    openai_server.reply_next(ANSWER)

    async def main():
        async with async_client(openai_server) as client:
            start = time.time()
            response = await client.responses.parse(model=MODEL, input=PROMPT,
                                                    text_format=NumberAnswer)
            return start, time.time(), response

    start, end, response = asyncio.run(main())
    assert response.output_parsed.reasoning == "12 + 12 = 24"
    row = llm_row(rows, "openai.responses.parse")
    assert_metrics_are_valid(row["metrics"], start, end)
    assert parsed_answer(row) == {"value": 24, "reasoning": response.output_parsed.reasoning}


def test_openai_embeddings_async(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            return await client.embeddings.create(model="text-embedding-ada-002",
                                                  input="This is a test")

    assert asyncio.run(main()).data[0].embedding
    row = llm_row(rows, "Embedding")
    assert row["metadata"] == {"model": "text-embedding-ada-002", "provider": "openai"}
    assert row["input"] == "This is a test"


def test_openai_chat_streaming_async(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            start = time.time()
            stream = await client.chat.completions.create(
                model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True})
            chunks = [chunk async for chunk in stream]
            return start, time.time(), chunks

    start, end, chunks = asyncio.run(main())
    assert len(chunks) > 1
    row = llm_row(rows)
    assert_metrics_are_valid(row["metrics"], start, end)
    assert row["metadata"]["stream"] is True
    assert row["output"] == streamed_choices()


def test_openai_chat_async_with_system_prompt(logger, rows, openai_server):
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, *USER]

    async def main():
        async with async_client(openai_server) as client:
            await client.chat.completions.create(model=MODEL, messages=messages)

    asyncio.run(main())
    assert [m["role"] for m in llm_row(rows)["input"]] == ["system", "user"]


def test_openai_client_async_error(logger, rows, openai_server, project):
    openai_server.fail_next(404, "The model `non-existent-model` does not exist")

    async def main():
        async with async_client(openai_server) as client:
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="non-existent-model", messages=USER)

    asyncio.run(main())
    row = llm_row(rows)
    assert row["project_name"] == project
    assert row["metadata"]["model"] == "non-existent-model"


def test_openai_chat_async_context_manager(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            start = time.time()
            stream = await client.chat.completions.create(
                model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True})
            async with stream as entered:
                chunks = [chunk async for chunk in entered]
            return start, time.time(), chunks

    start, end, chunks = asyncio.run(main())
    assert len(chunks) > 1
    row = llm_row(rows)
    assert_metrics_are_valid(row["metrics"], start, end)
    assert row["metadata"]["stream"] is True
    assert REPLY in str(row["output"])


def test_openai_chat_error_in_async_context(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=USER,
                                                          stream=True)
            with pytest.raises(ValueError, match="Intentional test error"):
                async with stream as entered:
                    async for counter, _ in _counted(entered):
                        if counter >= 2:
                            raise ValueError("Intentional test error")

    asyncio.run(main())
    row = llm_row(rows)
    assert row["metrics"]["time_to_first_token"] >= 0
    assert row["output"] == streamed_choices(REPLY_CHUNKS[0], finish_reason=None)


async def _counted(stream):
    counter = 0
    async for chunk in stream:
        counter += 1
        yield counter, chunk


def test_openai_response_streaming_async(logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            start = time.time()
            stream = await client.responses.create(model=MODEL, input=PROMPT, stream=True)
            deltas = [event.delta async for event in stream
                      if event.type == "response.output_text.delta"]
            return start, time.time(), deltas

    start, end, deltas = asyncio.run(main())
    assert "".join(deltas) == REPLY
    row = llm_row(rows, "openai.responses.create")
    assert_metrics_are_valid(row["metrics"], start, end)
    assert row["metadata"]["stream"] is True
    assert PROMPT in str(row["input"])
    assert row["output"] == RESPONSE_OUTPUT


def test_openai_async_parallel_requests(logger, rows, openai_server):
    prompts = [f"What is {i} + {i}?" for i in range(3, 6)]

    async def main():
        async with async_client(openai_server) as client:
            return await asyncio.gather(*(
                client.chat.completions.create(model=MODEL,
                                               messages=[{"role": "user", "content": p}])
                for p in prompts))

    assert len(asyncio.run(main())) == 3
    got = rows()
    assert sorted(row["input"][0]["content"] for row in got) == prompts
    for row in got:
        assert MODEL in row["metadata"]["model"]
        assert_metrics_are_valid(row["metrics"])


# -- streams the caller stops reading -------------------------------------------------------


def test_openai_streaming_with_break(logger, rows, openai_server):
    # The reference's test: leaving an `async for` early still gives one span with its time to
    # first token. Here the span has ended by then, with what arrived, while the caller still
    # holds the stream.
    async def main():
        async with async_client(openai_server) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=USER,
                                                          stream=True)
            counter = 0
            async for _ in stream:
                counter += 1
                if counter >= 2:
                    break
            left = time.time()
            row = llm_row(rows)
            assert row["metrics"]["end"] <= left
            return row

    row = asyncio.run(main())
    assert row["metrics"]["time_to_first_token"] >= 0
    assert row["output"] == streamed_choices(REPLY_CHUNKS[0], finish_reason=None)
    assert tokens(row["metrics"]) == {}  # no usage chunk arrived
    assert "error" not in row


def test_sync_streaming_with_break_ends_the_span_with_what_arrived(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        stream = client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content == REPLY_CHUNKS[1]:
                break
        left = time.time()
        row = llm_row(rows)  # the caller still holds the stream
    assert row["metrics"]["end"] <= left
    assert row["metrics"]["time_to_first_token"] >= 0
    assert row["output"] == streamed_choices("".join(REPLY_CHUNKS[:2]), finish_reason=None)
    assert row["span_attributes"] == {"name": "Chat Completion", "type": "llm"}


def test_streaming_with_break_after_the_usage_chunk_records_the_tokens(
        logger, rows, openai_server):
    with sync_client(openai_server) as client:
        stream = client.chat.completions.create(model=MODEL, messages=USER, stream=True,
                                                stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.usage is not None:
                break  # the stream has not said it is done yet
        row = llm_row(rows)
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert row["output"] == streamed_choices()


def test_reading_on_after_a_break_leaves_the_ended_span_as_it_was(logger, rows, openai_server):
    with sync_client(openai_server) as client:
        stream = client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        for _ in stream:
            break
        first = llm_row(rows)
        rest: list[openai.types.chat.ChatCompletionChunk] = list(stream)  # every chunk still
        stream.close()
        del stream
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == REPLY
    assert llm_row(rows) == first  # ended once: nothing after the break was logged


def test_async_streaming_closed_early_ends_the_span_with_its_tokens(
        logger, rows, openai_server):
    async def main():
        async with async_client(openai_server) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.usage is not None:
                    await stream.close()
                    return llm_row(rows)

    row = asyncio.run(main())
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert row["metrics"]["time_to_first_token"] >= 0


# -- with_streaming_response ----------------------------------------------------------------


def test_chat_with_streaming_response_is_traced_and_returns_the_raw_response(
        logger, rows, openai_server):
    client = sync_client(openai_server)
    with client, client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=USER, temperature=0.2) as response:
        assert type(response) is openai._response.APIResponse
        assert response.headers["x-request-id"] == "req_test"
        completion = response.parse()
    assert type(completion) is openai.types.chat.ChatCompletion
    assert completion.choices[0].message.content == REPLY
    row = llm_row(rows)
    assert row["input"] == USER
    assert row["metadata"] == {"model": MODEL, "temperature": 0.2, "provider": "openai"}
    assert row["output"] == chat_choices()
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert row["metrics"]["time_to_first_token"] > 0


def test_streamed_chat_with_streaming_response_is_traced(logger, rows, openai_server):
    client = sync_client(openai_server)
    with client, client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=USER, stream=True,
            stream_options={"include_usage": True}) as response:
        stream = response.parse()
        assert isinstance(stream, openai.Stream)
        assert response.parse() is stream
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    row = llm_row(rows)
    assert row["metadata"]["stream"] is True
    assert row["output"] == streamed_choices()
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS
    assert row["metrics"]["time_to_first_token"] > 0


def test_a_streamed_response_read_as_lines_ends_its_span_on_leaving_the_block(
        logger, rows, openai_server):
    client = sync_client(openai_server)
    with client, client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=USER, stream=True) as response:
        lines = list(response.iter_lines())
    assert "data: [DONE]" in lines
    row = llm_row(rows)
    assert row["input"] == USER
    assert row["output"] == []  # no chunk passed through the client
    assert "time_to_first_token" not in row["metrics"]


def test_responses_with_streaming_response_is_traced(logger, rows, openai_server):
    client = sync_client(openai_server)
    with client, client.responses.with_streaming_response.create(model=MODEL,
                                                                  input=PROMPT) as response:
        assert response.parse().output_text == REPLY
    row = llm_row(rows, "openai.responses.create")
    assert row["input"] == PROMPT
    assert row["output"] == RESPONSE_OUTPUT
    assert_metrics_are_valid(row["metrics"])


def test_with_streaming_response_error_sets_error(logger, rows, openai_server):
    openai_server.fail_next(429, "slow down")
    client = sync_client(openai_server)
    with (client, pytest.raises(openai.RateLimitError),
          client.chat.completions.with_streaming_response.create(model=MODEL, messages=USER)):
        pass
    row = llm_row(rows)
    assert row["error"].startswith("openai.RateLimitError: ")
    assert "output" not in row


def test_async_with_streaming_response_is_traced(logger, rows, openai_server):
    async def main():
        client = async_client(openai_server)
        async with client, client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=USER) as response:
            assert type(response) is openai._response.AsyncAPIResponse
            return await response.parse()

    assert asyncio.run(main()).choices[0].message.content == REPLY
    row = llm_row(rows)
    assert row["output"] == chat_choices()
    assert tokens(row["metrics"]) == CHAT_USAGE_METRICS


def test_async_streamed_with_streaming_response_is_traced(logger, rows, openai_server):
    async def main():
        client = async_client(openai_server)
        async with client, client.responses.with_streaming_response.create(
                model=MODEL, input=PROMPT, stream=True) as response:
            stream = await response.parse()
            assert isinstance(stream, openai.AsyncStream)
            return [event.type async for event in stream]

    assert asyncio.run(main())[-1] == "response.completed"
    row = llm_row(rows, "openai.responses.create")
    assert row["metadata"]["stream"] is True
    assert row["output"] == RESPONSE_OUTPUT
    assert_metrics_are_valid(row["metrics"])


def test_responses_with_raw_response_parse_is_traced(logger, rows, openai_server):
    openai_server.reply_next(ANSWER)
    with sync_client(openai_server) as client:
        raw = client.responses.with_raw_response.parse(model=MODEL, input=PROMPT,
                                                       text_format=NumberAnswer)
        assert raw.parse().output_parsed.value == 24
    assert parsed_answer(llm_row(rows, "openai.responses.parse"))["value"] == 24


def test_a_wrapped_client_answers_the_references_wrapped_attribute(openai_server):
    client = plain_client(openai_server)
    with client:
        assert tracer.wrap_openai(client)._NamedWrapper__wrapped is client  # type: ignore[attr-defined]
        assert not hasattr(client, "_NamedWrapper__wrapped")


# -- patch_openai ---------------------------------------------------------------------------


def run_patched(code: str, openai_server) -> str:
    """Run ``code`` in a fresh interpreter that traces into this test's project and whose
    openai clients reach the test server; returns what it printed."""
    env = dict(os.environ, OPENAI_BASE_URL=openai_server.base_url, OPENAI_API_KEY="test-key")
    return run_python(code, env=env).stdout


def test_patch_openai_marks_the_module_and_returns_true(openai_server):
    out = run_patched("""
        import openai
        import tracer
        assert not hasattr(openai, "__braintrust_wrapped__")
        assert tracer.patch_openai() is True
        assert openai.__tracer_patched__
        assert openai.__braintrust_wrapped__  # the reference's mark, for code that checks it
        print("SUCCESS")
    """, openai_server)
    assert "SUCCESS" in out


def test_patch_openai_before_import_traces_new_clients(logger, rows, openai_server):
    run_patched("""
        import sys
        import tracer
        assert "openai" not in sys.modules
        tracer.patch_openai()
        import openai
        openai.OpenAI(max_retries=0).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "Say hi"}])
        tracer.flush()
    """, openai_server)
    row = llm_row(rows)
    assert row["metadata"] == {"model": "test-model", "provider": "openai"}
    assert row["input"] == [{"role": "user", "content": "Say hi"}]


def test_patch_openai_after_import_traces_new_async_clients(logger, rows, openai_server):
    run_patched("""
        import asyncio
        import openai
        import tracer
        tracer.patch_openai()

        async def main():
            await openai.AsyncOpenAI(max_retries=0).chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "Say hi async"}])

        asyncio.run(main())
        tracer.flush()
    """, openai_server)
    assert llm_row(rows)["input"] == [{"role": "user", "content": "Say hi async"}]


def test_patch_openai_is_idempotent(logger, rows, openai_server):
    run_patched("""
        import openai
        import tracer
        tracer.patch_openai()
        tracer.patch_openai()
        client = tracer.wrap_openai(openai.OpenAI(max_retries=0))  # already traced: unchanged
        client.with_options(timeout=5).embeddings.create(model="test-embedder", input="one")
        tracer.flush()
    """, openai_server)
    assert llm_row(rows, "Embedding")["input"] == "one"  # one span, not two


def test_patch_openai_chains_with_other_patches(logger, rows, openai_server):
    run_patched("""
        import asyncio
        import openai
        import tracer

        inits = []

        class OtherLibraryOpenAI(openai.OpenAI):
            def __init__(self, *args, **kwargs):
                inits.append("sync")
                super().__init__(*args, **kwargs)

        class OtherLibraryAsyncOpenAI(openai.AsyncOpenAI):
            def __init__(self, *args, **kwargs):
                inits.append("async")
                super().__init__(*args, **kwargs)

        openai.OpenAI, openai.AsyncOpenAI = OtherLibraryOpenAI, OtherLibraryAsyncOpenAI
        tracer.patch_openai()
        openai.OpenAI(max_retries=0).responses.create(model="test-model", input="sync")

        async def main():
            await openai.AsyncOpenAI(max_retries=0).responses.create(model="test-model",
                                                                     input="async")

        asyncio.run(main())
        assert inits == ["sync", "async"], inits
        tracer.flush()
    """, openai_server)
    got = rows()
    assert sorted(row["input"] for row in got) == ["async", "sync"]
    assert {row["span_attributes"]["name"] for row in got} == {"openai.responses.create"}


def test_auto_instrument_patches_openai_and_reports_the_others_as_not_traced(
        logger, rows, openai_server):
    out = run_patched("""
        import openai
        import tracer
        results = tracer.auto_instrument()
        assert results["openai"] is True and openai.__braintrust_wrapped__
        assert results["anthropic"] is False
        again = tracer.auto_instrument(anthropic=False)
        assert again == {k: v for k, v in results.items() if k != "anthropic"}
        openai.OpenAI(max_retries=0).chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "hi"}])
        tracer.flush()
        print("SUCCESS")
    """, openai_server)
    assert "SUCCESS" in out
    assert llm_row(rows)["metadata"] == {"model": "test-model", "provider": "openai"}


def test_auto_instrument_refuses_a_library_it_does_not_know():
    with pytest.raises(TypeError, match="unknown library 'cobol'"):
        tracer.auto_instrument(cobol=True)
