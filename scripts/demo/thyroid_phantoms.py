#!/usr/bin/env python3
"""Generate deterministic SYNTHETIC thyroid-ultrasound-like images with synthetic clinical records.

Not medical data: a stand-in for a thyroid ultrasound set with clinical records, which cannot be
downloaded. Each case has a nodule drawn on a speckled background (strap muscles, thyroid lobe, depth
attenuation) whose appearance follows its latent findings:

- echogenicity: nodule brightness (anechoic, with posterior enhancement, only for cystic nodules);
- margins: smooth (with a thin dark halo), ill-defined (blurred edge) or irregular (lobulated, spiculated);
- calcifications: none, macro (one or two large bright foci casting a shadow), micro (5-9 bright specks).

The label follows a TI-RADS-like points score of ALL findings plus age and sex (and a little noise):
composition (cystic 0, mixed 1, solid 2), echogenicity (anechoic 0, hyper/isoechoic 1, hypoechoic 2),
margins (smooth 0, ill-defined 1, irregular 3), calcifications (none 0, macro 1, micro 3), male sex +1,
age +0.06 per year over 50; ``malignant`` when the score + N(0, 0.5) reaches 4.5. Neither modality alone
carries the whole score: mixed vs solid composition, age and sex are only in ``clinical.csv``, while the
margins and calcifications are left out of the CSV ("not reported") for ``--hidden-fraction`` of the
cases and are then only visible in the image. Every other CSV value is missing with ``--missing-fraction``.

Usage: ``python scripts/demo/thyroid_phantoms.py --output-dir data/thyroid`` writes
``OUT/{train,val,test}/{benign,malignant}/{id}.png``, ``OUT/clinical.csv`` (a ``path`` column relative to
OUT plus one column per feature, empty = missing), ``OUT/schema.json`` (camserve.tabular format),
``OUT/manifest.json`` (every case's latent findings, score and which CSV fields were filled) and
``OUT/README.txt``. Same arguments give byte-identical files: each case has its own generator seeded by
(seed, split, index).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # allow `python scripts/demo/thyroid_phantoms.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from scripts.demo.raster import box_blur, soft  # noqa: E402

GENERATOR_VERSION = "1.0.0"
CLASSES = ("benign", "malignant")
SPLITS = ("train", "val", "test")
CATEGORIES: dict[str, tuple[str, ...]] = {
    "composition": ("cystic", "mixed", "solid"),
    "echogenicity": ("anechoic", "hyperechoic", "isoechoic", "hypoechoic"),
    "margins": ("smooth", "ill-defined", "irregular"),
    "calcifications": ("none", "macro", "micro"),
    "sex": ("F", "M"),
}
FEATURES = ("composition", "echogenicity", "margins", "calcifications", "sex", "age")
IMAGE_FINDINGS = ("margins", "calcifications")  # hidden from the CSV for --hidden-fraction of the cases
POINTS: dict[str, dict[str, float]] = {
    "composition": {"cystic": 0.0, "mixed": 1.0, "solid": 2.0},
    "echogenicity": {"anechoic": 0.0, "hyperechoic": 1.0, "isoechoic": 1.0, "hypoechoic": 2.0},
    "margins": {"smooth": 0.0, "ill-defined": 1.0, "irregular": 3.0},
    "calcifications": {"none": 0.0, "macro": 1.0, "micro": 3.0},
    "sex": {"F": 0.0, "M": 1.0},
}
AGE_POINTS_PER_YEAR, AGE_PIVOT = 0.06, 50.0
THRESHOLD, NOISE_SD = 4.5, 0.5
_PROBS = {"composition": (0.2, 0.3, 0.5), "echogenicity": (0.0, 0.25, 0.35, 0.4), "margins": (0.5, 0.25, 0.25),
          "calcifications": (0.55, 0.2, 0.25), "sex": (0.75, 0.25)}


@dataclass(frozen=True)
class Case:
    """One synthetic patient: latent findings, score, label, and which CSV fields are filled in."""

    split: str
    index: int
    composition: str
    echogenicity: str
    margins: str
    calcifications: str
    sex: str
    age: int
    score: float
    label: str
    reported: dict[str, bool]

    def relpath(self) -> str:
        return f"{self.split}/{self.label}/{self.index:05d}.png"

    def clinical(self) -> dict[str, str]:
        """The CSV row: every reported field as text, the others empty (missing)."""
        return {f: str(getattr(self, f)) if self.reported[f] else "" for f in FEATURES}


def points(findings: dict[str, object]) -> float:
    """The noiseless score of a set of findings (the label is ``score + noise >= THRESHOLD``)."""
    total = sum(POINTS[k][str(findings[k])] for k in POINTS)
    return total + AGE_POINTS_PER_YEAR * (float(findings["age"]) - AGE_PIVOT)


def sample_case(rng: np.random.Generator, split: str, index: int, missing: float, hidden: float) -> Case:
    """Draw one case's findings, label and reporting pattern (before anything image-related)."""
    found: dict[str, object] = {k: CATEGORIES[k][rng.choice(len(CATEGORIES[k]), p=_PROBS[k])]
                                for k in ("composition", "echogenicity", "margins", "calcifications", "sex")}
    if found["composition"] == "cystic":  # a cyst is anechoic; solid tissue never is
        found["echogenicity"] = "anechoic"
    found["age"] = int(np.clip(round(rng.normal(50.0, 14.0)), 18, 90))
    score = points(found) + rng.normal(0.0, NOISE_SD)
    gone = rng.random(len(FEATURES))
    reported = {f: bool(gone[i] >= (hidden if f in IMAGE_FINDINGS else missing)) for i, f in enumerate(FEATURES)}
    return Case(split, index, **found, score=round(float(score), 4),  # type: ignore[arg-type]
                label=CLASSES[int(score >= THRESHOLD)], reported=reported)


