"""A regression corpus of named bad (and odd but valid) requests for an image-only 3-class model.

Each case says how it is sent (multipart fields, a raw body, a JSON body, headers, route) and what must
come back: the status and a piece of the message. The unit layer runs the rows through the handler with
a mock context; the integration layer sends them all to a real TorchServe in one burst.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

# EXIF blocks found by fuzzing Pillow's exif_transpose: struct.error and AttributeError respectively.
EXIF_STRUCT_ERROR = bytes.fromhex(
    "4578696600004d4d002a000000080006011c00020000000700000056011200030000000100060000011a0005000000010000005e"
    "0128000300000001000200000131000200000003737700008769000400000001000000660000000043926d6572610000000000480000"
    "00010002900300020000001400000084a0020003000000010010000000000000323032303a30313a30312030303a30303a303000")
EXIF_ATTRIBUTE_ERROR = bytes.fromhex(
    "4578696600004d4d002a000000080006010f00020000000700000056011200030000000100060000010f0005000000010000005e"
    "0128000300000001000200003631000200000003737700008769000400000001000000660000000043616d6572610000000000480000"
    "00010002900300020000001400000084a0020003000000010010000000000000323032302d30313a30312030303a30303a303000")


def encoded(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def smooth(size: tuple[int, int] = (80, 64)) -> Image.Image:
    """A smooth gradient image (a realistic input: noise compresses and decodes atypically)."""
    w, h = size
    return Image.linear_gradient("L").resize((w, h)).convert("RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels and whose data is a few zero rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animated_gif(frames: int = 300) -> bytes:
    images = [Image.new("P", (64, 64), i % 256) for i in range(frames)]
    return encoded(images[0], "GIF", save_all=True, append_images=images[1:], duration=10)


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass(frozen=True)
class Case:
    """One request: ``fields`` multipart (bytes values), or ``raw`` body, or ``json_body``."""

    name: str
    status: int
    message: str = ""  # a substring the error message must contain (case-sensitive)
    fields: dict[str, bytes] | None = None
    raw: bytes | None = None
    json_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    route: str = "predictions"
    content_type: str = "application/json"

    def row(self) -> dict[str, Any]:
        """The row TorchServe would hand the handler (JSON bodies arrive decoded, as TorchServe does)."""
        if self.fields is not None:
            return {k: bytearray(v) for k, v in self.fields.items()}
        if self.raw is not None:
            return {"body": bytearray(self.raw)}
        text = self.json_body if isinstance(self.json_body, str) else json.dumps(self.json_body)
        try:
            return {"body": json.loads(text)}
        except (ValueError, RecursionError):
            return {"body": bytearray(text.encode())}


GOOD = encoded(smooth())
GOOD_B64 = base64.b64encode(GOOD).decode()


def form(**fields: bytes | str) -> dict[str, bytes]:
    out = {"data": GOOD}
    out.update({k: v.encode() if isinstance(v, str) else v for k, v in fields.items()})
    return out


BAD: list[Case] = [
    # images
    Case("empty_image", 400, "field 'data' is empty", fields={"data": b""}),
    Case("text_as_image", 415, "field 'data' is not a decodable image", fields={"data": b"hello, not an image"}),
    Case("truncated_png", 415, "not a decodable image", fields={"data": GOOD[:80]}),
    Case("truncated_jpeg", 415, "not a decodable image", fields={"data": encoded(smooth(), "JPEG")[:300]}),
    Case("png_bad_crc", 415, "not a decodable image", fields={"data": GOOD[:29] + b"\0\0\0\0" + GOOD[33:]}),
    Case("gif_garbage", 415, "not a decodable image", fields={"data": b"GIF89a" + b"\x01" * 200}),
    Case("svg", 415, "not a decodable image", fields={"data": b'<svg xmlns="http://www.w3.org/2000/svg"/>'}),
    Case("pdf", 415, "not a decodable image", fields={"data": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"}),
    Case("truncated_webp", 415, "not a decodable image", fields={"data": encoded(smooth(), "WEBP")[:40]}),
    Case("bmp_header_only", 415, "not a decodable image", fields={"data": encoded(smooth(), "BMP")[:60]}),
    Case("zero_width_png", 415, "not a decodable image", fields={"data": png_header_only(0, 10)}),
    Case("pixel_bomb_png", 413, "pixels", fields={"data": png_header_only(8000, 8000)}),
    Case("decompression_bomb_png", 413, "pixels", fields={"data": png_header_only(30000, 30000)}),
    Case("image_over_16_mib", 413, "field 'data' has", fields={"data": b"\x89PNG" + b"\0" * (16 * 1024 * 1024)}),
    Case("jpeg_exif_struct_error", 415, "corrupt EXIF",
         fields={"data": encoded(smooth(), "JPEG", exif=EXIF_STRUCT_ERROR)}),
    Case("jpeg_exif_attribute_error", 415, "corrupt EXIF",
         fields={"data": encoded(smooth(), "JPEG", exif=EXIF_ATTRIBUTE_ERROR)}),
    Case("mask_not_an_image", 415, "field 'mask' is not a decodable image", fields=form(mask=b"not a mask")),
    Case("mask_bomb", 413, "pixels", fields=form(mask=png_header_only(9000, 9000))),
    Case("raw_empty_body", 400, "field 'data' is empty", raw=b""),
    Case("raw_text_body", 415, "not a decodable image", raw=b"just some text"),
    # fields
    Case("missing_data", 400, "missing field 'data'", fields={"alpha": b"0.3"}),
    Case("unknown_field", 400, "unknown field 'colour'", fields=form(colour="red")),
    Case("unknown_field_huge_name", 400, "unknown field", fields=form(**{"x" * 5000: "1"})),
    Case("field_not_utf8", 400, "field 'target' is not UTF-8", fields=form(target=b"\xff\xfe")),
    Case("target_superscript_digit", 400, "field 'target': unknown class", fields=form(target="\u00b2")),
    Case("target_4000_digits", 400, "field 'target': unknown class", fields=form(target="7" * 4000)),
    Case("target_5000_digits", 400, "field 'target' is 5000 bytes long", fields=form(target="7" * 5000)),
    Case("target_64_kib", 400, "field 'target' is 65536 bytes long", fields=form(target="7" * 65536)),
    Case("target_negative", 400, "field 'target': unknown class '-1'", fields=form(target="-1")),
    Case("target_unknown_class", 400, "unknown class 'Flu'", fields=form(target="Flu")),
    Case("target_repeated", 400, "names a class twice", fields=form(target="COVID,covid")),
    Case("target_list_too_long", 400, "the limit is 32", fields=form(target=",".join(["COVID"] * 40))),
    Case("target_fullwidth_digit", 400, "unknown class", fields=form(target="\uff11")),
    Case("label_out_of_range", 400, "field 'label': unknown class '3'", fields=form(label="3")),
    Case("label_boolean_text", 400, "field 'label': unknown class 'true'", fields=form(label="true")),
    Case("topk_zero", 400, "field 'topk' must be an integer", fields=form(topk="0")),
    Case("topk_negative", 400, "field 'topk' must be an integer", fields=form(topk="-3")),
    Case("topk_fraction", 400, "field 'topk' must be an integer", fields=form(topk="1.5")),
    Case("topk_20_digits", 400, "field 'topk' must be an integer", fields=form(topk="9" * 20)),
    Case("topk_arabic_digit", 400, "field 'topk' must be an integer", fields=form(topk="\u0663")),
    Case("alpha_nan", 400, "field 'alpha' must be a number in [0, 1]", fields=form(alpha="nan")),
    Case("alpha_inf", 400, "field 'alpha' must be a number in [0, 1]", fields=form(alpha="inf")),
    Case("alpha_negative", 400, "field 'alpha' must be a number in [0, 1]", fields=form(alpha="-0.1")),
    Case("alpha_overflow", 400, "field 'alpha' must be a number in [0, 1]", fields=form(alpha="1e309")),
    Case("alpha_text", 400, "field 'alpha' must be a number in [0, 1]", fields=form(alpha="half")),
    Case("max_side_too_large", 400, "field 'max_side' must be an integer between 16 and 1024",
         fields=form(max_side="4096")),
    Case("max_side_too_small", 400, "field 'max_side'", fields=form(max_side="8")),
    Case("explain_unknown", 400, "field 'explain': 'shap' is not allowed", fields=form(explain="shap")),
    Case("colormap_unknown", 400, "field 'colormap': 'rainbow' is not allowed", fields=form(colormap="rainbow")),
    Case("images_unknown", 400, "field 'images'", fields=form(images="some")),
    Case("image_format_unknown", 400, "field 'image_format'", fields=form(image_format="gif")),
    Case("faithfulness_not_boolean", 400, "field 'faithfulness' must be true or false",
         fields=form(faithfulness="maybe")),
    Case("clinical_on_image_model", 400, "this model takes no clinical fields",
         fields=form(clinical='{"age": 61}')),
    Case("clinical_nested_5000", 400, "JSON nested", fields=form(clinical=deep_json(5000))),
    Case("clinical_nested_100000", 413, "bytes of JSON", fields=form(clinical=deep_json(100000))),
    Case("clinical_not_json", 400, "field 'clinical' is not valid JSON", fields=form(clinical="{age: 61")),
    Case("clinical_array", 400, "field 'clinical' must be a JSON object", fields=form(clinical="[1, 2]")),
    Case("clinical_100_kib", 413, "field 'clinical' is", fields=form(clinical='{"a": "' + "x" * 100_000 + '"}')),
    # JSON bodies
    Case("json_malformed", 400, "the request body is not valid JSON", json_body='{"data": "abc"'),
    Case("json_data_not_base64", 400, "field 'data' is not valid base64", json_body={"data": "%%%"}),
    Case("json_data_number", 400, "field 'data' must be a base64 string", json_body={"data": 12}),
    Case("json_nested_100000", 400, "JSON nested", json_body='{"data": ' + deep_json(100000) + "}"),
    Case("json_array_body", 400, "must be image bytes, multipart form data or a JSON object", json_body=[1, 2]),
    Case("json_topk_boolean", 400, "field 'topk' must be an integer", json_body={"data": GOOD_B64, "topk": True}),
    Case("json_topk_nan", 400, "field 'topk' must be an integer",
         json_body='{"data": "' + GOOD_B64 + '", "topk": NaN}'),
    Case("json_target_huge_int", 400, "out of range", json_body={"data": GOOD_B64, "target": 10**30}),
    Case("json_alpha_list", 400, "field 'alpha' must be a single value", json_body={"data": GOOD_B64, "alpha": [0.5]}),
    Case("json_option_object", 400, "field 'colormap' must be a single value",
         json_body={"data": GOOD_B64, "colormap": {"name": "jet"}}),
    Case("json_unknown_field", 400, "unknown field 'colour'", json_body={"data": GOOD_B64, "colour": "red"}),
    Case("json_empty_object", 400, "missing field 'data'", json_body={}),
    Case("json_mask_number", 400, "field 'mask' must be a base64 string", json_body={"data": GOOD_B64, "mask": 3}),
    # routes
    Case("explanations_with_explain_none", 400, "/explanations always explains", fields=form(explain="none"),
         route="explanations"),
]

# Odd but valid: each must answer 200 with a prediction.
ODD: list[Case] = [
    Case("describe_header_on_prediction", 200, fields=form(), headers={"describe": "True"}),
    Case("animated_gif_300_frames", 200, fields={"data": animated_gif(300)}),
    Case("one_pixel_image", 200, fields={"data": encoded(Image.new("RGB", (1, 1), (9, 9, 9)))}),
    Case("tall_thin_image", 200, fields={"data": encoded(smooth((4, 900)))}),
    Case("empty_mask_is_no_mask", 200, fields=form(mask=b"")),
    Case("raw_png_body", 200, raw=GOOD),
    Case("json_body_with_options", 200, json_body={"data": "data:image/png;base64," + GOOD_B64, "topk": 2,
                                                   "target": "all", "images": "none"}),
]
