"""The report's first lines: three to five sentences computed from the summary, nothing typed by hand.

Every number in them is a value of ``error_summary.json`` (or a count behind it), so the headline and
the CSVs cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CALIBRATION_SLACK = 0.02  # |mean confidence - accuracy| under this reads as calibrated on average


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _overall(s: Mapping[str, Any]) -> str:
    n, errors = s["total_samples"], s["total_errors"]
    text = (f"{s['model'].get('name')} got {n - errors} of {n} images right ({_pct(s['accuracy'])}; "
            f"balanced accuracy {_pct(s['balanced_accuracy'])})")
    if s["failed"]:
        text += f", and {s['failed']} files could not be analysed (failures.csv)"
    return text + "."


def _confusion(s: Mapping[str, Any]) -> str | None:
    pairs, errors = s["top_confusion_pairs"], s["total_errors"]
    if not pairs:
        return None
    top = pairs[0]
    text = (f"The largest confusion is {top['true']}→{top['pred']}: {top['count']} of {errors} errors "
            f"({_pct(top['count'] / errors)})")
    per = s["per_class"]
    present = [c for c in per if per[c]["support"]]
    if len(present) > 2:  # with two classes the binary sentence says it
        worst = min(present, key=lambda c: (per[c]["recall"], per[c]["f1"], c))
        missed = s["errors_by_true_class"][worst]
        text += (f"; the weakest class is {worst} (recall {_pct(per[worst]['recall'])}, {missed} of "
                 f"{per[worst]['support']} missed)")
    return text + "."


def _binary(s: Mapping[str, Any]) -> str | None:
    b = s.get("binary")
    if not b:
        return None
    auc = "n/a" if b["roc_auc"] is None else f"{b['roc_auc']:.3f}"
    return (f"As a test for {b['positive']} at the served threshold (p > {b['threshold']:g}): sensitivity "
            f"{_pct(b['sensitivity'])} ({b['tp']} of {b['tp'] + b['fn']}), specificity {_pct(b['specificity'])} "
            f"({b['tn']} of {b['tn'] + b['fp']}), ROC AUC {auc}.")


def _calibration(s: Mapping[str, Any]) -> str | None:
    cal, n = s["calibration"], s["total_samples"]
    if cal["ece"] is None or not n:
        return None
    mean_conf = sum(b["count"] * b["confidence"] for b in cal["bins"] if b["count"]) / n
    gap = mean_conf - s["accuracy"]
    kind = ("over-confident" if gap > CALIBRATION_SLACK else "under-confident" if gap < -CALIBRATION_SLACK
            else "calibrated on average")
    text = (f"Calibration: ECE {cal['ece']:.3f} over {cal['n_bins']} bins; the model is {kind} (mean confidence "
            f"{_pct(mean_conf)} for {_pct(s['accuracy'])} accuracy)")
    if s["mean_confidence_errors"] is not None:
        text += f", and its errors average {_pct(s['mean_confidence_errors'])} confidence"
    return text + "."


def _maps(s: Mapping[str, Any]) -> str | None:
    loc, focus, faith = s.get("localisation"), s.get("focus_score"), s.get("faithfulness")
    if loc and loc["pointing_game"]["all"]["n"]:
        return str(loc["reading"])
    if focus:
        right, wrong = focus["correct"], focus["wrong"]
        both = [f"{g['median']:.2f} when {name}" for name, g in (("right", right), ("wrong", wrong)) if g["n"]]
        return f"The maps put a median share of their weight inside the mask of {', '.join(both)}."
    if faith:
        drop = faith["average_drop"]["all"]
        return (f"Faithfulness ({faith['method']}): keeping only what the map shows loses a median "
                f"{_pct(drop['median'])} of the confidence (average drop; lower is better).")
    return None


def headline(summary: Mapping[str, Any]) -> list[str]:
    """Three to five sentences: overall result, largest confusion and weakest class, the binary test
    figures, calibration, and where the maps look."""
    parts = [_overall(summary), _confusion(summary), _binary(summary), _calibration(summary), _maps(summary)]
    return [p for p in parts if p][:5]
