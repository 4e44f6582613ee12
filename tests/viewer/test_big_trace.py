"""A trace of 10,000 spans opens, and its tree scrolls to the last span (only the rows in view
are in the page)."""

from __future__ import annotations

from playwright.sync_api import expect

from .workload import BIG_PROJECT


def test_a_10000_span_trace_opens_and_scrolls_to_its_last_span(page, viewer):
    big = viewer.made["big"]
    page.goto(f"/p/{BIG_PROJECT}/logs?r={big['root']}")
    tree = page.get_by_role("tree", name="Span tree")
    expect(tree.get_by_role("treeitem", name="big trace of 10000 spans")).to_be_visible()
    expect(tree.get_by_role("treeitem", name="group 0", exact=False).first).to_be_visible()
    assert tree.get_by_role("treeitem").count() < 200  # virtualised: only rows in view exist
    tree.get_by_role("treeitem").first.click()
    tree.press("End")
    last = tree.get_by_role("treeitem", name="last span")
    expect(last).to_be_visible()
    expect(last).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("complementary", name="Span details").get_by_role(
        "heading", name="last span")).to_be_visible()
