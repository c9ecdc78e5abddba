"""Realistic benchmark inputs: smooth, radiograph-like greyscale images with texture, encoded as PNG.

Random-noise images flatter a benchmark twice: noise decodes and resizes like any image, but PNG
encodes it 2-3x faster than a real picture (zlib gives up early on incompressible rows) and its maps
are meaningless. These images have what X-rays and photographs have: large smooth regions, soft
edges, a few blobs, fine grain.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter


def realistic(size: int, seed: int) -> Image.Image:
    """A deterministic ``size`` x ``size`` RGB image (greyscale content)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.15 + 0.1 * yy  # exposure gradient
    for cx in (0.32, 0.68):  # two bright, soft-edged fields
        ell = ((xx - cx + rng.normal(0, 0.02)) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2
        img += 0.45 * np.clip(1.2 - ell, 0, 1) ** 0.7
    for _ in range(int(rng.integers(3, 8))):  # blobs
        bx, by, r = rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.8), rng.uniform(0.02, 0.08)
        img += rng.uniform(-0.15, 0.2) * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * r * r))
    for k in range(6):  # rib-like arcs
        img += 0.05 * np.exp(-(((yy - 0.25 - 0.09 * k) - 0.15 * (xx - 0.5) ** 2) / 0.012) ** 2)
    img += rng.normal(0, 0.02, img.shape)  # grain
    grey = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(1))
    return grey.convert("RGB")


def realistic_png(size: int, seed: int) -> bytes:
    """:func:`realistic`, encoded as PNG (what clients send)."""
    buf = io.BytesIO()
    realistic(size, seed).save(buf, format="PNG")
    return buf.getvalue()
