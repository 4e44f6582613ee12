"""Traced programs whose stores the trace server's tests serve: run in fresh interpreters
(``conftest.run_function``), through the real aggregator."""

from __future__ import annotations

import base64
import json

import tracer

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
TRACES = 12


def write_api_store(store: str) -> None:
    """The project "api-test": 12 request traces (some with errors, LLM spans, scores,
    metadata), one with a 100 KB input, one with attachments; two experiments of two rows
    each. Prints what the tests need to know, as JSON."""
    tracer.init_logger("api-test", store=store)
    roots = []
    for i in range(TRACES):
        with tracer.start_span(f"request {i}", type="task",
                               input={"question": f"question number {i}"}) as root:
            with tracer.start_span("retrieve", type="tool", input=f"lookup {i}") as step:
                step.log(output=["doc a", "doc b"])
            if i % 4 == 0:
                try:
                    with tracer.start_span("validate"):
                        raise ValueError(f"bad input {i}")
                except ValueError:
                    pass
            if i % 3 == 0:
                with tracer.start_span("answer", type="llm") as llm:
                    llm.log(input=[{"role": "user", "content": "where do penguins live"}],
                            output="in Antarctica", metrics={"tokens": 10 + i})
            root.log(output=f"answer {i}", scores={"quality": i / TRACES},
                     metadata={"model": "m-odd" if i % 2 else "m-even", "attempt": i})
            roots.append(root.root_span_id)
    with tracer.start_span("big", input="x" * 100_000) as big:
        pass
    with tracer.start_span("files") as files:
        files.log(input={
            "image": tracer.Attachment(data=PNG, filename="pixel.png", content_type="image/png"),
            "page": tracer.Attachment(data=b"<script>alert(1)</script>", filename="evil.html",
                                      content_type="text/html"),
            "script": tracer.Attachment(data=b"alert(1)", filename="evil.js",
                                        content_type="application/javascript"),
        })
    experiments = {}
    for name, scores in (("baseline", (0.2, 0.8)), ("candidate", (0.6, 0.7))):
        exp = tracer.init("api-test", name, store=store, set_current=False)
        for question, score in zip(("q1", "q2"), scores, strict=True):
            exp.log(input=question, output=f"{name} says {question}",
                    scores={"accuracy": score})
        experiments[name] = exp.id
    tracer.flush()
    print(json.dumps({"roots": roots, "big": big.root_span_id, "files": files.root_span_id,
                      "experiments": experiments}))
