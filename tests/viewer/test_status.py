"""The status page: the aggregator runs that wrote the store, with their counters."""

from __future__ import annotations

import re

from playwright.sync_api import expect


def test_status_page_shows_the_aggregator_counters(page):
    page.goto("/status")
    run = page.get_by_role("article").first
    expect(run).to_contain_text("rows_committed")
    run.get_by_text("All counters").click()
    expect(run.get_by_role("row", name=re.compile(r"^records "))).to_be_visible()
