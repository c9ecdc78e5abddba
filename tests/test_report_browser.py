"""report.html in a real browser (Debian's Chromium through Playwright): clicking a confusion-matrix cell
shows that cell's images and only them, and at 1400 px the figures fill the page without a horizontal
scroll bar. The page is built from hand-made results: no server."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camserve.analysis import figures, html_parts, report_html
from camserve.analysis.provenance import provenance
from camserve.analysis.report import analyse
from camserve.analysis.results import Analysis

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = ["COVID", "Normal", "Viral_Pneumonia"]

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")]
sync_api = pytest.importorskip("playwright.sync_api")


def jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (shade, shade, shade)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def page_file(tmp_path_factory) -> tuple[Path, list[list[int]]]:
    rng = np.random.default_rng(0)
    y_true = np.repeat([0, 1, 2], 30)
    probs = rng.dirichlet([1, 1, 1], size=90)
    probs[np.arange(90), y_true] += 0.3  # mostly right
    probs /= probs.sum(axis=1, keepdims=True)
    n = len(y_true)
    an = Analysis(classes=CLASSES, rels=[f"{CLASSES[t]}/{k:03d}.png" for k, t in enumerate(y_true)],
                  y_true=y_true, y_pred=probs.argmax(axis=1), probs=probs, focus=rng.random(n),
                  hit=np.full(n, np.nan), lesion_focus=np.full(n, np.nan), faithfulness=np.full((n, 3), np.nan),
                  failures=[], unknown_folders=[], mask_status=Counter({"ok": n}), lesion_status=Counter())
    folder = tmp_path_factory.mktemp("report")
    summary, confusion = analyse(an, {"name": "m", "version": "1", "arch": "resnet18", "classes": CLASSES}, 5)
    figs = figures.write_figures(folder / "figures", an)
    thumbs = [html_parts.Thumb(an.rels[i], int(an.y_true[i]), int(an.y_pred[i]), float(an.confidence[i]),
                               jpeg(8 * (i % 30))) for i in range(n)]
    prov = provenance(model={"name": "m", "version": "1", "arch": "resnet18", "layer": "layer4"}, method="gradcam",
                      argv=["analyze_errors.py"], urls=["http://127.0.0.1:8080"],
                      folders={"data_dir": folder, "masks_dir": None, "lesion_masks_dir": None},
                      images={"files": n, "analysed": n, "failed": 0}, file_list_sha256="0" * 64)
    html = report_html.render(summary, confusion, figs, [], [], prov, thumbs)
    path = folder / "report.html"
    path.write_text(html, encoding="utf-8")
    return path, confusion["matrix"]


@pytest.fixture(scope="module")
def page(page_file):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.goto(page_file[0].as_uri())
        yield tab
        browser.close()


def test_clicking_a_cell_shows_its_images_only(page, page_file):
    matrix = page_file[1]
    views = page.locator(".cell-view")
    assert views.count() == sum(1 for row in matrix for n in row if n) and not any(
        views.nth(k).is_visible() for k in range(views.count()))
    wrong = next((t, p) for t in range(3) for p in range(3) if t != p and matrix[t][p])
    for t, p in (wrong, (1, 1)):
        page.click(f'button[data-cell="{t}-{p}"]')
        view = page.locator(f"#cell-{t}-{p}")
        assert view.is_visible() and view.locator("img.thumb").count() == min(matrix[t][p], html_parts.MAX_PER_CELL)
        assert page.locator(f'button[data-cell="{t}-{p}"]').get_attribute("aria-pressed") == "true"
        assert sum(views.nth(k).is_visible() for k in range(views.count())) == 1
    if os.environ.get("CAMSERVE_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["CAMSERVE_SCREENSHOTS"]) / "report_browse.png"), full_page=True)


def test_figures_fill_the_page_without_horizontal_scrolling(page):
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    body = page.evaluate("(() => { const s = getComputedStyle(document.body); return document.body.clientWidth"
                         " - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight); })()")
    widths = page.evaluate("Array.from(document.querySelectorAll('img.fig')).map(i => i.getBoundingClientRect()"
                           ".width)")
    assert len(widths) == 6 and all(w >= 0.98 * body for w in widths), (widths, body)
