"""Checkpoint layouts, archive-time errors, and the .mar's handler importing from its own copy of the core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from camserve.checkpoint import load_checkpoint, save_checkpoint
from camserve.errors import CheckpointError
from scripts import archive
from tests.conftest import CLASSES, make_checkpoint


def state_dict(arch: str = "resnet18", n: int = 3) -> dict:
    torch.manual_seed(0)
    return torchvision.models.get_model(arch, weights=None, num_classes=n).state_dict()


def test_self_describing_layout(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "a.pt", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2], target_layer="layer3")
    model, spec = load_checkpoint(path)
    assert spec.arch == "resnet18" and list(spec.class_names) == CLASSES and spec.input_size == 64
    assert spec.mean == (0.5, 0.5, 0.5) and spec.target_layer == "layer3" and not model.training


@pytest.mark.parametrize("prefix", ["backbone.", "module.", "_orig_mod.", "module.backbone."])
@pytest.mark.parametrize("arch_key", ["model_name", "arch"])
def test_seed_000_layout_with_prefixes(tmp_path: Path, prefix: str, arch_key: str) -> None:
    sd = {prefix + k: v for k, v in state_dict().items()}
    torch.save({"model_state_dict": sd, "class_names": CLASSES, arch_key: "resnet18", "epoch": 3}, tmp_path / "b.pt")
    model, spec = load_checkpoint(tmp_path / "b.pt")
    torch.testing.assert_close(model.fc.weight, state_dict()["fc.weight"])
    assert spec.target_layer == "layer4" and spec.input_size == 224


def test_bare_state_dict_needs_flags(tmp_path: Path) -> None:
    torch.save(state_dict(), tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="--arch"):
        load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="--classes"):
        load_checkpoint(tmp_path / "c.pt", arch="resnet18")
    _, spec = load_checkpoint(tmp_path / "c.pt", arch="resnet18", class_names=["x", "y", "z"])
    assert spec.class_names == ("x", "y", "z")


def test_flags_override_metadata(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "a.pt")
    _, spec = load_checkpoint(path, class_names=["p", "q", "r"], input_size=96, target_layer="layer3.1")
    assert spec.class_names == ("p", "q", "r") and spec.input_size == 96 and spec.target_layer == "layer3.1"


def test_single_logit_head_takes_two_names(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "bin.pt", classes=["benign", "malignant"])
    sd = state_dict(n=1)
    torch.save({"state_dict": sd, "arch": "resnet18", "class_names": ["benign", "malignant"]}, path)
    _, spec = load_checkpoint(path)
    assert spec.single_logit and spec.num_outputs == 1


@pytest.mark.parametrize("case,match", [
    ("missing_keys", "missing keys: layer4"),
    ("unexpected_keys", "unexpected keys: extra.weight"),
    ("class_count", "head has 3 outputs but 2 class names"),
    ("unknown_arch", "unknown arch 'resnet9000'"),
    ("wrong_arch", "do not fit a resnet50"),
    ("full_model", "pickled Python objects"),
    ("bad_layer", "target layer 'layer9' does not exist"),
    ("not_a_file", "not a readable torch checkpoint"),
    ("duplicate_names", "unique"),
])
def test_archive_time_errors_say_what_to_do(tmp_path: Path, case: str, match: str,
                                            capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.pt"
    sd = state_dict()
    meta = {"arch": "resnet18", "class_names": CLASSES}
    flags: list[str] = []
    if case == "missing_keys":
        sd = {k: v for k, v in sd.items() if not k.startswith("layer4")}
    elif case == "unexpected_keys":
        sd["extra.weight"] = torch.zeros(2)
    elif case == "class_count":
        meta["class_names"] = ["a", "b"]
    elif case == "unknown_arch":
        meta["arch"] = "resnet9000"
    elif case == "wrong_arch":
        meta["arch"] = "resnet50"
    elif case == "bad_layer":
        flags = ["--target-layer", "layer9"]
    elif case == "duplicate_names":
        meta["class_names"] = ["a", "a", "b"]
    if case == "full_model":
        torch.save(torchvision.models.resnet18(num_classes=3), path)
    elif case == "not_a_file":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save({"state_dict": sd, **meta}, path)
    assert archive.main([str(path), "--name", "bad", "--model-store", str(tmp_path / "store"), *flags]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "store" / "bad.mar").exists()


def test_archive_writes_config_and_unpacked_mar_imports_its_own_core(tmp_path: Path, tiny_checkpoint: Path) -> None:
    store = tmp_path / "store"
    assert archive.main([str(tiny_checkpoint), "--name", "m", "--model-store", str(store), "--batch-size", "4",
                         "--max-batch-delay", "20", "--version", "2.1"]) == 0
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(store / "m.mar") as mar:
        mar.extractall(unpacked)
    manifest = json.loads((unpacked / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"]["modelVersion"] == "2.1" and manifest["model"]["serializedFile"] == "weights.pt"
    config = (unpacked / "model-config.yaml").read_text()
    assert "batchSize: 4" in config and "maxBatchDelay: 20" in config and "max_response_bytes" in config
    ckpt = torch.load(unpacked / "weights.pt", weights_only=True)
    assert ckpt["arch"] == "resnet18" and ckpt["class_names"] == CLASSES and ckpt["target_layer"] == "layer4"
    # As TorchServe does: the model dir on sys.path, the handler imported by module name.
    code = ("import camserve_handler, camserve; print(camserve.__file__); "
            "print([c for c in vars(camserve_handler).values() if isinstance(c, type) "
            "and c.__module__ == 'camserve_handler'])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(unpacked)}
    out = subprocess.run([sys.executable, "-c", code], cwd=unpacked, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert str(unpacked / "camserve" / "__init__.py") in out, "the handler must use the core packed in the .mar"
    assert "CamserveHandler" in out and out.count("class ") == 1


def test_cam_method_and_fusion_layers_travel_with_the_weights(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "a.pt", cam_method="layercam", fusion_layers=["layer3", "layer4"])
    model, spec = load_checkpoint(path)
    assert spec.cam_method == "layercam" and spec.fusion_layers == ("layer3", "layer4")
    _, spec = load_checkpoint(path, cam_method="hirescam", fusion_layers="layer1, layer2")
    assert spec.cam_method == "hirescam" and spec.fusion_layers == ("layer1", "layer2")
    save_checkpoint(tmp_path / "b.pt", model, spec)
    _, again = load_checkpoint(tmp_path / "b.pt")
    assert again == spec


@pytest.mark.parametrize("arch,expected", [("resnet18", ("layer2", "layer3", "layer4")),
                                           ("resnet34", ("layer2", "layer3", "layer4")),
                                           ("vgg11", ("features.9", "features.14", "features.19"))])
def test_default_method_and_fusion_layers(tmp_path: Path, arch: str, expected: tuple) -> None:
    """Per-arch defaults for the seven, an automatic choice (one stage per map size) for the others."""
    _, spec = load_checkpoint(make_checkpoint(tmp_path / "a.pt", arch=arch))
    assert spec.cam_method == "gradcam" and spec.fusion_layers == expected


def test_archive_flags_set_method_and_fusion_layers(tmp_path: Path, tiny_checkpoint: Path) -> None:
    store = tmp_path / "store"
    assert archive.main([str(tiny_checkpoint), "--name", "m", "--model-store", str(store),
                         "--cam-method", "gradcam++", "--fusion-layers", "layer3,layer4"]) == 0
    with zipfile.ZipFile(store / "m.mar") as mar:
        mar.extract("weights.pt", tmp_path)
    ckpt = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert ckpt["cam_method"] == "gradcam++" and ckpt["fusion_layers"] == ["layer3", "layer4"]


@pytest.mark.parametrize("flags,match", [
    (["--fusion-layers", "layer3,nope"], "target layer 'nope' does not exist"),
    (["--fusion-layers", "layer3,fc"], "layercam-fusion at layer 'layer3', 'fc' fails"),
    (["--fusion-layers", "layer4,layer4"], "fusion layers must be distinct"),
    (["--target-layer", "fc", "--cam-method", "xgradcam"], "xgradcam at layer 'fc' fails"),
])
def test_archive_time_cam_errors(tmp_path: Path, tiny_checkpoint: Path, flags: list[str], match: str,
                                 capsys: pytest.CaptureFixture) -> None:
    assert archive.main([str(tiny_checkpoint), "--name", "bad", "--model-store", str(tmp_path), *flags]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "bad.mar").exists()


def test_unknown_cam_method(tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        archive.main([str(tiny_checkpoint), "--name", "bad", "--cam-method", "scorecam"])
    assert exit_info.value.code == 2 and "invalid choice: 'scorecam'" in capsys.readouterr().err
    path = make_checkpoint(tmp_path / "a.pt", cam_method="scorecam")
    with pytest.raises(CheckpointError, match="unknown CAM method 'scorecam'"):
        load_checkpoint(path)
