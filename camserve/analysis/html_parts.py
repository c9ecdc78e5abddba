"""HTML building blocks of ``report.html``: escaped text, tables, embedded images, error cards and the
clickable confusion matrix. Every string from the data (paths, class names, clinical values) is
HTML-escaped; images are embedded as data URLs, so the page loads nothing from elsewhere."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_PER_CELL = 60  # images shown per confusion-matrix cell


@dataclass(frozen=True)
class Picture:
    """One embedded image: a title above it, its bytes and MIME type, and its alt text."""

    title: str
    data: bytes
    alt: str
    mime: str = "image/png"


@dataclass(frozen=True)
class Card:
    """One error: its pictures (image, predicted-class map, true-class map) and facts about it.

    Attributes:
        rel: The image's path under the data folder.
        true: True class.
        pred: Predicted class.
        confidence: p(pred).
        pictures: The image alone, or the image and the two maps.
        facts: ``(name, value)`` pairs shown under the pictures (focus, pointing game, faithfulness...).
        clinical: The clinical fields it was sent with (``None`` for an image-only model).
        note: Why maps are missing, when they are.
    """

    rel: str
    true: str
    pred: str
    confidence: float
    pictures: Sequence[Picture]
    facts: Sequence[tuple[str, str]] = ()
    clinical: Mapping[str, str] | None = None
    note: str = ""


@dataclass(frozen=True)
class Thumb:
    """An image in the browse-by-cell view: true and predicted class indices, confidence, JPEG bytes."""

    rel: str
    true: int
    pred: int
    confidence: float
    jpeg: bytes


def esc(value: Any) -> str:
    """Escaped text; floats with 4 decimals, ``None`` as empty."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


def img(data: bytes, alt: str, cls: str = "", mime: str = "image/png") -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img class="{cls}" alt="{esc(alt)}" src="data:{mime};base64,{b64}">'


def _td(value: Any) -> str:
    numeric = isinstance(value, (int, float)) or (isinstance(value, str) and value[:1].isdigit())
    return f'<td class="n">{esc(value)}</td>' if numeric else f"<td>{esc(value)}</td>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def card(c: Card) -> str:
    """One error card: pictures side by side, then the facts and clinical values."""
    figs = "".join(f'<figure><figcaption>{esc(p.title)}</figcaption>{img(p.data, p.alt, "map", p.mime)}</figure>'
                   for p in c.pictures)
    facts = "".join(f"<li>{esc(k)}: <b>{esc(v)}</b></li>" for k, v in c.facts)
    clinical = "" if c.clinical is None else (
        ", ".join(f"{esc(k)}={esc(v)}" for k, v in c.clinical.items()) or "none sent (every field missing)")
    return (f'<div class="card"><div class="head">true <b>{esc(c.true)}</b> &rarr; predicted <b>{esc(c.pred)}'
            f"</b> ({c.confidence:.2f})<br><span class=\"path\">{esc(c.rel)}</span></div>"
            f'<div class="pics n{len(c.pictures)}">{figs}</div>'
            + (f'<p class="muted">{esc(c.note)}</p>' if c.note else "")
            + (f"<ul>{facts}</ul>" if facts else "")
            + (f'<p class="clin">clinical: {clinical}</p>' if clinical else "")
            + "</div>")


def cards(items: Sequence[Card]) -> str:
    if not items:
        return '<p class="muted">No misclassified images.</p>'
    return f'<div class="cards">{"".join(card(c) for c in items)}</div>'


def confusion_browser(classes: Sequence[str], matrix: Sequence[Sequence[int]], thumbs: Sequence[Thumb]) -> str:
    """The confusion matrix as buttons; clicking a cell shows that cell's images below it."""
    C = len(classes)
    by_cell: dict[tuple[int, int], list[Thumb]] = {}
    for thumb in thumbs:
        by_cell.setdefault((thumb.true, thumb.pred), []).append(thumb)
    rows = []
    for t in range(C):
        total = sum(matrix[t]) or 1
        cells = []
        for p in range(C):
            n = matrix[t][p]
            shade = f"rgba({'40,100,200' if t == p else '220,60,40'},{0.08 + 0.6 * n / total:.2f})"
            label = f"{classes[t]} predicted as {classes[p]}: {n} images"
            button = (f'<button type="button" data-cell="{t}-{p}" aria-pressed="false" aria-label="{esc(label)}"'
                      f' style="background:{shade}">{n}</button>' if n else '<span class="zero">0</span>')
            cells.append(f"<td>{button}</td>")
        rows.append(f"<tr><th>{esc(classes[t])}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{esc(c)}</th>" for c in classes)
    views = "".join(_cell_view(classes, t, p, items, matrix[t][p]) for (t, p), items in sorted(by_cell.items()))
    return (f'<table class="cm"><tr><th>true \\ predicted</th>{head}</tr>{"".join(rows)}</table>'
            '<p class="muted">Click a cell to see its images.</p>'
            f'<div id="cell-views">{views}</div>')


def _cell_view(classes: Sequence[str], t: int, p: int, items: Sequence[Thumb], total: int) -> str:
    wrong = t != p
    order = sorted(items, key=lambda x: (-x.confidence, x.rel) if wrong else (x.confidence, x.rel))
    shown = order[:MAX_PER_CELL]
    which = "most confident first" if wrong else "least confident first"
    more = f"showing {len(shown)} of {total}, {which}" if len(shown) < total else which
    figs = "".join(f'<figure>{img(x.jpeg, x.rel, "thumb", "image/jpeg")}<figcaption>{esc(x.rel)}<br>'
                   f"{x.confidence:.2f}</figcaption></figure>" for x in shown)
    return (f'<section class="cell-view" id="cell-{t}-{p}" hidden><h3>{esc(classes[t])} predicted as '
            f"{esc(classes[p])} ({total} images; {more})</h3><div class=\"thumbs\">{figs}</div></section>")


BROWSE_JS = """document.querySelectorAll('button[data-cell]').forEach(function (b) {
  b.addEventListener('click', function () {
    document.querySelectorAll('.cell-view').forEach(function (v) { v.hidden = true; });
    document.querySelectorAll('button[data-cell]').forEach(function (x) {
      x.setAttribute('aria-pressed', String(x === b)); });
    var view = document.getElementById('cell-' + b.dataset.cell);
    view.hidden = false;
    view.scrollIntoView({block: 'nearest'});
  });
});"""
