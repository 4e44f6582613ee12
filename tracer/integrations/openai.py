"""``wrap_openai`` and ``patch_openai``: every call through an OpenAI client becomes a span of
type ``llm``, in the rows the reference SDK's ``wrap_openai`` writes.

The wrapper is a proxy: attribute access is passed to the real client, except for the calls we
trace (``chat.completions.create`` and ``parse``, ``responses.create`` and ``parse``,
``embeddings.create``, ``beta.chat.completions.parse``, and the same under ``with_raw_response``
and ``with_streaming_response``). A traced call follows the reference's conventions for LLM
spans: the messages (or ``input``) as input, the other request parameters in metadata with
``provider: "openai"``, the response in output, and token counts in metrics under the
reference's names (``prompt_tokens``, ``completion_tokens``, ``tokens`` for the API's
``total_tokens``, and ``prompt_<detail>`` / ``completion_<detail>`` for the usage details, such
as ``prompt_cached_tokens`` and ``completion_reasoning_tokens``).

The LLM span is the current span only while the request runs. A stream is returned as a proxy
of the ``openai`` stream that records chunks as the caller consumes them and ends the span, once,
with what arrived, however the caller stops: the stream is exhausted, fails, is closed, its
``with`` block is left, a ``for``/``async for`` loop over it is left early (``break``, ``return``,
an exception), or it is dropped unfinished.
"""

from __future__ import annotations

import functools
import inspect
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
# Parameters that may be one-shot iterators: made lists, so that they are both sent and logged.
_MATERIALIZED_PARAMS = frozenset({"messages", "input", "tools"})
# The defaults of parameters that were not given (``Omit`` is not in every openai version).
_SENTINELS = tuple(sentinel for sentinel in (getattr(openai, "NotGiven", None),
                                             getattr(openai, "Omit", None)) if sentinel)
# Set on a client that ``patch_openai`` traced in place, and on the ``openai`` module once patched.
_TRACED_IN_PLACE = "_tracer_traced"
_PATCHED = "__tracer_patched__"
# The reference's names for the same marks: code that checks whether the reference patched or
# wrapped something (its own tests do) finds them here too.
_REFERENCE_PATCHED = "__braintrust_wrapped__"
_REFERENCE_WRAPPED = "_NamedWrapper__wrapped"

# How a traced method returns: the parsed object (the plain methods), a raw response whose body
# is read (``with_raw_response``), or a context manager whose response is read on entering it
# (``with_streaming_response``).
PLAIN, RAW, STREAMING = "plain", "raw", "streaming"
_VIEWS = {"with_raw_response": RAW, "with_streaming_response": STREAMING}


def wrap_openai(client: C) -> C:
    """See ``tracer.wrap_openai``."""
    if isinstance(client, _ClientProxy) or getattr(client, _TRACED_IN_PLACE, False):
        return client
    if not any(hasattr(client, name) for name in ("chat", "responses", "embeddings")):
        raise TypeError(
            f"wrap_openai: expected an openai.OpenAI or openai.AsyncOpenAI client, got "
            f"{type(client).__name__}"
        )
    return _ClientProxy(client)  # type: ignore[return-value]


def patch_openai() -> bool:
    """See ``tracer.patch_openai``."""
    if getattr(openai, _PATCHED, False):
        return True
    for name in ("OpenAI", "AsyncOpenAI"):
        cls = getattr(openai, name)
        # The class ``openai.OpenAI`` names now: another library's subclass, if it patched
        # first, whose own __init__ then runs too.
        cls.__init__ = _tracing_init(cls.__init__)
    setattr(openai, _PATCHED, True)
    setattr(openai, _REFERENCE_PATCHED, True)
    return True


