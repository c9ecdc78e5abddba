"""The localisation check of the demo recipe on a small configuration (what CI runs of ``make evaluate-cam``).

A small chest model is built with the demo's own recipe (``scripts/demo/build.py chest``), served by a
real TorchServe, and scored by ``scripts/evaluate_cam.py --check`` on phantoms drawn with another seed,
against the bars in ``scripts/demo/bars/small.json``. The bars sit below what this configuration
measures and above what a broken map scores (a uniform map has a focus of about 0.33, a random peak
hits a dilated lesion about one time in ten), so a regression in the generator, the trainer, the CAM
or the upsampling fails here. ``--check`` must also fail on a bar the model cannot meet.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import evaluate_cam
from scripts.demo import build
from tests.harness import torchserve

BARS = Path(build.__file__).with_name("bars") / "small.json"
SMALL = ["--n-per-class", "120", "--size", "96", "--input-size", "96", "--epochs", "8", "--batch-size", "8",
         "--threads", "2"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small")
    assert build.main(["chest", "--data-dir", str(root / "phantoms"), "--checkpoint", str(root / "chest.pt"),
                       "--model-store", str(root / "store"), "--name", "chest_small", *SMALL]) == 0
    assert build.main(["eval", "--data-dir", str(root / "eval"), "--n-per-class", "20", "--size", "96"]) == 0
    return root


@pytest.mark.integration
@pytest.mark.train
def test_the_small_demo_model_localises_through_the_endpoint(small: Path, tmp_path: Path, capsys) -> None:
    test, masks = small / "eval" / "test", small / "eval" / "masks"
    argv = ["--data-dir", str(test), "--model", "chest_small", "--roi-masks", str(masks / "lungs" / "test"),
            "--lesion-masks", str(masks / "lesions" / "test"), "--bars", str(BARS), "--check"]
    with torchserve(small / "store", tmp_path / "ts") as server:
        served = [*argv, "--url", server.url, "--token-file", str(server.key_file)]
        capsys.readouterr()
        code = evaluate_cam.main(served)
        summary = json.loads(capsys.readouterr().out)
        impossible = evaluate_cam.main([*served, "--min-pointing-game", "1.0", "--max-accuracy", "0.01"])
    assert summary["n_images"] == 60 and summary["n_failed"] == 0
    assert summary["lesion_classes"] == ["COVID", "Viral_Pneumonia"]
    assert summary["focus_max_discrepancy"] < 1e-3  # the served focus score is the returned map's
    assert all(summary["bars"].values()) and code == 0, summary
    assert impossible == 1
