"""Images of the error cards, rendered here from the server's maps (the server sends no images).

An error's card shows the image, the map of the predicted class and the map of the true class side by
side (both maps come from one request: ``target=PRED,TRUE``), each overlay rendered with
:func:`camserve.render.render` from the answer's ``cam``, exactly as the server would have drawn it.
Masks are outlined on all three: the region of interest (``--masks-dir``) in white, the lesion
(``--lesion-masks``) in magenta.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from camserve.analysis.localisation import draw_outline
from camserve.render import render
from camserve.schema import Explanation

ROI_COLOUR = (255, 255, 255)
LESION_COLOUR = (255, 0, 255)
CARD_SIDE = 320  # longest side of a card's images in report.html


@dataclass(frozen=True)
class Masks:
    """An image's masks at its own resolution (boolean ``[H, W]``), when it has them."""

    roi: np.ndarray | None = None
    lesion: np.ndarray | None = None

    def outline(self, image: Image.Image) -> Image.Image:
        """``image`` with the outlines of the masks it has (lesion on top)."""
        for mask, colour in ((self.roi, ROI_COLOUR), (self.lesion, LESION_COLOUR)):
            if mask is not None and mask.any():
                image = draw_outline(image, mask, colour)
        return image


def overlay(image: Image.Image, explanation: Explanation, colormap: str, alpha: float, max_side: int) -> Image.Image:
    """The overlay of one map on the image, at most ``max_side`` pixels a side (aspect ratio kept)."""
    cam = torch.as_tensor(np.asarray(explanation.cam, dtype=np.float32))
    return render(image.convert("RGB"), cam, colormap, alpha, max_side)[1]


def card_images(image: Image.Image, maps: Sequence[Explanation], masks: Masks, colormap: str, alpha: float,
                max_side: int) -> list[Image.Image]:
    """The image and one overlay per map, all the same size, with the masks outlined."""
    layers = [overlay(image, exp, colormap, alpha, max_side) for exp in maps]
    size = layers[0].size if layers else _fit(image.size, max_side)
    shown = image.convert("RGB").resize(size, Image.Resampling.BILINEAR) if image.size != size else image.convert("RGB")
    return [masks.outline(im) for im in (shown, *layers)]


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def thumbnail(image: Image.Image, max_side: int = 192) -> Image.Image:
    """A copy at most ``max_side`` pixels a side (aspect ratio kept)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return thumb


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    """``PNG`` (lossless) or ``JPEG`` (quality 88) bytes."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    return buf.getvalue()


def panel(images: Sequence[tuple[str, Image.Image]], caption: str, min_side: int = 224) -> Image.Image:
    """Titled images side by side under a caption; small images are enlarged with nearest-neighbour
    sampling (pixels stay visible, nothing is smoothed in)."""
    first = images[0][1]
    scale = max(1, -(-min_side // max(first.size)))
    size = (first.width * scale, first.height * scale)
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    band, gap = 36, 4
    width = max(len(images) * (size[0] + gap) - gap, int(measure.textlength(caption, font=font)) + 8)
    out = Image.new("RGB", (width, size[1] + band), "white")
    draw = ImageDraw.Draw(out)
    draw.text((4, 4), caption, fill="black", font=font)
    for k, (title, im) in enumerate(images):
        x = k * (size[0] + gap)
        out.paste(im.convert("RGB").resize(size, Image.Resampling.NEAREST), (x, band))
        draw.text((x + 2, 20), title, fill="black", font=font)
    return out


def caption(true: str, pred: str, confidence: float, extra: Sequence[str] = ()) -> str:
    return "  ".join([f"true {true} -> predicted {pred} ({confidence:.2f})", *extra])
