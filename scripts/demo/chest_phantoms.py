#!/usr/bin/env python3
"""Generate deterministic SYNTHETIC frontal chest radiographs ("phantoms") with lung and lesion masks.

Not medical data: a stand-in for a chest X-ray set that cannot be downloaded. ``COVID`` has multifocal,
bilateral, peripheral ground-glass blobs, ``Normal`` none, ``Viral_Pneumonia`` one or two denser compact
consolidations, usually in one lung. Lung and lesion masks are aligned to each image for scoring Grad-CAM.

Usage: ``python scripts/demo/chest_phantoms.py --output-dir data/phantoms --n-per-class 600 --seed 0`` writes
``OUT/{split}/{class}/{id}.png``, ``OUT/masks/{lungs,lesions}/{split}/{class}/{id}.png`` (0/255),
``OUT/manifest.json`` and ``OUT/README.txt``. Same arguments give byte-identical files: each sample has
its own generator seeded by (seed, class index, sample index).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # allow `python scripts/demo/chest_phantoms.py` without installing the package
    sys.path.insert(0, str(REPO))

from camserve import cli  # noqa: E402
from scripts.demo.raster import box_blur, soft  # noqa: E402

GENERATOR_VERSION = "2.0.0"
CLASSES = ("COVID", "Normal", "Viral_Pneumonia")
SPLITS = ("train", "val", "test")
BACKGROUND = 0.04  # air outside the body, in canonical [0, 1] intensity
_HARD_TAG = 0x4A5D  # separates the hard-case draw from the per-sample streams


@dataclass(frozen=True)
class Phantom:
    """One synthetic radiograph: ``image`` uint8 HxW, ``lungs`` and ``lesions`` bool HxW masks."""

    image: np.ndarray
    lungs: np.ndarray
    lesions: np.ndarray


@dataclass(frozen=True)
class LesionSpec:
    """How one class draws lesions; radii (half-maximum, as a fraction of the image side) and amplitudes."""

    count: tuple[int, int]
    radius: tuple[float, float]
    amplitude: tuple[float, float]
    power: float  # profile exponent: 2 is a soft Gaussian (ground glass), 4 a flat-topped consolidation
    both_lungs: float  # probability that the blobs are spread over both lungs (needs count >= 2)
    peripheral: bool  # centres in the outer half of the lung, more often in the lower zones


LESIONS: dict[tuple[str, bool], LesionSpec] = {
    ("COVID", False): LesionSpec((3, 6), (0.055, 0.08), (0.10, 0.17), 2.0, 1.0, True),
    ("COVID", True): LesionSpec((1, 2), (0.04, 0.055), (0.05, 0.08), 2.0, 0.5, True),
    ("Viral_Pneumonia", False): LesionSpec((1, 2), (0.07, 0.11), (0.22, 0.34), 4.0, 0.2, False),
    ("Viral_Pneumonia", True): LesionSpec((1, 1), (0.05, 0.07), (0.07, 0.11), 4.0, 0.0, False),
}


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Normalised elliptical radius: 1 on the ellipse's outline."""
    return np.sqrt(((u - cx) / ax) ** 2 + ((v - cy) / ay) ** 2)


@dataclass(frozen=True)
class Anatomy:
    """One patient before acquisition: ``image`` in canonical [0, 1] density and the soft lung field."""

    image: np.ndarray
    soft_lungs: np.ndarray

    @property
    def lungs(self) -> np.ndarray:
        return self.soft_lungs > 0.5


