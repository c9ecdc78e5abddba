"""PNG figures of the report (matplotlib, Agg canvas: no display, no pyplot global state).

Every figure is drawn at the report's full width (:data:`WIDTH` inches at :data:`DPI`, about 1300 px)
with constrained layout, so titles and tick labels are never clipped; legends sit outside the axes
(or in a corner the data cannot reach), so they never cover bars, labels or curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from camserve.analysis import metrics as M
from camserve.analysis.results import Analysis

DPI = 110
WIDTH = 12.0  # inches: ~1320 px, the report's page width
MIN_BIN_COUNT = 10  # reliability bins with fewer images are marked as unreliable


def _figure(height: float, width: float = WIDTH) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _legend_right(ax: Axes) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small", frameon=False)


def error_distribution(path: Path, an: Analysis) -> Path:
    """Errors per true class, split by predicted class, with each class's error rate above its bar."""
    C = len(an.classes)
    cm = M.confusion_matrix(an.y_true, an.y_pred, C)
    fig = _figure(4.5)
    ax = fig.add_subplot()
    x = np.arange(C)
    bottom = np.zeros(C)
    for p in range(C):
        counts = np.array([cm[t, p] if t != p else 0 for t in range(C)], dtype=float)
        if counts.any():
            ax.bar(x, counts, bottom=bottom, width=0.6, label=f"predicted {an.classes[p]}")
            bottom += counts
    support = cm.sum(axis=1)
    for t in range(C):
        rate = bottom[t] / support[t] if support[t] else 0.0
        ax.annotate(f"{int(bottom[t])}/{support[t]} ({rate:.0%})", (t, bottom[t]), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom")
    ax.set_xticks(x, an.classes, rotation=20 if C > 4 else 0, ha="right" if C > 4 else "center")
    ax.set_xlabel("true class")
    ax.set_ylabel("misclassified images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Errors by true class (label: errors / images of the class)")
    ax.set_ylim(0, max(1.0, bottom.max() * 1.25))
    if bottom.any():
        _legend_right(ax)
    return _save(fig, path)


def confidence_histogram(path: Path, an: Analysis) -> Path:
    """Top-1 confidence of correct and of wrong predictions in two panels, each on its own count scale
    (a few errors stay visible next to thousands of correct answers)."""
    fig = _figure(5.0)
    top, low = fig.subplots(2, 1, sharex=True)
    bins = np.linspace(0, 1, 21)
    for ax, keep, colour, name in ((top, an.correct, "tab:green", "correct"), (low, ~an.correct, "tab:red", "wrong")):
        ax.hist(an.confidence[keep], bins=bins, color=colour, edgecolor="white")
        ax.set_ylabel(f"{name}\n(n={int(keep.sum())})")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_title("Confidence of correct (top) and wrong (bottom) predictions; each panel has its own count scale")
    low.set_xlabel("confidence (top-1 probability)")
    low.set_xlim(0, 1)
    return _save(fig, path)


def confusion_matrix(path: Path, an: Analysis) -> Path:
    """Raw counts and row-normalised (recall) confusion matrices side by side."""
    C = len(an.classes)
    cm = M.confusion_matrix(an.y_true, an.y_pred, C)
    fig = _figure(max(4.5, 0.7 * C + 2.5))
    for ax, mat, title, fmt in zip(fig.subplots(1, 2), (cm, M.normalise_rows(cm)),
                                   ("counts", "row-normalised (recall)"), ("{:d}", "{:.2f}"), strict=True):
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(1, mat.max()) if mat.dtype.kind == "i" else 1)
        for t in range(C):
            for p in range(C):
                val = mat[t, p]
                ax.text(p, t, fmt.format(val), ha="center", va="center",
                        color="white" if val > 0.6 * (mat.max() or 1) else "black")
        ax.set_xticks(range(C), an.classes, rotation=30, ha="right")
        ax.set_yticks(range(C), an.classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"Confusion matrix, {title}")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def reliability_diagram(path: Path, an: Analysis) -> Path:
    """Accuracy vs mean confidence per bin with each bin's count; bins with fewer than
    :data:`MIN_BIN_COUNT` images are drawn hatched and grey (their accuracy is noise)."""
    cal = M.calibration(an.confidence, an.correct)
    fig = _figure(6.5)
    ax, ax_n = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    width = 1.0 / cal.n_bins
    left = cal.edges[:-1]
    solid = cal.counts >= MIN_BIN_COUNT
    sparse = (cal.counts > 0) & ~solid
    ax.bar(left[solid], cal.accuracy[solid], width=width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(left[sparse], cal.accuracy[sparse], width=width, align="edge", edgecolor="gray", color="lightgray",
           hatch="..", label=f"accuracy, bin of < {MIN_BIN_COUNT} images")
    filled = cal.counts > 0
    ax.bar(left[filled], cal.confidence[filled] - cal.accuracy[filled], bottom=cal.accuracy[filled], width=width,
           align="edge", fill=False, edgecolor="tab:red", hatch="//", linewidth=0.8,
           label="gap to mean confidence")  # unfilled: over or under the accuracy bar, colours never mix
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ece = "n/a" if cal.ece is None else f"{cal.ece:.3f}"
    ax.set_title(f"Reliability diagram: ECE = {ece} ({cal.n_bins} equal-width bins)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    _legend_right(ax)
    ax_n.bar(left, cal.counts, width=width, align="edge", edgecolor="black",
             color=["tab:blue" if s else "lightgray" for s in solid])
    for b in np.flatnonzero(filled):
        ax_n.annotate(str(int(cal.counts[b])), (left[b] + width / 2, cal.counts[b]), xytext=(0, 2),
                      textcoords="offset points", ha="center", va="bottom", fontsize="small")
    ax_n.set_ylim(0, max(1, int(cal.counts.max())) * 1.3)
    ax_n.set_xlabel("confidence (top-1 probability)")
    ax_n.set_ylabel("images per bin")
    ax_n.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def focus_scores(path: Path, an: Analysis) -> Path:
    """Focus-score distributions by true class and by correct vs wrong (box plots with the points)."""
    has = np.isfinite(an.focus)
    groups = [(c, an.focus[has & (an.y_true == k)]) for k, c in enumerate(an.classes)]
    groups += [("correct", an.focus[has & an.correct]), ("wrong", an.focus[has & ~an.correct])]
    fig = _figure(4.5)
    ax = fig.add_subplot()
    for k, (_, values) in enumerate(groups):
        if len(values):
            ax.boxplot(values, positions=[k], widths=0.5, showfliers=False)
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
            ax.plot(k + jitter, values, ".", alpha=0.5, color="tab:red" if k == len(groups) - 1 else "tab:blue")
    ax.axvline(len(an.classes) - 0.5, color="gray", lw=0.8)
    ax.set_xticks(range(len(groups)), [f"{name}\n(n={len(v)})" for name, v in groups])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("focus score\n(map share inside the mask)")
    ax.set_title("Is the model looking inside the mask? By true class | by outcome")
    return _save(fig, path)


def roc_pr(path: Path, an: Analysis) -> Path:
    """ROC and precision-recall curves of a two-class model, with the served operating point."""
    bm = M.binary_metrics(an.probs, an.y_true, an.y_pred, positive=1)
    pos = an.classes[1]
    fig = _figure(5.5)
    roc_ax, pr_ax = fig.subplots(1, 2)
    auc = "n/a" if bm.roc.area is None else f"{bm.roc.area:.3f}"
    roc_ax.plot(bm.roc.x, bm.roc.y, label=f"ROC, AUC = {auc}")
    roc_ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="chance")
    if bm.sensitivity is not None and bm.specificity is not None:
        roc_ax.plot(1 - bm.specificity, bm.sensitivity, "o", color="tab:red",
                    label=f"served threshold p > {bm.threshold:g}")
    roc_ax.set_xlabel("false positive rate (1 - specificity)")
    roc_ax.set_ylabel("true positive rate (sensitivity)")
    roc_ax.set_title(f"ROC, {pos} as positive")
    roc_ax.legend(loc="lower right", fontsize="small")
    ap = "n/a" if bm.pr.area is None else f"{bm.pr.area:.3f}"
    # steps-pre: over (R_{n-1}, R_n] the curve is at P_n, so the area under the steps is the average precision
    pr_ax.plot(bm.pr.x, bm.pr.y, drawstyle="steps-pre", label=f"PR, average precision = {ap}")
    prevalence = float(np.mean(an.y_true == 1)) if an.n else 0.0
    pr_ax.axhline(prevalence, color="k", ls=":", lw=0.8, label=f"prevalence {prevalence:.2f}")
    if bm.sensitivity is not None and bm.ppv is not None:
        pr_ax.plot(bm.sensitivity, bm.ppv, "o", color="tab:red", label=f"served threshold p > {bm.threshold:g}")
    pr_ax.set_xlabel("recall (sensitivity)")
    pr_ax.set_ylabel("precision (PPV)")
    pr_ax.set_title(f"Precision-recall, {pos} as positive")
    pr_ax.legend(loc="lower left", fontsize="small")
    _unit_square(roc_ax, pr_ax)
    return _save(fig, path)


def _unit_square(*axes: Axes) -> None:
    """Rate-against-rate axes: both from 0 to 1, square."""
    for ax in axes:
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.05)
        ax.set_aspect("equal")


