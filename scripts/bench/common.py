"""Shared by the benchmark scripts: the machine and code measured, child environments,
percentiles."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys

import psutil

ENV_PREFIXES = ("TRACER_", "_TRACER_", "BRAINTRUST_", "OTEL_")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env(**extra: str) -> dict[str, str]:
    """This environment without tracing settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.update(extra)
    return env


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes; 0 once it is gone."""
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (all its threads); None once gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def percentile(sorted_values: list[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of an already sorted list; NaN if empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def source_state() -> str:
    """Which library code was measured: the git commit, and whether tracer/ or workers/ differ."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "tracer",
                                "workers"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if not head:
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in dirty.splitlines() if line.strip()]
    return f"{head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def machine() -> dict:
    import msgpack
    import zmq

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "msgpack_impl": msgpack.Packer.__module__,
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "source": source_state(),
        "loadavg_start": os.getloadavg(),
    }
