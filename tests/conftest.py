"""Shared fixtures: tiny seeded checkpoints, their .mar files, and one real TorchServe per session."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from scripts import archive
from tests.harness import torchserve

CLASSES = ["COVID", "Normal", "Viral_Pneumonia"]
TINY_SIZE = 64


def make_checkpoint(path: Path, arch: str = "resnet18", classes: list[str] = CLASSES, seed: int = 0,
                    input_size: int = TINY_SIZE, **extra) -> Path:
    """A randomly initialised, self-describing checkpoint (layout (a))."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=len(classes))
    torch.save({"state_dict": model.state_dict(), "arch": arch, "class_names": classes,
                "input_size": input_size, **extra}, path)
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


LAYERS = ("integration", "browser", "train")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of no slower layer is a unit test (``make test-fast`` runs those)."""
    for item in items:
        if not any(item.get_closest_marker(m) for m in LAYERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """A model store with ``tiny`` (resnet18, 3 classes, 64 px), batching up to 8 within 300 ms."""
    store = tmp_path_factory.mktemp("model_store")
    assert archive.main([str(tiny_checkpoint), "--name", "tiny", "--model-store", str(store),
                         "--batch-size", "8", "--max-batch-delay", "300"]) == 0
    return store


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_store: Path):
    """One real TorchServe for the session (token auth on, loopback, free ports)."""
    with torchserve(model_store, tmp_path_factory.mktemp("torchserve")) as running:
        yield running
