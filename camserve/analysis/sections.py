"""The parts of ``error_summary.json`` that apply to some runs only: binary metrics, one-vs-rest AUC,
label quality, localisation against lesion masks and faithfulness. Each returns ``None`` when it does
not apply, so the summary leaves it out."""

from __future__ import annotations

from typing import Any

import numpy as np

from camserve.analysis import metrics as M
from camserve.analysis.results import FAITHFULNESS, Analysis, grouped, r6


def binary(an: Analysis) -> dict[str, Any] | None:
    """Sensitivity, specificity, PPV, NPV at the served operating point and the ROC / PR areas of a
    two-class model; the second class is the positive one (e.g. ``malignant`` of benign/malignant)."""
    if len(an.classes) != 2:
        return None
    bm = M.binary_metrics(an.probs, an.y_true, an.y_pred, positive=1)
    return {"positive": an.classes[1], "negative": an.classes[0], "threshold": bm.threshold,
            "rule": f"predicted {an.classes[1]} when p({an.classes[1]}) > {bm.threshold} (the served prediction)",
            "tp": bm.tp, "fp": bm.fp, "tn": bm.tn, "fn": bm.fn,
            "sensitivity": r6(bm.sensitivity), "specificity": r6(bm.specificity), "ppv": r6(bm.ppv),
            "npv": r6(bm.npv), "roc_auc": bm.roc.area, "average_precision": bm.pr.area}  # areas unrounded


def one_vs_rest(an: Analysis) -> dict[str, Any] | None:
    """ROC AUC of each class against the rest (models with more than two classes)."""
    if len(an.classes) <= 2:
        return None
    aucs = M.one_vs_rest_auc(an.probs, an.y_true)
    defined = [a for a in aucs if a is not None]
    return {"roc_auc": dict(zip(an.classes, aucs, strict=True)),  # unrounded
            "macro_roc_auc": float(np.mean(defined)) if defined else None}


def label_quality(an: Analysis, issues: M.LabelIssues) -> dict[str, Any]:
    """What the confident-learning flags amount to, said plainly: are they simply the most confident
    errors (then they add nothing to sorting the errors by confidence)?"""
    flagged = [int(i) for i in issues.ranked]
    errors = an.errors_by_confidence()
    rank = {i: r + 1 for r, i in enumerate(errors)}
    misclassified = sum(i in rank for i in flagged)
    same = bool(flagged) and set(flagged) == set(errors[:len(flagged)])
    plain = ("from one model's probabilities, the flags add nothing to sorting the errors by confidence. "
             "Look at them before relabelling anything.")
    if not flagged:
        note = "No image is flagged as a likely label error."
    elif same and len(flagged) == 1:
        note = f"The 1 flagged image is misclassified, and it is the most confident error: {plain}"
    elif same:
        note = (f"All {len(flagged)} flagged images are misclassified, and they are exactly the {len(flagged)} most "
                f"confident errors: {plain}")
    else:
        ranks = sorted(rank[i] for i in flagged if i in rank)
        shown = ", ".join(map(str, ranks[:10])) + (", ..." if len(ranks) > 10 else "")
        note = (f"{misclassified} of the {len(flagged)} flagged images are misclassified"
                + (f" ({'rank' if len(ranks) == 1 else 'ranks'} {shown} of the {len(errors)} errors by confidence)"
                   if ranks else "") + ".")
    return {"score": "self-confidence p(given label) per image (predictions.csv, column label_quality); "
                     "low = likely mislabelled",
            "flagged": len(flagged), "flagged_misclassified": misclassified,
            "flagged_are_the_most_confident_errors": same, "note": note}


def _rates(an: Analysis, hits: np.ndarray) -> dict[str, Any]:
    def one(values: np.ndarray) -> dict[str, Any]:
        played = values[np.isfinite(values)]
        n, k = int(len(played)), int(played.sum())
        return {"n": n, "hits": k, "rate": r6(k / n) if n else None}
    return {"all": one(hits), "by_class": {c: one(hits[an.y_true == k]) for k, c in enumerate(an.classes)},
            "correct": one(hits[an.correct]), "wrong": one(hits[~an.correct])}


def localisation(an: Analysis, dilate_px: int) -> dict[str, Any] | None:
    """Pointing game and focus in the lesion masks, by class and by outcome, with one sentence."""
    if not an.lesion_status:
        return None
    game = _rates(an, an.hit)
    return {"dilate_px": dilate_px, "masks": dict(sorted(an.lesion_status.items())), "pointing_game": game,
            "lesion_focus": grouped(an, an.lesion_focus, overall=True), "reading": reading(game, dilate_px)}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def reading(game: dict[str, Any], dilate_px: int) -> str:
    """One sentence reading the pointing-game numbers."""
    right, wrong = game["correct"], game["wrong"]
    if not game["all"]["n"]:
        return "No image has a lesion in its mask: the pointing game was not played."
    rate = right["rate"] if right["n"] else game["all"]["rate"]
    verdict = ("mostly on the lesion" if rate >= 0.85 else "often off the lesion" if rate >= 0.5
               else "mostly off the lesion")
    text = (f"When the model is right, its map's peak is {verdict}: {_pct(right['rate'])} "
            f"({right['hits']} of {right['n']} lesion images, mask dilated by {dilate_px} px)")
    if wrong["n"]:
        text += f"; when it is wrong, {_pct(wrong['rate'])} ({wrong['hits']} of {wrong['n']})"
    return text + "."


def faithfulness(an: Analysis, method: str) -> dict[str, Any] | None:
    """Per-request faithfulness averaged by class and by outcome (when it was asked for)."""
    if not np.isfinite(an.faithfulness).any():
        return None
    return {"method": method, "n": int(np.isfinite(an.faithfulness[:, 0]).sum()),
            **{name: grouped(an, an.faithfulness[:, k], overall=True) for k, name in enumerate(FAITHFULNESS)},
            "meaning": "average_drop: relative confidence lost when the image is multiplied by its map (lower is "
                       "better); increase: share of images whose confidence rises so (higher is better); "
                       "deletion_drop: relative confidence lost when the map's top 20% is removed (higher is "
                       "better)"}
