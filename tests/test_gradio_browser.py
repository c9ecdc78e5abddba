"""The demo page as a visitor meets it: Debian's headless Chromium driven by Playwright, against the
session's TorchServe (``tiny``: 3 classes, image only; ``fusion``: binary, image + clinical data).

Screenshots of the explain view (both models, 1400 px and 390 px) and the batch view are written to
``$CAMSERVE_SCREENSHOTS`` (default: the test's temp folder) for a reviewer to look at.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.gradio_support import THYROID_ROWS, demo_settings, forwarding, launched
from tests.harness import CLASSES, free_port, png_bytes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDE, PHONE = 1400, 390
SOURCE = "() => document.querySelector('#overlay img')?.src || null"

pytestmark = [pytest.mark.browser, pytest.mark.integration,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package")]
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("CAMSERVE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def app_url(server, tmp_path_factory) -> Iterator[str]:
    with launched(demo_settings(server, tmp_path_factory.mktemp("demo"), status_every=1.0)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str, width: int = WIDE, model: str | None = "tiny"):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(url, wait_until="domcontentloaded")
    expect(page.locator("#status")).to_contain_text("Model server up", timeout=60_000)
    if model is not None:
        choose(page, "#model", model)
        expect(page.locator("#intro")).to_contain_text(f"the model {model} gives", timeout=30_000)
    return page


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def explain_and_wait(page) -> None:
    """Press Explain and wait for a new overlay (a new picture, not the previous answer's)."""
    before = page.evaluate(SOURCE)
    page.locator("#explain").click()
    page.wait_for_function(f"before => ({SOURCE})() && ({SOURCE})() !== before", arg=before, timeout=60_000)
    expect(page.locator("#banner .verdict:not(.prompt)")).to_be_visible(timeout=30_000)


def upload(page, path: Path) -> None:
    page.locator("#image input[type=file]").set_input_files(str(path))
    expect(page.locator("#image img")).to_have_count(1, timeout=30_000)


def pixels(page, selector: str) -> np.ndarray:
    """The image a page shows, fetched from its own URL."""
    src = page.locator(selector).first.get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"), np.float64)


def no_error_badge(page) -> None:
    assert page.get_by_text(re.compile(r"^\s*Error\s*$")).count() == 0


# --- model awareness ----------------------------------------------------------------------------------

def test_thyroid_model_gets_thyroid_examples_form_values_and_no_chest_wording(browser, app_url, shots):
    page = open_page(browser, app_url, model="fusion")
    thumbs = page.locator("#examples button.thumbnail-item")
    expect(thumbs).to_have_count(len(THYROID_ROWS), timeout=30_000)
    text = page.locator("body").inner_text()
    for chest_word in ("chest", "X-ray", "lung", "COVID", "Viral_Pneumonia", "radiograph"):
        assert chest_word.lower() not in text.lower(), chest_word
    assert "thyroid" in text
    cls, _, composition, age = THYROID_ROWS[2]
    thumbs.nth(2).click()
    expect(page.locator("#label input")).to_have_value(cls, timeout=15_000)
    expect(page.locator("#clinical-age input, #clinical-age textarea")).to_have_value(age)
    expect(page.locator("#clinical-composition input")).to_have_value(composition)
    explain_and_wait(page)
    no_error_badge(page)
    expect(page.locator("#details")).to_contain_text(f"age={age}")
    page.screenshot(path=str(shots / "explain-thyroid-1400.png"), full_page=True)
    page.close()

    page = open_page(browser, app_url, width=PHONE, model="fusion")
    page.locator("#examples button.thumbnail-item").nth(0).click()
    expect(page.locator("#clinical-age input, #clinical-age textarea")).to_have_value(THYROID_ROWS[0][3])
    explain_and_wait(page)
    page.screenshot(path=str(shots / "explain-thyroid-390.png"), full_page=True)
    page.close()


def test_chest_like_model_gets_its_own_examples_with_masks(browser, app_url):
    page = open_page(browser, app_url, model="tiny")
    expect(page.locator("#examples button.thumbnail-item")).to_have_count(2 * len(CLASSES), timeout=30_000)
    page.locator("#examples button.thumbnail-item").nth(0).click()
    expect(page.locator("#label input")).to_have_value(CLASSES[0], timeout=15_000)
    expect(page.locator("#mask img")).to_have_count(1)
    explain_and_wait(page)
    expect(page.locator("#focus textarea, #focus input")).to_have_value(re.compile(r"^0\.\d{3} \(the mask covers"))
    page.close()


# --- failures -----------------------------------------------------------------------------------------

def test_a_fake_image_gives_one_readable_message_and_no_error_badge(browser, app_url, tmp_path):
    fake = tmp_path / "scan.png"
    fake.write_text("this is a text file, not an image\n")
    page = open_page(browser, app_url)
    page.locator("#image input[type=file]").set_input_files(str(fake))
    page.wait_for_timeout(1000)
    page.locator("#explain").click()
    banner = page.locator("#banner .verdict.failed")
    expect(banner).to_have_text("This file is not an image the model can read: use a PNG, JPEG, BMP, TIFF, GIF or "
                                "WebP file.", timeout=30_000)
    page.wait_for_timeout(1000)
    no_error_badge(page)
    assert page.locator("[role=alert]").count() == 1
    page.close()


def test_status_follows_a_stopped_and_restarted_server_without_reconnect(browser, server, tmp_path):
    ports = free_port(), free_port()
    settings = demo_settings(server, tmp_path, status_every=1.0, url=f"http://127.0.0.1:{ports[0]}",
                             management_url=f"http://127.0.0.1:{ports[1]}")
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes((64, 64), seed=8))
    with launched(settings) as url:
        with forwarding(ports[0], server.url), forwarding(ports[1], server.management_url):
            page = open_page(browser, url)
            button_y = page.locator("#explain").bounding_box()["y"]
            upload(page, image)
            explain_and_wait(page)
        status = page.locator("#status")
        expect(status).to_contain_text("Model server down", timeout=15_000)  # the periodic check
        page.locator("#explain").click()
        expect(page.locator("#banner .verdict.failed")).to_contain_text("not reachable", timeout=30_000)
        down = status.inner_text()
        assert "make" not in down and "Reconnect" not in down and "TorchServe" not in down
        assert page.get_by_role("button", name="Reconnect").count() == 0
        assert page.locator("#explain").bounding_box()["y"] == pytest.approx(button_y, abs=2)  # no jump
        with forwarding(ports[0], server.url), forwarding(ports[1], server.management_url):
            expect(status).to_contain_text("Model server up", timeout=15_000)  # no click needed
            explain_and_wait(page)
            expect(page.locator("#banner .verdict.failed")).to_have_count(0)
        page.close()


