"""Decoding and preprocessing, shared by the server, the trainer, the Gradio app and the scripts.

Images are decoded one way everywhere: EXIF orientation applied (as ``gr.Image(type="pil")`` does),
every mode converted to 8-bit RGB (16-bit and float greyscale rescaled, transparency composited on
black, CMYK and palettes converted), then resized to the model's square input without cropping.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from camserve.errors import InvalidRequest, PayloadTooLarge, UnsupportedImage

MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_PIXELS = 40_000_000  # decoded size; guards against decompression bombs


def decode_image(data: bytes, field: str = "data") -> Image.Image:
    """Decode image bytes into an RGB image, or raise a 4xx error naming ``field``.

    Everything that reads the file runs inside one guard: opening, the pixel bound (checked on the
    header, before any pixel is decoded), decoding, the EXIF orientation step and the mode conversion,
    so corrupt metadata is a 415 like corrupt pixels. Only the first frame of an animated or multi-page
    file is ever decoded (later frames are never read, whatever their number).

    Raises:
        InvalidRequest: The field is empty.
        PayloadTooLarge: Over ``MAX_IMAGE_BYTES`` bytes or ``MAX_PIXELS`` pixels.
        UnsupportedImage: The bytes are not an image PIL can decode.
    """
    if not data:
        raise InvalidRequest(f"field '{field}' is empty: send the image bytes (PNG, JPEG, BMP, TIFF...)")
    if len(data) > MAX_IMAGE_BYTES:
        raise PayloadTooLarge(f"field '{field}' has {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
            if img.width * img.height > MAX_PIXELS:
                raise PayloadTooLarge(
                    f"field '{field}' is {img.width}x{img.height} pixels; the limit is {MAX_PIXELS} pixels")
            img.load()
            return to_rgb(oriented(img, field))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"field '{field}' decodes to too many pixels ({str(exc)[:120]})") from exc
    except (PayloadTooLarge, UnsupportedImage):
        raise
    except Exception as exc:  # PIL raises many types for corrupt data (SyntaxError, OSError, struct.error...)
        raise UnsupportedImage(
            f"field '{field}' is not a decodable image ({type(exc).__name__}); "
            "send PNG, JPEG, BMP, TIFF, GIF or WebP bytes") from exc


def oriented(img: Image.Image, field: str = "data") -> Image.Image:
    """Apply the EXIF orientation (as ``gr.Image(type="pil")`` does); corrupt EXIF is a 415 naming it."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # struct.error, AttributeError, ValueError... from a malformed EXIF block
        raise UnsupportedImage(
            f"field '{field}' has corrupt EXIF metadata ({type(exc).__name__}); re-save the image without "
            "its EXIF block") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I") and arr.max(initial=0) > 255 else max(arr.max(initial=0), 1.0)
        if img.mode == "F" and arr.max(initial=0) <= 1.0:
            top = 1.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def input_tensor(img: Image.Image, input_size: int) -> torch.Tensor:
    """Resize (no crop) an RGB image to the model's square input, as a uint8 ``[3, S, S]`` tensor.

    The server batches these and normalises on the model's device (:func:`preprocess` is the same
    computation on the CPU, for the trainers and the tests).
    """
    resized = img.resize((input_size, input_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1)


def preprocess(img: Image.Image, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Resize (no crop) and normalise an RGB image into a ``[3, S, S]`` float tensor."""
    return normalise(input_tensor(img, input_size).float() / 255.0, mean, std)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``[3, S, S]`` or ``[N, 3, S, S]`` float32 images.

    The trainers call this on cached batches so training sees bit for bit what the server computes.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean_t) / std_t


def decode_mask(data: bytes, size: tuple[int, int], field: str = "mask") -> np.ndarray:
    """Decode a region-of-interest mask into a boolean array of ``size`` (width, height).

    Any image works: pixels brighter than half range (after greyscale conversion) are inside.
    """
    img = decode_image(data, field=field).convert("L")
    if img.size != size:
        img = img.resize(size, Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def blank_png(size: int = 8) -> bytes:
    """A tiny black PNG, for requests that only need the model's metadata."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size)).save(buf, format="PNG")
    return buf.getvalue()
