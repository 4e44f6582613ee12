"""Traced programs that upload to a trace server (``TRACER_API_URL`` in their environment), run
in fresh interpreters by ``tests/test_upload.py`` through the real aggregator.

``driven`` takes commands on its standard input, one a line, and answers each with one JSON
line on its standard output, so that a test can stop and start the server between them."""

from __future__ import annotations

import json
import os
import sys

import tracer


def _stats() -> dict:
    from tracer.stats_client import ask_stats

    return ask_stats(os.environ["TRACER_ENDPOINT"]) or {}


def logs_a_trace(project: str, children: int) -> None:
    """One trace (a root and ``children`` children), flushed; prints its root span id, the
    root's permalink, the flush's error (null) and the aggregator's counters."""
    tracer.init_logger(project)
    with tracer.start_span("root") as root:
        for i in range(children):
            with tracer.start_span(f"child {i}") as child:
                child.log(input={"i": i}, output=i * 2)
    error = None
    try:
        tracer.flush()
    except tracer.FlushError as exc:
        error = str(exc)
    print(json.dumps({"root": root.root_span_id, "permalink": root.permalink(), "error": error,
                      "stats": _stats(), "pid": os.getpid()}))


def logs_attachments(project: str, contents: list[str]) -> None:
    """A span per content, each logging it as an attachment (the same text twice is the same
    blob); prints the attachment keys and the aggregator's counters once flushed."""
    tracer.init_logger(project)
    keys = []
    for i, text in enumerate(contents):
        attachment = tracer.Attachment(data=text.encode(), filename=f"file-{i}.txt",
                                       content_type="text/plain")
        with tracer.start_span(f"attach {i}") as span:
            span.log(input={"file": attachment})
        keys.append(attachment.reference["key"])
    tracer.flush()
    print(json.dumps({"keys": keys, "stats": _stats()}))


def driven(project: str) -> None:
    """Commands on stdin: ``log N`` (N spans in a new trace, then a flush), ``stats``,
    ``kill`` (SIGKILL the aggregator), ``exit``. Each answered with one JSON line."""
    import signal

    tracer.init_logger(project)
    print(json.dumps({"ready": True, "endpoint": os.environ["TRACER_ENDPOINT"]}), flush=True)
    batch = 0
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        answer: dict = {}
        if command == "log":
            batch += 1
            with tracer.start_span(f"batch {batch}") as root:
                for i in range(int(arg)):
                    with tracer.start_span(f"batch {batch} span {i}") as span:
                        span.log(output=i)
            answer["root"] = root.root_span_id
            try:
                tracer.flush()
                answer["error"] = None
            except tracer.FlushError as exc:
                answer["error"] = str(exc)
        elif command == "stats":
            answer["stats"] = _stats()
        elif command == "kill":
            pid = int(os.environ["_TRACER_AGGREGATOR_PID"])
            os.kill(pid, signal.SIGKILL)
            answer["killed"] = pid
        elif command == "exit":
            print(json.dumps({"bye": True}), flush=True)
            return
        print(json.dumps(answer), flush=True)
