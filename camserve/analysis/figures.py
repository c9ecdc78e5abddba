"""PNG figures (matplotlib, Agg canvas: no display, no pyplot global state) and image panels (PIL)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from camserve.analysis import metrics as M
from camserve.analysis.report import Analysis

DPI = 110


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def error_distribution(path: Path, an: Analysis) -> Path:
    """Errors per true class, split by predicted class, with each class's error rate."""
    C = len(an.classes)
    cm = M.confusion_matrix(an.y_true, an.y_pred, C)
    fig = _figure(max(5.0, 1.2 * C + 2), 4)
    ax = fig.add_subplot()
    x = np.arange(C)
    bottom = np.zeros(C)
    for p in range(C):
        counts = np.array([cm[t, p] if t != p else 0 for t in range(C)], dtype=float)
        if counts.any():
            ax.bar(x, counts, bottom=bottom, label=f"predicted {an.classes[p]}")
            bottom += counts
    support = cm.sum(axis=1)
    for t in range(C):
        rate = bottom[t] / support[t] if support[t] else 0.0
        ax.annotate(f"{int(bottom[t])}/{support[t]} ({rate:.0%})", (t, bottom[t]), ha="center", va="bottom")
    ax.set_xticks(x, an.classes, rotation=20)
    ax.set_xlabel("true class")
    ax.set_ylabel("misclassified images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Errors by true class")
    ax.set_ylim(0, max(1.0, bottom.max() * 1.2))
    if bottom.any():
        ax.legend(fontsize="small")
    return _save(fig, path)


def confidence_histogram(path: Path, an: Analysis) -> Path:
    """Top-1 confidence of correct vs wrong predictions."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    bins = np.linspace(0, 1, 21)
    ax.hist([an.confidence[an.correct], an.confidence[~an.correct]], bins=bins, color=["tab:green", "tab:red"],
            label=[f"correct (n={int(an.correct.sum())})", f"wrong (n={int((~an.correct).sum())})"])
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Confidence of correct and wrong predictions")
    ax.legend()
    return _save(fig, path)


def confusion_matrix(path: Path, an: Analysis) -> Path:
    """Raw counts and row-normalised (recall) confusion matrices side by side."""
    C = len(an.classes)
    cm = M.confusion_matrix(an.y_true, an.y_pred, C)
    side = max(4.0, 0.8 * C + 2)
    fig = _figure(2 * side, side)
    for ax, mat, title, fmt in zip(fig.subplots(1, 2), (cm, M.normalise_rows(cm)),
                                   ("counts", "row-normalised"), ("{:d}", "{:.2f}"), strict=True):
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
    """Accuracy vs mean confidence per bin, with the bin counts and the ECE."""
    cal = M.calibration(an.confidence, an.correct)
    fig = _figure(6, 6)
    ax, ax_n = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    width = 1.0 / cal.n_bins
    left = cal.edges[:-1]
    filled = cal.counts > 0
    ax.bar(left[filled], cal.accuracy[filled], width=width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(left[filled], cal.confidence[filled] - cal.accuracy[filled], bottom=cal.accuracy[filled], width=width,
           align="edge", color="tab:red", alpha=0.3, hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ece = "n/a" if cal.ece is None else f"{cal.ece:.3f}"
    ax.set_title(f"Reliability diagram: ECE = {ece} ({cal.n_bins} equal-width bins)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize="small")
    ax_n.bar(left, cal.counts, width=width, align="edge", edgecolor="black")
    ax_n.set_xlabel("confidence (top-1 probability)")
    ax_n.set_ylabel("images")
    ax_n.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def focus_scores(path: Path, an: Analysis) -> Path:
    """Focus-score distributions by true class and by correct vs wrong (box plots with the points)."""
    has = np.isfinite(an.focus)
    groups = [(c, an.focus[has & (an.y_true == k)]) for k, c in enumerate(an.classes)]
    groups += [("correct", an.focus[has & an.correct]), ("wrong", an.focus[has & ~an.correct])]
    fig = _figure(max(6.0, 1.1 * len(groups) + 2), 4)
    ax = fig.add_subplot()
    for k, (_, values) in enumerate(groups):
        if len(values):
            ax.boxplot(values, positions=[k], widths=0.5, showfliers=False)
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
            ax.plot(k + jitter, values, ".", alpha=0.5, color="tab:red" if k == len(groups) - 1 else "tab:blue")
    ax.axvline(len(an.classes) - 0.5, color="gray", lw=0.8)
    ax.set_xticks(range(len(groups)), [f"{name}\n(n={len(v)})" for name, v in groups])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("focus score (heatmap share inside the mask)")
    ax.set_title("Is the model looking inside the mask? By true class | by outcome")
    return _save(fig, path)


def write_figures(figdir: Path, an: Analysis) -> dict[str, Path]:
    """Every figure that applies; the focus-score figure only when there are scores."""
    out = {name: fn(figdir / f"{name}.png", an) for name, fn in (
        ("error_distribution", error_distribution), ("confidence_histogram", confidence_histogram),
        ("confusion_matrix", confusion_matrix), ("reliability_diagram", reliability_diagram))}
    if np.isfinite(an.focus).any():
        out["focus_scores"] = focus_scores(figdir / "focus_scores.png", an)
    return out


def thumbnail(image: Image.Image, max_side: int = 192) -> Image.Image:
    """A copy at most ``max_side`` pixels a side (aspect ratio kept)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((max_side, max_side), Image.BILINEAR)
    return thumb


def gradcam_panel(original: Image.Image, overlay: Image.Image, caption: str, min_side: int = 224) -> Image.Image:
    """Original and Grad-CAM overlay side by side under a caption; small images are enlarged with
    nearest-neighbour sampling (pixels stay visible, nothing is smoothed in)."""
    scale = max(1, -(-min_side // max(overlay.size)))
    size = (overlay.width * scale, overlay.height * scale)
    shown = original.convert("RGB").resize(overlay.size, Image.BILINEAR).resize(size, Image.NEAREST)
    font = ImageFont.load_default()
    band = 22
    width = max(2 * size[0] + 4, int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(caption, font=font)) + 8)
    panel = Image.new("RGB", (width, size[1] + band), "white")
    panel.paste(shown, (0, band))
    panel.paste(overlay.convert("RGB").resize(size, Image.NEAREST), (size[0] + 4, band))
    ImageDraw.Draw(panel).text((4, 5), caption, fill="black", font=font)
    return panel


def panel_caption(true: str, pred: str, confidence: float, extra: Sequence[str] = ()) -> str:
    return "  ".join([f"true {true} -> predicted {pred} ({confidence:.2f})", *extra])
