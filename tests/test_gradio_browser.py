"""One real browser: Debian's headless Chromium driven by Playwright loads the page, uploads, explains."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradio_app.settings import Settings
from tests.conftest import CLASSES, png_bytes
from tests.test_gradio_app import image_tree, launched

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.integration,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package")]


@pytest.fixture(scope="module")
def page_url(server, tmp_path_factory) -> Iterator[str]:
    settings = Settings(server_url=server.url, management_url=server.management_url, token_file=server.key_file,
                        examples_dir=image_tree(tmp_path_factory.mktemp("phantoms")), timeout=30)
    with launched(settings) as url:
        yield url


def test_upload_explain_shows_label_and_overlay(page_url, server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "xray.png"
    image.write_bytes(png_bytes((160, 120), seed=7))
    expected = server.client().explain("tiny", image.read_bytes()).prediction.label
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(page_url, wait_until="domcontentloaded")
            sync_api.expect(page.locator("#status")).to_contain_text("Server up", timeout=30_000)
            page.locator("#image input[type=file]").set_input_files(str(image))
            page.locator("#image img").first.wait_for(timeout=30_000)
            page.locator("#explain").click()

            overlay = page.locator("#overlay img").first
            overlay.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
            assert overlay.evaluate("img => img.complete && img.naturalWidth") == 160
            scores = page.locator("#scores")
            sync_api.expect(scores).to_contain_text(expected, timeout=10_000)
            assert sum(name in scores.inner_text() for name in CLASSES) == len(CLASSES)
            verdict = re.compile(rf"^Predicted {expected}, \d+% confident")
            sync_api.expect(page.locator("#verdict textarea")).to_have_value(verdict, timeout=10_000)
        finally:
            browser.close()