# --- the explain view ---------------------------------------------------------------------------------

def test_overlay_is_large_with_a_colour_bar_cam_max_and_probability(browser, app_url, server, tmp_path, shots):
    image = tmp_path / "small.png"
    image.write_bytes(png_bytes((128, 128), seed=3))
    reference = server.client().explain("tiny", image.read_bytes(), target="auto")
    pred = reference.prediction
    page = open_page(browser, app_url)
    upload(page, image)
    explain_and_wait(page)
    overlay = page.locator("#overlay img")
    assert overlay.evaluate("img => img.naturalWidth") == 512  # upscaled for display, aspect kept
    assert overlay.bounding_box()["width"] >= 400
    bar = page.locator("#colorbar")
    expect(bar.locator(".bar")).to_be_visible()
    expect(bar).to_contain_text(f"Predicted: {pred.label}, probability {pred.confidence:.1%}, "
                                f"map maximum (cam_max) {reference.explanation.cam_max:.3g}")
    expect(page.locator("#banner .verdict.none")).to_have_text(
        re.compile(rf"^Predicted {pred.label}, \d+% confident \(no true label given\)$"))
    # every class side by side, and the same-scale option redraws them on one scale
    captions = page.locator("#every-class .caption-label")
    expect(captions).to_have_count(len(CLASSES))
    before = pixels(page, "#overlay img")
    page.get_by_label("Same scale for every class").check()
    expect(bar).to_contain_text("Same scale for every class: the top of the bar is the largest map maximum")
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "explain-tiny-1400.png"), full_page=True)
    page.close()
    assert before.shape == (512, 512, 3)


