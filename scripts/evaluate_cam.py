"""Score a served model's Grad-CAM against the phantoms' ground-truth masks, through the HTTP endpoint.

    python scripts/evaluate_cam.py --data data/phantoms [--url URL] [--model chest_phantom]
        [--token-file key_file.json] [--split test] [--dilate-px 4] [--concurrency 8] [--out JSON]

Every image of the split is sent to ``POST /predictions/MODEL`` with its lung mask (``mask=``) and its
true class (``label=``), so the server itself reports the prediction and ``focus_score``: the share of
the upsampled map's energy inside the lungs. On correctly classified images of the lesion classes
(``--lesion-classes``) the script also plays the pointing game: the peak of the response's ``cam``
(feature-map resolution), upsampled bilinearly to the image with ``camserve.cam.upsample``, must lie in
the lesion mask dilated by ``--dilate-px`` pixels (a Euclidean disc). A map with no positive evidence
counts as a miss and as focus 0, so neither figure is ever flattered. Failed requests are listed.

The issue's bars (test split): accuracy >= 0.90 and < 1.00; pointing-game hit rate >= 0.85 and median
focus score >= 0.70, both on correctly classified lesion-class images. ``--check`` exits 1 when one
is missed. Prints the summary as JSON on stdout and a short human summary on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python scripts/evaluate_cam.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve.cam import upsample  # noqa: E402
from camserve.client import DEFAULT_URL, Client  # noqa: E402
from camserve.errors import CamserveError  # noqa: E402
from scripts.cli import class_list, non_negative_int, positive_int  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
BARS = {"accuracy_min": 0.90, "accuracy_max_exclusive": 1.0, "pointing_game_min": 0.85, "median_focus_min": 0.70}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="phantom folder (SPLIT/CLASS/*.png, masks/...)")
    p.add_argument("--url", default=DEFAULT_URL, help="TorchServe inference API")
    p.add_argument("--model", default="chest_phantom", help="served model name")
    p.add_argument("--token-file", type=Path, default=Path("key_file.json"), help="TorchServe's key_file.json")
    p.add_argument("--split", default="test", help="split folder to evaluate")
    p.add_argument("--dilate-px", type=non_negative_int, default=4,
                   help="lesion mask dilation (Euclidean disc radius, image pixels) for the pointing game")
    p.add_argument("--lesion-classes", type=class_list, default=["COVID", "Viral_Pneumonia"],
                   help="classes whose images have lesions (pointing game, focus bar)")
    p.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight (lets TorchServe batch)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--out", type=Path, help="also write the summary and every image's record here (JSON)")
    p.add_argument("--check", action="store_true", help="exit 1 when a bar of the issue is missed")
    return p


# ---- pure functions ---------------------------------------------------------------------------------

def disc(radius: int) -> np.ndarray:
    """Boolean ``(2r+1, 2r+1)`` Euclidean disc: offsets with ``dy**2 + dx**2 <= r**2``."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy**2 + xx**2 <= radius**2


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary dilation of ``mask`` by a disc of radius ``px`` (pure numpy; pixels outside count as False)."""
    mask = np.asarray(mask, dtype=bool)
    if px <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, px)
    out = np.zeros_like(mask)
    for dy, dx in np.argwhere(disc(px)):
        out |= padded[dy:dy + h, dx:dx + w]
    return out


def upsample_cam(cam: Sequence[Sequence[float]] | np.ndarray, height: int, width: int) -> np.ndarray:
    """A feature-map-resolution map, bilinearly upsampled to the image (the server's ``upsample``)."""
    return upsample(torch.as_tensor(np.asarray(cam, dtype=np.float32)), height, width).numpy()


def peak(cam_up: np.ndarray) -> tuple[int, int] | None:
    """``(row, col)`` of the map's maximum (first in row-major order), or ``None`` for an all-zero map."""
    if cam_up.size == 0 or not float(cam_up.max()) > 0.0:
        return None
    row, col = np.unravel_index(int(np.argmax(cam_up)), cam_up.shape)
    return int(row), int(col)


def pointing_game_hit(cam: Sequence[Sequence[float]] | np.ndarray, lesion_mask: np.ndarray, dilate_px: int) -> bool:
    """Whether the peak of ``cam``, upsampled to the mask's size, lies in the mask dilated by ``dilate_px``.

    Args:
        cam: Map at feature-map resolution, covering the whole image (no crop in preprocessing).
        lesion_mask: Boolean ``[H, W]`` mask at the image's resolution.
        dilate_px: Tolerance in image pixels.

    Returns:
        ``False`` for an all-zero map (no evidence points anywhere).
    """
    lesion_mask = np.asarray(lesion_mask, dtype=bool)
    where = peak(upsample_cam(cam, *lesion_mask.shape))
    return where is not None and bool(dilate(lesion_mask, dilate_px)[where])


def focus(cam: Sequence[Sequence[float]] | np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the upsampled map's energy inside ``mask`` (as the server's ``focus_score``); ``None`` if empty."""
    cam_up = upsample_cam(cam, *np.asarray(mask).shape)
    total = float(cam_up.sum())
    return None if total <= 0.0 else float(cam_up[np.asarray(mask, dtype=bool)].sum()) / total


@dataclass
class Record:
    """One image's outcome; ``hit`` is ``None`` where the pointing game does not apply."""

    path: str
    label: str
    prediction: str | None = None
    confidence: float | None = None
    correct: bool | None = None
    focus: float | None = None
    focus_local: float | None = None
    hit: bool | None = None
    error: str | None = None


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(records: Sequence[Record], lesion_classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, pointing game and focus figures, with counts, and whether each bar is met."""
    done = [r for r in records if r.error is None]
    labels = sorted({r.label for r in records})
    accuracy = sum(bool(r.correct) for r in done) / len(done) if done else None
    scored = [r for r in done if r.correct and r.label in lesion_classes]
    hits = sum(bool(r.hit) for r in scored)
    focus_scored = [0.0 if r.focus is None else r.focus for r in scored]  # no evidence counts as 0
    all_focus = [r.focus for r in done if r.focus is not None]
    pg = hits / len(scored) if scored else None
    med = median_or_none(focus_scored)
    return {
        "n_images": len(records), "n_failed": len(records) - len(done),
        "accuracy": accuracy,
        "per_class_accuracy": {c: _mean([bool(r.correct) for r in done if r.label == c]) for c in labels},
        "pointing_game": {"hits": hits, "n": len(scored), "rate": pg,
                          "per_class": {c: _mean([bool(r.hit) for r in scored if r.label == c])
                                        for c in lesion_classes}},
        "median_focus": med, "n_no_evidence": sum(r.focus is None for r in scored),
        "median_focus_all_images": median_or_none(all_focus),
        "focus_max_discrepancy": max((abs(r.focus - r.focus_local) for r in done
                                      if r.focus is not None and r.focus_local is not None), default=None),
        "bars": {
            "accuracy": accuracy is not None
            and BARS["accuracy_min"] <= accuracy < BARS["accuracy_max_exclusive"],
            "pointing_game": pg is not None and pg >= BARS["pointing_game_min"],
            "median_focus": med is not None and med >= BARS["median_focus_min"],
        },
    }


def _mean(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def human(summary: dict[str, Any], dilate_px: int) -> str:
    """A short summary for people."""
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    pg, bars = summary["pointing_game"], summary["bars"]
    ok = {True: "meets", False: "MISSES"}
    return "\n".join([
        f"{summary['n_images']} images, {summary['n_failed']} failed",
        f"accuracy {fmt(summary['accuracy'])} ({ok[bars['accuracy']]} >= 0.90 and < 1.00)",
        f"pointing game {fmt(pg['rate'])} = {pg['hits']}/{pg['n']} correctly classified lesion images, "
        f"lesion mask dilated by {dilate_px} px ({ok[bars['pointing_game']]} >= 0.85)",
        f"median focus score vs lung mask {fmt(summary['median_focus'])} on the same images "
        f"({ok[bars['median_focus']]} >= 0.70); {summary['n_no_evidence']} maps without evidence",
    ])


# ---- I/O --------------------------------------------------------------------------------------------

def list_split(root: Path, split: str) -> list[tuple[Path, str]]:
    """``(image path, class)`` for every image of ``root/split/CLASS/``, sorted."""
    base = root / split
    if not base.is_dir():
        raise FileNotFoundError(f"{base} does not exist: --data must be a phantom folder with a {split}/ split")
    return [(p, c.name) for c in sorted(base.iterdir()) if c.is_dir()
            for p in sorted(c.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def load_mask(path: Path) -> np.ndarray:
    """A 0/255 mask PNG as a boolean array."""
    return np.asarray(Image.open(path).convert("L")) > 127


class Evaluator:
    """Sends one image and scores the answer; one ``Client`` per thread."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.local = threading.local()

    def client(self) -> Client:
        if not hasattr(self.local, "client"):
            self.local.client = Client.from_key_file(self.args.token_file, self.args.url, timeout=self.args.timeout)
        return self.local.client

    def __call__(self, item: tuple[Path, str]) -> Record:
        path, label = item
        rel = path.relative_to(self.args.data)
        record = Record(str(rel), label)
        lungs_path = self.args.data / "masks" / "lungs" / rel
        try:
            resp = self.client().explain(self.args.model, path.read_bytes(), mask=lungs_path.read_bytes(), label=label)
        except (CamserveError, OSError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            return record
        record.prediction, record.confidence = resp.prediction.label, resp.prediction.confidence
        record.correct = resp.prediction.label == label
        exp = resp.explanation
        record.focus = None if exp is None else exp.focus_score
        if exp is not None:  # recomputed from the returned map: checks the served figure
            record.focus_local = focus(exp.cam, load_mask(lungs_path))
        if record.correct and label in self.args.lesion_classes:
            lesions = load_mask(self.args.data / "masks" / "lesions" / rel)
            record.hit = exp is not None and pointing_game_hit(exp.cam, lesions, self.args.dilate_px)
        return record


def evaluate(args: argparse.Namespace) -> tuple[dict[str, Any], list[Record]]:
    """Run every image of the split through the server; returns the summary and the records."""
    items = list_split(args.data, args.split)
    if not items:
        raise FileNotFoundError(f"no images under {args.data / args.split}")
    served = Client.from_key_file(args.token_file, args.url, timeout=args.timeout).describe(args.model).classes
    unknown = sorted({label for _, label in items} - set(served))
    if unknown:
        raise CamserveError(f"model {args.model!r} has classes {served}; the data has {unknown} too")
    with ThreadPoolExecutor(args.concurrency) as pool:
        records = list(tqdm(pool.map(Evaluator(args), items), total=len(items), desc="explain", unit="img",
                            disable=None))
    return summarise(records, args.lesion_classes), records


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary, records = evaluate(args)
    except (CamserveError, FileNotFoundError) as exc:
        print(f"evaluate_cam: {exc}", file=sys.stderr)
        return 2
    summary = {"model": args.model, "split": args.split, "dilate_px": args.dilate_px,
               "lesion_classes": args.lesion_classes, **summary}
    print(json.dumps(summary))
    print(human(summary, args.dilate_px), file=sys.stderr)
    for r in records:
        if r.error:
            print(f"failed: {r.path}: {r.error}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**summary, "records": [asdict(r) for r in records]}, indent=1) + "\n")
    if summary["n_failed"] == summary["n_images"]:
        return 1
    return 1 if args.check and not all(summary["bars"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
