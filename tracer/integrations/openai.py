"""``wrap_openai``: every call through an OpenAI client becomes a span of type ``llm``.

The wrapper is a proxy: attribute access is passed to the real client, except for the calls we
trace (``chat.completions.create`` and ``parse``, ``responses.create``, ``embeddings.create``,
and the same under ``with_raw_response``). A traced call follows the reference SDK's conventions
for LLM spans: the messages (or ``input``) as input, the other request parameters in metadata
with ``provider: "openai"``, the response in output, and token counts in metrics
(``prompt_tokens``, ``completion_tokens``, ``total_tokens``, and ``prompt_<detail>`` /
``completion_<detail>`` for the usage details the API returns, such as
``prompt_cached_tokens`` and ``completion_reasoning_tokens``).

The LLM span is the current span only while the request runs. A stream is returned as a proxy
of the ``openai`` stream that records chunks as the caller consumes them and ends the span when
the stream is exhausted, closed, left (``with``), fails, or is dropped unfinished.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

try:
    import openai
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "tracer.wrap_openai needs the openai package: pip install 'tracer[openai]'"
    ) from exc

from ..api import _parent_object, start_span
from ..context import current, state
from ..span import Span, error_of

C = TypeVar("C")

PROVIDER = "openai"
# Request options that are not model parameters and may carry credentials: never logged.
UNLOGGED_PARAMS = frozenset({"extra_headers"})
# The defaults of parameters that were not given (``Omit`` is not in every openai version).
_SENTINELS = tuple(sentinel for sentinel in (getattr(openai, "NotGiven", None),
                                             getattr(openai, "Omit", None)) if sentinel)


def wrap_openai(client: C) -> C:
    """See ``tracer.wrap_openai``."""
    if isinstance(client, _ClientProxy):
        return client
    if not any(hasattr(client, name) for name in ("chat", "responses", "embeddings")):
        raise TypeError(
            f"wrap_openai: expected an openai.OpenAI or openai.AsyncOpenAI client, got "
            f"{type(client).__name__}"
        )
    return _ClientProxy(client)  # type: ignore[return-value]


# -- what each traced call logs --------------------------------------------------------------


class _Endpoint:
    """One kind of traced call: the span's name, which parameter is the input, how to log a
    response, and how to assemble a stream."""

    def __init__(self, name: str, input_param: str, result: Callable[[Any], dict],
                 collector: Callable[[], Any] | None, first_token: bool) -> None:
        self.name = name
        self.input_param = input_param
        self.result = result  # response -> fields to log ("output", "metrics")
        self.collector = collector  # makes the object that assembles a stream's chunks
        self.first_token = first_token  # log time_to_first_token for a non-streamed answer


def _chat_result(completion: Any) -> dict:
    return {"output": [_dump(choice) for choice in completion.choices],
            "metrics": usage_metrics(getattr(completion, "usage", None))}


def _responses_result(response: Any) -> dict:
    fields = {"output": [_dump(item) for item in response.output or ()],
              "metrics": usage_metrics(getattr(response, "usage", None))}
    error = getattr(response, "error", None)
    if error is not None:  # a response that failed on the server still arrives with 200
        fields["error"] = _response_error(error)
    return fields


def _embeddings_result(response: Any) -> dict:
    data = response.data or []
    # The vectors themselves are bulky and say little in a trace: log their shape.
    return {"output": {"embeddings": len(data),
                       "embedding_length": len(data[0].embedding) if data else 0},
            "metrics": usage_metrics(getattr(response, "usage", None))}


def _response_error(error: Any) -> dict:
    error = _dump(error)
    if isinstance(error, dict):
        return {"type": str(error.get("code") or error.get("type") or "error"),
                "message": str(error.get("message") or "")}
    return {"type": "error", "message": str(error)}


_TOKEN_NAMES = {"input_tokens": "prompt_tokens", "output_tokens": "completion_tokens"}
_DETAIL_PREFIXES = {"input": "prompt", "output": "completion"}


def usage_metrics(usage: Any) -> dict[str, int | float]:
    """Token counts from an API ``usage`` object, under the reference SDK's metric names.

    ``prompt_tokens``, ``completion_tokens`` and ``total_tokens`` (the Responses API's
    ``input_tokens``/``output_tokens`` are mapped to these); each number in a
    ``<kind>_tokens_details`` object becomes ``<kind>_<name>``, e.g. ``prompt_cached_tokens``
    or ``completion_reasoning_tokens``. Values the API did not return are left out.
    """
    usage = _dump(usage)
    metrics: dict[str, int | float] = {}
    if not isinstance(usage, dict):
        return metrics
    for key, value in usage.items():
        key = str(key)
        if key.endswith("_tokens_details") and isinstance(value, dict):
            kind = key[: -len("_tokens_details")]
            prefix = _DETAIL_PREFIXES.get(kind, kind)
            for name, count in value.items():
                if _is_number(count):
                    metrics[f"{prefix}_{name}"] = count
        elif key.endswith("tokens") and _is_number(value):
            metrics[_TOKEN_NAMES.get(key, key)] = value
    return metrics


class _ChatChunks:
    """Assembles chat completion chunks into choices shaped like a non-streamed response's."""

    def __init__(self) -> None:
        self.choices: dict[int, dict] = {}
        self.calls: dict[int, dict[int, dict]] = {}  # choice index -> tool call index -> call
        self.usage: Any = None

    def add(self, chunk: Any) -> None:
        usage = getattr(chunk, "usage", None)
        if usage is not None:  # the last chunk with stream_options={"include_usage": True}
            self.usage = usage
        for choice in getattr(chunk, "choices", None) or ():
            slot = self.choices.get(choice.index)
            if slot is None:
                slot = self.choices[choice.index] = {
                    "index": choice.index,
                    "message": {"role": None, "content": None},
                    "finish_reason": None,
                }
            if choice.finish_reason is not None:
                slot["finish_reason"] = choice.finish_reason
            delta = choice.delta
            if delta is None:
                continue
            message = slot["message"]
            if delta.role is not None:
                message["role"] = delta.role
            for field in ("content", "refusal"):
                piece = getattr(delta, field, None)
                if piece is not None:
                    message[field] = (message.get(field) or "") + piece
            function_call = getattr(delta, "function_call", None)  # the legacy functions API
            if function_call is not None:
                _extend_function(message.setdefault("function_call",
                                                    {"name": "", "arguments": ""}),
                                 function_call)
            for call in getattr(delta, "tool_calls", None) or ():
                calls = self.calls.setdefault(choice.index, {})
                entry = calls.get(call.index)
                if entry is None:
                    entry = calls[call.index] = {
                        "id": None, "type": "function",
                        "function": {"name": "", "arguments": ""},
                    }
                if call.id:
                    entry["id"] = call.id
                if call.type:
                    entry["type"] = call.type
                if call.function is not None:
                    _extend_function(entry["function"], call.function)

    def result(self) -> dict:
        output = []
        for index in sorted(self.choices):
            choice = self.choices[index]
            calls = self.calls.get(index)
            if calls:
                choice["message"]["tool_calls"] = [calls[i] for i in sorted(calls)]
            output.append(choice)
        return {"output": output, "metrics": usage_metrics(self.usage)}