def test_a_misclassified_example_shows_both_maps_and_a_red_verdict(browser, app_url, shots):
    page = open_page(browser, app_url)
    thumbs = page.locator("#examples button.thumbnail-item")
    expect(thumbs).to_have_count(2 * len(CLASSES), timeout=30_000)
    captions = [thumbs.nth(i).inner_text().strip() for i in range(thumbs.count())]
    wrong = None
    for i, cls in enumerate(captions):
        page.locator("#examples button.thumbnail-item").nth(i).click()
        expect(page.locator("#label input")).to_have_value(cls, timeout=15_000)
        explain_and_wait(page)
        if "Wrong:" in page.locator("#banner").inner_text():
            wrong = (i, cls)
            break
    assert wrong is not None, "a random model gets some example wrong"
    _, true = wrong
    banner = page.locator("#banner .verdict.wrong")
    expect(banner).to_contain_text(re.compile(rf"^Wrong: {true} misread as \w+, \d+% confident"))
    red, green, _ = (int(c) for c in re.findall(r"\d+", banner.evaluate("e => getComputedStyle(e).borderColor")))
    assert red > 200 and green < 80
    expect(page.locator("#overlay-true img")).to_be_visible()
    expect(page.locator("#overlay-true")).to_contain_text(f"True class: {true}")
    expect(page.locator("#colorbar")).to_contain_text(f"True class: {true}")
    page.screenshot(path=str(shots / "explain-wrong-1400.png"), full_page=True)
    page.close()


def _alpha_shown(page) -> float:
    """The opacity the overlay was drawn with: overlay = (1 - a) original + a heatmap, solved for a."""
    over, orig, heat = (pixels(page, f"#{i} img") for i in ("overlay", "original", "heatmap"))
    d = (heat - orig).ravel()
    return float((over - orig).ravel() @ d / (d @ d))


def test_keyboard_alpha_change_redraws_the_overlay_to_the_slider_value(browser, app_url, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes((96, 96), seed=11))
    page = open_page(browser, app_url)
    upload(page, image)
    explain_and_wait(page)
    page.get_by_text("Original and heatmap").click()
    expect(page.locator("#heatmap img")).to_be_visible(timeout=15_000)
    assert _alpha_shown(page) == pytest.approx(0.5, abs=0.01)
    slider = page.locator("#alpha input[type=range]")
    slider.focus()
    for expected in (0.55, 0.6):
        page.keyboard.press("ArrowRight")
        assert float(slider.input_value()) == pytest.approx(expected)
        deadline = time.monotonic() + 20
        while abs(_alpha_shown(page) - expected) > 0.01 and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert _alpha_shown(page) == pytest.approx(expected, abs=0.01)
    page.close()


def test_small_screen_layout_fits_and_keeps_the_overlay_near_the_button(browser, app_url, shots):
    page = open_page(browser, app_url, width=PHONE)
    page.locator("#examples button.thumbnail-item").nth(0).click()
    expect(page.locator("#image img")).to_have_count(1, timeout=15_000)
    explain_and_wait(page)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE
    button = page.locator("#explain").bounding_box()
    overlay = page.locator("#overlay img").bounding_box()
    assert 0 < overlay["y"] - (button["y"] + button["height"]) < 250
    assert overlay["width"] >= 300
    page.screenshot(path=str(shots / "explain-tiny-390.png"), full_page=True)
    page.close()


