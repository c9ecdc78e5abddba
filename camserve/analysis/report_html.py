"""One self-contained ``report.html``: metrics tables, figures and error gallery embedded as base64.

Every string from the data (paths, class names) is HTML-escaped; nothing is loaded from elsewhere.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right}img.fig{max-width:100%;margin:.5em 0}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #ddd;padding:6px;font-size:12px;width:400px}
.card img{width:190px;height:auto;image-rendering:pixelated;vertical-align:top}.muted{color:#777}"""


@dataclass(frozen=True)
class GalleryItem:
    """One error: its thumbnail and, when requested, its Grad-CAM overlay (PNG bytes)."""

    rel: str
    true: str
    pred: str
    confidence: float
    thumbnail: bytes
    heatmap: bytes | None = None


def _e(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("" if value is None else str(value))


def _img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _td(value: Any) -> str:
    numeric = isinstance(value, (int, float)) or (isinstance(value, str) and value[:1].isdigit())
    return f'<td class="n">{_e(value)}</td>' if numeric else f"<td>{_e(value)}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _overview(s: Mapping[str, Any]) -> str:
    cal = s["calibration"]
    rows = [("model", f"{s['model'].get('name')} v{s['model'].get('version')} ({s['model'].get('arch')})"),
            ("images analysed", s["total_samples"]), ("images failed", s["failed"]),
            ("errors", f"{s['total_errors']} ({_pct(s['error_rate'])})"), ("accuracy", _pct(s["accuracy"])),
            ("balanced accuracy", _pct(s["balanced_accuracy"])),
            *[(f"top-{k} accuracy", _pct(v)) for k, v in s["topk_accuracy"].items()],
            ("mean confidence, errors", _pct(s["mean_confidence_errors"])),
            ("mean confidence, correct", _pct(s["mean_confidence_correct"])),
            (f"ECE ({cal['n_bins']} equal-width bins)", cal["ece"]), ("MCE", cal["mce"]),
            ("likely label errors (confident learning)", s["likely_label_errors"]["count"])]
    return _table(["metric", "value"], rows)


def _gallery(items: Sequence[GalleryItem]) -> str:
    if not items:
        return '<p class="muted">No misclassified images.</p>'
    cards = []
    for it in items:
        heat = _img(it.heatmap, f"Grad-CAM of {it.rel}") if it.heatmap else '<span class="muted">no heatmap</span>'
        cards.append(f'<div class="card">{_img(it.thumbnail, it.rel)} {heat}<br>{_e(it.rel)}<br>'
                     f"true <b>{_e(it.true)}</b> &rarr; predicted <b>{_e(it.pred)}</b> ({it.confidence:.2f})</div>")
    return f'<div class="gallery">{"".join(cards)}</div>'


def render(summary: Mapping[str, Any], confusion: Mapping[str, Any], figures: Mapping[str, Path],
           gallery: Sequence[GalleryItem], failures: Sequence[Sequence[str]]) -> str:
    """The whole page as a string."""
    classes = confusion["classes"]
    per = summary["per_class"]
    parts = [f"<h1>Error analysis: {_e(summary['model'].get('name'))}</h1>", "<h2>Overview</h2>",
             _overview(summary), "<h2>Per-class metrics</h2>",
             _table(["class", "precision", "recall", "F1", "support"],
                    [(c, per[c]["precision"], per[c]["recall"], per[c]["f1"], per[c]["support"]) for c in classes]
                    + [("macro avg", *summary["macro_avg"].values(), ""),
                       ("weighted avg", *summary["weighted_avg"].values(), "")]),
             "<h2>Confusion matrix (rows: true, columns: predicted)</h2>",
             _table(["true \\ pred", *classes],
                    [(c, *row) for c, row in zip(classes, confusion["matrix"], strict=True)]),
             "<h3>Most frequent confusions</h3>",
             _table(["true", "predicted", "count"], [(p["true"], p["pred"], p["count"]) for p in confusion["pairs"]])]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [f'<h3>{_e(name.replace("_", " "))}</h3>{_img(path.read_bytes(), name, "fig")}'
                  for name, path in figures.items()]
    else:
        parts.append('<p class="muted">Figures not drawn: run with --visualize.</p>')
    parts += ["<h2>Most confident errors</h2>", _gallery(gallery), "<h2>Likely label errors</h2>",
              f"<p>{_e(summary['likely_label_errors']['method'])}</p>",
              _table(["path", "given", "suggested", "p(given)", "p(suggested)", "margin"],
                     [(r["path"], r["given"], r["suggested"], r["p_given"], r["p_suggested"], r["margin"])
                      for r in summary["likely_label_errors"]["top"]])]
    focus = summary.get("focus_score")
    if focus:
        groups = [*focus["by_class"].items(), ("correct", focus["correct"]), ("wrong", focus["wrong"])]
        parts += ["<h2>Focus score (share of the heatmap inside the mask)</h2>",
                  _table(["group", "n", "mean", "median", "q25", "q75"],
                         [(g, v["n"], v.get("mean"), v.get("median"), v.get("q25"), v.get("q75")) for g, v in groups])]
    parts += [f"<h2>Failed images ({len(failures)})</h2>", _table(["path", "stage", "reason"], failures)]
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Error analysis</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