def _spots(yy: np.ndarray, xx: np.ndarray, centres: list[tuple[float, float]], sigma: float) -> np.ndarray:
    out = np.zeros(yy.shape)
    for cy, cx in centres:
        out = np.maximum(out, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    return out


def _inside_points(rng: np.random.Generator, region: np.ndarray, n: int) -> list[tuple[float, float]]:
    ys, xs = np.nonzero(region)
    picks = rng.choice(len(ys), size=min(n, len(ys)), replace=False)
    return [(float(ys[i]) + rng.uniform(-0.3, 0.3), float(xs[i]) + rng.uniform(-0.3, 0.3)) for i in picks]


def render(case: Case, size: int, rng: np.random.Generator) -> np.ndarray:
    """The case's B-mode-like image, ``uint8 [size, size]``."""
    px = size / 96.0  # feature sizes are designed at 96 px
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (xx + 0.5) / size * 2 - 1, (yy + 0.5) / size * 2 - 1  # v grows with depth
    depth = (v + 1) / 2
    # Background: skin line, striated strap muscles, the thyroid lobe, deeper soft tissue.
    lx, ly = rng.uniform(-0.1, 0.1), rng.uniform(0.2, 0.3)
    lobe = soft(np.sqrt(((u - lx) / 0.92) ** 2 + ((v - ly) / 0.6) ** 2), 0.04)
    muscle = 0.26 + 0.05 * np.sin(2 * np.pi * v / rng.uniform(0.12, 0.18) + rng.uniform(0, 6.3))
    echo = np.where(depth < 0.04, 0.6, muscle) * (1 - lobe) + 0.5 * lobe
    # The nodule, in polar coordinates around its centre; its outline radius depends on the margins.
    nx, ny = lx + rng.uniform(-0.3, 0.3), ly + rng.uniform(-0.08, 0.12)
    rx, ry = rng.uniform(0.24, 0.34), rng.uniform(0.2, 0.28)
    dx, dy = (u - nx) / rx, (v - ny) / ry
    r, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    outline = np.ones_like(r)
    if case.margins == "irregular":
        for k in rng.choice(np.arange(3, 9), size=3, replace=False):
            outline += rng.uniform(0.1, 0.18) * np.cos(k * theta + rng.uniform(0, 6.3))
        outline += 0.12 * np.maximum(np.cos(rng.integers(11, 16) * theta + rng.uniform(0, 6.3)), 0) ** 3
    rel = r / outline
    nodule = soft(rel, 0.16 if case.margins == "ill-defined" else 0.03)
    level = {"anechoic": 0.03, "hypoechoic": 0.18, "isoechoic": 0.38, "hyperechoic": 0.68}[case.echogenicity]
    echo = echo * (1 - nodule) + level * nodule
    if case.margins == "smooth":  # thin hypoechoic halo
        echo *= 1 - 0.6 * np.exp(-(((rel - 1.05) / 0.06) ** 2))
    below = soft(np.abs(u - nx) / rx, 0.08) * (v > ny) * (1 - nodule)
    if case.echogenicity == "anechoic":  # posterior acoustic enhancement
        echo *= 1 + 0.45 * below * np.exp(-(v - ny) / 0.5)
    # Calcifications: bright foci inside the nodule; large ones cast an acoustic shadow.
    core = rel < 0.75
    foci = np.zeros_like(echo)
    if case.calcifications == "micro":
        foci = _spots(yy, xx, _inside_points(rng, core, int(rng.integers(5, 10))), 0.55 * px)
    elif case.calcifications == "macro":
        centres = _inside_points(rng, core, int(rng.integers(1, 3)))
        foci = _spots(yy, xx, centres, 1.6 * px)
        for cy, cx in centres:
            shadow = soft(np.abs(xx - cx) / (2.2 * px), 0.2) * (yy > cy + 2 * px)
            echo *= 1 - 0.7 * shadow
    echo *= 1 - 0.35 * depth  # attenuation with depth
    # Multiplicative, spatially correlated speckle (Rayleigh-like), then the bright foci on top.
    re, im = (box_blur(rng.normal(size=(size, size)), max(1, round(px))) for _ in range(2))
    speckle = np.hypot(re, im)
    speckle = 0.55 + 0.45 * speckle / speckle.mean()  # milder than pure Rayleigh: foci stay visible
    img = rng.uniform(0.9, 1.1) * echo * speckle + foci
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def plan(n: dict[str, int], seed: int, missing: float, hidden: float) -> list[tuple[Case, np.random.Generator]]:
    """Every case with its generator (already advanced past the case's own draws), in a fixed order."""
    out = []
    for s, split in enumerate(SPLITS):
        for i in range(n[split]):
            rng = np.random.default_rng([seed, s, i])
            out.append((sample_case(rng, split, i, missing, hidden), rng))
    return out


def schema(cases: Sequence[Case]) -> dict:
    """camserve.tabular schema; age normalised with the training split's reported ages."""
    ages = np.array([c.age for c in cases if c.split == "train" and c.reported["age"]] or [50.0], dtype=float)
    std = round(float(ages.std()), 2) if len(ages) > 1 and ages.std() > 0 else 15.0
    feats: list[dict] = [{"name": k, "type": "categorical", "categories": list(CATEGORIES[k]), "required": False}
                         for k in FEATURES if k != "age"]
    feats.append({"name": "age", "type": "numeric", "mean": round(float(ages.mean()), 2), "std": std,
                  "required": False})
    return {"features": feats}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    cli.add_output_dir(p)
    a("--n-train", type=cli.positive_int, default=1200, help="training cases (default: %(default)s)")
    a("--n-val", type=cli.positive_int, default=200, help="validation cases (default: %(default)s)")
    a("--n-test", type=cli.positive_int, default=400, help="test cases (default: %(default)s)")
    a("--seed", type=cli.non_negative_int, default=0, help="master seed (default: %(default)s)")
    a("--size", type=cli.int_range(48, 1024), default=96, help="image side in pixels (default: %(default)s)")
    a("--missing-fraction", type=cli.unit_float, default=0.1,
      help="share of each CSV value left empty, per field (default: %(default)s)")
    a("--hidden-fraction", type=cli.unit_float, default=0.5,
      help="share of cases whose margins / calcifications are not reported in the CSV (default: %(default)s)")
    return p


README = """SYNTHETIC DATA - NOT MEDICAL DATA.

Computer-generated images that loosely imitate thyroid ultrasound (speckle, a nodule with varying
echogenicity, margins and calcifications) and made-up clinical records. They come from no patient, carry no
clinical information and must not be used for any medical purpose. The labels follow a fixed synthetic rule
(see scripts/demo/thyroid_phantoms.py), not medicine.

Generator: scripts/demo/thyroid_phantoms.py version {version}
Arguments: {args}

Layout: {{train,val,test}}/{{benign,malignant}}/{{id}}.png; clinical.csv (path relative to this folder, then
composition, echogenicity, margins, calcifications, sex, age; an empty cell is a missing value);
schema.json (the tabular schema, camserve.tabular format); manifest.json (each case's latent findings).
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    n = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    cases = plan(n, args.seed, args.missing_fraction, args.hidden_fraction)
    out: Path = args.output_dir
    for split in SPLITS:
        for label in CLASSES:
            (out / split / label).mkdir(parents=True, exist_ok=True)
    for case, rng in tqdm(cases, desc="thyroid phantoms", unit="img", disable=None):
        Image.fromarray(render(case, args.size, rng), "L").save(out / case.relpath())
    with open(out / "clinical.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["path", *FEATURES], lineterminator="\n")
        writer.writeheader()
        for case, _ in sorted(cases, key=lambda c: c[0].relpath()):
            writer.writerow({"path": case.relpath(), **case.clinical()})
    (out / "schema.json").write_text(json.dumps(schema([c for c, _ in cases]), indent=1) + "\n")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "output_dir"}
    counts = {s: {c: sum(x.split == s and x.label == c for x, _ in cases) for c in CLASSES} for s in SPLITS}
    manifest = {"generator": "scripts/demo/thyroid_phantoms.py", "version": GENERATOR_VERSION, "synthetic": True,
                "args": settings, "classes": list(CLASSES), "threshold": THRESHOLD, "counts": counts,
                "cases": [{"path": c.relpath(), **asdict(c)} for c, _ in cases]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.txt").write_text(README.format(version=GENERATOR_VERSION, args=json.dumps(settings)))
    print(json.dumps({"out": str(out), "synthetic": True, "counts": counts}))
    print(f"wrote {len(cases)} synthetic thyroid phantoms and clinical records to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
