"""The server's access rules as a browser and an API client meet them: a non-loopback bind
needs a key; with a key, nothing is served without it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from ..conftest import clean_env, free_port
from .conftest import Server, serve_command

KEY = "s3cret-viewer-key"


@pytest.fixture(scope="module")
def keyed(demo_store, tmp_path_factory) -> Iterator[Server]:
    """``tracer serve --api-key KEY`` over the demo store."""
    log = str(tmp_path_factory.mktemp("keyed") / "serve.log")
    with Server(demo_store.path, log, args=("--api-key", KEY)) as server:
        yield server


def test_non_loopback_bind_without_a_key_exits_2(demo_store):
    proc = subprocess.run(serve_command(demo_store.path, free_port(), host="0.0.0.0"),
                          env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "api-key" in proc.stderr.lower() or "api key" in proc.stderr.lower()


def test_api_without_the_key_is_refused(keyed):
    response = httpx.get(f"{keyed.url}/api/projects", timeout=10)
    assert response.status_code == 401
    assert "error" in response.json()


def test_api_with_the_key_as_bearer_token_is_accepted(keyed):
    response = httpx.get(f"{keyed.url}/api/projects", timeout=10,
                         headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert "viewer-demo" in [p["name"] for p in response.json()["projects"]]


def test_page_without_the_key_shows_the_login_form(browser, keyed):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{keyed.url}/p/viewer-demo/logs")
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.get_by_role("table", name="Traces")).to_have_count(0)
    context.close()


def test_login_with_the_key_opens_the_viewer(browser, keyed):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{keyed.url}/p/viewer-demo/logs")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("table", name="Traces")).to_be_visible()
    expect(page.get_by_role("link", name="answer question", exact=True)).to_be_visible()
    context.close()


def test_login_with_a_wrong_key_is_refused(browser, keyed):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{keyed.url}/")
    page.get_by_label("API key").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.get_by_role("table", name="Projects")).to_have_count(0)
    context.close()


def test_only_the_login_form_and_its_style_sheet_are_served_without_the_key(keyed):
    assert httpx.get(f"{keyed.url}/login", timeout=10).status_code == 200
    assert httpx.get(f"{keyed.url}/static/login.css", timeout=10).status_code == 200
    assert httpx.get(f"{keyed.url}/static/app.js", timeout=10).status_code == 401
    assert httpx.get(f"{keyed.url}/static/style.css", timeout=10).status_code == 401
