"""Request parsing, option validation and image decoding: every bad input names its field."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from camserve import imaging
from camserve.errors import InvalidRequest, PayloadTooLarge, UnsupportedImage
from camserve.parsing import parse_options, split_request
from camserve.render import colormap_lut, display_size, from_data_url, render, to_data_url
from tests.conftest import CLASSES, png_bytes


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_split_raw_multipart_and_json() -> None:
    img = png_bytes()
    assert split_request({"body": bytearray(img)}).image == img
    multi = split_request({"data": bytearray(img), "alpha": bytearray(b"0.2"), "mask": bytearray(img)})
    assert multi.fields == {"alpha": "0.2"} and multi.mask == img
    js = split_request({"body": {"data": "data:image/png;base64," + base64.b64encode(img).decode(), "topk": 2}})
    assert js.image == img and js.fields == {"topk": 2} and js.mask is None


@pytest.mark.parametrize("row,match", [
    ({"alpha": bytearray(b"0.3")}, "missing field 'data'"),
    ({"body": {"alpha": 0.3}}, "missing field 'data'"),
    ({"body": {"data": "%%%"}}, "field 'data' is not valid base64"),
    ({"body": {"data": 12}}, "field 'data' must be a base64 string"),
    ({"data": bytearray(b"x"), "colour": bytearray(b"red")}, "unknown field 'colour'"),
    ({"data": bytearray(b"x"), "target": bytearray(b"\xff\xfe")}, "field 'target' is not UTF-8"),
])
def test_split_errors(row: dict, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        split_request(row)


def test_options_defaults_and_values() -> None:
    opts = parse_options({}, CLASSES)
    assert (opts.target, opts.label, opts.topk, opts.explain, opts.colormap, opts.alpha, opts.max_side) == (
        None, None, None, "gradcam", "jet", 0.5, 512)
    opts = parse_options({"target": "viral_pneumonia", "label": "1", "topk": "9", "explain": "NONE",
                          "colormap": "viridis", "alpha": "0", "max_side": 64}, CLASSES)
    assert (opts.target, opts.label, opts.topk, opts.explain, opts.alpha, opts.max_side) == (2, 1, 3, "none", 0.0, 64)
    assert parse_options({"target": "auto", "label": 0}, CLASSES).label == 0


@pytest.mark.parametrize("fields,match", [
    ({"target": "Flu"}, "field 'target': unknown class 'Flu'; allowed: one of COVID, Normal, Viral_Pneumonia"),
    ({"label": "3"}, "field 'label': unknown class '3'"),
    ({"label": True}, "field 'label' must be a class name or index"),
    ({"topk": "0"}, "field 'topk' must be an integer at least 1, got '0'"),
    ({"topk": "two"}, "field 'topk' must be an integer"),
    ({"topk": 1.5}, "field 'topk' must be an integer"),
    ({"alpha": "1.5"}, r"field 'alpha' must be a number in \[0, 1\], got '1.5'"),
    ({"alpha": "nan"}, r"field 'alpha' must be a number in \[0, 1\], got 'nan'"),
    ({"alpha": "x"}, r"field 'alpha' must be a number"),
    ({"explain": "shap"}, "field 'explain': 'shap' is not allowed; use one of gradcam, gradcam\\+\\+, xgradcam"),
    ({"colormap": "rainbow"}, "field 'colormap': 'rainbow' is not allowed; use one of jet"),
    ({"max_side": "4096"}, "field 'max_side' must be an integer between 16 and 1024, got '4096'"),
])
def test_option_errors_name_the_field(fields: dict, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        parse_options(fields, CLASSES)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1", "I;16", "I", "F"])
def test_every_mode_decodes_to_rgb(mode: str) -> None:
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    if mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode in ("I", "F"):
        img = Image.fromarray(gray.astype(np.int32 if mode == "I" else np.float32)).convert(mode)
    else:
        img = Image.fromarray(gray, "L").convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "F", "I") else "PNG"
    out = imaging.decode_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (64, 16)
    if mode in ("L", "I;16", "I", "F", "RGBA", "LA", "P"):
        row = np.asarray(out)[0, :, 0].astype(int)
        assert abs(row[0] - 0) <= 2 and abs(row[-1] - 252) <= 3, f"{mode}: intensities must be kept, got {row[[0, -1]]}"


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = imaging.decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_bad_images() -> None:
    with pytest.raises(InvalidRequest, match="field 'data' is empty"):
        imaging.decode_image(b"")
    with pytest.raises(UnsupportedImage, match="field 'mask' is not a decodable image"):
        imaging.decode_image(b"GIF89a garbage", field="mask")
    with pytest.raises(UnsupportedImage):
        imaging.decode_image(png_bytes()[:60])  # truncated PNG
    with pytest.raises(PayloadTooLarge, match="limit is"):
        imaging.decode_image(b"\0" * (imaging.MAX_IMAGE_BYTES + 1))


def test_decompression_bomb_is_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imaging, "MAX_PIXELS", 100 * 100)
    with pytest.raises(PayloadTooLarge, match="pixels"):
        imaging.decode_image(encode(Image.new("L", (200, 200))))


def test_preprocess_resizes_without_crop_and_normalises() -> None:
    img = Image.new("RGB", (300, 100), (255, 0, 128))
    x = imaging.preprocess(img, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (3, 32, 32)
    assert x[0].mean().item() == pytest.approx(1.0) and x[1].mean().item() == pytest.approx(-1.0)


def test_render_keeps_aspect_ratio_and_colours() -> None:
    import torch
    cam = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    img = Image.new("RGB", (900, 300), (0, 0, 0))
    heat, overlay, cam_up = render(img, cam, "jet", 1.0, 300)
    assert heat.size == overlay.size == (300, 100) and cam_up.shape == (100, 300)
    pixels = np.asarray(overlay)
    assert tuple(pixels[0, -1]) == tuple(colormap_lut("jet")[255])  # peak, top-right: dark red
    assert pixels[0, -1, 0] > pixels[0, -1, 2]  # RGB order, not BGR
    assert display_size(100, 50, 512) == (100, 50)
    assert from_data_url(to_data_url(overlay)).size == (300, 100)
