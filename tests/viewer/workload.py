"""The traced programs behind the viewer's tests, screenshots and benchmark: real spans, through
the real aggregator, into a store that ``tracer serve`` then reads.

Each function runs in a fresh interpreter (``run_function`` in tests/conftest.py, or the
scripts), logs what the viewer has to show and prints a JSON object naming what it made (root
span ids, permalinks, experiment ids), which the tests read.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import wave
import zlib

import tracer

PROJECT = "viewer-demo"
BIG_PROJECT = "viewer-big"
XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "<script>alert(1)</script>"
IMAGE_URL = "https://images.example.com/photos/cat.png"


def png(width: int = 24, height: int = 16, rgb: tuple[int, int, int] = (47, 95, 208)) -> bytes:
    """A small valid PNG of one colour with a lighter diagonal (no imaging library needed)."""
    rows = b""
    for y in range(height):
        row = b"\x00"
        for x in range(width):
            light = abs(x * height - y * width) < width
            row += bytes(255 - (255 - c) // 3 if light else c for c in rgb)
        rows += row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def pdf() -> bytes:
    """A one-page PDF saying hello."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 120] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        None,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    text = b"BT /F1 18 Tf 30 60 Td (Quarterly report) Tj ET"
    objects[3] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text)
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return out


def wav(seconds: float = 0.4, hz: float = 440.0) -> bytes:
    """A short sine tone as 16-bit mono WAV."""
    rate = 8000
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(
            struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / rate)))
            for i in range(int(rate * seconds))))
    return buf.getvalue()


def data_url(width: int = 20, height: int = 20) -> str:
    return "data:image/png;base64," + base64.b64encode(png(width, height, (27, 127, 59))).decode()


@tracer.traced(type="function")
def retrieve(question: str) -> list[str]:
    return ["Paris is the capital of France.", "France is in Europe."]


@tracer.traced(type="tool", name="get_weather")
def get_weather(city: str) -> dict:
    return {"city": city, "forecast": "sunny", "celsius": 21}


def chat_completion(question: str, docs: list[str]) -> str:
    messages = [
        {"role": "system", "content": "You answer with the documents given."},
        {"role": "user", "content": [
            {"type": "text", "text": f"{question}\n\nDocuments:\n" + "\n".join(docs)},
            {"type": "image_url", "image_url": {"url": data_url(120, 72)}},
        ]},
    ]
    with tracer.start_span("Chat Completion", type="llm", input=messages,
                           metadata={"model": "gpt-4o-mini", "temperature": 0.2,
                                     "provider": "openai"}) as llm:
        weather = get_weather("Paris")
        answer = f"The capital of France is Paris (and it is {weather['forecast']})."
        llm.log(output=[{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": answer, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
            }]},
        }], metrics={"prompt_tokens": 52, "completion_tokens": 14, "tokens": 66,
                     "time_to_first_token": 0.231})
        return answer


@tracer.traced(type="task", name="answer question")
def answer_question(question: str) -> str:
    tracer.current_span().log(metadata={"customer": "acme", "channel": "web"})
    answer = chat_completion(question, retrieve(question))
    with tracer.start_span("relevance", type="score") as s:
        s.log(scores={"relevance": 0.85}, input={"answer": answer})
    tracer.current_span().log(scores={"accuracy": 0.9})
    return answer


@tracer.traced(type="function")
def parse_invoice(text: str) -> dict:
    raise ValueError(f"no total in invoice: {text!r}")


@tracer.traced(type="task", name="failing job")
def failing_job(text: str) -> dict | None:
    tracer.current_span().log(metadata={"customer": "globex"})
    try:
        return parse_invoice(text)
    except ValueError:
        return None


def media_trace() -> str:
    with tracer.start_span("describe image", type="task", input={
        "photo": IMAGE_URL,
        "thumbnail": data_url(),
        "chart": tracer.Attachment(png(160, 96), filename="chart.png", content_type="image/png"),
        "report": tracer.Attachment(pdf(), filename="report.pdf", content_type="application/pdf"),
        "voice": tracer.Attachment(wav(), filename="voice.wav", content_type="audio/wav"),
        "source": tracer.ExternalAttachment(url="https://example.com/files/original.tiff",
                                            filename="original.tiff"),
    }, metadata={"customer": "acme"}) as span:
        span.log(output="A blue square with a lighter diagonal.")
        return span.permalink()


def xss_trace() -> str:
    with tracer.start_span(f"xss {XSS_IMG}", type="task", input=XSS_IMG,
                           metadata={XSS_SCRIPT: XSS_IMG}) as span:
        span.log(output=XSS_SCRIPT, tags=[XSS_IMG])
        return span.root_span_id


