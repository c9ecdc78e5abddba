"""Shared fixtures: tiny seeded checkpoints, their .mar files, and one real TorchServe per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import archive
from tests.harness import (
    ASSETS,
    CLASSES,
    TINY_SIZE,
    fusion_checkpoint,
    make_checkpoint,
    png_bytes,
    signed_checkpoint,
    torchserve,
)

__all__ = ["CLASSES", "TINY_SIZE", "make_checkpoint", "png_bytes"]  # until every module imports tests.harness

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
    """The session's cheap models, each batching up to 8 within 300 ms:

    - ``tiny``: resnet18, 3 classes (``CLASSES``), 64 px, random weights;
    - ``fusion``: image + clinical table (``SCHEMA``), single logit, 64 px (tests/assets/fusion_net.py);
    - ``signed``: single logit whose right map is known, 32 px (tests/assets/signed_net.py).
    """
    store = tmp_path_factory.mktemp("model_store")
    ckpts = tmp_path_factory.mktemp("session_ckpts")
    batching = ["--model-store", str(store), "--batch-size", "8", "--max-batch-delay", "300"]
    assert archive.main([str(tiny_checkpoint), "--name", "tiny", *batching]) == 0
    assert archive.main([str(fusion_checkpoint(ckpts)), "--name", "fusion", "--model-file",
                         str(ASSETS / "fusion_net.py"), *batching]) == 0
    assert archive.main([str(signed_checkpoint(ckpts)), "--name", "signed", "--model-file",
                         str(ASSETS / "signed_net.py"), *batching]) == 0
    return store


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_store: Path):
    """One real TorchServe for the session, serving every model of ``model_store`` (token auth on,
    loopback, free ports). Tests that need a server of their own say why."""
    with torchserve(model_store, tmp_path_factory.mktemp("torchserve")) as running:
        yield running
