"""One self-contained ``report.html``: headline, provenance, metrics, figures, error cards, and a
confusion matrix whose cells open their images (plain HTML and a few lines of JavaScript, no server).

Every string from the data (paths, class names) is HTML-escaped; nothing is loaded from elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from camserve.analysis.html_parts import BROWSE_JS, Card, Thumb, cards, confusion_browser, esc, img, pct, table

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1340px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}.lead{font-size:1.1em;line-height:1.5;background:#f6f8fa;border-left:4px solid #2a64c8;
padding:.6em 1em}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}td.n{text-align:right}img.fig{width:100%;height:auto;margin:.5em 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(620px,1fr));gap:14px}
.card{border:1px solid #ddd;padding:8px;font-size:13px}.card .path{color:#555;word-break:break-all}
.pics{display:grid;grid-template-columns:repeat(3,1fr);gap:6px}.pics.n1{grid-template-columns:minmax(0,200px)}
.pics figure{margin:0}.pics figcaption{font-size:12px;color:#333;min-height:2.6em}
img.map{width:100%;height:auto;image-rendering:pixelated}.card ul{margin:.4em 0;padding-left:1.2em}
.muted{color:#777}table.cm button{min-width:4em;padding:.4em;border:1px solid #999;cursor:pointer;font:inherit}
table.cm button[aria-pressed=true]{outline:3px solid #222}.zero{color:#aaa;padding:.4em}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}.thumbs figure{margin:0;width:110px;font-size:11px;word-break:break-all}
img.thumb{width:110px;height:auto;image-rendering:pixelated}table.prov th{white-space:nowrap;vertical-align:top}
table.prov td{overflow-wrap:anywhere}.legend-roi{color:#888}.legend-lesion{color:#c0c}"""


def _overview(s: Mapping[str, Any]) -> str:
    cal = s["calibration"]
    rows = [("model", f"{s['model'].get('name')} v{s['model'].get('version')} ({s['model'].get('arch')})"),
            ("images analysed", s["total_samples"]), ("images failed", s["failed"]),
            ("errors", f"{s['total_errors']} ({pct(s['error_rate'])})"), ("accuracy", pct(s["accuracy"])),
            ("balanced accuracy", pct(s["balanced_accuracy"])),
            *[(f"top-{k} accuracy", pct(v)) for k, v in s["topk_accuracy"].items() if k != "1"],
            ("mean confidence, errors", pct(s["mean_confidence_errors"])),
            ("mean confidence, correct", pct(s["mean_confidence_correct"])),
            (f"ECE ({cal['n_bins']} equal-width bins)", cal["ece"]), ("MCE", cal["mce"]),
            ("likely label errors (confident learning)", s["likely_label_errors"]["count"])]
    return table(["metric", "value"], rows)


def _provenance(p: Mapping[str, Any]) -> str:
    model = p["model"]
    images = p["images"]
    rows = [("created", p["created"]), ("model", f"{model.get('name')} v{model.get('version')}, "
                                                 f"{model.get('arch')}, layer {model.get('layer')}"),
            ("map method", p["method"]), ("data folder", p["data_dir"]), ("mask folder", p.get("masks_dir") or "none"),
            ("lesion-mask folder", p.get("lesion_masks_dir") or "none"),
            *([("clinical CSV", f"{p['clinical_csv']['csv']} (sha256 {p['clinical_csv']['sha256'][:16]}…)")]
              if p.get("clinical_csv") else []),
            ("server(s)", ", ".join(p["servers"])), ("command", p["command"]),
            ("images", f"{images['files']} files listed, {images['analysed']} analysed, {images['failed']} failed"),
            ("file list sha256", p["file_list_sha256"]), ("camserve", p["camserve_version"])]
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="prov">{body}</table>'



def _binary(b: Mapping[str, Any]) -> str:
    rows = [("positive class", b["positive"]), ("operating threshold", b["rule"]),
            ("sensitivity (recall)", f"{pct(b['sensitivity'])} ({b['tp']} of {b['tp'] + b['fn']})"),
            ("specificity", f"{pct(b['specificity'])} ({b['tn']} of {b['tn'] + b['fp']})"),
            ("PPV (precision)", f"{pct(b['ppv'])} ({b['tp']} of {b['tp'] + b['fp']})"),
            ("NPV", f"{pct(b['npv'])} ({b['tn']} of {b['tn'] + b['fn']})"),
            ("ROC AUC", b["roc_auc"]), ("average precision (PR AUC)", b["average_precision"])]
    return "<h2>Binary test</h2>" + table(["metric", "value"], rows)


def _one_vs_rest(o: Mapping[str, Any]) -> str:
    rows = [(c, "n/a" if a is None else a) for c, a in o["roc_auc"].items()]
    rows.append(("macro average", "n/a" if o["macro_roc_auc"] is None else o["macro_roc_auc"]))
    return "<h2>One-vs-rest ROC AUC</h2>" + table(["class", "ROC AUC"], rows)


