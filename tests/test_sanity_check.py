"""The sanity checks: similarity measures against plain references, and the script end to end (small)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from camserve import sanity
from scripts import sanity_check
from tests.conftest import CLASSES, make_checkpoint

SIZE = 32


def ref_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Average ranks by hand, then Pearson."""
    def ranks(v: np.ndarray) -> np.ndarray:
        out = np.empty(len(v))
        for i, value in enumerate(v):
            below, equal = (v < value).sum(), (v == value).sum()
            out[i] = below + (equal - 1) / 2
        return out
    return float(np.corrcoef(ranks(a.ravel()), ranks(b.ravel()))[0, 1])


def ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004, window by window: 11x11 Gaussian (sigma 1.5), valid positions, data range 1."""
    g = np.exp(-(np.arange(11) - 5) ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            x, y = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
            cov = (w * (x - mx) * (y - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_spearman_with_ties_matches_reference() -> None:
    rng = np.random.default_rng(0)
    a = np.round(rng.random((8, 8)), 1)  # many ties
    b = np.maximum(a + rng.normal(0, 0.3, (8, 8)), 0)
    b[:2] = 0
    assert sanity.spearman(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref_spearman(a, b), abs=1e-12)
    assert sanity.spearman(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(1.0)
    assert sanity.spearman(torch.from_numpy(a), -torch.from_numpy(a)) == pytest.approx(-1.0)
    assert sanity.spearman(torch.from_numpy(a), torch.zeros(8, 8)) is None


def test_ssim_matches_window_by_window_reference() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((16, 16))
    b = np.clip(a + rng.normal(0, 0.2, (16, 16)), 0, 1)
    assert sanity.ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref_ssim(a, b), abs=1e-10)
    assert sanity.ssim(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(1.0)
    assert sanity.ssim(torch.from_numpy(a), torch.from_numpy(1 - a)) < 0


def test_stages_run_from_the_head_down() -> None:
    model = torchvision.models.resnet18(num_classes=3).eval()
    order = sanity.stages(model, (torch.zeros(1, 3, SIZE, SIZE),))
    assert order == ["conv1", "bn1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
                     "layer4.0", "layer4.1", "fc"]
    params = sanity.stage_parameters(model, "layer4.1")
    assert len(params) == 6  # two convolutions, two BatchNorms (weight, bias)
    before = [p.detach().clone() for p in params]
    sanity.randomise_(params, torch.Generator().manual_seed(0))
    for old, new in zip(before, [p.detach() for p in params], strict=True):
        if float(old.std()) == 0:  # a fresh BatchNorm's ones and zeros: its own distribution is a constant
            assert torch.equal(old, new)
            continue
        assert not torch.equal(old, new)
        assert float(new.std()) == pytest.approx(float(old.std()), rel=0.05)
        assert float(new.mean()) == pytest.approx(float(old.mean()), abs=0.05 * float(old.std()))


def image_dir(root: Path, n_per_class: int = 3, gray: bool = False) -> Path:
    """Smooth synthetic images in class folders."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            cx, cy = rng.random(2)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)
            rgb = np.stack([blob, blob if gray else np.roll(blob, 5, 0), blob if gray else 1 - blob], -1)
            Image.fromarray((rgb * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, dict, str]:
    code = sanity_check.main(argv)
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else {}, captured.err


def test_cascade_end_to_end_with_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", input_size=SIZE, target_layer="layer3")
    data = image_dir(tmp_path / "images")
    argv = [str(ckpt), "--data-dir", str(data), "--limit", "6", "--output-dir", str(tmp_path / "out"), "--draws", "2"]
    code, report, err = run([*argv, "--check", "--max-spearman", "0.9", "--max-ssim", "0.9"], capsys)
    assert code == 0 and report["passed"], err
    assert [s["randomised"] for s in report["cascade"]][:3] == ["fc", "layer4.1", "layer4.0"]
    assert len(report["cascade"]) == 11 and report["method"] == "gradcam" and report["layers"] == ["layer3"]
    assert all(len(s["spearman"]) == 2 * (6 - len(report["left_out_all_zero"])) for s in report["cascade"])
    assert json.loads((tmp_path / "out" / "sanity_check.json").read_text()) == report
    assert "randomised (cumulative, head first)" in err and "PASS" in err
    # The same run with impossible thresholds fails the check, and only with --check.
    code, report, err = run([*argv, "--check", "--max-spearman", "-1", "--max-ssim", "-1", "--max-stages", "2"],
                            capsys)
    assert code == 1 and not report["passed"] and report["failing"] == ["fc", "layer4.1"] and "FAIL" in err
    assert run([*argv, "--max-spearman", "-1", "--max-stages", "1"], capsys)[0] == 0


MODEL_FILE = '''
import torch
from torch import nn


class InputMap(nn.Module):
    """The map at `features` is the image itself whatever the (positive) head weights: a map that does not
    depend on the model, which the randomisation test must catch."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ReLU()
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))
'''


def test_a_map_that_ignores_the_model_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "input_map.py").write_text(MODEL_FILE)
    head = {"head.weight": torch.tensor([[1.0, 1.01, 0.99], [0.98, 1.0, 1.02]]), "head.bias": torch.tensor([0.1, 0.0])}
    torch.save({"state_dict": head, "class_names": ["a", "b"], "input_size": SIZE, "target_layer": "features",
                "model_file": str(tmp_path / "input_map.py"), "mean": [0.5] * 3, "std": [0.25] * 3}, tmp_path / "m.pt")
    data = image_dir(tmp_path / "images", gray=True)
    code, report, err = run([str(tmp_path / "m.pt"), "--data-dir", str(data), "--check"], capsys)
    assert code == 1, err
    assert [s["randomised"] for s in report["cascade"]] == ["head"]
    assert report["cascade"][0]["median_spearman"] > 0.99 and report["failing"] == ["head"]


def test_permuted_labels_variant(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", input_size=SIZE, target_layer="layer3")
    data = image_dir(tmp_path / "images", n_per_class=4)
    code, report, err = run([str(ckpt), "--data-dir", str(data), "--limit", "4", "--max-stages", "1", "--draws", "1",
                             "--permuted-labels", "--train-dir", str(data), "--epochs", "2"], capsys)
    assert code == 0, err
    permuted = report["permuted_labels"]
    assert permuted["train_images"] == 12 and permuted["epochs"] == 2 and 0 <= permuted["permuted_label_accuracy"] <= 1
    assert len(permuted["spearman"]) == len(report["cascade"][0]["spearman"])
    assert "permuted labels" in err


@pytest.mark.parametrize("argv,message", [
    (["--limit", "0"], "--limit"), (["--max-ssim", "2"], "--max-ssim"), (["--method", "scorecam"], "--method"),
])
def test_bad_flags_exit_2(tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sanity_check.main(["x.pt", "--data-dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_unusable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", input_size=SIZE)
    assert sanity_check.main([str(ckpt), "--data-dir", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert sanity_check.main([str(ckpt), "--data-dir", str(image_dir(tmp_path / "i")), "--permuted-labels"]) == 2
    assert "--train-dir" in capsys.readouterr().err


@pytest.mark.integration
def test_served_maps_are_the_originals(server, tiny_checkpoint: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    data = image_dir(tmp_path / "images")
    code, report, err = run([str(tiny_checkpoint), "--data-dir", str(data), "--limit", "3", "--max-stages", "2",
                             "--url", server.url, "--model", "tiny", "--token-file", str(server.key_file)], capsys)
    assert code == 0, err
    assert report["served_vs_checkpoint"]["median_spearman"] > 0.99
    assert "served maps vs checkpoint maps" in err
