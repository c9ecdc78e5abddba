"""Tests of the synthetic chest-radiograph generator, ``scripts/demo/chest_phantoms.py``.

Masks are checked against the drawn pixels: the same seed drawn as ``Normal`` and as a diseased class shares
anatomy, pose and noise, so the difference of the two images is exactly what the lesions added.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from scripts.demo import chest_phantoms as mp

SIZE = 96
SEEDS = range(8)
# Lesion pixels allowed outside the lung mask after the pose transform. Bilinear resampling is monotone, so
# the generator keeps lesions <= lungs exactly; 2 px leaves room for interpolation, while a one-pixel
# misregistration of a peripheral lesion would put tens of pixels outside.
OUTSIDE_LUNG_TOLERANCE_PX = 2


def _draw(label: str, seed: int, hard: bool = False, size: int = SIZE) -> mp.Phantom:
    return mp.draw_phantom(np.random.default_rng(seed), label, size, hard)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square, written independently of the generator's box filter."""
    padded = np.pad(mask, radius)
    n = mask.shape[0]
    shifts = range(2 * radius + 1)
    return np.logical_or.reduce([padded[dy : dy + n, dx : dx + n] for dy in shifts for dx in shifts])


def _lung_halves(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two lung fields, split at the lung mask's centroid column (pose moves the midline)."""
    cols = np.arange(lungs.shape[1])[None, :]
    mid = np.nonzero(lungs)[1].mean()
    return lungs & (cols < mid), lungs & (cols > mid)


def _run(out: Path, *extra: str) -> int:
    return mp.main(["--output-dir", str(out), "--size", "48", *extra])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the pure drawing function ------------------------------------------------------------------------


@pytest.mark.parametrize("label", mp.CLASSES)
@pytest.mark.parametrize("hard", [False, True])
def test_phantom_types_and_lung_mask(label: str, hard: bool) -> None:
    for seed in SEEDS:
        ph = _draw(label, seed, hard)
        assert ph.image.dtype == np.uint8 and ph.image.shape == (SIZE, SIZE)
        assert ph.lungs.dtype == bool and ph.lesions.dtype == bool
        assert 0.22 < ph.lungs.mean() < 0.45, "two lung fields cover about a third of the image"
        left, right = _lung_halves(ph.lungs)
        assert left.sum() > 0.25 * ph.lungs.sum() and right.sum() > 0.25 * ph.lungs.sum()
        assert np.percentile(ph.image, 1) < ph.image[ph.lungs].mean() - 10, "air is darker than the lungs"


def test_lungs_cover_about_a_third_of_the_frame() -> None:
    # Frontal radiographs show lung fields over roughly a third of the image.
    shares = [_draw(label, seed).lungs.mean() for label in mp.CLASSES for seed in SEEDS]
    assert 0.28 < float(np.mean(shares)) < 0.38, np.mean(shares)


def test_diaphragm_and_heart_are_denser_than_the_lungs() -> None:
    for seed in SEEDS:
        ph = _draw("Normal", seed)
        rows = np.nonzero(ph.lungs.any(axis=1))[0]
        below = ph.image[rows.max() + 3:rows.max() + 8, SIZE // 4:3 * SIZE // 4]  # under the domes
        assert below.mean() > ph.image[ph.lungs].mean() + 40, seed


def test_heart_sits_on_the_image_right() -> None:
    # The heart bulges to the patient's left (image right) and hides part of that lung.
    halves = [_lung_halves(_draw("Normal", seed).lungs) for seed in SEEDS]
    assert np.mean([right.sum() / left.sum() for left, right in halves]) < 0.95


@pytest.mark.parametrize("label", mp.CLASSES)
@pytest.mark.parametrize("hard", [False, True])
def test_lesions_lie_inside_lungs(label: str, hard: bool) -> None:
    for seed in SEEDS:
        ph = _draw(label, seed, hard)
        assert (ph.lesions & ~ph.lungs).sum() <= OUTSIDE_LUNG_TOLERANCE_PX


@pytest.mark.parametrize("hard", [False, True])
def test_normal_has_no_lesion(hard: bool) -> None:
    assert not any(_draw("Normal", seed, hard).lesions.any() for seed in SEEDS)


@pytest.mark.parametrize("label", ["COVID", "Viral_Pneumonia"])
@pytest.mark.parametrize("hard", [False, True])
def test_diseased_lesions_are_present_and_sized(label: str, hard: bool) -> None:
    min_radius = 0.02 if hard else 0.06  # of the image side; Grad-CAM on a 4x4-8x8 map needs big ones
    for seed in SEEDS:
        area = _draw(label, seed, hard).lesions.sum()
        assert area >= np.pi * (min_radius * SIZE) ** 2, (seed, area)


def test_covid_is_bilateral() -> None:
    for seed in SEEDS:
        ph = _draw("COVID", seed)
        left, right = _lung_halves(ph.lungs)
        assert (ph.lesions & left).sum() > 20 and (ph.lesions & right).sum() > 20, seed


def test_covid_is_peripheral() -> None:
    # Lesion pixels sit further from the midline than the average lung pixel.
    cols = np.arange(SIZE)[None, :].repeat(SIZE, 0)
    for seed in SEEDS:
        ph = _draw("COVID", seed)
        mid = cols[ph.lungs].mean()
        assert np.abs(cols[ph.lesions] - mid).mean() > np.abs(cols[ph.lungs] - mid).mean(), seed


def test_viral_pneumonia_is_mostly_one_sided() -> None:
    one_sided = 0
    for seed in range(20):
        ph = _draw("Viral_Pneumonia", seed)
        one_sided += min((ph.lesions & half).sum() for half in _lung_halves(ph.lungs)) == 0
    assert one_sided >= 12


@pytest.mark.parametrize("label,margin", [("COVID", 8), ("Viral_Pneumonia", 25)])
def test_lesions_are_brighter_than_surrounding_lung(label: str, margin: float) -> None:
    for seed in SEEDS:
        ph = _draw(label, seed)
        image = ph.image.astype(float)
        surround = _dilate(ph.lesions, 6) & ph.lungs & ~ph.lesions
        assert image[ph.lesions].mean() > image[surround].mean() + margin, seed


def test_viral_pneumonia_is_denser_than_covid() -> None:
    def lift(label: str) -> float:  # grey levels the lesions add over the same seed drawn as Normal
        pairs = [(_draw(label, s), _draw("Normal", s)) for s in SEEDS]
        return float(np.mean([(p.image.astype(float) - n.image)[p.lesions].mean() for p, n in pairs]))

    assert lift("Viral_Pneumonia") > 1.5 * lift("COVID")


@pytest.mark.parametrize("label", ["COVID", "Viral_Pneumonia"])
def test_hard_lesions_are_fainter_and_smaller(label: str) -> None:
    def lift_and_area(hard: bool) -> tuple[float, float]:
        lifts, areas = [], []
        for seed in SEEDS:
            ph, normal = _draw(label, seed, hard), _draw("Normal", seed, hard)
            lifts.append((ph.image.astype(float) - normal.image)[ph.lesions].mean())
            areas.append(ph.lesions.sum())
        return float(np.mean(lifts)), float(np.mean(areas))

    (hard_lift, hard_area), (easy_lift, easy_area) = lift_and_area(True), lift_and_area(False)
    assert hard_lift < 0.3 * easy_lift and hard_area < 0.6 * easy_area


@pytest.mark.parametrize("label", ["COVID", "Viral_Pneumonia"])
def test_lesion_mask_matches_drawn_intensity(label: str) -> None:
    for seed in SEEDS:
        sick, normal = _draw(label, seed), _draw("Normal", seed)
        np.testing.assert_array_equal(sick.lungs, normal.lungs)  # same anatomy and pose
        diff = sick.image.astype(int) - normal.image.astype(int)
        assert diff.min() >= 0, "lesions only add intensity"
        assert np.abs(diff[~_dilate(sick.lungs, 4)]).max() <= 1, "nothing drawn outside the lungs"
        # Lung beyond a 2 px ring around the mask: only the soft tails of the blobs reach there.
        in_mask, in_lung = diff[sick.lesions].mean(), diff[sick.lungs & ~_dilate(sick.lesions, 2)].mean()
        assert in_mask >= 15 and in_mask > 3 * in_lung, (seed, in_mask, in_lung)
        assert (diff[sick.lesions] > 0).mean() > 0.95
        assert diff[sick.lesions].sum() >= 0.55 * diff.sum(), "the mask holds the bulk of the lesion"


@pytest.mark.parametrize("size", [96, 128])
@pytest.mark.parametrize("label", ["COVID", "Viral_Pneumonia"])
@pytest.mark.parametrize("hard", [False, True])
def test_lesions_change_nothing_outside_the_lungs(label: str, hard: bool, size: int) -> None:
    # Same seed drawn as Normal: anatomy, pose, exposure and noise are shared, so any difference is
    # the lesions'. Outside the lung mask grown by 2 px (the detector blur) not one grey level moves.
    for seed in SEEDS:
        sick, normal = _draw(label, seed, hard, size), _draw("Normal", seed, hard, size)
        diff = sick.image.astype(int) - normal.image.astype(int)
        assert np.abs(diff[~_dilate(sick.lungs, 2)]).max() == 0, seed


def test_draw_is_deterministic_and_seed_dependent() -> None:
    a, b, c = _draw("COVID", 5), _draw("COVID", 5), _draw("COVID", 6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.lesions, b.lesions)
    assert not np.array_equal(a.image, c.image)


def test_unknown_label_is_rejected() -> None:
    with pytest.raises(ValueError, match="label"):
        _draw("Pneumothorax", 0)


@pytest.mark.parametrize(
    "n,fractions,expected",
    [
        (600, (0.7, 0.15, 0.15), [420, 90, 90]),
        (10, (0.7, 0.15, 0.15), [7, 2, 1]),
        (4, (0.7, 0.15, 0.15), [2, 1, 1]),
        (5, (1.0, 0.0, 0.0), [5, 0, 0]),
    ],
)
def test_split_counts(n: int, fractions: tuple[float, ...], expected: list[int]) -> None:
    assert mp.split_counts(n, fractions) == expected


# --- the script -----------------------------------------------------------------------------------------


def test_same_args_give_identical_bytes(tmp_path: Path) -> None:
    assert _run(tmp_path / "a", "--n-per-class", "5", "--seed", "3") == 0
    assert _run(tmp_path / "b", "--n-per-class", "5", "--seed", "3") == 0
    assert _run(tmp_path / "c", "--n-per-class", "5", "--seed", "4") == 0
    assert _run(tmp_path / "d", "--n-per-class", "5", "--seed", "3", "--workers", "2") == 0
    a, b, c, d = (_files(tmp_path / d) for d in "abcd")
    assert len(a) == 3 * 15 + 2 and a == b == d
    images = [k for k in a if k.startswith("train/")]
    assert all(a[k] != c[k] for k in images), "another seed draws other images"


def test_samples_do_not_depend_on_how_many_are_drawn(tmp_path: Path) -> None:
    _run(tmp_path / "a", "--n-per-class", "3", "--hard-fraction", "0")
    _run(tmp_path / "b", "--n-per-class", "6", "--hard-fraction", "0")
    paths = [
        {x["id"]: x["path"] for x in json.loads((tmp_path / d / "manifest.json").read_text())["images"]} for d in "ab"
    ]
    for sample_id, path in paths[0].items():
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / paths[1][sample_id]).read_bytes()


def test_layout_counts_and_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ph"
    assert _run(out, "--n-per-class", "10", "--seed", "1", "--hard-fraction", "0.3") == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    expected = dict(zip(mp.SPLITS, [7, 2, 1], strict=True))
    for split, n in expected.items():
        for label in mp.CLASSES:
            files = sorted((out / split / label).glob("*.png"))
            assert len(files) == n == manifest["counts"][split][label] == summary["counts"][split][label]
            for f in files:
                _check_triplet(out, f.relative_to(out))
    images = [(out / x["path"]).read_bytes() for x in manifest["images"]]
    assert len(set(images)) == len(images), "every sample is drawn from its own seed"
    ids = [x["id"] for x in manifest["images"]]
    assert len(ids) == len(set(ids)) == 30 and "covid_00000" in ids and "viral_pneumonia_00009" in ids
    assert sum(x["hard"] for x in manifest["images"]) == 3 * (2 + 1 + 0)  # round(0.3 * [7, 2, 1]) per class
    assert manifest["synthetic"] is True and manifest["args"]["seed"] == 1 and "output_dir" not in manifest["args"]
    readme = (out / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "NOT MEDICAL DATA" in readme and "--seed 1" in readme


def _check_triplet(out: Path, rel: Path) -> None:
    image = Image.open(out / rel)
    assert image.mode == "L" and image.size == (48, 48)
    for kind in ("lungs", "lesions"):
        mask = Image.open(out / "masks" / kind / rel)
        assert mask.mode == "L" and mask.size == (48, 48)
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    lungs = np.asarray(Image.open(out / "masks" / "lungs" / rel)) > 0
    lesions = np.asarray(Image.open(out / "masks" / "lesions" / rel)) > 0
    assert lungs.any() and (lesions & ~lungs).sum() <= OUTSIDE_LUNG_TOLERANCE_PX
    assert lesions.any() == (rel.parts[1] != "Normal")


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        mp.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--hard-fraction" in text and "(default: 128)" in text and "(default: 0.7,0.15,0.15)" in text


@pytest.mark.parametrize(
    "bad",
    [
        ["--n-per-class", "0"],
        ["--n-per-class", "-3"],
        ["--n-per-class", "x"],
        ["--n-per-class", "2", "--size", "8"],
        ["--n-per-class", "2", "--split-fractions", "0.5,0.5"],
        ["--n-per-class", "2", "--split-fractions", "0.7,0.2,0.2"],
        ["--n-per-class", "2", "--split-fractions", "0,0,0"],
        ["--n-per-class", "2", "--split-fractions", "-0.2,0.6,0.6"],
        ["--n-per-class", "2", "--hard-fraction", "1.5"],
        ["--n-per-class", "2", "--seed", "-1"],
    ],
)
def test_invalid_arguments_exit_with_code_2(tmp_path: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        mp.main(["--output-dir", str(tmp_path / "x"), *bad])
    assert exc.value.code == 2
    assert not (tmp_path / "x").exists()


def test_out_is_required() -> None:
    with pytest.raises(SystemExit) as exc:
        mp.main(["--n-per-class", "2"])
    assert exc.value.code == 2


# --- no class cue outside the lungs ------------------------------------------------------------------------


def _cue_data(seed: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Phantoms at 128 px pooled to 64, as they are and with the lungs (grown by 2 px) set to mid grey."""
    seen, blanked, labels = [], [], []
    for c, label in enumerate(mp.CLASSES):
        for i in range(per_class):
            ph = mp.draw_phantom(np.random.default_rng([seed, c, i]), label, 128, hard=False)
            image = ph.image.astype(np.float32) / 255.0
            hidden = image.copy()
            hidden[_dilate(ph.lungs, 2)] = 0.5
            seen.append(image)
            blanked.append(hidden)
            labels.append(c)

    def batch(images: list[np.ndarray]) -> torch.Tensor:
        return (F.avg_pool2d(torch.from_numpy(np.stack(images))[:, None], 2) - 0.35) / 0.2

    return batch(seen), batch(blanked), torch.tensor(labels)


def _fit_and_score(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    """Test accuracy of a small CNN trained from a fixed seed (20 epochs of Adam, random flips)."""
    torch.manual_seed(0)

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    model = nn.Sequential(block(1, 16), block(16, 32), block(32, 64), block(64, 64), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(16):
            flip = torch.rand(len(idx), generator=gen) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), x[idx].flip(-1), x[idx])
            loss = F.cross_entropy(model(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(x_test).argmax(1) == y_test).float().mean())


@pytest.mark.train
def test_a_model_that_cannot_see_the_lungs_is_at_chance() -> None:
    # The same network, data and training: with the lungs visible it learns the classes; with them blanked
    # it has nothing to learn from, so body, heart, bones, exposure and noise carry no class information.
    torch.set_num_threads(1)
    train, train_blanked, y = _cue_data(1, 60)
    test, test_blanked, y_test = _cue_data(2, 30)
    assert _fit_and_score(train, y, test, y_test) >= 0.75, "the control must learn, or the test proves nothing"
    assert _fit_and_score(train_blanked, y, test_blanked, y_test) <= 0.45  # chance is 1/3; n = 90
