"""The projects page and a project's logs: one line per trace, newest first, filters, the live
tail, opening a trace."""

from __future__ import annotations

from playwright.sync_api import expect

from .conftest import run_program
from .workload import PROJECT, write_one_trace


def logs_of(page, project: str = PROJECT):
    page.goto(f"/p/{project}/logs")
    table = page.get_by_role("table", name="Traces")
    expect(table.get_by_role("row").nth(1)).to_be_visible()
    return table


def test_projects_page_lists_the_projects_with_links_to_their_logs(page):
    page.goto("/")
    projects = page.get_by_role("table", name="Projects")
    expect(projects.get_by_role("link", name=PROJECT, exact=True)).to_be_visible()
    expect(projects.get_by_role("link", name="viewer-big", exact=True)).to_be_visible()
    projects.get_by_role("link", name=PROJECT, exact=True).click()
    expect(page).to_have_url(f"/p/{PROJECT}/logs")
    expect(page.get_by_role("table", name="Traces")).to_be_visible()


def test_logs_list_one_line_per_trace_newest_first(page):
    table = logs_of(page)
    expect(table.get_by_role("link", name="failing job", exact=True)).to_be_visible()
    names = table.locator("tbody tr td.name a").all_inner_texts()
    written = ["failing job", "answer question", "describe image", "permalink target",
               "still running"]  # in the order the workload wrote them
    assert sorted(written, key=names.index) == written[::-1]
    row = table.get_by_role("row").filter(has=page.get_by_role("link", name="answer question",
                                                                 exact=True))
    expect(row).to_contain_text("accuracy 90%")  # its scores
    expect(row).to_contain_text("66")  # its tokens


def test_errors_only_filter_keeps_the_traces_with_errors(page):
    table = logs_of(page)
    page.get_by_label("Errors only").check()
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(f"/p/{PROJECT}/logs?errors=1")
    expect(table.get_by_role("link", name="failing job", exact=True)).to_be_visible()
    expect(table.get_by_role("link", name="answer question", exact=True)).to_have_count(0)


def test_search_filter_finds_text_in_a_span_output(page):
    table = logs_of(page)
    page.get_by_role("searchbox", name="Search").fill("lighter diagonal")
    page.get_by_role("button", name="Apply filters").click()
    expect(table.get_by_role("link", name="describe image", exact=True)).to_be_visible()
    expect(table.locator("tbody tr")).to_have_count(1)


def test_live_tail_shows_a_new_trace_without_a_reload(page, viewer):
    table = logs_of(page)
    page.evaluate("window.__sameDocument = true")
    run_program(write_one_trace, viewer.store, "newcomer trace")
    expect(table.get_by_role("link", name="newcomer trace", exact=True)).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True  # not reloaded


def test_clicking_a_trace_opens_its_span_tree(page):
    table = logs_of(page)
    table.get_by_role("link", name="answer question", exact=True).click()
    tree = page.get_by_role("tree", name="Span tree")
    expect(tree.get_by_role("treeitem", name="Chat Completion")).to_be_visible()
    expect(tree.get_by_role("treeitem", name="retrieve")).to_be_visible()
    expect(page).to_have_url(__import__("re").compile(r"\?r=[0-9a-f-]+"))
    page.get_by_role("link", name="All logs").click()
    expect(page.get_by_role("table", name="Traces")).to_be_visible()