def test_every_image_has_alt_text(browser, app_url):
    page = open_page(browser, app_url)
    page.locator("#examples button.thumbnail-item").nth(1).click()
    expect(page.locator("#mask img")).to_have_count(1, timeout=15_000)
    explain_and_wait(page)
    page.get_by_text("Original and heatmap").click()
    expect(page.locator("#heatmap img")).to_be_visible(timeout=15_000)
    images = page.locator("img:visible")
    alts = [images.nth(i).get_attribute("alt") for i in range(images.count())]
    assert len(alts) >= 12
    assert all(a and a.strip() for a in alts), alts
    page.close()


def test_dropdown_lists_close_when_tabbing_away(browser, app_url):
    page = open_page(browser, app_url)
    page.locator("#target input").click()
    expect(page.get_by_role("option", name="COVID", exact=True)).to_be_visible()
    for _ in range(3):
        page.keyboard.press("Tab")
    page.wait_for_timeout(300)
    assert page.locator("[role=option]:visible, [role=listbox]:visible").count() == 0
    page.close()


# --- the batch view -----------------------------------------------------------------------------------

def test_batch_table_csv_download_labels_and_skipped_entries(browser, app_url, server, tmp_path, shots):
    images = {f"{cls}/{k}.png": png_bytes((64, 64), seed=60 + 3 * i + k) for i, cls in enumerate(CLASSES)
              for k in range(2)}
    archive = tmp_path / "tree.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in images.items():
            zf.writestr(name, data)
        zf.writestr("../escape.png", png_bytes((8, 8)))
        zf.writestr("notes.txt", b"hello")
    loose = tmp_path / "loose.png"
    loose.write_bytes(png_bytes((64, 64), seed=99))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nloose.png,Normal\n")
    client = server.client()
    truth = {**{n: n.split("/")[0] for n in images}, "loose.png": "Normal"}
    preds = {n: client.explain("tiny", d, explain="none").prediction for n, d in
             {**images, "loose.png": loose.read_bytes()}.items()}

    page = open_page(browser, app_url)
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-files input[type=file]").set_input_files([str(archive), str(loose)])
    page.locator("#batch-csv-in input[type=file]").set_input_files(str(labels))
    page.wait_for_timeout(1500)
    page.locator("#explain-all").click()
    summary = page.locator("#batch-summary")
    expect(summary).to_contain_text("7 image(s)", timeout=120_000)
    expect(summary).to_contain_text("../escape.png")
    expect(summary).to_contain_text("its path leaves the zip")
    headers = page.evaluate("() => Array.from(document.querySelectorAll('#batch-table th')).map(t => t.innerText)")
    assert [h.strip() for h in headers][:6] == ["file", "true", "predicted", "confidence", "correct", "focus"]
    link = page.locator("#batch-csv a").first
    expect(link).to_be_visible(timeout=15_000)
    rows = list(csv.DictReader(io.StringIO(page.request.get(link.get_attribute("href")).text())))
    assert sorted(r["file"] for r in rows) == sorted(truth)
    for r in rows:
        assert r["true"] == truth[r["file"]]
        assert r["predicted"] == preds[r["file"]].label
        assert float(r["confidence"]) == pytest.approx(preds[r["file"]].confidence, abs=1e-3)
        assert r["correct"] == ("yes" if r["true"] == r["predicted"] else "no")
    wrong = [r for r in rows if r["correct"] == "no"]
    assert [r["file"] for r in rows[:len(wrong)]] == [r["file"] for r in wrong]  # errors first
    expect(page.locator("#batch-gallery .caption-label")).to_have_count(len(rows))
    page.screenshot(path=str(shots / "batch-tiny-1400.png"), full_page=True)
    page.close()
