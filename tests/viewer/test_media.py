"""Images and attachments in logged values, rendered inline."""

from __future__ import annotations

from playwright.sync_api import expect

from .workload import IMAGE_URL


def media_span(page, viewer):
    page.goto(viewer.made["media_permalink"])
    panel = page.get_by_role("complementary", name="Span details")
    expect(panel.get_by_role("heading", name="describe image")).to_be_visible()
    return panel


def test_image_url_and_data_url_render_as_images(page, viewer):
    inputs = media_span(page, viewer).get_by_role("region", name="Input")
    images = inputs.locator("img.inline-image")
    expect(images).to_have_count(2)
    expect(inputs.locator(f'img.inline-image[src="{IMAGE_URL}"]')).to_have_count(1)
    data_image = inputs.locator('img.inline-image[src^="data:image/png;base64,"]')
    expect(data_image).to_be_visible()
    assert data_image.evaluate("img => img.complete && img.naturalWidth") == 20


def test_image_attachment_previews_inline_with_a_download_link(page, viewer):
    attachments = media_span(page, viewer).get_by_role("region", name="Attachments (4)")
    chart = attachments.get_by_label("attachment chart.png")
    image = chart.get_by_role("img", name="chart.png")
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth === 160",
                           arg=image.element_handle())
    download = chart.get_by_role("link", name="Download chart.png")
    with page.expect_download() as info:
        download.click()
    assert info.value.suggested_filename == "chart.png"


def test_pdf_and_audio_attachments_preview_by_content_type(page, viewer):
    attachments = media_span(page, viewer).get_by_role("region", name="Attachments (4)")
    pdf = attachments.get_by_label("attachment report.pdf").locator("object")
    expect(pdf).to_have_attribute("type", "application/pdf")
    expect(pdf).to_have_attribute("data", __import__("re").compile(r"^/api/attachments/[0-9a-f]+$"))
    audio = attachments.get_by_label("attachment voice.wav").locator("audio")
    expect(audio).to_be_attached()
    page.wait_for_function("a => a.readyState >= 1 && a.duration > 0.3", arg=audio.element_handle())


def test_external_attachment_links_out(page, viewer):
    attachments = media_span(page, viewer).get_by_role("region", name="Attachments (4)")
    link = attachments.get_by_role("link", name="original.tiff")
    expect(link).to_have_attribute("href", "https://example.com/files/original.tiff")
    expect(link).to_have_attribute("target", "_blank")
