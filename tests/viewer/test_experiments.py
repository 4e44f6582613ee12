"""Experiments: the list with span counts and score means, an experiment's rows, and two
experiments compared."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from .workload import PROJECT


def test_experiments_page_lists_span_counts_and_score_means(page):
    page.goto(f"/p/{PROJECT}/experiments")
    table = page.get_by_role("table", name="Experiments")
    baseline = table.get_by_role("row").filter(has=page.get_by_role("link", name="baseline"))
    expect(baseline).to_contain_text("8")  # spans: 4 rows of 2 spans
    expect(baseline).to_contain_text("80%")  # correct: mean of 1, .5, 1, .7


def test_an_experiment_lists_its_rows(page):
    page.goto(f"/p/{PROJECT}/experiments")
    page.get_by_role("link", name="candidate", exact=True).click()
    table = page.get_by_role("table", name="Traces")
    expect(table.locator("tbody tr")).to_have_count(4)
    expect(page.get_by_role("heading", name="candidate")).to_be_visible()


def test_comparing_two_experiments_shows_score_deltas_and_marks_rows(page):
    page.goto(f"/p/{PROJECT}/experiments")
    page.get_by_label("Select baseline").check()
    page.get_by_label("Select candidate").check()
    page.get_by_role("button", name="Compare selected").click()
    expect(page).to_have_url(re.compile(rf"/p/{PROJECT}/compare\?a=[0-9a-f-]+&b=[0-9a-f-]+"))
    scores = page.get_by_role("table", name="Score means")
    expect(scores.get_by_role("row", name=re.compile("correct"))).to_contain_text("pts")
    rows = page.get_by_role("table", name="Rows compared")
    for status, text in (("Regression", "2+2?"), ("Improvement", "capital of France?"),
                         ("Same", "3*3?"), ("Only in A", "only in baseline"),
                         ("Only in B", "only in candidate")):
        expect(rows.get_by_role("row", name=re.compile(f"^{re.escape(status)}"))).to_contain_text(
            text)
    page.get_by_role("button", name=re.compile(r"^Regression \(1\)")).click()
    expect(rows.locator("tbody tr:visible")).to_have_count(1)
