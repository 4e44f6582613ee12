"""``scripts/fleet_demo.py --hosts``: the demo's fleet on network-namespace hosts prints the trace
it read back from the trace server, each span beside the host it ran on, and passes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from . import netns
from .conftest import ROOT, clean_env

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "scripts/fleet_demo.py", "--hosts", "--orders", "4"]
HOSTS = {"publisher", "worker-1", "worker-2", "worker-3"}


@pytest.mark.timeout(600)
def test_the_fleet_demo_on_hosts_reads_every_span_back_from_the_server_naming_its_host(
        ) -> None:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(f"network namespaces cannot be made here: {why}")
    before = set(netns.existing_namespaces())
    done = subprocess.run(DEMO, capture_output=True, text=True, timeout=540, cwd=ROOT,
                          env=clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "spans stored      37 (in the server's store" in done.stdout
    tree = done.stdout.split("each span's row (host: origin.host)\n", 1)[1].split("\n\n")[0]
    span_lines = tree.splitlines()[1:]  # after the "trace ...: 37 spans" line
    assert len(span_lines) == 37
    hosts = {line.split()[0] for line in span_lines}
    assert hosts == HOSTS, tree
    # the root on the publisher; every task span on a worker host
    assert re.match(r"publisher\s+checkout batch \[task\]", span_lines[0])
    assert all(line.split()[0].startswith("worker-")
               for line in span_lines if re.search(r"─ fleet_demo\.\w+ \[task\]", line))
    assert set(netns.existing_namespaces()) <= before, "the demo left namespaces behind"


def test_the_fleet_demo_on_hosts_without_root_says_so_and_how_to_run_the_single_host_mode(
        ) -> None:
    program = ("import os, runpy, sys\n"
               "os.geteuid = lambda: 1000  # as a user who cannot make namespaces\n"
               "sys.argv = ['fleet_demo.py', '--hosts']\n"
               "runpy.run_path('scripts/fleet_demo.py', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=clean_env())
    assert done.returncode == 2
    assert "need root" in done.stderr
    assert "python scripts/fleet_demo.py" in done.stderr