def _tracing_init(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        _trace_in_place(self)

    return __init__


def _trace_in_place(client: Any) -> None:
    """Trace ``client`` itself: its traced parts (``chat``, ``responses``, ...) are replaced, on
    the instance, by their tracing proxies (the client caches them per instance anyway)."""
    if getattr(client, _TRACED_IN_PLACE, False):
        return
    is_async = isinstance(client, openai.AsyncOpenAI)
    for name, make in _TRACED_PARTS.items():
        part = getattr(client, name, None)
        if part is not None:
            client.__dict__[name] = make(part, is_async)
    client.__dict__[_TRACED_IN_PLACE] = True


# -- what each traced call logs --------------------------------------------------------------


class _Endpoint:
    """One kind of traced call: the span's name, which parameter is the input, how to log a
    response, and how to assemble a stream."""

    def __init__(self, name: str, input_param: str, result: Callable[[Any], dict],
                 collector: Callable[[], Any] | None, first_token: bool) -> None:
        self.name = name
        self.input_param = input_param
        self.result = result  # response -> fields to log ("output", "metrics", "metadata")
        self.collector = collector  # makes the object that assembles a stream's chunks
        self.first_token = first_token  # log time_to_first_token for a non-streamed answer


def _chat_result(completion: Any) -> dict:
    return {"output": [_dump(choice) for choice in completion.choices],
            "metrics": usage_metrics(getattr(completion, "usage", None))}


# Fields of a Responses API response that the reference logs in metadata (the ones present).
_RESPONSE_METADATA = ("id", "model", "status", "created_at", "moderation", "service_tier",
                      "access_programs", "object", "background", "incomplete_details")


def _responses_result(response: Any) -> dict:
    fields: dict[str, Any] = {"output": [_dump(item) for item in response.output or ()],
                              "metrics": usage_metrics(getattr(response, "usage", None))}
    metadata = {key: _dump(value) for key in _RESPONSE_METADATA
                if (value := getattr(response, key, None)) is not None}
    if metadata:
        fields["metadata"] = metadata
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


def _response_error(error: Any) -> str:
    """An error the API reports inside a response: ``"<code>: <message>"``, a string like every
    ``error`` the reference logs."""
    error = _dump(error)
    if isinstance(error, dict):
        return _error_line(error.get("code") or error.get("type"), error.get("message"))
    return _error_line(None, error)


def _error_line(code: Any, message: Any) -> str:
    return f"{code or 'error'}: {message or ''}"


# The API's usage names -> the reference's metric names (others keep their names).
_TOKEN_NAMES = {"total_tokens": "tokens", "input_tokens": "prompt_tokens",
                "output_tokens": "completion_tokens"}
_DETAIL_PREFIXES = {"input": "prompt", "output": "completion"}


def usage_metrics(usage: Any) -> dict[str, int | float]:
    """Token counts from an API ``usage`` object, under the reference SDK's metric names.

    Every number in ``usage`` is kept: ``total_tokens`` as ``tokens``, and the Responses API's
    ``input_tokens``/``output_tokens`` as ``prompt_tokens``/``completion_tokens``; each number in
    a ``<kind>_tokens_details`` object becomes ``<kind>_<name>`` (``input``/``output`` as
    ``prompt``/``completion``), e.g. ``prompt_cached_tokens`` or
    ``completion_reasoning_tokens``, with ``prompt_cache_write_tokens`` named
    ``prompt_cache_creation_tokens``. Values the API did not return are left out.
    """
    usage = _dump(usage)
    metrics: dict[str, int | float] = {}
    if not isinstance(usage, dict):
        return metrics
    for key, value in usage.items():
        key = str(key)
        if key.endswith("_tokens_details"):
            if isinstance(value, dict):
                kind = key[: -len("_tokens_details")]
                prefix = _DETAIL_PREFIXES.get(kind, kind)
                for name, count in value.items():
                    if _is_number(count):
                        metrics[f"{prefix}_{name}"] = count
        elif _is_number(value):
            metrics[_TOKEN_NAMES.get(key, key)] = value
    cache_writes = metrics.pop("prompt_cache_write_tokens", None)
    if cache_writes is not None:
        metrics.setdefault("prompt_cache_creation_tokens", cache_writes)
    return metrics


class _ChatChunks:
    """Assembles chat completion chunks into choices shaped as the reference logs a stream's:
    ``{"index", "message": {"role", "content", "tool_calls", ...}, "logprobs",
    "finish_reason"}``, one for each choice index."""

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
                    "message": {"role": None, "content": None, "tool_calls": None},
                    "logprobs": None,
                    "finish_reason": None,
                }
            if choice.finish_reason is not None:
                slot["finish_reason"] = choice.finish_reason
            logprobs = getattr(choice, "logprobs", None)
            if logprobs is not None:
                kept = slot["logprobs"]
                if kept is None:
                    kept = slot["logprobs"] = {"content": None, "refusal": None}
                for field in ("content", "refusal"):
                    tokens = getattr(logprobs, field, None)
                    if tokens is not None:
                        if kept[field] is None:
                            kept[field] = []
                        kept[field].extend(_dump(token) for token in tokens)
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
    # Some OpenAI-compatible servers send null names and arguments in later chunks.
    if getattr(piece, "name", None):
        target["name"] += piece.name
    if getattr(piece, "arguments", None):
        target["arguments"] += piece.arguments


_TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


class _ResponseEvents:
    """Assembles Responses API stream events as the reference does: the final response when it
    arrived; else the output items announced so far (``id``, ``type``, ``role``), with their
    ``status`` once done and the text of each content part by its index (gaps left as ``{}``),
    annotations likewise."""

    def __init__(self) -> None:
        self.response: Any = None
        self.output: list[dict] = []
        self.error: str | None = None

    def add(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind in _TERMINAL_EVENTS:
            self.response = event.response
            return
        if kind == "error":
            self.error = _error_line(getattr(event, "code", None),
                                     getattr(event, "message", None))
            return
        if kind == "response.output_item.added":
            item = event.item
            entry = {"id": getattr(item, "id", None), "type": getattr(item, "type", None)}
            if hasattr(item, "role"):
                entry["role"] = item.role
            self.output.append(entry)
            return
        index = getattr(event, "output_index", None)
        if not isinstance(index, int) or not 0 <= index < len(self.output):
            return
        entry = self.output[index]
        if kind == "response.output_item.done":
            status = getattr(event.item, "status", None)
            if status is not None:
                entry["status"] = status
            return
        if kind == "response.output_item.delta":
            entry["delta"] = event.delta
            return
        part_index = getattr(event, "content_index", None)
        if not isinstance(part_index, int):
            return
        parts = _grown(entry.setdefault("content", []), part_index)
        part = parts[part_index]
        part["type"] = "output_text"
        delta = getattr(event, "delta", None)
        if delta and isinstance(delta, str):
            part["text"] = (part.get("text") or "") + delta
        if kind == "response.output_text.annotation.added":
            annotation_index = event.annotation_index
            annotations = _grown(part.setdefault("annotations", []), annotation_index)
            annotations[annotation_index] = _dump(event.annotation)

    def result(self) -> dict:
        if self.response is not None:
            fields = _responses_result(self.response)
        else:
            fields = {"output": self.output, "metrics": {}}
        if self.error is not None:
            fields["error"] = self.error
        return fields


def _grown(items: list, index: int) -> list:
    """``items`` with ``{}`` appended up to ``index``."""
    while len(items) <= index:
        items.append({})
    return items


CHAT = _Endpoint("Chat Completion", "messages", _chat_result, _ChatChunks, first_token=True)
RESPONSES = _Endpoint("openai.responses.create", "input", _responses_result, _ResponseEvents,
                      first_token=True)
RESPONSES_PARSE = _Endpoint("openai.responses.parse", "input", _responses_result,
                            _ResponseEvents, first_token=True)
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

    @property
    def _NamedWrapper__wrapped(self) -> Any:  # noqa: N802 (the reference's mangled name)
        """The client this one traces, under the name the reference's wrappers give it."""
        return self._wrapped

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
            return lambda *args, **kwargs: wrap_openai(method(*args, **kwargs))
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
    """An API resource (or its ``with_raw_response`` or ``with_streaming_response`` view) with
    some methods traced."""

    def __init__(self, resource: Any, endpoints: dict[str, _Endpoint], is_async: bool,
                 mode: str = PLAIN) -> None:
        super().__init__(resource)
        self._endpoints = endpoints
        self._is_async = is_async
        self._mode = mode
        self._methods: dict[str, Any] = {}  # traced methods and the views, made once

    def __getattr__(self, name: str) -> Any:
        made = self._methods.get(name)
        if made is not None:
            return made
        endpoint = self._endpoints.get(name)
        if endpoint is not None:
            made = _traced_method(getattr(self._wrapped, name), endpoint, self._is_async,
                                  self._mode)
        elif self._mode == PLAIN and name in _VIEWS:
            made = _ResourceProxy(getattr(self._wrapped, name), self._endpoints, self._is_async,
                                  _VIEWS[name])
        else:
            return super().__getattr__(name)
        self._methods[name] = made
        return made


def _resource(endpoints: dict[str, _Endpoint]) -> Callable[[Any, bool], _Proxy]:
    return lambda resource, is_async: _ResourceProxy(resource, endpoints, is_async)


# The parts of a client that have traced calls: attribute name -> proxy maker.
_TRACED_PARTS: dict[str, Callable[[Any, bool], _Proxy]] = {
    "chat": _ChatProxy,
    "beta": _BetaProxy,
    "responses": _resource({"create": RESPONSES, "parse": RESPONSES_PARSE}),
    "embeddings": _resource({"create": EMBEDDINGS}),
}


def _traced_method(fn: Callable, endpoint: _Endpoint, is_async: bool, mode: str) -> Callable:
    if mode == STREAMING:
        # openai's method makes no request: it returns a context manager that makes it when
        # entered (and captures the arguments now, so one-shot iterators are made lists first).
        manager = _TracedAsyncResponseManager if is_async else _TracedResponseManager

        @functools.wraps(fn)
        def streaming(*args: Any, **kwargs: Any) -> Any:
            _materialize(kwargs)
            return manager(fn(*args, **kwargs), endpoint, kwargs)

        return streaming

    if is_async:
        @functools.wraps(fn)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            call = _Call.start(endpoint, kwargs)
            if call is None:
                return await fn(*args, **kwargs)
            with call:
                result = await fn(*args, **kwargs)
            return await call.areturned(result, mode)

        return traced_async

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        call = _Call.start(endpoint, kwargs)
        if call is None:
            return fn(*args, **kwargs)
        with call:
            result = fn(*args, **kwargs)
        return call.returned(result, mode)

    return traced


def _materialize(kwargs: dict) -> None:
    """Replace one-shot iterators among the parameters that may be ones by lists, so that the
    same values are sent and logged."""
    for key in _MATERIALIZED_PARAMS.intersection(kwargs):
        if isinstance(kwargs[key], Iterator):
            kwargs[key] = list(kwargs[key])


class _Call:
    """One traced request: its span, and what to do with what the client returned."""

    def __init__(self, endpoint: _Endpoint, span: Span, stream: bool) -> None:
        self.endpoint = endpoint
        self.span = span
        self.stream = stream
        self.started = time.perf_counter()
        self.log: _StreamLog | None = None  # a stream's, once it is returned
        self._token: Any = None  # the current span's before this request (see __enter__)

    @classmethod
    def start(cls, endpoint: _Endpoint, kwargs: dict) -> _Call | None:
        """Open the span of a call about to be made (None when nothing is traced). ``kwargs``
        is the call's: a one-shot iterable of messages is replaced by a list, both sent and
        logged."""
        if not state.active or (current.get() is None and _parent_object() is None):
            return None  # nothing is traced: spend nothing on the parameters
        _materialize(kwargs)
        params = {key: value for key, value in kwargs.items()
                  if not isinstance(value, _SENTINELS) and key not in UNLOGGED_PARAMS}
        input_ = params.pop(endpoint.input_param, None)
        metadata = {key: _readable(value) for key, value in params.items()}
        metadata["provider"] = PROVIDER
        span = start_span(name=endpoint.name, type="llm", input=input_, metadata=metadata)
        if not isinstance(span, Span):
            return None
        return cls(endpoint, span, kwargs.get("stream") is True)

    def __enter__(self) -> _Call:
        """While the request runs: its span is the current span, and whatever it raises (API
        errors, timeouts, a cancelled task too) is logged and ends the span."""
        self._token = current.set(self.span)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        current.reset(self._token)
        if exc is not None:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        self.span.log(error=error_of(exc))
        self.span.end()

    def returned(self, result: Any, mode: str) -> Any:
        """Log ``result`` (or hand it to a stream proxy) and return what the caller gets."""
        if mode != PLAIN:  # a raw response
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

    async def areturned(self, result: Any, mode: str) -> Any:
        """``returned`` for the async client, whose raw responses (``with_streaming_response``)
        parse asynchronously."""
        if mode == PLAIN or self.stream:
            return self.returned(result, mode)
        try:
            parsed = result.parse()  # cached by openai: the caller's parse() reuses it
            if inspect.isawaitable(parsed):
                parsed = await parsed
        except Exception as exc:
            self.fail(exc)
            return result
        except BaseException as exc:  # cancelled while reading the body
            self.fail(exc)
            raise
        self._log_response(parsed)
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
        self.log = _StreamLog(self.span, self.started, collector() if collector else None)
        return self.log


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
        if self.ended:  # read on after the span ended (a loop resumed after a break)
            return
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

    def left(self) -> None:
        """The caller stopped reading (left a loop early, dropped the stream): end the span
        with what arrived, at the time the stream was last read, not now."""
        if not self.ended:
            self.finish(end_time=self.last_activity)

    def _release(self) -> None:
        self.holders -= 1
        if self.holders <= 0:
            self.left()


class _Loop:
    """One ``for`` loop over a traced stream (what ``iter(stream)`` returns). Python tells an
    iterator nothing when a loop is left early (``break``, ``return``, an exception in its
    body): the loop only drops it. So dropping it ends the stream's span, if the stream has
    not ended it already."""

    __slots__ = ("_stream",)

    def __init__(self, stream: _TracedStream) -> None:
        self._stream = stream

    def __iter__(self) -> _Loop:
        return self

    def __next__(self) -> Any:
        return self._stream.__next__()

    def __del__(self) -> None:
        self._stream._log.left()


class _AsyncLoop:
    """One ``async for`` loop over a traced async stream (see ``_Loop``)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: _TracedAsyncStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _AsyncLoop:
        return self

    def __anext__(self) -> Any:
        return self._stream.__anext__()

    def __del__(self) -> None:
        self._stream._log.left()


class _TracedStream(_Proxy):
    """An ``openai.Stream`` that records what passes through it."""

    def __init__(self, stream: Any, log: _StreamLog) -> None:
        super().__init__(stream)
        self._log = log
        log.hold(self)

    def __iter__(self) -> _Loop:
        return _Loop(self)

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

    def __aiter__(self) -> _AsyncLoop:
        return _AsyncLoop(self)

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
    """The raw response of a streamed call (``with_raw_response`` or ``with_streaming_response``
    with ``stream=True``): unchanged, except that ``parse()`` returns the stream as a traced
    proxy (a coroutine that does, where the response's own ``parse`` is one)."""

    def __init__(self, response: Any, log: _StreamLog) -> None:
        super().__init__(response)
        self._log = log
        self._streams: dict[Any, Any] = {}
        self._async_parse = inspect.iscoroutinefunction(response.parse)
        log.hold(self)

    def parse(self, **kwargs: Any) -> Any:
        if self._async_parse:
            return self._parse_async(**kwargs)
        key = kwargs.get("to")
        stream = self._streams.get(key)
        if stream is None:
            stream = self._keep(key, self._wrapped.parse(**kwargs))
        return stream

    async def _parse_async(self, **kwargs: Any) -> Any:
        key = kwargs.get("to")
        stream = self._streams.get(key)
        if stream is None:
            stream = self._keep(key, await self._wrapped.parse(**kwargs))
        return stream

    def _keep(self, key: Any, stream: Any) -> Any:
        if isinstance(stream, openai.AsyncStream):
            stream = _TracedAsyncStream(stream, self._log)
        elif isinstance(stream, openai.Stream):
            stream = _TracedStream(stream, self._log)
        self._streams[key] = stream
        return stream


class _TracedResponseManager(_Proxy):
    """What ``with_streaming_response.<method>(...)`` returns: openai's context manager, whose
    request, made on entering it, is traced. A stream's span ends at the latest on leaving it
    (which closes the response)."""

    def __init__(self, manager: Any, endpoint: _Endpoint, kwargs: dict) -> None:
        super().__init__(manager)
        self._endpoint = endpoint
        self._kwargs = kwargs
        self._call: _Call | None = None

    def __enter__(self) -> Any:
        call = self._call = _Call.start(self._endpoint, self._kwargs)
        if call is None:
            return self._wrapped.__enter__()
        with call:
            response = self._wrapped.__enter__()
        return call.returned(response, STREAMING)

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._wrapped.__exit__(*exc)
        finally:
            _finish_stream(self._call)


class _TracedAsyncResponseManager(_TracedResponseManager):
    """``_TracedResponseManager`` for the async client."""

    async def __aenter__(self) -> Any:
        call = self._call = _Call.start(self._endpoint, self._kwargs)
        if call is None:
            return await self._wrapped.__aenter__()
        with call:
            response = await self._wrapped.__aenter__()
        return await call.areturned(response, STREAMING)

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self._wrapped.__aexit__(*exc)
        finally:
            _finish_stream(self._call)


def _finish_stream(call: _Call | None) -> None:
    if call is not None and call.log is not None:
        call.log.finish()


# -- values ----------------------------------------------------------------------------------


def _dump(value: Any) -> Any:
    """A pydantic model (what openai returns) as a dict of the fields the API sent."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        # warnings=False: a ParsedChatCompletion's ``parsed`` field holds the user's model,
        # which pydantic warns about when dumping the generic base.
        return dump(exclude_unset=True, warnings=False)
    return value


def _readable(value: Any) -> Any:
    """A request parameter as logged: a pydantic class (``response_format``, ``text_format``)
    becomes the JSON schema that is sent for it, as the reference logs it."""
    if isinstance(value, type):
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
