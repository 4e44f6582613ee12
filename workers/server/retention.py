"""The trace server's retention thread (``tracer serve --prune-older-than 30d [--prune-every
1h]``): ``workers.retention.prune`` at start and then every interval, with a store writer of
its own (opened for each run, closed after it: the server's readers are apart), each run's
outcome one line on stderr. A run that fails (the store away, locked) says why and the next
run tries again; no store yet is nothing to prune."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from tracer import config

from .. import retention


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class PruneThread:
    """Prunes ``store`` every ``every`` seconds of what is older than ``older_than`` seconds."""

    def __init__(self, store: str, older_than: float, every: float,
                 grace: float = retention.ATTACHMENT_GRACE,
                 say: Callable[[str], None] = _say) -> None:
        self.store = store
        self.older_than = older_than
        self.every = every
        self.grace = grace
        self.say = say
        self.runs = 0  # runs finished, failed or not
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tracer-retention", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batch in progress (a run is cut short between batches)."""
        self._stop.set()
        self.thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.every)

    def run_once(self) -> None:
        """One prune, its outcome said; never raises."""
        shown = config.without_password(self.store)
        started = time.monotonic()
        try:
            counts = retention.prune(self.store, self.older_than, grace=self.grace,
                                     progress=self._progress)
        except FileNotFoundError:
            pass  # no store yet: nothing to prune
        except _Stopped:
            pass
        except Exception as exc:  # the store away, locked, ...: said; the next run tries again
            self.say(f"tracer serve: pruning {shown} failed: {type(exc).__name__}: {exc}")
        else:
            if any(counts.values()):
                self.say(f"tracer serve: pruned {shown}: removed "
                         f"{_describe(counts)} in {time.monotonic() - started:.1f} s")
        finally:
            self.runs += 1

    def _progress(self, counts: dict[str, int]) -> None:
        if self._stop.is_set():
            raise _Stopped  # (between two batches: each batch is whole)


class _Stopped(Exception):
    """The server is stopping: the run ends between two batches."""


def _describe(counts: dict[str, int]) -> str:
    return (f"{counts['traces']} traces ({counts['rows']} rows), {counts['attachments']} "
            f"attachment records, {counts['blobs']} attachment blobs "
            f"({counts['blob_bytes']} bytes)")
