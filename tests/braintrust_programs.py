"""Programs written for the reference SDK (the real ``braintrust`` package, unmodified), run in
fresh interpreters (``conftest.run_function``) with ``BRAINTRUST_API_URL``/``APP_URL`` pointing
at a ``tracer serve`` on loopback and ``BRAINTRUST_API_KEY`` one of its keys
(``tests/test_braintrust_clients.py``). Each prints what the test needs to know as JSON on its
last line. Nothing here imports tracer."""

from __future__ import annotations

import json
import sys
from typing import Any


def _braintrust() -> Any:
    # As `pip install braintrust` installs it, without orjson (its `performance` extra), as the
    # differential test runs it (tests/compat/differential.py).
    sys.modules["orjson"] = None  # type: ignore[assignment]
    import braintrust

    return braintrust


def log_spans(project: str) -> None:
    """Logs: nested @traced calls, a span given every field, an update after it ended (by id
    and by its export), a span that raised, and ``logger.log``."""
    bt = _braintrust()
    logger = bt.init_logger(project=project)

    @bt.traced
    def retrieve(query: str) -> list[str]:
        bt.current_span().log(metadata={"index": "docs"}, metrics={"hits": 2})
        return ["doc a", "doc b"]

    @bt.traced(name="answer", type="llm")
    def answer(question: str) -> str:
        docs = retrieve(question)
        return f"{question}: {len(docs)} docs"

    answer("where")
    with logger.start_span(name="request", type="task") as span:
        span.log(input={"question": "why"}, output="because", expected="because",
                 scores={"exact": 1.0}, metadata={"user": "u1", "nested": {"a": 1}},
                 metrics={"tokens": 12}, tags=["t1"])
        request_id, exported = span.id, span.export()
    logger.update_span(id=request_id, metadata={"nested": {"b": 2}}, output="because, updated")
    bt.update_span(exported=exported, scores={"reviewed": 0.5})
    try:
        with logger.start_span(name="fails") as failing:
            raise ValueError("boom")
    except ValueError:
        pass
    other = bt.init_logger(project=project, set_current=False)
    logged = other.log(input="direct", output="logged in one call", metadata={"k": "v"})
    bt.flush()
    print(json.dumps({"request": request_id, "fails": failing.id, "logged": logged}))


def log_twice_by_id(project: str) -> None:
    """``logger.log(id=X)`` twice, in two flushes: the second writes the row whole (no
    ``_is_merge``), so the first's fields it does not have are gone, as in the reference."""
    bt = _braintrust()
    logger = bt.init_logger(project=project)
    logger.log(id="fixed", input="first", metadata={"only": "first"}, tags=["a"])
    bt.flush()
    logger.log(id="fixed", input="second", output="replaced")
    bt.flush()
    print(json.dumps({"id": "fixed"}))


def run_experiment(project: str, name: str, scores: list[float]) -> None:
    """An experiment: one eval span per score, with input, output, expected and a child;
    ``summarize()`` (which asks the server); prints the summary's scores and the ids."""
    bt = _braintrust()
    experiment = bt.init(project=project, experiment=name)
    for i, score in enumerate(scores):
        with experiment.start_span(name=f"case {i}", input=f"q{i}", expected=f"a{i}") as case:
            with case.start_span(name="task", type="task") as task:
                task.log(output=f"a{i}" if score else "wrong")
            case.log(output=f"a{i}" if score else "wrong", scores={"accuracy": score},
                     metrics={"tokens": 10 * (i + 1)})
    summary = experiment.summarize()
    print(json.dumps({
        "id": experiment.id, "name": experiment.name, "project_id": experiment.project.id,
        "comparison": summary.comparison_experiment_name,
        "scores": {k: {"score": v.score, "diff": v.diff, "improvements": v.improvements,
                       "regressions": v.regressions}
                   for k, v in summary.scores.items()},
        "metrics": {k: v.metric for k, v in summary.metrics.items()}}))


def log_attachments(project: str, png: str) -> None:
    """Attachments anywhere in a span's fields: bytes, a file, JSON."""
    bt = _braintrust()
    import base64

    logger = bt.init_logger(project=project)
    image = bt.Attachment(data=base64.b64decode(png), filename="pixel.png",
                          content_type="image/png")
    path = "notes.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.write("notes from a file")
    with logger.start_span(name="files") as span:
        span.log(input={"image": image,
                        "more": [bt.Attachment(data=path, filename="notes.txt",
                                               content_type="text/plain")]},
                 output={"data": bt.JSONAttachment({"rows": [1, 2, 3]})})
    bt.flush()
    print(json.dumps({"span": span.id, "image": image.reference["key"]}))


def log_large(project: str, size: int) -> None:
    """One span whose input is ``size`` characters: over the server's
    ``logs3_payload_max_bytes``, so the SDK sends it through the overflow."""
    bt = _braintrust()
    logger = bt.init_logger(project=project)
    with logger.start_span(name="large") as span:
        span.log(input="x" * size, output="ok")
    bt.flush()
    print(json.dumps({"span": span.id}))


def log_with_wrong_key(project: str) -> None:
    """What the SDK does with a key the server does not know: prints the error it raises."""
    bt = _braintrust()
    try:
        logger = bt.init_logger(project=project)
        logger.log(input="never stored")
        bt.flush()
        logger.project  # noqa: B018 (the lazy login, if the flush did not raise)
    except Exception as exc:  # what the SDK raises is what the test looks at
        print(json.dumps({"raised": f"{type(exc).__name__}: {exc}"}))
        return
    print(json.dumps({"raised": None}))


def log_unknown_field(project: str) -> None:
    """``span.log(foo=...)``: a field the reference's Python SDK lets through, which no row
    has."""
    bt = _braintrust()
    logger = bt.init_logger(project=project)
    with logger.start_span(name="odd") as span:
        span.log(input="kept", foo={"not": "a field"})
    bt.flush()
    print(json.dumps({"span": span.id}))
