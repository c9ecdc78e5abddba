"""Localisation of a served model's maps against mask folders, measured through the HTTP endpoint.

    python scripts/evaluate_cam.py --data-dir DIR --model NAME [--roi-masks MASKS] [--lesion-masks MASKS]
        [--url URL] [--token-file key_file.json] [--dilate 0.03] [--explain METHOD] [--concurrency 8]
        [--output-dir OUT] [--bars bars.json] [--min-accuracy 0.9 ...] [--check]

``DIR`` is an ImageFolder tree (class folder = true class). Mask folders mirror it: the mask of
``DIR/CLASS/name.png`` is ``MASKS/CLASS/name.png`` (or the same stem with ``.png``), white = inside.
Every image goes to ``POST /predictions/MODEL`` with its true class (``label=``) and, when there is
one, its region-of-interest mask (``mask=``), so the server itself reports the prediction and the
``focus_score``: the share of the upsampled map's energy inside the region (say, the lung fields).

Scored images are the correctly classified images of the lesion classes (``--lesion-classes``; by
default the classes with at least one non-empty lesion mask, or every class without
``--lesion-masks``). On those:

- the pointing game: the peak of the returned map (feature-map resolution, upsampled bilinearly with
  ``camserve.cam.upsample``) must lie in the lesion mask dilated by ``--dilate`` of the image's longer
  side (a Euclidean disc), overall and per class;
- the median focus score.

A map with no positive evidence is a miss and counts as focus 0, so neither figure is flattered.
Failed requests are listed and counted. Pass bars from a JSON file (``--bars``, keys as the flags:
``min_accuracy``, ``max_accuracy`` (exclusive), ``min_pointing_game``, ``min_pointing_game_per_class``,
``min_median_focus``) or flags (which win); ``--check`` exits 1 when one is missed. Prints the summary
as JSON on stdout and a short human summary on stderr.
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
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python scripts/evaluate_cam.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from camserve.analysis.localisation import focus, pointing_game_hit  # noqa: E402
from camserve.client import Client  # noqa: E402
from camserve.errors import CamserveError, DataError  # noqa: E402
from camserve.folders import match_class, walk  # noqa: E402
from camserve.schema import CAM_METHODS  # noqa: E402

BARS = ("min_accuracy", "max_accuracy", "min_pointing_game", "min_pointing_game_per_class", "min_median_focus")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_dir(p, help="ImageFolder tree to evaluate (class folder = true class)")
    cli.add_server_args(p, timeout=120.0)
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--roi-masks", type=Path, metavar="MASKS",
                   help="region-of-interest masks mirroring --data-dir (focus score), e.g. lung fields")
    p.add_argument("--lesion-masks", type=Path, metavar="MASKS",
                   help="masks of the findings mirroring --data-dir (pointing game)")
    p.add_argument("--lesion-classes", type=cli.class_list,
                   help="classes scored (default: those with a non-empty lesion mask; all without masks)")
    p.add_argument("--dilate", type=cli.unit_float, default=0.03,
                   help="pointing-game tolerance: lesion masks dilated by this share of the image's longer "
                        "side (default: %(default)s)")
    p.add_argument("--explain", choices=CAM_METHODS, help="CAM method to ask for (default: the model's own)")
    p.add_argument("--concurrency", type=cli.positive_int, default=8,
                   help="requests in flight, so TorchServe can batch (default: %(default)s)")
    p.add_argument("--output-dir", type=Path, metavar="DIR", help="also write summary.json and records.json here")
    p.add_argument("--bars", type=Path, metavar="FILE", help="JSON file with pass bars (keys as the flags)")
    for name, what in (("min_accuracy", "accuracy at least"), ("max_accuracy", "accuracy below"),
                       ("min_pointing_game", "pointing game at least"),
                       ("min_pointing_game_per_class", "pointing game of every scored class at least"),
                       ("min_median_focus", "median focus score at least")):
        p.add_argument("--" + name.replace("_", "-"), type=cli.unit_float, metavar="X", help=f"bar: {what} X")
    p.add_argument("--check", action="store_true", help="exit 1 when a bar is missed")
    return p


def read_bars(args: argparse.Namespace) -> dict[str, float]:
    """The bars from ``--bars`` with the flags on top; raises ``DataError`` on a bad file."""
    bars: dict[str, float] = {}
    if args.bars is not None:
        try:
            loaded = json.loads(args.bars.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the bars file {args.bars}: {exc}") from exc
        unknown = sorted(set(loaded) - set(BARS)) if isinstance(loaded, dict) else ["<not an object>"]
        if unknown or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in loaded.values()):
            raise DataError(f"{args.bars}: expected an object with numbers in [0, 1] under {', '.join(BARS)}")
        bars.update({k: float(v) for k, v in loaded.items()})
    bars.update({k: getattr(args, k) for k in BARS if getattr(args, k) is not None})
    return bars


# ---- pure functions ---------------------------------------------------------------------------------

def tolerance_px(shape: tuple[int, ...], share: float) -> int:
    """The dilation radius in pixels: ``share`` of the longer side, rounded."""
    return round(share * max(shape))


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
    roi: bool = False
    error: str | None = None


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _mean(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarise(records: Sequence[Record], lesion_classes: Sequence[str], bars: dict[str, float] | None = None
              ) -> dict[str, Any]:
    """Accuracy, pointing game and focus figures with their counts, and whether each given bar is met."""
    done = [r for r in records if r.error is None]
    labels = sorted({r.label for r in records})
    accuracy = _mean([bool(r.correct) for r in done])
    scored = [r for r in done if r.correct and r.label in lesion_classes]
    pointed = [r for r in scored if r.hit is not None]
    focus_scored = [0.0 if r.focus is None else r.focus for r in scored if r.roi]  # no evidence counts as 0
    per_class = {c: _mean([bool(r.hit) for r in pointed if r.label == c]) for c in lesion_classes}
    summary = {
        "n_images": len(records), "n_failed": len(records) - len(done),
        "accuracy": accuracy,
        "per_class_accuracy": {c: _mean([bool(r.correct) for r in done if r.label == c]) for c in labels},
        "pointing_game": {"hits": sum(bool(r.hit) for r in pointed), "n": len(pointed),
                          "rate": _mean([bool(r.hit) for r in pointed]), "per_class": per_class},
        "median_focus": median_or_none(focus_scored) if any(r.roi for r in scored) else None,
        "n_scored": len(scored), "n_no_evidence": sum(r.roi and r.focus is None for r in scored),
        "median_focus_all_images": median_or_none([r.focus for r in done if r.focus is not None]),
        "focus_max_discrepancy": max((abs(r.focus - r.focus_local) for r in done
                                      if r.focus is not None and r.focus_local is not None), default=None),
    }
    summary["bars"] = check_bars(summary, bars or {})
    return summary


def check_bars(summary: dict[str, Any], bars: dict[str, float]) -> dict[str, bool]:
    """``{bar: met}`` for every given bar; a figure that could not be measured misses its bar."""
    def at_least(x: float | None, bar: float) -> bool:
        return x is not None and x >= bar

    pg = summary["pointing_game"]
    tests = {
        "min_accuracy": lambda b: at_least(summary["accuracy"], b),
        "max_accuracy": lambda b: summary["accuracy"] is not None and summary["accuracy"] < b,
        "min_pointing_game": lambda b: at_least(pg["rate"], b),
        "min_pointing_game_per_class": lambda b: bool(pg["per_class"])
        and all(at_least(v, b) for v in pg["per_class"].values()),
        "min_median_focus": lambda b: at_least(summary["median_focus"], b),
    }
    return {k: bool(tests[k](v)) for k, v in bars.items()}


def human(summary: dict[str, Any], bars: dict[str, float]) -> str:
    """A short summary for people."""
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    def verdict(*keys: str) -> str:
        given = [k for k in keys if k in bars]
        if not given:
            return ""
        return " (" + "; ".join(("meets " if summary["bars"][k] else "MISSES ") + _bar_text(k, bars[k])
                                for k in given) + ")"

    pg = summary["pointing_game"]
    per_class = ", ".join(f"{c} {fmt(v)}" for c, v in pg["per_class"].items())
    return "\n".join([
        f"{summary['n_images']} images, {summary['n_failed']} failed",
        f"accuracy {fmt(summary['accuracy'])}{verdict('min_accuracy', 'max_accuracy')}",
        f"pointing game {fmt(pg['rate'])} = {pg['hits']}/{pg['n']} correctly classified lesion images "
        f"{verdict('min_pointing_game')}; per class: {per_class}{verdict('min_pointing_game_per_class')}",
        f"median focus score {fmt(summary['median_focus'])} on the same images{verdict('min_median_focus')}; "
        f"{summary['n_no_evidence']} maps without evidence",
    ])


def _bar_text(key: str, value: float) -> str:
    return {"min_accuracy": ">= {:g}", "max_accuracy": "< {:g}", "min_pointing_game": ">= {:g}",
            "min_pointing_game_per_class": "each >= {:g}", "min_median_focus": ">= {:g}"}[key].format(value)


# ---- I/O --------------------------------------------------------------------------------------------

def list_images(root: Path, classes: Sequence[str]) -> list[tuple[str, str]]:
    """``(relative path, class)`` of every image of the ImageFolder tree whose folder is a served class."""
    if not root.is_dir():
        raise DataError(f"{root} does not exist: --data-dir must be an ImageFolder tree")
    found = walk(root, images_only=True)
    items = [(rel, match_class(rel.split("/")[0], classes)) for rel in found.files if "/" in rel]
    unknown = sorted({rel.split("/")[0] for rel, c in items if c is None})
    if unknown:
        raise DataError(f"{root} has class folders the model does not know: {', '.join(unknown)}; "
                        f"its classes are {', '.join(classes)}")
    if not items:
        raise DataError(f"no images in class folders under {root}")
    return [(rel, c) for rel, c in items if c is not None]


def mask_path(masks: Path | None, rel: str) -> Path | None:
    """The mask of the image at ``rel``: the same relative path, or its stem with ``.png``."""
    if masks is None:
        return None
    return next((p for p in (masks / rel, (masks / rel).with_suffix(".png")) if p.is_file()), None)


def load_mask(path: Path) -> np.ndarray:
    """A mask image as a boolean array (brighter than half range = inside)."""
    return np.asarray(Image.open(path).convert("L")) > 127


def default_lesion_classes(args: argparse.Namespace, items: list[tuple[str, str]], classes: Sequence[str]
                           ) -> list[str]:
    """Classes with at least one non-empty lesion mask (every class when no lesion masks are given)."""
    if args.lesion_classes:
        return list(args.lesion_classes)
    if args.lesion_masks is None:
        return list(classes)
    with_lesions = set()
    for rel, label in items:
        path = mask_path(args.lesion_masks, rel)
        if label not in with_lesions and path is not None and load_mask(path).any():
            with_lesions.add(label)
    return [c for c in classes if c in with_lesions]


class Evaluator:
    """Sends one image and scores the answer; one ``Client`` per thread."""

    def __init__(self, args: argparse.Namespace, lesion_classes: Sequence[str]) -> None:
        self.args, self.lesion_classes = args, lesion_classes
        self.local = threading.local()

    def client(self) -> Client:
        if not hasattr(self.local, "client"):
            self.local.client = Client.from_key_file(self.args.token_file, self.args.url, timeout=self.args.timeout)
        return self.local.client

    def __call__(self, item: tuple[str, str]) -> Record:
        rel, label = item
        record = Record(rel, label)
        roi = mask_path(self.args.roi_masks, rel)
        try:
            resp = self.client().explain(self.args.model, (self.args.data_dir / rel).read_bytes(),
                                         mask=None if roi is None else roi.read_bytes(), label=label,
                                         explain=self.args.explain)
        except (CamserveError, OSError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            return record
        record.prediction, record.confidence = resp.prediction.label, resp.prediction.confidence
        record.correct = resp.prediction.label == label
        exp = resp.explanation
        record.focus, record.roi = (None if exp is None else exp.focus_score), roi is not None
        if exp is not None and roi is not None:  # recomputed from the returned map: checks the served figure
            record.focus_local = focus(exp.cam, load_mask(roi))
        lesion = mask_path(self.args.lesion_masks, rel)
        if record.correct and label in self.lesion_classes and lesion is not None:
            mask = load_mask(lesion)
            if mask.any():
                record.hit = exp is not None and pointing_game_hit(exp.cam, mask, tolerance_px(mask.shape,
                                                                                               self.args.dilate))
        return record


def evaluate(args: argparse.Namespace, bars: dict[str, float]) -> tuple[dict[str, Any], list[Record]]:
    """Run every image through the server; returns the summary and the records."""
    served = Client.from_key_file(args.token_file, args.url, timeout=args.timeout).describe(args.model).classes
    items = list_images(args.data_dir, served)
    lesion_classes = default_lesion_classes(args, items, served)
    with ThreadPoolExecutor(args.concurrency) as pool:
        records = list(tqdm(pool.map(Evaluator(args, lesion_classes), items), total=len(items), desc="explain",
                            unit="img", disable=None))
    return {"lesion_classes": lesion_classes, **summarise(records, lesion_classes, bars)}, records


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        bars = read_bars(args)
        if args.check and not bars:
            parser.error("--check needs bars: --bars FILE or --min-accuracy and the like")
        summary, records = evaluate(args, bars)
    except CamserveError as exc:
        print(f"evaluate_cam: {exc}", file=sys.stderr)
        return 2
    summary = {"model": args.model, "data_dir": str(args.data_dir), "dilate": args.dilate,
               "explain": args.explain, "bar_values": bars, **summary}
    print(json.dumps(summary))
    print(human(summary, bars), file=sys.stderr)
    for r in records:
        if r.error:
            print(f"failed: {r.path}: {r.error}", file=sys.stderr)
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (args.output_dir / "records.json").write_text(json.dumps([asdict(r) for r in records], indent=1) + "\n")
    if summary["n_failed"] == summary["n_images"]:
        return 1
    return 1 if args.check and not all(summary["bars"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