def _lung(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, side: float, width: float, height: float
          ) -> tuple[np.ndarray, np.ndarray]:
    """One lung field (a narrow apex, a deep lateral costophrenic angle) and what lies under its
    diaphragm dome (the patient's right dome, on the image's left, sits higher)."""
    x = side * u  # lateral distance from the midline
    cx, cy = 0.47 * width + rng.uniform(-0.02, 0.02), rng.uniform(-0.04, 0.0)
    ax, ay = rng.uniform(0.39, 0.43) * width, rng.uniform(0.76, 0.82) * height
    depth = np.clip((v - cy) / ay, -1.0, 1.0)
    taper = 0.78 + 0.22 * (depth + 1.0) / 2.0  # the apex is narrower than the base
    shape = soft(_ellipse(x, v, cx, cy, ax * taper, ay), 0.03)
    dome = cy + 0.8 * ay - 0.17 * np.clip(1.0 - ((x - cx) / ax) ** 2, 0.0, 1.0) - (0.04 if side < 0 else 0.0)
    below = 1.0 - soft(v - dome + 1.0, 0.012)
    return shape * (1.0 - below), below * (x > 0)


def _vessels(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, side: float) -> np.ndarray:
    """Lung markings: tapering lines that fan out from the hilum and fade towards the periphery."""
    hx, hy = side * rng.uniform(0.17, 0.21), rng.uniform(-0.06, 0.04)
    out = np.zeros_like(u)
    size, margin = u.shape[0], 0.05  # each line is drawn in its own bounding box (its tails are < 1e-5)
    for angle in rng.uniform(-1.9, 1.9, size=16):  # around the lateral direction
        dx, dy = side * math.cos(angle), math.sin(angle)
        length = rng.uniform(0.35, 0.75)
        ends_u, ends_v = (hx, hx + dx * length), (hy, hy + dy * length)
        cols = _pixels(min(ends_u) - margin, max(ends_u) + margin, size)
        rows = _pixels(min(ends_v) - margin, max(ends_v) + margin, size)
        bu, bv = u[rows, cols], v[rows, cols]
        t = (bu - hx) * dx + (bv - hy) * dy  # along the vessel
        d = np.abs(-(bu - hx) * dy + (bv - hy) * dx)  # across it
        width = 0.012 * (1.2 - np.clip(t / length, 0.0, 1.0))
        out[rows, cols] += np.exp(-((d / width) ** 2)) * (t > 0) * np.clip(1.0 - t / length, 0.0, 1.0)
    return out


def _pixels(lo: float, hi: float, size: int) -> slice:
    """The pixel indices whose centres fall in ``[lo, hi]`` of the ``[-1, 1]`` frame."""
    return slice(max(0, math.floor((lo + 1.0) / 2.0 * size)), min(size, math.ceil((hi + 1.0) / 2.0 * size) + 1))


