"""Screenshots of every page of the viewer, for the README: docs/ui/*.png.

    python scripts/ui_screenshots.py [--out docs/ui] [--chromium /usr/bin/chromium]

Writes a demo store with real traced programs (``tracer demo``'s workload, and the viewer's own
workload in tests/viewer/workload.py: llm chat, images, attachments, an error, experiments),
starts the real ``tracer serve`` on it (and a second one with an API key, for the login page),
and drives Debian's headless Chromium through each page.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import httpx  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from tests.viewer import workload  # noqa: E402

CLI = [sys.executable, "-m", "workers.cli"]
KEY = "screenshot-key"


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("TRACER_", "_TRACER_", "BRAINTRUST_"))}
    clean["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, clean.get("PYTHONPATH")) if p)
    clean.update(extra)
    return clean


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CODE = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from tests.viewer import workload; "
        "getattr(workload, sys.argv[2])(*json.loads(sys.argv[3]))")


def run(program: Callable[..., Any], *args: Any, app_url: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CODE, ROOT, program.__name__, json.dumps(args)],
                          env=env(TRACER_APP_URL=app_url), capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        sys.exit(f"{program.__name__} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_running(store: str) -> subprocess.Popen:
    """A trace left running while the screenshots are taken (its span ends when stdin closes)."""
    proc = subprocess.Popen([sys.executable, "-c", CODE, ROOT, "write_running_trace",
                             json.dumps([store])], env=env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def serve(store: str, port: int, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([*CLI, "serve", "--store", store, "--port", str(port), *args],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"tracer serve exited:\n{proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/projects", timeout=2)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("tracer serve did not answer within 30 s")


def shoot(page: Page, out: str, name: str) -> None:
    page.wait_for_load_state("networkidle")
    path = os.path.join(out, f"{name}.png")
    page.screenshot(path=path)
    print(f"wrote {os.path.relpath(path, ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "ui"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="tracer-ui-")
    store = os.path.join(work, "traces.db")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    subprocess.run([*CLI, "demo", "--store", store], env=env(), check=True,
                   capture_output=True, timeout=300)
    made = run(workload.write_demo_store, store, app_url=base)
    running = start_running(store)
    server = serve(store, port)
    keyed_port = free_port()
    keyed = serve(store, keyed_port, "--api-key", KEY)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            context = browser.new_context(base_url=base, viewport={"width": 1440, "height": 860},
                                          device_scale_factor=1)
            page = context.new_page()
            expect.set_options(timeout=20_000)

            page.goto("/")
            expect(page.get_by_role("table", name="Projects")).to_be_visible()
            shoot(page, args.out, "projects")

            page.goto(f"/p/{workload.PROJECT}/logs")
            traces = page.get_by_role("table", name="Traces")
            expect(traces.locator("tbody tr").first).to_be_visible()
            shoot(page, args.out, "logs")

            page.goto("/p/demo/logs")
            traces = page.get_by_role("table", name="Traces")
            traces.get_by_role("link", name="demo", exact=True).click()
            tree = page.get_by_role("tree", name="Span tree")
            tree.get_by_role("treeitem", name="fake LLM").first.click()
            tree.get_by_role("treeitem", name="process_document").nth(4).click()
            expect(page.get_by_role("complementary", name="Span details").get_by_role(
                "region", name="Output")).to_be_visible()
            shoot(page, args.out, "trace")

            page.goto(f"/p/{workload.PROJECT}/logs")
            page.get_by_role("link", name="answer question", exact=True).click()
            page.get_by_role("treeitem", name="Chat Completion").click()
            expect(page.get_by_role("list", name="Conversation")).to_be_visible()
            shoot(page, args.out, "llm-chat")

            page.goto(made["media_permalink"].replace(base, ""))
            expect(page.get_by_label("attachment chart.png").get_by_role("img")).to_be_visible()
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            page.get_by_role("complementary", name="Span details").get_by_role(
                "region", name="Attachments (4)").scroll_into_view_if_needed()
            shoot(page, args.out, "attachments")

            page.goto(f"/p/{workload.PROJECT}/experiments")
            page.get_by_label("Select baseline").check()
            page.get_by_label("Select candidate").check()
            shoot(page, args.out, "experiments")

            page.get_by_role("button", name="Compare selected").click()
            expect(page.get_by_role("table", name="Rows compared")).to_be_visible()
            shoot(page, args.out, "compare")

            page.goto("/status")
            expect(page.get_by_role("article").first).to_be_visible()
            shoot(page, args.out, "status")

            login = browser.new_context(viewport={"width": 1440, "height": 860}).new_page()
            login.goto(f"http://127.0.0.1:{keyed_port}/")
            expect(login.get_by_label("API key")).to_be_visible()
            shoot(login, args.out, "login")
            browser.close()
    finally:
        for proc in (server, keyed):
            proc.terminate()
            proc.wait(10)
        if running.stdin:
            running.stdin.close()
        running.wait(30)


if __name__ == "__main__":
    main()
