"""Colormaps, heatmaps and overlays, in RGB order throughout (no BGR anywhere)."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from camserve.cam import upsample

# Piecewise-linear colormaps (RGB at evenly spaced stops), close to matplotlib's, so the server does
# not import matplotlib.
_STOPS: dict[str, list[tuple[int, int, int]]] = {
    "jet": [(0, 0, 128), (0, 0, 255), (0, 128, 255), (0, 255, 255), (128, 255, 128),
            (255, 255, 0), (255, 128, 0), (255, 0, 0), (128, 0, 0)],
    "hot": [(11, 0, 0), (96, 0, 0), (180, 0, 0), (255, 10, 0), (255, 96, 0), (255, 180, 0),
            (255, 255, 11), (255, 255, 133), (255, 255, 255)],
    "viridis": [(68, 1, 84), (72, 36, 117), (59, 82, 139), (44, 114, 142), (33, 145, 140),
                (39, 173, 129), (94, 201, 98), (170, 220, 50), (253, 231, 37)],
    "inferno": [(0, 0, 4), (31, 12, 72), (87, 16, 110), (138, 34, 106), (188, 55, 84),
                (229, 92, 48), (249, 142, 9), (245, 219, 76), (252, 255, 164)],
    "gray": [(0, 0, 0), (255, 255, 255)],
}


def colormap_lut(name: str) -> np.ndarray:
    """A ``[256, 3]`` uint8 lookup table for one of ``schema.COLORMAPS``."""
    stops = np.asarray(_STOPS[name], dtype=np.float64)
    xs = np.linspace(0.0, 1.0, len(stops))
    grid = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(grid, xs, stops[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def display_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size with the longest side at most ``max_side``, aspect ratio kept (never upscaled)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def heatmap_image(cam_up: torch.Tensor, colormap: str) -> Image.Image:
    """Colour a [0, 1] map with a colormap."""
    levels = (cam_up.numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(colormap_lut(colormap)[levels], "RGB")


def blend(image: Image.Image, heatmap: Image.Image, alpha: float) -> Image.Image:
    """``(1 - alpha) * image + alpha * heatmap``."""
    return Image.blend(image.convert("RGB"), heatmap, alpha)


def render(image: Image.Image, cam: torch.Tensor, colormap: str, alpha: float, max_side: int
           ) -> tuple[Image.Image, Image.Image, torch.Tensor]:
    """Heatmap and overlay at display size, plus the upsampled map used for them.

    Args:
        image: The original RGB image (any aspect ratio).
        cam: Normalised ``[h, w]`` map covering the whole image (no crop in preprocessing).
        colormap: One of ``schema.COLORMAPS``.
        alpha: Heatmap weight in the overlay, in [0, 1].
        max_side: Longest side of the returned images.
    """
    size = display_size(image.width, image.height, max_side)
    shown = image if image.size == size else image.resize(size, Image.BILINEAR)
    cam_up = upsample(cam, size[1], size[0])
    heat = heatmap_image(cam_up, colormap)
    return heat, blend(shown, heat, alpha), cam_up


def to_data_url(image: Image.Image) -> str:
    """A ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def from_data_url(url: str) -> Image.Image:
    """Decode a PNG data URL (as returned in ``heatmap`` / ``overlay``)."""
    _, _, payload = url.partition("base64,")
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
