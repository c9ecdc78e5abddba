"""Heatmaps and overlays drawn in the app from a response's maps, with the server's own functions.

The app asks the server for ``images=none`` and draws every picture here from the returned ``cam``
(``camserve.render.render``: the same upsampling, colormap and blending as the server), at display
size: small images are upscaled so that a 128 px input still fills its box. A new colormap, opacity,
scale or class is a re-render, never a new prediction.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from camserve.imaging import decode_image, to_rgb
from camserve.render import colormap_lut, render
from camserve.schema import COLORMAPS, Explanation

ImageInput = Image.Image | bytes
DISPLAY_SIDE = 512  # px: the longest side of every picture the explain view shows
BAR_STOPS = 12


def display_image(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """The image with its longest side at ``side`` px (aspect kept): larger ones shrunk, smaller ones
    upscaled (bilinear) so the outputs fill their boxes."""
    scale = side / max(image.size)
    size = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    return image if image.size == size else image.resize(size, Image.BILINEAR)


@dataclass(frozen=True)
class Map:
    """One class's map from a response.

    Attributes:
        label: The explained class.
        probability: The model's probability for it.
        cam: The map normalised to [0, 1] (feature-map resolution).
        cam_max: The map's raw maximum before normalisation.
        explanation: The server's explanation (focus score, faithfulness).
    """

    label: str
    probability: float
    cam: torch.Tensor
    cam_max: float
    explanation: Explanation

    @classmethod
    def of(cls, exp: Explanation, probabilities: dict[str, float]) -> Map:
        return cls(exp.target.label, float(probabilities.get(exp.target.label, 0.0)),
                   torch.tensor(exp.cam, dtype=torch.float32), float(exp.cam_max), exp)


@dataclass(frozen=True)
class Shown:
    """What the view draws from: the image at display size and every map of the answer."""

    image: Image.Image
    maps: tuple[Map, ...]

    def get(self, label: str) -> Map | None:
        return next((m for m in self.maps if m.label == label), None)

    def top(self) -> float:
        """The largest raw maximum among the maps: the top of the common scale."""
        return max((m.cam_max for m in self.maps), default=0.0)

    def scale(self, m: Map, same_scale: bool) -> float:
        """The factor a normalised map is drawn with: 1, or its maximum over the largest one."""
        top = self.top()
        return m.cam_max / top if same_scale and top > 0 else 1.0

    def render(self, m: Map, colormap: str, alpha: float, same_scale: bool = False) -> tuple[Image.Image, Image.Image]:
        """Heatmap and overlay of one map, as the server renders them (optionally on the common scale)."""
        if colormap not in COLORMAPS:
            raise ValueError(f"colormap must be one of {', '.join(COLORMAPS)}, got {colormap!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        cam = m.cam * self.scale(m, same_scale)
        heat, overlay, _ = render(self.image, cam, colormap, float(alpha), max(self.image.size))
        return heat, overlay


def colorbar(colormap: str, shown: Shown, maps: Sequence[tuple[str, Map]], same_scale: bool) -> str:
    """The colour bar's HTML: the colormap from 0 to the top of the scale, and each shown map's class
    probability and raw maximum (``cam_max``).

    Args:
        colormap: One of ``camserve.schema.COLORMAPS``.
        shown: The answer's maps.
        maps: ``(role, map)`` of each map on display, e.g. ``("Predicted", m)``.
        same_scale: Whether every map is drawn on the common scale.
    """
    lut = colormap_lut(colormap)
    stops = ", ".join(f"rgb{tuple(int(c) for c in lut[round(i * 255 / (BAR_STOPS - 1))])}"
                      for i in range(BAR_STOPS))
    if same_scale:
        top = max(shown.maps, key=lambda m: m.cam_max)
        scale = (f"Same scale for every class: the top of the bar is the largest map maximum, "
                 f"{top.cam_max:.3g} ({html.escape(top.label)}).")
    else:
        scale = "Each map is stretched to its own maximum (tick the same-scale box to compare classes)."
    rows = "".join(f"<li><b>{html.escape(role)}: {html.escape(m.label)}</b>, probability {m.probability:.1%}, "
                   f"map maximum (cam_max) {m.cam_max:.3g}</li>" for role, m in maps)
    return (f'<div class="colorbar" role="img" aria-label="colour scale {html.escape(colormap)}, low to high">'
            f'<div class="bar" style="background: linear-gradient(to right, {stops})"></div>'
            f'<div class="ends"><span>0</span><span>map value</span><span>max</span></div></div>'
            f'<p class="scale">{scale}</p><ul class="maps">{rows}</ul>')


def as_rgb(image: ImageInput) -> Image.Image:
    """An RGB image decoded the way the server decodes it (EXIF orientation, any mode to 8-bit RGB).

    Raises:
        UnsupportedImage: The bytes are not an image (also ``PayloadTooLarge``, ``InvalidRequest``).
    """
    if isinstance(image, (bytes, bytearray)):
        return decode_image(bytes(image))
    return to_rgb(image)


def encode(image: ImageInput) -> bytes:
    """Bytes to send: encoded images go as they are, PIL images as lossless PNG."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    buf = io.BytesIO()
    to_rgb(image).save(buf, format="PNG")
    return buf.getvalue()