def roc_one_vs_rest(path: Path, an: Analysis) -> Path:
    """One-vs-rest ROC and precision-recall curves of every class (score: the class's probability)."""
    fig = _figure(5.5)
    roc_ax, pr_ax = fig.subplots(1, 2)
    for k, c in enumerate(an.classes):
        y = (an.y_true == k).astype(np.int64)
        roc, pr = M.roc_curve(y, an.probs[:, k]), M.pr_curve(y, an.probs[:, k])
        if roc.area is not None:
            line = roc_ax.plot(roc.x, roc.y, label=f"{c}, AUC = {roc.area:.3f}")[0]
            pr_ax.plot(pr.x, pr.y, drawstyle="steps-pre", color=line.get_color(),
                       label=f"{c}, average precision = {pr.area:.3f}")
    roc_ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="chance")
    roc_ax.set_xlabel("false positive rate")
    roc_ax.set_ylabel("true positive rate")
    roc_ax.set_title("One-vs-rest ROC per class")
    roc_ax.legend(loc="lower right", fontsize="small")
    pr_ax.set_xlabel("recall")
    pr_ax.set_ylabel("precision")
    pr_ax.set_title("One-vs-rest precision-recall per class")
    pr_ax.legend(loc="lower left", fontsize="small")
    _unit_square(roc_ax, pr_ax)
    return _save(fig, path)


def write_figures(figdir: Path, an: Analysis) -> dict[str, Path]:
    """Every figure that applies: ROC/PR for two classes, one-vs-rest ROC for more, the focus-score
    figure only when there are scores."""
    makers = [("error_distribution", error_distribution), ("confidence_histogram", confidence_histogram),
              ("confusion_matrix", confusion_matrix), ("reliability_diagram", reliability_diagram)]
    if len(an.classes) == 2:
        makers.append(("roc_pr", roc_pr))
    elif len(an.classes) > 2:
        makers.append(("roc_one_vs_rest", roc_one_vs_rest))
    if np.isfinite(an.focus).any():
        makers.append(("focus_scores", focus_scores))
    return {name: fn(figdir / f"{name}.png", an) for name, fn in makers}
