"""Colormaps, heatmaps and overlays, in RGB order throughout (no BGR anywhere), and their encoding.

Colormaps are matplotlib's own 256-level tables (the reference other tools draw with), read once and
cached. What the server sends is chosen for cost:

| image    | format                         | why                                                         |
|----------|--------------------------------|-------------------------------------------------------------|
| heatmap  | 8-bit palette PNG (colormap as palette) | lossless, ~6x cheaper to encode than an RGB PNG    |
| overlay  | JPEG q90 (default), WebP, or PNG | JPEG ~0.2 ms at 224 px vs ~11 ms for a default RGB PNG; |
|          |                                | PNG on demand is lossless (zlib level 1: size within 3 %)   |

Clients that draw their own images (the Gradio app, the analysis script) ask for ``images=none`` and
call :func:`render` on the returned ``cam``: the same functions, the same pixels.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from PIL import Image

from camserve.cam import upsample

JPEG_QUALITY = 90
WEBP_QUALITY = 85
PNG_LEVEL = 1  # zlib level of RGB PNGs: lossless whatever the level, and 3-4x faster than the default 6
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


_LUT_LOCK = threading.Lock()


def colormap_lut(name: str) -> np.ndarray:
    """A ``[256, 3]`` uint8 lookup table: matplotlib's colormap ``name`` (one of ``schema.COLORMAPS``).

    Read once (thread-safe: rendering threads may ask for the first time together) and cached.
    """
    with _LUT_LOCK:
        return _lut(name)


@cache
def _lut(name: str) -> np.ndarray:
    import matplotlib

    table = matplotlib.colormaps[name].resampled(256)(np.arange(256))[:, :3]
    lut = np.round(table * 255.0).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def display_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size with the longest side at most ``max_side``, aspect ratio kept (never upscaled)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def levels(cam_up: torch.Tensor) -> np.ndarray:
    """A [0, 1] map as 256 colour levels (uint8)."""
    return np.asarray((cam_up.numpy() * 255.0).round(), dtype=np.uint8)


def heatmap_image(cam_up: torch.Tensor, colormap: str) -> Image.Image:
    """Colour a [0, 1] map with a colormap (RGB)."""
    return Image.fromarray(colormap_lut(colormap)[levels(cam_up)], "RGB")


def heatmap_palette(cam_up: torch.Tensor, colormap: str) -> Image.Image:
    """The same heatmap as an 8-bit palette image: the colormap is the palette (lossless, cheap PNG)."""
    img = Image.fromarray(levels(cam_up), "L").convert("P")
    img.putpalette(colormap_lut(colormap).tobytes())
    return img


def blend(image: Image.Image, heatmap: Image.Image, alpha: float) -> Image.Image:
    """``(1 - alpha) * image + alpha * heatmap``."""
    return Image.blend(image.convert("RGB"), heatmap.convert("RGB"), alpha)


def shown_image(image: Image.Image, max_side: int) -> Image.Image:
    """The image at display size (aspect kept, never upscaled)."""
    size = display_size(image.width, image.height, max_side)
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


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
    shown = shown_image(image, max_side)
    cam_up = upsample(cam, shown.height, shown.width)
    heat = heatmap_image(cam_up, colormap)
    return heat, blend(shown, heat, alpha), cam_up


@dataclass(frozen=True)
class Encoded:
    """The images one explanation carries, as data URLs (``None`` where not asked for)."""

    heatmap: str | None
    overlay: str | None


def encode_images(shown: Image.Image, cam_up: torch.Tensor, colormap: str, alpha: float, images: str,
                  image_format: str) -> Encoded:
    """Encode what a request's ``images`` option asks for.

    Args:
        shown: The image at display size.
        cam_up: The normalised map upsampled to ``shown``'s size.
        colormap: One of ``schema.COLORMAPS``.
        alpha: Heatmap weight in the overlay.
        images: ``both``, ``heatmap``, ``overlay`` or ``none``.
        image_format: The overlay's format: ``jpeg``, ``webp`` or ``png``.
    """
    heat = heatmap_palette(cam_up, colormap) if images != "none" else None
    heatmap = to_data_url(heat, "png") if heat is not None and images in ("both", "heatmap") else None
    overlay = None
    if heat is not None and images in ("both", "overlay"):
        overlay = to_data_url(blend(shown, heat, alpha), image_format)
    return Encoded(heatmap, overlay)


def encode(image: Image.Image, fmt: str = "png") -> bytes:
    """Encode an image as ``png`` (palette images at zlib's default level, RGB at level 1), ``jpeg`` or ``webp``."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif fmt == "webp":
        image.convert("RGB").save(buf, format="WEBP", quality=WEBP_QUALITY, method=0)
    elif fmt == "png":
        image.save(buf, format="PNG", **({} if image.mode == "P" else {"compress_level": PNG_LEVEL}))
    else:
        raise ValueError(f"unknown image format {fmt!r}; use one of {', '.join(MIME)}")
    return buf.getvalue()


def to_data_url(image: Image.Image, fmt: str = "png") -> str:
    """A ``data:image/...;base64,...`` URL."""
    return f"data:{MIME[fmt]};base64," + base64.b64encode(encode(image, fmt)).decode("ascii")


def from_data_url(url: str) -> Image.Image:
    """Decode a data URL as returned in ``heatmap`` / ``overlay`` (any of the formats), as RGB."""
    _, _, payload = url.partition("base64,")
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
