"""Where a map looks, against ground-truth masks: pointing game, focus share, mask outlines.

The maps are the server's ``cam`` (feature-map resolution, [0, 1], covering the whole image), upsampled
bilinearly to the mask with the server's own :func:`camserve.cam.upsample`, so a score computed here
equals what the server would report for the same mask.

- **Pointing game** (Zhang et al. 2016): a hit when the map's peak lies in the lesion mask dilated by
  ``dilate_px`` pixels (a Euclidean disc, a tolerance for the map's coarse resolution). A map with no
  positive evidence is a miss, so the figure is never flattered.
- **Focus**: the share of the upsampled map's energy inside a mask (the server's ``focus_score``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from camserve.cam import upsample

DEFAULT_DILATE_PX = 4


def disc(radius: int) -> np.ndarray:
    """Boolean ``(2r+1, 2r+1)`` Euclidean disc: offsets with ``dy**2 + dx**2 <= r**2``."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return np.asarray(yy**2 + xx**2 <= radius**2)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary dilation of ``mask`` by a disc of radius ``px`` (pixels outside the image count as False)."""
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
    """A feature-map-resolution map, bilinearly upsampled to ``height x width`` (the server's ``upsample``)."""
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


def outline(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The boundary pixels of ``mask`` resized (nearest) to ``size`` = ``(width, height)``: inside pixels
    with a 4-neighbour outside. A boolean ``[height, width]`` array."""
    small = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, "L")
    inside = np.asarray(small.resize(size, Image.Resampling.NEAREST)) > 127
    padded = np.pad(inside, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.asarray(inside & ~interior)


def draw_outline(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """A copy of ``image`` with the outline of ``mask`` (any resolution) painted in ``colour``."""
    rgb = np.array(image.convert("RGB"))
    rgb[outline(mask, image.size)] = colour
    return Image.fromarray(rgb, "RGB")
