"""A small OpenAI-compatible HTTP server on loopback, for testing ``wrap_openai`` with the real
``openai`` client.

It serves ``POST /v1/chat/completions`` (JSON, and SSE when ``stream`` is set, with a usage chunk
when ``stream_options.include_usage`` is; a call of each tool given, when ``tools`` are),
``POST /v1/responses`` (JSON and SSE events; ``responses.parse`` too) and ``POST /v1/embeddings``
(float or base64). Replies are fixed, so tests can assert on exact values (see the constants
below). A test can tell it what to do with the next request: fail with a status, stall (so that
the client times out), break a stream with an error event half-way, answer a given text, send
tool calls whose arguments start as nulls, or send a stream of events of its own.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections import deque
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY_CHUNKS = ["Hello", " there", ", traveller."]
REPLY = "".join(REPLY_CHUNKS)
CHAT_USAGE: dict[str, Any] = {
    "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": None},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
# As wrap_openai logs them: under the reference's names (``total_tokens`` is ``tokens``).
CHAT_USAGE_METRICS = {"prompt_tokens": 11, "completion_tokens": 7, "tokens": 18,
                      "prompt_cached_tokens": 3, "completion_reasoning_tokens": 2}
TOOL_ARGUMENTS_CHUNKS = ['{"city"', ': "Par', 'is"}']
TOOL_ARGUMENTS = "".join(TOOL_ARGUMENTS_CHUNKS)
RESPONSES_USAGE: dict[str, Any] = {
    "input_tokens": 9, "output_tokens": 4, "total_tokens": 13,
    "input_tokens_details": {"cached_tokens": 1},
    "output_tokens_details": {"reasoning_tokens": 0},
}
RESPONSES_USAGE_METRICS = {"prompt_tokens": 9, "completion_tokens": 4, "tokens": 13,
                           "prompt_cached_tokens": 1, "completion_reasoning_tokens": 0}
EMBEDDING = [0.5, -0.25, 0.125, 1.0]
EMBEDDING_USAGE = {"prompt_tokens": 5, "total_tokens": 5}
CREATED = 1_700_000_000


class FakeOpenAI:
    """The server, its record of requests, and what to do with the next ones."""

    def __init__(self) -> None:
        self.requests: list[dict] = []  # bodies received, in order
        self._plans: deque[dict] = deque()
        self._lock = threading.Lock()
        self.release = threading.Event()  # ends every stall (set at shutdown)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fake-openai",
                                        daemon=True)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self._lock:
            self._plans.clear()
            self.requests.clear()

    # -- what the next request gets ---------------------------------------------------------

    def fail_next(self, status: int, message: str = "the test server was told to fail") -> None:
        """The next request gets ``status`` with an OpenAI-style error body."""
        self._plan(fail=status, message=message)

    def stall_next(self, seconds: float = 30.0) -> None:
        """The next request gets no answer for ``seconds`` (or until the server stops)."""
        self._plan(stall=seconds)

    def break_stream_next(self, after: int = 1, stall: float | None = None) -> None:
        """The next stream sends ``after`` chunks, then an error event (or, with ``stall``, goes
        silent for that long before ending)."""
        self._plan(break_after=after, stall_after=stall)

    def reply_next(self, content: str) -> None:
        """The next chat completion or response answers ``content`` (in one piece when
        streamed)."""
        self._plan(content=content)

    def null_tool_arguments_next(self) -> None:
        """The next streamed tool calls send ``"arguments": null`` in their first two chunks, as
        some OpenAI-compatible servers do, before the arguments themselves."""
        self._plan(null_arguments=True)

    def stream_events_next(self, events: list[dict]) -> None:
        """The next stream sends ``events`` (each one's ``type`` as its SSE event name), then
        ends (with no final ``response.completed`` unless one is among them)."""
        self._plan(events=events)

    def _plan(self, **plan: Any) -> None:
        with self._lock:
            self._plans.append(plan)

    def _take(self, body: dict) -> dict:
        with self._lock:
            self.requests.append(body)
            return self._plans.popleft() if self._plans else {}


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, SSE bodies end when the connection closes.
    protocol_version = "HTTP/1.0"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        fake: FakeOpenAI = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        plan = fake._take(body)
        try:
            if "stall" in plan:
                fake.release.wait(plan["stall"])
            if "fail" in plan:
                self._json(plan["fail"], {"error": {"message": plan["message"],
                                                    "type": "test_error", "param": None,
                                                    "code": "test_failure"}})
                return
            if self.path == "/v1/chat/completions":
                self._chat(body, plan, fake)
            elif self.path == "/v1/responses":
                self._responses(body, plan, fake)
            elif self.path == "/v1/embeddings":
                self._embeddings(body)
            else:
                self._json(404, {"error": {"message": f"no route {self.path}", "type": "x"}})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (closed a stream early, timed out): that is the test

    # -- replies ----------------------------------------------------------------------------

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", "req_test")
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: Sequence[tuple[str | None, Any]], plan: dict, fake: FakeOpenAI) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("x-request-id", "req_test")
        self.end_headers()
        for i, (name, data) in enumerate(events):
            if "break_after" in plan and i == plan["break_after"]:
                if plan.get("stall_after") is not None:
                    self.wfile.flush()
                    fake.release.wait(plan["stall_after"])
                    return
                data, name = {"error": {"message": "the stream broke", "type": "test_error"}}, None
                self._event(name, data)
                return
            self._event(name, data)
        self.wfile.flush()

    def _event(self, name: str | None, data: Any) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        head = f"event: {name}\n" if name else ""
        self.wfile.write(f"{head}data: {text}\n\n".encode())
        self.wfile.flush()

    def _chat(self, body: dict, plan: dict, fake: FakeOpenAI) -> None:
        n = body.get("n") or 1
        tools = body.get("tools")
        content = plan.get("content")
        if body.get("stream"):
            usage = (body.get("stream_options") or {}).get("include_usage")
            self._sse(_chat_chunks(body["model"], n, tools, content, usage,
                                   plan.get("null_arguments", False)), plan, fake)
            return
        if tools:
            message = {"role": "assistant", "content": None, "tool_calls": _tool_calls(tools)}
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": REPLY if content is None else content}
            finish = "stop"
        self._json(200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": CREATED,
            "model": body["model"],
            "choices": [{"index": i, "message": message, "logprobs": None,
                         "finish_reason": finish} for i in range(n)],
            "usage": CHAT_USAGE,
        })

    def _responses(self, body: dict, plan: dict, fake: FakeOpenAI) -> None:
        if "events" in plan:
            self._sse([(event["type"], event) for event in plan["events"]], plan, fake)
            return
        text = plan.get("content", REPLY)
        message = {"type": "message", "id": "msg_test", "status": "completed",
                   "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}
        response = {"id": "resp_test", "object": "response", "created_at": CREATED,
                    "status": "completed", "model": body.get("model"), "output": [message],
                    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                    "usage": RESPONSES_USAGE}
        if not body.get("stream"):
            self._json(200, response)
            return
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        item = {**message, "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"type": "response.created", "response": started}),
            ("response.output_item.added", {"type": "response.output_item.added",
                                            "output_index": 0, "item": item}),
            ("response.content_part.added", {"type": "response.content_part.added",
                                             "item_id": "msg_test", "output_index": 0,
                                             "content_index": 0, "part": part})]
        events += [("response.output_text.delta", {"type": "response.output_text.delta",
                                                   "item_id": "msg_test", "output_index": 0,
                                                   "content_index": 0, "delta": piece,
                                                   "logprobs": []})
                   for piece in (REPLY_CHUNKS if "content" not in plan else [text])]
        events += [("response.output_item.done", {"type": "response.output_item.done",
                                                  "output_index": 0, "item": message}),
                   ("response.completed", {"type": "response.completed",
                                           "response": response})]
        for seq, (_, data) in enumerate(events):
            data["sequence_number"] = seq
        self._sse(events, plan, fake)

    def _embeddings(self, body: dict) -> None:
        inputs = body["input"]
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if body.get("encoding_format") == "base64":
            vector: Any = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING))
            vector = vector.decode()
        else:
            vector = EMBEDDING
        self._json(200, {
            "object": "list", "model": body["model"], "usage": EMBEDDING_USAGE,
            "data": [{"object": "embedding", "index": i, "embedding": vector}
                     for i in range(len(inputs))],
        })


def _tool_calls(tools: list[dict]) -> list[dict]:
    """A call of each tool: ``call_test`` for the first, ``call_test_<i>`` for the others."""
    return [{"id": "call_test" if i == 0 else f"call_test_{i}", "type": "function",
             "function": {"name": tool["function"]["name"], "arguments": TOOL_ARGUMENTS}}
            for i, tool in enumerate(tools)]


def _chat_chunks(model: str, n: int, tools: list | None, content: str | None,
                 usage: bool | None, null_arguments: bool) -> list[tuple[None, Any]]:
    def chunk(choices: list[dict], **extra: Any) -> tuple[None, dict]:
        return None, {"id": "chatcmpl-test", "object": "chat.completion.chunk",
                      "created": CREATED, "model": model, "choices": choices, **extra}

    def each(delta: dict, finish: str | None = None) -> list[dict]:
        return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
                for i in range(n)]

    chunks: list[tuple[None, Any]] = [chunk(each({"role": "assistant", "content": ""}))]
    if tools:
        for i, call in enumerate(_tool_calls(tools)):
            first = {"index": i, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"],
                                  "arguments": None if null_arguments else ""}}
            chunks.append(chunk(each({"tool_calls": [first]})))
            if null_arguments:
                chunks.append(chunk(each({"tool_calls": [
                    {"index": i, "function": {"arguments": None}}]})))
            chunks += [chunk(each({"tool_calls": [{"index": i,
                                                   "function": {"arguments": piece}}]}))
                       for piece in TOOL_ARGUMENTS_CHUNKS]
        chunks.append(chunk(each({}, "tool_calls")))
    else:
        pieces = REPLY_CHUNKS if content is None else [content]
        chunks += [chunk(each({"content": piece})) for piece in pieces]
        chunks.append(chunk(each({}, "stop")))
    if usage:
        chunks.append(chunk([], usage=CHAT_USAGE))
    chunks.append((None, "[DONE]"))
    return chunks