def large_trace() -> str:
    with tracer.start_span("large output", type="task", input="make it big") as span:
        span.log(output={"rows": [{"i": i, "text": "x" * 100} for i in range(1000)]})
        return span.root_span_id


def multi_parent_trace() -> str:
    with tracer.start_span("pipeline", type="task") as pipeline:
        users = pipeline.start_span("fetch users", type="function")
        orders = pipeline.start_span("fetch orders", type="function")
        users.end()
        orders.end()
        with tracer.start_span("join", type="function", parents=[users, orders]) as join:
            join.log(output={"rows": 42})
        return pipeline.root_span_id


def write_running_trace(store: str) -> None:
    """A span still running: flushed, not ended. Prints its root span id, then waits until its
    standard input closes (the caller keeps it running while the viewer looks)."""
    import sys

    tracer.init_logger(PROJECT, store=store)
    span = tracer.start_span("still running", type="task", input="a long task")
    with span.start_span("step 1", type="function") as step:
        step.log(output="done")
    span.log(metadata={"progress": 0.4})
    tracer.flush()
    print(json.dumps({"root": span.root_span_id}), flush=True)
    sys.stdin.read()
    span.end()


def experiments() -> dict:
    """An experiment pair: one row regresses, one improves, one is the same, and each has a
    row the other has not."""
    rows_a = {"2+2?": 1.0, "capital of France?": 0.5, "3*3?": 1.0, "only in baseline": 0.7}
    rows_b = {"2+2?": 0.0, "capital of France?": 1.0, "3*3?": 1.0, "only in candidate": 0.6}
    made = {}
    for name, rows in (("baseline", rows_a), ("candidate", rows_b)):
        exp = tracer.init(PROJECT, name, set_current=False)
        for question, value in rows.items():
            # Rows only one side has get names of their own: not matched by input nor by name.
            span_name = question.replace(" ", "-") if question.startswith("only") else "eval"
            with exp.start_span(span_name, input=question, expected="?") as root:
                with root.start_span("model", type="llm",
                                     input=[{"role": "user", "content": question}]) as llm:
                    llm.log(output=f"answer to {question}",
                            metrics={"prompt_tokens": 5, "completion_tokens": 3, "tokens": 8})
                root.log(output=f"answer to {question}", scores={"correct": value})
        made[name] = {"id": exp.id, "permalink": root.permalink(),  # the last row's
                      "root_span_id": root.root_span_id}
        exp.flush()
    return made


def write_demo_store(store: str) -> None:
    """Everything the viewer's tests look at, in project ``viewer-demo``; prints what it made."""
    tracer.init_logger(PROJECT, store=store)
    made: dict = {}
    failing_job("total: ???")
    answer_question("What is the capital of France?")
    made["media_permalink"] = media_trace()
    made["xss"] = xss_trace()
    made["large"] = large_trace()
    made["multi_parent"] = multi_parent_trace()
    with tracer.start_span("permalink target", type="task") as span, \
            span.start_span("lookup", type="function", input="Paris") as child:
        child.log(output="found")
        made["permalink"] = child.permalink()
        made["permalink_span"] = child.span_id
    made["experiments"] = experiments()
    tracer.flush()
    print(json.dumps(made))


def write_big_trace(store: str, spans: int = 10_000, project: str = BIG_PROJECT) -> None:
    """One trace of ``spans`` spans: a root, groups of 100 under it, leaves under those; the
    last span started is named "last span". Prints its root span id and the last span's id."""
    logger = tracer.init_logger(project, store=store)
    with logger.start_span(f"big trace of {spans} spans", type="task") as root:
        made = 1
        group = None
        last = None
        while made < spans:
            if group is None or made % 100 == 1:
                if group is not None:
                    group.end()
                group = root.start_span(f"group {made // 100}", type="function")
                made += 1
                continue
            remaining = spans - made
            name = "last span" if remaining == 1 else f"span {made}"
            with group.start_span(name, type="llm" if made % 7 == 0 else "tool") as leaf:
                leaf.log(output=made)
                last = leaf
            made += 1
        if group is not None:
            group.end()
    tracer.flush()
    print(json.dumps({"root": root.root_span_id, "last": last.span_id if last else None}))


def write_one_trace(store: str, name: str) -> None:
    """One more trace in ``viewer-demo`` (the live tail's newcomer)."""
    tracer.init_logger(PROJECT, store=store)
    with tracer.start_span(name, type="task", input="arrived later") as span:
        span.log(output="tail")
    tracer.flush()
    print(json.dumps({"root": span.root_span_id}))