def _groups(g: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for name, v in [*(([("all", g["all"])]) if "all" in g else []), *g["by_class"].items(),
                    ("correct", g["correct"]), ("wrong", g["wrong"])]:
        rows.append((name, v["n"], v.get("mean"), v.get("median"), v.get("q25"), v.get("q75")))
    return rows


def _localisation(loc: Mapping[str, Any]) -> str:
    game = loc["pointing_game"]
    rows = [(name, v["n"], v["hits"], pct(v["rate"])) for name, v in
            [("all", game["all"]), *game["by_class"].items(), ("correct", game["correct"]), ("wrong", game["wrong"])]]
    return (f"<h2>Localisation against the lesion masks</h2><p>{esc(loc['reading'])}</p>"
            f"<h3>Pointing game (peak of the predicted class's map in the lesion, dilated by {loc['dilate_px']} px)"
            "</h3>" + table(["group", "lesion images", "hits", "rate"], rows)
            + "<h3>Share of the map inside the lesion</h3>"
            + table(["group", "n", "mean", "median", "q25", "q75"], _groups(loc["lesion_focus"]))
            + f'<p class="muted">lesion masks: {esc(_mask_counts(loc["masks"]))}</p>')


def _mask_counts(counts: Mapping[str, int]) -> str:
    words = {"ok": "with a lesion", "empty": "empty (no lesion: not scored)", "missing": "missing",
             "unreadable": "unreadable"}
    return "; ".join(f"{n} {words.get(k, k)}" for k, n in counts.items())


def _faithfulness(f: Mapping[str, Any]) -> str:
    rows = [(name, g["all"]["n"], g["all"].get("mean"), g["correct"].get("mean"), g["wrong"].get("mean"))
            for name, g in ((k, f[k]) for k in ("average_drop", "increase", "deletion_drop"))]
    return (f"<h2>Faithfulness of the {esc(f['method'])} maps</h2><p>{esc(f['meaning'])}.</p>"
            + table(["score", "n", "mean", "mean when right", "mean when wrong"], rows))


def render(summary: Mapping[str, Any], confusion: Mapping[str, Any], figures: Mapping[str, Path],
           error_cards: Sequence[Card], failures: Sequence[Sequence[str]], provenance: Mapping[str, Any],
           thumbs: Sequence[Thumb] = ()) -> str:
    """The whole page as a string."""
    classes = confusion["classes"]
    per = summary["per_class"]
    parts = [f"<h1>Error analysis: {esc(summary['model'].get('name'))}</h1>",
             '<p class="lead">' + " ".join(esc(s) for s in summary["headline"]) + "</p>",
             "<h2>Provenance</h2>", _provenance(provenance), "<h2>Overview</h2>", _overview(summary)]
    if summary.get("binary"):
        parts.append(_binary(summary["binary"]))
    if summary.get("one_vs_rest"):
        parts.append(_one_vs_rest(summary["one_vs_rest"]))
    parts += ["<h2>Per-class metrics</h2>",
              table(["class", "precision", "recall", "F1", "support"],
                    [(c, per[c]["precision"], per[c]["recall"], per[c]["f1"], per[c]["support"]) for c in classes]
                    + [("macro avg", *summary["macro_avg"].values(), ""),
                       ("weighted avg", *summary["weighted_avg"].values(), "")]),
              "<h2>Confusion matrix (rows: true, columns: predicted)</h2>",
              confusion_browser(classes, confusion["matrix"], thumbs),
              "<h3>Most frequent confusions</h3>",
              table(["true", "predicted", "count"], [(p["true"], p["pred"], p["count"]) for p in confusion["pairs"]])]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [f'<h3>{esc(name.replace("_", " "))}</h3>{img(path.read_bytes(), name, "fig")}'
                  for name, path in figures.items()]
    else:
        parts.append('<p class="muted">Figures not drawn: run with --visualize.</p>')
    outlines = [text for key, text in (("masks_dir", '<span class="legend-roi">white = mask</span>'),
                                       ("lesion_masks_dir", '<span class="legend-lesion">magenta = lesion</span>'))
                if provenance.get(key)]
    parts += ["<h2>Most confident errors</h2>",
              '<p class="muted">Each card: the image, the map of the predicted class and the map of the true class '
              "(each map on its own colour scale: cam_max is its raw maximum)"
              + (f"; outlines: {', '.join(outlines)}" if outlines else "") + ".</p>", cards(error_cards)]
    if summary.get("localisation"):
        parts.append(_localisation(summary["localisation"]))
    focus = summary.get("focus_score")
    if focus:
        parts += ["<h2>Focus score (share of the map inside the mask)</h2>",
                  table(["group", "n", "mean", "median", "q25", "q75"], _groups(focus))]
    if summary.get("faithfulness"):
        parts.append(_faithfulness(summary["faithfulness"]))
    issues = summary["likely_label_errors"]
    parts += ["<h2>Likely label errors</h2>", f"<p><b>{esc(summary['label_quality']['note'])}</b></p>",
              f"<p>{esc(issues['method'])}. Label-quality score of every image: "
              f"{esc(summary['label_quality']['score'])}.</p>",
              table(["path", "given", "suggested", "p(given)", "p(suggested)", "margin"],
                    [(r["path"], r["given"], r["suggested"], r["p_given"], r["p_suggested"], r["margin"])
                     for r in issues["top"]])]
    parts += [f"<h2>Failed images ({len(failures)})</h2>",
              table(["path", "stage", "reason"], failures) if failures else '<p class="muted">None.</p>']
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Error analysis: '
            f"{esc(summary['model'].get('name'))}</title><meta name=\"viewport\" content=\"width=device-width\">"
            f"<style>{CSS}</style></head><body>{''.join(parts)}<script>{BROWSE_JS}</script></body></html>\n")