def _ribs(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Posterior ribs (arcs leaving the spine, sweeping down laterally) and fainter anterior ribs (running
    down towards the midline), each a band with a brighter cortex."""
    a = np.abs(u) - 0.06
    spacing = rng.uniform(0.125, 0.14)
    posterior = v + 0.2 * a - 0.9 * a**2 + 0.84 + rng.uniform(-0.03, 0.03)
    anterior = v + 0.45 * a + 0.55 + rng.uniform(-0.03, 0.03)
    bands = np.zeros_like(u)
    for w, weight, top in ((posterior, 1.0, 10), (anterior, 0.4, 6)):
        offset = w - spacing * np.clip(np.round(w / spacing), 0, top)
        cortex = np.exp(-(((np.abs(offset) - 0.024) / 0.006) ** 2))
        bands += weight * (np.exp(-((offset / 0.024) ** 2)) + 0.6 * cortex)
    return bands * (a > 0)


def _anatomy(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> Anatomy:
    """Body, lungs, heart, mediastinum, spine, ribs, clavicles, diaphragm, stomach gas and soft tissue."""
    width, height = rng.uniform(0.93, 1.03), rng.uniform(0.92, 1.05)  # habitus, depth of inspiration
    shoulders = soft(_ellipse(np.abs(u), v, 0.62 * width, -1.05, 0.42, 0.32), 0.06)
    neck = soft(np.abs(u) / 0.3, 0.05) * (v < -0.6)
    body = np.maximum.reduce([soft(_ellipse(u, v, 0.0, 0.12, 0.97 * width, 1.28), 0.03), shoulders, neck])
    (right, under_right), (left, under_left) = (_lung(rng, u, v, side, width, height) for side in (-1.0, 1.0))
    lungs, abdomen = np.maximum(right, left), np.maximum(under_right, under_left)
    heart = soft(_ellipse(u, v, rng.uniform(0.12, 0.17), rng.uniform(0.33, 0.38) * height,
                          rng.uniform(0.37, 0.42) * width, rng.uniform(0.27, 0.31)), 0.04)
    mediastinum = soft(np.abs(u - 0.02) / (rng.uniform(0.08, 0.1) + 0.04 * np.clip(v + 0.3, 0.0, 1.0)), 0.06)
    knob = soft(_ellipse(u, v, 0.13, -0.3 * height, 0.07, 0.06), 0.05)  # the aortic arch
    dense = np.maximum.reduce([heart, mediastinum, knob])
    lungs = lungs * (1.0 - dense)
    thorax = box_blur(lungs, max(1, u.shape[0] // 24))  # ribs show against air, faintly elsewhere
    spine = soft(np.abs(u) / 0.07, 0.1) * (0.75 + 0.25 * np.cos(2 * np.pi * v / 0.11)) * (1.0 - 0.6 * abdomen)
    clavicles = np.exp(-(((v + 0.72 + 0.2 * np.abs(u) - 0.05 * u**2) / 0.032) ** 2)) * (np.abs(u) < 0.72)
    trachea = soft(np.abs(u) / 0.035, 0.2) * soft((v + 1.0) / 0.68, 0.03)  # air column down to the carina
    markings = _vessels(rng, u, v, -1.0) + _vessels(rng, u, v, 1.0)
    texture = box_blur(rng.normal(size=u.shape), max(1, u.shape[0] // 64))
    gas = soft(_ellipse(u, v, 0.36 * width, 0.72 * height + 0.1, 0.08, 0.05), 0.1) * (rng.random() < 0.6)
    breasts = rng.uniform(0.0, 0.06) * np.exp(-(((v - 0.5 * height) / 0.2) ** 2)) * soft(
        np.abs(np.abs(u) - 0.55) / 0.3, 0.2)
    img = BACKGROUND + 0.5 * body - 0.36 * lungs + 0.16 * np.maximum(dense, abdomen) - 0.1 * trachea - 0.12 * gas
    img += body * (breasts + 0.035 * spine + _ribs(rng, u, v) * (0.015 + 0.04 * thorax) + 0.1 * clavicles)
    img += lungs * (0.035 * np.clip(markings, 0.0, 1.5) + 0.012 * texture)
    return Anatomy(img, lungs)


def _pick_centre(rng: np.random.Generator, allowed: np.ndarray, weight: np.ndarray) -> tuple[int, int]:
    """A pixel of ``allowed`` drawn with probability proportional to ``weight``."""
    ys, xs = np.nonzero(allowed)
    p = weight[ys, xs] / weight[ys, xs].sum()
    i = rng.choice(len(ys), p=p)
    return int(ys[i]), int(xs[i])


def _lesions(rng: np.random.Generator, spec: LesionSpec, soft_lungs: np.ndarray, u: np.ndarray, v: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Blobs inside the lungs; returns (added density, mask of each blob's half-maximum disc in the lungs).

    The density is multiplied by the lung field eroded by a few pixels, so that no blur of the
    acquisition carries any of it outside the lung mask: nothing about the class is visible there.
    """
    size = soft_lungs.shape[0]
    lungs = soft_lungs > 0.5
    yy, xx = np.mgrid[0:size, 0:size]
    n = int(rng.integers(spec.count[0], spec.count[1] + 1))
    spread = n >= 2 and rng.random() < spec.both_lungs
    first = int(rng.integers(2))
    sides = [first, 1 - first, *rng.integers(2, size=n - 2).tolist()] if spread else [first] * n
    inner = box_blur(lungs.astype(float), max(1, round(spec.radius[0] * size / 2))) > 0.9  # room for the blob
    weight = 1.0 + (1.5 * np.clip((v + 0.6) / 1.2, 0.0, 1.0) if spec.peripheral else 0.0 * v)  # basal zones
    field, mask = np.zeros(lungs.shape), np.zeros(lungs.shape, bool)
    for side in sides:
        half = lungs & ((u < 0) if side == 0 else (u > 0))
        allowed = half & inner
        if spec.peripheral and allowed.any():
            allowed &= np.abs(u) >= np.median(np.abs(u[allowed]))
        if not allowed.any():
            allowed = half if half.any() else lungs
        cy, cx = _pick_centre(rng, allowed, weight)
        r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (rng.uniform(*spec.radius) * size) ** 2
        field += rng.uniform(*spec.amplitude) * np.exp(-math.log(2) * r2 ** (spec.power / 2))
        mask |= r2 <= 1.0
    if spec.power <= 2.0:  # ground glass is mottled, not uniform
        field *= np.clip(1.0 + box_blur(rng.normal(size=lungs.shape), max(1, size // 64)), 0.3, 1.7)
    r = max(1, round(size / 64))  # fade out over a rim inside the mask: no blur carries anything past it
    fade = np.clip(2.0 * box_blur(lungs.astype(float), r) - 1.0, 0.0, 1.0) * np.clip(box_blur(lungs, 2 * r), 0, 1)
    return field * fade**2, mask & lungs


def _affine(a: np.ndarray, matrix: tuple[float, ...], fill: float) -> np.ndarray:
    """Apply PIL's inverse affine ``matrix`` with bilinear resampling to a float image."""
    im = Image.fromarray(a.astype(np.float32))
    return np.asarray(im.transform(im.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR, fillcolor=fill))


def _pose(rng: np.random.Generator, size: int) -> tuple[float, ...]:
    """Random shift, scale and small rotation about the centre, as PIL's output-to-input affine matrix."""
    angle, scale = math.radians(rng.uniform(-5.0, 5.0)), rng.uniform(0.92, 1.08)
    tx, ty = rng.uniform(-0.05, 0.05, size=2) * size
    c, cos, sin = size / 2.0, math.cos(angle) / scale, math.sin(angle) / scale
    return (cos, sin, c - cos * (c + tx) - sin * (c + ty), -sin, cos, c + sin * (c + tx) - cos * (c + ty))


def _expose(rng: np.random.Generator, img: np.ndarray, hard: bool) -> np.ndarray:
    """Detector blur, quantum noise and exposure (gain, offset, gamma); quantise to uint8."""
    gain, offset, gamma = rng.uniform(0.85, 1.15), rng.uniform(-0.07, 0.07), rng.uniform(0.8, 1.25)
    sigma = rng.uniform(0.012, 0.025) * (1.6 if hard else 1.0)
    blur = max(1, round(img.shape[0] / 128))
    img = 0.5 * img + 0.5 * box_blur(img, blur)
    img = img + sigma * (rng.normal(size=img.shape) + 2.0 * box_blur(rng.normal(size=img.shape), blur))
    img = np.clip(img, 0.0, 1.0) ** gamma
    img = 0.4 + (0.8 if hard else 1.0) * gain * (img - 0.4) + offset
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def draw_phantom(rng: np.random.Generator, label: str, size: int = 128, hard: bool = False) -> Phantom:
    """Draw one synthetic radiograph of class ``label``.

    Anatomy, lesions and acquisition draw from three generators spawned from ``rng`` in a fixed order, so
    the same seed drawn as ``Normal`` and as a diseased class differs only by the lesions.

    Args:
        rng: Source of randomness; fully determines the sample.
        label: One of :data:`CLASSES`.
        size: Side of the square image in pixels.
        hard: Faint, small lesions (COVID, Viral_Pneumonia) or a faint lesion-like density (Normal), with
            lower contrast and more noise.

    Returns:
        The image with its lung and lesion masks, already aligned by the same pose transform.
    """
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    anatomy_rng, lesion_rng, acquisition_rng = rng.spawn(3)
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size * 2.0 - 1.0
    anatomy = _anatomy(anatomy_rng, u, v)
    img, lungs = anatomy.image, anatomy.lungs
    lesions = np.zeros_like(lungs)
    if (label, hard) in LESIONS:
        field, lesions = _lesions(lesion_rng, LESIONS[(label, hard)], anatomy.soft_lungs, u, v)
        img = img + field
    elif hard:  # Normal: a faint density where vessels cross, not a lesion (no mask)
        field, _ = _lesions(lesion_rng, LESIONS[("COVID", True)], anatomy.soft_lungs, u, v)
        img = img + 0.6 * field
    pose = _pose(acquisition_rng, size)
    img = _affine(img, pose, BACKGROUND).astype(np.float64)
    # Bilinear resampling is monotone, so lesions <= lungs survives the transform exactly.
    lungs, lesions = _affine(lungs, pose, 0.0) > 0.5, _affine(lesions, pose, 0.0) > 0.5
    return Phantom(_expose(acquisition_rng, img, hard), lungs, lesions)


@dataclass(frozen=True)
class Sample:
    """Where one sample goes: its id, class, index within the class, split and hard flag."""

    id: str
    label: str
    index: int
    split: str
    hard: bool

    def relpath(self) -> str:
        """``{split}/{class}/{id}.png``, shared by the image and its two masks."""
        return f"{self.split}/{self.label}/{self.id}.png"


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of ``n`` over ``fractions``; a split with a positive share gets >= 1."""
    raw = [n * f for f in fractions]
    counts = [math.floor(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0 and max(counts) > 1:
            counts[i], counts[counts.index(max(counts))] = 1, max(counts) - 1
    return counts


def plan_samples(n_per_class: int, seed: int, fractions: Sequence[float], hard_fraction: float) -> list[Sample]:
    """Assign each (class, index) a split by index order and a hard flag (an exact share per split)."""
    samples = []
    counts = split_counts(n_per_class, fractions)
    for c, label in enumerate(CLASSES):
        start = 0
        for s, (split, count) in enumerate(zip(SPLITS, counts, strict=True)):
            rng = np.random.default_rng(np.random.SeedSequence([seed, c, s, _HARD_TAG]))
            hard = set(rng.permutation(count)[: round(hard_fraction * count)].tolist())
            for j in range(count):
                index = start + j
                samples.append(Sample(f"{label.lower()}_{index:05d}", label, index, split, j in hard))
            start += count
    return samples


def sample_rng(seed: int, label: str, index: int) -> np.random.Generator:
    """The generator for one sample, independent of every other sample and of iteration order."""
    return np.random.default_rng(np.random.SeedSequence([seed, CLASSES.index(label), index]))


def _save(a: np.ndarray, path: Path) -> None:
    """Write a uint8 image, or a bool mask as 0/255, as an 8-bit grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8) * (255 if a.dtype == bool else 1)).save(path)


def write_sample(out: Path, sample: Sample, seed: int, size: int) -> None:
    """Draw one sample and write its image, lung mask and lesion mask."""
    phantom = draw_phantom(sample_rng(seed, sample.label, sample.index), sample.label, size, sample.hard)
    _save(phantom.image, out / sample.relpath())
    _save(phantom.lungs, out / "masks" / "lungs" / sample.relpath())
    _save(phantom.lesions, out / "masks" / "lesions" / sample.relpath())


def _command(args: argparse.Namespace) -> str:
    """The command line that regenerates this data set (the output path left out, for byte-identity)."""
    fractions = ",".join(f"{f:g}" for f in args.split_fractions)
    return (
        f"python scripts/demo/chest_phantoms.py --output-dir <this directory> --n-per-class {args.n_per_class} "
        f"--seed {args.seed} --size {args.size} --split-fractions {fractions} --hard-fraction {args.hard_fraction:g}"
    )


def _tally(samples: list[Sample]) -> dict[str, dict[str, int]]:
    return {s: {c: sum(x.split == s and x.label == c for x in samples) for c in CLASSES} for s in SPLITS}


def write_metadata(out: Path, args: argparse.Namespace, samples: list[Sample]) -> dict[str, dict[str, int]]:
    """Write ``manifest.json`` and ``README.txt``; return the counts per split and class."""
    counts, hard = _tally(samples), _tally([x for x in samples if x.hard])
    manifest = {
        "synthetic": True,
        "generator": "scripts/demo/chest_phantoms.py",
        "version": GENERATOR_VERSION,
        "args": {k: v for k, v in vars(args).items() if k not in ("output_dir", "workers")},
        "classes": list(CLASSES),
        "counts": counts,
        "hard_counts": hard,
        "images": [
            {**asdict(x), "path": x.relpath(), **{m: f"masks/{m}/{x.relpath()}" for m in ("lungs", "lesions")}}
            for x in samples
        ],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.txt").write_text(
        "SYNTHETIC DATA - NOT MEDICAL DATA.\n\n"
        "These are computer-generated phantoms that imitate frontal chest radiographs. They come from no\n"
        "patient, carry no clinical information and must not be used for any medical purpose.\n\n"
        f"Generator: scripts/demo/chest_phantoms.py version {GENERATOR_VERSION}\n"
        f"Command: {_command(args)}\nSeed: {args.seed}\n\n"
        "Layout: {split}/{class}/{id}.png; masks/lungs/... and masks/lesions/... at the same relative paths\n"
        "(0 = outside, 255 = inside). manifest.json lists every image with its split, class and hard flag.\n"
    )
    return counts


def split_fractions(text: str) -> tuple[float, float, float]:
    """An argparse type for ``train,val,test`` shares: non-negative, summing to 1 (``0,0,1``: a test set)."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from exc
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected train,val,test >= 0 summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    """The command line, with validated types and defaults shown in ``--help``."""
    parser = argparse.ArgumentParser(
        description="Generate SYNTHETIC chest-radiograph phantoms (COVID, Normal, Viral_Pneumonia) with masks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    required = {"required": True, "default": argparse.SUPPRESS}
    cli.add_output_dir(parser)
    add("--n-per-class", type=cli.positive_int, metavar="N", help="images per class, over all splits", **required)
    add("--seed", type=cli.non_negative_int, default=0, metavar="S", help="master seed, >= 0")
    add("--size", type=cli.int_range(32, 1024), default=128, metavar="PX", help="image side in pixels, >= 32")
    add("--split-fractions", type=split_fractions, default="0.7,0.15,0.15", metavar="TR,VA,TE", help="split shares")
    add("--hard-fraction", type=cli.unit_float, default=0.15, metavar="F",
        help="share of hard cases per split and class")
    add("--workers", type=cli.positive_int, default=1, metavar="N", help="processes drawing in parallel")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the data set described by ``argv``; print a JSON summary to stdout. Returns the exit code."""
    args = build_parser().parse_args(argv)
    samples = plan_samples(args.n_per_class, args.seed, args.split_fractions, args.hard_fraction)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    draw = functools.partial(write_sample, args.output_dir, seed=args.seed, size=args.size)
    with contextlib.ExitStack() as stack:  # every sample has its own seed: any number of workers, same bytes
        pool = stack.enter_context(ProcessPoolExecutor(args.workers)) if args.workers > 1 else None
        done = pool.map(draw, samples, chunksize=16) if pool else map(draw, samples)
        for _ in tqdm(done, total=len(samples), desc="phantoms", unit="img", disable=None):
            pass
    counts = write_metadata(args.output_dir, args, samples)
    hard = sum(s.hard for s in samples)
    print(json.dumps({"out": str(args.output_dir), "synthetic": True, "counts": counts, "hard": hard}))
    print(f"wrote {len(samples)} synthetic phantoms to {args.output_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
