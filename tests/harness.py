"""Shared test helpers: tiny seeded checkpoints and images, a mock TorchServe context, and a real
TorchServe in a temp dir (``torchserve``: ``scripts/torchserve_local.running``, free loopback ports,
token auth on, the shipped config so the tests exercise the security settings users get).

Test modules import helpers from here (never from one another).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import yaml
from PIL import Image

from camserve.tabular import TabularSchema
from scripts.torchserve_local import REPO, Server, free_port
from scripts.torchserve_local import running as torchserve

__all__ = ["REPO", "Server", "free_port", "torchserve"]  # the local TorchServe, for the tests

ASSETS = Path(__file__).parent / "assets"
CLASSES = ["COVID", "Normal", "Viral_Pneumonia"]
TINY_SIZE = 64
SCHEMA = json.loads((ASSETS / "thyroid_schema.json").read_text())
CLINICAL = {"composition": "solid", "echogenicity": "hypoechoic", "margins": "irregular",
            "calcifications": "micro", "sex": "F", "age": "61"}


def make_checkpoint(path: Path, arch: str = "resnet18", classes: list[str] = CLASSES, seed: int = 0,
                    input_size: int = TINY_SIZE, **extra: Any) -> Path:
    """A randomly initialised, self-describing checkpoint (camserve's layout)."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(classes))
    torch.save({"state_dict": model.state_dict(), "arch": arch, "class_names": classes,
                "input_size": input_size, **extra}, path)
    return path


def signed_checkpoint(tmp: Path, tabular_weight: float = 0.0) -> Path:
    """A single-logit model whose right map is known (tests/assets/signed_net.py)."""
    from tests.assets.signed_net import SignedNet
    path = tmp / "signed.pt"
    torch.save({"state_dict": SignedNet().state_dict(), "class_names": ["benign", "malignant"], "input_size": 32,
                "model_args": {"tabular_weight": tabular_weight}}, path)
    return path


def fusion_checkpoint(tmp: Path) -> Path:
    """An image + clinical-table model (tests/assets/fusion_net.py) whose tabular branch matters."""
    from tests.assets.fusion_net import FusionNet
    torch.manual_seed(0)
    width = TabularSchema.from_dict(SCHEMA).width
    model = FusionNet(width)
    with torch.no_grad():
        model.head.weight[0, 512:] = 3.0
    path = tmp / "fusion.pt"
    torch.save({"state_dict": model.state_dict(), "class_names": ["benign", "malignant"], "input_size": 64,
                "target_layer": "cnn.layer4", "model_args": {"tabular_width": width}, "tabular": SCHEMA}, path)
    return path


def png_bytes(size: tuple[int, int] = (96, 72), seed: int = 0, mode: str = "RGB") -> bytes:
    """A random-noise image, encoded as PNG."""
    gen = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def red_left_blue_right(size: int = 64) -> bytes:
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:, : size // 2, 0] = 255
    arr[:, size // 2:, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def unpack_mar(mar: Path, dest: Path) -> Path:
    """Extract a .mar (a zip) the way TorchServe lays out a model directory."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(dest)
    return dest


@dataclass
class MockContext:
    """What the handler uses of ``ts.context.Context``, read from an unpacked .mar."""

    model_dir: Path
    headers: list[dict[str, str]] | None = None
    status: dict[int, tuple[int, str]] = field(default_factory=dict)
    content_types: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.manifest = json.loads((self.model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        self.system_properties = {"model_dir": str(self.model_dir), "gpu_id": None, "batch_size": 8}
        self.model_yaml_config = yaml.safe_load((self.model_dir / "model-config.yaml").read_text())

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.headers[idx].get(key) if self.headers and idx < len(self.headers) else None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value
