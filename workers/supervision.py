"""Watching the processes the aggregator serves: which senders died, and when to exit.

A sender on this host that is no longer running (psutil; a zombie counts as gone, and a pid
reused by a newer process does not pass for the old one) is marked dead, so that the aggregator
closes the spans it left running. A sender on another host cannot be watched: silence for
``REMOTE_SILENCE`` seconds stands for exit. An aggregator started by ``init_logger`` has an
owner (the process that started it) and exits once the owner and every sender are gone and it
has had no traffic for its idle delay. The aggregator's own threads are watched too: one that
died (an exception no guard of its loop caught) is started again, counted (``revive``).
"""

from __future__ import annotations

import datetime
import socket
import threading
import time
from collections import Counter
from typing import Protocol

import psutil

from . import log
from .senders import Sender, Senders

HOST = socket.gethostname()
REMOTE_SILENCE = 30.0  # seconds after which a sender on another host counts as gone
FORGET_AFTER = 60.0  # seconds after its last message that a sender gone is forgotten
# Processes looked at (psutil) per supervision turn, at most: a table of thousands of senders,
# real or made up by whoever can reach the socket, must not stall the receiving loop. The
# rest wait for the next turns, in turn.
MAX_CHECKS_PER_TURN = 200


class Supervisor:
    """Checks the senders and the owner; the aggregator calls it every few hundred ms."""

    def __init__(self, owner: int | None, local_only: bool, idle_exit: float,
                 counters: Counter) -> None:
        self.owner = owner
        self.local_only = local_only  # over ipc every peer is on this host, whatever it says
        self.idle_exit = idle_exit
        self.counters = counters
        self._owner_created = create_time(owner) if owner else None
        self._checked: dict = {}  # sender key -> the turn it was last looked at
        self._turn = 0

    def dead_senders(self, senders: Senders) -> list[tuple[Sender, str]]:
        """Mark the senders that are gone; returns those on this host that died, each with why
        their running spans did not end. Senders gone a while are forgotten. At most
        ``MAX_CHECKS_PER_TURN`` processes are looked at, those looked at least recently first."""
        died = []
        now = time.time()
        self._turn += 1
        local = []
        for key, sender in senders.items():
            if sender.live and sender.host != HOST and not self.local_only:
                # No way to watch a process on another host: silence stands for exit.
                if now - sender.last_seen > REMOTE_SILENCE:
                    sender.dead = True
                    self.counters["remote_senders_silent"] += 1
                continue
            if sender.live:
                local.append((self._checked.get(key, 0), key, sender))
            elif now - sender.last_seen > FORGET_AFTER:
                senders.forget(key)
        if len(local) > MAX_CHECKS_PER_TURN:
            local.sort(key=lambda entry: entry[0])
            del local[MAX_CHECKS_PER_TURN:]
        for _turn, key, sender in local:
            self._checked[key] = self._turn
            if not alive(sender.pid, sender.first_seen):
                sender.dead = True
                self.counters["senders_died"] += 1
                when = datetime.datetime.fromtimestamp(sender.last_seen, datetime.timezone.utc)
                died.append((sender, f"process {sender.pid} exited before the span ended "
                                     f"(last heard from at {when.isoformat()})"))
        if len(self._checked) > 2 * len(senders):  # keys of senders forgotten since
            self._checked = {key: turn for key, turn in self._checked.items()
                             if senders.known(key)}
        return died

    def may_exit(self, senders: Senders, last_traffic: float) -> bool:
        """Whether the owner and every sender are gone and nothing came for the idle delay
        (``last_traffic``: ``time.monotonic()`` of the last message). Never, without an owner."""
        if self.owner is None:
            return False
        owner_gone = not alive(self.owner, self._owner_created)
        live = any(s.live for s in senders.snapshot())
        quiet = time.monotonic() - last_traffic >= self.idle_exit
        return owner_gone and not live and quiet


def create_time(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), None if it is not running."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int, not_after: float | None) -> bool:
    """Whether ``pid`` is a live process that existed by ``not_after`` (guards pid reuse)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not_after is None or proc.create_time() <= not_after + 1.0
    except psutil.Error:
        return False


class Restartable(Protocol):
    """A part of the aggregator that runs on a thread of its own (the uploader, the attachment
    mover) and can start a new one in place of one that died."""

    thread: threading.Thread

    def restart(self) -> None: ...


def revive(parts: dict[str, Restartable], counters: Counter) -> None:
    """Start again the thread of each part whose thread died, counting ``thread_restarts_<name>``.
    Only while the aggregator serves: its threads end on purpose only at shutdown."""
    for name, part in parts.items():
        if part.thread.ident is None or part.thread.is_alive():
            continue  # not started yet, or alive
        counters[f"thread_restarts_{name}"] += 1
        log.log(f"the {name} thread had died: started again")
        try:
            part.restart()
        except Exception as exc:  # no thread to be had now: the next turn tries again
            counters["thread_restart_errors"] += 1
            log.log(f"could not start the {name} thread again: {exc!r}", key="restart-" + name,
                    every=10.0)
