"""The viewer's fixtures: a store written by real traced programs through the real aggregator,
the real ``tracer serve`` on a free loopback port reading it, and a real headless Chromium
driven by Playwright.

Debian's chromium is used (Playwright's own browser download is not available here): installed
with apt when it is missing and we are root (as in CI), else the browser tests are skipped with
the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from ..conftest import CLI, Service, clean_env, free_port, python_command
from ..helpers import poll
from . import workload

CHROMIUM = "/usr/bin/chromium"


def chromium_binary() -> str | None:
    """Debian's chromium, installed with apt when it is missing and we are root; None if it
    cannot be had."""
    found = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if found:
        return found
    if os.geteuid() != 0:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        if proc.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed ({proc.returncode}) while installing chromium "
                        f"for the viewer tests:\n{proc.stderr[-3000:]}")
    return shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_binary()
    if path is None:
        pytest.skip("chromium is not installed and the tests are not running as root to install "
                    "it: run `apt-get install -y chromium` (the viewer tests drive a real browser)")
    return path


def run_program(program: Any, *args: Any, app_url: str | None = None) -> dict:
    """Run a workload program in a fresh interpreter; its printed JSON."""
    env = clean_env(**({"TRACER_APP_URL": app_url} if app_url else {}))
    proc = subprocess.run(python_command(program, *args), env=env, capture_output=True,
                          text=True, timeout=180)
    if proc.returncode != 0:
        pytest.fail(f"{program.__name__} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_running_trace(store: str) -> tuple[subprocess.Popen, str]:
    """``workload.write_running_trace`` in a fresh interpreter, left running (its span too)
    until its standard input is closed; the process and the span's root span id."""
    proc = subprocess.Popen(python_command(workload.write_running_trace, store), env=clean_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail("write_running_trace printed nothing")
    return proc, json.loads(line)["root"]


@dataclass
class DemoStore:
    path: str
    made: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def viewer_port() -> int:
    """The port the session's viewer serves on, chosen before the store is written so that the
    traced programs' ``span.permalink()`` points at it (``TRACER_APP_URL``)."""
    return free_port()


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory, viewer_port) -> Iterator[DemoStore]:
    """A store holding what the viewer must show (tests/viewer/workload.py): project
    viewer-demo (llm chat, images, attachments, an error, XSS payloads, a large output, a span
    with two parents, a running span, an experiment pair) and a 10,000-span trace in
    viewer-big."""
    path = str(tmp_path_factory.mktemp("viewer") / "traces.db")
    made = run_program(workload.write_demo_store, path,
                       app_url=f"http://127.0.0.1:{viewer_port}")
    made["big"] = run_program(workload.write_big_trace, path, 10_000)
    running, made["running"] = start_running_trace(path)
    yield DemoStore(path, made)
    assert running.stdin is not None
    running.stdin.close()
    try:
        running.wait(30)
    except subprocess.TimeoutExpired:
        running.kill()
        running.wait()


def serve_command(store: str, port: int, *args: str, host: str = "127.0.0.1") -> list[str]:
    """``tracer serve`` on ``host:port`` over ``store``."""
    return [*CLI, "serve", "--store", store, "--host", host, "--port", str(port), *args]


class Server(Service):
    """A running ``tracer serve``; ``url`` is its base URL."""

    def __init__(self, store: str, log_path: str, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("tracer serve", serve_command(store, self.port, *args), log_path,
                         clean_env(**(env or {})))

        def answers() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                return httpx.get(f"{self.url}/api/projects", timeout=2).status_code in (200, 401)
            except httpx.HTTPError:
                return False

        poll(answers, 30, interval=0.1)
        if self.proc.poll() is not None:
            pytest.fail(f"tracer serve exited ({self.proc.returncode}):\n{self.log()}")


@dataclass
class Viewer:
    url: str
    store: str
    made: dict


@pytest.fixture(scope="session")
def viewer(demo_store, viewer_port, tmp_path_factory) -> Iterator[Viewer]:
    """``tracer serve`` (no API key, loopback) over the demo store."""
    log = str(tmp_path_factory.mktemp("serve") / "serve.log")
    with Server(demo_store.path, log, port=viewer_port) as server:
        yield Viewer(server.url, demo_store.path, demo_store.made)


@pytest.fixture(scope="module")
def browser(chromium) -> Iterator[Any]:
    """Headless Chromium, for one test module. Not for the session: Playwright's sync API runs
    an event loop on this thread while it is started, and the tests of other modules that call
    ``asyncio.run()`` in the same pytest-xdist worker need none to be running."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield b
        b.close()


@dataclass
class PageErrors:
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(browser, viewer, page_errors) -> Iterator[Any]:
    """A fresh browser page on the viewer. Any dialog (alert: a script that ran from logged
    content) is recorded and dismissed; uncaught errors and CSP violations fail the test."""
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    context = browser.new_context(base_url=viewer.url, viewport={"width": 1440, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()

    def on_dialog(dialog: Any) -> None:
        page_errors.dialogs.append(dialog.message)
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    pg.on("pageerror", lambda exc: page_errors.errors.append(str(exc)))
    pg.on("console", lambda msg: page_errors.console.append(msg.text)
          if msg.type == "error" else None)
    yield pg
    context.close()
    assert not page_errors.errors, f"uncaught errors in the page: {page_errors.errors}"
    csp = [m for m in page_errors.console if "Content Security Policy" in m]
    assert not csp, f"CSP violations: {csp}"


def api_get(viewer: Viewer, path: str, **params: Any) -> Any:
    response = httpx.get(f"{viewer.url}{path}", params=params, timeout=30)
    response.raise_for_status()
    return response.json()

