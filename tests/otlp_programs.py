"""Traced programs whose aggregator exports OTLP (``tests/test_otlp_out.py``), run in a fresh
interpreter by ``conftest.run_function`` or ``python_command``: the variables they export with
(``TRACER_OTLP_*``) come from the environment the test gives them, as a user's would."""

from __future__ import annotations

import json
import sys

import tracer

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where do penguins live?"}]
CHOICES = [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "In Antarctica."}}]


def answer_a_question(project: str) -> None:
    """One trace: a root that outlives a batch (its input and a log are committed before it
    ends), a traced function, an llm span with tokens, a tool span that fails, metadata, scores,
    tags, expected; then a score added to the root after its end (``update_span``). Prints the
    root's exported slug."""
    tracer.init_logger(project)

    @tracer.traced(type="task")
    def retrieve(query: str) -> list[str]:
        return [f"doc about {query}", "doc b"]

    with tracer.start_span("request", input={"question": "Where do penguins live?"},
                           metadata={"user": "ada", "nested": {"k": [1, 2]}},
                           tags=["prod", "otlp"]) as root:
        root.log(metadata={"stage": "retrieving"})
        tracer.flush()  # the root's pieces so far are committed (exported?) while it runs
        retrieve("penguins")
        with tracer.start_span("Chat Completion", type="llm", input=MESSAGES,
                               metadata={"model": "gpt-4o-mini", "provider": "openai",
                                         "temperature": 0.2}) as llm:
            llm.log(output=CHOICES, metrics={"prompt_tokens": 12, "completion_tokens": 4,
                                             "tokens": 16})
        try:
            with tracer.start_span("lookup", type="tool", input="emperor"):
                raise ValueError("no such penguin")
        except ValueError:
            pass
        root.log(output="In Antarctica.", expected="Antarctica", scores={"quality": 0.75},
                 metrics={"retries": 1})
    slug = root.export()
    tracer.flush()
    tracer.update_span(slug, scores={"late_review": 1.0})
    tracer.flush()
    print(json.dumps({"root": slug}))


def spans_then_wait(project: str, count: int) -> None:
    """``count`` spans, flushed; prints ``flushed``, then waits for a line on stdin before it
    ends (its aggregator lives meanwhile), and flushes again."""
    tracer.init_logger(project)
    for i in range(count):
        with tracer.start_span(f"span {i}", input=i):
            pass
    tracer.flush()
    print("flushed", flush=True)
    sys.stdin.readline()
    with tracer.start_span("after the wait"):
        pass
    tracer.flush()


def spans_and_flush(project: str, count: int) -> None:
    """``count`` spans and a flush; prints the flush's error, if it raised one."""
    tracer.init_logger(project)
    for i in range(count):
        with tracer.start_span(f"span {i}"):
            pass
    try:
        tracer.flush()
    except tracer.FlushError as exc:
        print(json.dumps({"error": str(exc)}))
        return
    print(json.dumps({"error": None}))


def an_experiment(project: str) -> None:
    """Two rows of an experiment, flushed."""
    experiment = tracer.init(project, "baseline")
    for i in range(2):
        experiment.log(input=i, output=i * 2, scores={"exact": 1})
    tracer.flush()