def _extend_function(target: dict, piece: Any) -> None:
    if getattr(piece, "name", None):
        target["name"] += piece.name
    if getattr(piece, "arguments", None):
        target["arguments"] += piece.arguments


class _ResponseEvents:
    """Assembles Responses API stream events: the final response when it arrives, else what
    was streamed so far (finished output items, and the text of unfinished ones)."""

    def __init__(self) -> None:
        self.response: Any = None
        self.items: dict[int, Any] = {}
        self.text: dict[int, str] = {}
        self.error: dict | None = None

    def add(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.response = event.response
        elif kind == "response.output_item.done":
            self.items[event.output_index] = _dump(event.item)
        elif kind == "response.output_text.delta":
            self.text[event.output_index] = self.text.get(event.output_index, "") + event.delta
        elif kind == "error":
            self.error = {"type": str(getattr(event, "code", None) or "error"),
                          "message": str(getattr(event, "message", None) or "")}

    def result(self) -> dict:
        if self.response is not None:
            fields = _responses_result(self.response)
        else:
            output = dict(self.items)
            for index, text in self.text.items():
                if index not in output:
                    output[index] = {"type": "message", "role": "assistant",
                                     "content": [{"type": "output_text", "text": text}]}
            fields = {"output": [output[i] for i in sorted(output)], "metrics": {}}
        if self.error is not None:
            fields["error"] = self.error
        return fields


CHAT = _Endpoint("Chat Completion", "messages", _chat_result, _ChatChunks, first_token=True)
RESPONSES = _Endpoint("openai.responses.create", "input", _responses_result, _ResponseEvents,
                      first_token=True)
EMBEDDINGS = _Endpoint("Embedding", "input", _embeddings_result, None, first_token=False)


# -- the proxies -----------------------------------------------------------------------------


class _Proxy:
    """Passes every attribute it does not define to the wrapped object. ``__class__`` is the
    wrapped object's, so ``isinstance(proxy, openai.Stream)`` (say) still holds."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        if name == "_wrapped":  # not set yet (half-built): do not recurse
            raise AttributeError(name)
        return getattr(self._wrapped, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._wrapped)

    def __dir__(self) -> list[str]:
        return dir(self._wrapped)

    def __repr__(self) -> str:
        return repr(self._wrapped)


class _ClientProxy(_Proxy):
    """An OpenAI/AsyncOpenAI client whose LLM calls are traced."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self._children: dict[str, Any] = {}
        # The async client's methods are not all coroutine functions (some are plain functions
        # returning a coroutine), so ask the client, not each method.
        self._is_async = isinstance(client, openai.AsyncOpenAI)

    def __getattr__(self, name: str) -> Any:
        child = self._children.get(name)
        if child is not None:
            return child
        make = _TRACED_PARTS.get(name)
        if make is not None:
            child = self._children[name] = make(getattr(self._wrapped, name), self._is_async)
            return child
        if name in ("with_options", "copy"):
            method = getattr(self._wrapped, name)
            # A client derived from a traced one is traced too.
            return lambda *args, **kwargs: _ClientProxy(method(*args, **kwargs))
        return super().__getattr__(name)

    def __enter__(self) -> _ClientProxy:
        self._wrapped.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._wrapped.__exit__(*exc)

    async def __aenter__(self) -> _ClientProxy:
        await self._wrapped.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._wrapped.__aexit__(*exc)


class _ChatProxy(_Proxy):
    def __init__(self, chat: Any, is_async: bool,
                 endpoints: dict[str, _Endpoint] | None = None) -> None:
        super().__init__(chat)
        self._is_async = is_async
        self._endpoints = endpoints or {"create": CHAT, "parse": CHAT}
        self._completions: _ResourceProxy | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "completions":
            if self._completions is None:
                self._completions = _ResourceProxy(self._wrapped.completions, self._endpoints,
                                                   self._is_async)
            return self._completions
        return super().__getattr__(name)


class _BetaProxy(_Proxy):
    """``client.beta``: before openai 1.92, ``parse`` was only ``beta.chat.completions.parse``
    (some later versions keep ``beta.chat`` as another name of ``chat``)."""

    def __init__(self, beta: Any, is_async: bool) -> None:
        super().__init__(beta)
        self._is_async = is_async
        self._chat: _ChatProxy | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "chat":
            if self._chat is None:
                self._chat = _ChatProxy(self._wrapped.chat, self._is_async, {"parse": CHAT})
            return self._chat
        return super().__getattr__(name)


class _ResourceProxy(_Proxy):
    """An API resource (or its ``with_raw_response`` view) with some methods traced."""

    def __init__(self, resource: Any, endpoints: dict[str, _Endpoint], is_async: bool,
                 raw: bool = False) -> None:
        super().__init__(resource)
        self._endpoints = endpoints
        self._is_async = is_async
        self._raw = raw
        self._methods: dict[str, Any] = {}  # traced methods and the raw view, made once

    def __getattr__(self, name: str) -> Any:
        endpoint = self._endpoints.get(name)
        if endpoint is not None:
            method = self._methods.get(name)
            if method is None:
                method = self._methods[name] = _traced_method(
                    getattr(self._wrapped, name), endpoint, self._is_async, self._raw)
            return method
        if name == "with_raw_response" and not self._raw:
            raw = self._methods.get(name)
            if raw is None:
                raw = self._methods[name] = _ResourceProxy(self._wrapped.with_raw_response,
                                                           self._endpoints, self._is_async,
                                                           raw=True)
            return raw
        return super().__getattr__(name)


# The parts of a client that have traced calls: attribute name -> proxy maker.
_TRACED_PARTS: dict[str, Callable[[Any, bool], _Proxy]] = {
    "chat": _ChatProxy,
    "beta": _BetaProxy,
    "responses": lambda resource, is_async: _ResourceProxy(resource, {"create": RESPONSES},
                                                           is_async),
    "embeddings": lambda resource, is_async: _ResourceProxy(resource, {"create": EMBEDDINGS},
                                                            is_async),
}


def _traced_method(fn: Callable, endpoint: _Endpoint, is_async: bool, raw: bool) -> Callable:
    if is_async:
        @functools.wraps(fn)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            call = _Call.start(endpoint, kwargs)
            if call is None:
                return await fn(*args, **kwargs)
            token = current.set(call.span)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:  # API errors, timeouts, and a cancelled task too
                call.fail(exc)
                raise
            finally:
                current.reset(token)
            return call.returned(result, raw)

        return traced_async

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        call = _Call.start(endpoint, kwargs)
        if call is None:
            return fn(*args, **kwargs)
        token = current.set(call.span)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            current.reset(token)
        return call.returned(result, raw)

    return traced


class _Call:
    """One traced request: its span, and what to do with what the client returned."""

    def __init__(self, endpoint: _Endpoint, span: Span, stream: bool) -> None:
        self.endpoint = endpoint
        self.span = span
        self.stream = stream
        self.started = time.perf_counter()

    @classmethod
    def start(cls, endpoint: _Endpoint, kwargs: dict) -> _Call | None:
        """Open the span of a call about to be made (None when nothing is traced). ``kwargs``
        is the call's: a one-shot iterable of messages is replaced by a list, both sent and
        logged."""
        if not state.active or (current.get() is None and _parent_object() is None):
            return None  # nothing is traced: spend nothing on the parameters
        params = {}
        for key, value in kwargs.items():
            if isinstance(value, _SENTINELS) or key in UNLOGGED_PARAMS:
                continue
            if key == endpoint.input_param and isinstance(value, Iterator):
                value = kwargs[key] = list(value)
            params[key] = value
        input_ = params.pop(endpoint.input_param, None)
        metadata = {key: _readable(key, value) for key, value in params.items()}
        metadata["provider"] = PROVIDER
        span = start_span(name=endpoint.name, type="llm", input=input_, metadata=metadata)
        if not isinstance(span, Span):
            return None
        return cls(endpoint, span, kwargs.get("stream") is True)

    def fail(self, exc: BaseException) -> None:
        self.span.log(error=error_of(exc))
        self.span.end()

    def returned(self, result: Any, raw: bool) -> Any:
        """Log ``result`` (or hand it to a stream proxy) and return what the caller gets."""
        if raw:
            if self.stream:
                return _RawStreamResponse(result, self._stream_log())
            try:
                parsed = result.parse()  # cached by openai: the caller's parse() reuses it
            except Exception as exc:
                self.fail(exc)
                return result
            self._log_response(parsed)
            return result
        if isinstance(result, openai.Stream):
            return _TracedStream(result, self._stream_log())
        if isinstance(result, openai.AsyncStream):
            return _TracedAsyncStream(result, self._stream_log())
        self._log_response(result)
        return result

    def _log_response(self, response: Any) -> None:
        try:
            fields = self.endpoint.result(response)
        except Exception as exc:  # an unexpected shape: the span still ends, saying why
            fields = {"error": error_of(exc)}
        if self.endpoint.first_token:
            fields.setdefault("metrics", {})["time_to_first_token"] = (
                time.perf_counter() - self.started)
        self.span.log(**fields)
        self.span.end()

    def _stream_log(self) -> _StreamLog:
        collector = self.endpoint.collector
        return _StreamLog(self.span, self.started, collector() if collector else None)


class _StreamLog:
    """What a stream recorded, shared by its proxies; ends the span once, whichever way the
    stream ends. Holds no reference to the proxies, so that they can be collected."""

    def __init__(self, span: Span, started: float, collector: Any) -> None:
        self.span = span
        self.started = started
        self.collector = collector
        self.first_token: float | None = None
        self.last_activity = time.time()
        self.holders = 0  # proxies alive that can still consume the stream
        self.ended = False

    def hold(self, proxy: object) -> None:
        """Track ``proxy``: when the last proxy is collected, the stream was abandoned."""
        self.holders += 1
        weakref.finalize(proxy, self._release)

    def add(self, item: Any) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.started
        self.last_activity = time.time()
        if self.collector is not None:
            try:
                self.collector.add(item)
            except Exception:  # an unexpected chunk shape must not break the caller's loop
                pass

    def finish(self, exc: BaseException | None = None, end_time: float | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            fields = self.collector.result() if self.collector is not None else {}
        except Exception as failure:
            fields = {"error": error_of(failure)}
        if self.first_token is not None:
            fields.setdefault("metrics", {})["time_to_first_token"] = self.first_token
        if exc is not None:
            fields["error"] = error_of(exc)
        self.span.log(**fields)
        self.span.end(end_time)

    def _release(self) -> None:
        self.holders -= 1
        if self.holders <= 0 and not self.ended:
            # Dropped unfinished: end the span when the stream was last used, not now.
            self.finish(end_time=self.last_activity)


class _TracedStream(_Proxy):
    """An ``openai.Stream`` that records what passes through it."""

    def __init__(self, stream: Any, log: _StreamLog) -> None:
        super().__init__(stream)
        self._log = log
        log.hold(self)

    def __iter__(self) -> _TracedStream:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._wrapped)
        except StopIteration:
            self._log.finish()
            raise
        except BaseException as exc:
            self._log.finish(exc)
            raise
        self._log.add(item)
        return item

    def __enter__(self) -> _TracedStream:
        self._wrapped.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._wrapped.__exit__(*exc)
        finally:
            self._log.finish()

    def close(self) -> None:
        try:
            self._wrapped.close()
        finally:
            self._log.finish()


class _TracedAsyncStream(_Proxy):
    """An ``openai.AsyncStream`` that records what passes through it."""

    def __init__(self, stream: Any, log: _StreamLog) -> None:
        super().__init__(stream)
        self._log = log
        log.hold(self)

    def __aiter__(self) -> _TracedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._wrapped.__anext__()
        except StopAsyncIteration:
            self._log.finish()
            raise
        except BaseException as exc:  # also a task cancelled while it waits for a chunk
            self._log.finish(exc)
            raise
        self._log.add(item)
        return item

    async def __aenter__(self) -> _TracedAsyncStream:
        await self._wrapped.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self._wrapped.__aexit__(*exc)
        finally:
            self._log.finish()

    async def close(self) -> None:
        try:
            await self._wrapped.close()
        finally:
            self._log.finish()

    async def aclose(self) -> None:
        await self.close()


class _RawStreamResponse(_Proxy):
    """The raw response of a streamed call (``with_raw_response.create(stream=True)``): unchanged,
    except that ``parse()`` returns the stream as a traced proxy."""

    def __init__(self, response: Any, log: _StreamLog) -> None:
        super().__init__(response)
        self._log = log
        self._streams: dict[Any, Any] = {}
        log.hold(self)

    def parse(self, **kwargs: Any) -> Any:
        key = kwargs.get("to")
        stream = self._streams.get(key)
        if stream is None:
            stream = self._wrapped.parse(**kwargs)
            if isinstance(stream, openai.AsyncStream):
                stream = _TracedAsyncStream(stream, self._log)
            elif isinstance(stream, openai.Stream):
                stream = _TracedStream(stream, self._log)
            self._streams[key] = stream
        return stream


# -- values ----------------------------------------------------------------------------------


def _dump(value: Any) -> Any:
    """A pydantic model (what openai returns) as a dict of the fields the API sent."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        # warnings=False: a ParsedChatCompletion's ``parsed`` field holds the user's model,
        # which pydantic warns about when dumping the generic base.
        return dump(exclude_unset=True, warnings=False)
    return value


def _readable(name: str, value: Any) -> Any:
    """A request parameter as logged: a ``response_format`` given as a pydantic class becomes
    the JSON schema that is sent for it (as the reference SDK logs it)."""
    if name == "response_format" and isinstance(value, type):
        schema = getattr(value, "model_json_schema", None)
        if callable(schema):
            try:
                return {"type": "json_schema",
                        "json_schema": {"name": value.__name__, "schema": schema()}}
            except Exception:
                pass
        return value.__qualname__
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
