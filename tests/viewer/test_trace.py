"""A trace: the span tree beside its timeline, the selected span's details, permalinks."""

from __future__ import annotations

import re
import socket

from playwright.sync_api import expect

from .workload import PROJECT


def open_trace(page, name: str):
    page.goto(f"/p/{PROJECT}/logs")
    page.get_by_role("table", name="Traces").get_by_role("link", name=name, exact=True).click()
    tree = page.get_by_role("tree", name="Span tree")
    expect(tree.get_by_role("treeitem").first).to_be_visible()
    return tree


def detail(page):
    return page.get_by_role("complementary", name="Span details")


def test_trace_tree_shows_spans_with_type_icons_durations_and_timeline_bars(page):
    tree = open_trace(page, "answer question")
    llm = tree.get_by_role("treeitem", name="Chat Completion")
    expect(llm.get_by_role("img", name="llm")).to_be_visible()
    expect(llm.locator(".row-duration")).to_have_text(re.compile(r"\d+(\.\d+)? (µs|ms|s)"))
    expect(llm.locator(".bar")).to_be_visible()
    for name, kind in (("get_weather", "tool"), ("relevance", "score")):
        row = tree.get_by_role("treeitem", name=name)
        expect(row.get_by_role("img", name=kind)).to_be_visible()


def test_selecting_a_span_shows_its_input_and_output(page):
    tree = open_trace(page, "answer question")
    tree.get_by_role("treeitem", name="retrieve").click()
    panel = detail(page)
    expect(panel.get_by_role("heading", name="retrieve")).to_be_visible()
    expect(panel.get_by_role("region", name="Input")).to_contain_text(
        "What is the capital of France?")
    expect(panel.get_by_role("region", name="Output")).to_contain_text(
        "Paris is the capital of France.")
    expect(page).to_have_url(re.compile(r"&s=[0-9a-f-]+$"))


def test_a_span_shows_the_host_and_process_it_ran_in(page):
    tree = open_trace(page, "answer question")
    tree.get_by_role("treeitem", name="retrieve").click()
    facts = detail(page).locator(".facts > div").filter(has=page.locator("dt", has_text="Ran on"))
    expect(facts.locator("dd")).to_have_text(
        re.compile(rf"^{re.escape(socket.gethostname())} · pid \d+$"))


def test_llm_span_shows_the_conversation_tool_calls_and_token_metrics(page):
    tree = open_trace(page, "answer question")
    tree.get_by_role("treeitem", name="Chat Completion").click()
    chat = detail(page).get_by_role("list", name="Conversation")
    expect(chat.get_by_role("listitem", name="system message")).to_contain_text(
        "You answer with the documents given.")
    expect(chat.get_by_role("listitem", name="user message")).to_contain_text(
        "What is the capital of France?")
    assistant = chat.get_by_role("listitem", name="assistant message")
    expect(assistant).to_contain_text("The capital of France is Paris")
    expect(assistant.get_by_label("tool call get_weather")).to_contain_text("Paris")
    metrics = detail(page).get_by_role("region", name="Metrics")
    expect(metrics.get_by_role("row", name="prompt_tokens")).to_contain_text("52")
    expect(metrics.get_by_role("row", name=re.compile(r"^tokens "))).to_contain_text("66")
    expect(metrics.get_by_role("row", name="time_to_first_token")).to_contain_text("231 ms")


def test_error_span_shows_the_error_and_its_traceback(page):
    tree = open_trace(page, "failing job")
    row = tree.get_by_role("treeitem", name="parse_invoice")
    expect(row.get_by_role("img", name="error")).to_be_visible()
    row.click()
    error = detail(page).get_by_role("region", name="Error")
    expect(error).to_contain_text("ValueError: no total in invoice")
    expect(error.locator("pre.traceback")).to_contain_text("Traceback (most recent call last)")


def test_span_with_two_parents_appears_under_each_with_a_marker(page):
    tree = open_trace(page, "pipeline")
    joins = tree.get_by_role("treeitem", name="join")
    expect(joins).to_have_count(2)
    expect(joins.first.get_by_role("img", name="2 parents")).to_be_visible()
    expect(joins.nth(1).get_by_role("img", name="2 parents")).to_be_visible()
    joins.first.click()
    expect(detail(page).get_by_text("Parents")).to_be_visible()


def test_running_span_is_shown_running(page):
    tree = open_trace(page, "still running")
    row = tree.get_by_role("treeitem", name="still running")
    expect(row.get_by_role("img", name="running")).to_be_visible()
    expect(row.locator(".row-duration")).to_have_text("running")


def test_collapsing_a_span_hides_its_children(page):
    tree = open_trace(page, "answer question")
    expect(tree.get_by_role("treeitem", name="get_weather")).to_be_visible()
    tree.get_by_role("button", name="Collapse Chat Completion").click()
    expect(tree.get_by_role("treeitem", name="get_weather")).to_have_count(0)
    tree.get_by_role("button", name="Expand Chat Completion").click()
    expect(tree.get_by_role("treeitem", name="get_weather")).to_be_visible()


def test_truncated_field_shows_a_preview_and_loads_in_full(page):
    open_trace(page, "large output")
    output = detail(page).get_by_role("region", name="Output")
    expect(output).to_contain_text("Truncated")
    output.get_by_role("button", name="Load full").click()
    full = detail(page).get_by_role("region", name="Output")
    expect(full).not_to_contain_text("Truncated")
    expect(full).to_contain_text("1000 items")


def test_permalink_opens_the_trace_with_the_span_selected(page, viewer):
    page.goto(viewer.made["permalink"])  # exactly what span.permalink() returned
    tree = page.get_by_role("tree", name="Span tree")
    selected = tree.get_by_role("treeitem", selected=True)
    expect(selected).to_contain_text("lookup")
    expect(detail(page).get_by_role("heading", name="lookup")).to_be_visible()
    expect(detail(page).get_by_role("region", name="Output")).to_contain_text("found")


def test_experiment_permalink_opens_the_trace_in_the_experiment(page, viewer):
    page.goto(viewer.made["experiments"]["candidate"]["permalink"])
    selected = page.get_by_role("tree", name="Span tree").get_by_role("treeitem", selected=True)
    expect(selected).to_contain_text("only-in-candidate")  # the experiment's last row
    expect(page.get_by_text("experiment candidate")).to_be_visible()


def test_unknown_trace_shows_a_not_found_page(page):
    page.goto(f"/p/{PROJECT}/logs?r=00000000-0000-0000-0000-000000000000")
    expect(page.get_by_role("heading", name="Trace not found")).to_be_visible()


def test_unknown_span_of_a_known_trace_says_so(page, viewer):
    url = re.sub(r"s=[0-9a-f-]+", "s=00000000-0000-0000-0000-000000000000",
                 viewer.made["permalink"])
    page.goto(url)
    expect(detail(page)).to_contain_text("Span not found")


def test_unknown_page_shows_not_found(page):
    page.goto("/no/such/page")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
