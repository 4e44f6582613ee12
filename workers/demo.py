"""``tracer demo``: a small, realistic traced workload that needs no network.

A root task fans documents out over a process pool (each worker continues the trace from the
exported slug it is handed) and a thread pool (``TracedThreadPoolExecutor``); the work nests
functions, catches one error, and makes a fake LLM call logged with the custom-LLM conventions.
"""

from __future__ import annotations

import multiprocessing
import time

import tracer


@tracer.traced
def tokenize(text: str) -> list[str]:
    return text.lower().split()


@tracer.traced(type="llm", name="fake LLM")
def fake_llm(prompt: str) -> str:
    answer = f"summary of {len(prompt)} characters"
    tracer.current_span().log(
        input=[{"role": "user", "content": prompt}],
        metadata={"model": "demo-model", "temperature": 0.1},
        metrics={"prompt_tokens": len(prompt.split()), "completion_tokens": 4,
                 "tokens": len(prompt.split()) + 4},
    )
    time.sleep(0.002)
    return answer


@tracer.traced(type="function")
def validate(doc: str) -> str:
    if not doc.strip():
        raise ValueError("empty document")
    return doc


@tracer.traced(type="task")
def summarize(doc: str) -> dict:
    words = tokenize(doc)
    return {"words": len(words), "summary": fake_llm(doc)}


def process_in_worker(parent: str, doc: str) -> dict:
    """Runs in a pool process: the slug carries the trace across the process boundary."""
    with tracer.start_span("process_document", type="task", parent=parent, input=doc) as span:
        try:
            validate(doc)
        except ValueError as exc:
            span.log(output=None, metadata={"skipped": str(exc)})
            return {"skipped": str(exc)}
        result = summarize(doc)
        span.log(output=result)
        return result


@tracer.traced(type="tool")
def score(result: dict) -> float:
    return min(1.0, result.get("words", 0) / 10)


@tracer.traced(name="demo pipeline", type="task")
def pipeline(docs: list[str]) -> dict:
    slug = tracer.current_span().export()
    pool = multiprocessing.get_context("spawn").Pool(2)
    try:
        results = pool.starmap(process_in_worker, [(slug, doc) for doc in docs])
    finally:
        pool.close()
        pool.join()
    with tracer.TracedThreadPoolExecutor(max_workers=2) as threads:
        scores = list(threads.map(score, [r for r in results if "words" in r]))
    return {"documents": len(docs), "mean_score": sum(scores) / max(1, len(scores))}


def run_demo(store: str, tasks: int = 8) -> tuple[str, str]:
    """Run the workload into ``store``; returns the trace's root_span_id and its permalink."""
    tracer.init_logger("demo", store=store)
    docs = [f"document {i} " + "lorem ipsum dolor sit amet " * (i % 4 + 1) for i in range(tasks)]
    docs[len(docs) // 2] = "   "  # one bad document: its error is caught and logged
    with tracer.start_span("demo", type="task") as root:
        pipeline(docs)
    tracer.flush()
    return root.root_span_id, root.permalink()
