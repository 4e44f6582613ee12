"""Logged content is text: HTML and scripts in inputs, outputs, names, keys and tags are shown
literally and never run."""

from __future__ import annotations

from playwright.sync_api import expect

from .workload import PROJECT, XSS_IMG, XSS_SCRIPT


def test_xss_payloads_render_as_literal_text(page, page_errors):
    page.goto(f"/p/{PROJECT}/logs")
    table = page.get_by_role("table", name="Traces")
    link = table.get_by_role("link", name=f"xss {XSS_IMG}", exact=True)
    expect(link).to_have_text(f"xss {XSS_IMG}")
    link.click()
    panel = page.get_by_role("complementary", name="Span details")
    expect(panel.get_by_role("region", name="Input")).to_contain_text(XSS_IMG)
    expect(panel.get_by_role("region", name="Output")).to_contain_text(XSS_SCRIPT)
    expect(panel.get_by_role("region", name="Metadata")).to_contain_text(XSS_SCRIPT)
    expect(panel.get_by_role("region", name="Tags")).to_contain_text(XSS_IMG)
    expect(page.locator("img[src=x]")).to_have_count(0)  # no element made from the payload
    expect(page.locator("main script")).to_have_count(0)
    assert page_errors.dialogs == []
