"""What the aggregator tells about itself: who this run is (``Run.info``), its counters as
``tracer stats`` shows them (``stats``, also recorded in the store every second), and the line
it logs when it exits (``summary``)."""

from __future__ import annotations

import os
import uuid
from collections import Counter

import psutil

from .queue import RowQueue
from .rows import now_iso
from .senders import Sender
from .supervision import HOST


class Run:
    """This aggregator run: its id, where it listens and writes, and its process."""

    def __init__(self, endpoint: str, store: str, owner: int | None,
                 api_url: str | None = None) -> None:
        self.run_id = str(uuid.uuid4())
        self.started = now_iso()
        self.endpoint = endpoint
        self.store = store
        self.api_url = api_url
        self.owner = owner
        self.process = psutil.Process()

    def info(self) -> dict:
        """What the store records about the run beside its counters."""
        return {"pid": os.getpid(), "host": HOST, "endpoint": self.endpoint,
                "started": self.started}


def stats(run: Run, counters: Counter, queue: RowQueue, senders: list[Sender],
          queue_policy: str, spool: dict | None = None) -> dict:
    """The counters, as ``tracer stats`` shows them; ``senders`` taken in one step (the uploader
    thread calls this too, while the receiving loop may add senders). ``spool``: the state of
    an uploading aggregator's spool (``Spool.state``: bytes, batches, oldest age)."""
    try:
        with run.process.oneshot():
            rss = run.process.memory_info().rss
            cpu = sum(run.process.cpu_times()[:2])
    except psutil.Error:
        rss, cpu = None, None
    live = [s for s in senders if s.live]
    return {
        "run_id": run.run_id,
        "pid": os.getpid(),
        "host": HOST,
        "endpoint": run.endpoint,
        "store": run.store,
        "owner_pid": run.owner,
        "counters": dict(counters),
        "queue_depth": queue.depth(),
        "queue_size": queue.max_rows,
        "queue_bytes": queue.held_bytes(),
        "queue_max_bytes": queue.max_bytes,
        "live_senders": len(live),
        "senders_with_gaps": {f"{s.host}:{s.pid}": s.gaps for s in senders if s.gaps},
        "queue_policy": queue_policy,
        "senders_dropped": {f"{s.host}:{s.pid}": s.dropped for s in senders if s.dropped},
        "senders_rejected": {f"{s.host}:{s.pid}": s.rejected for s in senders if s.rejected},
        "rss_bytes": rss,
        "cpu_seconds": cpu,
        "upload": run.api_url,
        "spool": spool,
    }


def summary(counters: Counter) -> str:
    """One line on what the run did, for its exit."""
    return (f"{counters['records']} records received, {counters['rows_committed']} rows "
            f"committed, {counters['dropped_sink_failed']} dropped (sink failed), "
            f"{counters['bad_messages'] + counters['bad_records']} malformed ignored")
