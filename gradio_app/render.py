"""Local re-rendering of a heatmap and overlay from a response's ``cam``, with the server's own functions.

The response's ``cam`` is the normalised Grad-CAM at feature-map resolution; upsampling, colouring and
blending it with the displayed image (``camserve.render.render``) reproduces what the server would send
for another colormap or alpha, without a new prediction.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image

from camserve.imaging import decode_image, to_rgb
from camserve.render import display_size, render
from camserve.schema import COLORMAPS

ImageInput = Image.Image | bytes


@dataclass(frozen=True)
class Shown:
    """What one explanation needs to be re-rendered: the displayed image and its normalised map."""

    image: Image.Image
    cam: torch.Tensor
    max_side: int

    @classmethod
    def of(cls, original: Image.Image, cam: list[list[float]], max_side: int) -> Shown:
        """Keep the image at display size (what ``render`` resizes it to anyway) and the map."""
        size = display_size(original.width, original.height, max_side)
        shown = original if original.size == size else original.resize(size, Image.BILINEAR)
        return cls(shown, torch.tensor(cam, dtype=torch.float32), max_side)

    def render(self, colormap: str, alpha: float) -> tuple[Image.Image, Image.Image]:
        """Heatmap and overlay for a colormap and alpha, as the server renders them."""
        if colormap not in COLORMAPS:
            raise ValueError(f"colormap must be one of {', '.join(COLORMAPS)}, got {colormap!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        heat, overlay, _ = render(self.image, self.cam, colormap, float(alpha), self.max_side)
        return heat, overlay


def as_rgb(image: ImageInput) -> Image.Image:
    """An RGB image decoded the way the server decodes it (EXIF orientation, any mode to 8-bit RGB)."""
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
